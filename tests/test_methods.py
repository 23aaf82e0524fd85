"""Every registered method against its formula on tiny hand-built tensors, the SDPG ablations as settings,
the frozen-teacher fused KL, and one real training step per method on the tiny model."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from sdpg.config import LossConfig, TrainConfig
from sdpg.forward import lm_head_weight, response_hidden
from sdpg.fused_kl import fused_self_distill
from sdpg.losses import beta_schedule, masked_mean, sdpg_loss, self_distill_kl
from sdpg.methods import (METHODS, OPSD_CLAMP, Input, LossInputs, MethodSpec, check_config, get_method,
                          opsd_fork_token_weight, rlsd_evidence_weight, rlsd_lambda,
                          rlsd_token_advantage)
from sdpg.records import RecordStream
from sdpg.reward import Verdict
from sdpg.run import build_trainer
from sdpg.step import MicroBatch, gate_verdict, step_context, teacher_rows
from sdpg.trainer import loss_share
from sdpg.whatif import token_weights

STANDARD_KEYS = ("loss/total", "loss/pg", "loss/distill", "loss/ref_kl", "kl/distill_mean", "gate/fraction",
                 "loss/clipfrac_high", "loss/clipfrac_low")

# Four responses of two tokens; the third has one (the second position is padding, with junk values).
MASK = torch.tensor([[1., 1.], [1., 1.], [1., 0.], [1., 1.]])
N_TOKENS = 7
KL = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 9.9], [0.6, 0.8]])


def _inputs(adv=(1.0, -1.0, 2.0, 0.0), correct=(True, False, True, False), **extra) -> LossInputs:
    """Ratio 1 everywhere (logp == old_logp), so the clipped surrogate's token loss is -A."""
    old_logp = torch.tensor([[-1.0, -2.0], [-0.5, -1.5], [-1.2, 0.0], [-0.7, -0.9]])
    fields = dict(logp=old_logp.clone().requires_grad_(), old_logp=old_logp, adv=torch.tensor(adv), mask=MASK,
                  distill_kl=KL.clone().requires_grad_(), temperature=1.0, correct=torch.tensor(correct))
    return LossInputs(**(fields | extra))


def _cfg(**kw) -> LossConfig:
    return LossConfig(**kw)


# ----------------------------------------------------------------------------- registry and config

def test_registry_lists_every_method_with_a_description():
    assert set(METHODS) == {"sdpg", "grpo", "rlsd", "opsd_fork", "opsd", "self_distill"}
    for name, spec in METHODS.items():
        assert spec.name == name and spec.description
        assert spec.needs <= set(Input) and spec.color.startswith("#") and spec.whatif is not None
    with pytest.raises(ValueError, match="unknown method 'ppo'; registered"):
        get_method("ppo")


@pytest.mark.parametrize("field, value, needle", [
    ("rlsd_lambda", 1.5, "loss.rlsd_lambda=1.5"),
    ("rlsd_lambda_decay_steps", -1, "loss.rlsd_lambda_decay_steps=-1"),
    ("rlsd_eps_w", 1.0, "loss.rlsd_eps_w=1.0"),
])
def test_rlsd_settings_are_validated(field, value, needle):
    cfg = TrainConfig()
    setattr(cfg.loss, field, value)
    with pytest.raises(ValueError, match=needle):
        cfg.validate()


@pytest.mark.parametrize("method", ["self_distill", "opsd"])
def test_a_distillation_only_method_refuses_beta_zero(method):
    cfg = TrainConfig()
    cfg.loss.method, cfg.loss.beta = method, 0.0
    with pytest.raises(ValueError, match=f"loss.beta=0.0 is invalid: must be > 0 for method '{method}'"):
        check_config(cfg)
    cfg.loss.method = "sdpg"
    check_config(cfg)  # the SDPG beta = 0 ablation is fine: the outcome term remains


# ----------------------------------------------------------------------------- SDPG and its ablations

