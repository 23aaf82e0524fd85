import pytest
import torch
from transformers import PreTrainedTokenizerFast

from sdpg.config import ModelConfig
from sdpg.data import render_prompts
from sdpg.embedded.model import TinyModelConfig, build_tiny_model
from sdpg.embedded.tokenizer import CHARS, EOS, build_char_tokenizer
from sdpg.models import ModelLoadError, load_model_and_tokenizer, make_reference
from sdpg.tasks.addition import make_row, target_text

TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64)


@pytest.fixture
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def saved_dir(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = build_tiny_model(tokenizer, TINY)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path, model


def test_every_character_is_one_token_and_round_trips(tokenizer):
    row = make_row(758, 467)
    for text in (CHARS, row.teacher_prompt + "A:" + target_text(row.answer)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in tokenizer(CHARS)["input_ids"]


def test_special_tokens(tokenizer):
    ids = tokenizer("12" + EOS, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}) == 3
    assert tokenizer.decode(ids, skip_special_tokens=True) == "12"
    assert tokenizer("12")["input_ids"] == ids[:2], "encoding adds no special tokens"


def test_pads_on_the_left(tokenizer):
    enc = tokenizer(["ab", "abcd"], padding=True)
    assert enc["input_ids"][0][:2] == [tokenizer.pad_token_id] * 2
    assert enc["attention_mask"] == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_chat_template_renders_raw_text_then_answer_cue(tokenizer):
    assert render_prompts(tokenizer, ["Q:1+2\n", "Q:3+4\n"]) == ["Q:1+2\nA:", "Q:3+4\nA:"]
    assert render_prompts(tokenizer, []) == []
    chat = [{"role": "user", "content": "Q:1+2\n"}, {"role": "assistant", "content": "\\boxed{3}"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == "Q:1+2\nA:\\boxed{3}" + EOS


def test_render_without_template_is_raw_text(tokenizer):
    tokenizer.chat_template = None
    assert render_prompts(tokenizer, ["Q:1+2\n"]) == ["Q:1+2\n"]


def test_enable_thinking_reaches_templates_that_read_it(tokenizer):
    tokenizer.chat_template = "{{ messages[0]['content'] }}{% if enable_thinking %}<think>{% endif %}"
    assert render_prompts(tokenizer, ["x"], enable_thinking=True) == ["x<think>"]
    assert render_prompts(tokenizer, ["x"], enable_thinking=False) == ["x"]


def test_save_load_round_trip_gives_identical_logits(saved_dir, tokenizer):
    path, model = saved_dir
    loaded, loaded_tok = load_model_and_tokenizer(ModelConfig(name=str(path)))
    text = render_prompts(tokenizer, [make_row(12, 34).teacher_prompt])[0]
    assert loaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded_tok.padding_side == "left"
    assert render_prompts(loaded_tok, ["Q:1+2\n"]) == ["Q:1+2\nA:"]
    ids = torch.tensor([tokenizer(text)["input_ids"]])  # (1, N)
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_load_in_bfloat16(saved_dir):
    path, _ = saved_dir
    model, _ = load_model_and_tokenizer(ModelConfig(name=str(path), dtype="bfloat16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_missing_pad_token_falls_back_to_eos(tmp_path, tokenizer):
    torch.manual_seed(0)
    build_tiny_model(tokenizer, TINY).save_pretrained(tmp_path)
    no_pad = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token=EOS, padding_side="right")
    no_pad.save_pretrained(tmp_path)
    _, loaded = load_model_and_tokenizer(ModelConfig(name=str(tmp_path)))
    assert loaded.pad_token == EOS and loaded.padding_side == "left"


def test_left_padding_leaves_logits_unchanged(tokenizer):
    torch.manual_seed(0)
    model = build_tiny_model(tokenizer, TINY).eval()
    texts = render_prompts(tokenizer, ["Q:1+2\n", "Q:123+456\n"])
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        batched = model(**enc).logits  # (2, N, V)
        short = model(input_ids=torch.tensor([tokenizer(texts[0])["input_ids"]])).logits  # (1, n, V)
    n = short.shape[1]
    torch.testing.assert_close(batched[0, -n:], short[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["/nonexistent/sdpg-model", "./no-such-dir"])
def test_missing_path_is_a_clear_error(name):
    with pytest.raises(ModelLoadError, match="no-such-dir|nonexistent/sdpg-model"):
        load_model_and_tokenizer(ModelConfig(name=name))


def test_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_model_and_tokenizer(ModelConfig(name=str(tmp_path)))


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        load_model_and_tokenizer(ModelConfig(name="embedded", dtype="float16"))


def test_reference_is_a_frozen_copy(tokenizer):
    torch.manual_seed(0)
    model = build_tiny_model(tokenizer, TINY).train()
    reference = make_reference(model)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    assert all(p.requires_grad for p in model.parameters()) and model.training
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(next(model.parameters()), next(reference.parameters()))
