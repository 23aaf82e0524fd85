"""The embedded model's shape: a real `Qwen3ForCausalLM`, so the trainer never branches on which model it has."""
from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the embedded Qwen3 model (vocabulary size comes from the tokenizer)."""

    hidden_size: int = 128
    """width of the residual stream (H)"""
    num_layers: int = 4
    """transformer blocks"""
    num_heads: int = 4
    """query heads per block"""
    num_kv_heads: int = 2
    """key/value heads per block (grouped-query attention)"""
    head_dim: int = 32
    """width of one attention head"""
    intermediate_size: int = 384
    """width of the SwiGLU MLP"""
    max_positions: int = 256
    """longest sequence in tokens (prompt + response)"""


def build_tiny_model(tokenizer: PreTrainedTokenizerBase, spec: TinyModelConfig) -> Qwen3ForCausalLM:
    """A freshly initialised tiny Qwen3 (draws from torch's global RNG: seed before calling)."""
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim,
        max_position_embeddings=spec.max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
