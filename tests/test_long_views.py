"""Views of long responses (a window and an overview) and of real Qwen tokens."""
import numpy as np
import pytest

from lab.heatmap import (COLOR_MODES, WINDOW, overview_image, overview_position, overview_values, show_token,
                         token_heatmap, token_values, window_around)
from lab.inspector import rollout_html, topk_figure
from sdpg.vocab import token_strings
from tests.fixtures.qwen_vocab import QWEN3_VOCAB, qwen_tokenizer
from tests.fixtures.records import make_long_group


def test_the_window_shows_any_part_of_a_4096_token_response_with_its_positions():
    group = make_long_group(1, 0, 4096, group_size=2)
    r = group["responses"][1]
    fig = token_heatmap(group, "kl", start=4096 - WINDOW)
    heat = fig.data[0]
    assert list(heat.x) == list(range(4096 - WINDOW, 4096)) and len(heat.z[1]) == WINDOW
    assert list(heat.z[1]) == pytest.approx(r["kl"][-WINDOW:].tolist())
    assert heat.text[1][-1] == show_token(r["tokens"][-1]) and "position 4095" in heat.hovertext[1][-1]
    assert f"tokens {4096 - WINDOW}–4095 of 4096" in fig.layout.title.text
    assert list(token_heatmap(group, start=10**6).data[0].x)[-1] == 4095  # clamped to the end
    assert window_around(4096, 2000) == 2000 - WINDOW // 2


def test_the_overview_keeps_a_one_token_spike():
    group = make_long_group(1, 0, 4096, group_size=2)
    group["responses"][0]["kl"][3001] = 50.0
    values, per = overview_values(group, "kl", bins=512)
    assert values.shape == (2, 512) and per == 8
    assert values[0, 3001 // 8] == 50.0 and np.nanmax(values[1]) == pytest.approx(float(group["responses"][1]["kl"].max()))
    img = overview_image(group, "kl", start=2000)
    assert img.shape == (16, 1024, 3) and img.dtype == np.uint8
    assert overview_position(1023, 4096) == 4092 and overview_position(0, 4096) == 0


@pytest.mark.parametrize("mode", sorted(COLOR_MODES))
def test_every_colour_mode_draws_a_long_group(mode):
    group = make_long_group(2, 1, 500, group_size=2)
    fig = token_heatmap(group, mode, start=100)
    assert len(fig.data[0].z[0]) == WINDOW and any(v is not None for v in fig.data[0].z[0])


def test_entropy_and_sampler_gap_modes_and_the_inspector_show_them():
    group = make_long_group(3, 0, 300, group_size=2)
    r = group["responses"][0]
    assert token_values(r, "entropy") == pytest.approx(r["entropy"].astype(float))
    gap = token_values(r, "logp_gap")
    assert gap == pytest.approx((r["sampler_logp"] - r["old_logp"]).astype(float), abs=1e-6)
    assert token_heatmap(group, "logp_gap").data[0].zmid == 0.0  # signed: diverging about 0
    title = topk_figure(group, 0, 250).layout.title.text
    assert f"entropy {float(r['entropy'][250]):.3f}" in title and f"{gap[250]:+.4f}" in title
    assert "max |Δ sampler|" in rollout_html(group)
    old = {k: v for k, v in r.items() if k != "sampler_logp"}  # a record without the sampler's log-probs
    assert np.isnan(token_values(old, "logp_gap")).all()


def test_real_qwen_tokens_are_readable_in_every_view():
    tok = qwen_tokenizer()
    assert len(tok) == 151_669 and tok.convert_tokens_to_ids("<|im_end|>") == 151_645 and QWEN3_VOCAB == 151_936
    text = "Hello world,\n\n  答 \\boxed{42}" + " " * 40 + "=" * 40
    ids = tok.encode(text)
    strings = token_strings(tok, ids)
    shown = [show_token(s) for s in strings]
    assert "␣world" in shown and ",⏎⏎" in shown  # the Ġ / Ċ prefixes as visible space and newline
    partial = [show_token(s) for s, i in zip(strings, ids) if "\ufffd" in tok.decode([i])]
    assert partial and all("‹" in s and "›" in s for s in partial)  # bytes of 答 (e7 ad 94) marked
    assert "‹e7›" in "".join(partial)
    assert "␣×40" in shown or any("␣×" in s for s in shown)  # a run of spaces, shortened
    longest = max(range(151_643), key=lambda i: len(tok.convert_ids_to_tokens(i)))
    long_shown = show_token(token_strings(tok, [longest])[0])
    assert len(long_shown) < 20  # a 128-character token fits a cell
    assert token_strings(tok, [151_935]) == [""]  # a padding row of the head past the tokenizer


def test_the_notebook_widget_moves_its_window_like_the_page(tmp_path):
    from lab.widgets import LiveView
    from sdpg.records import RecordStream

    stream = RecordStream(tmp_path)
    stream.emit_rollouts(1, [make_long_group(1, 0, 4096, group_size=2)])
    view = LiveView(RecordStream.open(tmp_path))
    assert list(view.heatmap.data[0].x) == list(range(WINDOW)) and view.window.max == 4096 - WINDOW
    view.move(WINDOW)
    assert view.heatmap.data[0].x[0] == WINDOW
    view.jump(4000.0)  # what a click on the overview at token 4000 does
    assert view.heatmap.data[0].x[0] == window_around(4096, 4000) and "of 4096" in view.heatmap.layout.title.text
    assert len(view.overview.data[0].z[0]) == 512 and view.overview.layout.shapes[0].x0 == window_around(4096, 4000) - 0.5
