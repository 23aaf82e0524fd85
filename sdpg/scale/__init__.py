"""SDPG on TRL's distributed stack (accelerate + DDP / DeepSpeed ZeRO-2, a `trl vllm-serve` generation server).

- `config`: our `TrainConfig` (+ `ScaleConfig`) -> TRL's GRPOConfig, an accelerate config file, vLLM server flags.
- `trainer`: `SDPGTrainer`, TRL's GRPO trainer computing our loss with the live privileged teacher.
- `records`: `RecordStreamCallback`, which writes our record stream so `app.py --replay` shows the run.
- `launch`: the entry point, `accelerate launch -m sdpg.scale.launch ...`.

Nothing here is imported by the rest of the engine; importing `sdpg.scale.config` does not import TRL.
"""
