"""Closed forms of theorems T1-T8 (see docs/theory.md) as plain functions of moments.

Every function is pure, float64, and broadcasts over arrays of per-prompt moments (shape
``(X,)``) unless a vector argument is documented. Moment arguments come in the order of
``oblr_theory.exact.PromptMoments`` (mu, var_r, m_S, m_rS, m_r2S, grad_sq_norm), then ``group_size``
(G) and ``batch_size`` (B). The per-prompt moments of one prompt are

    mu = E[r],  var_r = Var(r),  m_S = E[S],  m_rS = E[r S],  m_r2S = E[r^2 S],
    grad_sq_norm = ||g||^2  with  g = E[r s] = grad J_x,

where ``s`` is the score of one response and ``S = ||s||^2``. A group has ``G`` i.i.d.
responses, the group estimate is ``(1/G) sum_j A_j s_j``, and a batch averages ``B`` i.i.d.
prompts with one group each. Ascent on ``J`` throughout.

Each formula is proved symbolically in :mod:`oblr_theory.symbolic` (``oblr-theory derive T2``)
and checked against the exact multiset engine in ``tests/test_theory.py``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "UNBIASED", "SCALE_BIASED", "RATIO_BIASED",
    "bias_factor", "expected_estimate",
    "var_fixed_baseline", "var_rloo", "var_dr_grpo", "rloo_minus_mean_baseline",
    "prompt_variance", "var_batch",
    "optimal_baseline", "variance_gap", "mean_baseline_excess", "binary_optimal_baseline",
    "one_step_bound", "snr", "optimal_step_size", "guaranteed_gain",
    "snr_step_size", "snr_guaranteed_gain", "scaled_optimal_step_size", "scaled_guaranteed_gain",
    "constant_step_bound", "adaptive_step_bound", "adaptive_step_progress",
    "SNRPieces", "snr_pieces_expectation", "expected_plugin_numerator",
    "logit_proxy", "logit_proxy_expectation",
    "bandit_gradient", "bandit_sq_norms", "bandit_smoothness_bound",
]

# T1: which registered estimators have E g_hat = c * grad J with a closed-form c.
UNBIASED = frozenset({"reinforce", "constant", "rloo", "opo_loo", "optimal_loo", "oracle_optimal",
                      "optimal_loo_shrink"})
SCALE_BIASED = frozenset({"dr_grpo"})
RATIO_BIASED = frozenset({"grpo", "opo", "optimal"})
_LOO = frozenset({"rloo", "dr_grpo", "opo_loo", "optimal_loo", "optimal_loo_shrink"})


# ----------------------------------------------------------------------------- validation
def _group_size(G, minimum: int, name: str = "group_size") -> int:
    if isinstance(G, bool) or not isinstance(G, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {G!r}")
    if G < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {G}")
    return int(G)


def _arr(x, name: str, *, nonneg: bool = False, positive: bool = False) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {x!r}")
    if positive and np.any(a <= 0):
        raise ValueError(f"{name} must be > 0, got {x!r}")
    if nonneg and np.any(a < 0):
        raise ValueError(f"{name} must be >= 0, got {x!r}")
    return a


def _out(a):
    a = np.asarray(a, dtype=np.float64)
    return float(a) if a.ndim == 0 else a


# ----------------------------------------------------------------------------- T1
def bias_factor(name: str, group_size: int) -> float:
    """T1: the exact scale ``c`` in ``E g_hat = c * grad J`` for one group.

    ``c = 1`` for reinforce, constant, rloo, opo_loo, optimal_loo, optimal_loo_shrink,
    oracle_optimal (the baseline of response j is independent of y_j given x, and E[s] = 0);
    ``c = (G - 1) / G`` for dr_grpo (A_j = r_j - mean(r) = ((G-1)/G)(r_j - mean_{-j} r)).
    Valid only if: ``name`` is one of the above. grpo, opo and optimal are ratio estimators
    whose bias is not a scale factor; a ValueError points to the exact engine for them.
    """
    G = _group_size(group_size, 2 if name in _LOO else 1)
    if name in UNBIASED:
        return 1.0
    if name in SCALE_BIASED:
        return (G - 1) / G
    if name in RATIO_BIASED:
        raise ValueError(f"name={name!r} has no closed-form bias factor (ratio estimator); "
                         "use oblr_theory.exact.estimator_moments")
    raise ValueError(f"unknown estimator name={name!r}")


def expected_estimate(grad, name: str, group_size: int):
    """T1: ``E g_hat = c * grad J`` with ``c = bias_factor(name, G)``.
    Valid only if: ``name`` has a closed-form bias factor (see :func:`bias_factor`).
    """
    return _out(bias_factor(name, group_size) * _arr(grad, "grad"))


# ----------------------------------------------------------------------------- T2
def var_fixed_baseline(m_S, m_rS, m_r2S, grad_sq_norm, group_size, baseline=0.0):
    """T2: ``V = (1/G) (E[(r - b)^2 S] - ||g||^2)`` for the fixed baseline ``b``.

    ``E[(r - b)^2 S] = m_r2S - 2 b m_rS + b^2 m_S``. ``b = 0`` is reinforce.
    Valid only if: ``b`` does not depend on the group (a constant per prompt), G >= 1.
    """
    G = _group_size(group_size, 1)
    m_S = _arr(m_S, "m_S", nonneg=True)
    m_r2S = _arr(m_r2S, "m_r2S", nonneg=True)
    m_rS = _arr(m_rS, "m_rS")
    gsq = _arr(grad_sq_norm, "grad_sq_norm", nonneg=True)
    b = _arr(baseline, "baseline")
    return _out((m_r2S - 2.0 * b * m_rS + b * b * m_S - gsq) / G)


def var_rloo(mu, var_r, m_S, m_rS, m_r2S, grad_sq_norm, group_size):
    """T2: exact variance of rloo (A_j = r_j - mean of the other G-1 rewards).

    ``V = (1/G) (E[(r - mu)^2 S] + var_r m_S / (G - 1)) - (G - 2) / (G (G - 1)) ||g||^2``,
    with ``E[(r - mu)^2 S] = m_r2S - 2 mu m_rS + mu^2 m_S``.
    Valid only if: G >= 2 i.i.d. responses to one prompt.
    """
    G = _group_size(group_size, 2)
    m_S = _arr(m_S, "m_S", nonneg=True)
    var_r = _arr(var_r, "var_r", nonneg=True)
    mu = _arr(mu, "mu")
    gsq = _arr(grad_sq_norm, "grad_sq_norm", nonneg=True)
    centred = _arr(m_r2S, "m_r2S", nonneg=True) - 2.0 * mu * _arr(m_rS, "m_rS") + mu * mu * m_S
    return _out((centred + var_r * m_S / (G - 1)) / G - (G - 2) / (G * (G - 1)) * gsq)


def var_dr_grpo(mu, var_r, m_S, m_rS, m_r2S, grad_sq_norm, group_size):
    """T2: ``V_dr_grpo = ((G - 1) / G)^2 V_rloo`` (A_j = r_j - mean(r), no std).
    Valid only if: G >= 2 i.i.d. responses to one prompt.
    """
    G = _group_size(group_size, 2)
    return _out(((G - 1) / G) ** 2 * np.asarray(var_rloo(mu, var_r, m_S, m_rS, m_r2S, grad_sq_norm, G)))


def rloo_minus_mean_baseline(var_r, m_S, grad_sq_norm, group_size):
    """T2: ``V_rloo - V(b = mu) = (var_r m_S + ||g||^2) / (G (G - 1))`` (never negative).

    The price rloo pays for estimating the mean from the group instead of knowing it.
    Valid only if: G >= 2 i.i.d. responses to one prompt.
    """
    G = _group_size(group_size, 2)
    var_r = _arr(var_r, "var_r", nonneg=True)
    m_S = _arr(m_S, "m_S", nonneg=True)
    gsq = _arr(grad_sq_norm, "grad_sq_norm", nonneg=True)
    return _out((var_r * m_S + gsq) / (G * (G - 1)))


def prompt_variance(moments, name: str, group_size: int, baseline=None):
    """T2: per-prompt ``V_x`` (shape ``(X,)``) of a named estimator from its closed form.

    ``moments`` is any object with fields ``mu, var_r, m_S, m_rS, m_r2S, grad_sq_norm`` (and
    ``b_star`` for oracle_optimal), e.g. ``oblr_theory.exact.prompt_moments(problem)``.
    reinforce: b = 0; constant: b = ``baseline``; oracle_optimal: b = b*; rloo; dr_grpo.
    Valid only if: ``name`` is one of those five (the others have no closed-form variance).
    """
    m = moments
    if name == "reinforce":
        return var_fixed_baseline(m.m_S, m.m_rS, m.m_r2S, m.grad_sq_norm, group_size, 0.0)
    if name == "constant":
        if baseline is None:
            raise ValueError("baseline is required for name='constant'")
        return var_fixed_baseline(m.m_S, m.m_rS, m.m_r2S, m.grad_sq_norm, group_size, baseline)
    if name == "oracle_optimal":
        return var_fixed_baseline(m.m_S, m.m_rS, m.m_r2S, m.grad_sq_norm, group_size, m.b_star)
    if name == "rloo":
        return var_rloo(m.mu, m.var_r, m.m_S, m.m_rS, m.m_r2S, m.grad_sq_norm, group_size)
    if name == "dr_grpo":
        return var_dr_grpo(m.mu, m.var_r, m.m_S, m.m_rS, m.m_r2S, m.grad_sq_norm, group_size)
    raise ValueError(f"name={name!r} has no closed-form variance; use oblr_theory.exact")


def var_batch(prompt_probs, prompt_means, prompt_vars, batch_size):
    """T2 (batch): ``V_batch = (1/B) (E_x ||m_x - E_x m_x||^2 + E_x V_x)``.

    ``prompt_means`` (X, d) holds ``m_x = E[g_hat_x | x]`` (``= g_x = grad J_x`` when unbiased,
    ``c g_x`` for a scale bias), ``prompt_vars`` (X,) holds ``V_x``; ``prompt_probs`` (X,).
    Law of total variance over ``B`` i.i.d. prompts with one group each.
    Valid only if: prompts i.i.d. from ``prompt_probs`` (summing to 1), groups independent.
    """
    B = _group_size(batch_size, 1, "batch_size")
    q = _arr(prompt_probs, "prompt_probs", nonneg=True)
    if q.ndim != 1 or not np.isclose(q.sum(), 1.0, rtol=0, atol=1e-12):
        raise ValueError(f"prompt_probs must be a 1-d probability vector, got {prompt_probs!r}")
    means = _arr(prompt_means, "prompt_means")
    if means.ndim != 2 or means.shape[0] != q.shape[0]:
        raise ValueError(f"prompt_means must have shape (X, d) with X={q.shape[0]}, got {means.shape}")
    v = _arr(prompt_vars, "prompt_vars", nonneg=True)
    if v.shape != q.shape:
        raise ValueError(f"prompt_vars must have shape {q.shape}, got {v.shape}")
    centre = q @ means  # (d,)
    between = q @ np.sum((means - centre) ** 2, axis=1)
    return float((between + q @ v) / B)


# ----------------------------------------------------------------------------- T3
def optimal_baseline(m_rS, m_S, mu=None):
    """T3: the variance-optimal constant baseline ``b* = E[r S] / E[S] = m_rS / m_S``.

    Where ``m_S = 0`` every score of the prompt is zero (a deterministic policy), ``V(b) = 0``
    for every ``b`` and T3 has no unique minimiser; the rule there is ``b* = mu`` (the mean
    reward), applied when ``mu`` is given. Without ``mu`` a zero ``m_S`` is refused.
    Broadcasts over arrays of per-prompt moments.
    Valid only if: ``m_S >= 0`` (a mean of squared norms), and ``m_S > 0`` when ``mu`` is None.
    """
    m_rS = _arr(m_rS, "m_rS")
    if mu is None:
        m_S = _arr(m_S, "m_S", positive=True)
        return _out(m_rS / m_S)
    m_S = _arr(m_S, "m_S", nonneg=True)
    mu = _arr(mu, "mu")
    ok = m_S > 0
    return _out(np.where(ok, m_rS / np.where(ok, m_S, 1.0), mu))


def variance_gap(m_S, baseline, b_star, group_size):
    """T3: ``V(b) - V(b*) = (m_S / G) (b - b*)^2`` for fixed baselines.
    Valid only if: ``b`` and ``b*`` are constants per prompt, G >= 1.
    """
    G = _group_size(group_size, 1)
    m_S = _arr(m_S, "m_S", nonneg=True)
    d = _arr(baseline, "baseline") - _arr(b_star, "b_star")
    return _out(m_S * d * d / G)


def mean_baseline_excess(m_rS, m_S, mu, group_size):
    """T3: ``V(mu) - V(b*) = (m_S/G)(mu - b*)^2 = Cov(S, r)^2 / (G m_S)``, Cov = m_rS - mu m_S.

    Zero iff S and r are uncorrelated.
    Valid only if: ``m_S > 0``, G >= 1.
    """
    G = _group_size(group_size, 1)
    m_S = _arr(m_S, "m_S", positive=True)
    cov = _arr(m_rS, "m_rS") - _arr(mu, "mu") * m_S
    return _out(cov * cov / (G * m_S))


def binary_optimal_baseline(p, w1, w0):
    """T3 (binary rewards): ``b* = p w1 / (p w1 + (1 - p) w0)``.

    ``p = P(r = 1) = mu``, ``w1 = E[S | r = 1]``, ``w0 = E[S | r = 0]``. ``w0 > w1`` (longer
    wrong answers) gives ``b* < p``.
    Valid only if: r in {0, 1}, 0 <= p <= 1, w0, w1 >= 0 and ``p w1 + (1 - p) w0 > 0``.
    """
    p = _arr(p, "p", nonneg=True)
    if np.any(p > 1):
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    w1 = _arr(w1, "w1", nonneg=True)
    w0 = _arr(w0, "w0", nonneg=True)
    den = p * w1 + (1 - p) * w0
    if np.any(den <= 0):
        raise ValueError("p*w1 + (1-p)*w0 must be > 0 (m_S > 0)")
    return _out(p * w1 / den)


# ----------------------------------------------------------------------------- T4
def one_step_bound(objective, grad, mean, trace_var, smoothness, step_size):
    """T4: ``E J(theta + eta g_hat) >= J + eta grad.m - (L eta^2 / 2)(||m||^2 + V)``.

    ``grad`` (d,) is grad J(theta), ``mean`` (d,) is ``m = E g_hat``, ``trace_var`` is
    ``V = tr Var(g_hat)``. Returns the right-hand side (a lower bound on the expected
    objective after one ascent step; its negative bounds the loss -J from above).
    Valid only if: J is L-smooth on the segments the step can reach, ``L > 0``.
    """
    L = _arr(smoothness, "smoothness", positive=True)
    g = _arr(grad, "grad")
    m = _arr(mean, "mean")
    if g.shape != m.shape or g.ndim != 1:
        raise ValueError(f"grad and mean must be 1-d of equal shape, got {g.shape} and {m.shape}")
    V = _arr(trace_var, "trace_var", nonneg=True)
    eta = _arr(step_size, "step_size")
    J = _arr(objective, "objective")
    return _out(J + eta * (g @ m) - 0.5 * L * eta * eta * (m @ m + V))


# ----------------------------------------------------------------------------- T5
def snr(grad_sq_norm, trace_var):
    """T5: gradient signal-to-noise ratio ``SNR = ||grad J||^2 / V`` (``inf`` when V = 0).
    Valid only if: not both ``grad_sq_norm`` and ``trace_var`` are zero.
    """
    gsq = _arr(grad_sq_norm, "grad_sq_norm", nonneg=True)
    V = _arr(trace_var, "trace_var", nonneg=True)
    if np.any((gsq == 0) & (V == 0)):
        raise ValueError("SNR is undefined when grad_sq_norm == 0 and trace_var == 0")
    with np.errstate(divide="ignore"):
        return _out(np.where(V > 0, gsq / np.where(V > 0, V, 1.0), np.inf))


def optimal_step_size(grad_dot_mean, mean_sq_norm, trace_var, smoothness):
    """T5 (general mean ``m``): ``eta* = grad.m / (L (||m||^2 + V))``, the maximiser of T4.
    Valid only if: ``grad.m >= 0`` (the estimate points uphill on average), ``L > 0`` and
    ``||m||^2 + V > 0``.
    """
    gm = _arr(grad_dot_mean, "grad_dot_mean", nonneg=True)
    den = _arr(mean_sq_norm, "mean_sq_norm", nonneg=True) + _arr(trace_var, "trace_var", nonneg=True)
    L = _arr(smoothness, "smoothness", positive=True)
    if np.any(den <= 0):
        raise ValueError("mean_sq_norm + trace_var must be > 0")
    return _out(gm / (L * den))


def guaranteed_gain(grad_dot_mean, mean_sq_norm, trace_var, smoothness):
    """T5 (general ``m``): T4 bound at ``eta*`` minus J: ``(grad.m)^2 / (2 L (||m||^2 + V))``.
    Valid only if: as :func:`optimal_step_size`.
    """
    gm = _arr(grad_dot_mean, "grad_dot_mean", nonneg=True)
    return _out(0.5 * gm * np.asarray(optimal_step_size(gm, mean_sq_norm, trace_var, smoothness)))


def snr_step_size(snr_value, smoothness):
    """T5 (unbiased): ``eta* = (1/L) SNR / (1 + SNR)`` (``1/L`` at SNR = inf).
    Valid only if: the estimator is unbiased (m = grad J), ``SNR >= 0``, ``L > 0``.
    """
    s = np.asarray(snr_value, dtype=np.float64)
    if np.any(np.isnan(s)) or np.any(s < 0):
        raise ValueError(f"snr_value must be >= 0 (inf allowed), got {snr_value!r}")
    L = _arr(smoothness, "smoothness", positive=True)
    frac = np.where(np.isinf(s), 1.0, s / (1.0 + np.where(np.isinf(s), 0.0, s)))
    return _out(frac / L)


def snr_guaranteed_gain(grad_sq_norm, snr_value, smoothness):
    """T5 (unbiased): gain at ``eta*`` is ``||grad J||^2 / (2L) * SNR / (1 + SNR)``.
    Valid only if: the estimator is unbiased, ``SNR >= 0``, ``L > 0``.
    """
    gsq = _arr(grad_sq_norm, "grad_sq_norm", nonneg=True)
    return _out(0.5 * gsq * np.asarray(snr_step_size(snr_value, smoothness)))


def scaled_optimal_step_size(scale, grad_sq_norm, trace_var, smoothness):
    """T5 (pure scale bias ``m = c grad J``): ``eta* = c ||g||^2 / (L (c^2 ||g||^2 + V))``.
    Valid only if: ``c > 0``, ``L > 0``, ``c^2 ||g||^2 + V > 0``.
    """
    c = _arr(scale, "scale", positive=True)
    gsq = _arr(grad_sq_norm, "grad_sq_norm", nonneg=True)
    return optimal_step_size(c * gsq, c * c * gsq, trace_var, smoothness)


def scaled_guaranteed_gain(scale, grad_sq_norm, trace_var, smoothness):
    """T5 (``m = c grad J``): gain ``c^2 ||g||^4 / (2 L (c^2 ||g||^2 + V))``.

    dr_grpo has ``c = (G-1)/G`` and ``V = c^2 V_rloo``, so its gain equals rloo's.
    Valid only if: as :func:`scaled_optimal_step_size`.
    """
    c = _arr(scale, "scale", positive=True)
    gsq = _arr(grad_sq_norm, "grad_sq_norm", nonneg=True)
    return guaranteed_gain(c * gsq, c * c * gsq, trace_var, smoothness)


# ----------------------------------------------------------------------------- T6
def constant_step_bound(initial_gap, step_size, num_steps, smoothness, var_max):
    """T6 (constant step): ``(1/T) sum_t E||grad J_t||^2 <= 2 (J* - J_0)/(eta T) + L eta var_max``.

    ``initial_gap = J* - J(theta_0)``.
    Valid only if: unbiased estimates, ``0 < eta <= 1/L``, ``V_t <= var_max`` for all t,
    J is L-smooth, T >= 1.
    """
    gap = _arr(initial_gap, "initial_gap", nonneg=True)
    eta = _arr(step_size, "step_size", positive=True)
    L = _arr(smoothness, "smoothness", positive=True)
    if np.any(eta * L > 1.0 + 1e-12):
        raise ValueError(f"step_size must be <= 1/smoothness, got eta={step_size!r}, L={smoothness!r}")
    T = _group_size(num_steps, 1, "num_steps")
    s2 = _arr(var_max, "var_max", nonneg=True)
    return _out(2.0 * gap / (eta * T) + L * eta * s2)


def adaptive_step_bound(initial_gap, smoothness):
    """T6 (eta_t = eta*_t): ``sum_t E[||grad J_t||^2 SNR_t / (1 + SNR_t)] <= 2 L (J* - J_0)``.

    Returns the right-hand side; :func:`adaptive_step_progress` gives the left-hand side.
    Valid only if: unbiased estimates, J is L-smooth, steps ``eta*_t`` from the exact SNR.
    """
    return _out(2.0 * _arr(smoothness, "smoothness", positive=True)
                * _arr(initial_gap, "initial_gap", nonneg=True))


def adaptive_step_progress(grad_sq_norms, snrs):
    """T6: ``sum_t ||grad J_t||^2 SNR_t / (1 + SNR_t)`` over a trajectory (1-d arrays).
    Valid only if: equal-length 1-d arrays, ``SNR_t >= 0`` (inf allowed).
    """
    gsq = _arr(grad_sq_norms, "grad_sq_norms", nonneg=True)
    s = np.asarray(snrs, dtype=np.float64)
    if s.shape != gsq.shape or np.any(np.isnan(s)) or np.any(s < 0):
        raise ValueError("snrs must be >= 0 and match grad_sq_norms in shape")
    frac = np.where(np.isinf(s), 1.0, s / (1.0 + np.where(np.isinf(s), 0.0, s)))
    return float(np.sum(gsq * frac))


# ----------------------------------------------------------------------------- T7
class SNRPieces(NamedTuple):
    """T7: expectations of the SNR estimator's pieces from ``B`` i.i.d. unit gradients."""

    sigma_hat: float            # E[(1/(B-1)) sum_b ||u_b - g_hat||^2] = tr Cov(u)
    var_hat: float              # E[sigma_hat / B] = tr Cov(u) / B = V
    plugin_numerator: float     # E||g_hat||^2 = ||m||^2 + V   (biased up by V)
    corrected_numerator: float  # E[||g_hat||^2 - var_hat] = ||m||^2


