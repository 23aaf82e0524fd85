"""The tuned comparison's selection rule, statistics and verdicts on hand-made run summaries."""
import math

import pytest

from experiments.tune import confirm_stats, section, select_rates, verdict


def _run(variant, seed, final, auc, status="finished"):
    return {"variant": variant, "seed": seed, "status": status, "summary": {"final_pass@1": final, "auc_pass@1": auc},
            "cpu_s": 1.0}


def test_each_variant_gets_the_rate_with_the_best_mean_auc_and_edges_are_flagged():
    runs = [_run("grpo-lr1e-05", s, 0, a) for s, a in ((0, 0.10), (1, 0.12))]
    runs += [_run("grpo-lr3e-05", s, 0, a) for s, a in ((0, 0.20), (1, 0.16))]
    runs += [_run("grpo-lr0.0001", s, 0, a) for s, a in ((0, 0.05), (1, 0.30))]  # mean 0.175 < 0.18
    runs += [_run("sdpg-lr1e-05", s, 0, 0.2) for s in (0, 1)]
    runs += [_run("sdpg-lr3e-05", s, 0, 0.2) for s in (0, 1)]  # a tie: the smaller rate wins
    runs += [_run("sdpg-lr0.0001", 0, 0, 0.9, status="crashed")]  # a crashed run is not counted
    evals = [{"variant": r["variant"], "seed": r["seed"], "step": 0, "eval/pass@1": 0.1} for r in runs]
    for r in runs:
        r["summary"]["final_pass@1"] = 0.1 + r["seed"] * 0.02
    chosen = select_rates({"runs": runs, "evals": evals}, ["grpo", "sdpg"], [1e-5, 3e-5, 1e-4])
    assert chosen["grpo"]["lr"] == 3e-5 and not chosen["grpo"]["edge"]
    assert chosen["grpo"]["auc"]["3e-05"]["mean"] == pytest.approx(0.18)
    assert chosen["sdpg"]["lr"] == 1e-5 and chosen["sdpg"]["edge"]
    assert chosen["sdpg"]["auc"]["0.0001"]["n"] == 0
    assert chosen["grpo"]["gain"]["mean"] == pytest.approx(0.01)  # final - step 0 at the chosen rate: 0, +0.02
    with pytest.raises(ValueError, match="no finished tuning run of 'rlsd'"):
        select_rates({"runs": runs, "evals": evals}, ["rlsd"], [1e-5])


def _confirm(base_final, mine_final, base_start=0.10, mine_start=0.10):
    runs, evals = [], []
    for seed, (b, m) in enumerate(zip(base_final, mine_final)):
        runs += [_run("grpo-lr3e-05", seed, b, b), _run("sdpg-lr1e-05", seed, m, m)]
        evals += [{"variant": "grpo-lr3e-05", "seed": seed, "step": 0, "eval/pass@1": base_start + 0.01 * seed},
                  {"variant": "sdpg-lr1e-05", "seed": seed, "step": 0, "eval/pass@1": mine_start + 0.01 * seed}]
    chosen = {"grpo": {"lr": 3e-5}, "sdpg": {"lr": 1e-5}}
    return confirm_stats({"runs": runs, "evals": evals}, chosen, "grpo")


def test_confirmation_pairs_by_seed_and_measures_the_gain_over_the_start_and_the_noise():
    stats = _confirm([0.20, 0.22, 0.25, 0.21, 0.24], [0.30, 0.31, 0.33, 0.29, 0.35])
    sdpg, grpo = stats["variants"]["sdpg"], stats["variants"]["grpo"]
    delta = sdpg["vs_baseline"]["final_pass@1"]
    assert delta["n"] == 5 and delta["mean"] == pytest.approx(0.092) and delta["p"] == pytest.approx(2 / 32)
    assert delta["lo"] > 0
    # gain: final - step 0 within each run (step 0 is 0.10 + 0.01 * seed)
    assert grpo["gain"]["mean"] == pytest.approx(statistics_mean([0.10, 0.11, 0.13, 0.08, 0.10]))
    assert "vs_baseline" not in grpo
    # evaluation noise: SD of step-0 pass@1 over all 10 confirmation runs
    assert stats["eval_noise_n"] == 10 and stats["eval_noise_sd"] == pytest.approx(0.01491, abs=1e-4)
    assert verdict("sdpg", stats).startswith("helps")


def statistics_mean(values):
    return sum(values) / len(values)


def test_a_lead_over_a_baseline_that_does_not_learn_is_not_called_help():
    # the tuned baseline ends below its start: the distilling variant is ahead, but that is not evidence of teaching
    stats = _confirm([0.05, 0.06, 0.04, 0.07, 0.05], [0.12, 0.11, 0.13, 0.12, 0.10])
    assert stats["variants"]["grpo"]["gain"]["hi"] < 0
    assert verdict("sdpg", stats).startswith("ahead, but the tuned baseline does not improve")
    # and an interval across 0 says so
    mixed = _confirm([0.20, 0.25, 0.22, 0.21, 0.24], [0.25, 0.20, 0.24, 0.19, 0.25])
    assert verdict("sdpg", mixed).startswith("no difference shown")


def test_the_page_section_states_the_rule_the_seeds_and_the_smallest_p():
    stats = _confirm([0.20, 0.22, 0.25, 0.21, 0.24], [0.30, 0.31, 0.33, 0.29, 0.35])
    result = {"meta": {"task": "reasoning", "steps": 40, "base": "shared", "lrs": [1e-5, 3e-5], "tune_seeds": [100],
                       "confirm_seeds": [0, 1, 2, 3, 4], "cpu_s": 600.0, "command": "python -m experiments.tune ...",
                       "commit": "abc", "dirty": False, "created": "now"},
              "selection": {"grpo": {"lr": 3e-5, "edge": True, "auc": {"1e-05": {"mean": 0.1, "lo": 0.1, "hi": 0.1, "n": 1},
                                                                      "3e-05": {"mean": 0.2, "lo": 0.2, "hi": 0.2, "n": 1}}},
                            "sdpg": {"lr": 1e-5, "edge": True, "auc": {"1e-05": {"mean": 0.3, "lo": 0.3, "hi": 0.3, "n": 1},
                                                                      "3e-05": {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}}}},
              "confirm": stats, "links": {"html": ["figures/x.html"], "json": "science/tuned.json"}}
    text = section(result)
    assert text.startswith("## Tuned comparison: reasoning")
    assert "highest mean pass@1 AUC" in text and "0.0625" in text and "(grid edge)" in text
    assert "helps" in text and "SD 0.0149" in text
    # Stage 1 alone: the tuning table, and no claim
    alone = section(result | {"confirm": None, "links": {"html": [], "json": "science/tuned.json"}})
    assert "has not been run yet" in alone and "helps" not in alone and "(grid edge)" in alone
