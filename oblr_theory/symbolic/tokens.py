"""T8: the logit proxy and martingale orthogonality of per-token scores.

Logit proxy: ``||d log softmax(z)_a / dz||^2`` by differentiation, and its expectation.
Orthogonality: a two-token sequence model ``y1 ~ softmax(u)``, ``y2 | y1 ~ softmax(v(y1))``,
enumerated over the 4 sequences, with scores from ``sympy.diff``. Tabular: each position has its
own parameters. Shared: position 2's logits are ``u + v(y1)`` (u reused), like an LLM.
"""
from __future__ import annotations

import itertools

import sympy as sp

from .bandit import SymbolicBandit
from .trace import ProofTrace, is_zero

__all__ = ["derive_t8", "two_step_model"]


def _log_softmax(logits, a):
    return logits[a] - sp.log(sum(sp.exp(x) for x in logits))


def two_step_model(shared: bool, V: int = 2):
    """Parameters, the 4 sequences with probabilities, and per-token scores s_1, s_2 (sympy)."""
    u = sp.symbols(f"u1:{V + 1}", real=True)
    v = [sp.symbols(f"v{a + 1}_1:{V + 1}", real=True) for a in range(V)]
    theta = list(u) + [x for row in v for x in row]
    seqs = []
    for y1, y2 in itertools.product(range(V), repeat=2):
        l2 = [u[i] + v[y1][i] for i in range(V)] if shared else list(v[y1])
        lp1, lp2 = _log_softmax(list(u), y1), _log_softmax(l2, y2)
        prob = sp.exp(lp1 + lp2)
        s1 = [sp.diff(lp1, t) for t in theta]
        s2 = [sp.diff(lp2, t) for t in theta]
        seqs.append(((y1, y2), prob, s1, s2))
    return theta, seqs


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _rational(expr, theta):
    """Write exp(theta_i) as positive symbols w_i so that zero tests are rational."""
    w = {t: sp.Symbol(f"w_{t}", positive=True) for t in theta}
    e = sp.expand(sp.sympify(expr), power_exp=True, mul=False, log=False)
    e = e.subs({sp.exp(t): w[t] for t in theta})
    if e.atoms(sp.exp):  # the zero tests below are decisive only for rational expressions
        raise AssertionError(f"exp left after substitution: {e.atoms(sp.exp)}")
    return e


def derive_t8(trace: ProofTrace) -> None:
    trace.note("T8 logit proxy: s(a) = d log softmax(z)_a / dz by differentiation (K = 3).")
    sb = SymbolicBandit(3)
    p = sb.p
    norm2 = sum(x ** 2 for x in p)
    for a in range(3):
        trace.zero(f"||s({a + 1})||^2 = 1 - 2 pi_{a + 1} + ||pi||^2", sb.sq_norms[a] - (1 - 2 * p[a] + norm2))
    trace.zero("E_a ||s(a)||^2 = 1 - ||pi||^2", sb.E(lambda a: sb.sq_norms[a]) - (1 - norm2))
    for shared in (False, True):
        tag = "shared parameters" if shared else "tabular (no sharing)"
        theta, seqs = two_step_model(shared)
        cross = [_rational(_dot(s1, s2), theta) for _, _, s1, s2 in seqs]
        e_cross = sum(_rational(prob, theta) * c for (_, prob, _, _), c in zip(seqs, cross))
        trace.zero(f"{tag}: E[s_1 . s_2] = 0 (martingale orthogonality)", e_cross)
        total = sum(_rational(prob, theta) * _rational(_dot([x + y for x, y in zip(s1, s2)],
                                                            [x + y for x, y in zip(s1, s2)]), theta)
                    for _, prob, s1, s2 in seqs)
        parts = sum(_rational(prob, theta) * (_rational(_dot(s1, s1), theta) + _rational(_dot(s2, s2), theta))
                    for _, prob, s1, s2 in seqs)
        trace.zero(f"{tag}: m_S = E||s_1 + s_2||^2 = E[||s_1||^2 + ||s_2||^2]", total - parts)
        per_sample = all(is_zero(c) for c in cross)
        if shared:
            trace.fact(f"{tag}: s_1 . s_2 != 0 for some sequence (orthogonality only in expectation)",
                       not per_sample, "exact zero test per sequence")
        else:
            trace.fact(f"{tag}: s_1 . s_2 = 0 for every sequence (S = sum_t ||s_t||^2 per sample)",
                       per_sample, "exact zero test per sequence")
