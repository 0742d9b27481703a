"""Calibrated tests: streaming moments, thresholds, power, and that the tests can fail."""

import numpy as np
import pytest
from scipy import stats as sps

from tolerances import rounding_tol
from oblr_theory import exact, montecarlo as mc, stats

from conftest import random_bandit


def test_streaming_moments_match_numpy():
    x = np.random.default_rng(0).exponential(size=(5_000, 3))
    m = stats.SampleMoments(3)
    for chunk in np.array_split(x, 7):
        m.update(chunk)
    # streaming (chunk merges) against numpy's two passes: n-term sums of x^k (x ≥ 0) and of
    # centred powers (|x − μ| ≤ |x| + μ), each within 2γ_{n+64} of the sums of their |terms|
    n = len(x)
    mu = x.mean(0)
    a1, a2, a3 = (((np.abs(x) + mu) ** k).mean(0) for k in (1, 2, 3))
    e = rounding_tol(n + 64)
    assert np.all(np.abs(m.mean - mu) <= e * a1)
    var = x.var(0, ddof=1)
    assert np.all(np.abs(m.var - var) <= e * a2 * n / (n - 1))
    # skew = m3 / m2^1.5: relative error ≤ δm3/|m3| + 1.5 δm2/m2
    m2, m3 = x.var(0), ((x - mu) ** 3).mean(0)
    skew_tol = np.abs(sps.skew(x)) * (e * a3 / np.abs(m3) + 1.5 * e * a2 / m2)
    assert np.all(np.abs(m.skewness - sps.skew(x)) <= skew_tol)


def test_bonferroni_threshold_and_power():
    # α/(2m) is exact for these α, m (a power of 2 times the decimal), so the calls are identical
    assert stats.bonferroni_z(0.05) == sps.norm.isf(0.025)
    assert stats.bonferroni_z(1e-6, 10) == pytest.approx(sps.norm.isf(5e-8), rel=rounding_tol(2), abs=0)
    # Student t with df: 0.05/(2·3) is the same division as 0.05/6, so the calls are identical
    assert stats.bonferroni_z(0.05, 3, df=15) == sps.t.isf(0.05 / 6, 15)
    assert stats.bonferroni_z(0.05, 3, df=15) > stats.bonferroni_z(0.05, 3)  # t's heavier tails
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="df"):
            stats.bonferroni_z(0.05, 1, df=bad)
    mde = stats.detectable_shift(1.0, 0.05, 1, power=0.5)  # at power 1/2 the shift is z* itself
    assert mde == pytest.approx(sps.norm.isf(0.025), rel=rounding_tol(2), abs=0)  # Φ⁻¹(1/2) = 0 (±u)


def test_true_mean_passes_planted_bias_beyond_power_is_detected():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, 4)) * [1.0, 2.0, 0.5, 1.0]
    m = stats.SampleMoments.of(x)
    ok = stats.mean_test(m, np.zeros(4))
    assert ok.passed
    planted = np.zeros(4)
    planted[2] = ok.mde[2]  # exactly the minimum detectable bias in one coordinate
    detected = sum(not stats.mean_test(stats.SampleMoments.of(rng.normal(size=(20_000, 4)) * [1, 2, .5, 1]
                                                              + planted), np.zeros(4)).passed
                   for _ in range(20))
    assert detected >= 17  # power 0.99 per run: P(fewer than 17 of 20) < 1e-3


def test_biased_estimator_is_flagged():
    P = random_bandit(0, K=4)
    em = exact.estimator_moments(P, "grpo", 2)
    u = mc.sample_gradients(P, "grpo", 2, 1, 20_000, np.random.default_rng(0))[:, 0]
    t = stats.mean_test(stats.SampleMoments.of(u), em.grad)
    assert t.power_ratio(em.bias) > 1  # the exact bias is beyond the test's power...
    assert not t.passed                # ...and the test rejects "E ĝ = ∇J"
    assert stats.mean_test(stats.SampleMoments.of(u), em.mean).passed  # the engine's mean is right


def test_variance_test_passes_truth_and_rejects_planted_error():
    rng = np.random.default_rng(2)
    x = rng.exponential(size=(50_000, 3))  # tr Var = 3, skewed
    acc = stats.TraceVarianceMoments(np.ones(3)).update(x)
    t = stats.trace_variance_test(acc, 3.0)
    assert t.passed
    assert not stats.trace_variance_test(acc, 3.0 + 1.5 * t.mde[0]).passed


def test_rejection_rate_matches_the_stated_rate():
    """At a loose rate the false-failure frequency is measurable: 400 null runs at α = 0.1
    (d = 5, Bonferroni) must reject at a rate consistent with at most α."""
    rng = np.random.default_rng(3)
    rejections = sum(not stats.mean_test(stats.SampleMoments.of(rng.normal(size=(2_000, 5))), np.zeros(5),
                                         alpha=0.1).passed for _ in range(400))
    assert sps.binomtest(rejections, 400, 0.1, alternative="greater").pvalue > 1e-4
    assert rejections > 0  # Bonferroni over independent coordinates is only slightly conservative


def test_errors_name_the_argument():
    m = stats.SampleMoments.of(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="alpha"):
        stats.mean_test(m, np.zeros(2), alpha=0)
    with pytest.raises(ValueError, match="exact_mean"):
        stats.mean_test(m, np.zeros(3))
    with pytest.raises(ValueError, match="x must have shape"):
        m.update(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        m.update(np.full((2, 2), np.nan))
    constant = stats.mean_test(m, np.zeros(2))  # zero variance, exact match: z = 0
    assert constant.passed and constant.statistic == 0
    assert not stats.mean_test(m, np.ones(2)).passed  # zero variance, wrong mean: rejected
