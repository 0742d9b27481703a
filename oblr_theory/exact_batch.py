"""Exact and Monte Carlo moments of the batch-coupled modes (docs/theory.md: Batch-coupled modes).

The batch-coupled modes of :mod:`oblr_theory.estimators` (``aggregation="batch-token-mean"``,
``std_scope="batch"``) divide by a statistic of the whole batch, so a batch is no longer ``B``
independent groups and :func:`oblr_theory.exact.estimator_moments` (which uses that law) refuses
them. Here the batch itself is enumerated. A *group state* ``u = (x, c)`` is a prompt ``x`` and a
multiset ``c`` of ``G`` outcomes, with probability ``w_u = p_x · G!/Π_i c_i! · Π_i p_i^{c_i}``
(the multiset law of :mod:`oblr_theory.exact`); a batch is an ordered ``B``-tuple of i.i.d. group
states, with probability ``Π_b w_{u_b}``, and

    ĝ(u_1..u_B) = (1/B) Σ_b (1/G) Σ_j A_bj s_{o_bj},
    E ĝ = Σ_batches Π_b w_{u_b} ĝ,      V = Σ_batches Π_b w_{u_b} ||ĝ − E ĝ||².

The cost is ``U^B`` batches for ``U = Σ_x C(n_x+G−1, G)`` group states; :func:`check_batches`
refuses above :data:`MAX_BATCHES` and names the Monte Carlo route,
:func:`sample_batch_gradients` (whole batches sampled i.i.d.; feed them to
:class:`oblr_theory.stats.SampleMoments` / ``mean_test`` for calibrated tests). The bias is the
true one, ``E ĝ − ∇J``: a ratio over random token counts (``batch-token-mean``) or a random std
is not the ratio of the expectations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import estimators, exact, montecarlo

__all__ = ["BatchMoments", "MAX_BATCHES", "check_batches", "group_states", "batch_moments",
           "sample_batch_gradients"]

#: Largest number of ordered batches ``U^B`` that :func:`batch_moments` enumerates.
MAX_BATCHES = 2_000_000
_CHUNK = 1 << 14


@dataclass(frozen=True)
class BatchMoments(exact.BiasMSE):
    """Exact moments of a (possibly batch-coupled) estimator's batch estimate ``ĝ``: mean ``E ĝ``
    (d,), grad ``∇J`` (d,), trace_var ``V = tr Var ĝ``, and ``num_batches = U^B`` enumerated."""

    mean: np.ndarray
    grad: np.ndarray
    trace_var: float
    group_size: int
    batch_size: int
    num_batches: int


def _as_estimator(estimator) -> estimators.Estimator:
    if isinstance(estimator, estimators.Estimator):
        return estimator
    return estimators.get(estimator)


def group_states(problem, group_size: int):
    """All group states ``(x, c)``: rewards, sq_norms, lengths (U, G), scores (U, G, d) and
    probabilities ``w_u`` (U,), summing to 1."""
    R, S, L, Sc, W = [], [], [], [], []
    for x, out in enumerate(exact.all_outcomes(problem)):
        keep = out.probs > 0
        p = out.probs[keep]
        idx = exact.multisets(len(p), group_size)
        w = np.exp(exact.multiset_log_weights(idx, np.log(p))) * problem.prompt_probs[x]
        R.append(out.rewards[keep][idx])
        S.append(out.sq_norms[keep][idx])
        L.append(out.lengths[keep][idx])
        Sc.append(out.scores[keep][idx])
        W.append(w)
    return (np.concatenate(R), np.concatenate(S), np.concatenate(L), np.concatenate(Sc),
            np.concatenate(W))


def check_batches(num_states: int, batch_size: int) -> int:
    """``U^B``, refused (``ValueError`` naming the sizes and the Monte Carlo route) above
    :data:`MAX_BATCHES`."""
    N = num_states ** batch_size
    if N > MAX_BATCHES:
        raise ValueError(
            f"batch_size={batch_size} over {num_states:,} group states has {N:,} ordered batches (limit "
            f"{MAX_BATCHES:,}): too large to enumerate. Estimate by Monte Carlo instead: "
            f"oblr_theory.exact_batch.sample_batch_gradients; or use a smaller batch_size, group_size or "
            f"problem")
    return N


def _batch_estimates(est, R, S, L, Sc, idx_nb):
    """``ĝ`` (n, d) of the batches whose group states are the rows of ``idx_nb`` (n, B)."""
    B, G = idx_nb.shape[1], R.shape[1]
    A = est.advantages(R[idx_nb], sq_norms=S[idx_nb], lengths=L[idx_nb], batch_axis=1)  # (n, B, G)
    return np.einsum("nbj,nbjd->nd", A, Sc[idx_nb]) / (B * G)


def batch_moments(problem, estimator, group_size: int, batch_size: int) -> BatchMoments:
    """Exact ``E ĝ``, ``∇J`` and ``V`` of a batch of ``batch_size`` i.i.d. prompts with one group of
    ``group_size`` each, by enumerating every ordered batch of group states (module docstring).

    Works for every estimator and mode; for per-group modes it reproduces
    :func:`oblr_theory.exact.estimator_moments` (tested), for the batch-coupled ones it is the only
    exact route. ``oracle_optimal`` is not supported (its ``b*`` differs per prompt).
    """
    est = _as_estimator(estimator)
    if est.name == "oracle_optimal":
        raise ValueError("batch_moments does not support 'oracle_optimal' (b* differs per prompt); use "
                         "exact.estimator_moments")
    for arg, v in (("group_size", group_size), ("batch_size", batch_size)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{arg} must be an integer >= 1, got {v!r}")
    G, B = int(group_size), int(batch_size)
    if G < est.min_group:
        raise ValueError(f"estimator {est.name!r} needs group_size >= {est.min_group}, got {G}")
    for x, out in enumerate(exact.all_outcomes(problem)):
        exact.check_enumeration(int(np.count_nonzero(out.probs > 0)), G, f"prompt {x}: ")
    R, S, L, Sc, W = group_states(problem, G)
    U = len(W)
    N = check_batches(U, B)
    mean = np.zeros(problem.dim)
    for lo in range(0, N, _CHUNK):
        idx = np.stack(np.unravel_index(np.arange(lo, min(N, lo + _CHUNK)), (U,) * B), axis=1)
        w = np.prod(W[idx], axis=1)
        mean += w @ _batch_estimates(est, R, S, L, Sc, idx)
    var = 0.0
    for lo in range(0, N, _CHUNK):
        idx = np.stack(np.unravel_index(np.arange(lo, min(N, lo + _CHUNK)), (U,) * B), axis=1)
        w = np.prod(W[idx], axis=1)
        dev = _batch_estimates(est, R, S, L, Sc, idx) - mean
        var += w @ np.einsum("nd,nd->n", dev, dev)
    return BatchMoments(mean, exact.gradient(problem), float(var), G, B, N)


def sample_batch_gradients(problem, estimator, group_size: int, batch_size: int, num_batches: int,
                           rng) -> np.ndarray:
    """``num_batches`` i.i.d. batch estimates ``ĝ`` (num_batches, d) of a (possibly batch-coupled)
    estimator: each batch draws ``batch_size`` prompts i.i.d. from ``prompt_probs`` and one group of
    ``group_size`` responses per prompt (:func:`oblr_theory.montecarlo.sample_groups`). The rows
    are i.i.d., so :func:`oblr_theory.stats.mean_test` / ``trace_variance_test`` apply to them."""
    est = _as_estimator(estimator)
    if est.name == "oracle_optimal":
        raise ValueError("sample_batch_gradients does not support 'oracle_optimal'; use "
                         "montecarlo.sample_gradients")
    B = montecarlo._check_int("batch_size", batch_size, 1)
    nb = montecarlo._check_int("num_batches", num_batches, 1)
    G = montecarlo._check_int("group_size", group_size, 1)
    out = np.empty((nb, problem.dim))
    step = max(1, montecarlo.chunk_groups(problem, G) // B)
    for lo in range(0, nb, step):
        n = min(step, nb - lo)
        prompts = montecarlo.draw_prompts(problem, n * B, rng)
        smp = montecarlo.sample_groups(problem, prompts, G, rng)
        shape = (n, B, G)
        A = est.advantages(smp.rewards.reshape(shape), sq_norms=smp.sq_norms.reshape(shape),
                           lengths=smp.lengths.reshape(shape), batch_axis=1)
        out[lo:lo + n] = np.einsum("nbj,nbjd->nd", A, smp.scores.reshape(n, B, G, -1)) / (B * G)
    return out
