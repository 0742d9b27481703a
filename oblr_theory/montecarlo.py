"""Vectorised Monte Carlo: sampled groups, analytic scores and per-group gradient estimates.

The sampled counterpart of :mod:`oblr_theory.exact` (docs/theory.md:
Setting and notation, Problems with exact answers, What verified means). A group is
``G`` i.i.d. responses to one prompt; every estimator is ``ĝ_x = (1/G) Σ_j A_j s_j`` with the
advantages of the registry (:mod:`oblr_theory.estimators`), so one sampler serves all of them.

* Softmax bandit: arms by inverse-CDF sampling, ``s(a) = e_a − π`` in the prompt's block.
* Token MDP: all ``B·G`` sequences advance together, one step at a time, with analytic scores
  (:mod:`oblr_theory.sequences`).

Randomness comes only from the ``np.random.Generator`` passed in. Large requests are split into
chunks whose score arrays hold at most :data:`MAX_CHUNK_ENTRIES` float64 entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from . import estimators
from .problems import SoftmaxBandit, TokenMDP
from .problems.base import log_softmax
from .sequences import (SequenceScores, _check_prompts, _check_rng, _rollout, sample_sequences,
                        score_sequences)

__all__ = ["GroupSample", "SequenceScores", "sample_groups", "group_gradients", "sample_gradients",
           "iter_groups", "paired_gradients", "draw_prompts", "score_sequences", "sample_sequences",
           "categorical", "MAX_CHUNK_ENTRIES"]

#: Largest number of float64 score entries (``B·G·d``) that one chunk materialises (32 MB).
MAX_CHUNK_ENTRIES = 4_000_000


@dataclass(frozen=True)
class GroupSample:
    """``B`` groups of ``G`` responses: prompts (B,), rewards / sq_norms / lengths (B, G),
    scores (B, G, d); ``sequences`` keeps the per-response extras (flattened ``B·G``, group-major)."""

    prompts: np.ndarray
    rewards: np.ndarray
    sq_norms: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray
    sequences: SequenceScores

    @property
    def group_size(self) -> int:
        return self.rewards.shape[1]


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_problem(problem):
    if not isinstance(problem, (SoftmaxBandit, TokenMDP)):
        raise ValueError(f"problem must be a SoftmaxBandit or a TokenMDP, got {type(problem).__name__}")
    return problem


def categorical(probs_nv: np.ndarray, u_n: np.ndarray) -> np.ndarray:
    """Categorical draws by inverse CDF from uniforms ``u ∈ [0, 1)``: ``y = #{v : F(v) ≤ u}``, the
    ``y`` with ``F(y−1) ≤ u < F(y)`` (``F`` the CDF along the last axis of ``probs``), so a
    zero-probability category is never drawn; clipped to ``V−1`` against the rounding of
    ``F(V−1)`` below 1. ``probs`` (..., V) broadcasts against ``u`` (...)."""
    cdf = np.cumsum(probs_nv, axis=-1)
    return np.minimum((u_n[..., None] >= cdf).sum(axis=-1), probs_nv.shape[-1] - 1)


# ---------------------------------------------------------------------------------------------
# Softmax bandit
# ---------------------------------------------------------------------------------------------


def _bandit_sequences(problem: SoftmaxBandit, prompts_n: np.ndarray, rng) -> SequenceScores:
    """``a ~ softmax(θ_x)``; ``s(a) = e_a − π`` in prompt x's block, ``S(a) = 1 − 2π_a + ||π||²``."""
    K, n = problem.num_arms, len(prompts_n)
    logp_nk = log_softmax(problem.logits[prompts_n])
    pi_nk = np.exp(logp_nk)
    arms = categorical(pi_nk, rng.random(n))
    gain_nk = -pi_nk
    gain_nk[np.arange(n), arms] += 1.0
    scores = np.zeros((n, problem.dim))
    scores[np.arange(n)[:, None], prompts_n[:, None] * K + np.arange(K)] = gain_nk
    sq = np.einsum("nd,nd->n", scores, scores)
    ones = np.ones(n)
    return SequenceScores(prompts_n, arms[:, None], ones, problem.rewards[prompts_n, arms],
                          logp_nk[np.arange(n), arms], scores, sq, sq, sq,
                          1.0 - np.einsum("nk,nk->n", pi_nk, pi_nk))


# ---------------------------------------------------------------------------------------------
# Groups and gradient estimates
# ---------------------------------------------------------------------------------------------


def sample_groups(problem, prompts_b, group_size, rng) -> GroupSample:
    """One group of ``group_size`` i.i.d. responses for each prompt in ``prompts_b`` (B,).

    Returns rewards, sq_norms, lengths (B, G) and scores (B, G, d); the whole ``B·G·d`` score
    array is materialised (use :func:`iter_groups` or :func:`sample_gradients` for large runs).
    """
    problem = _check_problem(problem)
    prompts_b = _check_prompts(prompts_b, problem)
    G = _check_int("group_size", group_size, 1)
    rng = _check_rng(rng)
    prompts_n = np.repeat(prompts_b, G)  # group-major: response j of group b is row b*G + j
    if isinstance(problem, SoftmaxBandit):
        seq = _bandit_sequences(problem, prompts_n, rng)
    else:
        seq = _rollout(problem, prompts_n, rng=rng)
    B = len(prompts_b)
    return GroupSample(prompts_b, seq.rewards.reshape(B, G), seq.sq_norms.reshape(B, G),
                       seq.lengths.reshape(B, G), seq.scores.reshape(B, G, -1), seq)


