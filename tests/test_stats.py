"""Comparison statistics on hand-made data with known answers."""
import math

import pytest

from experiments.stats import bootstrap_ci, curve_area, paired_difference


def test_bootstrap_interval_contains_the_mean_and_narrows_like_one_over_root_n():
    widths = {}
    for n in (10, 40, 160):
        data = [0.0, 1.0] * (n // 2)  # mean 0.5, population std 0.5
        ci = bootstrap_ci(data)
        assert ci["mean"] == 0.5 and ci["n"] == n and ci["lo"] < 0.5 < ci["hi"]
        widths[n] = ci["hi"] - ci["lo"]
        # the bootstrap mean's std is 0.5 / sqrt(n): the 95 % interval is about 2 x 1.96 of it
        assert widths[n] == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(n), rel=0.15)
    assert widths[10] > widths[40] > widths[160]
    assert widths[10] / widths[160] == pytest.approx(4.0, rel=0.2)


def test_bootstrap_of_constant_or_single_values_has_zero_width_and_missing_values_are_skipped():
    assert bootstrap_ci([0.3, 0.3, 0.3]) == {"mean": 0.3, "lo": 0.3, "hi": 0.3, "n": 3}
    assert bootstrap_ci([0.7, float("nan"), None]) == {"mean": 0.7, "lo": 0.7, "hi": 0.7, "n": 1}
    empty = bootstrap_ci([float("nan")])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["lo"])


def test_bootstrap_is_reproducible_by_seed():
    data = [0.1, 0.5, 0.2, 0.9, 0.4]
    assert bootstrap_ci(data, seed=3) == bootstrap_ci(data, seed=3)
    assert bootstrap_ci(data, seed=3) != bootstrap_ci(data, seed=4)


def test_paired_difference_of_identical_runs_is_exactly_zero():
    runs = {0: 0.31, 1: 0.42, 2: 0.27, 3: 0.55, 4: 0.38}
    assert paired_difference(runs, dict(runs)) == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 5}


def test_paired_difference_removes_the_shared_seed_effect_and_uses_common_seeds_only():
    baseline = {0: 0.1, 1: 0.5, 2: 0.9, 3: 0.3}
    shifted = {s: v + 0.05 for s, v in baseline.items()} | {7: 1.0}  # seed 7 has no baseline
    shifted[3] = float("nan")  # a crashed run drops its pair
    diff = paired_difference(shifted, baseline)
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(0.05)
    assert diff["hi"] - diff["lo"] == pytest.approx(0.0, abs=1e-12)  # every pair differs by exactly 0.05
    unpaired = bootstrap_ci([shifted[s] for s in (0, 1, 2)])
    assert unpaired["hi"] - unpaired["lo"] > 0.3  # unpaired, the seed spread swamps the 0.05 effect


def test_curve_area_is_the_mean_height_of_the_trapezoid_curve():
    assert curve_area([0, 10], [0.2, 0.2]) == pytest.approx(0.2)
    assert curve_area([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx((5 + 10) / 20)
    assert curve_area([20, 0, 10], [1.0, 0.0, 1.0]) == pytest.approx(0.75)  # order does not matter
    assert curve_area([0, 10, 20], [0.0, float("nan"), 1.0]) == pytest.approx(0.5)
    assert math.isnan(curve_area([5], [0.3])) and math.isnan(curve_area([], []))


def test_t_interval_uses_n_minus_1_and_the_t_quantile():
    from experiments.stats import t_interval
    data = [0.1, 0.3, 0.2, 0.5, 0.4]  # mean 0.3, sample SD sqrt(0.025)
    ci = t_interval(data)
    sd = math.sqrt(0.025)
    assert ci["mean"] == pytest.approx(0.3) and ci["sd"] == pytest.approx(sd) and ci["n"] == 5
    # t_4 at 97.5 % is 2.776 (tables), not the normal 1.96
    assert ci["hi"] - ci["mean"] == pytest.approx(2.7764 * sd / math.sqrt(5), rel=1e-4)
    assert ci["mean"] - ci["lo"] == pytest.approx(ci["hi"] - ci["mean"])
    one = t_interval([0.4, float("nan")])
    assert one["n"] == 1 and one["lo"] == one["hi"] == 0.4 and math.isnan(one["sd"])
    assert t_interval([])["n"] == 0


def test_t_interval_is_wider_than_the_bootstrap_with_few_seeds():
    from experiments.stats import t_interval
    data = [0.01, 0.05, -0.02, 0.08, 0.03]
    t, b = t_interval(data), bootstrap_ci(data)
    assert (t["hi"] - t["lo"]) > 1.3 * (b["hi"] - b["lo"])


def test_sign_flip_p_is_exact_on_small_cases():
    from experiments.stats import min_sign_flip_p, sign_flip_p
    # all 5 differences positive: only the all-plus and all-minus patterns reach |mean| -> 2 / 32
    assert sign_flip_p([0.1, 0.2, 0.3, 0.1, 0.2]) == pytest.approx(2 / 32)
    assert min_sign_flip_p(5) == pytest.approx(0.0625) and min_sign_flip_p(8) == pytest.approx(2 / 256)
    # symmetric differences: mean 0, every pattern is at least as extreme
    assert sign_flip_p([0.1, -0.1]) == 1.0
    # [3, 1, 1]: |mean| >= 5/3 only for (+,+,+) and (-,-,-); (+,+,-), (+,-,+) give 1 -> 2/8
    assert sign_flip_p([3.0, 1.0, 1.0]) == pytest.approx(2 / 8)
    # one negative among 4: patterns with |sum| >= 0.5+0.5+0.5-0.1 = 1.4 ... enumerate by hand: sums of
    # +-0.5 x3 +-0.1: 1.6 (2 patterns), 1.4 (2) -> 4 of 16
    assert sign_flip_p([0.5, 0.5, 0.5, -0.1]) == pytest.approx(4 / 16)
    assert math.isnan(sign_flip_p([]))


def test_paired_test_pairs_by_seed_and_reports_both_intervals():
    from experiments.stats import paired_test
    mine = {0: 0.30, 1: 0.25, 2: 0.40, 3: float("nan")}
    base = {0: 0.20, 1: 0.20, 2: 0.30, 4: 0.9}
    out = paired_test(mine, base)
    assert out["seeds"] == [0, 1, 2] and out["n"] == 3
    assert out["mean"] == pytest.approx((0.10 + 0.05 + 0.10) / 3)
    assert out["lo"] < out["boot_lo"] <= out["mean"] <= out["boot_hi"] < out["hi"]
    assert out["p"] == pytest.approx(2 / 8) and out["p_min"] == pytest.approx(0.25)
