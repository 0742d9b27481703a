"""A softmax bandit with symbolic logits and rewards, enumerated exactly (T1, T2, T3).

The score and the gradient are obtained by differentiating ``log softmax(z)`` and
``J(z) = sum_a softmax(z)_a r_a`` with sympy, then written in probability symbols: every
such derivative is a homogeneous function of degree 0 of ``w = exp(z)``, so it may be
evaluated at ``w = pi`` with ``pi_K = 1 - pi_1 - ... - pi_{K-1}``. A group of ``G`` draws is
enumerated over the ``C(K+G-1, G)`` multisets with multinomial weights, and each estimator's
advantages are computed from its definition (docs/theory.md: The estimators).
"""
from __future__ import annotations

import itertools
from functools import cached_property
from math import factorial

import sympy as sp

__all__ = ["SymbolicBandit", "ESTIMATORS", "advantages"]

ESTIMATORS = ("reinforce", "constant", "dr_grpo", "grpo", "rloo", "opo", "opo_loo",
              "optimal", "optimal_loo", "oracle_optimal", "optimal_loo_shrink")


class SymbolicBandit:
    """One prompt, ``K`` arms: symbols ``p1..p_{K-1}`` (pi), ``r1..rK``, lengths ``l1..lK``."""

    def __init__(self, K: int):
        if K < 2:
            raise ValueError(f"K must be >= 2, got {K}")
        self.K = K
        self.z = sp.symbols(f"z1:{K + 1}", real=True)
        self.p_free = sp.symbols(f"p1:{K}", positive=True)
        self.p = list(self.p_free) + [1 - sum(self.p_free)]
        self.r = sp.symbols(f"r1:{K + 1}", real=True)
        self.lengths = sp.symbols(f"l1:{K + 1}", positive=True)
        self.b = sp.Symbol("b", real=True)
        self.lam = sp.Symbol("lam", real=True)   # optimal_loo_shrink's mixing weight

    # -- calculus on the logits, then pi-symbols --------------------------------------------
    def to_probs(self, expr):
        """Evaluate a degree-0 homogeneous function of exp(z) at exp(z) = pi."""
        return sp.cancel(expr.subs({sp.exp(zi): pi for zi, pi in zip(self.z, self.p)}))

    @cached_property
    def _softmax_z(self):
        w = [sp.exp(zi) for zi in self.z]
        return [wi / sum(w) for wi in w]

    @cached_property
    def objective_z(self):
        return sum(pa * ra for pa, ra in zip(self._softmax_z, self.r))

    @cached_property
    def grad(self):
        """``dJ/dz`` by differentiation, in pi-symbols."""
        return [self.to_probs(sp.diff(self.objective_z, zi)) for zi in self.z]

    @cached_property
    def scores(self):
        """``s(a) = d log pi(a) / dz`` by differentiation, in pi-symbols; (K, K)."""
        return [[self.to_probs(sp.diff(sp.log(self._softmax_z[a]), zi)) for zi in self.z]
                for a in range(self.K)]

    @cached_property
    def sq_norms(self):
        return [sp.expand(sum(c ** 2 for c in s)) for s in self.scores]

    def homogeneity_holds(self) -> bool:
        """The justification of :meth:`to_probs`: derivatives are invariant to z -> z + c."""
        c = sp.Symbol("c", real=True)
        shift = {zi: zi + c for zi in self.z}
        exprs = [sp.diff(self.objective_z, zi) for zi in self.z]
        return all(sp.simplify(e.subs(shift) - e) == 0 for e in exprs)

    # -- single-draw moments (definitions) ---------------------------------------------------
    def E(self, f):
        """``E[f(a)]`` for one draw ``a ~ pi``."""
        return sp.expand(sum(self.p[a] * f(a) for a in range(self.K)))

    @cached_property
    def moments(self) -> dict:
        r, S = self.r, self.sq_norms
        mu = self.E(lambda a: r[a])
        return {"mu": mu, "var_r": sp.expand(self.E(lambda a: r[a] ** 2) - mu ** 2),
                "m_S": self.E(lambda a: S[a]), "m_rS": self.E(lambda a: r[a] * S[a]),
                "m_r2S": self.E(lambda a: r[a] ** 2 * S[a]),
                "gsq": sp.expand(sum(g ** 2 for g in self.grad))}

    @cached_property
    def b_star_enumerated(self):
        m = self.moments
        return m["m_rS"] / m["m_S"]

    # -- group enumeration -------------------------------------------------------------------
    def groups(self, G: int):
        """Multisets of arms of size G with their probabilities (multinomial weights)."""
        for arms in itertools.combinations_with_replacement(range(self.K), G):
            counts = [arms.count(a) for a in range(self.K)]
            coef = factorial(G)
            for c in counts:
                coef //= factorial(c)
            yield arms, coef * sp.Mul(*[self.p[a] ** c for a, c in enumerate(counts)])

    def estimate(self, name: str, arms, **params):
        """``g_hat = (1/G) sum_j A_j s(a_j)`` for the group ``arms``; a list of K entries."""
        A = advantages(self, name, arms, **params)
        G = len(arms)
        return [sum(A[j] * self.scores[a][i] for j, a in enumerate(arms)) / G for i in range(self.K)]

    def enumerate_moments(self, name: str, G: int, *, combine=sp.expand, **params):
        """Exact ``(E g_hat (K,), V)`` by summing over all groups; ``combine`` simplifies."""
        mean = [sp.Integer(0)] * self.K
        second = sp.Integer(0)
        for arms, w in self.groups(G):
            g = self.estimate(name, arms, **params)
            mean = [m + w * gi for m, gi in zip(mean, g)]
            second += w * sum(gi ** 2 for gi in g)
        mean = [combine(m) for m in mean]
        return mean, combine(second - sum(m ** 2 for m in mean))

    def conditional_mean(self, name: str, G: int, **params):
        """``E g_hat = E[A_1 s(a_1)]`` by exchangeability, enumerated as the own arm a_1 times the
        multiset of the G-1 others; each others-multiset term is cancelled on its own."""
        mean = [sp.Integer(0)] * self.K
        for others, w in self.groups(G - 1):
            inner = [sp.Integer(0)] * self.K
            for a in range(self.K):
                A = advantages(self, name, (a,) + others, **params)[0]
                inner = [t + self.p[a] * A * self.scores[a][i] for i, t in enumerate(inner)]
            mean = [m + w * sp.cancel(sp.together(t)) for m, t in zip(mean, inner)]
        return [sp.cancel(m) for m in mean]


