import torch

from sdpg.data import render_prompts
from sdpg.forward import lm_head_weight, response_hidden, token_logp
from sdpg.models import load_model_and_tokenizer
from sdpg.config import ModelConfig
from sdpg.rollout import GrowingCache, HFRolloutEngine, response_mask_from_ids
from transformers import DynamicCache


def test_response_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8]])
    mask, truncated = response_mask_from_ids(ids, [1])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, True]


def test_hf_engine_shapes_layout_and_old_logp_match_a_training_forward(tiny_model_dir):
    torch.manual_seed(1)
    model, tok = load_model_and_tokenizer(ModelConfig(name=str(tiny_model_dir)))
    engine = HFRolloutEngine(model, tok, temperature=0.7, max_new_tokens=8)
    prompts = render_prompts(tok, ["Q:1+2\n", "Q:13+4\n"])  # different lengths: left padding matters
    ro = engine.generate(prompts, group_size=3)
    assert ro.response_ids.shape[0] == 6 and ro.prompt_ids.shape[0] == 6 and ro.group_size == 3
    assert ro.response_ids.shape[1] <= 8 and len(ro.texts) == 6
    assert (ro.prompt_ids[:3] == ro.prompt_ids[0]).all() and (ro.prompt_ids[3:] == ro.prompt_ids[3]).all()
    assert (ro.old_logp[ro.response_mask == 0] == 0).all()
    with torch.no_grad():
        h = response_hidden(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
        logp = token_logp(h, lm_head_weight(model), ro.response_ids, temperature=0.7)
    m = ro.response_mask.bool()
    torch.testing.assert_close(logp[m], ro.old_logp[m], atol=1e-4, rtol=1e-4)
    assert tok.batch_decode(ro.response_ids, skip_special_tokens=True) == ro.texts


def test_old_logp_taken_during_sampling_equals_the_kept_logits_way(tiny_model_dir):
    # The same draws and bit-identical old log-probs as keeping generate's (B, T, V) logits, with top-p on.
    import torch.nn.functional as F
    model, tok = load_model_and_tokenizer(ModelConfig(name=str(tiny_model_dir)))
    engine = HFRolloutEngine(model, tok, temperature=0.7, top_p=0.9, max_new_tokens=8)
    prompts = render_prompts(tok, ["Q:1+2\n", "Q:13+4\n"])
    torch.manual_seed(3)
    ro = engine.generate(prompts, group_size=3)
    ids, attn = engine.encode_prompts([p for p in prompts for _ in range(3)])
    torch.manual_seed(3)
    model.eval()
    with torch.no_grad():  # the same shared prefill, so both ways run the same arithmetic
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=0.7, top_p=0.9, top_k=0,
                             max_new_tokens=8, eos_token_id=engine.eos_ids, pad_token_id=engine.pad_id,
                             output_logits=True, return_dict_in_generate=True,
                             **engine._shared_prefill(ids, attn, slice(0, ids.shape[0]), 3))
    resp = out.sequences[:, ids.shape[1]:]
    logp = F.log_softmax(torch.stack(out.logits, 1).float() / 0.7, -1).gather(-1, resp[..., None])[..., 0]
    m = ro.response_mask.bool()
    assert torch.equal(ro.response_ids[m], resp[m])
    assert torch.equal(ro.old_logp[m], logp[m])


def test_a_group_prompt_is_prefilled_once_and_the_draws_are_unchanged(tiny_model_dir):
    model, tok = load_model_and_tokenizer(ModelConfig(name=str(tiny_model_dir)))
    engine = HFRolloutEngine(model, tok, temperature=0.7, max_new_tokens=8, batch_size=5)  # chunks cut a group
    prompts = render_prompts(tok, ["Q:1+2\n", "Q:13+4\n", "Q:7+70\n"])
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    try:
        torch.manual_seed(3)
        shared = engine.generate(prompts, group_size=4)
        prefill = [s for s in seen if s[1] > 1]
        engine._shared_prefill = lambda *args: {}
        torch.manual_seed(3)
        plain = engine.generate(prompts, group_size=4)
    finally:
        handle.remove()
    p = shared.prompt_ids.shape[1]
    assert prefill == [(2, p - 1), (2, p - 1), (1, p - 1)]  # rows 0-4: groups 0-1, rows 5-9: 1-2, rows 10-11: 2
    assert torch.equal(shared.response_ids, plain.response_ids) and shared.texts == plain.texts
    torch.testing.assert_close(shared.old_logp, plain.old_logp, rtol=1e-5, atol=1e-5)


def test_growing_cache_holds_what_dynamic_cache_does_and_appends_in_place():
    torch.manual_seed(0)
    grow, dyn = GrowingCache(max_length=12), DynamicCache()
    storage = []
    for step, n in enumerate([5, 1, 1, 3, 1, 1]):
        k, v = torch.randn(4, 2, n, 8), torch.randn(4, 2, n, 8)
        gk, gv = grow.update(k, v, 0)
        dk, dv = dyn.update(k, v, 0)
        assert torch.equal(gk, dk) and torch.equal(gv, dv) and grow.get_seq_length() == dyn.get_seq_length()
        storage.append(gk.untyped_storage().data_ptr())
        if step == 1:  # rows picked by other code (as the shared prefill does) become the new buffer
            for cache in (grow, dyn):
                cache.batch_select_indices(torch.tensor([0, 0, 2, 3]))
    layer = grow.layers[0]
    assert layer._bufs[0].shape[-2] == 12  # grown to twice the length, at most max_length
    assert storage[3] == storage[4] == storage[5]  # single-token appends write into the buffer, no copy


def test_generation_draws_the_same_with_the_growing_cache_as_with_dynamic_cache(tiny_model_dir, monkeypatch):
    import sdpg.rollout
    model, tok = load_model_and_tokenizer(ModelConfig(name=str(tiny_model_dir)))
    engine = HFRolloutEngine(model, tok, temperature=0.7, top_p=0.9, max_new_tokens=8)
    prompts = render_prompts(tok, ["Q:1+2\n", "Q:13+4\n"])
    runs = []
    for group in (3, 1):  # shared prefill, and a cache with no prefill
        torch.manual_seed(3)
        growing = engine.generate(prompts, group_size=group)
        with monkeypatch.context() as m:
            m.setattr(sdpg.rollout, "GrowingCache", lambda max_length=None: DynamicCache())
            torch.manual_seed(3)
            dynamic = engine.generate(prompts, group_size=group)
        runs.append((growing, dynamic))
    for growing, dynamic in runs:
        assert torch.equal(growing.response_ids, dynamic.response_ids) and growing.texts == dynamic.texts
        assert torch.equal(growing.old_logp, dynamic.old_logp)


def test_a_prompt_repeated_for_its_group_is_tokenized_once_with_the_same_rows(tiny_model_dir):
    model, tok = load_model_and_tokenizer(ModelConfig(name=str(tiny_model_dir)))
    engine = HFRolloutEngine(model, tok)
    prompts = render_prompts(tok, ["Q:1+2\n", "Q:13+400\n"])
    calls = []
    engine.tokenizer = lambda texts, **kw: calls.append(list(texts)) or tok(texts, **kw)
    grouped = engine.encode_prompts(prompts, group_size=3)
    repeated = engine.encode_prompts([p for p in prompts for _ in range(3)])
    assert calls == [prompts, [p for p in prompts for _ in range(3)]]
    assert all(torch.equal(a, b) for a, b in zip(grouped, repeated))
