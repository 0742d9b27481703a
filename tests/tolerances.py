"""Float64 rounding bounds for the core tests' deterministic comparisons (two exact computations of
one quantity; Monte Carlo tests take their thresholds from :mod:`oblr_theory.stats` instead).

Standard error analysis (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
sections 3.1 and 4.2): a sum or dot product of ``n`` float64 terms, added in *any* order, with or
without fused multiply-add, satisfies

    |computed − exact| ≤ γ_n · Σ|terms|,      γ_n = n·u / (1 − n·u),   u = 2⁻⁵³,

and a product or quotient chain of ``k`` operations has relative error ≤ γ_k. The bound depends
on no summation order, so it holds whichever SIMD kernel numpy, BLAS or torch dispatch on a given
x86 CPU (``ATEN_CPU_CAPABILITY``, ``NPY_DISABLE_CPU_FEATURES``). Two independent evaluations of
one quantity differ by at most ``2 γ_n Σ|terms|``: that is :func:`rounding_tol`.

``n`` is the accumulation length of the longer of the two routes (stated at each use) and
``scale`` the sum of the absolute values of the accumulated terms (computed from the data at each
use, or bounded above by a stated value). Each use rounds ``n`` up, never the result.
"""

from __future__ import annotations

import numpy as np

U = 2.0 ** -53  # float64 unit roundoff


def gamma(n: int) -> float:
    """``γ_n = n u / (1 − n u)``: the relative error bound of an ``n``-term accumulation."""
    if n * U >= 1:
        raise ValueError(f"n={n} too large for a float64 error bound")
    return n * U / (1 - n * U)


def rounding_tol(n: int, scale: float = 1.0) -> float:
    """The largest difference of two float64 evaluations of one ``n``-term accumulation whose
    absolute terms sum to ``scale``: ``2 γ_n · scale``."""
    return 2.0 * gamma(n) * float(scale)


def engine_tol(problem, G: int, *, ordered: bool = False, max_abs_b: float = 1.0) -> float:
    """An absolute bound on the float64 difference of two exact routes to a moment of one group's
    estimate on ``problem`` (the multiset engine, a brute-force loop over ordered tuples, a closed
    form on exact moments, a sympy oracle): :func:`rounding_tol` with

    * ``n`` = the enumerated groups over all prompts (multisets, or ordered ``n^G`` tuples with
      ``ordered``), plus ``G²`` (a group's Gram quadratic form), the score dimension (a dot product
      per group) and 16 operations for the advantage itself (means, one division, a square root);
    * ``scale`` = ``4 · max(G, 4R²) · max(1, max S)`` with ``R = max(1, max|r|, max_abs_b)``: every
      advantage has ``|A_j| ≤ max(√G, 2R)`` (a z-score is at most ``√G`` in absolute value; every
      other advantage is a reward minus a baseline of at most ``R``), so ``||ĝ||² ≤ max(G, 4R²) · max S``
      and a centred square ``||ĝ − m||²`` at most 4 times that; the weights of the terms sum to 1.
    """
    from oblr_theory import exact

    outs = exact.all_outcomes(problem)
    count = sum(o.size ** G if ordered else exact.num_multisets(o.size, G) for o in outs)
    return rounding_tol(count + G * G + problem.dim + 16, engine_scale(problem, G, max_abs_b=max_abs_b))


def engine_scale(problem, G: int, *, max_abs_b: float = 1.0) -> float:
    """The ``scale`` of :func:`engine_tol`: ``4 · max(G, 4R²) · max(1, max S)``."""
    from oblr_theory import exact

    outs = exact.all_outcomes(problem)
    R = max(1.0, max_abs_b, max(float(abs(o.rewards).max()) for o in outs))
    max_S = max(1.0, max(float(o.sq_norms.max()) for o in outs))
    return 4 * max(G, 4 * R * R) * max_S

def problem_shape(problem):
    """(H, V, k): steps per response, logits per step, parameter tables summed into one logit
    (a softmax bandit: one step over its K arms, one table)."""
    from oblr_theory.problems import SoftmaxBandit

    if isinstance(problem, SoftmaxBandit):
        return 1, problem.num_arms, 1
    return problem.horizon, problem.vocab_size, len(problem.tables)


def logp_tol(problem) -> float:
    """Rounding of one response's log-probability: H log-softmaxes, each a V-term log-sum-exp of
    logits that are sums of k parameters, so ≤ H(V + k + 8) operations on terms of size
    ≤ 2 max|z| + log V + 1, with max|z| ≤ k max|θ|."""
    H, V, k = problem_shape(problem)
    z = k * float(np.abs(problem.theta).max())
    return gamma(H * (V + k + 8)) * H * (2 * z + np.log(V) + 1)


def score_tol(problem) -> float:
    """Rounding of one score entry: a sum over ≤ H steps of ``e_y − π_t`` (terms ≤ 1), each π_t
    a softmax with the relative error of :func:`logp_tol`'s single step."""
    H, V, k = problem_shape(problem)
    z = k * float(np.abs(problem.theta).max())
    return H * gamma(V + k + 8) * (2 * z + np.log(V) + 1) + gamma(H) * H


def sq_norm_tol(problem, max_sq_norm: float) -> float:
    """Rounding of ``S = ||s||²`` from scores within :func:`score_tol`: ``2 ||s||_1 δ + γ_d S``,
    with ``||s||_1 ≤ √(d S)``."""
    d = problem.dim
    return 2 * np.sqrt(d * max_sq_norm) * score_tol(problem) + gamma(d) * max_sq_norm