ALPHA, BETA = 0.01, 0.5
PG = -(1.0 * 2 + -1.0 * 2 + 2.0 * 1 + 0.0 * 2) / N_TOKENS  # token-mean of -A
GATED_KL = (0.1 + 0.2 + 0.5) / N_TOKENS  # responses with A > 0: the first and the third
ALL_KL = (0.1 + 0.2 + 0.3 + 0.4 + 0.5 + 0.6 + 0.8) / N_TOKENS
URKL = 0.5 * 0.25  # log w = 0.5 on every token


def _sdpg_inputs():
    x = _inputs()
    x.ref_logp = x.old_logp - 0.5
    return x


@pytest.mark.parametrize("settings, beta_k, want, parts", [
    ({}, BETA, PG + BETA * GATED_KL + ALPHA * URKL, (PG, BETA * GATED_KL, ALPHA * URKL)),
    ({"alpha": 0.0}, BETA, PG + BETA * GATED_KL, (PG, BETA * GATED_KL, 0.0)),
    ({"beta": 0.0}, 0.0, PG + ALPHA * URKL, (PG, 0.0, ALPHA * URKL)),
    ({"gate": False}, BETA, PG + BETA * ALL_KL + ALPHA * URKL, (PG, BETA * ALL_KL, ALPHA * URKL)),
], ids=["full", "alpha0", "beta0", "gate-off"])
def test_sdpg_and_its_ablations_reduce_to_the_expected_terms(settings, beta_k, want, parts):
    cfg = _cfg(**({"alpha": ALPHA, "beta": BETA} | settings))
    loss, stats = METHODS["sdpg"].loss(_sdpg_inputs(), cfg, beta_k)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert (stats["loss/pg"], stats["loss/distill"], stats["loss/ref_kl"]) == pytest.approx(parts, abs=1e-6)
    assert stats["gate/fraction"] == (1.0 if settings.get("gate") is False else 0.5)


def test_schedule_off_gives_the_base_beta_at_every_step_and_a_ramp_scales_the_distill_term():
    assert [beta_schedule(k, 100, BETA, 0, 0) for k in (0, 1, 50, 99)] == [BETA] * 4
    warm = beta_schedule(5, 100, BETA, 10, 0)
    assert warm == pytest.approx(BETA / 2)
    _, stats = METHODS["sdpg"].loss(_sdpg_inputs(), _cfg(alpha=ALPHA), warm)
    assert stats["loss/distill"] == pytest.approx(BETA / 2 * GATED_KL)


def test_grpo_trains_on_the_outcome_only_and_monitors_the_kl():
    x = _sdpg_inputs()
    loss, stats = METHODS["grpo"].loss(x, _cfg(alpha=0.0), 0.0)
    assert loss.item() == pytest.approx(PG) and stats["loss/distill"] == 0.0
    assert stats["kl/distill_mean"] == pytest.approx(ALL_KL)
    loss.backward()
    assert x.distill_kl.grad is None


# ----------------------------------------------------------------------------- RLSD

def test_rlsd_lambda_decays_linearly_to_zero_and_zero_decay_keeps_it():
    assert [rlsd_lambda(k, 0.5, 50) for k in (0, 25, 50, 80)] == [0.5, 0.25, 0.0, 0.0]
    assert rlsd_lambda(1000, 0.3, 0) == 0.3
    with pytest.raises(ValueError, match="lam in"):
        rlsd_lambda(0, 1.5, 50)


