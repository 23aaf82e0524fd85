"""A group's samples share one forward of their prompt (`sdpg.forward.response_hidden`): same hidden states and
gradients as one forward per row, fewer tokens through the decoder."""
import pytest
import torch

from sdpg.config import ModelConfig
from sdpg.data import render_prompts
from sdpg.forward import response_hidden
from sdpg.models import load_model_and_tokenizer


@pytest.fixture()
def batch(tiny_model_dir):
    """Left-padded prompts of different lengths in groups of 3, 1 and 2 (rows not in group order), and
    right-padded responses of different lengths, one of them a single token."""
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(ModelConfig(name=str(tiny_model_dir)))
    model.train()
    texts = render_prompts(tok, ["Q:1+2\n", "Q:13+4\n", "Q:100+250\n"])
    order = [0, 1, 0, 2, 2, 0]
    enc = tok([texts[i] for i in order], return_tensors="pt", padding=True, padding_side="left",
              add_special_tokens=False)
    resp = torch.randint(3, model.config.vocab_size, (len(order), 7))  # (B, T)
    mask = torch.ones_like(resp)
    mask[1, 3:], mask[4, 1:], mask[5, 6:] = 0, 0, 0
    return model, enc.input_ids, enc.attention_mask, resp, mask


def hidden_and_grads(model, ids, pmask, resp, mask, share: bool):
    model.zero_grad()
    h = response_hidden(model, ids, pmask, resp, mask, share_prompts=share)  # (B, T, H)
    (h.pow(2).sum(-1) * mask).sum().backward()
    return h.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_shared_prompts_give_the_joint_forward_and_its_gradients(batch):
    model, ids, pmask, resp, mask = batch
    joint_h, joint_g = hidden_and_grads(model, ids, pmask, resp, mask, share=False)
    shared_h, shared_g = hidden_and_grads(model, ids, pmask, resp, mask, share=True)
    sel = mask.bool()
    torch.testing.assert_close(shared_h[sel], joint_h[sel], rtol=1e-5, atol=1e-5)
    assert joint_g.keys() == shared_g.keys() and len(joint_g) == len(list(model.parameters()))
    for name in joint_g:
        scale = joint_g[name].abs().max()
        assert (shared_g[name] - joint_g[name]).abs().max() <= 1e-4 * scale, name


def test_a_single_response_token_and_a_batch_of_distinct_prompts(batch):
    model, ids, pmask, resp, mask = batch
    with torch.no_grad():
        one = response_hidden(model, ids, pmask, resp[:, :1], mask[:, :1])  # (B, 1, H)
        torch.testing.assert_close(one, response_hidden(model, ids, pmask, resp[:, :1], mask[:, :1],
                                                        share_prompts=False), rtol=1e-5, atol=1e-5)
        distinct = [0, 1, 3]  # one row per prompt: nothing to share, the joint forward runs
        args = ids[distinct], pmask[distinct], resp[distinct], mask[distinct]
        assert torch.equal(response_hidden(model, *args), response_hidden(model, *args, share_prompts=False))


def count_decoder_tokens(model):
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda mod, inp, out: seen.append(inp[0].numel()))
    return seen, handle


def test_each_distinct_prompt_goes_through_the_decoder_once(batch):
    model, ids, pmask, resp, mask = batch
    seen, handle = count_decoder_tokens(model)
    try:
        with torch.no_grad():
            response_hidden(model, ids, pmask, resp, mask, share_prompts=False)
            joint = sum(seen)
            seen.clear()
            response_hidden(model, ids, pmask, resp, mask)
            shared = sum(seen)
    finally:
        handle.remove()
    b, p, t = ids.shape[0], ids.shape[1], resp.shape[1]
    assert joint == b * (p + t)
    assert shared == 3 * p + b * (t - 1)  # three distinct prompts, then each response but its last token


def test_gradient_checkpointing_runs_joint_and_stays_exact(batch):
    model, ids, pmask, resp, mask = batch
    plain_h, plain_g = hidden_and_grads(model, ids, pmask, resp, mask, share=False)
    model.gradient_checkpointing_enable()  # drops caches in training: a shared forward would read an empty one
    try:
        ckpt_h, ckpt_g = hidden_and_grads(model, ids, pmask, resp, mask, share=True)
    finally:
        model.gradient_checkpointing_disable()
    sel = mask.bool()
    torch.testing.assert_close(ckpt_h[sel], plain_h[sel], rtol=1e-6, atol=1e-6)
    for name in plain_g:
        torch.testing.assert_close(ckpt_g[name], plain_g[name], rtol=1e-6, atol=1e-7)