def snr_pieces_expectation(mean_sq_norm, trace_cov_unit, batch_size) -> SNRPieces:
    """T7: exact expectations of ``Sigma_hat``, ``V_hat``, ``||g_hat||^2`` and ``||g_hat||^2 - V_hat``.

    ``mean_sq_norm = ||E u||^2`` (``||grad J||^2`` when unbiased), ``trace_cov_unit = tr Cov(u)``
    of one unit (one prompt group: T2's batch variance with B = 1).
    Valid only if: ``B >= 2`` i.i.d. units (prompt groups, not responses within one group).
    """
    B = _group_size(batch_size, 2, "batch_size")
    msq = _arr(mean_sq_norm, "mean_sq_norm", nonneg=True)
    tc = _arr(trace_cov_unit, "trace_cov_unit", nonneg=True)
    return SNRPieces(_out(tc), _out(tc / B), _out(msq + tc / B), _out(msq))


def expected_plugin_numerator(mean_sq_norm, trace_var):
    """T7: ``E||g_hat||^2 = ||m||^2 + V``: the plug-in SNR numerator is biased up by ``V``.
    Valid only if: ``m = E g_hat`` and ``V = tr Var(g_hat)`` of the same estimator.
    """
    return _out(_arr(mean_sq_norm, "mean_sq_norm", nonneg=True) + _arr(trace_var, "trace_var", nonneg=True))


