"""Exact one-step analysis (T4, T5): the law of ``ĝ`` and ``E J(θ + ηĝ)`` by enumeration.

A per-group gradient ``u = (1/G) Σ_j A_j s_j`` takes one value per (prompt, multiset) pair,
with probability ``p_x · G!/Π c_i! · Π π_i^{c_i}`` (every registered advantage map is
permutation-equivariant, so ``u`` is a function of the multiset). A batch estimate
``ĝ = (1/B) Σ_b u_b`` takes one value per ``B``-tuple of units. Hence, exactly,

    E J(θ + ηĝ) = Σ_n w_n J(θ + η ĝ_n)                                    (exact, any η)
    T4:  E J(θ + ηĝ) ≥ J(θ) + η ∇J·m − (L η²/2)(||m||² + V),   m = E ĝ,  V = tr Var ĝ
    T5:  η* = ∇J·m / (L (||m||² + V)),  gain ≥ (∇J·m)² / (2L (||m||² + V))

The smoothness constant ``L`` must hold on the segments ``[θ, θ + ηĝ_n]`` that the step can
reach: bandits have the global ``5/2 · range(r)`` (Mei et al. 2020); token MDPs have no closed
form, so :func:`local_smoothness` takes the largest ``|eigenvalue|`` of the exact Hessian over
points of the visited segments (a *local* constant, sampled at ``num_points`` per segment).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from . import estimators, exact
from .problems import SoftmaxBandit

__all__ = ["Law", "unit_law", "batch_law", "objective_at", "expected_objective", "law_moments",
           "local_smoothness", "best_step", "MAX_SUPPORT"]

#: Largest support of a batch law that :func:`batch_law` enumerates.
MAX_SUPPORT = 2_000_000


@dataclass(frozen=True)
class Law:
    """A finite law of a gradient estimate: weights (N,) summing to 1, values (N, d)."""

    weights: np.ndarray
    values: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """``E ĝ`` (d,)."""
        return self.weights @ self.values

    @property
    def trace_var(self) -> float:
        """``V = E||ĝ − E ĝ||²``."""
        dev = self.values - self.mean
        return float(self.weights @ np.einsum("nd,nd->n", dev, dev))


def unit_law(problem, name, group_size, **params) -> Law:
    """The exact law of one per-group gradient ``u = ĝ_x`` (prompt ``x ~ p``, one group of ``G``).

    For ``oracle_optimal`` each prompt's exact ``b*`` is supplied (as in ``exact.estimator_moments``).
    """
    moments = exact.prompt_moments(problem) if name == "oracle_optimal" else None
    weights, values = [], []
    for x in range(problem.num_prompts):
        out = problem.outcomes(x)
        keep = out.probs > 0
        # values (M, d) and the gathered scores (M, G, d) on top of the engine's own arrays
        exact.check_enumeration(int(keep.sum()), group_size, f"unit_law prompt {x}: ",
                                extra_per_multiset=8 * (group_size + 1) * problem.dim)
        idx = exact.multisets(int(keep.sum()), group_size)
        probs, scores = out.probs[keep], out.scores[keep]
        w = np.exp(exact.multiset_log_weights(idx, np.log(probs)))
        extra = {"b_star": moments.b_star[x]} if moments is not None else {}
        est = estimators.get(name, **{**params, **extra})
        A = est.advantages(out.rewards[keep][idx], out.sq_norms[keep][idx], out.lengths[keep][idx])
        weights.append(problem.prompt_probs[x] * w)
        values.append(np.einsum("mg,mgd->md", A, scores[idx]) / group_size)
    return Law(np.concatenate(weights), np.concatenate(values))


def batch_law(law: Law, batch_size: int) -> Law:
    """The law of ``ĝ = (1/B) Σ_b u_b`` for ``B`` i.i.d. units (all ``N^B`` ordered tuples)."""
    B, N = int(batch_size), len(law.weights)
    if B < 1 or B != batch_size:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if N**B > MAX_SUPPORT:
        raise ValueError(f"batch_size={B} over {N} units gives {N**B:,} tuples, about "
                         f"{N**B * (law.values.shape[1] + 1) * 8 / 2**30:.3g} GiB (limit {MAX_SUPPORT:,} tuples); "
                         f"estimate E J(θ+ηĝ) by Monte Carlo instead (oblr_theory.montecarlo.sample_gradients) "
                         f"or use a smaller batch_size or group_size")
    if B == 1:
        return law
    idx = np.array(list(itertools.product(range(N), repeat=B)))  # (N^B, B)
    return Law(np.prod(law.weights[idx], axis=1), law.values[idx].mean(axis=1))


def objective_at(problem, thetas_nd) -> np.ndarray:
    """Exact ``J(θ_n)`` for many parameter vectors (n, d): vectorised on bandits, looped otherwise."""
    thetas_nd = np.atleast_2d(np.asarray(thetas_nd, dtype=np.float64))
    if isinstance(problem, SoftmaxBandit):
        z = thetas_nd.reshape(len(thetas_nd), problem.num_prompts, problem.num_arms)
        pi = np.exp(z - z.max(-1, keepdims=True))
        pi /= pi.sum(-1, keepdims=True)
        return np.einsum("nxk,xk->nx", pi, problem.rewards) @ problem.prompt_probs
    return np.array([exact.objective(problem.with_theta(t)) for t in thetas_nd])


def expected_objective(problem, law: Law, steps) -> np.ndarray:
    """Exact ``E J(θ + η ĝ)`` for each ``η`` in ``steps`` (shape of ``steps``)."""
    steps = np.asarray(steps, dtype=np.float64)
    theta = problem.theta
    flat = steps.reshape(-1)
    thetas = theta[None, None, :] + flat[:, None, None] * law.values[None]  # (n_eta, N, d)
    J = objective_at(problem, thetas.reshape(-1, theta.size)).reshape(len(flat), -1)
    return (J @ law.weights).reshape(steps.shape)


def law_moments(problem, law: Law):
    """``(J, ∇J, m, V)`` at the problem's ``θ`` for the estimate with law ``law``."""
    grad = exact.gradient(problem)
    return exact.objective(problem), grad, law.mean, law.trace_var


