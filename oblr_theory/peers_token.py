"""verl's optimal token baseline (OTB) at the token level, and its exact bias on token MDPs
(docs/theory.md: The peers' estimators; docs/verl.md).

Reference: verl ``compute_optimal_token_baseline_advantage`` (``verl/trainer/ppo/core_algos.py``,
docs/algo/otb.md, arXiv:2602.07078). With an outcome reward ``r_i`` (``γ = 1``, so the return-to-go
is ``r_i`` at every token of response ``i``), mask ``m_{i,t} = 1{t < ℓ_i}`` and the per-token proxy

    w_{i,s} = 1 − 2π(y_{i,s}) + Σ_v π_v² = ||e_{y_{i,s}} − π_s||²     (T8: the logit-space score norm)

verl's advantage of token ``t`` of response ``j`` is

    A_{j,t} = (r_j − B_t) m_{j,t},   B_t = Σ_i r_i W_{i,t} m_{i,t} / (Σ_i W_{i,t} m_{i,t} + ε),
    W_{i,t} = Σ_{s≤t} w_{i,s} m_{i,s}                                 (cumulative)

with two rules: a group of one response gets no baseline (``A = r``), and (``handle_zero_tail``)
when one response is strictly the longest, its baseline is 0 at the tokens beyond the second
longest length. The gradient estimate is taken with the plain token sum (verl
``loss_agg_mode="seq-mean-token-sum"``), the project's convention ``ĝ = (1/G) Σ_j A_j s_j`` token by
token:

    ĝ_x = (1/G) Σ_j Σ_t A_{j,t} s_{j,t},        s_{j,t} = ∇θ log π(y_{j,t} | x, y_{j,<t}).

verl's default ``loss_agg_mode="token-mean"`` divides instead by the batch's token count, which
couples the groups of a batch (docs/theory.md: Batch-coupled modes); it is not computed here.

Why this is not in the registry: a registered estimator is an advantage map ``A = f(r, S, ℓ)``,
one number per response, and its ``ĝ`` only needs each response's whole score ``s_j``. Here the
advantage changes along the response (``B_t`` depends on ``t`` through the cumulative ``W_{i,t}``
and on which responses are still running), so ``ĝ`` needs the per-token scores ``s_{j,t}`` and the
per-token proxies: the entry points are :func:`otb_token_advantages` and
:func:`otb_token_moments`, and the sequence-level ``otb`` of :mod:`oblr_theory.peers` remains the
registry's form (it is this baseline at a response's last token; the two estimators coincide when
``W`` does not grow after the first token and all lengths are equal).

T1: the inclusive baseline is biased — ``B_t`` contains ``r_j W_{j,t}``, and ``W_{j,t}`` depends on
``y_{j,≤t}`` (the current token included), so ``E[B_t s_{j,t}] ≠ 0``. Its leave-one-out form
(``leave_one_out=True``: ``B_{j,t}`` from the other ``G − 1`` responses only) does not depend on
``y_j`` and is exactly unbiased (``E[B s_{j,t} m_{j,t}] = E[B] E[m_{j,t} E[s_{j,t} | prefix]] = 0``),
for every ``ε``. :func:`otb_token_moments` states both exactly by multiset enumeration;
``oblr-theory verify`` (label PEERS) reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import exact
from .problems import TokenMDP
from .problems.base import check_enumerable, check_prompt, log_softmax
from .problems.token_mdp import EOS

__all__ = ["otb_token_advantages", "TokenOutcomes", "token_outcomes", "token_estimator_moments",
           "otb_token_moments"]

#: Largest number of floats of one chunk's gathered per-token scores (M_chunk, G, H, d).
_CHUNK_FLOATS = 1 << 22


def _check_group_arrays(rewards, w, mask, eps):
    r = np.asarray(rewards, dtype=np.float64)
    w_ = np.asarray(w, dtype=np.float64)
    m = np.asarray(mask)
    if r.ndim < 1 or r.shape[-1] < 1:
        raise ValueError(f"rewards must have shape (..., G) with G >= 1, got {r.shape}")
    if w_.ndim != r.ndim + 1 or w_.shape[:-1] != r.shape:
        raise ValueError(f"token_weights must have shape rewards.shape + (T,) = {r.shape} + (T,), got {w_.shape}")
    if m.shape != w_.shape:
        raise ValueError(f"mask must have the shape of token_weights {w_.shape}, got {m.shape}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(w_))):
        raise ValueError("rewards and token_weights must be finite")
    if not np.all((m == 0) | (m == 1)):
        raise ValueError("mask must hold only 0 and 1 (response tokens, then padding)")
    m = m.astype(np.float64)
    if np.any(m[..., 1:] > m[..., :-1]):
        raise ValueError("mask must be a prefix mask (1 for the response's first ℓ tokens, then 0), as verl's "
                         "response_mask; the zero-tail rule reads ℓ = Σ_t mask")
    if np.any(w_ * m < 0):
        raise ValueError("token_weights must be >= 0 on response tokens: w = ||e_y − π||² (compute it as a sum "
                         "of squares, or clamp the rounding negatives of 1 − 2π(y) + Σπ² at 0)")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    return r, w_, m


def _ratio(num, den):
    """``num / den``, and ``0`` where ``den = 0``. With ``eps > 0`` that never happens; with ``eps = 0``
    it means that no response of the sum has a token at ``t`` with ``W > 0``. The rule depends on the
    other responses only, so the leave-one-out baseline stays unbiased (for the inclusive one,
    ``W_{j,t} = 0`` means ``π(y_{j,s}) = 1`` at every ``s ≤ t``, so ``s_{j,t} = 0`` and the value is
    not used)."""
    ok = den > 0
    return np.where(ok, num / np.where(ok, den, 1.0), 0.0)


def otb_token_advantages(rewards, token_weights, mask, eps: float = 1e-8, zero_tail: bool = True,
                         leave_one_out: bool = False) -> np.ndarray:
    """Per-token OTB advantages ``A_{j,t}`` of groups: rewards (..., G), token_weights and mask
    (..., G, T) → (..., G, T), ``0`` on padding (module docstring, verl
    ``compute_optimal_token_baseline_advantage`` with outcome rewards and no rollout IS weights):

        A_{j,t} = (r_j − B_{j,t}) m_{j,t},   B_{j,t} = Σ_{i∈I_j} r_i W_{i,t} m_{i,t} / (Σ_{i∈I_j} W_{i,t} m_{i,t} + ε)

    with ``W_{i,t} = Σ_{s≤t} w_{i,s} m_{i,s}``, ``I_j`` = the whole group (verl, ``leave_one_out=False``)
    or the others ``k ≠ j`` (``leave_one_out=True``, not in verl). Rules, as verl: a group of one gets
    ``B = 0``; ``zero_tail`` sets ``B = 0`` on the unique longest response beyond the second longest
    length (the leave-one-out baseline is already 0 there: no other response has tokens); a zero
    denominator (``eps = 0`` only) gives ``B = 0`` (:func:`_ratio`). The leave-one-out sums are taken
    over the others directly, not as a total minus one term.

    T1: biased for ``leave_one_out=False`` (``B_t`` contains ``y_j``), unbiased for
    ``leave_one_out=True``; exact values from :func:`otb_token_moments`. Valid only if ``mask`` is a
    prefix mask and ``token_weights ≥ 0`` on response tokens (float64; numpy arrays)."""
    r, w, m = _check_group_arrays(rewards, token_weights, mask, eps)
    G = r.shape[-1]
    WM = np.cumsum(w * m, axis=-1) * m  # (..., G, T): W_{i,t} m_{i,t}
    rWM = r[..., None] * WM
    if leave_one_out:
        others = 1.0 - np.eye(G)  # (G, G): row j selects k ≠ j
        B = _ratio(np.einsum("jk,...kt->...jt", others, rWM), np.einsum("jk,...kt->...jt", others, WM) + eps)
    elif G == 1:
        B = np.zeros_like(WM)
    else:
        B = _ratio(rWM.sum(axis=-2, keepdims=True), WM.sum(axis=-2, keepdims=True) + eps) + 0 * WM
    if zero_tail and G > 1:
        B = np.where(_zero_tail(m), 0.0, B)
    return (r[..., None] - B) * m


def _zero_tail(m):
    """verl's ``handle_zero_tail``: True at ``(j, t)`` when response ``j`` is the unique longest of its
    group and ``t ≥`` the second longest length ``ℓ_(2)`` (sorted lengths, so a tie for second place
    counts once). m (..., G, T) → bool (..., G, T). Valid for G ≥ 2."""
    ell = m.sum(axis=-1)  # (..., G)
    srt = np.sort(ell, axis=-1)
    top, second = srt[..., -1:], srt[..., -2:-1]
    unique = (ell == top).sum(axis=-1, keepdims=True) == 1
    longest = unique & (ell == top) & (top > second)  # (..., G)
    t = np.arange(m.shape[-1])
    return longest[..., None] & (t >= second[..., None])


# ---------------------------------------------------------------------------------------------
# Per-token outcomes of a token MDP, and the exact moments of a per-token estimator
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenOutcomes:
    """All ``n`` responses of one prompt with their per-token quantities (``H`` = the horizon).

    probs (n,) ``π(y|x)``, rewards (n,), mask (n, H) ``1{t < ℓ}``, token_scores (n, H, d)
    ``s_t = ∇θ log π(y_t | x, y_<t)`` (0 on padding), token_proxy (n, H) ``||e_{y_t} − π_t||²``
    (T8; 0 on padding). ``Σ_t token_scores`` is the sequence score of ``TokenMDP.outcomes``.
    """

    probs: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray
    token_scores: np.ndarray
    token_proxy: np.ndarray


def token_outcomes(problem: TokenMDP, x: int) -> TokenOutcomes:
    """Replay every response of prompt ``x`` (``problem.sequences(x)``, in ``outcomes`` order) and
    record each token's score ``e_{y_t} − π_t`` at every table's active row (T8) and its proxy
    ``||e_{y_t} − π_t||² = 1 − 2π(y_t) + Σ_v π_t(v)²`` (summed as squares, so never negative)."""
    if not isinstance(problem, TokenMDP):
        raise ValueError(f"problem must be a TokenMDP, got {type(problem).__name__}")
    x = check_prompt(x, problem.num_prompts)
    V, H, d = problem.vocab_size, problem.horizon, problem.dim
    check_enumerable(problem.num_sequences, H * d, f"TokenMDP(V={V}, H={H}) with per-token scores (H·d numbers "
                     f"per response)")
    toks = problem.sequences(x)  # (n, H), -1 after the end
    n = len(toks)
    scores = np.zeros((n, H, d))
    proxy, logp = np.zeros((n, H)), np.zeros(n)
    prev, code = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for t in range(H):
        act = np.flatnonzero(toks[:, t] >= 0)
        rows = problem.param_rows(np.full(len(act), x), t, prev[act], code[act])  # (a, k)
        lp = log_softmax(problem.step_logits(rows))  # (a, V)
        y = toks[act, t]
        gain = np.eye(V)[y] - np.exp(lp)  # (a, V): e_y − π_t
        for k in range(rows.shape[1]):  # the tables occupy disjoint blocks of θ
            scores[act[:, None], t, rows[:, k, None] + np.arange(V)] = gain
        proxy[act, t] = np.einsum("av,av->a", gain, gain)
        logp[act] += lp[np.arange(len(act)), y]
        cont = act[y != EOS]
        code[cont] = code[cont] * (V - 1) + toks[cont, t] - 1
        prev[cont] = toks[cont, t]
    lengths = (toks >= 0).sum(axis=1)
    rewards = problem._rewards(np.full(n, x), toks, lengths)
    return TokenOutcomes(np.exp(logp), rewards, (toks >= 0).astype(np.float64), scores, proxy)


def _group_moments(out: TokenOutcomes, advantage_fn, G: int):
    """Exact ``(E ĝ_x, V_x)`` of ``ĝ = (1/G) Σ_j Σ_t A_{j,t} s_{j,t}`` over the ``C(n+G−1, G)`` multisets
    of a group (:mod:`oblr_theory.exact`); valid because ``advantage_fn`` is equivariant under
    permuting the group, so ``ĝ`` is a function of the multiset."""
    keep = out.probs > 0
    p, r, mask, s, w = (a[keep] for a in (out.probs, out.rewards, out.mask, out.token_scores, out.token_proxy))
    n, H, d = s.shape
    M, _ = exact.check_enumeration(n, G, "token-level estimator: ", extra_per_multiset=8 * d)
    idx = exact.multisets(n, G)
    with np.errstate(divide="ignore"):
        wt = np.exp(exact.multiset_log_weights(idx, np.log(p)))
    g_md = np.empty((M, d))
    step = max(1, _CHUNK_FLOATS // (G * H * d))
    for lo in range(0, M, step):
        sl = idx[lo:lo + step]  # (c, G)
        A = np.asarray(advantage_fn(r[sl], w[sl], mask[sl]), dtype=np.float64)  # (c, G, H)
        if A.shape != sl.shape + (H,):
            raise ValueError(f"advantage_fn must return shape (..., G, T) = {sl.shape + (H,)}, got {A.shape}")
        g_md[lo:lo + step] = np.einsum("cgh,cghd->cd", A, s[sl]) / G
    mean = wt @ g_md
    dev = g_md - mean
    return mean, float(wt @ np.einsum("md,md->m", dev, dev))


def token_estimator_moments(problem: TokenMDP, advantage_fn, group_size: int,
                            batch_size: int = 1) -> exact.EstimatorMoments:
    """Exact ``E ĝ``, ``∇J`` and ``V = tr Var ĝ`` of a per-token estimator
    ``ĝ_x = (1/G) Σ_j Σ_t A_{j,t} s_{j,t}`` on a token MDP, for a batch of ``batch_size`` i.i.d.
    prompts with one group each (T1, T2 by enumeration; :func:`oblr_theory.exact.batch_of_groups`).

    ``advantage_fn(rewards (..., G), token_proxy (..., G, H), mask (..., G, H)) → (..., G, H)`` must
    treat the responses of a group alike (permuting them permutes its output). Valid only for
    problems small enough to enumerate (refused otherwise, with the sizes)."""
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    outs = [token_outcomes(problem, x) for x in range(problem.num_prompts)]
    for x, o in enumerate(outs):
        exact.check_enumeration(int(np.count_nonzero(o.probs > 0)), int(group_size), f"prompt {x}: ")
    got = [_group_moments(o, advantage_fn, int(group_size)) for o in outs]
    return exact.batch_of_groups(exact.prompt_moments(problem), [m for m, _ in got], [v for _, v in got],
                                 int(group_size), int(batch_size))


def otb_token_moments(problem: TokenMDP, group_size: int, batch_size: int = 1, eps: float = 1e-8,
                      zero_tail: bool = True, leave_one_out: bool = False) -> exact.EstimatorMoments:
    """Exact moments of the token-level OTB (:func:`otb_token_advantages` with verl's proxy
    ``w = ||e_y − π||²``) under the plain token sum; ``.bias`` is ``E ĝ − ∇J`` (T1: non-zero for
    verl's inclusive baseline, exactly 0 for ``leave_one_out=True``)."""
    def fn(r, w, m):
        return otb_token_advantages(r, w, m, eps=eps, zero_tail=zero_tail, leave_one_out=leave_one_out)

    return token_estimator_moments(problem, fn, group_size, batch_size)
