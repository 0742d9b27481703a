"""Statistics of the RLVR study (``experiments/rlvr_study.py``): curve summaries, the collapse
flag, rate tuning on a geometric grid with an interior check, paired bootstrap intervals, and the
unpaired comparison of two sets of runs' curves (Welch intervals with their minimum detectable
effect, Bonferroni over the family).

Numpy (and scipy.stats for t quantiles) only (the study's torch side lives in :mod:`oblr_theory.integrations.rlvr`). Every function
is pure; randomness enters as a seed for ``numpy.random.default_rng``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

__all__ = ["config_hash", "area_under_curve", "steps_to_threshold", "collapsed", "paired_bootstrap",
           "paired_t", "PairedInterval", "geometric_grid", "grid_position", "pick_rate", "extend_grid",
           "WelchInterval", "welch_interval", "welch_power", "welch_mde", "CurveComparison", "compare_curves"]


def config_hash(config: dict) -> str:
    """A short stable key of a JSON-able config (sorted keys): 16 hex digits of its SHA-256."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _curve(steps, values) -> tuple[np.ndarray, np.ndarray]:
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if s.ndim != 1 or s.shape != v.shape or s.size < 2:
        raise ValueError(f"steps and values must be 1-D of the same length >= 2, got {s.shape}, {v.shape}")
    if not np.all(np.diff(s) > 0):
        raise ValueError("steps must be strictly increasing")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite (an evaluation that failed is not a value)")
    return s, v


def area_under_curve(steps, values) -> float:
    """Normalised area ``(1/(s_K − s_0)) ∫ v ds`` (trapezoid rule): the curve's mean value over the
    run, in the units of ``values`` (an accuracy area lies in ``[0, 1]``)."""
    s, v = _curve(steps, values)
    return float(np.sum(np.diff(s) * (v[1:] + v[:-1]) / 2) / (s[-1] - s[0]))


def steps_to_threshold(steps, values, threshold: float) -> float | None:
    """First evaluated step with ``value >= threshold``; ``None`` when the run never reaches it
    (undefined, never reported as a number)."""
    s, v = _curve(steps, values)
    hit = np.nonzero(v >= threshold)[0]
    return float(s[hit[0]]) if hit.size else None


