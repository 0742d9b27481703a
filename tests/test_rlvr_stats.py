"""The RLVR study's statistics: bootstrap intervals (coverage under the null, a planted difference
detected), the grid-interior check (an edge-tuned rate is flagged), curve summaries, collapse."""

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
