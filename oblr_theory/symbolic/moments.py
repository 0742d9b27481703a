"""I.i.d. moment algebra with a symbolic number of samples.

A *sum* is a list of monomials. A monomial is ``coef * sum over distinct indices
(i_0, ..., i_{n-1}) of a product of factors``, each factor a ``(kind, index)`` pair: scalar
kinds (a reward ``r_i``) and vector kinds (a score ``s_i``; at most two per monomial, and two
vectors mean their dot product). Multiplying two sums enumerates every *coincidence pattern*:
each index of the second monomial either equals one index of the first or is new. A pattern
with ``n`` distinct indices is realised by ``N (N-1) ... (N-n+1)`` index tuples when the
samples are indexed by ``1..N``, so the count is a polynomial in the symbol ``N``.

Taking expectations uses only independence across distinct indices and a moment model for one
sample (``E[s] = 0`` lives there). Nothing in this module knows a variance formula.
"""
from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

import sympy as sp

__all__ = ["Mono", "falling", "product", "scale", "expect", "expect_vector",
           "GroupModel", "UnitModel"]


@dataclass(frozen=True)
class Mono:
    coef: sp.Expr
    nvars: int                          # distinct index variables 0..nvars-1
    factors: tuple[tuple[str, int], ...]  # (kind, index variable)


def falling(N, n: int):
    """Number of tuples of ``n`` distinct indices out of ``N``: ``N (N-1) ... (N-n+1)``."""
    return sp.Mul(*[N - i for i in range(n)])


def _merges(na: int, nb: int):
    """All injective maps of ``nb`` new index variables into ``na`` old ones or fresh ones."""
    def rec(k, used, fresh, acc):
        if k == nb:
            yield tuple(acc), fresh
            return
        for v in range(na):
            if v not in used:
                yield from rec(k + 1, used | {v}, fresh, acc + [v])
        yield from rec(k + 1, used, fresh + 1, acc + [na + fresh])
    yield from rec(0, frozenset(), 0, [])


def product(A: list[Mono], B: list[Mono]) -> list[Mono]:
    """The product of two sums, one monomial per coincidence pattern of their indices."""
    out = []
    for a, b in itertools.product(A, B):
        for mapping, fresh in _merges(a.nvars, b.nvars):
            factors = a.factors + tuple((k, mapping[v]) for k, v in b.factors)
            out.append(Mono(a.coef * b.coef, a.nvars + fresh, factors))
    return out


def scale(c, A: list[Mono]) -> list[Mono]:
    return [Mono(c * m.coef, m.nvars, m.factors) for m in A]


class GroupModel:
    """One response: scalar kind ``r`` (reward), vector kind ``s`` (score), with E[s] = 0.

    E[r^a] = 1, mu, m2 (a = 0, 1, 2); E[r^a s] = 0, g, h; E[r^a s.s] = m_S, m_rS, m_r2S;
    g.g = gsq. Other moments get their own symbols, so a result that needs them shows them.
    """

    vector_kinds = frozenset({"s"})

    def __init__(self, mu, m2, m_S, m_rS, m_r2S, gsq):
        self._scalar = {0: sp.Integer(1), 1: mu, 2: m2}
        self._pair = {0: m_S, 1: m_rS, 2: m_r2S}
        self._vec = {0: None, 1: "g", 2: "h"}   # E[s] = 0: the key identity
        self._gsq = gsq

    def scalar(self, counts: Counter):
        a = counts.get("r", 0)
        return self._scalar.get(a, sp.Symbol(f"E_r{a}"))

    def vector(self, counts: Counter, vkind: str):
        a = counts.get("r", 0)
        return self._vec.get(a, f"E_r{a}s")

    def pair(self, counts: Counter, v1: str, v2: str):
        a = counts.get("r", 0)
        return self._pair.get(a, sp.Symbol(f"E_r{a}S"))

    def dot(self, l1: str, l2: str):
        return self._gsq if (l1, l2) == ("g", "g") else sp.Symbol(f"{min(l1, l2)}_dot_{max(l1, l2)}")


class UnitModel:
    """One i.i.d. vector unit ``u`` (a prompt group's estimate): E[u] = m, E[u.u] = Q, m.m = msq."""

    vector_kinds = frozenset({"u"})

    def __init__(self, Q, msq):
        self.Q, self.msq = Q, msq

    def scalar(self, counts):
        if counts:
            raise ValueError("UnitModel has no scalar kinds")
        return sp.Integer(1)

    def vector(self, counts, vkind):
        return "m"

    def pair(self, counts, v1, v2):
        return self.Q

    def dot(self, l1, l2):
        return self.msq


def _split(m: Mono, model):
    per_var = [(Counter(), []) for _ in range(m.nvars)]
    for kind, v in m.factors:
        if kind in model.vector_kinds:
            per_var[v][1].append(kind)
        else:
            per_var[v][0][kind] += 1
    return per_var


def expect(A: list[Mono], model, N) -> sp.Expr:
    """E of a scalar sum (each monomial has 0 or 2 vector factors, dotted)."""
    total = sp.Integer(0)
    for m in A:
        per_var = _split(m, model)
        nvec = sum(len(vs) for _, vs in per_var)
        if nvec not in (0, 2):
            raise ValueError(f"a scalar monomial needs 0 or 2 vector factors, got {nvec}")
        value = sp.Integer(1)
        labels = []
        for counts, vs in per_var:
            if len(vs) == 0:
                value *= model.scalar(counts)
            elif len(vs) == 2:
                value *= model.pair(counts, *vs)
            else:
                labels.append(model.vector(counts, vs[0]))
        if labels:
            value = 0 if None in labels else value * model.dot(*labels)
        total += m.coef * falling(N, m.nvars) * value
    return sp.expand(total)


def expect_vector(A: list[Mono], model, N) -> dict:
    """E of a vector sum (one vector factor per monomial) as ``{label: coefficient}``."""
    out: dict = {}
    for m in A:
        per_var = _split(m, model)
        value, label = sp.Integer(1), None
        for counts, vs in per_var:
            if vs:
                label = model.vector(counts, vs[0])
            else:
                value *= model.scalar(counts)
        if label is not None:
            out[label] = out.get(label, 0) + m.coef * falling(N, m.nvars) * value
    return {k: sp.factor(v) for k, v in out.items() if sp.simplify(v) != 0}
