"""T4, T5, T6: the one-step bound, the SNR step size and the convergence bounds, derived.

T4 starts from the L-smoothness inequality ``J(theta + D) >= J + grad.D - (L/2)||D||^2``
with ``D = eta (m + xi)``, ``E xi = 0``, ``E xi xi^T = C``, ``tr C = V``, and takes the
expectation monomial by monomial. T5 maximises that bound over ``eta`` (solve d/d eta = 0).
T6 sums the per-step inequalities.
"""
from __future__ import annotations

import sympy as sp

from .trace import ProofTrace

__all__ = ["S", "derive_bound", "derive_t4", "derive_t5", "derive_t6", "stepsize_oracles"]


class S:
    J, L, eta, V = sp.symbols("J L eta V", positive=True)
    gm, mm, gsq, c, snr = sp.symbols("gm mm gsq c SNR", positive=True)
    gap, T, A, var_max = sp.symbols("Delta T A sigma2_max", positive=True)


def _expect_noise(expr, xi, C):
    """E over xi with E[xi_i] = 0, E[xi_i xi_j] = C_ij, for expr of degree <= 2 in xi."""
    poly = sp.Poly(sp.expand(expr), *xi)
    out = sp.Integer(0)
    for powers, coef in poly.terms():
        deg = sum(powers)
        if deg == 0:
            out += coef
        elif deg == 2:
            idx = [i for i, k in enumerate(powers) for _ in range(k)]
            out += coef * C[idx[0], idx[1]]
        elif deg != 1:  # degree 1 has expectation 0
            raise ValueError("degree > 2 in the noise")
    return sp.expand(out)


def derive_bound(dim: int = 3):
    """E of the smoothness lower bound with explicit vectors; returns (E bound, g, m)."""
    g = sp.Matrix(sp.symbols(f"g1:{dim + 1}", real=True))
    m = sp.Matrix(sp.symbols(f"m1:{dim + 1}", real=True))
    xi = sp.symbols(f"xi1:{dim + 1}", real=True)
    C = sp.Matrix(dim, dim, lambda i, j: sp.Symbol(f"C{min(i, j) + 1}{max(i, j) + 1}"))
    D = S.eta * (m + sp.Matrix(xi))
    lower = S.J + (g.T * D)[0] - S.L / 2 * (D.T * D)[0]
    E = _expect_noise(lower, xi, C)
    return E.subs(C[dim - 1, dim - 1], S.V - sum(C[i, i] for i in range(dim - 1))), g, m


def derive_t4(trace: ProofTrace, dim: int = 2) -> None:
    trace.note("T4: L-smooth => J(theta') >= J + grad.(theta'-theta) - (L/2)||theta'-theta||^2.")
    trace.note("Step theta' - theta = eta (m + xi), E xi = 0, E xi xi^T = C, tr C = V; take E term by term.")
    bound, g, m = derive_bound(dim)
    trace.show(f"E[lower bound] (d = {dim})", sp.collect(sp.expand(bound), S.eta))
    target = S.J + S.eta * (g.T * m)[0] - S.L * S.eta ** 2 / 2 * ((m.T * m)[0] + S.V)
    trace.zero("E J(theta') >= J + eta grad.m - (L eta^2/2)(||m||^2 + V)", bound - target)


def _bound():
    return S.J + S.eta * S.gm - S.L * S.eta ** 2 / 2 * (S.mm + S.V)


