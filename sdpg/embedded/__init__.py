"""The embedded model: a tiny character-level Qwen3, warm-started on the embedded task and cached.

It is an ordinary `save_pretrained` checkpoint once built, so `sdpg.models` loads it like any other model
and nothing downstream branches on which model it has.
"""
