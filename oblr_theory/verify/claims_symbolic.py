"""Symbolic evidence: each theorem's sympy derivation (:mod:`oblr_theory.symbolic`), one row per label.

Included only when ``oblr_theory.symbolic`` provides ``derive`` and ``LABELS``. The quick run skips
the slow enumerations (T1, T3 and SMOOTH, the longest derivations).
"""

from __future__ import annotations

import io
import time
from functools import partial

from .report import Claim, Row

__all__ = ["claims", "SLOW_LABELS"]

#: Labels whose derivations take more than a few seconds (left out of ``--quick``).
SLOW_LABELS = frozenset({"T1", "T3", "SMOOTH"})
_COST = {"T1": 45.0, "T3": 15.0, "SMOOTH": 6.0, "T2": 3.0, "T8": 2.0}


def _derive(label: str, ctx) -> list[Row]:
    from ..symbolic import derive

    buf = io.StringIO()
    t0 = time.perf_counter()
    ok = bool(derive(label, out=buf))
    trace = buf.getvalue()
    return [Row(label, f"sympy derivation of {label} (oblr-theory derive {label})", "symbolic", "symbolic",
                None, None, None, None, ok, symbolic="proved" if ok else "FAILED",
                note=f"{len(trace.splitlines())} trace lines",
                details={"seconds": time.perf_counter() - t0, "trace_tail": trace[-2000:]})]


def claims(quick: bool, seed: int) -> list[Claim]:
    try:
        from ..symbolic import LABELS, derive  # noqa: F401  (guarded: the module may be absent)
    except ImportError:
        return []
    labels = [lab for lab in LABELS if not (quick and lab in SLOW_LABELS)]
    return [Claim(f"symbolic/{lab}", lab, "sympy", partial(_derive, lab), cost=_COST.get(lab, 1.0))
            for lab in labels]
