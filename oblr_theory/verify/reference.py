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

__all__ = ["NAMES", "AGGREGATIONS", "group_advantages", "advantages", "ordered_law", "law_moments",
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
    if name == "optimal_loo_shrink":
        lam = float(params["lam"])
        weighted = _loo_weighted(r, S, name, fired)
        return [lam * weighted[j] + (1.0 - lam) * _mean(_others(r, j)) for j in range(G)]
    raise KeyError(name)


#: The estimators this module defines (every registered name must be here: DEF rows fail otherwise).
NAMES = frozenset({"reinforce", "constant", "dr_grpo", "grpo", "rloo", "opo", "opo_loo", "optimal",
                   "optimal_loo", "oracle_optimal", "optimal_loo_shrink"})
AGGREGATIONS = ("seq-mean-token-sum", "seq-mean-token-mean", "token-mean", "constant")


def group_advantages(name, r, S=None, ell=None, *, aggregation="seq-mean-token-sum", max_length=None,
                     fired=None, **params) -> list:
    """Advantages of one group (lists of floats) from the definitions; ``fired`` collects the
    zero-denominator rules that were applied."""
    if name not in NAMES:
        raise KeyError(f"no reference definition for estimator {name!r}")
    fired = set() if fired is None else fired
    r = [float(x) for x in r]
    S = None if S is None else [float(x) for x in S]
    ell = None if ell is None else [float(x) for x in ell]
    if name == "grpo":
        A = _grpo(r, float(params["eps"]), int(params["ddof"]), fired)
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
