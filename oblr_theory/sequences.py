"""Token-MDP sequences with analytic scores, sampled or replayed: the sampler of
:mod:`oblr_theory.montecarlo` (docs/theory.md: Setting and notation, What verified means, T8).

All ``n`` sequences advance together, one step at a time (no Python loop over samples). At step
``t`` the active rows of the parameter tables give the logits (``problem.param_rows`` /
``problem.step_logits``) and the score gains ``e_{y_t} − π_t`` at every active row (T8). Nothing
is enumerated, so problems far too large for the exact engine (``V = 16, H = 12``) are sampled as
easily as small ones. Finished sequences drop out of the step loop, the softmax is computed once
per distinct combination of table rows, and scores are written whole rows at a time (see
:func:`_rollout`; ``experiments/benchmarks/bench_montecarlo.py``). Randomness comes only from the
``np.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .problems import TokenMDP
from .problems.token_mdp import EOS

__all__ = ["SequenceScores", "sample_sequences", "score_sequences"]


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


# ---------------------------------------------------------------------------------------------
# Token MDP: step-by-step sampling (or replay) with analytic scores
# ---------------------------------------------------------------------------------------------


def _table_rows(rows_mk: np.ndarray, V: int) -> list:
    """Each table's active row index (parameter offset // V): an ``int`` when all ``m`` sequences
    share it (bias, position), else an array (m,)."""
    out = []
    for k in range(rows_mk.shape[1]):
        r_m = rows_mk[:, k] // V
        shared = r_m[0] == r_m[-1] and (r_m == r_m[0]).all()
        out.append(int(r_m[0]) if shared else r_m)
    return out


def _logits_of_rows(theta_vr: np.ndarray, rows: list, C: int) -> np.ndarray:
    """``z = Σ_k θ_k[row_k]`` for ``C`` columns, (V, C), summed in table order; a shared row
    (an ``int``) is read once and broadcast."""
    z_vc = np.zeros((theta_vr.shape[0], C))
    for r in rows:
        z_vc += theta_vr[:, r][:, None] if isinstance(r, int) else np.take(theta_vr, r, axis=1)
    return z_vc


def _logits(problem: TokenMDP, theta_rv: np.ndarray, rows_nk: np.ndarray) -> np.ndarray:
    """``z_t = Σ_k θ_k[row_k]`` (n, V), as ``problem.step_logits``."""
    return _logits_vn(problem, np.ascontiguousarray(theta_rv.T), rows_nk).T


def _logits_vn(problem: TokenMDP, theta_vr: np.ndarray, rows_nk: np.ndarray) -> np.ndarray:
    """The logits vocabulary-major, (V, n)."""
    n = rows_nk.shape[0]
    return _logits_of_rows(theta_vr, _table_rows(rows_nk, problem.vocab_size) if n else [], n)


def _columns(problem: TokenMDP, rows: list, m: int) -> tuple[list, int, np.ndarray | None]:
    """The distinct policies of a step: ``(rows_c, C, key_m)``.

    ``π_t`` depends on a sequence only through the rows of the tables it does not share with all
    others. When those rows take few combinations, ``C = Π_k rows_k ≤ m / V`` (prompt × previous
    token: ``2 · 16 = 32`` for thousands of sequences), the policy is computed once per
    combination: ``rows_c`` lists each table's row for every combination (mixed radix) and
    ``key_m`` is each sequence's combination. Otherwise every sequence is its own column
    (``rows_c = rows``, ``C = m``, ``key_m = None``).
    """
    V = problem.vocab_size
    sizes = {k: tab.rows for k, tab in enumerate(problem.tables) if not isinstance(rows[k], int)}
    C = int(np.prod(list(sizes.values()), dtype=np.int64)) if sizes else 1
    if C * V > m:
        return rows, m, None
    rows_c, key_m, stride, base, combo_c = list(rows), None, 1, 0, np.arange(C)
    for k, size in sizes.items():
        first = problem.tables[k].offset // V
        key_m = rows[k] * stride if key_m is None else key_m + rows[k] * stride
        base += first * stride
        rows_c[k] = first + (combo_c // stride) % size
        stride *= size
    return rows_c, C, np.zeros(m, dtype=np.int64) if key_m is None else key_m - base


@dataclass(frozen=True)
class _StepPolicy:
    """One step's policy on ``C`` columns, vocabulary-major: ``π`` (V, C), the CDF
    ``F(v) = Σ_{w≤v} π(w)`` for ``v < V−1`` (V−1, C), and for each (token y, column) the step's
    terms of the per-sequence sums (3, V, C): ``log π(y)``, T8's proxy
    ``||e_y − π||² = 1 − 2π(y) + ||π||²`` and its conditional mean ``1 − ||π||²``."""

    pi_vc: np.ndarray
    cdf_vc: np.ndarray
    terms_3vc: np.ndarray

    @classmethod
    def of(cls, theta_vr: np.ndarray, rows_c: list, C: int) -> "_StepPolicy":
        """``π = softmax(z)`` as ``exp(z − max z) / Σ exp(z − max z)``."""
        z_vc = _logits_of_rows(theta_vr, rows_c, C)
        z_vc -= z_vc.max(axis=0)
        e_vc = np.exp(z_vc)
        total_c = e_vc.sum(axis=0)
        pi_vc = e_vc / total_c
        pi_sq_c = np.einsum("vc,vc->c", pi_vc, pi_vc)
        terms_3vc = np.empty((3,) + pi_vc.shape)
        np.subtract(z_vc, np.log(total_c), out=terms_3vc[0])
        terms_3vc[1] = 1.0 - 2.0 * pi_vc + pi_sq_c
        terms_3vc[2] = 1.0 - pi_sq_c
        return cls(pi_vc, np.cumsum(pi_vc[:-1], axis=0), terms_3vc)


class _StepSums:
    """Per-sequence sums over steps of per-step terms, formed once at the end.

    Step t hands in a small table of terms (3, E_t), one entry per (token, policy column), and
    each unfinished sequence's entry in it; ``entry_hn[t, i]`` indexes the concatenated tables
    (0: a zero entry, for finished sequences). Nothing per sequence is touched during the steps;
    the final gather-and-sum over the step axis runs in step order, exactly as step-by-step
    addition would.
    """

    def __init__(self, n: int, H: int):
        self.entry_hn = np.zeros((H, n), dtype=np.int64)
        self._tables = [np.zeros((3, 1))]
        self._size = 1

    def add(self, t: int, idx_m: np.ndarray, terms_3e: np.ndarray, entry_m: np.ndarray) -> None:
        self.entry_hn[t, idx_m] = self._size + entry_m
        self._tables.append(terms_3e)
        self._size += terms_3e.shape[1]

    def sums(self) -> np.ndarray:
        """``Σ_t terms_t`` per sequence, (3, n)."""
        table_3e = np.concatenate(self._tables, axis=1)
        return np.take(table_3e, self.entry_hn, axis=1).sum(axis=1)


def _draw_tokens(cdf_vc: np.ndarray, col_m: np.ndarray, u_m: np.ndarray) -> np.ndarray:
    """Categorical draws ``y = #{v < V−1 : F(v) ≤ u}`` with ``F`` column ``col_m`` of ``cdf_vc``
    (the rule of :func:`oblr_theory.montecarlo.categorical`: a zero-probability token is never drawn).

    ``F`` is non-decreasing, so ``{v : F(v) ≤ u}`` is a prefix and its length is found by binary
    search: ``⌈log2 V⌉`` gathers of ``m`` numbers instead of ``V`` passes over (V, m).
    """
    W, C = cdf_vc.shape  # W = V − 1 thresholds
    cdf_flat = cdf_vc.reshape(-1)
    y_m = np.zeros(len(u_m), dtype=np.int64)
    step = 1 << (W.bit_length() - 1) if W else 0
    while step:
        probe_m = np.minimum(y_m + step, W)  # candidate count: is u ≥ F(probe − 1)?
        y_m = np.where(u_m >= cdf_flat[(probe_m - 1) * C + col_m], probe_m, y_m)
        step >>= 1
    return y_m


def _row_items(buf_rv: np.ndarray) -> np.ndarray:
    """A C-contiguous (rows, V) buffer with each row viewed as one opaque item, (rows,): ``np.take``
    and ``np.put`` on it move whole rows through numpy's one-dimensional fast path (about twice
    as fast as fancy indexing with a trailing slice)."""
    return buf_rv.view(np.dtype((np.void, buf_rv.shape[1] * buf_rv.itemsize))).reshape(-1)


def _add_rows(buf_rv: np.ndarray, rows_m: np.ndarray, gain_mv: np.ndarray) -> None:
    """``buf_rv[rows_m] += gain_mv`` for *distinct* rows (so ``np.add.at`` is not needed)."""
    items_r = _row_items(buf_rv)
    got_m = np.take(items_r, rows_m)
    got_m.view(buf_rv.dtype).reshape(gain_mv.shape)[...] += gain_mv
    np.put(items_r, rows_m, got_m)


def _put_rows(buf_rv: np.ndarray, rows_m: np.ndarray, gain_mv: np.ndarray) -> None:
    """``buf_rv[rows_m] = gain_mv`` (rows known to hold zeros, or to be overwritten)."""
    np.put(_row_items(buf_rv), rows_m, _row_items(np.ascontiguousarray(gain_mv)))


class _ScoreAccumulator:
    """``s = Σ_t Σ_k (e_{y_t} − π_t)`` added at each table k's active row ``row_k(t)`` (T8).

    The buffer is sequence-major (n·R, V): row ``i·R + r`` holds sequence i's score at table row
    r, ``V`` contiguous numbers. Only the ``m`` unfinished sequences (``idx_m``) are touched.

    * Every table receives the same gain at a step, so a table whose row has equalled its step-0
      row at every step so far (bias, prompt) needs no per-step write: one running sum
      ``Σ_t gain_t`` per sequence serves all such tables. It is kept dense in ``idx_m`` order
      (finished sequences are moved out to ``total_nv``) and written once, at the end or when the
      table first leaves its step-0 row (``_flush``).
    * Any other table (position, previous token, tabular prefix) is written at each step: one row
      per sequence per table and step, so no (sequence, row) pair repeats within an update
      (:func:`_add_rows`, no ``np.add.at``); a table row that no sequence has touched yet (a new
      position) is assigned rather than added (:func:`_put_rows`).
    """

    def __init__(self, n: int, R: int, V: int, rows0: list):
        self._scores_rv = np.zeros((n * R, V))
        self._fresh_r = np.ones(R, dtype=bool)  # table rows that hold zeros for every sequence
        self._rows0 = rows0  # step-0 rows of all n sequences
        self._sticky = [True] * len(rows0)
        self._total_nv = np.zeros((n, V))  # Σ_t gain_t of the finished sequences
        self._total_mv = np.zeros((n, V))  # ... of the unfinished ones, in idx_m order
        self._n, self._R, self._V = n, R, V

    def _still_sticky(self, k: int, idx_m: np.ndarray, row) -> bool:
        row0 = self._rows0[k]
        if isinstance(row0, int):
            return isinstance(row, int) and row == row0
        return not isinstance(row, int) and np.array_equal(row, row0[idx_m])

    def _write(self, idx_m: np.ndarray, row, gain_mv: np.ndarray) -> None:
        """Add ``gain_mv`` (m, V) at table row(s) ``row`` of sequences ``idx_m``."""
        rows_m = idx_m * self._R + row
        if isinstance(row, int) and self._fresh_r[row]:
            _put_rows(self._scores_rv, rows_m, gain_mv)
        else:
            _add_rows(self._scores_rv, rows_m, gain_mv)
        self._fresh_r[row] = False

    def _flush(self, k: int, idx_m: np.ndarray) -> None:
        """Write the running sums (finished and unfinished sequences) at table k's step-0 rows."""
        _put_rows(self._total_nv, idx_m, self._total_mv)
        self._write(np.arange(self._n), self._rows0[k], self._total_nv)

    def add(self, idx_m: np.ndarray, rows: list, gain_mv: np.ndarray, keep_m: np.ndarray) -> None:
        """Add this step's gains (m, V) of the unfinished sequences ``idx_m`` at ``rows``;
        ``keep_m`` marks those that go on to the next step."""
        for k, row in enumerate(rows):
            if self._sticky[k]:
                if self._still_sticky(k, idx_m, row):
                    continue
                self._flush(k, idx_m)
                self._sticky[k] = False
            self._write(idx_m, row, gain_mv)
        if any(self._sticky):
            self._total_mv += gain_mv
            done_m = ~keep_m
            _put_rows(self._total_nv, idx_m[done_m], self._total_mv[done_m])
            self._total_mv = self._total_mv[keep_m]

    def finish(self, idx_m: np.ndarray) -> np.ndarray:
        """The scores, (n, d); ``idx_m``: the sequences still unfinished (cut by the horizon)."""
        for k, sticky in enumerate(self._sticky):
            if sticky:
                self._flush(k, idx_m)
        return self._scores_rv.reshape(self._n, self._R * self._V)


