"""Loss terms against closed forms worked out by hand (SPEC.md formulas)."""
import math

import pytest
import torch

from sdpg.forward import logits_self_distill
from sdpg.losses import (
    REF_MODES, aggregate, beta_schedule, clipped_pg_loss, distill_token_advantage, fused_self_distill,
    group_advantages, masked_mean, ref_kl_penalty, sdpg_loss, self_distill_kl,
)

# ----------------------------------------------------------------------------- reductions


def test_masked_mean_by_hand_and_padding_nan_does_not_leak():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 4 + 6) / 4)
    assert masked_mean(x, mask, dim=-1).tolist() == pytest.approx([1.5, 5.0])


def test_masked_mean_empty_row_is_zero_and_empty_mask_is_an_error():
    x = torch.ones(2, 3)
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    assert masked_mean(x, mask, dim=-1).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="selects no position"):
        masked_mean(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="shape"):
        masked_mean(x, torch.ones(3, 2))


def test_aggregate_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # lengths 3, 1, and an empty response
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(loss, mask, "seq-mean-token-sum").item() == pytest.approx((6.0 + 4.0) / 2)
    with pytest.raises(ValueError, match="seq-mean-token-sum"):
        aggregate(loss, mask, "sum")
    with pytest.raises(ValueError, match="selects no position"):
        aggregate(loss, torch.zeros(3, 3), "token-mean")


# ----------------------------------------------------------------------------- advantages


def test_group_advantages_unbiased_std_by_hand():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    # mean 0.25; unbiased var = (0.75^2 + 3 * 0.25^2) / 3 = 0.25, std 0.5
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6)
    torch.testing.assert_close(adv, expected)


def test_group_advantages_equal_groups_size_one_and_no_scale():
    rewards = torch.tensor([0.1] * 7 + [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    adv = group_advantages(rewards, 7)
    assert adv[:7].eq(0).all()
    assert adv[7:].sum().abs() < 1e-6 and adv[7:].abs().gt(0.5).all()
    assert group_advantages(torch.tensor([1.0, 0.0, 1.0]), 1).eq(0).all()
    dr = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0]), 3, scale="none")
    torch.testing.assert_close(dr, torch.tensor([2 / 3, -1 / 3, -1 / 3, -4 / 3, 5 / 3, -1 / 3]))
    assert group_advantages(torch.tensor([True, False]), 2).dtype == torch.float32


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="unknown advantage scale"):
        group_advantages(torch.zeros(4), 2, scale="rank")
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([1.0, float("nan")]), 2)


# ----------------------------------------------------------------------------- clipped surrogate

RATIOS = [0.5, 0.9, 1.0, 1.3, 5.0]


def _pg(adv_sign: float, clip_c=None):
    old = torch.zeros(2, 5)
    logp = torch.log(torch.tensor([RATIOS, RATIOS])).requires_grad_()
    adv = torch.tensor([adv_sign, 0.0])
    loss, stats = clipped_pg_loss(logp, old, adv, torch.ones(2, 5), clip_c=clip_c)
    return logp, loss, stats


def test_clipped_surrogate_positive_advantage():
    logp, loss, stats = _pg(+1.0)
    torch.testing.assert_close(loss[0], torch.tensor([-0.5, -0.9, -1.0, -1.2, -1.2]))
    loss[0].sum().backward()
    # d(-r)/dlogp = -r inside the trust region, 0 where the upper clip holds
    torch.testing.assert_close(logp.grad[0], torch.tensor([-0.5, -0.9, -1.0, 0.0, 0.0]))
    assert stats["loss/clipfrac_high"] == pytest.approx(2 / 10)
    assert stats["loss/clipfrac_low"] == 0.0
    assert stats["kl/approx_old"] == pytest.approx(-2 * sum(map(math.log, RATIOS)) / 10)
    assert "loss/dual_clipfrac" not in stats