def derive_t5(trace: ProofTrace) -> None:
    bound = _bound()
    roots = sp.solve(sp.diff(bound, S.eta), S.eta)
    trace.note("T5: maximise the T4 bound over eta.")
    trace.fact("d bound / d eta = 0 has one root", len(roots) == 1, f"{len(roots)} root(s)")
    eta_star = sp.factor(roots[0])
    trace.show("eta*", eta_star)
    trace.zero("d2 bound / d eta2 = -L (||m||^2 + V) < 0 (a maximum)",
               sp.diff(bound, S.eta, 2) + S.L * (S.mm + S.V))
    gain = sp.factor(bound.subs(S.eta, eta_star) - S.J)
    trace.show("gain = bound(eta*) - J", gain)
    trace.zero("general m: eta* = grad.m / (L(||m||^2 + V))", eta_star - S.gm / (S.L * (S.mm + S.V)))
    trace.zero("general m: gain = (grad.m)^2 / (2L(||m||^2 + V))", gain - S.gm ** 2 / (2 * S.L * (S.mm + S.V)))
    unb = {S.gm: S.gsq, S.mm: S.gsq}
    in_snr = {S.V: S.gsq / S.snr}
    e_u, g_u = eta_star.subs(unb).subs(in_snr), gain.subs(unb).subs(in_snr)
    trace.zero("unbiased (m = grad J), SNR = ||grad J||^2/V: eta* = (1/L) SNR/(1+SNR)",
               e_u - S.snr / (S.L * (1 + S.snr)))
    trace.zero("unbiased: gain = ||grad J||^2/(2L) * SNR/(1+SNR)", g_u - S.gsq / (2 * S.L) * S.snr / (1 + S.snr))
    trace.zero("unbiased: 1/L - eta* = 1/(L(1+SNR)) > 0, so eta* < 1/L", 1 / S.L - e_u - 1 / (S.L * (1 + S.snr)))
    scale = {S.gm: S.c * S.gsq, S.mm: S.c ** 2 * S.gsq}
    e_c, g_c = sp.factor(eta_star.subs(scale)), sp.factor(gain.subs(scale))
    trace.show("m = c grad J: eta*", e_c)
    trace.show("m = c grad J: gain", g_c)
    Vr = sp.Symbol("V_rloo", positive=True)
    trace.zero("dr_grpo (c = (G-1)/G, V = c^2 V_rloo): gain equals rloo's gain (c drops out)",
               g_c.subs(S.V, S.c ** 2 * Vr) - gain.subs(unb).subs(S.V, Vr))
    trace.zero("dr_grpo: eta* = eta*_rloo / c", e_c.subs(S.V, S.c ** 2 * Vr) - eta_star.subs(unb).subs(S.V, Vr) / S.c)


def derive_t6(trace: ProofTrace) -> None:
    bound = _bound().subs({S.gm: S.gsq, S.mm: S.gsq})
    per_step = S.eta / 2 * S.gsq - S.L * S.eta ** 2 * S.V / 2
    slack = sp.factor(bound - S.J - per_step)
    trace.note("T6 constant step (unbiased): compare the T4 gain with (eta/2)||g||^2 - L eta^2 V/2.")
    trace.show("bound - J - per-step", slack)
    trace.zero("slack = (eta/2)||g||^2 (1 - L eta) >= 0 whenever eta <= 1/L", slack - S.eta / 2 * S.gsq * (1 - S.L * S.eta))
    trace.note("Sum over t < T with V_t <= sigma2_max and telescope: (eta/2) A - T L eta^2 sigma2_max/2 <= J* - J_0,")
    trace.note("A = sum_t E||grad J_t||^2. Solve the equality for A and divide by T:")
    A_max = sp.solve(sp.Eq(S.eta / 2 * S.A - S.T * S.L * S.eta ** 2 * S.var_max / 2, S.gap), S.A)[0]
    trace.show("A_max / T", sp.expand(A_max / S.T))
    trace.zero("(1/T) sum_t E||grad J_t||^2 <= 2 (J* - J_0)/(eta T) + L eta sigma2_max",
               A_max / S.T - (2 * S.gap / (S.eta * S.T) + S.L * S.eta * S.var_max))
    e_star = S.snr / (S.L * (1 + S.snr))
    g_t = sp.factor(bound.subs(S.V, S.gsq / S.snr).subs(S.eta, e_star) - S.J)
    trace.note("T6 adaptive step eta_t = eta*_t: each step gains g_t >= 0, so E J_t is non-decreasing,")
    trace.show("gain_t", g_t)
    trace.zero("and 2L gain_t = ||grad J_t||^2 SNR_t/(1+SNR_t); summing, sum_t ... <= 2L (J* - J_0)",
               2 * S.L * g_t - S.gsq * S.snr / (1 + S.snr))
    trace.fact("gain_t >= 0", bool(sp.ask(sp.Q.nonnegative(g_t), sp.Q.positive(S.L) & sp.Q.positive(S.snr)
                                          & sp.Q.positive(S.gsq))), "sympy ask")


def stepsize_oracles() -> dict:
    """numpy functions from the derived expressions: bound, eta*, gain (general and SNR forms)."""
    bound = _bound()
    eta_star = sp.solve(sp.diff(bound, S.eta), S.eta)[0]
    gain = sp.simplify(bound.subs(S.eta, eta_star) - S.J)
    unb = {S.gm: S.gsq, S.mm: S.gsq, S.V: S.gsq / S.snr}
    return {
        "bound": sp.lambdify((S.J, S.gm, S.mm, S.V, S.L, S.eta), bound, "numpy"),
        "eta_star": sp.lambdify((S.gm, S.mm, S.V, S.L), eta_star, "numpy"),
        "gain": sp.lambdify((S.gm, S.mm, S.V, S.L), gain, "numpy"),
        "snr_eta_star": sp.lambdify((S.snr, S.L), sp.simplify(eta_star.subs(unb)), "numpy"),
        "snr_gain": sp.lambdify((S.gsq, S.snr, S.L), sp.simplify(gain.subs(unb)), "numpy"),
    }