def _loo(weights, values, j):
    num = sum(w * v for k, (w, v) in enumerate(zip(weights, values)) if k != j)
    den = sum(w for k, w in enumerate(weights) if k != j)
    return num / den


def advantages(bandit: SymbolicBandit, name: str, arms, *, eps=0, bessel: bool = False):
    """Advantages ``A_j`` (docs/theory.md: The estimators) for the group ``arms`` (sympy expressions).

    grpo: ``(r_j - mean) / (std + eps)``; std population (``bessel=False``) or Bessel; when all
    arms coincide the rewards are all equal and ``A = 0`` (the zero-std rule).
    """
    G = len(arms)
    r = [bandit.r[a] for a in arms]
    if name == "reinforce":
        return r
    if name == "constant":
        return [x - bandit.b for x in r]
    if name == "oracle_optimal":
        return [x - bandit.b_star_enumerated for x in r]
    mean = sum(r) / G
    if name == "dr_grpo":
        return [x - mean for x in r]
    if name == "grpo":
        if len(set(arms)) == 1:
            return [sp.Integer(0)] * G
        var = sum((x - mean) ** 2 for x in r) / (G - 1 if bessel else G)
        return [(x - mean) / (sp.sqrt(var) + eps) for x in r]
    if name == "rloo":
        return [x - _loo([1] * G, r, j) for j, x in enumerate(r)]
    if name == "optimal_loo_shrink":   # lam * (S-weighted LOO baseline) + (1 - lam) * LOO mean
        S = [bandit.sq_norms[a] for a in arms]
        lam = bandit.lam
        return [x - (lam * _loo(S, r, j) + (1 - lam) * _loo([1] * G, r, j)) for j, x in enumerate(r)]
    weights = {"opo": [bandit.lengths[a] for a in arms], "opo_loo": [bandit.lengths[a] for a in arms],
               "optimal": [bandit.sq_norms[a] for a in arms],
               "optimal_loo": [bandit.sq_norms[a] for a in arms]}.get(name)
    if weights is None:
        raise ValueError(f"unknown estimator name={name!r}; choose from {ESTIMATORS}")
    if name.endswith("_loo"):
        return [x - _loo(weights, r, j) for j, x in enumerate(r)]
    inclusive = sum(w * x for w, x in zip(weights, r)) / sum(weights)
    return [x - inclusive for x in r]