def test_clipped_surrogate_negative_advantage_and_dual_clip():
    logp, loss, stats = _pg(-1.0)
    torch.testing.assert_close(loss[0], torch.tensor([0.8, 0.9, 1.0, 1.3, 5.0]))
    assert stats["loss/clipfrac_low"] == pytest.approx(1 / 10)
    logp, loss, stats = _pg(-1.0, clip_c=3.0)
    torch.testing.assert_close(loss[0], torch.tensor([0.8, 0.9, 1.0, 1.3, 3.0]))
    loss[0].sum().backward()
    torch.testing.assert_close(logp.grad[0], torch.tensor([0.0, 0.9, 1.0, 1.3, 0.0]))
    assert stats["loss/dual_clipfrac"] == pytest.approx(1 / 10)
    with pytest.raises(ValueError, match="clip_c must be > 1"):
        _pg(-1.0, clip_c=0.5)


def test_clipped_surrogate_token_advantage_equals_sequence_advantage():
    logp, old, mask = torch.randn(3, 4), torch.randn(3, 4), torch.ones(3, 4)
    adv = torch.tensor([1.0, -2.0, 0.5])
    seq, _ = clipped_pg_loss(logp, old, adv, mask, clip_high=0.28, clip_c=10.0)
    tok, _ = clipped_pg_loss(logp, old, adv[:, None].expand(3, 4), mask, clip_high=0.28, clip_c=10.0)
    torch.testing.assert_close(seq, tok)
    with pytest.raises(ValueError, match=r"adv must be \(B,\)"):
        clipped_pg_loss(logp, old, torch.ones(4), mask)


# ----------------------------------------------------------------------------- reference anchor

LOG_W = [-1.0, 0.0, 0.5]
REF_CASES = {  # mode: (value, d value / d logp) as functions of log w
    "urkl": (lambda w: 0.5 * w * w, lambda w: w),
    "ufkl": (lambda w: math.exp(-w) + w, lambda w: 1 - math.exp(-w)),
    "rkl": (lambda w: 0.5 * (w + 1) ** 2, lambda w: w + 1),
    "fkl": (lambda w: math.exp(-w), lambda w: -math.exp(-w)),
    "k3": (lambda w: math.exp(-w) + w - 1, lambda w: 1 - math.exp(-w)),
}


@pytest.mark.parametrize("mode", REF_MODES)
def test_ref_kl_modes_values_and_gradients(mode):
    value, grad = REF_CASES[mode]
    ref_logp = torch.tensor([[-2.0, -1.0, -3.0]])
    logp = (ref_logp + torch.tensor([LOG_W])).requires_grad_()
    penalty = ref_kl_penalty(logp, ref_logp, mode)
    penalty.sum().backward()
    torch.testing.assert_close(penalty[0], torch.tensor([value(w) for w in LOG_W]))
    torch.testing.assert_close(logp.grad[0], torch.tensor([grad(w) for w in LOG_W]))


def test_ref_kl_bad_mode_names_valid_ones():
    with pytest.raises(ValueError, match="urkl.*ufkl.*rkl.*fkl.*k3"):
        ref_kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "kl")


# ----------------------------------------------------------------------------- distillation KL


def test_self_distill_kl_identical_logits_is_zero():
    logits = torch.randn(2, 3, 11)
    torch.testing.assert_close(self_distill_kl(logits, logits.clone()), torch.zeros(2, 3), atol=1e-6, rtol=0)