def _resolve(estimator, prompts_b: np.ndarray, b_star=None, **params) -> estimators.Estimator:
    """An :class:`Estimator` from a name or an estimator; ``oracle_optimal`` gets ``b*`` per prompt.

    ``b_star`` may be a number or an array (X,) of per-prompt values, indexed by ``prompts_b``.
    """
    if isinstance(estimator, estimators.Estimator):
        est = estimator
    elif isinstance(estimator, str):
        if estimator == "oracle_optimal" and b_star is not None:
            params = {**params, "b_star": 0.0}  # replaced per prompt below
        est = estimators.get(estimator, **params)
    else:
        raise ValueError(f"estimator must be a registered name or an Estimator, got {type(estimator).__name__}")
    if est.name != "oracle_optimal" or b_star is None:
        if est.name == "oracle_optimal" and b_star is None and "b_star" not in est.params:
            raise ValueError("estimator 'oracle_optimal' needs b_star= (a number or one value per prompt)")
        return est
    b = np.asarray(b_star, dtype=np.float64)
    if b.ndim == 1:
        if prompts_b.size and prompts_b.max() >= b.shape[0]:
            raise ValueError(f"b_star has {b.shape[0]} per-prompt values but prompts reach {prompts_b.max()}")
        b = b[prompts_b][:, None]  # (B, 1)
    elif b.ndim != 0:
        raise ValueError(f"b_star must be a number or an array (X,) of per-prompt values, got shape {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("b_star contains non-finite values")
    return estimators.Estimator(est.name, {**est.params, "b_star": b}, est.aggregation, est.max_length)


def group_gradients(sample: GroupSample, estimator, b_star=None) -> np.ndarray:
    """Per-group estimates ``ĝ_x = (1/G) Σ_j A_j s_j``, shape (B, d).

    ``estimator`` is a registered name or an :class:`Estimator` (any aggregation mode).
    ``b_star`` (``oracle_optimal`` only): a number or the exact ``b*`` per prompt, shape (X,).
    """
    est = _resolve(estimator, sample.prompts, b_star)
    A_bg = est.advantages(sample.rewards, sq_norms=sample.sq_norms, lengths=sample.lengths)
    return np.einsum("bg,bgd->bd", A_bg, sample.scores) / sample.group_size


def draw_prompts(problem, num, rng) -> np.ndarray:
    """``num`` i.i.d. prompt indices from ``problem.prompt_probs``."""
    problem = _check_problem(problem)
    return _check_rng(rng).choice(problem.num_prompts, size=_check_int("num", num, 0),
                                  p=problem.prompt_probs).astype(np.int64)


def chunk_groups(problem, group_size: int) -> int:
    """Groups per chunk so that a chunk's scores hold at most :data:`MAX_CHUNK_ENTRIES` entries."""
    return max(1, MAX_CHUNK_ENTRIES // (group_size * problem.dim))


def iter_groups(problem, group_size, num_groups, rng) -> Iterator[GroupSample]:
    """``num_groups`` groups (prompts i.i.d. from ``prompt_probs``), yielded in memory-bounded chunks."""
    problem = _check_problem(problem)
    G = _check_int("group_size", group_size, 1)
    N = _check_int("num_groups", num_groups, 0)
    rng = _check_rng(rng)
    prompts = draw_prompts(problem, N, rng)
    step = chunk_groups(problem, G)
    for lo in range(0, N, step):
        yield sample_groups(problem, prompts[lo:lo + step], G, rng)


def sample_gradients(problem, estimator_or_name, group_size, batch_size, num_batches, rng,
                     **params) -> np.ndarray:
    """Per-group estimates for ``num_batches`` batches of ``batch_size`` prompts: (num_batches, batch_size, d).

    Prompts are i.i.d. from ``problem.prompt_probs``; the batch estimate is the mean over axis 1.
    ``params`` are the estimator's parameters (when a name is given). For ``oracle_optimal``,
    ``b_star`` may be per prompt (X,); when omitted it is the exact ``b*`` (enumerable problems).
    """
    B = _check_int("batch_size", batch_size, 1)
    nb = _check_int("num_batches", num_batches, 1)
    b_star = params.pop("b_star", None)
    name = estimator_or_name.name if isinstance(estimator_or_name, estimators.Estimator) else estimator_or_name
    if name == "oracle_optimal" and b_star is None and not (
            isinstance(estimator_or_name, estimators.Estimator) and "b_star" in estimator_or_name.params):
        from .exact import optimal_baseline

        b_star = optimal_baseline(problem)
    out = np.empty((nb * B, problem.dim))
    lo = 0
    for sample in iter_groups(problem, group_size, nb * B, rng):
        est = _resolve(estimator_or_name, sample.prompts, b_star, **params)
        out[lo:lo + len(sample.prompts)] = group_gradients(sample, est)
        lo += len(sample.prompts)
    return out.reshape(nb, B, problem.dim)


def paired_gradients(problem, named: Mapping[str, estimators.Estimator], group_size, num_groups, rng,
                     b_star=None) -> Iterator[tuple[GroupSample, dict[str, np.ndarray]]]:
    """Several estimators on the *same* sampled groups (paired comparisons), chunk by chunk.

    Yields ``(sample, {key: ĝ (B_chunk, d)})``.
    """
    for sample in iter_groups(problem, group_size, num_groups, rng):
        yield sample, {k: group_gradients(sample, est, b_star) for k, est in named.items()}
