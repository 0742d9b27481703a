"""Vectorised Monte Carlo: sampled groups, analytic scores and per-group gradient estimates.

The sampled counterpart of :mod:`oblr_theory.exact` (THEORY.md sections 1, 4, 5). A group is
``G`` i.i.d. responses to one prompt; every estimator is ``ĝ_x = (1/G) Σ_j A_j s_j`` with the
advantages of the registry (:mod:`oblr_theory.estimators`), so one sampler serves all of them.

* Softmax bandit: arms by inverse-CDF sampling, ``s(a) = e_a − π`` in the prompt's block.
* Token MDP: all ``B·G`` sequences advance together, one step at a time (no Python loop over
  samples). At step ``t`` the active rows of the parameter tables give the logits
  (``problem.param_rows`` / ``problem.step_logits``) and the score gains ``e_{y_t} − π_t`` at
  every active row (T8). Nothing is enumerated, so problems far too large for the exact engine
  (``V = 16, H = 12``) are sampled as easily as small ones.

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
from .problems.token_mdp import EOS

__all__ = ["GroupSample", "SequenceScores", "sample_groups", "group_gradients", "sample_gradients",
           "iter_groups", "paired_gradients", "draw_prompts", "score_sequences", "sample_sequences",
           "MAX_CHUNK_ENTRIES"]

#: Largest number of float64 score entries (``B·G·d``) that one chunk materialises (32 MB).
MAX_CHUNK_ENTRIES = 4_000_000


@dataclass(frozen=True)
class SequenceScores:
    """Per-sequence quantities of ``n`` responses (sampled or replayed).

    prompts (n,), tokens (n, H) padded with -1, lengths (n,), rewards (n,), log_probs (n,),
    scores (n, d) ``s = ∇θ log π(y|x)``, sq_norms (n,) ``S = ||s||²``;
    diag_sq_norms (n,) ``Σ_t ||s_t||²`` (the martingale part of ``S``, T8);
    logit_proxy (n,) ``Σ_t ||e_{y_t} − π_t||²`` (T8's forward-only proxy);
    logit_proxy_mean (n,) ``Σ_t (1 − ||π_t||²)`` (its conditional expectation per step, T8).
    """

    prompts: np.ndarray
    tokens: np.ndarray
    lengths: np.ndarray
    rewards: np.ndarray
    log_probs: np.ndarray
    scores: np.ndarray
    sq_norms: np.ndarray
    diag_sq_norms: np.ndarray
    logit_proxy: np.ndarray
    logit_proxy_mean: np.ndarray


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


def _check_prompts(prompts_b, problem) -> np.ndarray:
    p = np.asarray(prompts_b)
    if p.ndim != 1 or p.dtype.kind not in "iu":
        raise ValueError(f"prompts_b must be a 1-d integer array, got shape {p.shape} dtype {p.dtype}")
    if p.size and (p.min() < 0 or p.max() >= problem.num_prompts):
        raise ValueError(f"prompts_b must lie in [0, {problem.num_prompts}), got range "
                         f"[{p.min()}, {p.max()}]")
    return p.astype(np.int64)


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (seeded from SeedSequence), got "
                         f"{type(rng).__name__}")
    return rng


def _inverse_cdf(probs_nv: np.ndarray, u_n: np.ndarray) -> np.ndarray:
    """Categorical draws ``y = #{v : u > F(v)}`` with ``F`` the row-wise CDF (clipped to ``V−1``
    against the rounding of ``F(V−1)`` below 1)."""
    cdf = np.cumsum(probs_nv, axis=-1)
    return np.minimum((u_n[..., None] > cdf).sum(axis=-1), probs_nv.shape[-1] - 1)


# ---------------------------------------------------------------------------------------------
# Token MDP: step-by-step sampling (or replay) with analytic scores
# ---------------------------------------------------------------------------------------------


class _ScoreAccumulator:
    """``s = Σ_t Σ_k (e_{y_t} − π_t)`` added at each table k's active row ``row_k(t)`` (T8), (n, d).

    Three routes per table and step, chosen from the rows themselves (no knowledge of the tables):
    a row shared by all sequences (bias, position) is a dense column-slice add; a row equal to
    each sequence's row at step 0 (prompt) goes into a dense running sum scattered once at the
    end; any other row (previous token, tabular prefix) is scattered now with ``np.add.at``.
    Gains arrive vocabulary-major, ``(V, n)``.
    """

    def __init__(self, n: int, d: int, V: int, rows0_nk: np.ndarray):
        self._scores_dn = np.zeros((d, n))  # parameter-major while accumulating
        self._flat = self._scores_dn.reshape(-1)  # a view
        self._rows0_nk = rows0_nk
        self._sticky_kvn = np.zeros((rows0_nk.shape[1], V, n))
        self._cols_v = np.arange(V)
        self._n, self._d = n, d

    def add(self, rows_nk: np.ndarray, gain_vn: np.ndarray, alive_n: np.ndarray) -> None:
        """Add this step's gains (zero columns for finished sequences)."""
        V, n = self._cols_v.size, self._n
        for k in range(rows_nk.shape[1]):
            r_n = rows_nk[:, k]
            if np.all(r_n == r_n[0]):
                self._scores_dn[r_n[0]:r_n[0] + V] += gain_vn
            elif np.array_equal(r_n, self._rows0_nk[:, k]):
                self._sticky_kvn[k] += gain_vn
            else:
                idx = np.flatnonzero(alive_n)
                flat = (r_n[idx] * n + idx) + (self._cols_v * n)[:, None]  # (V, m): entry (row+v, i)
                np.add.at(self._flat, flat.reshape(-1), gain_vn[:, idx].reshape(-1))

    def finish(self) -> np.ndarray:
        """The scores, (n, d): a transposed view of the parameter-major buffer (no copy)."""
        n = self._n
        for k in range(self._rows0_nk.shape[1]):
            if np.any(self._sticky_kvn[k]):
                flat = (self._rows0_nk[:, k] * n + np.arange(n)) + (self._cols_v * n)[:, None]
                np.add.at(self._flat, flat.reshape(-1), self._sticky_kvn[k].reshape(-1))
        return self._scores_dn.T


