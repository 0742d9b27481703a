"""T1, T2, T3 on softmax bandits by exact symbolic enumeration (K = 2, 3; G = 2, 3, 4).

Each check compares a quantity *enumerated* over all groups of a symbolic bandit with the
closed form built from the single-draw moments of that bandit (their definitions), and asks
sympy for an exact zero. Biased ratio estimators get a witness: their exact bias at a rational
point of (pi, r, lengths), computed by the same enumeration.
"""
from __future__ import annotations

from functools import lru_cache

import sympy as sp

from .bandit import ESTIMATORS, SymbolicBandit
from .trace import ProofTrace, fmt
from .variance import SYM, _targets

__all__ = ["CASES", "bandit", "derive_t1_bandit", "derive_t2_bandit", "derive_t3_bandit",
           "bias_witness", "bandit_oracles"]

CASES = tuple((K, G) for K in (2, 3) for G in (2, 3, 4))
UNBIASED = ("reinforce", "constant", "rloo", "opo_loo", "optimal_loo", "oracle_optimal", "optimal_loo_shrink")
RATIO = ("opo_loo", "optimal_loo", "oracle_optimal", "optimal_loo_shrink")
# Rational witness points (pi, r, lengths). K = 2 avoids a reward range of exactly 1: there, with
# G = 2, population-std grpo has A = +-1 and happens to be unbiased (sign(dr) = dr).
WITNESS = {2: ((sp.Rational(1, 3), sp.Rational(2, 3)), (sp.Rational(1, 4), 1), (1, 3)),
           3: ((sp.Rational(1, 2), sp.Rational(1, 3), sp.Rational(1, 6)), (0, 1, sp.Rational(1, 2)), (1, 2, 4))}


@lru_cache(maxsize=None)
def bandit(K: int) -> SymbolicBandit:
    return SymbolicBandit(K)


@lru_cache(maxsize=None)
def _moments(K: int, G: int, name: str):
    """Enumerated (E g_hat, V) for the estimators that are polynomial in pi (cached)."""
    return bandit(K).enumerate_moments(name, G)


def _subs_moments(expr, sb: SymbolicBandit):
    m = sb.moments
    return expr.subs({SYM.mu: m["mu"], SYM.var_r: m["var_r"], SYM.m_S: m["m_S"], SYM.m_rS: m["m_rS"],
                      SYM.m_r2S: m["m_r2S"], SYM.gsq: m["gsq"], SYM.b: sb.b})


def _unbiased_mean(K: int, G: int, name: str, full: bool):
    sb = bandit(K)
    if name not in RATIO:
        return _moments(K, G, name)[0], "full enumeration"
    if full or (K, G) != (3, 4):
        return sb.enumerate_moments(name, G, combine=lambda e: e)[0], "full enumeration"
    return sb.conditional_mean(name, G), "enumeration of (own arm, multiset of the other G-1)"


def derive_t1_bandit(trace: ProofTrace, cases=CASES, full: bool = False) -> None:
    """E g_hat = grad J (unbiased), ((G-1)/G) grad J (dr_grpo); grad J by differentiating J(z)."""
    trace.note("Softmax bandit: s(a) = d log softmax(z)_a / dz and grad J = dJ/dz by sympy.diff,")
    trace.note("rewritten in pi (degree-0 homogeneous in exp(z)); groups enumerated as multisets.")
    for K in sorted({K for K, _ in cases}):
        sb = bandit(K)
        trace.fact(f"K={K}: dJ/dz is invariant under z -> z + c (justifies exp(z) -> pi)",
                   sb.homogeneity_holds(), "sympy simplify")
        trace.show(f"K={K}: s(arm 1)", sb.scores[0])
        trace.show(f"K={K}: dJ/dz_1", sp.factor(sb.grad[0]))
    for K, G in cases:
        sb = bandit(K)
        for name in UNBIASED:
            mean, how = _unbiased_mean(K, G, name, full)
            trace.zeros(f"K={K} G={G} {name}: E g_hat - grad J = 0 ({how})",
                        [m - g for m, g in zip(mean, sb.grad)])
        mean = _moments(K, G, "dr_grpo")[0]
        trace.zeros(f"K={K} G={G} dr_grpo: E g_hat - ((G-1)/G) grad J = 0",
                    [m - sp.Rational(G - 1, G) * g for m, g in zip(mean, sb.grad)])
        for name, params in (("grpo", {"bessel": True}), ("grpo", {"bessel": False}),
                             ("opo", {}), ("optimal", {})):
            bias = bias_witness(K, G, name, **params)
            size = max(abs(sp.N(b, 40)) for b in bias)
            tag = name + ("(bessel)" if params.get("bessel") else "(population)" if name == "grpo" else "")
            trace.fact(f"K={K} G={G} {tag}: biased, E g_hat - grad J = [{', '.join(fmt(sp.N(b, 6)) for b in bias)}]",
                       size > sp.Float("1e-30", 40), "exact enumeration at a rational point, 40 digits")


