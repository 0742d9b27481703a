"""The `verify` report: the claim interface, one :class:`Row` per checked claim, printing and JSON.

A *claim module* (``claims_static``, ``claims_dynamics``, ``claims_symbolic``) exposes
``claims(quick: bool, seed: int) -> list[Claim]``. A :class:`Claim` is cheap to build; its
``run(ctx)`` does the work and returns rows. ``num_tests`` is how many calibrated statistical
tests ``run`` performs: the runner splits the suite's family-wise false-failure rate ``α`` over
the sum of them (Bonferroni) and hands each test its share as ``ctx.alpha``. Randomness comes
only from ``ctx.rng`` (seeded per claim from the suite seed and the claim's key).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from ..results import atomic_write_text, jsonable
from ..stats import TestResult

__all__ = ["Context", "Claim", "Row", "KINDS", "OUTCOMES", "exact_row", "fact_row", "test_row", "z_row",
           "measured_row", "tally", "format_table", "write_json"]

KINDS = ("exact", "monte-carlo", "negative-control", "symbolic", "measurement")
#: What a row says about its claim: ``passed`` True, False or None (no test could decide).
OUTCOMES = ("holds", "fails", "untested")


@dataclass(frozen=True)
class Context:
    """What a claim's ``run`` gets: its own generator, its per-test rate and power, the mode."""

    rng: np.random.Generator
    alpha: float
    power: float
    quick: bool
    scale: float = 1.0  # multiplies Monte Carlo sample sizes (calibration runs use < 1)

    def size(self, n: int, minimum: int = 1000) -> int:
        """A Monte Carlo sample size scaled by ``scale`` (at least ``minimum``)."""
        return max(minimum, int(round(n * self.scale)))


@dataclass(frozen=True)
class Claim:
    """A unit of verification work. ``key`` is unique (it also seeds the claim's generator)."""

    key: str
    label: str
    problem: str
    run: Callable[[Context], list]
    num_tests: int = 0
    cost: float = 1.0


@dataclass
class Row:
    """One line of the report.

    ``kind``: ``exact`` (closed form vs multiset engine, or an exact fact), ``monte-carlo`` (a
    calibrated test of a true claim: passes when not rejected), ``negative-control`` (a calibrated
    test of a false claim: passes when rejected), ``symbolic`` (a sympy derivation).
    ``measurement`` is a reported quantity without a prediction (never a verdict).
    ``exact``/``estimate`` are the compared numbers (norms for vectors), ``statistic``/``threshold``
    the test's (``max|z|`` and its Bonferroni threshold; ``|difference|`` and the float64 tolerance).
    ``passed`` is None when the check could not decide (an undefined standard error, or a test
    that cannot detect a deviation as large as the quantity itself): the claim is *untested*,
    never counted as holding.
    """

    claim: str
    statement: str
    problem: str
    kind: str
    exact: float | None
    estimate: float | None
    statistic: float | None
    threshold: float | None
    passed: bool | None
    symbolic: str = "—"
    note: str = ""
    details: dict = field(default_factory=dict)
    seconds: float = 0.0
    key: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if isinstance(self.passed, (bool, np.bool_)):
            self.passed = bool(self.passed)
        elif self.passed is not None:
            raise ValueError(f"passed must be True, False or None, got {self.passed!r}")
        if self.kind == "measurement" and self.passed is not None:
            raise ValueError("a measurement row has no verdict: passed must be None")

    @property
    def outcome(self) -> str:
        """``holds`` / ``fails`` / ``untested`` (a measurement, or a check that could not decide)."""
        return "untested" if self.passed is None else "holds" if self.passed else "fails"

    @property
    def verdict(self) -> str:
        if self.kind == "measurement":
            return "measured"
        if self.passed is None:
            return "untested"
        if self.kind == "negative-control":
            return "caught" if self.passed else "MISSED"
        if self.kind == "symbolic":
            return "proved" if self.passed else "FAILED"
        return "holds" if self.passed else "FAILS"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = self.verdict
        d["outcome"] = self.outcome
        return _jsonable(d)


def _jsonable(x):
    """JSON-ready values; non-finite floats keep their name (``"inf"``) in the report."""
    return jsonable(x, nonfinite=str)


def exact_row(label, statement, problem, exact, estimate, *, tol_rel=1e-12, note="", details=None) -> Row:
    """Closed form vs engine in float64: ``|exact − estimate| ≤ tol_rel · max(1, |exact|)``.

    A deterministic comparison of two exact computations (rounding only), not a Monte Carlo test.
    """
    exact_a = np.asarray(exact, dtype=np.float64)
    est_a = np.asarray(estimate, dtype=np.float64)
    err = float(np.max(np.abs(exact_a - est_a)))
    tol = tol_rel * max(1.0, float(np.max(np.abs(exact_a))))
    return Row(label, statement, problem, "exact", float(np.max(np.abs(exact_a))) if exact_a.ndim else float(exact_a),
               float(np.max(np.abs(est_a))) if est_a.ndim else float(est_a), err, tol, bool(err <= tol),
               note=note, details=dict(details or {}, max_abs_error=err))


def fact_row(label, statement, problem, value, holds: bool, *, threshold=None, estimate=None, note="",
             details=None) -> Row:
    """An exact fact (an inequality or a sign) evaluated by the exact engine."""
    return Row(label, statement, problem, "exact", float(value), None if estimate is None else float(estimate),
               float(value), None if threshold is None else float(threshold), bool(holds), note=note,
               details=dict(details or {}))


