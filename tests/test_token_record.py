"""Per-token records at a real vocabulary size: chunked top-k (no (T, V) tensor) and cached token strings."""
import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import PreTrainedTokenizerFast

from sdpg.fused_kl import TILE_LOGITS
from sdpg.record_store import TopK
from sdpg.embedded.tokenizer import build_char_tokenizer
from sdpg.record_build import token_record, token_records
from sdpg.vocab import token_strings


class LargestTensor(TorchDispatchMode):
    """Records the most elements any tensor produced by any torch op had."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


class IdTokenizer:
    """Decodes id i as "<i>": a stand-in with a vocabulary far larger than the embedded one."""

    def batch_decode(self, seqs):
        return [self.decode(s) for s in seqs]

    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)


def test_token_record_never_builds_a_tokens_by_vocabulary_tensor():
    n, vocab, hidden = 400, 50_000, 16  # n x V = 20M logits, ~5x one record tile
    assert n * vocab > 4 * TILE_LOGITS
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(vocab, hidden, generator=g)  # (V, H)
    student_h, teacher_h = torch.randn(2, n, hidden, generator=g)  # (n, H) each
    ids = torch.randint(0, vocab, (n,), generator=g)  # (n,)
    zeros = torch.zeros(n)  # (n,)
    with LargestTensor() as watch:
        rec = token_record(IdTokenizer(), weight, 0.7, student_h, teacher_h, ids, kl=zeros, logp=zeros,
                           entropy=zeros, old_logp=zeros)
    assert watch.largest <= TILE_LOGITS < n * vocab
    # and the chunked values are the full-softmax ones
    full_s = F.softmax(student_h @ weight.T / 0.7, -1)  # (n, V)
    full_t = F.log_softmax(teacher_h @ weight.T, -1)  # (n, V)
    top_p, top_i = full_s.topk(5, -1)  # (n, 5)
    assert [[t for t, _ in row] for row in rec["student_topk"]] == [[f"<{i}>" for i in r] for r in top_i.tolist()]
    assert torch.allclose(torch.tensor([[p for _, p in row] for row in rec["student_topk"]]), top_p, atol=5e-4)  # fp16
    assert torch.allclose(torch.tensor(rec["teacher_logp"]), full_t.gather(-1, ids[:, None])[:, 0], atol=1e-4)
    assert list(rec["tokens"]) == [f"<{i}>" for i in ids.tolist()] and rec["token_ids"].tolist() == ids.tolist()
    assert rec["kl"].dtype == np.float32 and isinstance(rec["student_topk"], TopK) and "sampler_logp" not in rec


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(["héllo wörld, ünïcode 12+34=46 \\boxed{46}"] * 20,
                             trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")


def _same_as_decode(tokenizer, ids: list[int]) -> bool:
    """Cached strings equal one decode per token, except that partial UTF-8 keeps its bytes (not U+FFFD)."""
    for s, i in zip(token_strings(tokenizer, ids), ids, strict=True):
        want = tokenizer.decode([i])
        if "\ufffd" in want:
            if s.encode("utf-8", "surrogateescape").decode("utf-8", "replace") != want:
                return False
        elif s != want:
            return False
    return True


def test_cached_token_strings_equal_one_decode_per_token():
    for tokenizer in (build_char_tokenizer(), _byte_level_tokenizer()):
        ids = list(range(len(tokenizer))) * 2
        assert _same_as_decode(tokenizer, ids[::-1]) and _same_as_decode(tokenizer, [3, 3, 1])
    partial = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    assert partial and all(any(0xDC80 <= ord(c) <= 0xDCFF for c in token_strings(tokenizer, [i])[0]) for i in partial)


class CountingWeight(TorchDispatchMode):
    """Counts the ops that read a slice of `weight` (each vocabulary tile of the head is one)."""

    def __init__(self, weight):
        super().__init__()
        self.weight, self.reads = weight, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.startswith("slice") and args and args[0] is self.weight:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def test_a_group_of_records_reads_the_head_once_and_equals_one_record_per_response():
    vocab, hidden = 3000, 16
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(vocab, hidden, generator=g)  # (V, H)
    responses = []
    for n in (5, 9, 1):
        student_h, teacher_h = torch.randn(2, n, hidden, generator=g)  # (n, H) each
        stats = torch.randn(5, n, generator=g)  # (5, n)
        responses.append({"student_h": student_h, "teacher_h": teacher_h, "ids": torch.randint(0, vocab, (n,), generator=g),
                          "kl": stats[0], "logp": stats[1], "entropy": stats[2], "old_logp": stats[3],
                          "ref_logp": stats[4] if n != 9 else None, "sampler_logp": stats[3] + 0.01})
    with CountingWeight(weight) as together:
        batched = token_records(IdTokenizer(), weight, 0.7, responses)
    singles = []
    with CountingWeight(weight) as apart:
        for r in responses:
            singles.append(token_record(IdTokenizer(), weight, 0.7, r["student_h"], r["teacher_h"], r["ids"], kl=r["kl"],
                                        logp=r["logp"], entropy=r["entropy"], old_logp=r["old_logp"],
                                        ref_logp=r["ref_logp"], sampler_logp=r["sampler_logp"]))
    assert together.reads >= 1 and apart.reads == len(responses) * together.reads
    for one, many in zip(singles, batched, strict=True):
        assert one.keys() == many.keys() and ("ref_logp" in one) == (len(one["tokens"]) != 9)
        for key in ("tokens", "student_logp", "old_logp", "kl", "entropy", "sampler_logp"):
            assert np.array_equal(one[key], many[key]), key
        for key in ("student_topk", "teacher_topk"):
            assert [[t for t, _ in row] for row in one[key]] == [[t for t, _ in row] for row in many[key]]
            assert torch.allclose(torch.tensor([[p for _, p in row] for row in one[key]]),
                                  torch.tensor([[p for _, p in row] for row in many[key]]), atol=1e-3)
        assert torch.allclose(torch.tensor(one["teacher_logp"]), torch.tensor(many["teacher_logp"]), atol=1e-5)
        assert np.allclose(many["sampler_logp"], many["old_logp"] + 0.01)
    assert token_records(IdTokenizer(), weight, 0.7, []) == []