def test_self_distill_kl_two_token_vocabulary_by_hand():
    # p = (1/4, 3/4), q = (1/2, 1/2): KL = 1/4 log(1/2) + 3/4 log(3/2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    student = torch.tensor([[0.0, math.log(3.0)]])
    teacher = torch.tensor([[5.0, 5.0]])
    assert self_distill_kl(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    # temperature divides the student logits only
    assert self_distill_kl(2 * student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert self_distill_kl(student, 2 * teacher, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    swapped = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert self_distill_kl(teacher, student).item() == pytest.approx(swapped, rel=1e-6)


def test_self_distill_kl_is_float32_for_bf16_and_teacher_gets_no_gradient():
    student = torch.randn(4, 9, dtype=torch.bfloat16, requires_grad=True)
    teacher = torch.randn(4, 9, dtype=torch.bfloat16, requires_grad=True)
    kl = self_distill_kl(student, teacher)
    assert kl.dtype == torch.float32 and kl.shape == (4,)
    kl.sum().backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_self_distill_kl_gradcheck():
    student = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: self_distill_kl(s, teacher, temperature=0.7), (student,))


def test_prop_3_1_kl_gradient_is_a_policy_gradient_with_zero_mean_advantage():
    torch.manual_seed(0)
    student = torch.randn(6, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, dtype=torch.float64)
    kl = self_distill_kl(student[None], teacher[None])[0]
    (grad_kl,) = torch.autograd.grad(kl, student)
    log_p = torch.log_softmax(student.detach(), -1)
    log_q = torch.log_softmax(teacher, -1)
    p = log_p.exp()
    a_dist = kl.detach() - (log_p - log_q)  # (V,) advantage of every action
    grad_log_p = torch.autograd.functional.jacobian(lambda s: torch.log_softmax(s, -1), student.detach())  # (V, V)
    policy_gradient = (p * -a_dist) @ grad_log_p  # E_{a~p}[-A_dist(a) grad log p(a)], exact over V
    torch.testing.assert_close(grad_kl, policy_gradient)
    assert (p * a_dist).sum().abs() < 1e-12
    sampled = 2
    helper = distill_token_advantage(kl.detach()[None], log_p[sampled][None], log_q[sampled][None])
    torch.testing.assert_close(helper[0], a_dist[sampled])


def test_self_distill_kl_bad_input():
    logits = torch.randn(2, 5)
    with pytest.raises(ValueError, match="student_logits must be a floating-point"):
        self_distill_kl(logits.long(), logits)
    with pytest.raises(ValueError, match=r"teacher_logits \(2, 4\) must match student_logits \(2, 5\)"):
        self_distill_kl(logits, logits[:, :4])
    bad = logits.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"teacher_logits \(2, 5\) contains NaN"):
        self_distill_kl(logits, bad)
    bad[1, 3] = float("-inf")
    with pytest.raises(ValueError, match=r"student_logits \(2, 5\) contains NaN or inf"):
        self_distill_kl(bad, logits)


# ----------------------------------------------------------------------------- schedule


def test_beta_schedule_edges():
    beta, total = 1e-3, 400
    assert beta_schedule(0, total, beta, 50, 350) == 0.0
    assert beta_schedule(25, total, beta, 50, 350) == pytest.approx(beta / 2)
    assert beta_schedule(50, total, beta, 50, 350) == pytest.approx(beta)
    assert beta_schedule(225, total, beta, 50, 350) == pytest.approx(beta / 2)
    assert beta_schedule(400, total, beta, 50, 350) == 0.0
    assert beta_schedule(450, total, beta, 50, 350) == 0.0  # clamped, never negative
    assert beta_schedule(0, total, beta, 0, 0) == beta
    assert beta_schedule(399, total, beta, 0, 0) == beta
    with pytest.raises(ValueError, match="warmup_steps"):
        beta_schedule(0, total, beta, -1, 0)


def _fork_effective_beta(beta, current_step, total_steps, warmup_steps, decay_steps):
    """The authors' fork's `_compute_effective_beta` (verl/trainer/ppo/core_algos.py), restated as an
    independent reference: warmup while k < T_warm, decay once k >= T - T_decay."""
    effective = beta
    if warmup_steps > 0 and current_step < warmup_steps:
        effective = beta * (current_step / warmup_steps)
    if decay_steps > 0 and total_steps > 0 and current_step >= total_steps - decay_steps:
        effective = effective * (max(total_steps - current_step, 0) / decay_steps)
    return effective


@pytest.mark.parametrize("total, warm, decay", [(400, 50, 350), (400, 0, 0), (30, 10, 5), (12, 20, 0), (7, 0, 7)])
def test_beta_schedule_matches_the_forks_for_steps_one_to_T(total, warm, decay):
    beta = 1e-3
    ours = [beta_schedule(k, total, beta, warm, decay) for k in range(1, total + 1)]
    fork = [_fork_effective_beta(beta, k, total, warm, decay) for k in range(1, total + 1)]
    assert ours == pytest.approx(fork, rel=1e-12, abs=0.0)
    if warm:
        assert ours[0] == pytest.approx(beta / warm * (min(1, (total - 1) / decay) if decay else 1))
    if decay:
        assert ours[-1] == 0.0  # the last training step distils with weight 0, as in verl


# ----------------------------------------------------------------------------- KL clamp

def _clamp_case():
    """Six tokens, V = H = 8, an identity-like LM head; the teacher is peaked far from the student on two
    tokens (KL ~ 50 nats there, < 1 elsewhere)."""
    g = torch.Generator().manual_seed(0)
    weight = torch.eye(8) + 0.01 * torch.randn(8, 8, generator=g)  # (V, H)
    student = 0.3 * torch.randn(6, 8, generator=g)  # (N, H)
    teacher = student + 0.3 * torch.randn(6, 8, generator=g)  # (N, H)
    teacher[1] = torch.tensor([60.0, 0, 0, 0, 0, 0, 0, 0])
    teacher[4] = torch.tensor([0, 0, 0, 0, 0, 0, 0, 60.0])
    tokens = torch.randint(0, 8, (6,), generator=g)  # (N,)
    return student, teacher, weight, tokens


def _distill_grads(path, kl_clamp):
    student, teacher, weight, tokens = _clamp_case()
    student.requires_grad_()
    kl, logp, _ = path(student, teacher, weight, tokens)  # (N,)
    kl_mat = kl.view(2, 3)  # (B, T)
    loss, stats = sdpg_loss(logp=logp.detach().view(2, 3), old_logp=logp.detach().view(2, 3), adv=torch.ones(2),
                            mask=torch.ones(2, 3), distill_kl=kl_mat, beta=0.5, alpha=0.0, gate=False,
                            kl_clamp=kl_clamp)
    (grad,) = torch.autograd.grad(loss, student)
    return kl.detach(), loss, stats, grad


@pytest.mark.parametrize("path", [fused_self_distill, logits_self_distill], ids=["fused", "materialised"])
def test_kl_clamp_zeroes_the_gradient_of_clamped_tokens_in_both_kl_paths(path):
    kl, loss, stats, grad = _distill_grads(path, 20.0)
    clamped = kl > 20.0
    assert clamped.tolist() == [False, True, False, False, True, False]  # the case is what it claims
    _, loss_off, stats_off, grad_off = _distill_grads(path, 0.0)
    assert grad[clamped].eq(0).all() and grad_off[clamped].abs().sum() > 1.0
    torch.testing.assert_close(grad[~clamped], grad_off[~clamped], rtol=0, atol=0)  # others untouched
    assert grad[~clamped].abs().sum() > 0
    assert stats["loss/distill"] == pytest.approx(0.5 * float(kl.clamp(max=20.0).mean()), rel=1e-6)
    assert stats["kl/clamped_fraction"] == pytest.approx(2 / 6)
    assert stats["kl/distill_mean"] == pytest.approx(float(kl.mean()))  # the statistic stays unclamped
    assert stats_off["kl/clamped_fraction"] == 0.0


def test_kl_clamp_off_is_the_unclamped_loss_exactly():
    kl, loss_off, _, _ = _distill_grads(fused_self_distill, 0.0)
    assert torch.equal(loss_off.detach(), -1.0 + 0.5 * kl.view(2, 3).sum() / 6)  # pg term -A = -1 per token
    _, loss_high, _, _ = _distill_grads(fused_self_distill, 1e6)  # a clamp no token reaches changes nothing
    assert torch.equal(loss_high.detach(), loss_off.detach())
    with pytest.raises(ValueError, match="kl_clamp must be >= 0"):
        _distill_grads(fused_self_distill, -1.0)


# ----------------------------------------------------------------------------- total loss

def _batch(seed=0):
    torch.manual_seed(seed)
    b, t, v = 3, 4, 7
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    return dict(
        logp=(-torch.rand(b, t)).requires_grad_(), old_logp=-torch.rand(b, t), ref_logp=-torch.rand(b, t),
        adv=torch.tensor([1.0, -0.5, 0.0]), mask=mask,
        student_logits=torch.randn(b, t, v, requires_grad=True), teacher_logits=torch.randn(b, t, v),
    )


def test_sdpg_loss_is_the_sum_of_its_parts_by_hand():
    d = _batch()
    kw = dict(beta=0.3, alpha=0.2, ref_mode="ufkl", clip_c=3.0, temperature=0.8)
    loss, stats = sdpg_loss(**d, **kw)
    pg, _ = clipped_pg_loss(d["logp"], d["old_logp"], d["adv"], d["mask"], clip_c=3.0)
    kl = self_distill_kl(d["student_logits"], d["teacher_logits"], temperature=0.8)
    gate = torch.tensor([[1.0], [0.0], [0.0]])  # only the first sequence has A > 0
    ref = ref_kl_penalty(d["logp"], d["ref_logp"], "ufkl")
    n_tokens = d["mask"].sum()
    keep = d["mask"].bool()
    by_hand = (pg[keep].sum() + 0.3 * (kl * gate)[keep].sum() + 0.2 * ref[keep].sum()) / n_tokens
    torch.testing.assert_close(loss, by_hand)
    assert stats["loss/total"] == pytest.approx(stats["loss/pg"] + stats["loss/distill"] + stats["loss/ref_kl"])
    assert stats["loss/distill"] == pytest.approx(0.3 * kl[0].sum().item() / 9)
    assert stats["kl/distill_mean"] == pytest.approx(kl[keep].mean().item())
    assert stats["kl/distill_gated_mean"] == pytest.approx(kl[0].mean().item())
    assert stats["kl/ref_mean"] == pytest.approx(ref[keep].mean().item())
    assert stats["gate/fraction"] == pytest.approx(1 / 3)
    assert stats["beta/effective"] == 0.3
    grads = torch.autograd.grad(loss, [d["logp"], d["student_logits"]])
    expected = torch.autograd.grad(by_hand, [d["logp"], d["student_logits"]])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_sdpg_loss_logits_path_equals_distill_kl_path():
    d = _batch(1)
    student, teacher = d.pop("student_logits"), d.pop("teacher_logits")
    from_logits, s1 = sdpg_loss(**d, student_logits=student, teacher_logits=teacher, temperature=1.3, beta=0.5)
    (g1,) = torch.autograd.grad(from_logits, student)
    kl = self_distill_kl(student, teacher, temperature=1.3)
    from_kl, s2 = sdpg_loss(**d, distill_kl=kl, beta=0.5)
    (g2,) = torch.autograd.grad(from_kl, student)
    torch.testing.assert_close(from_logits, from_kl)
    torch.testing.assert_close(g1, g2)
    assert s1 == pytest.approx(s2)


@pytest.mark.parametrize("gate, expected_rows", [(True, [0]), (False, [0, 1, 2])])
def test_gate_counts_positive_advantage_sequences_only(gate, expected_rows):
    d = _batch()
    for key in ("student_logits", "teacher_logits", "ref_logp"):
        d.pop(key)
    kl = torch.arange(12.0).view(3, 4)
    _, stats = sdpg_loss(**d, distill_kl=kl, beta=1.0, alpha=0.0, gate=gate)
    keep = d["mask"].bool()
    expected = sum(kl[r][keep[r]].sum().item() for r in expected_rows) / keep.sum().item()
    assert stats["loss/distill"] == pytest.approx(expected)
    assert stats["gate/fraction"] == pytest.approx(len(expected_rows) / 3)


def test_gate_with_token_advantages_uses_the_sequence_value_and_can_close_entirely():
    d = _batch()
    mask = d["mask"]
    token_adv = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [2.0, 2.0, -9.0, -9.0], [0.0, 0.0, 0.0, 5.0]])
    kl = torch.ones(3, 4)
    _, stats = sdpg_loss(logp=d["logp"], old_logp=d["old_logp"], adv=token_adv, mask=mask, distill_kl=kl,
                         beta=1.0, alpha=0.0)
    assert stats["gate/fraction"] == pytest.approx(1 / 3)  # only row 1 is positive on its response tokens
    assert stats["loss/distill"] == pytest.approx(2 / 9)
    _, stats = sdpg_loss(logp=d["logp"], old_logp=d["old_logp"], adv=-torch.ones(3), mask=mask,
                         distill_kl=kl, beta=1.0, alpha=0.0)
    assert stats["gate/fraction"] == 0.0 and stats["kl/distill_gated_mean"] == 0.0
    assert stats["loss/distill"] == 0.0