def test_rlsd_weight_is_sign_aware_and_clipped():
    delta = torch.tensor([math.log(1.1), math.log(2.0), math.log(0.5), math.log(1.19), 0.0])
    old = torch.zeros(5)
    # A > 0: u = q / p_old, so [1.1, 2, 0.5, 1.19, 1] -> clip to [0.8, 1.2] -> [1.1, 1.2, 0.8, 1.19, 1]
    pos = rlsd_token_advantage(torch.tensor(2.0), delta, old, lam=0.5, eps_w=0.2)
    torch.testing.assert_close(pos, 2.0 * (0.5 + 0.5 * torch.tensor([1.1, 1.2, 0.8, 1.19, 1.0])))
    # A < 0: u = p_old / q, so [1/1.1, 0.5, 2, 1/1.19, 1] -> [0.909, 0.8, 1.2, 0.840, 1]
    neg = rlsd_token_advantage(torch.tensor(-1.0), delta, old, lam=0.5, eps_w=0.2)
    torch.testing.assert_close(neg, -(0.5 + 0.5 * torch.tensor([1 / 1.1, 0.8, 1.2, 1 / 1.19, 1.0])))
    # the clip edges: just inside is kept, just outside is cut, exactly on the edge stays on it
    edges = torch.log(torch.tensor([0.79, 0.8, 0.81, 1.19, 1.2, 1.21]))
    torch.testing.assert_close(rlsd_token_advantage(torch.tensor(1.0), edges, torch.zeros(6), lam=1.0, eps_w=0.2),
                               torch.tensor([0.8, 0.8, 0.81, 1.19, 1.2, 1.2]))
    assert rlsd_token_advantage(torch.tensor(0.0), delta, old, lam=0.5, eps_w=0.2).eq(0).all()
    torch.testing.assert_close(rlsd_token_advantage(torch.tensor(3.0), delta, old, lam=0.0, eps_w=0.2),
                               torch.full((5,), 3.0))
    torch.testing.assert_close(rlsd_evidence_weight(torch.tensor(-1.0), delta, old), torch.exp(-delta))
    with pytest.raises(ValueError, match="eps_w in"):
        rlsd_token_advantage(torch.tensor(1.0), delta, old, lam=0.5, eps_w=1.0)


def _rlsd_inputs(step=0):
    x = _inputs(step=step)
    # teacher evidence log q - log p_old per token: +log 2 (clipped), +log 1.1, -log 1.1, 0
    x.teacher_logp = x.old_logp + torch.tensor([[math.log(2.0), math.log(1.1)], [math.log(2.0), -math.log(1.1)],
                                                [0.0, 5.0], [1.0, -1.0]])
    return x


def test_rlsd_lambda_follows_the_forks_formula_from_global_step_1():
    # the authors' fork (`_compute_rlsd_lambda`): 0 from global_steps >= decay, else lam * (1 - global_steps / decay),
    # with verl's global_steps = 1 on the first training step; `inputs.step` is 0 there
    def fork(global_steps, lam=0.5, decay=50):
        return 0.0 if global_steps >= decay else lam * (1.0 - global_steps / decay)

    for completed in range(0, 60):
        _, stats = METHODS["rlsd"].loss(_rlsd_inputs(step=completed), _cfg(), 0.0)
        assert stats["rlsd/lambda"] == pytest.approx(fork(completed + 1)), completed
    assert fork(1) == pytest.approx(0.49)  # the first step already decays: not lam itself


def test_rlsd_loss_is_the_surrogate_with_the_reweighted_advantage():
    x = _rlsd_inputs()
    loss, stats = METHODS["rlsd"].loss(x, _cfg(rlsd_lambda_decay_steps=0), 0.0)
    # lam = 0.5: factor 0.5 + 0.5 * clip(u); A > 0 uses u = q/p_old, A < 0 uses p_old/q
    a_hat = torch.tensor([[1.0 * (0.5 + 0.5 * 1.2), 1.0 * (0.5 + 0.5 * 1.1)],
                          [-1.0 * (0.5 + 0.5 * 0.8), -1.0 * (0.5 + 0.5 * 1.1)],
                          [2.0 * (0.5 + 0.5 * 1.0), 0.0],
                          [0.0, 0.0]])
    want = -(a_hat * MASK).sum() / N_TOKENS
    assert loss.item() == pytest.approx(float(want))
    loss.backward()
    torch.testing.assert_close(x.logp.grad, -a_hat * MASK / N_TOKENS)  # d(-A r)/d logp = -A at r = 1
    assert stats["rlsd/lambda"] == 0.5 and stats["loss/distill"] == 0.0 and stats["loss/ref_kl"] == 0.0
    assert x.distill_kl.grad is None  # no KL loss: the teacher only rescales credit
    for key in STANDARD_KEYS:
        assert key in stats


