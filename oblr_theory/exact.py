"""Exact oracles by enumeration: ``J``, ``∇J``, per-prompt moments, ``b*``, and the exact mean and
variance of any registered estimator (docs/theory.md: Problems with exact answers).

The estimator moments need no closed form. A group of ``G`` i.i.d. responses over ``n`` outcomes
is, up to order, one of ``C(n+G−1, G)`` multisets ``c`` with multinomial probability
``G!/Π_i c_i! · Π_i p_i^{c_i}``; every registered advantage map is symmetric under permuting
the group, so ``ĝ`` is a function of the multiset and

    E ĝ_x = Σ_c w_c ĝ(c),      V_x = Σ_c w_c ||ĝ(c) − E ĝ_x||²,

with ``ĝ(c) = (1/G) Σ_j A_j s_{o_j}``. ``||ĝ(c) − m||²`` is evaluated through the Gram matrix
``K = s sᵀ`` of the outcomes, so the cost is ``O(M G²)`` for ``M`` multisets, whatever ``d``.
Before enumerating, the engine states ``M`` and the working memory (:func:`check_enumeration`),
refuses above :data:`MAX_MULTISETS` or :data:`MAX_BYTES` (naming the Monte Carlo route), and
shows a progress bar from :data:`PROGRESS_MIN` multisets on.
A batch of ``B`` i.i.d. prompts (one group each) has the same mean and, by the law of total
variance (T2), ``V_batch = (1/B) Σ_x p_x (V_x + ||E ĝ_x − E ĝ||²)``. That law needs independent
groups: the batch-coupled modes and estimators (``Estimator.batch_coupled``) are refused here and
evaluated by :mod:`oblr_theory.exact_batch`, which enumerates whole batches.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from math import comb

import numpy as np
from scipy.special import gammaln

from . import estimators, theory
from .problems.base import Outcomes

#: Largest number of multisets of one prompt's group that the engine enumerates.
MAX_MULTISETS = 20_000_000
#: Largest working memory (bytes, see :func:`enumeration_bytes`) of one prompt's enumeration.
MAX_BYTES = 4 << 30
#: Enumerations of at least this many multisets (all prompts together) show a progress bar.
PROGRESS_MIN = 1_000_000
_CHUNK = 1 << 16


@dataclass(frozen=True)
class PromptMoments:
    """Per-prompt moments (docs/theory.md: Setting and notation), arrays over the X prompts.

    mu ``E[r]``, var_r ``Var(r)``, m_S ``E[S]``, m_rS ``E[rS]``, m_r2S ``E[r²S]``,
    grad (X, d) ``g_x = E[r s] = ∇J_x``, grad_sq_norm ``||g_x||²``, b_star ``m_rS / m_S`` (T3;
    ``μ`` where ``m_S = 0``), m_len ``E[ℓ]``, prompt_probs ``p_x``.
    """

    mu: np.ndarray
    var_r: np.ndarray
    m_S: np.ndarray
    m_rS: np.ndarray
    m_r2S: np.ndarray
    grad: np.ndarray
    grad_sq_norm: np.ndarray
    b_star: np.ndarray
    m_len: np.ndarray
    prompt_probs: np.ndarray


class BiasMSE:
    """``bias`` and ``mse`` of any moments object with ``mean`` (E ĝ), ``grad`` (∇J) and
    ``trace_var`` (V = tr Var ĝ)."""

    @property
    def bias(self) -> np.ndarray:
        """``E ĝ − ∇J`` (T1)."""
        return self.mean - self.grad

    @property
    def mse(self) -> float:
        """``E||ĝ − ∇J||² = ||bias||² + V``."""
        return float(self.bias @ self.bias + self.trace_var)


@dataclass(frozen=True)
class EstimatorMoments(BiasMSE):
    """Exact moments of an estimator's gradient estimate ``ĝ`` (one batch).

    mean ``E ĝ`` (d,), grad ``∇J`` (d,), trace_var ``V = tr Var(ĝ)``; per prompt:
    prompt_mean (X, d) ``E ĝ_x``, prompt_trace_var (X,) ``V_x`` (one group).
    """

    mean: np.ndarray
    grad: np.ndarray
    trace_var: float
    prompt_mean: np.ndarray
    prompt_trace_var: np.ndarray
    group_size: int
    batch_size: int


def all_outcomes(problem) -> list[Outcomes]:
    """``problem.outcomes(x)`` for every prompt x."""
    return [problem.outcomes(x) for x in range(problem.num_prompts)]


def objective(problem) -> float:
    """``J(θ) = Σ_x p_x Σ_y π(y|x) r(x, y)``."""
    return float(sum(p * (o.probs @ o.rewards) for p, o in zip(problem.prompt_probs, all_outcomes(problem))))


def gradient(problem) -> np.ndarray:
    """``∇J = Σ_x p_x E[r s | x]`` (the score-function identity)."""
    m = prompt_moments(problem)
    return m.prompt_probs @ m.grad


def outcome_moments(outcomes: Outcomes, probs=None) -> dict:
    """One prompt's exact moments from its enumerated outcomes (T2, T3): ``mu = E r``,
    ``var_r = Var r``, ``m_S = E S``, ``m_rS = E[rS]``, ``m_r2S = E[r²S]``, ``grad = E[r s] = ∇J_x``
    (d,), ``grad_sq_norm = ||∇J_x||²``, ``m_len = E ℓ`` and ``b_star`` (T3, with its ``m_S = 0``
    rule: :func:`oblr_theory.theory.optimal_baseline`). ``probs`` replaces ``outcomes.probs``
    (e.g. renormalised)."""
    p = outcomes.probs if probs is None else np.asarray(probs, dtype=np.float64)
    r, S = outcomes.rewards, outcomes.sq_norms
    mu, m_S, m_rS = p @ r, p @ S, p @ (r * S)
    grad = (p * r) @ outcomes.scores
    return dict(mu=mu, var_r=p @ (r - mu) ** 2, m_S=m_S, m_rS=m_rS, m_r2S=p @ (r * r * S), grad=grad,
                grad_sq_norm=grad @ grad, m_len=p @ outcomes.lengths,
                b_star=theory.optimal_baseline(m_rS, m_S, mu=mu))


def prompt_moments(problem) -> PromptMoments:
    """Exact per-prompt moments ``μ, σ², m_S, m_rS, m_r2S, g_x, ||g_x||², b*`` (T2, T3), stacked
    over the prompts (:func:`outcome_moments`)."""
    rows = [outcome_moments(o) for o in all_outcomes(problem)]
    a = {k: np.array([m[k] for m in rows]) for k in rows[0]}
    return PromptMoments(a["mu"], a["var_r"], a["m_S"], a["m_rS"], a["m_r2S"], a["grad"], a["grad_sq_norm"],
                         a["b_star"], a["m_len"], np.asarray(problem.prompt_probs, dtype=np.float64))


def optimal_baseline(problem) -> np.ndarray:
    """T3's gradient-weighted baseline ``b*(x) = E[rS] / E[S]`` per prompt, shape (X,)."""
    return prompt_moments(problem).b_star