def test_sdpg_loss_without_distillation_or_reference():
    d = _batch()
    loss, stats = sdpg_loss(logp=d["logp"], old_logp=d["old_logp"], adv=d["adv"], mask=d["mask"], beta=0.0, alpha=0.0)
    pg, _ = clipped_pg_loss(d["logp"], d["old_logp"], d["adv"], d["mask"])
    torch.testing.assert_close(loss, aggregate(pg, d["mask"]))
    assert stats["loss/distill"] == 0.0 and stats["loss/ref_kl"] == 0.0
    assert "kl/distill_mean" not in stats and "kl/ref_mean" not in stats


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "seq-mean-token-sum"])
def test_sdpg_loss_aggregation_modes_apply_to_every_term(agg):
    d = _batch()
    loss, stats = sdpg_loss(**d, beta=0.3, alpha=0.2, agg=agg)
    pg, _ = clipped_pg_loss(d["logp"], d["old_logp"], d["adv"], d["mask"])
    kl = self_distill_kl(d["student_logits"], d["teacher_logits"]) * torch.tensor([[1.0], [0.0], [0.0]])
    ref = ref_kl_penalty(d["logp"], d["ref_logp"], "urkl")
    torch.testing.assert_close(loss, aggregate(pg + 0.3 * kl + 0.2 * ref, d["mask"], agg))


