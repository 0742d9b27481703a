"""T3 for general G: the optimal baseline from dV/db = 0 on the moment-algebra variance.

``V(b)`` of the constant baseline comes from :func:`.variance.derive_variance` (i.i.d. moment
algebra, G symbolic); ``b*`` is the root of ``dV/db``, not an assumed formula.
"""
from __future__ import annotations

import sympy as sp

from .trace import ProofTrace
from .variance import SYM, derive_variance

__all__ = ["derive_b_star", "derive_t3_general", "baseline_oracles"]


def derive_b_star() -> sp.Expr:
    """The unique root of ``dV(b)/db = 0`` (general G)."""
    V = derive_variance("constant")
    roots = sp.solve(sp.diff(V, SYM.b), SYM.b)
    if len(roots) != 1:
        raise AssertionError(f"dV/db = 0 should have one root, got {roots}")
    return sp.cancel(roots[0])


def derive_t3_general(trace: ProofTrace) -> None:
    G, b, mu, m_S, m_rS = SYM.G, SYM.b, SYM.mu, SYM.m_S, SYM.m_rS
    V = derive_variance("constant")
    trace.note("T3, general G: V(b) from the moment algebra (T2), a quadratic in b.")
    trace.show("V(b)", V)
    bs = derive_b_star()
    trace.show("root of dV/db", bs)
    trace.zero("b* = E[rS] / E[S] = m_rS / m_S (the gradient-weighted baseline)", bs - m_rS / m_S)
    d2 = sp.diff(V, b, 2)
    trace.show("d2V/db2", d2)
    trace.fact("d2V/db2 = 2 m_S / G > 0 when m_S > 0, so b* is the minimum",
               sp.simplify(d2 - 2 * m_S / G) == 0 and bool(sp.ask(sp.Q.positive(d2),
                                                                  sp.Q.positive(m_S) & sp.Q.positive(G))),
               "sympy ask with m_S > 0, G > 0")
    gap = sp.factor(V - V.subs(b, bs))
    trace.show("V(b) - V(b*)", gap)
    trace.zero("V(b) - V(b*) = (m_S/G) (b - b*)^2", gap - m_S / G * (b - bs) ** 2)
    cov = m_rS - mu * m_S   # Cov(S, r) = E[rS] - E[r] E[S]
    excess = sp.factor(V.subs(b, mu) - V.subs(b, bs))
    trace.show("V(mu) - V(b*)", excess)
    trace.zero("V(mu) - V(b*) = (m_S/G)(mu - b*)^2 = Cov(S, r)^2 / (G m_S)", excess - cov ** 2 / (G * m_S))
    trace.note("so the mean baseline is optimal iff Cov(S, r) = 0 (m_S > 0).")
    p, w1, w0 = sp.symbols("p w1 w0", positive=True)
    binary = {m_rS: p * w1, m_S: p * w1 + (1 - p) * w0}  # r in {0,1}: E[rS] = p E[S|r=1]
    trace.note("Binary rewards: E[rS] = p w1 and E[S] = p w1 + (1-p) w0 (total expectation).")
    bb = sp.cancel(bs.subs(binary))
    trace.show("b* (binary)", bb)
    trace.zero("b* = p w1 / (p w1 + (1-p) w0)", bb - p * w1 / (p * w1 + (1 - p) * w0))
    shift = sp.factor(bb - p)
    trace.show("b* - p", shift)
    trace.zero("b* - p = p (1-p) (w1 - w0) / (p w1 + (1-p) w0): w0 > w1 (longer wrong answers) gives b* < p",
               shift - p * (1 - p) * (w1 - w0) / (p * w1 + (1 - p) * w0))


def baseline_oracles() -> dict:
    """numpy functions: ``b_star(m_rS, m_S)`` and ``gap(m_S, b, b_star, G)`` from the derivation."""
    V = derive_variance("constant")
    bs = derive_b_star()
    bstar_sym = sp.Symbol("bstar", real=True)
    gap = sp.factor(V - V.subs(SYM.b, bs)).subs(SYM.m_rS, bstar_sym * SYM.m_S)
    return {"b_star": sp.lambdify((SYM.m_rS, SYM.m_S), bs, "numpy"),
            "gap": sp.lambdify((SYM.m_S, SYM.b, bstar_sym, SYM.G), sp.simplify(gap), "numpy"),
            "mean_excess": sp.lambdify((SYM.m_rS, SYM.m_S, SYM.mu, SYM.G),
                                       sp.factor(V.subs(SYM.b, SYM.mu) - V.subs(SYM.b, bs)), "numpy")}