def hessian(problem, step: float = 1e-5) -> np.ndarray:
    """``∇²J`` (d, d): the problem's exact Hessian when it has one (bandits), else central
    differences of the exact gradient (error ``O(step²)``), symmetrised."""
    if hasattr(problem, "hessian"):
        return problem.hessian()
    theta, d = problem.theta, problem.dim
    H = np.empty((d, d))
    for i in range(d):
        e = np.zeros(d)
        e[i] = step
        H[i] = (gradient(problem.with_theta(theta + e)) - gradient(problem.with_theta(theta - e))) / (2 * step)
    return (H + H.T) / 2


# ---------------------------------------------------------------------------------------------
# Multisets
# ---------------------------------------------------------------------------------------------


def num_multisets(n: int, G: int) -> int:
    """``C(n+G−1, G)``: multisets of size G over n outcomes."""
    return comb(n + G - 1, G)


def enumeration_bytes(M: int, G: int, extra_per_multiset: int = 0) -> int:
    """Working memory of enumerating ``M`` multisets of size ``G``: the index rows (int32), the
    weights and the advantages (float64, kept for the variance pass), one chunk's gathered Gram
    blocks (float64), plus ``extra_per_multiset`` bytes per multiset for the caller's own arrays."""
    return M * (4 * G + 8 + 8 * G + extra_per_multiset) + min(M, _CHUNK) * G * G * 8