def _gain_mv(pi_vc: np.ndarray, key_m: np.ndarray | None, y_m: np.ndarray) -> np.ndarray:
    """``e_{y_t} − π_t``, sequence-major (m, V) (T8); ``key_m``: each sequence's column (None:
    one column per sequence)."""
    neg_cv = np.negative(pi_vc.T, order="C")
    gain_mv = neg_cv if key_m is None else np.take(neg_cv, key_m, axis=0)
    gain_mv[np.arange(len(y_m)), y_m] += 1.0
    return gain_mv


def _replayed_tokens(tokens_nh: np.ndarray, idx_m: np.ndarray, t: int, V: int) -> np.ndarray:
    y_m = tokens_nh[idx_m, t]
    if np.any((y_m < 0) | (y_m >= V)):
        raise ValueError(f"tokens_nh has a token outside [0, {V}) at step {t} of an unfinished sequence")
    return y_m


def _rollout(problem: TokenMDP, prompts_n: np.ndarray, rng=None, tokens_nh=None) -> SequenceScores:
    """Advance all ``n`` sequences together; draw tokens from ``rng`` or replay ``tokens_nh``.

    Per step t (T8): ``∂ log π(y_t)/∂θ_k[row_k] = e_{y_t} − π_t`` for every table k. The tables
    occupy disjoint blocks of θ, so ``||s_t||² = n_tables · ||e_{y_t} − π_t||²``.

    * Only the ``m`` unfinished sequences (``idx_m``) are carried through a step; finished ones
      drop out. The generator still draws ``u`` for all ``n`` at every step, so the sample does not
      depend on the compaction.
    * The policy of a step is computed once per combination of the non-shared table rows
      (:func:`_columns`: prompt × previous token), not once per sequence; each sequence reads its
      column (inverse CDF by binary search, :func:`_draw_tokens`).
    * Scores go into a sequence-major buffer, whole rows at a time (:class:`_ScoreAccumulator`);
      log-probabilities and the T8 proxies are summed once at the end (:class:`_StepSums`).

    The arithmetic per sequence is that of a per-sequence softmax ``exp(z − max z) / Σ`` with
    step-by-step sums, so results do not depend on how sequences are batched.
    """
    V, H, d = problem.vocab_size, problem.horizon, problem.dim
    n = len(prompts_n)
    theta_vr = np.ascontiguousarray(problem.theta.reshape(-1, V).T)  # every table row is V consecutive parameters
    tokens = np.full((n, H), -1, dtype=np.int64)
    step_sums = _StepSums(n, H)  # log π(y_t), proxy, proxy mean
    idx_m, prompts_m = np.arange(n), prompts_n
    prev_m, code_m = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    acc = None
    for t in range(H):
        m = len(idx_m)
        if m == 0:
            break
        u_n = rng.random(n) if tokens_nh is None else None
        rows = _table_rows(problem.param_rows(prompts_m, t, prev_m, code_m), V)
        if acc is None:
            acc = _ScoreAccumulator(n, d // V, V, rows)
        rows_c, C, key_m = _columns(problem, rows, m)
        policy = _StepPolicy.of(theta_vr, rows_c, C)
        col_m = np.arange(m) if key_m is None else key_m
        if tokens_nh is None:
            y_m = _draw_tokens(policy.cdf_vc, col_m, u_n[idx_m])
        else:
            y_m = _replayed_tokens(tokens_nh, idx_m, t, V)
        keep_m = y_m != EOS
        acc.add(idx_m, rows, _gain_mv(policy.pi_vc, key_m, y_m), keep_m)
        terms_3e, entry_m = policy.terms_3vc.reshape(3, -1), y_m * C + col_m  # entry (y, column)
        if key_m is None:  # one column per sequence: keep only the drawn entries
            terms_3e, entry_m = terms_3e[:, entry_m], np.arange(m)
        step_sums.add(t, idx_m, terms_3e, entry_m)
        np.put(tokens, idx_m * H + t, y_m)
        idx_m, prompts_m, prev_m = idx_m[keep_m], prompts_m[keep_m], y_m[keep_m]
        code_m = code_m[keep_m] * (V - 1) + prev_m - 1
    log_probs, proxy, proxy_mean = step_sums.sums()
    lengths = (tokens >= 0).sum(axis=1)
    if tokens_nh is not None and np.any(tokens_nh[tokens == -1] != -1):
        raise ValueError("tokens_nh continues after its end (EOS or the horizon); pad with -1")
    scores = acc.finish(idx_m) if acc is not None else np.zeros((n, d))
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
