"""An independent reference route for ``oblr-theory verify``: naive per-sample loops.

Written from the definitions in ``docs/theory.md`` (section "Definitions (DEF)": the estimator
table, its zero-denominator rules and the aggregation modes; T4–T7 for the bounds and the
learning-rate rules), not from the library's vectorised code. Nothing here imports
:mod:`oblr_theory.estimators`, ``exact``, ``onestep``, ``theory``, ``snr`` or ``dynamics``: the
claims of :mod:`.claims_definitions` compare those against this module, so a wrong weight,
divisor, eps placement, fallback, multiset weight or bound shows up as a disagreement.

Style: one Python loop per sum, over responses, ordered tuples or steps; numpy only to hold the
results. Slow on purpose (small problems only).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["NAMES", "BATCH_NAMES", "AGGREGATIONS", "group_advantages", "advantages", "batch_advantages", "batch_law", "ordered_law", "law_moments",
           "otb_token_group", "ordered_token_law",
           "bandit_outcomes", "bandit_objective", "bandit_gradient", "bandit_smoothness",
           "one_step_bound", "optimal_step_size", "guaranteed_gain", "snr_fraction", "snr_step_size",
           "snr_lr", "constant_step_bound", "adaptive_step_bound", "adaptive_step_progress",
           "snr_pieces", "snr_hat", "ema_snr", "bandit_run", "prompt_moments", "normal_isf",
           "sample_stats"]


# ---------------------------------------------------------------------------------------------
# Definitions: advantages of one group (lists of floats)
# ---------------------------------------------------------------------------------------------


def _mean(xs):
    total = 0.0
    for x in xs:
        total += x
    return total / len(xs)


def _others(xs, j):
    return [x for k, x in enumerate(xs) if k != j]


def _weighted_baseline(rs, ws, fallback, fired, rule):
    """``Σ_k w_k r_k / Σ_k w_k`` over the given responses; ``fallback`` when ``Σ_k w_k = 0``."""
    num, den = 0.0, 0.0
    for r, w in zip(rs, ws):
        num += w * r
        den += w
    if den == 0:
        fired.add(rule)
        return fallback
    return num / den


def _grpo(r, eps, ddof, fired):
    G = len(r)
    m = _mean(r)
    if max(r) == min(r):  # all rewards equal: r_j − r̄ = 0 and std = 0 exactly (whatever r̄ rounds to)
        m = r[0]
    ss = 0.0
    for x in r:
        ss += (x - m) * (x - m)
    den = math.sqrt(ss / (G - ddof)) + eps
    if den == 0:
        fired.add("grpo: std + eps = 0 -> A = 0")
        return [0.0] * G
    return [(x - m) / den for x in r]


def _grpo_passk(r, eps, norm, fired):
    """verl compute_grpo_passk_outcome_advantage: the top response gets r_max − r_second (over
    std + eps when norm), the others 0; a tied top gives 0."""
    G = len(r)
    order = sorted(range(G), key=lambda j: -r[j])
    best, gap = order[0], r[order[0]] - r[order[1]]
    if norm:
        m = _mean(r)
        if max(r) == min(r):
            m = r[0]
        ss = 0.0
        for x in r:
            ss += (x - m) * (x - m)
        den = math.sqrt(ss / (G - 1)) + eps
        if den == 0:
            fired.add("grpo_passk: std + eps = 0 -> A = 0")
            return [0.0] * G
        gap = gap / den
    return [gap if j == best else 0.0 for j in range(G)]


def _loo_weighted(r, w, name, fired):
    out = []
    for j in range(len(r)):
        ro, wo = _others(r, j), _others(w, j)
        out.append(_weighted_baseline(ro, wo, _mean(ro), fired, f"{name}: Σ_(k≠j) w_k = 0 -> mean of the others"))
    return out


def _baselines(name, r, S, ell, params, fired):
    """Per-response baselines ``b_j`` (``A_j = r_j − b_j``) of every estimator but grpo."""
    G = len(r)
    if name == "reinforce":
        return [0.0] * G
    if name == "constant":
        return [float(params["b"])] * G
    if name == "oracle_optimal":
        return [float(params["b_star"])] * G
    if name == "dr_grpo":
        return [_mean(r)] * G
    if name == "rloo":
        return [_mean(_others(r, j)) for j in range(G)]
    if name in ("opo", "optimal"):
        w = ell if name == "opo" else S
        return [_weighted_baseline(r, w, _mean(r), fired, f"{name}: Σ_k w_k = 0 -> group mean")] * G
    if name in ("opo_loo", "optimal_loo"):
        return _loo_weighted(r, ell if name == "opo_loo" else S, name, fired)
    if name == "remax":  # verl compute_remax_outcome_advantage: returns − reward_baselines
        return [float(params["greedy_reward"])] * G
    if name == "otb":  # verl OTB at the last token: Σ W G / (Σ W + ε), inclusive
        num, den = 0.0, 0.0
        for x, w in zip(r, S):
            num += w * x
            den += w
        den += float(params["eps"])
        if den == 0:
            fired.add("otb: Σ_k W_k + eps = 0 -> baseline 0")
            return [0.0] * G
        return [num / den] * G
    if name == "optimal_loo_shrink":
        lam = float(params["lam"])
        weighted = _loo_weighted(r, S, name, fired)
        return [lam * weighted[j] + (1.0 - lam) * _mean(_others(r, j)) for j in range(G)]
    raise KeyError(name)


#: The estimators this module defines (every registered name must be here: DEF rows fail otherwise).
NAMES = frozenset({"reinforce", "constant", "dr_grpo", "grpo", "rloo", "opo", "opo_loo", "optimal",
                   "optimal_loo", "oracle_optimal", "optimal_loo_shrink",
                   # the peers' (oblr_theory.peers); the batch-coupled three: batch_advantages only
                   "remax", "grpo_passk", "otb", "reinforce_pp", "reinforce_pp_baseline", "gpg"})
#: The peers' estimators that couple the groups of a batch (defined by :func:`batch_advantages`).
BATCH_NAMES = frozenset({"reinforce_pp", "reinforce_pp_baseline", "gpg"})
AGGREGATIONS = ("seq-mean-token-sum", "seq-mean-token-mean", "token-mean", "constant")


def group_advantages(name, r, S=None, ell=None, *, aggregation="seq-mean-token-sum", max_length=None,
                     fired=None, **params) -> list:
    """Advantages of one group (lists of floats) from the definitions; ``fired`` collects the
    zero-denominator rules that were applied."""
    if name not in NAMES or name in BATCH_NAMES:
        raise KeyError(f"no per-group reference definition for estimator {name!r}")
    fired = set() if fired is None else fired
    r = [float(x) for x in r]
    S = None if S is None else [float(x) for x in S]
    ell = None if ell is None else [float(x) for x in ell]
    if name == "grpo":
        A = _grpo(r, float(params["eps"]), int(params["ddof"]), fired)
    elif name == "grpo_passk":
        A = _grpo_passk(r, float(params["eps"]), int(params["norm"]), fired)
    else:
        A = [rj - bj for rj, bj in zip(r, _baselines(name, r, S, ell, params, fired))]
    G = len(r)
    if aggregation == "seq-mean-token-sum":
        return A
    if aggregation == "seq-mean-token-mean":  # ĝ = (1/G) Σ_j A_j s_j / ℓ_j
        return [a / l for a, l in zip(A, ell)]
    if aggregation == "token-mean":  # ĝ = Σ_j A_j s_j / Σ_k ℓ_k
        total = 0.0
        for l in ell:
            total += l
        return [a * G / total for a in A]
    if aggregation == "constant":  # ĝ = Σ_j A_j s_j / (G C)
        return [a / float(max_length) for a in A]
    raise KeyError(aggregation)


def advantages(name, rewards, sq_norms=None, lengths=None, *, fired=None, **kw) -> np.ndarray:
    """:func:`group_advantages` for every group of arrays shaped ``(..., G)`` (a loop over groups)."""
    r = np.asarray(rewards, dtype=np.float64)
    out = np.empty_like(r)
    for idx in np.ndindex(r.shape[:-1]):
        out[idx] = group_advantages(name, r[idx], None if sq_norms is None else np.asarray(sq_norms)[idx],
                                    None if lengths is None else np.asarray(lengths)[idx], fired=fired, **kw)
    return out


def _batch_peer(name, rewards_bg, lengths_bg, params, fired=None):
    """verl's batch-level peers, per response: REINFORCE++ (-baseline) whiten the (group-centred)
    reward broadcast to tokens with masked_whiten; GPG scales by bsz / max(1, #non-zero rewards)."""
    fired = set() if fired is None else fired
    rows = [[float(x) for x in row] for row in rewards_bg]
    centred = [[0.0 if max(row) == min(row) and len(row) > 1 else x - (_mean(row) if len(row) > 1 else 0.0)
                for x in row] for row in rows]
    if name == "gpg":
        count, nonzero = 0, 0
        for row in rows:
            for x in row:
                count += 1
                nonzero += x != 0
        alpha = count / max(1, nonzero)
        return [[alpha * c / float(params["f_norm"]) for c in row] for row in centred]
    vals = rows if name == "reinforce_pp" else centred
    tokens, total = 0.0, 0.0  # masked_mean over tokens: a response of length ℓ counts ℓ times
    for row, lrow in zip(vals, lengths_bg):
        for x, l in zip(row, lrow):
            tokens += float(l)
            total += float(l) * x
    mu = total / tokens
    ss = 0.0
    for row, lrow in zip(vals, lengths_bg):
        for x, l in zip(row, lrow):
            ss += float(l) * (x - mu) * (x - mu)
    flat = [x for row in vals for x in row]
    if max(flat) == min(flat):  # a tied batch: x − μ = 0 exactly, whatever μ rounds to
        mu, ss = flat[0], 0.0
    var = ss / tokens * (tokens / (tokens - 1))  # masked_var(unbiased=True)
    den = math.sqrt(var + float(params["eps"]))
    if den == 0:
        fired.add(f"{name}: v + eps = 0 -> A = 0")
        return [[0.0 for _ in row] for row in vals]
    return [[(x - mu) / den for x in row] for row in vals]


def batch_advantages(name, rewards_bg, sq_norms_bg=None, lengths_bg=None, *, aggregation="seq-mean-token-sum",
                     std_scope="group", fired=None, **params) -> list:
    """Advantages of one batch (B lists of G floats) with the batch-coupled modes (docs/theory.md:
    Batch-coupled modes): ``std_scope="batch"`` (grpo: ``(r_bj − r̄_b) / (std of all B·G rewards,
    ddof as given, + eps)``) and ``aggregation="batch-token-mean"`` (``A_bj · B·G / Σ_{b,k} ℓ_bk``)."""
    B = len(rewards_bg)
    if name in BATCH_NAMES:
        A = _batch_peer(name, rewards_bg, lengths_bg, params, fired)
    elif std_scope == "batch":
        if name != "grpo":
            raise KeyError(f"std_scope='batch' is defined for grpo only, not {name!r}")
        flat = [float(x) for row in rewards_bg for x in row]
        m = _mean(flat)
        ss = 0.0
        if max(flat) != min(flat):  # a tied batch has std exactly 0
            for x in flat:
                ss += (x - m) * (x - m)
        den = math.sqrt(ss / (len(flat) - int(params["ddof"]))) + float(params["eps"])
        A = []
        for row in rewards_bg:
            row = [float(x) for x in row]
            mb = row[0] if max(row) == min(row) else _mean(row)
            A.append([0.0 if den == 0 else (x - mb) / den for x in row])
    else:
        A = [group_advantages(name, rewards_bg[b], None if sq_norms_bg is None else sq_norms_bg[b],
                              None if lengths_bg is None else lengths_bg[b], fired=fired, **params)
             for b in range(B)]
    if aggregation == "seq-mean-token-sum":
        return A
    if aggregation != "batch-token-mean":
        raise KeyError(aggregation)
    total, count = 0.0, 0
    for row in lengths_bg:
        for l in row:
            total += float(l)
            count += 1
    return [[a * count / total for a in row] for row in A]


# ---------------------------------------------------------------------------------------------
# Laws of the gradient estimate by ordered tuples (no multisets, no multinomial weights)
# ---------------------------------------------------------------------------------------------


def ordered_law(outcomes_by_prompt, prompt_probs, name, G, params_by_prompt=None, **kw):
    """The law of one group estimate ``ĝ_x = (1/G) Σ_j A_j s_j``, prompt ``x ~ p``: one value per
    (prompt, ordered G-tuple of outcomes) with probability ``p_x Π_j π(y_j)``.

    ``outcomes_by_prompt``: per prompt, ``(probs, rewards, sq_norms, lengths, scores)``.
    Returns ``(weights (N,), values (N, d), prompt_index (N,))``.
    """
    weights, values, prompt = [], [], []
    for x, (probs, rewards, S, ell, scores) in enumerate(outcomes_by_prompt):
        params = dict(kw, **(params_by_prompt[x] if params_by_prompt else {}))
        for tup in itertools.product(range(len(probs)), repeat=G):
            w = float(prompt_probs[x])
            for i in tup:
                w *= float(probs[i])
            if w == 0.0:
                continue
            A = group_advantages(name, [rewards[i] for i in tup], [S[i] for i in tup], [ell[i] for i in tup],
                                 **params)
            g = np.zeros(scores.shape[1])
            for a, i in zip(A, tup):
                g += a * scores[i]
            weights.append(w)
            values.append(g / G)
            prompt.append(x)
    return np.array(weights), np.array(values), np.array(prompt)


def batch_law(outcomes_by_prompt, prompt_probs, name, G, B, **kw):
    """The law of a batch estimate ``ĝ = (1/(BG)) Σ_{b,j} A_bj s_bj`` of ``B`` i.i.d. prompts with one
    group each: one value per ordered tuple of prompts and ``B·G`` ordered outcomes, probability
    ``Π_b p_{x_b} Π_j π(y_bj)``; ``kw`` go to :func:`batch_advantages`. Returns ``(weights, values)``."""
    weights, values = [], []
    for xs in itertools.product(range(len(outcomes_by_prompt)), repeat=B):
        outs = [outcomes_by_prompt[x] for x in xs]
        ranges = [range(len(o[0])) for o in outs for _ in range(G)]
        for tup in itertools.product(*ranges):
            w = 1.0
            for x in xs:
                w *= float(prompt_probs[x])
            for k, i in enumerate(tup):
                w *= float(outs[k // G][0][i])
            if w == 0.0:
                continue
            rows = [tup[b * G:(b + 1) * G] for b in range(B)]
            A = batch_advantages(name, [[outs[b][1][i] for i in rows[b]] for b in range(B)],
                                 [[outs[b][2][i] for i in rows[b]] for b in range(B)],
                                 [[outs[b][3][i] for i in rows[b]] for b in range(B)], **kw)
            g = np.zeros(outs[0][4].shape[1])
            for b in range(B):
                for j, i in enumerate(rows[b]):
                    g += A[b][j] * outs[b][4][i]
            weights.append(w)
            values.append(g / (B * G))
    return np.array(weights), np.array(values)


def otb_token_group(r, w, lengths, *, eps, zero_tail=True, leave_one_out=False, fired=None) -> list:
    """verl's optimal token baseline, one group, outcome rewards (``compute_optimal_token_baseline_advantage``,
    no rollout IS weights): ``A[j][t] = r_j − B_{j,t}`` for ``t < ℓ_j``, with the cumulative weight
    ``W_{i,t} = w_{i,0} + … + w_{i,t}`` and ``B_{j,t} = Σ_i r_i W_{i,t} / (Σ_i W_{i,t} + eps)`` over the
    responses ``i`` that have a token ``t`` (all of them, or the others ``i ≠ j`` with
    ``leave_one_out``); ``B = 0`` for a group of one (no baseline) and where the denominator is 0;
    with ``zero_tail``, ``B = 0`` on the unique longest response from the second longest length on.
    ``w[j]``: the per-token weights of response j (at least ``ℓ_j`` of them)."""
    fired = set() if fired is None else fired
    G = len(r)
    ell = [int(l) for l in lengths]
    W = []
    for j in range(G):
        acc, row = 0.0, []
        for t in range(ell[j]):
            acc += float(w[j][t])
            row.append(acc)
        W.append(row)
    top = max(ell)
    second = sorted(ell)[-2] if G > 1 else top
    n_top = 0
    for l in ell:
        n_top += l == top
    out = []
    for j in range(G):
        row = []
        for t in range(ell[j]):
            if G == 1:
                b = 0.0
            else:
                num, den = 0.0, 0.0
                for i in range(G):
                    if (leave_one_out and i == j) or t >= ell[i]:
                        continue
                    num += float(r[i]) * W[i][t]
                    den += W[i][t]
                den += float(eps)
                if den == 0:
                    fired.add("otb token: Σ W + eps = 0 -> baseline 0")
                    b = 0.0
                else:
                    b = num / den
            if zero_tail and G > 1 and n_top == 1 and ell[j] == top and top > second and t >= second:
                b = 0.0
            row.append(float(r[j]) - b)
        out.append(row)
    return out


def ordered_token_law(token_outcomes_by_prompt, prompt_probs, G, **kw):
    """The law of ``ĝ_x = (1/G) Σ_j Σ_t A_{j,t} s_{j,t}`` with :func:`otb_token_group`'s advantages, prompt
    ``x ~ p``: one value per (prompt, ordered G-tuple of responses) with probability ``p_x Π_j π(y_j)``.

    ``token_outcomes_by_prompt``: per prompt ``(probs (n,), rewards (n,), lengths (n,), token_weights
    (n, H), token_scores (n, H, d))``. Returns ``(weights (N,), values (N, d))``."""
    weights, values = [], []
    for x, (probs, rewards, lengths, tw, ts) in enumerate(token_outcomes_by_prompt):
        for tup in itertools.product(range(len(probs)), repeat=G):
            wt = float(prompt_probs[x])
            for i in tup:
                wt *= float(probs[i])
            if wt == 0.0:
                continue
            A = otb_token_group([rewards[i] for i in tup], [tw[i] for i in tup], [lengths[i] for i in tup], **kw)
            g = np.zeros(ts.shape[2])
            for j, i in enumerate(tup):
                for t, a in enumerate(A[j]):
                    g += a * ts[i, t]
            weights.append(wt)
            values.append(g / G)
    return np.array(weights), np.array(values)


def law_moments(weights, values):
    """``(E ĝ, tr Var ĝ)`` of a finite law, by plain weighted sums."""
    d = values.shape[1]
    mean = np.zeros(d)
    for w, v in zip(weights, values):
        mean += w * v
    var = 0.0
    for w, v in zip(weights, values):
        dev = v - mean
        var += w * float(dev @ dev)
    return mean, var


def prompt_moments(probs, rewards, sq_norms, scores):
    """One prompt's ``μ, σ², m_S, m_rS, m_r2S, g = E[r s], b*`` by plain sums over outcomes;
    ``b* = m_rS/m_S`` (``μ`` where ``m_S = 0``, T3)."""
    mu = var = m_S = m_rS = m_r2S = 0.0
    g = np.zeros(scores.shape[1])
    for p, r, S, s in zip(probs, rewards, sq_norms, scores):
        mu += p * r
        m_S += p * S
        m_rS += p * r * S
        m_r2S += p * r * r * S
        g = g + p * r * s
    for p, r in zip(probs, rewards):
        var += p * (r - mu) * (r - mu)
    return {"mu": mu, "var_r": var, "m_S": m_S, "m_rS": m_rS, "m_r2S": m_r2S, "grad": g,
            "b_star": m_rS / m_S if m_S > 0 else mu}


def normal_isf(q) -> float:
    """``z`` with ``P(Z > z) = q`` for a standard normal, by bisection on ``erfc(z/√2)/2``."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if math.erfc(mid / math.sqrt(2.0)) / 2 > q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def sample_stats(xs):
    """Two-pass ``(n, mean, var (ddof 1), third central moment sum)`` of a list of vectors."""
    n = len(xs)
    d = len(xs[0])
    mean = [sum(x[k] for x in xs) / n for k in range(d)]
    var = [sum((x[k] - mean[k]) ** 2 for x in xs) / (n - 1) for k in range(d)]
    m3 = [sum((x[k] - mean[k]) ** 3 for x in xs) for k in range(d)]
    return n, mean, var, m3


# ---------------------------------------------------------------------------------------------
# Softmax bandit from its definition
# ---------------------------------------------------------------------------------------------


def _softmax(z):
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = 0.0
    for v in e:
        total += v
    return [v / total for v in e]


def bandit_outcomes(logits_xk, rewards_xk):
    """Per prompt ``(π, r, S, ℓ = 1, scores)`` with ``s(a) = ∇_θ log π(a|x) = e_a − π`` placed in
    prompt x's block of ``θ`` (the derivative of ``z_a − log Σ_b exp z_b``)."""
    X, K = len(logits_xk), len(logits_xk[0])
    out = []
    for x in range(X):
        pi = _softmax(list(logits_xk[x]))
        scores = np.zeros((K, X * K))
        for a in range(K):
            for b in range(K):
                scores[a, x * K + b] = (1.0 if a == b else 0.0) - pi[b]
        S = np.array([float(s @ s) for s in scores])
        out.append((np.array(pi), np.array(rewards_xk[x], dtype=np.float64), S, np.ones(K), scores))
    return out


def bandit_objective(logits_xk, rewards_xk, prompt_probs) -> float:
    """``J = Σ_x p_x Σ_a π(a|x) r(x, a)``."""
    J = 0.0
    for x, z in enumerate(logits_xk):
        for p_a, r_a in zip(_softmax(list(z)), rewards_xk[x]):
            J += prompt_probs[x] * p_a * r_a
    return J


def bandit_gradient(logits_xk, rewards_xk, prompt_probs) -> np.ndarray:
    """``∇J = Σ_x p_x E[r s | x]`` (the score-function identity), summed over arms."""
    grad = 0.0
    for x, (pi, r, _, _, scores) in enumerate(bandit_outcomes(logits_xk, rewards_xk)):
        for a in range(len(pi)):
            grad = grad + prompt_probs[x] * pi[a] * r[a] * scores[a]
    return np.asarray(grad)


def bandit_smoothness(rewards_xk) -> float:
    """``L = 5/2 · max_x (max_a r − min_a r)`` (Mei et al. 2020; the Hessian ignores reward shifts)."""
    return 2.5 * max(max(row) - min(row) for row in rewards_xk)


# ---------------------------------------------------------------------------------------------
# T4–T6 bounds and T5 rules, written out
# ---------------------------------------------------------------------------------------------


def _dot(a, b):
    total = 0.0
    for x, y in zip(a, b):
        total += float(x) * float(y)
    return total


def one_step_bound(J, grad, mean, V, L, eta) -> float:
    """T4: ``J + η ∇J·m − (L η²/2)(||m||² + V)``."""
    return J + eta * _dot(grad, mean) - L * eta * eta / 2.0 * (_dot(mean, mean) + V)


def optimal_step_size(grad_dot_mean, mean_sq, V, L) -> float:
    """T5: the maximiser of the T4 bound, ``∇J·m / (L (||m||² + V))``."""
    return grad_dot_mean / (L * (mean_sq + V))


def guaranteed_gain(grad_dot_mean, mean_sq, V, L) -> float:
    """T5: the T4 bound at ``η*`` minus ``J``: ``(∇J·m)² / (2L (||m||² + V))``."""
    return grad_dot_mean * grad_dot_mean / (2.0 * L * (mean_sq + V))


def snr_fraction(snr) -> float:
    """``SNR / (1 + SNR)``, 1 at ``SNR = inf``."""
    return 1.0 if math.isinf(snr) else snr / (1.0 + snr)


def snr_step_size(snr, L) -> float:
    """T5 (unbiased): ``(1/L) SNR / (1 + SNR)``."""
    return snr_fraction(snr) / L


def snr_lr(snr, eta_max, eta_min) -> float:
    """The shipped online rule: ``clip(η_max SNR/(1 + SNR), η_min, η_max)``."""
    return min(max(eta_max * snr_fraction(snr), eta_min), eta_max)


def constant_step_bound(gap, eta, T, L, var_max) -> float:
    """T6 (constant step): ``2 (J* − J0)/(η T) + L η σ²_max``."""
    return 2.0 * gap / (eta * T) + L * eta * var_max


def adaptive_step_bound(gap, L) -> float:
    """T6 (η_t = η*_t): ``2 L (J* − J0)``."""
    return 2.0 * L * gap


def adaptive_step_progress(grad_sq_norms, snrs) -> float:
    """T6: ``Σ_t ||∇J_t||² SNR_t / (1 + SNR_t)``."""
    total = 0.0
    for g, s in zip(grad_sq_norms, snrs):
        total += g * snr_fraction(s)
    return total


# ---------------------------------------------------------------------------------------------
# T7: the SNR estimate from per-group gradients, and its EMA
# ---------------------------------------------------------------------------------------------


def snr_pieces(u_bd):
    """T7 from ``B`` per-group gradients (rows of ``u_bd``): ``(||ū||² − V̂, V̂, Σ̂, ||ū||²)`` with
    ``Σ̂ = (1/(B−1)) Σ_b ||u_b − ū||²`` and ``V̂ = Σ̂/B``."""
    B = len(u_bd)
    u_bar = np.zeros(len(u_bd[0]))
    for u in u_bd:
        u_bar = u_bar + np.asarray(u, dtype=np.float64)
    u_bar = u_bar / B
    ss = 0.0
    for u in u_bd:
        dev = np.asarray(u, dtype=np.float64) - u_bar
        ss += _dot(dev, dev)
    sigma = ss / (B - 1)
    V = sigma / B
    msq = _dot(u_bar, u_bar)
    return msq - V, V, sigma, msq


def snr_hat(num, den) -> float:
    """``max(num, 0)/den``; at ``den = 0``: ``inf`` if the numerator is positive, else 0."""
    num = max(num, 0.0)
    if den > 0:
        return num / den
    return math.inf if num > 0 else 0.0


def ema_snr(pieces, beta):
    """T7 EMA: per step, ``N_t = β N_{t−1} + (1−β) n_t``, ``D_t`` likewise (``N_0 = D_0 = 0``),
    both divided by ``1 − βᵗ``; ``SNR_t = max(N̂_t, 0)/D̂_t``. ``pieces``: ``(n_t, v_t)`` per step.
    Returns the lists ``SNR_t``, ``N̂_t``, ``D̂_t``."""
    N = D = 0.0
    snrs, nums, dens = [], [], []
    for t, (n, v) in enumerate(pieces, start=1):
        N = beta * N + (1.0 - beta) * n
        D = beta * D + (1.0 - beta) * v
        corr = 1.0 - beta**t
        nums.append(N / corr)
        dens.append(D / corr)
        snrs.append(snr_hat(N / corr, D / corr))
    return snrs, nums, dens


def bandit_run(logits_xk, rewards_xk, prompt_probs, name, G, B, T, rule, eta_max, eta_min, beta, seed):
    """One training run on a softmax bandit, step by step::

        prompts x_b ~ p, arms a_bj ~ π(·|x_b) by inverse CDF (``cdf_{k−1} ≤ u < cdf_k``),
        u_b = (1/G) Σ_j A_bj s_bj,  ĝ = mean_b u_b,  SNR̂_t = EMA_β(T7 pieces),
        rule "snr":    η_t = clip(η_max SNR̂_t/(1+SNR̂_t), η_min, η_max)   (T5 with T7)
        rule "oracle": η_t = ∇J·m / (L (||m||² + V)) from the exact law of ĝ at θ_t (0 if ∇J·m ≤ 0),
                       L = 5/2 · max range(r)                              (T5)
        θ ← θ + η_t ĝ.

    The random stream is the seed's ``default_rng(SeedSequence(seed))``: per step, ``B`` prompt
    draws, then a ``(B, G)`` array of uniforms (common random numbers with the library's loop).
    Returns ``(J_t (T+1,), η_t (T,), SNR̂_t (T,), exact SNR_t (T,))`` (exact SNR: oracle only).
    """
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    z = [list(map(float, row)) for row in logits_xk]
    X, K = len(z), len(z[0])
    L = bandit_smoothness(rewards_xk)
    Js, lrs, snrs, exact_snrs, pieces = [], [], [], [], []
    for t in range(T + 1):
        prompts = rng.choice(X, size=B, p=prompt_probs)
        unif = rng.random((B, G))
        Js.append(bandit_objective(z, rewards_xk, prompt_probs))
        if t == T:
            break
        outs = bandit_outcomes(z, rewards_xk)
        us = []
        for b in range(B):
            pi, r, S, ell, scores = outs[prompts[b]]
            arms = []
            for j in range(G):
                cdf, arm = 0.0, K - 1
                for k in range(K):
                    cdf += pi[k]
                    if unif[b, j] < cdf:
                        arm = k
                        break
                arms.append(arm)
            A = group_advantages(name, [r[a] for a in arms], [S[a] for a in arms], [ell[a] for a in arms])
            u = np.zeros(X * K)
            for a_j, arm in zip(A, arms):
                u += a_j * scores[arm]
            us.append(u / G)
        num, den, _, _ = snr_pieces(us)
        pieces.append((num, den))
        s = ema_snr(pieces, beta)[0][-1]
        if rule == "snr":
            eta, exact_snr = snr_lr(s, eta_max, eta_min), math.nan
        elif rule == "oracle":
            w, v, _ = ordered_law(outs, prompt_probs, name, G)
            m, var_unit = law_moments(w, v)
            V = var_unit / B
            grad = bandit_gradient(z, rewards_xk, prompt_probs)
            gm = _dot(grad, m)
            eta = optimal_step_size(gm, _dot(m, m), V, L) if gm > 0 else 0.0
            exact_snr = _dot(grad, grad) / V if V > 0 else math.inf
        else:
            raise ValueError(f"rule must be 'snr' or 'oracle', got {rule!r}")
        g_hat = sum(us) / B
        z = [[z[x][k] + eta * g_hat[x * K + k] for k in range(K)] for x in range(X)]
        lrs.append(eta)
        snrs.append(s)
        exact_snrs.append(exact_snr)
    return np.array(Js), np.array(lrs), np.array(snrs), np.array(exact_snrs)