def _bytes(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def check_enumeration(n: int, G: int, what: str = "", extra_per_multiset: int = 0) -> tuple[int, int]:
    """``(M, bytes)`` of enumerating the multisets of ``G`` draws over ``n`` outcomes; refuses
    (``ValueError`` naming the sizes and the Monte Carlo alternative) above :data:`MAX_MULTISETS`
    multisets or :data:`MAX_BYTES` bytes."""
    M = num_multisets(n, G)
    mem = enumeration_bytes(M, G, extra_per_multiset)
    if M > MAX_MULTISETS or mem > MAX_BYTES:
        raise ValueError(
            f"{what}group_size={G} over {n:,} outcomes has {M:,} multisets needing about {_bytes(mem)} "
            f"(limits {MAX_MULTISETS:,} multisets, {_bytes(MAX_BYTES)}): too large to enumerate. Estimate by "
            f"Monte Carlo instead: oblr_theory.montecarlo.sample_gradients (bandits, enumerable token MDPs) "
            f"or oblr_theory.sequences (token MDPs too large to enumerate); or use a smaller group_size "
            f"or problem")
    return M, mem


def multisets(n: int, G: int) -> np.ndarray:
    """All non-decreasing index tuples of length G over ``range(n)``, shape ``(C(n+G−1, G), G)``;
    refused above the limits of :func:`check_enumeration`."""
    check_enumeration(n, G)
    rows = np.arange(n, dtype=np.int32)[:, None]
    for _ in range(G - 1):
        last = rows[:, -1]
        reps = n - last  # each row extends with values >= its last entry
        parent = np.repeat(np.arange(len(rows)), reps)
        start = np.repeat(np.cumsum(reps) - reps, reps)
        nxt = last[parent] + (np.arange(len(parent)) - start)
        rows = np.concatenate([rows[parent], nxt[:, None].astype(np.int32)], axis=1)
    return rows


def multiset_log_weights(idx_mg: np.ndarray, log_p: np.ndarray) -> np.ndarray:
    """``log(G!/Π c_i! · Π p_i^{c_i})`` for sorted index rows (M, G)."""
    G = idx_mg.shape[1]
    run = np.ones(idx_mg.shape[0])  # position within the current run of equal indices
    log_fact = np.zeros(idx_mg.shape[0])  # Σ_i log c_i! accumulated as Σ log(run position)
    for j in range(1, G):
        run = np.where(idx_mg[:, j] == idx_mg[:, j - 1], run + 1, 1.0)
        log_fact += np.log(run)
    return gammaln(G + 1) - log_fact + log_p[idx_mg].sum(axis=1)


# ---------------------------------------------------------------------------------------------
# Estimator moments
# ---------------------------------------------------------------------------------------------


def group_moments(out: Outcomes, estimator, group_size: int, progress=None):
    """Exact ``(E ĝ_x, V_x)`` of one group of ``group_size`` responses (multiset enumeration).

    ``progress``: an optional callable ``progress(n)``, called with the multisets done in each
    chunk of each of the two passes (``2 M`` in all; e.g. a tqdm ``update``)."""
    keep = out.probs > 0  # zero-probability outcomes never appear in a group
    p, r, S, ell = out.probs[keep], out.rewards[keep], out.sq_norms[keep], out.lengths[keep]
    scores = out.scores[keep]
    G, n = group_size, len(p)
    idx = multisets(n, G)
    with np.errstate(divide="ignore"):
        w = np.exp(multiset_log_weights(idx, np.log(p)))
    gram = scores @ scores.T  # (n, n)
    coef = np.zeros(n)  # Σ_c w_c A_cj / G accumulated per outcome: E ĝ = coef @ scores
    advs = []
    for lo in range(0, len(idx), _CHUNK):
        sl = idx[lo:lo + _CHUNK]
        A = estimator.advantages(r[sl], sq_norms=S[sl], lengths=ell[sl])  # (m, G)
        advs.append(A)
        np.add.at(coef, sl.reshape(-1), (w[lo:lo + _CHUNK, None] * A).reshape(-1) / G)
        if progress is not None:
            progress(len(sl))
    mean = coef @ scores
    sm = scores @ mean  # (n,) s_i · m
    mm = mean @ mean
    var = 0.0
    for lo, A in zip(range(0, len(idx), _CHUNK), advs):
        sl = idx[lo:lo + _CHUNK]
        quad = np.einsum("mj,mjk,mk->m", A, gram[sl[:, :, None], sl[:, None, :]], A) / G**2
        dev2 = quad - 2.0 * np.einsum("mj,mj->m", A, sm[sl]) / G + mm  # ||ĝ(c) − m||²
        var += w[lo:lo + _CHUNK] @ np.maximum(dev2, 0.0)
        if progress is not None:
            progress(len(sl))
    return mean, float(var)


def estimator_moments(problem, name, group_size, batch_size=1, progress=None, per_prompt=None,
                      **params) -> EstimatorMoments:
    """Exact ``E ĝ``, ``∇J`` and ``V = tr Var(ĝ)`` of estimator ``name`` for a batch of
    ``batch_size`` i.i.d. prompts with one group of ``group_size`` each (T1, T2 without closed forms).

    ``name`` may also be an :class:`~oblr_theory.estimators.Estimator` (to pass an aggregation
    mode). For ``oracle_optimal`` the engine supplies each prompt's exact ``b*`` itself;
    ``per_prompt={param: values}`` gives prompt ``x`` the parameter ``values[x]`` (e.g. ReMax's
    ``greedy_reward``, the reward of each prompt's greedy rollout).
    Every prompt's enumeration is checked against the limits first (:func:`check_enumeration`);
    ``progress`` (``None``: from :data:`PROGRESS_MIN` multisets on) shows a tqdm bar on stderr
    whose title states the multiset count and the memory.
    """
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    group_size, batch_size = int(group_size), int(batch_size)
    est_name = name.name if isinstance(name, estimators.Estimator) else name
    estimators.spec(est_name)  # clear error for unknown names
    if isinstance(name, estimators.Estimator) and name.batch_coupled:
        raise ValueError(f"estimator {est_name!r} with {name._coupling()} couples the groups of a batch, so "
                         f"the law 'batch = independent groups' of this engine does not hold: use "
                         f"oblr_theory.exact_batch.batch_moments (whole batches enumerated) or "
                         f"oblr_theory.exact_batch.sample_batch_gradients (Monte Carlo)")
    per_prompt = dict(per_prompt or {})
    if per_prompt and isinstance(name, estimators.Estimator):
        raise ValueError("per_prompt needs the estimator's name (a string), not an Estimator instance")
    for k, v in per_prompt.items():
        if len(v) != problem.num_prompts:
            raise ValueError(f"per_prompt[{k!r}] must have one value per prompt ({problem.num_prompts}), "
                             f"got {len(v)}")
    outs = all_outcomes(problem)
    plan = [check_enumeration(int(np.count_nonzero(o.probs > 0)), group_size, f"prompt {x}: ")
            for x, o in enumerate(outs)]
    total, peak = sum(M for M, _ in plan), max(mem for _, mem in plan)
    show = total >= PROGRESS_MIN if progress is None else bool(progress)
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=2 * total, unit="multiset", unit_scale=True, file=sys.stderr, leave=False,
                   desc=f"exact {est_name} G={group_size}: {total:,} multisets, ~{_bytes(peak)}")
    try:
        return _estimator_moments(problem, outs, name, est_name, group_size, batch_size, params, per_prompt,
                                  None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()


def _estimator_moments(problem, outs, name, est_name, group_size, batch_size, params, per_prompt, progress):
    moments = prompt_moments(problem)
    means, variances = [], []
    for x, out in enumerate(outs):
        if isinstance(name, estimators.Estimator):
            est = name
        elif est_name == "oracle_optimal":
            est = estimators.get(est_name, **{**params, "b_star": moments.b_star[x]})
        else:
            est = estimators.get(est_name, **params, **{k: v[x] for k, v in per_prompt.items()})
        m, v = group_moments(out, est, group_size, progress)
        means.append(m)
        variances.append(v)
    return batch_of_groups(moments, np.array(means), np.array(variances), group_size, batch_size)


def batch_of_groups(moments: PromptMoments, prompt_mean, prompt_var, group_size: int,
                    batch_size: int) -> EstimatorMoments:
    """A batch of ``batch_size`` i.i.d. prompts with one independent group each, from each prompt's
    group moments ``E ĝ_x`` (X, d) and ``V_x`` (X,): ``E ĝ = Σ_x p_x E ĝ_x`` and (T2, law of total
    variance) ``V_batch = (1/B) Σ_x p_x (V_x + ||E ĝ_x − E ĝ||²)``."""
    prompt_mean, prompt_var = np.asarray(prompt_mean, dtype=np.float64), np.asarray(prompt_var, dtype=np.float64)
    p = moments.prompt_probs
    mean = p @ prompt_mean
    between = np.einsum("xd,xd->x", prompt_mean - mean, prompt_mean - mean)
    trace_var = float(p @ (prompt_var + between)) / batch_size
    return EstimatorMoments(mean, p @ moments.grad, trace_var, prompt_mean, prompt_var,
                            group_size, batch_size)