def _inverse_cdf_vn(pi_vn: np.ndarray, u_n: np.ndarray) -> np.ndarray:
    """Categorical draws ``y = #{v < V−1 : u > F(v)}`` from vocabulary-major probabilities (V, n);
    the running CDF is one row at a time (faster than ``cumsum`` over the short axis)."""
    cdf_n = pi_vn[0].copy()
    y = (u_n > cdf_n).astype(np.int64)
    for v in range(1, pi_vn.shape[0] - 1):
        cdf_n += pi_vn[v]
        y += u_n > cdf_n
    return y


def _logits(problem: TokenMDP, theta_rv: np.ndarray, rows_nk: np.ndarray) -> np.ndarray:
    """``z_t = Σ_k θ_k[row_k]`` (n, V), as ``problem.step_logits``; a row shared by all
    sequences is read once and broadcast."""
    return _logits_vn(problem, np.ascontiguousarray(theta_rv.T), rows_nk).T


def _logits_vn(problem: TokenMDP, theta_vr: np.ndarray, rows_nk: np.ndarray) -> np.ndarray:
    """The logits vocabulary-major, (V, n)."""
    V = problem.vocab_size
    z = np.zeros((V, rows_nk.shape[0]))
    for k in range(rows_nk.shape[1]):
        r_n = rows_nk[:, k]
        if np.all(r_n == r_n[0]):
            z += theta_vr[:, r_n[0] // V][:, None]
        else:
            z += np.take(theta_vr, r_n // V, axis=1)
    return z


def _rollout(problem: TokenMDP, prompts_n: np.ndarray, rng=None, tokens_nh=None) -> SequenceScores:
    """Advance all ``n`` sequences together; draw tokens from ``rng`` or replay ``tokens_nh``.

    Per step t (T8): ``∂ log π(y_t)/∂θ_k[row_k] = e_{y_t} − π_t`` for every table k. The tables
    occupy disjoint blocks of θ, so ``||s_t||² = n_tables · ||e_{y_t} − π_t||²``. Finished
    sequences stay in the arrays with zero gains (no per-step compaction); the loop stops when
    every sequence has finished. Per-step arrays are vocabulary-major (V, n), so the softmax and
    the inverse CDF reduce over the short axis with vectorised row operations.
    """
    V, H, d = problem.vocab_size, problem.horizon, problem.dim
    n = len(prompts_n)
    theta_vr = np.ascontiguousarray(problem.theta.reshape(-1, V).T)  # every table row is V consecutive parameters
    tokens = np.full((n, H), -1, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    log_probs, proxy, proxy_mean = np.zeros(n), np.zeros(n), np.zeros(n)
    prev, code = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    acc = None
    ar = np.arange(n)
    for t in range(H):
        if not alive.any():
            break
        rows_nk = problem.param_rows(prompts_n, t, prev, code)  # (n, k); frozen for finished rows
        if acc is None:
            acc = _ScoreAccumulator(n, d, V, rows_nk)
        z_vn = _logits_vn(problem, theta_vr, rows_nk)
        z_vn -= z_vn.max(axis=0)
        e_vn = np.exp(z_vn)
        total_n = e_vn.sum(axis=0)
        pi_vn = e_vn / total_n
        if tokens_nh is None:
            y = _inverse_cdf_vn(pi_vn, rng.random(n))
        else:
            y = np.where(alive, tokens_nh[:, t], 0)
            if np.any((y < 0) | (y >= V)):
                raise ValueError(f"tokens_nh has a token outside [0, {V}) at step {t} of an unfinished sequence")
        live = alive.astype(np.float64)
        gain_vn = -pi_vn  # e_y − π_t, zero for finished sequences
        gain_vn[y, ar] += 1.0
        gain_vn *= live
        acc.add(rows_nk, gain_vn, alive)
        pi_sq_n = np.einsum("vn,vn->n", pi_vn, pi_vn)
        pi_y = pi_vn[y, ar]
        proxy += live * (1.0 - 2.0 * pi_y + pi_sq_n)
        proxy_mean += live * (1.0 - pi_sq_n)
        log_probs += live * (z_vn[y, ar] - np.log(total_n))
        tokens[alive, t] = y[alive]
        lengths[alive] = t + 1
        keep = alive & (y != EOS)
        code[keep] = code[keep] * (V - 1) + y[keep] - 1
        prev[keep] = y[keep]
        alive = keep
    if tokens_nh is not None and np.any(tokens_nh[tokens == -1] != -1):
        raise ValueError("tokens_nh continues after its end (EOS or the horizon); pad with -1")
    scores = acc.finish() if acc is not None else np.zeros((n, d))
    rewards = problem._rewards(prompts_n, tokens, lengths)
    return SequenceScores(prompts_n, tokens, lengths.astype(np.float64), rewards, log_probs, scores,
                          np.einsum("nd,nd->n", scores, scores), len(problem.tables) * proxy, proxy,
                          proxy_mean)


def sample_sequences(problem: TokenMDP, prompts_n, rng) -> SequenceScores:
    """``n`` responses ``y ~ π_θ(·|x_i)`` sampled step by step, with analytic scores."""
    if not isinstance(problem, TokenMDP):
        raise ValueError(f"problem must be a TokenMDP, got {type(problem).__name__}")
    return _rollout(problem, _check_prompts(prompts_n, problem), rng=_check_rng(rng))


def score_sequences(problem: TokenMDP, prompts_n, tokens_nh) -> SequenceScores:
    """Replay given responses (n, H), padded with -1, and score them exactly as the sampler does."""
    if not isinstance(problem, TokenMDP):
        raise ValueError(f"problem must be a TokenMDP, got {type(problem).__name__}")
    prompts_n = _check_prompts(prompts_n, problem)
    tokens_nh = np.asarray(tokens_nh)
    if tokens_nh.shape != (len(prompts_n), problem.horizon):
        raise ValueError(f"tokens_nh must have shape ({len(prompts_n)}, {problem.horizon}), got {tokens_nh.shape}")
    return _rollout(problem, prompts_n, tokens_nh=tokens_nh.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Softmax bandit
# ---------------------------------------------------------------------------------------------


def _bandit_sequences(problem: SoftmaxBandit, prompts_n: np.ndarray, rng) -> SequenceScores:
    """``a ~ softmax(θ_x)``; ``s(a) = e_a − π`` in prompt x's block, ``S(a) = 1 − 2π_a + ||π||²``."""
    K, n = problem.num_arms, len(prompts_n)
    logp_nk = log_softmax(problem.logits[prompts_n])
    pi_nk = np.exp(logp_nk)
    arms = _inverse_cdf(pi_nk, rng.random(n))
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