def test_row(label, statement, problem, test: TestResult, *, negative=False, exact_bias=None,
             exact_value=None, estimate=None, note="", details=None) -> Row:
    """A calibrated Monte Carlo test as a row. For a negative control, ``passed`` = rejected, and
    the exact bias and its ratio to the minimum detectable bias are recorded."""
    d = dict(details or {})
    d.update(test.summary())
    if exact_bias is not None:
        bias = np.atleast_1d(np.asarray(exact_bias, dtype=np.float64))
        d["exact_bias_max_abs"] = float(np.max(np.abs(bias)))
        d["exact_bias_norm"] = float(np.linalg.norm(bias))
        d["bias_over_detectable"] = test.power_ratio(bias)
        if negative:
            note = (note + " " if note else "") + (
                f"exact |bias|max={d['exact_bias_max_abs']:.3g} = {d['bias_over_detectable']:.3g}x the "
                f"detectable bias at power {test.power:g}")
    # vectors are shown by their norms (the per-coordinate errors are in details)
    if exact_value is None:
        exact_value = float(np.linalg.norm(test.exact)) if test.exact.size > 1 else float(test.exact[0])
    if estimate is None:
        estimate = float(np.linalg.norm(test.estimate)) if test.estimate.size > 1 else float(test.estimate[0])
    passed = (not test.passed) if negative else test.passed
    return Row(label, statement, problem, "negative-control" if negative else "monte-carlo",
               float(exact_value), float(estimate), test.statistic, test.threshold, passed, note=note, details=d)


def _num(x) -> float | None:
    """A finite float, or None (undefined)."""
    x = float(x)
    return x if math.isfinite(x) else None


def z_row(label, statement, problem, measured, std_error, predicted, threshold, *, scale=None,
          negative=False, note="", details=None) -> Row:
    """A z-test of a measurement against its prediction: ``z = (measured − predicted) / se``.

    A true claim (``negative=False``) holds when ``|z| < threshold``; a negative control (a false
    claim) passes when ``|z| > threshold``. The smallest deviation the test detects is
    ``threshold · se``. The claim is *untested* (``passed=None``) when ``z`` is undefined (``se``
    NaN or 0, or a NaN threshold: too few samples) or, for a true claim, when the test cannot
    detect a deviation as large as ``scale`` (the quantity's own size, default ``|predicted|``).
    """
    m, se, pred, thr = float(measured), float(std_error), float(predicted), float(threshold)
    scale = abs(pred) if scale is None else abs(float(scale))
    defined = math.isfinite(se) and se > 0 and math.isfinite(thr) and math.isfinite(pred) and math.isfinite(m)
    z = (m - pred) / se if defined else float("nan")
    min_det = thr * se if defined else float("nan")
    why = ""
    if not defined:
        passed, why = None, ("untested: measured or predicted value undefined"
                             if not (math.isfinite(m) and math.isfinite(pred))
                             else "untested: standard error undefined (NaN, 0, or too few samples)")
    elif negative:
        passed = bool(abs(z) > thr)
    elif not min_det < scale:
        passed, why = None, f"untested: detects only deviations >= {min_det:.3g}, the quantity is {scale:.3g}"
    else:
        passed = bool(abs(z) < thr)
    d = dict(details or {}, se=se, z=z, min_detectable=min_det, scale=scale)
    note = "; ".join(x for x in (note, why) if x)
    return Row(label, statement, problem, "negative-control" if negative else "monte-carlo", _num(pred),
               _num(m), None if not defined else abs(z), _num(thr), passed, note=note, details=d)


def measured_row(label, statement, problem, measured, std_error, *, note="", details=None) -> Row:
    """A reported quantity with no prediction: no verdict (``passed=None``)."""
    d = dict(details or {}, se=float(std_error))
    return Row(label, statement, problem, "measurement", None, _num(measured), None, None, None,
               note=note, details=d)


def tally(rows) -> dict:
    """Counts over the rows that state a claim (measurements apart): ``tested`` (a verdict was
    reached), ``hold`` (passed, incl. caught negative controls), ``fail``, ``untested`` (no verdict:
    see :class:`Row`), and ``measured`` (rows without a prediction)."""
    claims = [r for r in rows if r.kind != "measurement"]
    return {"tested": sum(r.passed is not None for r in claims), "hold": sum(r.passed is True for r in claims),
            "fail": sum(r.passed is False for r in claims), "untested": sum(r.passed is None for r in claims),
            "measured": len(rows) - len(claims)}


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    x = float(x)
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.2e}"


COLUMNS = (("claim", 5), ("problem", 24), ("statement", 46), ("exact", 10), ("symbolic", 8),
           ("estimate", 10), ("statistic", 10), ("threshold", 10), ("verdict", 8))


def format_table(rows: list[Row]) -> str:
    """Fixed-width table: claim, problem, statement, exact, symbolic, estimate, statistic, threshold, verdict."""
    def cell(text, width):
        text = str(text)
        return text if len(text) <= width else text[:width - 1] + "…"

    head = "  ".join(f"{name:<{w}}" for name, w in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        vals = {"claim": r.claim, "problem": r.problem, "statement": r.statement, "exact": _fmt(r.exact),
                "symbolic": r.symbolic, "estimate": _fmt(r.estimate), "statistic": _fmt(r.statistic),
                "threshold": _fmt(r.threshold), "verdict": r.verdict}
        lines.append("  ".join(f"{cell(vals[name], w):<{w}}" for name, w in COLUMNS))
        if r.note and r.kind == "negative-control":
            lines.append(f"{'':<7}↳ {r.note}")
    return "\n".join(lines)


def write_json(path: str, report: dict) -> None:
    """Write ``report`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    atomic_write_text(os.path.abspath(path), json.dumps(_jsonable(report), indent=1) + "\n")
