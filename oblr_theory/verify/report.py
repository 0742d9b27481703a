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
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from ..results import atomic_write_text, jsonable
from ..stats import TestResult

__all__ = ["Context", "Claim", "Row", "KINDS", "OUTCOMES", "exact_row", "fact_row", "test_row", "z_row",
           "measured_row", "tally", "format_table",
           "format_legend", "format_summary", "theorem_summary", "strength_text", "gaps_text", "outcome", "verdict", "write_json",
           "THEOREM_TITLES", "TABLE_COLUMNS", "LINE_WIDTH"]

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


def _finite_or_none(x) -> float | None:
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
    return Row(label, statement, problem, "negative-control" if negative else "monte-carlo", _finite_or_none(pred),
               _finite_or_none(m), None if not defined else abs(z), _finite_or_none(thr), passed, note=note, details=d)


def measured_row(label, statement, problem, measured, std_error, *, note="", details=None) -> Row:
    """A reported quantity with no prediction: no verdict (``passed=None``)."""
    d = dict(details or {}, se=float(std_error))
    return Row(label, statement, problem, "measurement", None, _finite_or_none(measured), None, None, None,
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


def _num(x, width: int = 8) -> str:
    """A number in at most ``width`` characters (fewer significant digits, then compact exponent)."""
    if x is None or isinstance(x, str):
        return _fmt(x)
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return _fmt(x)
    for digits in (4, 3, 2):
        text = f"{x:.{digits}g}"
        if len(text) <= width:
            return text
    mant, exp = f"{x:.0e}".split("e")
    return f"{mant}e{int(exp)}"


#: Theorem and claim labels of docs/theory.md (S6: its "Token aggregation" section).
THEOREM_TITLES = {
    "T1": "unbiasedness", "T2": "exact variance", "T3": "optimal baseline", "T4": "one-step loss bound",
    "T5": "SNR learning rate", "T6": "convergence", "T7": "SNR estimation", "T8": "token-level facts",
    "S6": "token aggregation (peers' loss modes)", "meta": "runner consistency",
    "DEF": "definitions against independent naive loops", "SMOOTH": "the bandit's smoothness constant",
    "PEERS": "peers' estimators and batch-coupled modes: exact bias", "KL": "KL estimators k1/k2/k3: exact biases",
}
#: The columns of the printed table: (header, width, what it holds).
TABLE_COLUMNS = (
    ("problem", 15, "the problem the claim is checked on (docs/theory.md, 'Problems with exact answers')"),
    ("statement", 29, "the claim; a negative control states a FALSE claim that the test must reject"),
    ("exact", 8, "the exact value (enumeration or closed form; a vector by its norm)"),
    ("estimate", 8, "what is compared with it: Monte Carlo estimate or second exact engine"),
    ("stat", 8, "test statistic: max |z| over coordinates (Monte Carlo) or |difference| (exact)"),
    ("thresh", 8, "its threshold: Bonferroni z* from the family-wise rate, or the float64 tolerance"),
    ("detect", 8, "minimum detectable effect at the stated power: absolute bias per coordinate, or a "
                  "relative error (%); — for exact rows"),
    ("verdict", 8, "holds / FAILS; negative control: caught / MISSED; symbolic: proved / FAILED; "
                   "untested: no check could decide (never counted as holding)"),
)
#: Width of every printed line.
LINE_WIDTH = 100


def _get(r, key, default=None):
    """A field of a :class:`Row` or of its JSON dict."""
    if isinstance(r, dict):
        return r.get(key, default)
    return getattr(r, key, default)


def outcome(r) -> str:
    """``holds`` / ``fails`` / ``untested`` (``passed is None``: the claim was not checked)."""
    out = _get(r, "outcome")
    if out in ("holds", "fails", "untested"):
        return out
    passed = _get(r, "passed")
    return "untested" if passed is None else ("holds" if passed else "fails")


def verdict(r) -> str:
    """The verdict word of a row (``untested`` where no check ran or none could decide;
    ``measured`` for a measurement row)."""
    if _get(r, "kind") == "measurement":
        return "measured"
    if outcome(r) == "untested":
        return "untested"
    v = _get(r, "verdict")
    if isinstance(v, str):
        return v
    ok = outcome(r) == "holds"
    kind = _get(r, "kind")
    if kind == "negative-control":
        return "caught" if ok else "MISSED"
    if kind == "symbolic":
        return "proved" if ok else "FAILED"
    return "holds" if ok else "FAILS"


def detectable(r) -> str:
    """The row's minimum detectable effect (``—`` for exact and symbolic rows)."""
    d = _get(r, "details") or {}
    if "relative_detectable_error" in d:
        return f"{100 * float(d['relative_detectable_error']):.2g}%"
    if "min_detectable_bias" in d:
        return _num(d["min_detectable_bias"])
    if "min_detectable" in d:  # a z-test row (:func:`z_row`): threshold × SE
        return _num(d["min_detectable"])
    return "—"


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(str(text), width, break_long_words=True, break_on_hyphens=False) or [""]


def _table_lines(rows) -> list[str]:
    cells = []
    for r in rows:
        cells.append({"problem": _wrap(_get(r, "problem"), 15), "statement": _wrap(_get(r, "statement"), 29),
                      "exact": [_num(_get(r, "exact"))], "estimate": [_num(_get(r, "estimate"))],
                      "stat": [_num(_get(r, "statistic"))], "thresh": [_num(_get(r, "threshold"))],
                      "detect": [detectable(r)], "verdict": [verdict(r)]})
    lines = []
    for r, c in zip(rows, cells):
        height = max(len(v) for v in c.values())
        for i in range(height):
            lines.append(" ".join(f"{(c[name][i] if i < len(c[name]) else ''):<{w}}"
                                  for name, w, _ in TABLE_COLUMNS).rstrip())
        note = _get(r, "note") or ""
        if note and _get(r, "kind") != "symbolic":
            lines += textwrap.wrap(note, LINE_WIDTH, initial_indent="    ↳ ", subsequent_indent="      ")
    return lines


def format_legend() -> str:
    """What each column of the table holds."""
    lines = ["Columns:"]
    for name, _, what in TABLE_COLUMNS:
        lines += textwrap.wrap(what, LINE_WIDTH, initial_indent=f"  {name:<9} ", subsequent_indent=" " * 12)
    return "\n".join(lines)


def _labels(rows) -> list[str]:
    return list(dict.fromkeys(_get(r, "claim") for r in rows))


def format_table(rows) -> str:
    """The rows grouped by theorem, at most :data:`LINE_WIDTH` columns: the column legend, then per
    theorem a header and its rows (problem and statement wrapped, never cut); each row's note
    below it (``↳``). Accepts :class:`Row` objects or their JSON dicts; ``passed is None`` is
    shown as ``untested``."""
    head = " ".join(f"{name:<{w}}" for name, w, _ in TABLE_COLUMNS).rstrip()
    lines = [format_legend(), ""]
    for label in _labels(rows):
        sub = [r for r in rows if _get(r, "claim") == label]
        title = f"{label}: {THEOREM_TITLES.get(label, '')}".rstrip(": ")
        lines += [f"== {title} ({len(sub)} rows) ".ljust(LINE_WIDTH, "="), head, "-" * len(head)]
        lines += _table_lines(sub)
        lines.append("")
    return "\n".join(lines).rstrip()


def theorem_summary(rows, label: str) -> dict:
    """Per theorem: rows by kind and outcome, how strong the checks are, what was not checked."""
    sub = [r for r in rows if _get(r, "claim") == label]
    by = lambda kind: [r for r in sub if _get(r, "kind") == kind]  # noqa: E731
    ex, mc, neg, sym = by("exact"), by("monte-carlo"), by("negative-control"), by("symbolic")
    out = dict(label=label, title=THEOREM_TITLES.get(label, ""), rows=len(sub),
               holds=sum(outcome(r) == "holds" for r in sub), fails=sum(outcome(r) == "fails" for r in sub),
               untested=[f"{_get(r, 'problem')}: {_get(r, 'statement')}" for r in sub if outcome(r) == "untested"],
               exact=len(ex), monte_carlo=len(mc), negative=len(neg), caught=sum(outcome(r) == "holds" for r in neg),
               symbolic=("proved" if sym and all(outcome(r) == "holds" for r in sym) else
                         "FAILED" if sym else "none"))

    def ratio(r):  # two-sided statistic against its threshold (a one-sided negative statistic is left out)
        st, t = _get(r, "statistic"), _get(r, "threshold")
        if st is None or t in (None, 0) or outcome(r) == "untested" or float(st) < 0:
            return None
        return float(st) / float(t)

    def engine(r):  # closed form vs engine: |difference| / float64 tolerance
        d = _get(r, "details") or {}
        return ratio(r) if set(d) == {"max_abs_error"} and d["max_abs_error"] == _get(r, "statistic") else None

    mc_ratios = [x for x in map(ratio, mc) if x is not None and math.isfinite(x)]
    ex_ratios = [x for x in map(engine, ex) if x is not None and math.isfinite(x)]
    out["worst_stat_over_threshold"] = max(mc_ratios) if mc_ratios else None
    out["worst_error_over_tolerance"] = max(ex_ratios) if ex_ratios else None
    rel = [float((_get(r, "details") or {})["relative_detectable_error"]) for r in mc
           if "relative_detectable_error" in (_get(r, "details") or {})]
    out["relative_detectable"] = (min(rel), max(rel)) if rel else None
    bias = [float((_get(r, "details") or {})["bias_over_detectable"]) for r in neg
            if "bias_over_detectable" in (_get(r, "details") or {})]
    out["negative_bias_over_detectable"] = min(bias) if bias else None
    gaps = []
    if not mc:
        gaps.append("no Monte Carlo test (exact checks only)")
    if mc and not neg:
        gaps.append("no negative control")
    if out["symbolic"] == "none":
        gaps.append("no symbolic derivation")
    out["gaps"] = gaps
    return out


def strength_text(s: dict) -> str:
    """How strong a theorem's checks are, from :func:`theorem_summary`."""
    parts = []
    if s["worst_stat_over_threshold"] is not None:
        parts.append(f"Monte Carlo: largest stat/thresh {s['worst_stat_over_threshold']:.2g}")
    if s["worst_error_over_tolerance"] is not None:
        parts.append(f"exact: largest error/tolerance {s['worst_error_over_tolerance']:.2g}")
    if s["relative_detectable"]:
        lo, hi = s["relative_detectable"]
        parts.append(f"detects relative errors of {100 * lo:.2g}–{100 * hi:.2g}%")
    if s["negative_bias_over_detectable"] is not None:
        parts.append(f"false claims ≥ {s['negative_bias_over_detectable']:.2g}x the detectable bias")
    return "; ".join(parts)


def gaps_text(s: dict) -> str:
    """What a theorem's rows did not check, from :func:`theorem_summary`."""
    gaps = s["gaps"] + [f"untested: {u}" for u in s["untested"]]
    return "; ".join(gaps) if gaps else "nothing listed"


def format_summary(rows) -> str:
    """One short block per theorem (fits one screen): rows and outcomes, how strong the checks are
    (largest statistic/threshold, detectable effects, how far negative controls were from the
    detection limit), and what was not checked."""
    lines = ["Summary per theorem (a true claim holds while stat/thresh ≤ 1; a negative control must be "
             "rejected):"]
    for label in _labels(rows):
        s = theorem_summary(rows, label)
        head = (f"{label} {s['title']}: {s['rows']} rows, {s['holds']} hold, {s['fails']} fail"
                + (f", {len(s['untested'])} untested" if s["untested"] else ""))
        parts = [f"{s['exact']} exact", f"{s['monte_carlo']} Monte Carlo",
                 f"{s['caught']}/{s['negative']} negative controls caught", f"symbolic {s['symbolic']}"]
        strength = strength_text(s)
        text = head + "; " + ", ".join(parts) + "." + (f" Strength: {strength}." if strength else "")
        text += f" Not checked: {gaps_text(s)}."
        lines += textwrap.wrap(text, LINE_WIDTH, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


def write_json(path: str, report: dict) -> None:
    """Write ``report`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    atomic_write_text(os.path.abspath(path), json.dumps(_jsonable(report), indent=1) + "\n")
