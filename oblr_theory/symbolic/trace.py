"""Proof traces: a derivation records its steps and checks, and prints them for a reader.

A check is either an exact zero test on a sympy expression (:meth:`ProofTrace.zero`) or a
boolean fact with its evidence (:meth:`ProofTrace.fact`). ``trace.ok`` is True only if every
check passed, so a derivation can never print a proof of something it did not check.
"""
from __future__ import annotations

import sys
import time

import sympy as sp

__all__ = ["ProofTrace", "is_zero", "fmt"]


def is_zero(expr) -> bool:
    """Exact zero test of a rational expression: the expanded numerator of ``together(expr)``.

    Valid only if: ``expr`` is rational in its symbols (no radicals, no exp), which holds for
    every expression this package checks after substituting pi by probability symbols.
    """
    expr = sp.sympify(expr)
    if expr == 0:
        return True
    num, _ = sp.fraction(sp.together(expr))
    return sp.expand(num) == 0


def fmt(expr, width: int = 160) -> str:
    """One-line rendering of an expression, shortened in the middle when very long."""
    s = sp.sstr(expr)
    return s if len(s) <= width else s[: width // 2 - 3] + " ... " + s[-width // 2 + 3:]


class ProofTrace:
    """An ordered, printable record of a derivation's steps and checks."""

    def __init__(self, title: str):
        self.title = title
        self.lines: list[str] = []
        self.checks: list[tuple[str, bool]] = []
        self._t0 = time.perf_counter()

    def note(self, text: str) -> None:
        """A step of reasoning in words."""
        self.lines.append(f"  {text}")

    def show(self, name: str, expr) -> None:
        """A derived expression: ``name = expr``."""
        self.lines.append(f"    {name} = {fmt(expr)}")

    def fact(self, claim: str, holds: bool, evidence: str = "") -> bool:
        """A checked boolean fact; ``evidence`` says how it was checked."""
        holds = bool(holds)
        tail = f"  ({evidence})" if evidence else ""
        self.lines.append(f"  [{'ok' if holds else 'FAIL'}] {claim}{tail}")
        self.checks.append((claim, holds))
        return holds

    def zero(self, claim: str, expr) -> bool:
        """Check ``expr == 0`` exactly (see :func:`is_zero`) and record it."""
        return self.fact(claim, is_zero(expr), "exact: numerator expands to 0")

    def zeros(self, claim: str, exprs) -> bool:
        """Check that every entry of ``exprs`` is exactly 0 (a vector identity)."""
        return self.fact(claim, all(is_zero(e) for e in exprs), "exact: every numerator expands to 0")

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(h for _, h in self.checks)

    def render(self) -> str:
        n_ok = sum(h for _, h in self.checks)
        head = f"== {self.title}"
        foot = (f"  -> {n_ok}/{len(self.checks)} checks passed "
                f"in {time.perf_counter() - self._t0:.1f}s")
        return "\n".join([head, *self.lines, foot])

    def print(self, out=None) -> None:
        print(self.render(), file=out if out is not None else sys.stdout)