def test_rlsd_after_the_lambda_decay_is_grpo():
    # step counts completed steps: the 50th training step (49 completed) is the first at lam = 0
    rlsd_loss, stats = METHODS["rlsd"].loss(_rlsd_inputs(step=49), _cfg(), 0.0)
    grpo_loss, _ = METHODS["grpo"].loss(_inputs(), _cfg(alpha=0.0), 0.0)
    assert stats["rlsd/lambda"] == 0.0 and rlsd_loss.item() == pytest.approx(grpo_loss.item())
    half, _ = METHODS["rlsd"].loss(_rlsd_inputs(step=24), _cfg(), 0.0)
    full, _ = METHODS["rlsd"].loss(_rlsd_inputs(step=0), _cfg(rlsd_lambda_decay_steps=0), 0.0)
    assert half.item() == pytest.approx((full.item() + grpo_loss.item()) / 2)  # lam is linear in the loss


# ----------------------------------------------------------------------------- OPSD, the fork's reading

def test_opsd_fork_weight_clamps_at_0_and_20_and_respects_the_gate():
    teacher = torch.tensor([-3.0, 0.0, 0.5, 19.0, 25.0])
    old = torch.tensor([-1.0, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(opsd_fork_token_weight(teacher, old, torch.tensor(True)),
                               torch.tensor([0.0, 0.0, 0.5, 19.0, OPSD_CLAMP]))
    assert opsd_fork_token_weight(teacher, old, torch.tensor(False)).eq(0).all()


def test_opsd_fork_trains_only_correct_answers_with_positive_advantage():
    # correct & A > 0 | wrong & A < 0 | correct, all-correct group (A = 0) | wrong but A > 0 (shaped reward)
    x = _inputs(adv=(1.0, -1.0, 0.0, 0.5), correct=(True, False, True, False))
    x.ref_teacher_logp = x.old_logp + torch.tensor([[0.7, -0.4], [2.0, 2.0], [3.0, 0.0], [4.0, 4.0]])
    loss, stats = METHODS["opsd_fork"].loss(x, _cfg(), 0.0)
    # only the first response, log-ratio >= 0, averaged over its 2 gated tokens as in the fork
    assert loss.item() == pytest.approx(-(0.7 + 0.0) / 2)
    loss.backward()
    want_grad = torch.zeros(4, 2)
    want_grad[0, 0] = -0.7 / 2
    torch.testing.assert_close(x.logp.grad, want_grad)
    assert stats["gate/fraction"] == 0.25 and stats["opsd/weight_mean"] == pytest.approx(0.35)
    assert stats["loss/distill"] == 0.0 and stats["loss/ref_kl"] == 0.0 and x.distill_kl.grad is None
    assert stats["kl/distill_gated_mean"] == pytest.approx(0.15)


def test_opsd_fork_uses_the_ppo_ratio_clip():
    x = _inputs(adv=(1.0, -1.0, 0.0, 0.0), correct=(True, False, False, False))
    x.ref_teacher_logp = x.old_logp + 2.0
    with torch.no_grad():
        x.logp[0, 0] += math.log(1.5)  # ratio 1.5 > 1 + clip_high: clipped at 1.2, no gradient
    loss, stats = METHODS["opsd_fork"].loss(x, _cfg(clip_high=0.2), 0.0)
    assert loss.item() == pytest.approx(-(2.0 * 1.2 + 2.0 * 1.0) / 2)  # the gated response's 2 tokens
    loss.backward()
    assert float(x.logp.grad[0, 0]) == 0.0 and float(x.logp.grad[0, 1]) == pytest.approx(-2.0 / 2)
    assert stats["loss/clipfrac_high"] == pytest.approx(1 / N_TOKENS)  # statistics stay over every token


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_opsd_fork_averages_over_the_batchs_gated_tokens_whatever_the_micro_batches(agg):
    adv, correct = (1.0, -1.0, 2.0, 0.5), (True, False, True, True)
    x = _inputs(adv=adv, correct=correct)
    x.ref_teacher_logp = x.old_logp + torch.tensor([[0.7, 0.2], [2.0, 2.0], [3.0, 0.0], [0.4, 1.0]])
    whole, _ = METHODS["opsd_fork"].loss(x, _cfg(agg=agg), 0.0)
    gated = (0.7 + 0.2) + 3.0 + (0.4 + 1.0)  # responses 0, 2, 3 pass: 5 gated tokens, 3 gated sequences
    want = -gated / 5 if agg == "token-mean" else -((0.7 + 0.2) / 2 + 3.0 + (0.4 + 1.0) / 2) / 3
    assert whole.item() == pytest.approx(want)
    norm = METHODS["opsd_fork"].loss_tokens(MASK, torch.tensor(adv), torch.tensor(correct))  # (B, T)
    total = 0.0
    for sl in (slice(0, 1), slice(1, 2), slice(2, 4)):  # the middle micro-batch has no gated token
        part = _inputs(adv=adv[sl], correct=correct[sl], mask=MASK[sl], logp=x.logp.detach()[sl],
                       old_logp=x.old_logp[sl], distill_kl=KL[sl], ref_teacher_logp=x.ref_teacher_logp[sl])
        loss, _ = METHODS["opsd_fork"].loss(part, _cfg(agg=agg), 0.0)
        total += loss.item() * loss_share(norm, sl, agg)
    assert total == pytest.approx(whole.item())


def test_methods_that_need_a_teacher_say_which_input_is_missing():
    for name, field in (("rlsd", "teacher_logp"), ("opsd_fork", "ref_teacher_logp"), ("opsd", "ref_distill_kl")):
        with pytest.raises(ValueError, match=f"method '{name}' needs LossInputs.{field}"):
            METHODS[name].loss(_inputs(), _cfg(), 0.1)


# ----------------------------------------------------------------------------- OPSD, the paper's reading

def test_opsd_is_the_kl_to_the_frozen_teacher_alone():
    ref_kl = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 99.0], [6.0, 7.0]], requires_grad=True)
    x = _inputs(ref_distill_kl=ref_kl)
    loss, stats = METHODS["opsd"].loss(x, _cfg(), 0.5)
    assert loss.item() == pytest.approx(0.5 * 28.0 / N_TOKENS)
    loss.backward()
    torch.testing.assert_close(ref_kl.grad, 0.5 * MASK / N_TOKENS)
    assert x.distill_kl.grad is None and (x.logp.grad is None or x.logp.grad.eq(0).all())
    assert stats["kl/ref_teacher_mean"] == pytest.approx(4.0) and stats["kl/distill_mean"] == pytest.approx(ALL_KL)
    assert stats["loss/pg"] == 0.0 and stats["loss/distill"] == pytest.approx(loss.item())
    other, _ = METHODS["opsd"].loss(_inputs(adv=(-3.0, 1.0, 1.0, 1.0), correct=(False,) * 4,
                                            ref_distill_kl=ref_kl.detach()), _cfg(), 0.5)
    assert other.item() == loss.item()  # no reward anywhere


