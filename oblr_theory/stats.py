"""Calibrated statistical tests of Monte Carlo output against exact values (docs/theory.md: What verified means).

Every threshold comes from a stated false-failure rate and the sample's own variance, never a
bare tolerance (TFP's statistical-testing discipline):

* **Family-wise rate.** A suite of ``m`` tests shares the rate ``α`` (default ``1e-6``): each
  test gets ``α/m`` (Bonferroni), and a test over ``d`` coordinates splits its share again.
* **Mean test.** ``z_k = (x̄_k − μ_k) / (s_k/√n)`` per coordinate against the exact mean ``μ``;
  reject when ``max_k |z_k| > z*`` with ``z* = Φ⁻¹(1 − α_test/(2d))``. The CLT makes the
  z-scores standard normal for the i.i.d. bounded samples used here.
* **Power.** The minimum detectable bias per coordinate, ``δ_k = (z* + Φ⁻¹(1−β)) s_k/√n``: a true
  mean that is off by ``|δ_k|`` in coordinate ``k`` is rejected with probability ``≥ 1 − β``.
* **Variance test.** ``V̂ = Σ_k s_k²`` (unbiased for ``tr Var``) has the delta-method standard
  error ``sd(D)/√n`` with ``D_i = ||x_i − c||²`` about a fixed centre ``c`` (the exact mean):
  ``√n (V̂ − V) → N(0, Var||x − μ||²)``, so the fourth moment sets the interval.

Sample moments are accumulated in streaming form (:class:`SampleMoments`, Chan et al. 1979) so
arbitrarily many samples fit in constant memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

__all__ = ["DEFAULT_ALPHA", "DEFAULT_POWER", "SampleMoments", "TestResult", "bonferroni_z",
           "detectable_shift", "tail_error_order", "mean_test", "trace_variance_test", "TraceVarianceMoments"]

#: Family-wise false-failure rate of one suite (split over its tests).
DEFAULT_ALPHA = 1e-6
#: Power ``1 − β`` at which the minimum detectable bias is reported.
DEFAULT_POWER = 0.99


def _check_rate(name: str, value: float) -> float:
    if not (0.0 < float(value) < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def bonferroni_z(alpha: float, num_comparisons: int = 1, df: int | None = None) -> float:
    """Two-sided threshold ``z* = Φ⁻¹(1 − α/(2m))`` for ``m`` comparisons at family rate ``α``;
    with ``df`` the Student-t quantile ``t_df⁻¹(1 − α/(2m))`` (a studentised statistic whose
    standard error has ``df`` degrees of freedom, e.g. a jackknife over ``M`` batches: ``M − 1``)."""
    alpha = _check_rate("alpha", alpha)
    if int(num_comparisons) != num_comparisons or num_comparisons < 1:
        raise ValueError(f"num_comparisons must be an integer >= 1, got {num_comparisons!r}")
    q = alpha / (2.0 * num_comparisons)
    if df is None:
        return float(sps.norm.isf(q))
    if isinstance(df, bool) or int(df) != df or df < 1:
        raise ValueError(f"df must be an integer >= 1 (degrees of freedom), got {df!r}")
    return float(sps.t.isf(q, int(df)))


def detectable_shift(std_error, alpha: float, num_comparisons: int = 1, power: float = DEFAULT_POWER):
    """Minimum detectable bias ``δ = (z* + Φ⁻¹(power)) · se`` (per coordinate): a shift of ``δ``
    in one coordinate is rejected with probability at least ``power`` (one-sided tail ignored)."""
    power = _check_rate("power", power)
    return (bonferroni_z(alpha, num_comparisons) + float(sps.norm.ppf(power))) * np.asarray(std_error)


@dataclass
class SampleMoments:
    """Streaming count, mean and centred sum of squares per coordinate (Chan et al. merge).

    ``update(x)`` takes a batch (n, d) (or (n,) for a scalar statistic); ``var`` has ``ddof=1``.
    """

    dim: int
    count: int = 0
    mean: np.ndarray = field(default=None)
    m2: np.ndarray = field(default=None)
    m3: np.ndarray = field(default=None)

    def __post_init__(self):
        for name in ("mean", "m2", "m3"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.dim))

    def update(self, x) -> "SampleMoments":
        x = np.asarray(x, dtype=np.float64)
        x = x[:, None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("x contains non-finite values")
        n_b = x.shape[0]
        if n_b == 0:
            return self
        mean_b = x.mean(axis=0)
        dev = x - mean_b
        m2_b = (dev * dev).sum(axis=0)
        m3_b = (dev * dev * dev).sum(axis=0)
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        self.m3 = (self.m3 + m3_b + delta**3 * n_a * n_b * (n_a - n_b) / n**2
                   + 3.0 * delta * (n_a * m2_b - n_b * self.m2) / n)
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_b / n)
        self.count = n
        return self

    @classmethod
    def of(cls, x) -> "SampleMoments":
        x = np.asarray(x, dtype=np.float64)
        return cls(1 if x.ndim == 1 else x.shape[1]).update(x)

    @property
    def var(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"need at least 2 samples for a variance, got {self.count}")
        return self.m2 / (self.count - 1)

    @property
    def std_error(self) -> np.ndarray:
        """``s_k / √n``."""
        return np.sqrt(self.var / self.count)

    @property
    def skewness(self) -> np.ndarray:
        """Sample skewness ``γ_k = (M3/n) / (M2/n)^{3/2}`` (0 where the variance is 0)."""
        m2, m3 = self.m2 / self.count, self.m3 / self.count
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(m2 > 0, m3 / np.where(m2 > 0, m2, 1.0) ** 1.5, 0.0)


def tail_error_order(skewness, count: int, z: float) -> float:
    """Size of the leading correction to the *two-sided* normal tail at ``z`` for a studentised
    mean of ``count`` samples: ``max_k γ_k² z⁶ / (18 n)`` (relative).

    The ``O(1/√n)`` Edgeworth term of the studentised mean is even in ``z`` and cancels between
    the two tails, so the first correction to ``P(|T| > z) = 2Φ̄(z)`` is ``O(1/n)``; its skewness
    part grows like ``γ² z⁶/(18 n)`` (Hall 1987; the kurtosis part, of lower order in ``z``, is
    omitted). A value well below 1 means the stated rate holds to within a small factor. The
    sample skewness misses events the sample never saw, so this is a diagnostic, not a proof;
    ``experiments/calibration.py`` measures the rate directly.
    """
    g = float(np.max(np.abs(np.asarray(skewness)))) if np.size(skewness) else 0.0
    return g * g * z**6 / (18.0 * count)


@dataclass(frozen=True)
class TestResult:
    """One calibrated test. ``passed`` means "not rejected" (the claimed value is consistent).

    statistic/threshold: ``max|z|`` and ``z*``; p_value: Bonferroni-adjusted over coordinates
    (``min(1, d · 2Φ(−max|z|))``); estimate/exact: the sample and claimed values; mde: minimum
    detectable bias per coordinate (at ``power``); alpha: this test's share of the family rate.
    """

    kind: str
    statistic: float
    threshold: float
    p_value: float
    passed: bool
    estimate: np.ndarray
    exact: np.ndarray
    std_error: np.ndarray
    mde: np.ndarray
    alpha: float
    power: float
    count: int
    tail_error_order: float = 0.0

    def power_ratio(self, bias) -> float:
        """``max_k |bias_k| / δ_k``: ≥ 1 means the test detects ``bias`` with probability ≥ power."""
        bias = np.atleast_1d(np.asarray(bias, dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(self.mde > 0, np.abs(bias) / self.mde, np.where(np.abs(bias) > 0, np.inf, 0.0))
        return float(np.max(r))

    def summary(self) -> dict:
        return {"kind": self.kind, "statistic": self.statistic, "threshold": self.threshold,
                "p_value": self.p_value, "passed": self.passed, "alpha": self.alpha,
                "power": self.power, "count": self.count, "tail_error_order": self.tail_error_order,
                "max_abs_error": float(np.max(np.abs(self.estimate - self.exact))),
                "min_detectable_bias": float(np.min(self.mde)), "max_detectable_bias": float(np.max(self.mde))}


def _z_scores(diff, se, scale):
    """``diff / se``; a coordinate with ``se = 0`` (every sample equal) gets ``z = 0`` if its
    difference is floating-point rounding of ``scale`` and ``±inf`` otherwise."""
    tiny = 64 * np.finfo(np.float64).eps * np.maximum(scale, 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, diff / np.where(se > 0, se, 1.0),
                     np.where(np.abs(diff) <= tiny, 0.0, np.sign(diff) * np.inf))
    return z


def mean_test(moments: SampleMoments, exact_mean, alpha: float = DEFAULT_ALPHA,
              power: float = DEFAULT_POWER) -> TestResult:
    """H0: ``E x = exact_mean`` (d,), from i.i.d. samples summarised by ``moments``.

    Rejects when ``max_k |z_k| > Φ⁻¹(1 − α/(2d))``; family-wise false-failure rate ``≤ α``
    (Bonferroni over the d coordinates), asymptotically in n. Valid only if the samples are
    i.i.d. with finite variance (bounded here) and n is large enough for the CLT (n ≳ 10³).
    """
    alpha = _check_rate("alpha", alpha)
    mu = np.atleast_1d(np.asarray(exact_mean, dtype=np.float64))
    if mu.shape != (moments.dim,):
        raise ValueError(f"exact_mean must have shape ({moments.dim},), got {mu.shape}")
    if not np.all(np.isfinite(mu)):
        raise ValueError("exact_mean contains non-finite values")
    d = moments.dim
    se = moments.std_error
    diff = moments.mean - mu
    z = _z_scores(diff, se, np.abs(mu) + np.abs(moments.mean))
    zmax = float(np.max(np.abs(z)))
    thr = bonferroni_z(alpha, d)
    p = float(min(1.0, d * 2.0 * sps.norm.sf(zmax)))
    return TestResult("mean", zmax, thr, p, bool(zmax <= thr), moments.mean.copy(), mu, se,
                      detectable_shift(se, alpha, d, power), alpha, power, moments.count,
                      tail_error_order(moments.skewness, moments.count, thr))


@dataclass
class TraceVarianceMoments:
    """Streaming pieces of the ``tr Var`` test: per-coordinate moments of ``x`` and the moments of
    ``D = ||x − c||²`` about a fixed centre ``c`` (d,) (use the exact mean)."""

    centre: np.ndarray
    coords: SampleMoments = None
    dev: SampleMoments = None

    def __post_init__(self):
        self.centre = np.asarray(self.centre, dtype=np.float64)
        if self.centre.ndim != 1 or not np.all(np.isfinite(self.centre)):
            raise ValueError(f"centre must be a finite vector (d,), got shape {self.centre.shape}")
        self.coords = self.coords or SampleMoments(self.centre.size)
        self.dev = self.dev or SampleMoments(1)

    def update(self, x) -> "TraceVarianceMoments":
        x = np.asarray(x, dtype=np.float64)
        self.coords.update(x)
        diff = x - self.centre
        self.dev.update(np.einsum("nd,nd->n", diff, diff))
        return self


def trace_variance_test(moments: TraceVarianceMoments, exact_trace_var: float,
                        alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER) -> TestResult:
    """H0: ``tr Var x = exact_trace_var``, two-sided, at rate ``α``.

    ``V̂ = Σ_k s_k²`` with ``se = sd(||x − c||²)/√n`` (delta method: the fourth moment). The
    minimum detectable error is ``(z* + Φ⁻¹(power)) se``. Valid only if the samples are i.i.d.
    with finite fourth moment and ``c`` is (close to) the true mean.
    """
    alpha = _check_rate("alpha", alpha)
    V = float(exact_trace_var)
    if not np.isfinite(V) or V < 0:
        raise ValueError(f"exact_trace_var must be finite and >= 0, got {exact_trace_var!r}")
    n = moments.coords.count
    V_hat = float(np.sum(moments.coords.var))
    se = float(np.sqrt(moments.dev.var[0] / n))
    z = float(_z_scores(np.array(V_hat - V), np.array(se), np.array(abs(V) + abs(V_hat))))
    thr = bonferroni_z(alpha, 1)
    p = float(min(1.0, 2.0 * sps.norm.sf(abs(z))))
    return TestResult("trace_var", abs(z), thr, p, bool(abs(z) <= thr), np.array([V_hat]),
                      np.array([V]), np.array([se]), detectable_shift(np.array([se]), alpha, 1, power),
                      alpha, power, n, tail_error_order(moments.dev.skewness, n, thr))