def collapsed(values, initial: float, rel_floor: float = 0.25, abs_floor: float = 0.02,
              persist: int = 2) -> bool:
    """The collapse flag: the last ``persist`` evaluations all lie below
    ``max(abs_floor, rel_floor · initial)``, i.e. accuracy fell to (near) zero and stayed there
    until the end of the run. Valid only if ``values`` are in evaluation order."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size < persist or persist < 1:
        raise ValueError(f"values must be 1-D with at least persist={persist} >= 1 entries, got {v.shape}")
    floor = max(abs_floor, rel_floor * float(initial))
    return bool(np.all(v[-persist:] < floor))


@dataclass(frozen=True)
class PairedInterval:
    """Mean paired difference ``mean(x − y)``, its percentile bootstrap interval and ``n`` pairs."""

    mean: float
    low: float
    high: float
    n: int
    level: float

    @property
    def verdict(self) -> str:
        """``"x > y"``, ``"x < y"`` or ``"tie"`` (the interval contains 0)."""
        return "x > y" if self.low > 0 else "x < y" if self.high < 0 else "tie"


def paired_bootstrap(x, y, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> PairedInterval:
    """Percentile bootstrap interval of ``mean(x_i − y_i)`` over paired units ``i`` (the same
    evaluation seed for both methods: common random numbers). The pairs are resampled with
    replacement ``n_boot`` times (seeded). Needs ``n >= 2`` finite pairs."""
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"x and y must be paired 1-D arrays of length >= 2, got {np.shape(x)}, {np.shape(y)}")
    if not np.all(np.isfinite(d)):
        raise ValueError("x and y must be finite")
    if not 0 < level < 1 or n_boot < 100:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 100, got {level!r}, {n_boot!r}")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return PairedInterval(float(d.mean()), float(lo), float(hi), int(d.size), float(level))


def paired_t(x, y, level: float = 0.95) -> PairedInterval:
    """Student-t interval of ``mean(x_i − y_i)``: ``d̄ ± t_{n−1, (1+level)/2} · sd(d)/√n``. The
    check on :func:`paired_bootstrap` at small ``n``, where the percentile bootstrap covers less
    than ``level`` (its resampled means have variance ``(n−1)/n · sd²/n`` and normal tails).
    Valid only if the ``d_i`` are i.i.d. and roughly normal. Needs ``n >= 2`` finite pairs."""
    from scipy import stats

    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"x and y must be paired 1-D arrays of length >= 2, got {np.shape(x)}, {np.shape(y)}")
    if not np.all(np.isfinite(d)):
        raise ValueError("x and y must be finite")
    if not 0 < level < 1:
        raise ValueError(f"need 0 < level < 1, got {level!r}")
    half = float(stats.t.ppf((1 + level) / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    m = float(d.mean())
    return PairedInterval(m, m - half, m + half, int(d.size), float(level))


def geometric_grid(center: float, factor: float, n: int) -> list[float]:
    """``n`` rates ``center · factor^k`` for ``k = −(n−1)//2 .. n//2`` (increasing)."""
    if not center > 0 or not factor > 1 or n < 1:
        raise ValueError(f"need center > 0, factor > 1, n >= 1, got {center!r}, {factor!r}, {n!r}")
    lo = -((n - 1) // 2)
    return [float(center * factor ** k) for k in range(lo, lo + n)]


def grid_position(grid, chosen: float) -> str:
    """``"interior"`` or ``"low_edge"`` / ``"high_edge"``: where ``chosen`` sits in ``grid``. A
    grid of fewer than 3 rates has no interior: every choice is an edge."""
    g = sorted(float(r) for r in grid)
    i = int(np.argmin([abs(np.log(r / chosen)) for r in g]))
    if not np.isclose(g[i], chosen, rtol=1e-9):
        raise ValueError(f"chosen={chosen!r} is not a rate of the grid {g}")
    return "low_edge" if i == 0 else "high_edge" if i == len(g) - 1 else "interior"


def pick_rate(scores: dict) -> tuple[float, str]:
    """The rate with the highest score (``{rate: mean tuning score}``; ties: the smaller rate) and
    its :func:`grid_position`. NaN scores are refused."""
    if not scores:
        raise ValueError("scores is empty: no tuning run finished")
    rates = sorted(scores)
    vals = np.array([scores[r] for r in rates], dtype=float)
    if not np.all(np.isfinite(vals)):
        raise ValueError(f"tuning scores must be finite, got {dict(zip(rates, vals))}")
    best = rates[int(np.argmax(vals))]
    return float(best), grid_position(rates, best)


def extend_grid(grid, position: str, factor: float) -> list[float]:
    """One more rate beyond the edge that ``position`` names (``grid`` unchanged if interior)."""
    g = sorted(float(r) for r in grid)
    if position == "low_edge":
        return [g[0] / factor] + g
    if position == "high_edge":
        return g + [g[-1] * factor]
    if position == "interior":
        return g
    raise ValueError(f"position must be interior/low_edge/high_edge, got {position!r}")


# ------------------------------------------------------------------ unpaired: two sets of runs
@dataclass(frozen=True)
class WelchInterval:
    """``mean(x) − mean(y)`` of two independent samples, its Welch interval ``[low, high]`` at
    ``level``, the standard error ``se`` and the Welch–Satterthwaite degrees of freedom ``df``."""

    mean: float
    low: float
    high: float
    se: float
    df: float
    n_x: int
    n_y: int
    level: float

    @property
    def covers_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


def _two_samples(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or y.ndim != 1 or x.size < 2 or y.size < 2:
        raise ValueError(f"x and y must be 1-D with >= 2 values each, got shapes {x.shape}, {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite")
    return x, y


def _welch_se_df(var_x: float, var_y: float, n_x: int, n_y: int) -> tuple[float, float]:
    """``se = √(v_x/n_x + v_y/n_y)`` and ``df = se⁴ / ((v_x/n_x)²/(n_x−1) + (v_y/n_y)²/(n_y−1))``
    (Welch–Satterthwaite); refuses ``se = 0`` (both samples constant: no t statistic exists)."""
    a, b = var_x / n_x, var_y / n_y
    se2 = a + b
    if not se2 > 0:
        raise ValueError("both samples have zero variance: the Welch interval is undefined "
                         "(compare the values directly)")
    return float(np.sqrt(se2)), float(se2 ** 2 / (a ** 2 / (n_x - 1) + b ** 2 / (n_y - 1)))


def welch_interval(x, y, level: float = 0.95) -> WelchInterval:
    """Welch's interval of ``mean(x) − mean(y)`` for independent samples with unequal variances:
    ``d̄ ± t_{df, (1+level)/2} · se``, ``se`` and ``df`` of :func:`_welch_se_df` (sample variances,
    Bessel-corrected). Valid only if the values are independent and roughly normal within each
    sample. Needs ``n >= 2`` finite values in each and a positive ``se``."""
    from scipy import stats

    x, y = _two_samples(x, y)
    if not 0 < level < 1:
        raise ValueError(f"need 0 < level < 1, got {level!r}")
    se, df = _welch_se_df(float(x.var(ddof=1)), float(y.var(ddof=1)), x.size, y.size)
    m = float(x.mean() - y.mean())
    half = float(stats.t.ppf((1 + level) / 2, df)) * se
    return WelchInterval(m, m - half, m + half, se, df, int(x.size), int(y.size), float(level))


def welch_power(delta: float, sd_x: float, sd_y: float, n_x: int, n_y: int, alpha: float = 0.05) -> float:
    """Power of the two-sided level-``alpha`` Welch test against a true difference ``delta``:
    ``P(|T| > t_{df, 1−α/2})`` with ``T`` noncentral t (``df``, noncentrality ``delta/se``),
    ``se`` and ``df`` from the standard deviations ``sd_x``, ``sd_y`` as in :func:`_welch_se_df`."""
    from scipy import stats

    if not 0 < alpha < 1:
        raise ValueError(f"need 0 < alpha < 1, got {alpha!r}")
    if n_x < 2 or n_y < 2 or sd_x < 0 or sd_y < 0:
        raise ValueError(f"need n_x, n_y >= 2 and sd_x, sd_y >= 0, got {n_x}, {n_y}, {sd_x}, {sd_y}")
    se, df = _welch_se_df(sd_x ** 2, sd_y ** 2, n_x, n_y)
    c = float(stats.t.ppf(1 - alpha / 2, df))
    nc = abs(float(delta)) / se
    upper, lower = float(stats.nct.sf(c, df, nc)), float(stats.nct.cdf(-c, df, nc))
    # P(T < −c) <= P(T < 0) = Φ(−nc): scipy's far tail can be NaN where that bound is negligible
    if not np.isfinite(lower) and stats.norm.cdf(-nc) < 1e-12:
        lower = 0.0
    if not (np.isfinite(upper) and np.isfinite(lower)):
        raise ValueError(f"noncentral t tail probabilities not finite (df={df}, nc={nc})")
    return upper + lower


def welch_mde(sd_x: float, sd_y: float, n_x: int, n_y: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect: the smallest ``|delta|`` at which :func:`welch_power` reaches
    ``power`` (root of a monotone function of ``|delta|``; about ``(t_{1−α/2} + t_{power}) · se``)."""
    from scipy import optimize

    if not alpha < power < 1:
        raise ValueError(f"need alpha < power < 1, got alpha={alpha!r}, power={power!r}")
    se, _ = _welch_se_df(sd_x ** 2, sd_y ** 2, n_x, n_y)
    f = lambda d: welch_power(d, sd_x, sd_y, n_x, n_y, alpha) - power  # noqa: E731
    hi = se
    while f(hi) < 0:
        hi *= 2
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-12 * se, rtol=1e-10))


@dataclass(frozen=True)
class CurveComparison:
    """Two sets of runs compared point by point and by a summary (e.g. the AUC).

    ``tests``: label -> :class:`WelchInterval` at the Bonferroni level ``1 − alpha/len(tests)``;
    ``mde``: label -> the minimum detectable effect of that test at ``power``; ``constant``:
    label -> (x value, y value) for points where both sets are constant (e.g. every run's step 0
    from one checkpoint), compared exactly and left out of the family."""

    tests: dict
    mde: dict
    constant: dict
    alpha: float
    power: float

    @property
    def family(self) -> int:
        return len(self.tests)

    @property
    def verdict(self) -> str:
        """``"same curve"`` when every interval covers 0 and every constant point agrees,
        ``"differs"`` otherwise."""
        same = all(t.covers_zero for t in self.tests.values()) and \
            all(a == b for a, b in self.constant.values())
        return "same curve" if same else "differs"


def compare_curves(x: dict, y: dict, alpha: float = 0.05, power: float = 0.8) -> CurveComparison:
    """Compare ``x`` and ``y`` (label -> values over runs; the same labels, e.g. the evaluation
    steps and ``"auc"``) with :func:`welch_interval` at level ``1 − alpha/k`` (Bonferroni over the
    ``k`` labels where either set varies) and :func:`welch_mde` at ``alpha/k`` and ``power``;
    labels where both sets are constant go to ``constant`` (an exact comparison). The family-wise
    error of the verdict "differs" is at most ``alpha`` when every label's values are as
    :func:`welch_interval` assumes."""
    if set(x) != set(y) or not x:
        raise ValueError(f"x and y must have the same non-empty labels, got {sorted(x, key=str)} and {sorted(y, key=str)}")
    const, varying = {}, []
    for k in x:
        a, b = _two_samples(x[k], y[k])
        if np.ptp(a) == 0 and np.ptp(b) == 0:
            const[k] = (float(a[0]), float(b[0]))
        else:
            varying.append(k)
    alpha_k = alpha / max(len(varying), 1)
    tests, mde = {}, {}
    for k in varying:
        a, b = _two_samples(x[k], y[k])
        tests[k] = welch_interval(a, b, level=1 - alpha_k)
        mde[k] = welch_mde(float(a.std(ddof=1)), float(b.std(ddof=1)), a.size, b.size, alpha_k, power)
    return CurveComparison(tests, mde, const, float(alpha), float(power))