# ----------------------------------------------------------------------------- T8
def _probs(probs, name="probs"):
    p = _arr(probs, name, nonneg=True)
    if p.ndim < 1 or not np.allclose(p.sum(axis=-1), 1.0, rtol=0, atol=1e-12):
        raise ValueError(f"{name} must sum to 1 over its last axis")
    return p


def logit_proxy(probs, action):
    """T8: ``||e_a - pi||^2 = 1 - 2 pi_a + ||pi||^2`` (squared norm of d log pi(a)/d logits).

    ``probs`` (..., V), ``action`` integer array (...).
    Valid only if: a softmax over logits; ignores the Jacobian from logits to theta.
    """
    p = _probs(probs)
    a = np.asarray(action)
    if not np.issubdtype(a.dtype, np.integer) or np.any(a < 0) or np.any(a >= p.shape[-1]):
        raise ValueError(f"action must be integers in [0, {p.shape[-1]}), got {action!r}")
    pa = np.take_along_axis(p, a[..., None], axis=-1)[..., 0]
    return _out(1.0 - 2.0 * pa + np.sum(p * p, axis=-1))


def logit_proxy_expectation(probs):
    """T8: ``E_a ||e_a - pi||^2 = 1 - ||pi||^2`` (verl's forward-only optimal-baseline proxy).
    Valid only if: a ~ pi; per position of a softmax policy over logits.
    """
    p = _probs(probs)
    return _out(1.0 - np.sum(p * p, axis=-1))