def _hessian_norm(problem, theta) -> float:
    """Largest ``|eigenvalue|`` of the exact Hessian ``∇²J(θ)`` (exact on bandits, else central
    differences of the exact gradient, see ``exact.hessian``)."""
    H = exact.hessian(problem.with_theta(theta))
    return float(np.max(np.abs(np.linalg.eigvalsh(H))))


def local_smoothness(problem, law: Law, step: float, num_points: int = 3) -> float:
    """``max_n max_τ ||∇²J(θ + τ η ĝ_n)||₂`` over ``num_points`` equispaced ``τ ∈ [0, 1]``.

    A local smoothness constant for T4 on problems with no global one (token MDPs). It is a
    maximum over sampled points, not a certified supremum over the segments.
    """
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2 (both segment ends), got {num_points}")
    theta = problem.theta
    taus = np.linspace(0.0, 1.0, num_points)
    best = _hessian_norm(problem, theta)
    for v in law.values[law.weights > 0]:
        for tau in taus[1:]:
            best = max(best, _hessian_norm(problem, theta + tau * step * v))
    return best


def best_step(problem, law: Law, eta_max: float, grid: int = 201):
    """The step maximising the exact ``E J(θ + ηĝ)`` on ``[0, η_max]``: a grid search refined
    by a bounded scalar search around the best grid point. Returns ``(η_best, E J(θ + η_best ĝ))``."""
    etas = np.linspace(0.0, eta_max, grid)
    vals = expected_objective(problem, law, etas)
    i = int(np.argmax(vals))
    lo, hi = etas[max(i - 1, 0)], etas[min(i + 1, grid - 1)]
    if hi > lo:
        res = minimize_scalar(lambda e: -float(expected_objective(problem, law, e)), bounds=(lo, hi),
                              method="bounded", options={"xatol": 1e-10 * max(eta_max, 1.0)})
        if -res.fun > vals[i]:
            return float(res.x), float(-res.fun)
    return float(etas[i]), float(vals[i])
