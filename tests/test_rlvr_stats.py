"""The RLVR study's statistics: bootstrap intervals (coverage under the null, a planted difference
detected), the grid-interior check (an edge-tuned rate is flagged), curve summaries, collapse, and
the unpaired curve comparison (Welch intervals, their power and minimum detectable effect, the
Bonferroni verdict: a planted difference must be called different)."""

import numpy as np
import pytest

from oblr_theory import rlvr_stats as rs


def test_paired_bootstrap_detects_a_planted_difference_and_not_a_null_one():
    """Planted: x = y + 1 with unit noise on 16 pairs (standard error 0.25, so the difference is
    4 standard errors: the interval excludes 0 with probability > 0.97 at 95%). Null (negative
    control): the same y with an independent copy; checked through coverage below."""
    rng = np.random.default_rng(1)
    y = rng.normal(size=16)
    planted = rs.paired_bootstrap(y + 1.0 + rng.normal(size=16), y, seed=0)
    assert planted.low > 0 and planted.verdict == "x > y"
    assert rs.paired_bootstrap(y, y + 1.0 + rng.normal(size=16), seed=0).verdict == "x < y"


def test_paired_bootstrap_coverage_under_the_null():
    """400 null replicates of 16 pairs (true mean difference 0): the 95% percentile interval covers
    0 in a fraction whose binomial standard error is 0.011; the percentile bootstrap undercovers a
    little at n = 16 (about 0.93), so the band [0.87, 0.99] is > 5 standard errors from both."""
    rng = np.random.default_rng(2)
    covered = [rs.paired_bootstrap(rng.normal(size=16), rng.normal(size=16), n_boot=1000, seed=k).verdict == "tie"
               for k in range(400)]
    assert 0.87 <= np.mean(covered) <= 0.99


def test_paired_bootstrap_is_seeded_and_refuses_bad_input():
    x, y = np.arange(5.0), np.zeros(5)
    assert rs.paired_bootstrap(x, y, seed=3) == rs.paired_bootstrap(x, y, seed=3)
    with pytest.raises(ValueError, match="length >= 2"):
        rs.paired_bootstrap([1.0], [0.0])
    with pytest.raises(ValueError, match="finite"):
        rs.paired_bootstrap([1.0, np.nan], [0.0, 0.0])


def test_grid_interior_check_flags_edge_tuned_rates():
    grid = rs.geometric_grid(1e-3, 2.0, 5)
    assert np.allclose(grid, [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3])
    peaked = {r: -abs(np.log(r / 1e-3)) for r in grid}
    assert rs.pick_rate(peaked) == (1e-3, "interior")
    rising = {r: r for r in grid}  # negative control: best at the top edge
    best, pos = rs.pick_rate(rising)
    assert (best, pos) == (4e-3, "high_edge")
    assert rs.extend_grid(grid, pos, 2.0)[-1] == pytest.approx(8e-3)
    assert rs.pick_rate({r: -r for r in grid})[1] == "low_edge"
    assert rs.grid_position([1.0, 2.0], 2.0) == "high_edge"  # two points: no interior
    with pytest.raises(ValueError, match="not a rate of the grid"):
        rs.grid_position(grid, 3e-3)
    with pytest.raises(ValueError, match="finite"):
        rs.pick_rate({1.0: np.nan, 2.0: 0.0})


def test_curve_summaries():
    steps, acc = [0, 10, 20], [0.2, 0.4, 0.4]
    assert rs.area_under_curve(steps, acc) == pytest.approx((0.3 * 10 + 0.4 * 10) / 20)
    assert rs.steps_to_threshold(steps, acc, 0.35) == 10
    assert rs.steps_to_threshold(steps, acc, 0.9) is None  # never reached: undefined
    with pytest.raises(ValueError, match="increasing"):
        rs.area_under_curve([0, 0], [0.1, 0.2])


def test_collapse_flag():
    assert rs.collapsed([0.4, 0.1, 0.0, 0.01], initial=0.4)
    assert not rs.collapsed([0.4, 0.0, 0.3], initial=0.4)  # recovered: not collapsed
    assert not rs.collapsed([0.4, 0.35, 0.5], initial=0.4)


def test_config_hash_ignores_key_order():
    assert rs.config_hash({"a": 1, "b": [1, 2]}) == rs.config_hash({"b": [1, 2], "a": 1})
    assert rs.config_hash({"a": 1}) != rs.config_hash({"a": 2})


def test_paired_t_matches_scipy_and_is_wider_than_the_bootstrap_at_small_n():
    """The t interval equals scipy's one-sample t interval of the differences; at n = 8 it is
    wider than the percentile bootstrap's (which undercovers there); a planted difference of
    4 standard errors is detected, a null one is not."""
    from scipy import stats

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=8), rng.normal(size=8)
    d = x - y
    ref = stats.t.interval(0.95, 7, loc=d.mean(), scale=d.std(ddof=1) / np.sqrt(8))
    t = rs.paired_t(x, y)
    assert np.allclose([t.low, t.high], ref, rtol=1e-12, atol=1e-15)
    b = rs.paired_bootstrap(x, y)
    assert t.high - t.low > b.high - b.low
    noise = rng.normal(size=8)
    se = noise.std(ddof=1) / np.sqrt(8)
    assert rs.paired_t(y + noise, y).verdict == "tie"  # this seed's null draw: |mean| < 2.36 se
    assert rs.paired_t(y + noise + 4 * se, y).verdict == "x > y"
    with pytest.raises(ValueError):
        rs.paired_t([1.0], [2.0])


