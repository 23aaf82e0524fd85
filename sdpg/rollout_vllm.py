"""Rollouts with vLLM, colocated with training in one process; weights go in place after every step.

Legend: B sequences (prompts x G), P prompt tokens (left-padded), T response tokens (right-padded).

Design choices:
- Same interface and output as `HFRolloutEngine` (a subclass), so the trainer never branches on the engine.
- The training model is the one source of weights: vLLM starts from its config alone (`load_format="dummy"`,
  token ids in, our tokenizer decodes) and receives the weights through `collective_rpc("reload_weights")`,
  which needs the engine in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`).
- `sync_weights` only marks the weights stale; they are pushed (and the prefix cache reset) once, at the
  next `generate`.
- On a GPU the engine sleeps between rollouts so the update gets the card; where there is no sleep mode (CPU)
  it stays resident within `rollout.vllm_gpu_memory_utilization`.
- Old log-probs are vLLM's `processed_logprobs` (after temperature, what the loss recomputes); top-p < 1
  would add the truncation, so the config refuses it with this engine.
- A prompt's G samples are one request with `n=G`, which yields the group-after-group layout directly.
- vLLM computes in the update's dtype. It sets torch's thread count for the whole process: set
  OMP_NUM_THREADS before starting a run.
"""
from __future__ import annotations

import copy
import os
import tempfile

import torch

from sdpg.rollout import HFRolloutEngine, Rollout, response_mask_from_ids
from sdpg.stopping import check_stop

CPU_KV_CACHE_BYTES = 1 << 30
"""KV cache vLLM reserves on a CPU (1 GiB: far more than the batches a CPU can sample)"""


def import_vllm():
    """`vllm`, imported in-process; a clear error when it is not installed."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
        raise RuntimeError("rollout.engine='vllm' needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (the engine must live in "
                           "the training process to receive weights as tensors)")
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            f"rollout.engine='vllm' needs the vllm package ({err}). On a CUDA machine: "
            "pip install -r requirements-gpu.txt; on a CPU: bash tests/vllm_env.sh (creates .venv-vllm)") from err
    return vllm


class VLLMRolloutEngine(HFRolloutEngine):
    """Batched sampling with an in-process vLLM engine that mirrors the training model's weights."""

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, max_prompt_tokens: int = 2048, seed: int = 0,
                 dtype: str = "float32", gpu_memory_utilization: float = 0.3, sleep: bool = True):
        if top_p != 1.0:
            raise ValueError(f"the vLLM engine needs top_p=1.0, got {top_p}: its processed log-probs include "
                             "the top-p truncation, so old log-probs would not match the loss's")
        super().__init__(model, tokenizer, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                         max_prompt_tokens=max_prompt_tokens)
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self._vllm = vllm
        self.device = next(model.parameters()).device
        if self.device.type == "cuda" and self.device.index not in (None, torch.cuda.current_device()):
            raise ValueError(f"the vLLM engine runs on the current CUDA device ({torch.cuda.current_device()}), the "
                             f"model is on {self.device}: select the card with CUDA_VISIBLE_DEVICES instead")
        self.sleeps = sleep and current_platform.is_sleep_mode_available()
        positions = getattr(model.config, "max_position_embeddings", None) or max_prompt_tokens + max_new_tokens
        on_gpu = self.device.type == "cuda"
        limits = {"gpu_memory_utilization": gpu_memory_utilization} if on_gpu else {
            "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}
        with tempfile.TemporaryDirectory(prefix="sdpg-vllm-config-") as config_dir:
            config = copy.deepcopy(model.config)
            config.architectures = [type(model).__name__]  # set by save_pretrained, absent on a fresh model
            config.save_pretrained(config_dir)
            model.generation_config.save_pretrained(config_dir)
            self.llm = vllm.LLM(
                model=config_dir, runner="generate", load_format="dummy", skip_tokenizer_init=True,
                dtype=dtype, seed=seed, max_model_len=min(positions, max_prompt_tokens + max_new_tokens),
                enforce_eager=not on_gpu, enable_sleep_mode=self.sleeps, logprobs_mode="processed_logprobs",
                **limits)
        self.asleep = False
        self.stale = True

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Mark the engine's weights stale: the next `generate` pushes `model`'s weights first."""
        self.model = model
        self.stale = True

    def _wake_and_load(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        if self.stale:
            weights = list(self.model.state_dict().items())
            self.llm.collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
            self.llm.reset_prefix_cache()  # cached prefixes hold keys and values of the old weights
            self.stale = False

    @torch.no_grad()
    def generate(self, prompts: list[str], group_size: int) -> Rollout:
        self._wake_and_load()
        ids, attn = self.encode_prompts(prompts)  # (n_prompts, P)
        params = self._vllm.SamplingParams(
            n=group_size, temperature=self.temperature, top_p=1.0, top_k=0, max_tokens=self.max_new_tokens,
            stop_token_ids=self.eos_ids, logprobs=0, detokenize=False, skip_special_tokens=False)
        requests = [{"prompt_token_ids": row[mask.bool()].tolist()} for row, mask in zip(ids, attn)]
        check_stop("generation")
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        check_stop("generation")  # vLLM decodes in one call: a stop is seen when it returns
        if self.sleeps:
            self.llm.sleep(level=2)
            self.asleep = self.stale = True
        samples = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        width = max(1, max(len(c.token_ids) for c in samples))
        resp = torch.full((len(samples), width), self.pad_id, dtype=torch.long)  # (B, T)
        old_logp = torch.zeros(len(samples), width)  # (B, T)
        for i, c in enumerate(samples):
            resp[i, :len(c.token_ids)] = torch.tensor(c.token_ids)
            old_logp[i, :len(c.token_ids)] = torch.tensor([lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)],
                                                          dtype=torch.float32)
        mask, truncated = response_mask_from_ids(resp, self.eos_ids)
        resp = torch.where(mask.bool(), resp, torch.full_like(resp, self.pad_id))
        texts = self.tokenizer.batch_decode(resp, skip_special_tokens=True)
        prompt_ids = ids.repeat_interleave(group_size, 0)  # (B, P)
        prompt_mask = attn.repeat_interleave(group_size, 0)  # (B, P)
        return Rollout(prompt_ids=prompt_ids.to(self.device), prompt_mask=prompt_mask.to(self.device),
                       response_ids=resp.to(self.device), response_mask=mask.to(self.device),
                       old_logp=(old_logp * mask).to(self.device), texts=texts, truncated=truncated.to(self.device),
                       group_size=group_size)
