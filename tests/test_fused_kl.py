"""The fused hidden-state KL against the plain full-logits computation, in values and gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from sdpg.losses import fused_self_distill, self_distill_kl

N, H, V = 11, 6, 29  # chunk sizes below divide neither N nor V


def _inputs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(N, H, generator=g, dtype=dtype).requires_grad_()
    teacher = (student.detach() + 0.5 * torch.randn(N, H, generator=g, dtype=dtype)).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_()
    tokens = torch.randint(0, V, (N,), generator=g)
    mask = torch.rand(N, generator=g) > 0.3
    return student, teacher, weight, tokens, mask


def _plain(student, teacher, weight, tokens, temperature, mask):
    """Full logits: KL via self_distill_kl, log-prob and entropy via log_softmax; masked tokens -> 0."""
    student_logits = student @ weight.T  # (N, V)
    teacher_logits = teacher.detach() @ weight.detach().T  # (N, V)
    kl = self_distill_kl(student_logits, teacher_logits, temperature=temperature)  # (N,)
    log_p = F.log_softmax(student_logits / temperature, -1)  # (N, V)
    logp = log_p.gather(-1, tokens[:, None]).squeeze(-1)  # (N,)
    entropy = -(log_p.exp() * log_p).sum(-1)  # (N,)
    keep = mask.to(kl.dtype)
    return kl * keep, logp * keep, entropy * keep


def _weighted_sum(outputs, weights):
    return sum((out.to(torch.float64) * w).sum() for out, w in zip(outputs, weights) if w is not None)


@pytest.mark.parametrize("token_chunk, vocab_chunk", [(4, 7), (3, 100), (64, 5), (1, 3), (5, 1)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_equals_plain_values_and_gradients(token_chunk, vocab_chunk, temperature):
    student, teacher, weight, tokens, mask = _inputs()
    fused = fused_self_distill(student, teacher, weight, tokens, temperature=temperature, mask=mask,
                               token_chunk=token_chunk, vocab_chunk=vocab_chunk)
    plain = _plain(student, teacher, weight, tokens, temperature, mask)
    for got, want in zip(fused, plain):
        torch.testing.assert_close(got, want)
    weights = torch.randn(3, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(_weighted_sum(fused, weights), [student, weight])
    want = torch.autograd.grad(_weighted_sum(plain, weights), [student, weight])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert got[0][~mask].eq(0).all()


@pytest.mark.parametrize("used", [(1, None, None), (None, 1, None), (None, None, 1), (1, 1, None)])
def test_gradient_of_any_subset_of_outputs(used):
    student, teacher, weight, tokens, mask = _inputs(seed=2)
    fused = fused_self_distill(student, teacher, weight, tokens, temperature=1.3, token_chunk=4, vocab_chunk=8)
    plain = _plain(student, teacher, weight, tokens, 1.3, torch.ones(N, dtype=torch.bool))
    weights = [None if u is None else torch.linspace(-1, 2, N, dtype=torch.float64) for u in used]
    got = torch.autograd.grad(_weighted_sum(fused, weights), [student, weight])
    want = torch.autograd.grad(_weighted_sum(plain, weights), [student, weight])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def _small(seed):
    student, teacher, weight, tokens, mask = _inputs(seed=seed)
    n = 5
    return (student[:n].detach().requires_grad_(), teacher[:n].detach(), weight.detach().requires_grad_(),
            tokens[:n], mask[:n])


def test_gradcheck_all_three_outputs_wrt_student_hidden():
    student, teacher, weight, tokens, mask = _small(3)

    def fn(s):
        return fused_self_distill(s, teacher, weight.detach(), tokens, temperature=0.8, mask=mask,
                                  token_chunk=2, vocab_chunk=12)

    assert torch.autograd.gradcheck(fn, (student,))


def test_gradcheck_all_three_outputs_wrt_weight():
    # Finite differences on the weight would also move the teacher's logits, which by design send no
    # gradient. A zero teacher hidden state keeps q uniform whatever the weight, so the numerical
    # Jacobian is the student-side one. (The general case is compared with autograd above.)
    student, teacher, weight, tokens, mask = _small(3)
    weight = weight[:13, :].detach().requires_grad_()  # fewer finite differences
    tokens = tokens % 13

    def fn(w):
        return fused_self_distill(student.detach(), torch.zeros_like(teacher), w, tokens, temperature=0.8,
                                  mask=mask, token_chunk=2, vocab_chunk=6)

    assert torch.autograd.gradcheck(fn, (weight,))


def test_teacher_gets_no_gradient_and_the_tied_weight_only_the_students():
    student, teacher, weight, tokens, _ = _inputs(seed=4)
    kl, logp, entropy = fused_self_distill(student, teacher, weight, tokens, token_chunk=4, vocab_chunk=8)
    (kl.sum() + logp.sum() + entropy.sum()).backward()
    assert teacher.grad is None
    # with one weight tensor for both roles, only the student's logits may send it gradient
    (fused_grad_w,) = torch.autograd.grad(
        fused_self_distill(student.detach(), teacher.detach(), weight, tokens)[0].sum(), weight)
    for detach_teacher in (True, False):
        teacher_weight = weight.detach() if detach_teacher else weight
        log_p = F.log_softmax(student.detach() @ weight.T, -1)  # (N, V)
        log_q = F.log_softmax(teacher.detach() @ teacher_weight.T, -1)  # (N, V)
        kl_plain = (log_p.exp() * (log_p - log_q)).sum(-1)  # (N,)
        (grad_w,) = torch.autograd.grad(kl_plain.sum(), weight)
        assert torch.allclose(fused_grad_w, grad_w) == detach_teacher


def test_bf16_inputs_run_in_float32_and_stay_close():
    student, teacher, weight, tokens, mask = _inputs(dtype=torch.float32, seed=5)
    exact = fused_self_distill(student, teacher, weight, tokens, mask=mask, token_chunk=4, vocab_chunk=8)
    exact_grads = torch.autograd.grad(sum(o.sum() for o in exact), [student, weight])
    low = [x.detach().bfloat16().requires_grad_() for x in (student, teacher, weight)]
    outs = fused_self_distill(low[0], low[1], low[2], tokens, mask=mask, token_chunk=4, vocab_chunk=8)
    assert all(o.dtype == torch.float32 for o in outs)
    grads = torch.autograd.grad(sum(o.sum() for o in outs), [low[0], low[2]])
    assert grads[0].dtype == grads[1].dtype == torch.bfloat16
    for got, want in zip(outs, exact):
        torch.testing.assert_close(got, want, atol=0.1, rtol=0.05)
    for got, want in zip(grads, exact_grads):
        torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.05)


def test_masked_tokens_are_zero_and_identical_hidden_states_give_zero_kl():
    student, _, weight, tokens, mask = _inputs(seed=6)
    kl, logp, entropy = fused_self_distill(student, student.detach(), weight, tokens, mask=mask,
                                           token_chunk=4, vocab_chunk=8)
    torch.testing.assert_close(kl, torch.zeros(N, dtype=kl.dtype), atol=1e-12, rtol=0)
    assert logp[~mask].eq(0).all() and entropy[~mask].eq(0).all()
    assert logp[mask].lt(0).all() and entropy[mask].gt(0).all()
    padded = torch.where(mask, tokens, -100)  # masked slots may hold an ignore id
    torch.testing.assert_close(fused_self_distill(student, student.detach(), weight, padded, mask=mask)[1], logp)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


def test_never_allocates_a_tokens_by_vocabulary_tensor():
    n, h, v = 64, 4, 300  # N x V = 19200, far above the weight (V x H = 1200) and a 2 x 16 x 64 tile
    g = torch.Generator().manual_seed(7)
    student = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    teacher, tokens = torch.randn(n, h, generator=g), torch.randint(0, v, (n,), generator=g)
    with _LargestTensor() as probe:
        outs = fused_self_distill(student, teacher, weight, tokens, token_chunk=16, vocab_chunk=64)
        sum(o.sum() for o in outs).backward()
    assert probe.largest <= max(v * h, 2 * 16 * 64)  # a student-over-teacher tile
    with _LargestTensor() as probe:
        self_distill_kl(student @ weight.T, teacher @ weight.T)
    assert probe.largest >= n * v  # the probe does see full-logit tensors


def test_bad_input():
    student, teacher, weight, tokens, mask = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"student_hidden must be a 2-D floating-point tensor.*torch.int64"):
        fused_self_distill(student.long(), teacher, weight, tokens)
    with pytest.raises(ValueError, match=r"flatten \(B, T, H\)"):
        fused_self_distill(student[None], teacher, weight, tokens)
    with pytest.raises(ValueError, match=r"teacher_hidden \(10, 6\) must match student_hidden \(11, 6\)"):
        fused_self_distill(student, teacher[:10], weight, tokens)
    with pytest.raises(ValueError, match=r"lm_head_weight \(29, 5\) must be \(V, H\) with H = 6"):
        fused_self_distill(student, teacher, weight[:, :5], tokens)
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 29\)"):
        fused_self_distill(student, teacher, weight, tokens + V)
    with pytest.raises(ValueError, match=r"tokens must be an integer tensor of shape \(11,\)"):
        fused_self_distill(student, teacher, weight, tokens.float())
    with pytest.raises(ValueError, match=r"mask must have shape \(11,\)"):
        fused_self_distill(student, teacher, weight, tokens, mask=mask[:3])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        fused_self_distill(student, teacher, weight, tokens, temperature=0.0)
    bad = teacher.detach().clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"teacher_hidden \(11, 6\) contains NaN or inf"):
        fused_self_distill(student, bad, weight, tokens)
    bad_weight = weight.detach().clone()
    bad_weight[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"lm_head_weight \(29, 6\) contains NaN or inf"):
        fused_self_distill(student, teacher, bad_weight, tokens)