# ------------------------------------------------------------------ unpaired: Welch and the MDE
def test_welch_interval_matches_scipy_and_refuses_bad_input():
    """The interval is scipy's Welch ``ttest_ind(equal_var=False)`` interval (unequal sizes and
    variances); constant samples (no t statistic) and short or non-finite ones are refused."""
    from scipy import stats

    rng = np.random.default_rng(4)
    x, y = rng.normal(1.0, 1.0, size=8), rng.normal(0.0, 3.0, size=11)
    w = rs.welch_interval(x, y, level=0.9)
    ref = stats.ttest_ind(x, y, equal_var=False).confidence_interval(0.9)
    assert np.allclose([w.low, w.high], [ref.low, ref.high], rtol=1e-10, atol=0)
    assert w.mean == pytest.approx(x.mean() - y.mean(), rel=1e-14) and (w.n_x, w.n_y) == (8, 11)
    with pytest.raises(ValueError, match="zero variance"):
        rs.welch_interval([1.0, 1.0], [2.0, 2.0])
    with pytest.raises(ValueError, match=">= 2"):
        rs.welch_interval([1.0], [2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        rs.welch_interval([1.0, np.inf], [2.0, 3.0])
    with pytest.raises(ValueError, match="level"):
        rs.welch_interval(x, y, level=1.0)


def test_mde_has_the_stated_power():
    """At the MDE the noncentral-t power is the stated one; for large samples the MDE tends to the
    normal one ``(z_{1−α/2} + z_power) · se``; at n = 8 it is larger (t tails). Monte Carlo:
    4000 seeded replicates of Welch's test on normal samples at the MDE reject in a fraction with
    binomial standard error 0.0063; the band ±0.032 is 4 standard errors plus 0.007 for the
    MDE's use of the population standard deviations where the test uses the sample ones."""
    from scipy import stats

    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    mde = rs.welch_mde(1.0, 1.0, 8, 8)
    assert rs.welch_power(mde, 1.0, 1.0, 8, 8) == pytest.approx(0.8, abs=1e-9)
    assert mde > z * np.sqrt(2 / 8)
    big = rs.welch_mde(1.0, 2.0, 10**6, 10**6)
    assert big == pytest.approx(z * np.sqrt(5 / 10**6), rel=1e-4)
    assert rs.welch_mde(1.0, 1.0, 8, 8, alpha=0.05 / 7) > mde  # a Bonferroni level needs a larger effect
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(4000, 8)) + mde, rng.normal(size=(4000, 8))
    power = np.mean(stats.ttest_ind(x, y, axis=1, equal_var=False).pvalue < 0.05)
    assert abs(power - 0.8) <= 0.032, power
    assert rs.welch_power(1e3, 1.0, 1.0, 8, 8) == pytest.approx(1.0)  # far tail: no NaN
    with pytest.raises(ValueError, match="power"):
        rs.welch_mde(1.0, 1.0, 8, 8, power=0.01)


def _curves(shift: float, sd: float = 0.01, n: int = 8, seed: int = 0) -> tuple[dict, dict]:
    """Two sets of ``n`` runs' values at labels 0 (constant, the same in both), 10, 20 and ``auc``:
    the second holds the first's values in reverse order, plus ``shift`` at every varying label
    (so its means differ by exactly ``shift``)."""
    rng = np.random.default_rng(seed)
    x = {0: [0.2] * n, **{k: list(0.3 + sd * rng.normal(size=n)) for k in (10, 20, "auc")}}
    y = {k: ([v + shift for v in x[k][::-1]] if k else list(x[k])) for k in x}
    return x, y


def test_compare_curves_calls_a_planted_shift_different_and_a_null_one_the_same():
    """Null: the same values (in another order) are called the same curve; planted: a shift of
    3 MDEs at every varying label must be called different (the case that must fail), and so
    must constant points that disagree. The constant label (step 0) is compared exactly and left
    out of the Bonferroni family."""
    x, y = _curves(0.0)
    same = rs.compare_curves(x, y)
    assert same.verdict == "same curve" and same.family == 3 and same.constant == {0: (0.2, 0.2)}
    assert all(t.level == pytest.approx(1 - 0.05 / 3) for t in same.tests.values())
    mde = max(same.mde.values())
    x, y = _curves(3 * mde)
    diff = rs.compare_curves(x, y)
    assert diff.verdict == "differs" and not any(t.covers_zero for t in diff.tests.values())
    x, y = _curves(0.0)
    y[0] = [0.25] * 8  # the constant points disagree
    assert rs.compare_curves(x, y).verdict == "differs"
    with pytest.raises(ValueError, match="same non-empty labels"):
        rs.compare_curves({1: [0.0, 1.0]}, {2: [0.0, 1.0]})


def test_compare_curves_family_wise_error_under_the_null():
    """200 null replicates (independent normal samples of unequal spread, 8 runs each, 7 labels):
    Bonferroni keeps the family-wise rate of "differs" at most 0.05 (about 0.049 here); binomial
    standard error at 0.05 is 0.015, so the bound 0.10 (> 3 standard errors above) fails with
    probability < 0.002 at the nominal rate, and catches a family left uncorrected (7 tests at
    0.05 each: a rate of about 0.30)."""
    rng = np.random.default_rng(6)
    labels = list(range(7))
    wrong = 0
    for _ in range(200):
        x = {k: rng.normal(size=8) for k in labels}
        y = {k: rng.normal(scale=2.0, size=8) for k in labels}
        wrong += rs.compare_curves(x, y).verdict == "differs"
    assert wrong / 200 <= 0.10
