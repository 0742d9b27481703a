"""Simple T4, T5 and T7 rows: closed forms of :mod:`oblr_theory.theory` against the exact engine.

A stand-in until the dynamics module (``claims_dynamics``) lands with the full T4–T7 checks over
training runs; it can then be dropped from ``CLAIM_MODULES``.

* T4: on a single-prompt softmax bandit, ``E J(θ + ηĝ)`` is enumerated exactly over the group
  multisets and compared with the one-step bound (global ``L = 5/2 · (max r − min r)``).
* T5: ``η*`` of the closed form maximises the T4 bound (numerically, on the engine's ``m`` and
  ``V``); dr_grpo's gain at its own ``η*`` equals rloo's.
* T7: from ``B`` per-group estimates, ``Σ̂`` and ``||ĝ||² − V̂`` are unbiased (calibrated tests);
  the plug-in ``||ĝ||²`` is biased up by ``V`` (a negative control).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from .. import estimators, exact, montecarlo as mc, stats, theory
from ..problems import SoftmaxBandit, TokenMDP
from .claims_static import problem
from .report import Claim, Row, exact_row, fact_row, test_row

__all__ = ["claims", "expected_objective_after_step"]


def expected_objective_after_step(bandit: SoftmaxBandit, estimator, group_size: int, step_size: float) -> float:
    """``E J(θ + ηĝ)`` for one group on a one-prompt bandit, exactly: ``Σ_c w_c J(θ + ηĝ(c))``
    over the ``C(K+G−1, G)`` multisets ``c`` (T4's left-hand side)."""
    if bandit.num_prompts != 1:
        raise ValueError("bandit must have one prompt")
    o = bandit.outcomes(0)
    idx = exact.multisets(o.size, group_size)  # (M, G)
    w = np.exp(exact.multiset_log_weights(idx, np.log(o.probs)))
    A = estimator.advantages(o.rewards[idx], sq_norms=o.sq_norms[idx], lengths=o.lengths[idx])  # (M, G)
    g_md = np.einsum("mg,mgd->md", A, o.scores[idx]) / group_size
    z = bandit.theta + step_size * g_md  # (M, K)
    z -= z.max(axis=1, keepdims=True)
    pi = np.exp(z)
    pi /= pi.sum(axis=1, keepdims=True)
    return float(w @ (pi @ bandit.rewards[0]))


def _t4_bandit(ctx) -> list[Row]:
    key, G = "bandit K=4", 2
    P = problem(key)
    L = P.smoothness_bound()
    J = exact.objective(P)
    rows = []
    for name in ("rloo", "optimal_loo", "dr_grpo", "grpo"):
        em = exact.estimator_moments(P, name, G)
        gm, mm = float(em.grad @ em.mean), float(em.mean @ em.mean)
        eta_star = theory.optimal_step_size(gm, mm, em.trace_var, L)
        for label, eta in (("η*", eta_star), ("1/L", 1.0 / L), ("2/L", 2.0 / L)):
            lhs = expected_objective_after_step(P, estimators.get(name), G, eta)
            rhs = theory.one_step_bound(J, em.grad, em.mean, em.trace_var, L, eta)
            rows.append(fact_row("T4", f"E J(θ+ηĝ) ≥ bound ({name}, η={label})", f"{key}, G={G}",
                                 lhs - rhs, lhs >= rhs, threshold=0.0, estimate=lhs,
                                 note=f"E J' = {lhs:.6g}, bound = {rhs:.6g}, L = {L:g} (global)"))
    return rows


def _t5(key: str, G: int, ctx) -> list[Row]:
    P = problem(key)
    if isinstance(P, SoftmaxBandit):
        L, where_L = P.smoothness_bound(), "global"
    else:
        L, where_L = float(np.max(np.abs(np.linalg.eigvalsh(exact.hessian(P))))), "local at θ"
    J = exact.objective(P)
    rows = []
    for name in ("rloo", "optimal_loo", "grpo"):
        em = exact.estimator_moments(P, name, G)
        gm, mm = float(em.grad @ em.mean), float(em.mean @ em.mean)
        eta = theory.optimal_step_size(gm, mm, em.trace_var, L)
        res = minimize_scalar(lambda e: -theory.one_step_bound(J, em.grad, em.mean, em.trace_var, L, e),
                              bounds=(0.0, 10.0 / L), method="bounded", options={"xatol": 1e-12})
        rows.append(exact_row("T5", f"η* = ∇J·m/(L(||m||²+V)) maximises T4 ({name})", f"{key}, G={G}",
                              eta, res.x, tol_rel=1e-6, note=f"L = {L:.4g} ({where_L}); numerical argmax, xatol 1e-12"))
        gain = theory.guaranteed_gain(gm, mm, em.trace_var, L)
        rows.append(exact_row("T5", f"gain at η* = (∇J·m)²/(2L(||m||²+V)) ({name})", f"{key}, G={G}",
                              gain, theory.one_step_bound(J, em.grad, em.mean, em.trace_var, L, eta) - J))
        if name in theory.UNBIASED:
            s = theory.snr(em.grad @ em.grad, em.trace_var)
            rows.append(exact_row("T5", f"η* = (1/L)·SNR/(1+SNR) for unbiased ({name})", f"{key}, G={G}",
                                  theory.snr_step_size(s, L), eta))
    rl = exact.estimator_moments(P, "rloo", G)
    dr = exact.estimator_moments(P, "dr_grpo", G)
    gain_rloo = theory.guaranteed_gain(float(rl.grad @ rl.mean), float(rl.mean @ rl.mean), rl.trace_var, L)
    gain_dr = theory.guaranteed_gain(float(dr.grad @ dr.mean), float(dr.mean @ dr.mean), dr.trace_var, L)
    rows.append(exact_row("T5", "scale bias leaves the gain unchanged: gain(dr_grpo) = gain(rloo)",
                          f"{key}, G={G}", gain_rloo, gain_dr))
    return rows


def _t7(key: str, G: int, B: int, num_batches: int, ctx) -> list[Row]:
    """T7 on ``num_batches`` i.i.d. batches of ``B`` prompt groups (rloo)."""
    P = problem(key)
    em1 = exact.estimator_moments(P, "rloo", G)  # one unit (a prompt group): tr Cov(u) = V_1
    pieces = theory.snr_pieces_expectation(float(em1.mean @ em1.mean), em1.trace_var, B)
    u = mc.sample_gradients(P, "rloo", G, B, num_batches, ctx.rng)  # (nb, B, d)
    g_hat = u.mean(axis=1)
    sigma_hat = np.einsum("nbd,nbd->n", u - g_hat[:, None], u - g_hat[:, None]) / (B - 1)
    v_hat = sigma_hat / B
    plug = np.einsum("nd,nd->n", g_hat, g_hat)
    where = f"{key}, G={G}, B={B}"
    grad_sq = float(em1.grad @ em1.grad)
    rows = []
    t = stats.mean_test(stats.SampleMoments.of(sigma_hat), [pieces.sigma_hat], ctx.alpha, ctx.power)
    rows.append(test_row("T7", "E Σ̂ = tr Cov(u) (unit = prompt group)", where, t))
    t = stats.mean_test(stats.SampleMoments.of(plug - v_hat), [grad_sq], ctx.alpha, ctx.power)
    rows.append(test_row("T7", "E[||ĝ||² − V̂] = ||∇J||²", where, t))
    t = stats.mean_test(stats.SampleMoments.of(plug), [grad_sq], ctx.alpha, ctx.power)
    rows.append(test_row("T7", "plug-in: E||ĝ||² = ||∇J||²", where, t, negative=True,
                         exact_bias=[pieces.plugin_numerator - grad_sq]))
    return rows


def claims(quick: bool, seed: int) -> list[Claim]:
    del seed
    nb = 20_000 if quick else 100_000
    out = [Claim("stepsize-t4/bandit K=4", "T4", "bandit K=4", _t4_bandit)]
    for key in ("bandit K=4", "mdp loglinear V=3 H=3 X=2"):
        out.append(Claim(f"stepsize-t5/{key}", "T5", key, lambda ctx, key=key: _t5(key, 2, ctx)))
    for key in ("bandit X=3 K=4", "mdp loglinear V=3 H=3 X=2"):
        out.append(Claim(f"stepsize-t7/{key}", "T7", key, lambda ctx, key=key: _t7(key, 2, 4, ctx.size(nb), ctx),
                         num_tests=3, cost=2.0 if isinstance(problem(key), TokenMDP) else 1.0))
    return out