# ----------------------------------------------------------------------------- pure self-distillation

def test_self_distill_is_beta_times_the_kl_on_every_response_and_ignores_rewards():
    results = []
    for adv, correct in (((1.0, -1.0, 2.0, 0.0), (True, False, True, False)), ((0.0,) * 4, (False,) * 4),
                         ((-5.0, 5.0, -1.0, 3.0), (False, True, False, True))):
        x = _inputs(adv=adv, correct=correct)
        loss, stats = METHODS["self_distill"].loss(x, _cfg(gate=True), BETA)
        loss.backward()
        results.append((loss.item(), x.distill_kl.grad.clone(), x.logp.grad))
        assert stats["gate/fraction"] == 1.0 and stats["loss/pg"] == 0.0
    for value, kl_grad, logp_grad in results:
        assert value == pytest.approx(BETA * ALL_KL)
        torch.testing.assert_close(kl_grad, BETA * MASK / N_TOKENS)
        assert logp_grad is None or logp_grad.eq(0).all()


# ----------------------------------------------------------------------------- every method's stats

@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_reports_the_standard_metric_names(name):
    x = _rlsd_inputs()
    x.ref_logp = x.old_logp - 0.5
    x.ref_teacher_logp = x.old_logp + 0.3
    x.ref_distill_kl = KL * 2
    loss, stats = METHODS[name].loss(x, _cfg(), 0.1)
    for key in STANDARD_KEYS:
        assert isinstance(stats[key], float) and math.isfinite(stats[key]), key
    assert stats["loss/total"] == pytest.approx(loss.item())
    assert stats["loss/total"] == pytest.approx(stats["loss/pg"] + stats["loss/distill"] + stats["loss/ref_kl"])