# ----------------------------------------------------------------------------- bandit facts
def bandit_gradient(probs, rewards):
    """Softmax bandit: ``grad_z J_x = pi (r - J_x)`` with ``J_x = pi.r`` (per prompt row).
    Valid only if: ``pi = softmax(z)``; ``probs`` and ``rewards`` of shape (K,) or (X, K).
    Multiply row x by the prompt probability for the gradient of ``J = E_x J_x``.
    """
    p = _probs(probs)
    r = _arr(rewards, "rewards")
    if r.shape != p.shape:
        raise ValueError(f"rewards must have shape {p.shape}, got {r.shape}")
    J = np.sum(p * r, axis=-1, keepdims=True)
    return p * (r - J)


def bandit_sq_norms(probs):
    """Softmax bandit: ``S(a) = ||e_a - pi||^2 = 1 - 2 pi_a + ||pi||^2`` for every arm.
    Valid only if: ``pi = softmax(z)`` and theta = z (the logits themselves).
    """
    p = _probs(probs)
    return 1.0 - 2.0 * p + np.sum(p * p, axis=-1, keepdims=True)


def bandit_smoothness_bound(rewards):
    """Softmax bandit: ``J`` is L-smooth with ``L = 5/2 (max r - min r)`` (Mei et al. 2020).

    The Hessian is invariant to shifting r, and the bound for r in [0, 1] is 5/2.
    Valid only if: logits are the parameters (theta = z), any prompt distribution.
    """
    r = _arr(rewards, "rewards")
    return float(2.5 * (r.max() - r.min()))