def test_sdpg_loss_bad_input():
    d = _batch()
    base = {k: d[k] for k in ("logp", "old_logp", "adv", "mask")}
    kl = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="beta > 0 needs distill_kl"):
        sdpg_loss(**base, alpha=0.0)
    with pytest.raises(ValueError, match="not both"):
        sdpg_loss(**base, distill_kl=kl, student_logits=d["student_logits"], teacher_logits=d["teacher_logits"],
                  alpha=0.0)
    with pytest.raises(ValueError, match="both student_logits and teacher_logits"):
        sdpg_loss(**base, student_logits=d["student_logits"], alpha=0.0)
    with pytest.raises(ValueError, match="alpha > 0 needs ref_logp"):
        sdpg_loss(**base, distill_kl=kl)
    with pytest.raises(ValueError, match=r"distill_kl must be a floating-point \(B, T\) = \(3, 4\)"):
        sdpg_loss(**base, distill_kl=torch.zeros(12), alpha=0.0)
    with pytest.raises(ValueError, match=r"old_logp \(3, 5\) must match logp \(3, 4\)"):
        sdpg_loss(**{**base, "old_logp": torch.zeros(3, 5)}, distill_kl=kl, alpha=0.0)
    with pytest.raises(ValueError, match="selects no position"):
        sdpg_loss(**{**base, "mask": torch.zeros(3, 4)}, distill_kl=kl, alpha=0.0)
    with pytest.raises(ValueError, match="must be floating point"):
        sdpg_loss(**{**base, "logp": torch.zeros(3, 4, dtype=torch.long)}, distill_kl=kl, alpha=0.0)


def test_sdpg_loss_non_finite_input_on_response_tokens_is_named_but_padding_is_ignored():
    d = _batch()
    base = {k: d[k] for k in ("logp", "old_logp", "adv", "mask")}
    kl = torch.zeros(3, 4)
    padded = base["old_logp"].clone()
    padded[1, 3] = float("nan")  # a padding position
    loss, _ = sdpg_loss(**{**base, "old_logp": padded}, distill_kl=kl, alpha=0.0)
    assert torch.isfinite(loss)
    kl_bad = kl.clone()
    kl_bad[0, 1] = float("inf")
    with pytest.raises(ValueError, match=r"distill_kl \(3, 4\) contains NaN or inf"):
        sdpg_loss(**base, distill_kl=kl_bad, alpha=0.0)