def test_whatif_uses_the_training_formulas():
    response = {"student_logp": [-1.0, -2.0], "old_logp": [-1.0, -2.0], "teacher_logp": [-0.5, -2.5],
                "kl": [0.1, 0.2], "advantage": 1.0, "correct": True}
    weights = token_weights(response, {"loss": {"rlsd_lambda": 1.0, "rlsd_eps_w": 0.2}})
    assert weights["rlsd"] == pytest.approx([min(math.exp(0.5), 1.2), max(math.exp(-0.5), 0.8)])
    assert weights["opsd_fork"] == pytest.approx([0.5, 0.0])
    assert token_weights(response | {"correct": False}, {})["opsd_fork"] == [0.0, 0.0]


# ----------------------------------------------------------------------------- the frozen-teacher fused KL

def _teacher_weight_case(seed=0, h_teacher=5):
    g = torch.Generator().manual_seed(seed)
    n, h, v = 9, 4, 13
    student = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(n, h_teacher, generator=g, dtype=torch.float64)
    teacher_weight = torch.randn(v, h_teacher, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, v, (n,), generator=g)
    return student, weight, teacher, teacher_weight, tokens


@pytest.mark.parametrize("h_teacher", [4, 5])
def test_fused_kl_with_the_teachers_own_head_matches_full_logits(h_teacher):
    student, weight, teacher, teacher_weight, tokens = _teacher_weight_case(h_teacher=h_teacher)
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=torch.bool)
    kl, logp, ent = fused_self_distill(student, teacher, weight, tokens, temperature=0.7, mask=mask,
                                       token_chunk=4, vocab_chunk=5, teacher_weight=teacher_weight)
    log_p = F.log_softmax(student @ weight.T / 0.7, -1)  # (N, V)
    log_q = F.log_softmax(teacher @ teacher_weight.detach().T, -1)  # (N, V)
    want = ((log_p.exp() * (log_p - log_q)).sum(-1) * mask, log_p.gather(-1, tokens[:, None]).squeeze(-1) * mask,
            -(log_p.exp() * log_p).sum(-1) * mask)
    for got, exp in zip((kl, logp, ent), want):
        torch.testing.assert_close(got, exp)
    coef = torch.linspace(-1, 2, 9, dtype=torch.float64)
    got = torch.autograd.grad(((kl + 0.3 * logp - 0.5 * ent) * coef).sum(), [student, weight], retain_graph=True)
    exp = torch.autograd.grad(((want[0] + 0.3 * want[1] - 0.5 * want[2]) * coef).sum(), [student, weight])
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b)
    kl.sum().backward()
    assert teacher_weight.grad is None  # the teacher's head is frozen


def test_fused_kl_teacher_weight_defaults_to_the_students_head():
    student, weight, _, _, tokens = _teacher_weight_case(h_teacher=4)
    teacher = student.detach() + 0.3
    same = fused_self_distill(student, teacher, weight, tokens, token_chunk=4, vocab_chunk=5)
    explicit = fused_self_distill(student, teacher, weight, tokens, token_chunk=4, vocab_chunk=5,
                                  teacher_weight=weight)
    for a, b in zip(same, explicit):
        torch.testing.assert_close(a, b)