def bias_witness(K: int, G: int, name: str, **params):
    """Exact ``E g_hat - grad J`` at the rational point ``WITNESS[K]`` (pi, r, lengths)."""
    sb = bandit(K)
    pi, r, lengths = WITNESS[K]
    point = {**dict(zip(sb.p_free, pi[:-1])), **dict(zip(sb.r, r)), **dict(zip(sb.lengths, lengths))}
    mean = [sp.Integer(0)] * K
    for arms, w in sb.groups(G):
        g = sb.estimate(name, arms, **params)
        mean = [m + (w * gi).subs(point) for m, gi in zip(mean, g)]
    return [sp.radsimp(m - gr.subs(point)) for m, gr in zip(mean, sb.grad)]


def derive_t2_bandit(trace: ProofTrace, cases=CASES) -> None:
    """Enumerated V = E||g_hat||^2 - ||E g_hat||^2 against T2's closed forms in the bandit's moments."""
    trace.note("T2 on bandits: V enumerated over all multisets vs the closed form evaluated at the")
    trace.note("bandit's own moments mu, var_r, m_S, m_rS, m_r2S, ||g||^2 (each from its definition).")
    tg = _targets()
    for K, G in cases:
        sb = bandit(K)
        for name in ("reinforce", "constant", "rloo", "dr_grpo"):
            V = _moments(K, G, name)[1]
            trace.zero(f"K={K} G={G} V[{name}] = closed form", V - _subs_moments(tg[name].subs(SYM.G, G), sb))
        diff = _moments(K, G, "rloo")[1] - _moments(K, G, "constant")[1].subs(sb.b, sb.moments["mu"])
        m = sb.moments
        trace.zero(f"K={K} G={G} V[rloo] - V[b=mu] = (var_r m_S + ||g||^2)/(G(G-1))",
                   diff - (m["var_r"] * m["m_S"] + m["gsq"]) / (G * (G - 1)))


def derive_t3_bandit(trace: ProofTrace, cases=CASES) -> None:
    """b* from dV/db = 0 on the enumerated V(b); the gap; the mean excess; the binary form."""
    trace.note("T3 on bandits: solve dV/db = 0 for the enumerated V(b) of the constant baseline.")
    for K, G in cases:
        sb, b = bandit(K), bandit(K).b
        V = _moments(K, G, "constant")[1]
        sol = sp.solve(sp.diff(V, b), b)
        trace.fact(f"K={K} G={G}: dV/db = 0 has one root", len(sol) == 1, f"{len(sol)} root(s)")
        bs = sp.cancel(sol[0])
        m = sb.moments
        trace.zero(f"K={K} G={G}: root = E[rS]/E[S]", bs - m["m_rS"] / m["m_S"])
        trace.zero(f"K={K} G={G}: d2V/db2 = 2 E[S]/G > 0 (a minimum)", sp.diff(V, b, 2) - 2 * m["m_S"] / G)
        trace.zero(f"K={K} G={G}: V(b) - V(b*) = (m_S/G)(b - b*)^2", V - V.subs(b, bs) - m["m_S"] / G * (b - bs) ** 2)
        cov = sb.E(lambda a: (sb.sq_norms[a] - m["m_S"]) * (sb.r[a] - m["mu"]))
        trace.zero(f"K={K} G={G}: V(mu) - V(b*) = Cov(S, r)^2 / (G m_S)",
                   V.subs(b, m["mu"]) - V.subs(b, bs) - cov ** 2 / (G * m["m_S"]))
    for K in sorted({K for K, _ in cases}):
        sb = bandit(K)
        V = _moments(K, min(G for k, G in cases if k == K), "constant")[1]
        bs = sp.solve(sp.diff(V, sb.b), sb.b)[0]
        for ones in range(1, K):
            rew = [1] * ones + [0] * (K - ones)
            pt = dict(zip(sb.r, rew))
            p = sum(sb.p[:ones])
            w1 = sum(sb.p[a] * sb.sq_norms[a] for a in range(ones)) / p
            w0 = sum(sb.p[a] * sb.sq_norms[a] for a in range(ones, K)) / (1 - p)
            trace.zero(f"K={K} binary r={tuple(rew)}: b* = p w1 / (p w1 + (1-p) w0)",
                       bs.subs(pt) - p * w1 / (p * w1 + (1 - p) * w0))


def bandit_oracles(K: int, G: int, names=ESTIMATORS) -> dict:
    """numpy oracles ``f(pi (K,), r (K,), lengths (K,), b, eps, lam) -> (mean (K,), V)`` per estimator.

    Built by lambdifying the enumerated sympy expressions (grpo: Bessel std, ``eps`` > 0;
    ``lam`` is optimal_loo_shrink's weight).
    """
    sb = bandit(K)
    eps = sp.Symbol("eps", positive=True)
    args = (sb.p_free, sb.r, sb.lengths, sb.b, eps, sb.lam)
    out = {}
    for name in names:
        params = {"bessel": True, "eps": eps} if name == "grpo" else {}
        if name in ("reinforce", "constant", "rloo", "dr_grpo"):
            mean, V = _moments(K, G, name)
        else:
            mean, V = sb.enumerate_moments(name, G, combine=lambda e: e, **params)
        fn = sp.lambdify(args, (list(mean), V), "numpy")

        def oracle(pi, r, lengths=None, b=0.0, eps=1e-6, lam=0.5, _fn=fn):
            lengths = [1.0] * K if lengths is None else lengths
            mean_v, var = _fn(list(pi[:-1]), list(r), list(lengths), b, eps, lam)
            return [float(v) for v in mean_v], float(var)

        out[name] = oracle
    return out
