"""Per-token records at a real vocabulary size: chunked top-k (no (T, V) tensor) and cached token strings."""
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import PreTrainedTokenizerFast

from sdpg.fused_kl import TILE_LOGITS
from sdpg.embedded.tokenizer import build_char_tokenizer
from sdpg.trainer import token_record
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
    assert torch.allclose(torch.tensor([[p for _, p in row] for row in rec["student_topk"]]), top_p, atol=1e-5)
    assert torch.allclose(torch.tensor(rec["teacher_logp"]), full_t.gather(-1, ids[:, None])[:, 0], atol=1e-4)
    assert rec["tokens"] == [f"<{i}>" for i in ids.tolist()]


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(["héllo wörld, ünïcode 12+34=46 \\boxed{46}"] * 20,
                             trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")


def test_cached_token_strings_equal_one_decode_per_token():
    for tokenizer in (build_char_tokenizer(), _byte_level_tokenizer()):
        ids = list(range(len(tokenizer))) * 2
        assert token_strings(tokenizer, ids[::-1]) == [tokenizer.decode([i]) for i in ids[::-1]]
        assert token_strings(tokenizer, [3, 3, 1]) == [tokenizer.decode([i]) for i in (3, 3, 1)]