def test_fused_kl_rejects_a_teacher_head_of_the_wrong_shape():
    student, weight, teacher, teacher_weight, tokens = _teacher_weight_case(h_teacher=5)
    with pytest.raises(ValueError, match=r"teacher_weight \(12, 5\) must be \(V, H_t\) = \(13, 5\)"):
        fused_self_distill(student, teacher, weight, tokens, teacher_weight=teacher_weight[:12])
    with pytest.raises(ValueError, match=r"teacher_hidden \(8, 5\) must have N = 9 rows"):
        fused_self_distill(student, teacher[:8], weight, tokens, teacher_weight=teacher_weight)
    with pytest.raises(ValueError, match=r"teacher_hidden \(9, 5\) must match student_hidden"):
        fused_self_distill(student, teacher, weight, tokens)
    bad = teacher_weight.detach().clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"teacher_weight \(13, 5\) contains NaN or inf"):
        fused_self_distill(student, teacher, weight, tokens, teacher_weight=bad)


# ----------------------------------------------------------------------------- one real step per method

def _mixed_verdicts(texts, answers):
    """Every other response correct, so each group has a non-zero advantage whatever the random model wrote."""
    return [Verdict(correct=i % 2 == 0, reward=float(i % 2 == 0), status="ok", extracted="x") for i in range(len(texts))]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_training_step_per_method(method, tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, loss__method=method, loss__beta=0.5)
    trainer = build_trainer(cfg, RecordStream(tmp_path), progress=False)
    trainer.verifier.score = _mixed_verdicts
    before = [p.detach().clone() for p in trainer.model.parameters()]
    try:
        metrics = trainer.train_step()
    finally:
        trainer.verifier.close()
    assert metrics["step/skipped"] == 0.0
    for key in STANDARD_KEYS + ("grad/norm", "entropy/mean"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))


@pytest.mark.parametrize("method", ["opsd", "opsd_fork"])
def test_opsd_teacher_temperature_divides_the_frozen_teachers_logits(method, tiny_model_dir, tmp_path):
    tau = 0.5
    cfg = tiny_config(tiny_model_dir, tmp_path, loss__method=method, loss__beta=0.5, optim__micro_batch=64,
                      loss__opsd_teacher_temperature=tau)
    trainer = build_trainer(cfg, RecordStream(tmp_path), progress=False)
    trainer.verifier.score = _mixed_verdicts
    real_sample, seen = trainer.sample_batch, []
    trainer.sample_batch = lambda: seen.append(real_sample()) or seen[-1]
    try:
        metrics = trainer.train_step()
    finally:
        trainer.verifier.close()
    # recompute by hand from the frozen reference (on step 1 the student still equals it)
    ro, ref = seen[0].rollout, trainer.ref_model
    teacher_ids, teacher_mask = trainer.engine.encode_prompts(
        trainer._render([row.teacher_prompt for row in seen[0].rows for _ in range(ro.group_size)]))
    sel = ro.response_mask.bool()  # (B, T)
    with torch.no_grad():
        student = response_hidden(ref, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)[sel]
        teacher = response_hidden(ref, teacher_ids, teacher_mask, ro.response_ids, ro.response_mask)[sel]
        s_logits, t_logits = student @ lm_head_weight(ref).T, teacher @ lm_head_weight(ref).T  # (N, V)
    if method == "opsd":
        measured, key = metrics["kl/ref_teacher_mean"], "kl/ref_teacher_mean"
        want, untempered = (float(self_distill_kl(s_logits, t_logits / t).mean()) for t in (tau, 1.0))
    else:
        measured, key = metrics["opsd/weight_mean"], "opsd/weight_mean"
        gated = torch.tensor([i % 2 == 0 for i in range(sel.shape[0])])[:, None].expand_as(sel)[sel]  # (N,)

        def weight_mean(t):
            logq = F.log_softmax(t_logits / t, -1).gather(-1, ro.response_ids[sel][:, None]).squeeze(-1)  # (N,)
            return float(masked_mean((logq - seen[0].old_logp[sel]).clamp(0, OPSD_CLAMP), gated))  # recomputed
        want, untempered = weight_mean(tau), weight_mean(1.0)
    assert measured == pytest.approx(want, rel=1e-4, abs=1e-6), key
    assert abs(want - untempered) > 1e-2  # the temperature matters in this case


# ----------------------------------------------------------------------------- a new method in one place

