"""The embedded tokenizer: one token per character, built offline.

Design choices:
- Character-level (WordLevel over single characters) keeps the vocabulary tiny and the full-vocabulary
  KL exact and cheap.
- Its chat template renders a user message as its raw text and the generation cue as "A:".
- It pads on the left so every prompt ends where generation starts.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARS = "0123456789 \n:+-*/=(){}\\.,?abcdefghijklmnopqrstuvwxyzAHQ"
"""every character the embedded tokenizer knows; anything else encodes as UNK"""
ANSWER_CUE = "A:"
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}" + ANSWER_CUE + "{{ message['content'] }}{{ eos_token }}"
    "{%- else -%}{{ message['content'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ANSWER_CUE + "{%- endif -%}"
)


def build_char_tokenizer(vocab_size: int = 0) -> PreTrainedTokenizerFast:
    """The embedded character-level tokenizer: ids 0..2 are pad, eos, unk; then one id per character; with
    `vocab_size`, placeholder tokens `<tN>` fill the ids up to it (a real-vocabulary shape for benchmarks)."""
    vocab = {token: i for i, token in enumerate([PAD, EOS, UNK, *CHARS])}
    vocab |= {f"<t{i}>": i for i in range(len(vocab), vocab_size)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                        padding_side="left")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
