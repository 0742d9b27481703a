"""Statistics of the RLVR study (``experiments/rlvr_study.py``): curve summaries, the collapse
flag, rate tuning on a geometric grid with an interior check, and paired bootstrap intervals.

Numpy only (the study's torch side lives in :mod:`oblr_theory.integrations.rlvr`). Every function
is pure; randomness enters as a seed for ``numpy.random.default_rng``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

__all__ = ["config_hash", "area_under_curve", "steps_to_threshold", "collapsed", "paired_bootstrap",
           "paired_t", "PairedInterval", "geometric_grid", "grid_position", "pick_rate", "extend_grid"]


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