def _correct_only(adv: torch.Tensor, correct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A gate other than SDPG's: every correct response, whatever its advantage."""
    return correct.bool()


def _toy_loss(inputs: LossInputs, cfg: LossConfig, beta_k: float):
    """beta_k * KL on the responses the method's gate passed (the step's verdict, `inputs.gate`), no outcome term."""
    return sdpg_loss(logp=inputs.logp, old_logp=inputs.old_logp, adv=torch.zeros_like(inputs.adv), mask=inputs.mask,
                     distill_kl=inputs.distill_kl, beta=beta_k, alpha=0.0,
                     gate=False if inputs.gate is None else inputs.gate)


TOY_COLOR = "#123456"


@pytest.fixture
def toy_method(monkeypatch):
    """The one place a new method is added: its registry entry (loss, gate, what-if weight, colour)."""
    spec = MethodSpec("toy", _toy_loss, "distillation on correct responses only", TOY_COLOR, distills=True,
                      outcome=False, gate=_correct_only, whatif=lambda r, loss: 2 * r["adv"])
    monkeypatch.setitem(METHODS, "toy", spec)
    return spec


def _all_correct(texts, answers):
    """Every response correct: every advantage is 0, so SDPG's gate would pass none, the toy's passes all."""
    return [Verdict(correct=True, reward=1.0, status="ok", extracted="x") for _ in texts]


def test_a_methods_gate_picks_the_teachers_rows_that_its_loss_reads(toy_method, tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, loss__method="toy", loss__beta=0.5)
    b = 4
    mb = MicroBatch(*(torch.ones(b, 3, dtype=torch.long),) * 4, torch.ones(b, 2, dtype=torch.long),
                    torch.ones(b, 2, dtype=torch.long), torch.zeros(b), torch.tensor([True, False, True, False]),
                    old_logp=None)
    ctx = step_context(cfg, toy_method, 0)
    assert gate_verdict(mb, ctx).tolist() == [True, False, True, False]  # what the loss reads (`LossInputs.gate`)
    assert teacher_rows(mb, ctx) == [0, 2]  # no advantage is positive: a hard-coded A > 0 would pick none
    assert teacher_rows(mb, step_context(cfg, METHODS["sdpg"], 0)) == []


def test_a_method_added_in_one_place_trains_records_draws_and_compares(toy_method, tiny_model_dir, tmp_path):
    from experiments.compare import variants
    from lab import whatif_figure
    from lab.style import METHOD_COLORS

    cfg = tiny_config(tiny_model_dir, tmp_path, loss__method="toy", loss__beta=0.5, run__record_groups=1)
    trainer = build_trainer(cfg, RecordStream(tmp_path), progress=False)
    trainer.verifier.score = _all_correct
    trainer.records.write_config(cfg.to_dict())  # as a run does before its first step
    before = [p.detach().clone() for p in trainer.model.parameters()]
    try:
        metrics = trainer.train_step()
    finally:
        trainer.verifier.close()
    trainer.records.emit_metrics(1, metrics)
    # trains: the KL reaches the loss on every response its gate passed (all, with every advantage 0)
    assert metrics["step/skipped"] == 0.0 and metrics["gate/fraction"] == 1.0
    assert metrics["loss/distill"] > 0 and metrics["loss/pg"] == 0.0
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
    # records
    stream = RecordStream.open(tmp_path)
    assert stream.config()["loss"]["method"] == "toy" and [m["step"] for m in stream.metrics()] == [1]
    response = stream.rollouts(1)[0]["responses"][0]
    assert len(response["kl"]) > 0 and max(response["kl"]) > 0
    # draws: its what-if row, in its colour
    weights = token_weights(response, stream.config())
    assert weights["toy"] == pytest.approx([0.0] * len(response["tokens"]))
    fig = whatif_figure(weights, response["tokens"])
    assert METHOD_COLORS["toy"] == TOY_COLOR and any(TOY_COLOR in label and "TOY" in label
                                                      for label in fig.layout.yaxis.ticktext)
    # compares: a variant of the comparison
    assert variants()["toy"] == {"loss.method": "toy"}
