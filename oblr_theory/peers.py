"""The peers' advantage estimators (docs/theory.md: The peers' estimators), each defined from its
source (verl, OpenRLHF) and registered with ``peer=True`` (listed by
:func:`oblr_theory.estimators.peer_names`; built with :func:`oblr_theory.estimators.get` like every
estimator).

Outcome rewards only (one scalar ``r_j`` per response, ``γ = 1``): then a return-to-go is ``r_j``
at every token of response j, and each estimator is an advantage map ``A = f(r, S, ℓ)`` of the
project's form ``ĝ = (1/B) Σ_b (1/G) Σ_j A_bj s_bj``. The three that whiten or scale by a
statistic of the whole batch (``reinforce_pp``, ``reinforce_pp_baseline``, ``gpg``) are
batch-coupled: their ``advantages`` need ``batch_axis=`` and their exact moments come from
:mod:`oblr_theory.exact_batch`. The exact bias of each is stated in its docstring and checked by
``oblr-theory verify`` (claims ``peers/...``).

References (verl: ``verl/trainer/ppo/core_algos.py`` and ``verl/utils/torch_functional.py``):

* REINFORCE++: Hu et al., arXiv:2501.03262; verl ``compute_reinforce_plus_plus_outcome_advantage``
  and ``..._baseline_outcome_advantage``, whitening by ``masked_whiten`` (token-weighted mean, the
  Bessel-corrected token-weighted variance ``masked_var(unbiased=True)``, ``rsqrt(var + 1e-8)``).
* ReMax: Li et al., arXiv:2310.10505; verl ``compute_remax_outcome_advantage``
  (``returns − reward_baselines``, the reward of the greedy rollout of the same prompt).
* GPG: Chu et al., arXiv:2504.02546; verl ``compute_gpg_outcome_advantage``
  (``α (r − r̄) / f_norm`` with ``α = bsz / max(1, count_nonzero(scores))``).
* GRPO pass@k: Chen et al., arXiv:2503.19595; verl ``compute_grpo_passk_outcome_advantage`` (only
  the best response gets ``r_max − r_second``, optionally over ``std + ε``).
* OTB: verl ``compute_optimal_token_baseline_advantage`` (docs/algo/otb.md, arXiv:2602.07078):
  ``B_t = Σ_i G_t^i W_t^i / (Σ_i W_t^i + ε)`` with ``W_t`` the cumulative squared-score proxy
  ``Σ_{s≤t} (1 − 2π_s + Σπ²_s)``. The registry's ``otb`` is its sequence-level form (the baseline at
  a response's last token); the per-token estimator itself, whose advantage varies along the
  response and so is no map ``A = f(r, S, ℓ)``, is :mod:`oblr_theory.peers_token` (verl's rules,
  its leave-one-out form, and its exact bias on token MDPs).
"""

from __future__ import annotations

from . import _ops
from .estimators import _REQUIRED, register

__all__: list[str] = []


def _centred(r):
    """``r_j − r̄`` with verl's group mean (``0`` for a group of one response: ``id2mean = 0``);
    exactly ``0`` in a tied group, however ``r̄`` rounds."""
    G = r.shape[-1]
    if G == 1:
        return r + 0
    tie = _ops.max_keep(r) == -_ops.max_keep(-r)
    return _ops.where(tie, 0 * r, r - _ops.sum_keep(r) / G)


def _token_whiten(x, ell, axis, eps):
    """verl ``masked_whiten`` of a per-response value broadcast to its ``ℓ`` tokens:
    ``(x − μ) / sqrt(v + eps)``, ``μ = Σ ℓ x / N``, ``v = N/(N−1) · Σ ℓ (x − μ)² / N`` over the
    batch's ``N = Σ ℓ`` tokens (axes ``axis`` and the group axis). Zero rules: a batch of equal
    ``x`` has ``x − μ = 0`` exactly; ``v + eps = 0`` gives ``A = 0``. verl's ``masked_mean``
    divides by ``N + 1e-8`` rather than ``N`` (a guard against empty masks): a relative difference
    of about ``1e-8 / N``, left out here. Valid only if ``N > 1``."""
    axes = (axis, -1)
    N = _ops.sum_axes_keep(ell, axes)
    if _ops.any_(N <= 1):
        raise ValueError("token whitening needs more than one token in every batch (Σ lengths > 1); "
                         "verl's masked_var divides by N − 1")
    mu = _ops.sum_axes_keep(ell * x, axes) / N
    tie = _ops.max_axes_keep(x, axes) == -_ops.max_axes_keep(-x, axes)  # a tied batch: x − μ = 0 exactly
    dev = _ops.where(tie, 0 * x, x - mu)
    var = _ops.sum_axes_keep(ell * dev * dev, axes) / (N - 1)
    den = _ops.sqrt(var + eps)
    ok = den > 0  # zero rule: v + eps = 0 (a tied batch, eps = 0) gives A = 0
    return _ops.where(ok, dev / _ops.where(ok, den, _ops.ones_like(den)), 0 * dev)


@register("reinforce_pp", needs=("lengths",), defaults={"eps": 1e-8}, unbiased=False, peer=True,
          batch_coupled=True)
def _reinforce_pp(r, S, ell, axis, eps):
    """``A_bj = (r_bj − μ_tok) / sqrt(v_tok + eps)``: REINFORCE++ (outcome reward, γ = 1), the reward
    whitened over the batch's tokens (:func:`_token_whiten`). Batch-coupled. T1: biased — the
    batch mean includes ``r_bj`` itself and the scale is random; ``E ĝ`` is stated exactly by
    ``exact_batch`` (``peers/bias`` rows). Valid for ``Σ ℓ > 1`` per batch, ``ℓ ≥ 0``."""
    if not eps >= 0:
        raise ValueError(f"reinforce_pp parameter eps must be >= 0, got {eps!r}")
    return _token_whiten(r, ell, axis, eps)


@register("reinforce_pp_baseline", needs=("lengths",), defaults={"eps": 1e-8}, unbiased=False, peer=True,
          batch_coupled=True)
def _reinforce_pp_baseline(r, S, ell, axis, eps):
    """``A_bj = whiten(r_bj − r̄_b)``: REINFORCE++-baseline, the group mean subtracted (0 for a group of
    one), then whitened over the batch's tokens (:func:`_token_whiten`). Batch-coupled. T1: biased
    (the group mean includes ``r_bj``, the scale is random). Valid for ``Σ ℓ > 1`` per batch."""
    if not eps >= 0:
        raise ValueError(f"reinforce_pp_baseline parameter eps must be >= 0, got {eps!r}")
    return _token_whiten(_centred(r), ell, axis, eps)


@register("gpg", defaults={"f_norm": 1.0}, unbiased=False, peer=True, batch_coupled=True)
def _gpg(r, S, ell, axis, f_norm):
    """``A_bj = α (r_bj − r̄_b) / f_norm``, ``α = B·G / max(1, #{r ≠ 0 in the batch})`` (GPG; ``r̄ = 0``
    for a group of one). Batch-coupled. T1: biased — ``α`` is random and ``r̄_b`` includes
    ``r_bj`` (at fixed ``α`` it would be dr_grpo's ``(G−1)/G`` scale). Valid for ``f_norm ≠ 0``."""
    if f_norm == 0:
        raise ValueError("gpg parameter f_norm must be non-zero")
    axes = (axis, -1)
    nonzero = _ops.sum_axes_keep(_ops.where(r != 0, 0 * r + 1.0, 0 * r), axes)
    count = r.shape[axis] * r.shape[-1]
    alpha = count / _ops.where(nonzero > 0, nonzero, _ops.ones_like(nonzero))
    return alpha * _centred(r) / f_norm


@register("remax", defaults={"greedy_reward": _REQUIRED}, unbiased=True, peer=True)
def _remax(r, S, ell, greedy_reward):
    """``A_j = r_j − r(ŷ_greedy)``: ReMax, the baseline is the reward of the prompt's greedy rollout.
    T1: unbiased — the greedy rollout is deterministic given the prompt, so the baseline does not
    depend on the sampled ``y_j`` (T2: ``V`` is that of the fixed baseline ``b = r(ŷ_greedy)``).
    Valid only if ``greedy_reward`` is fixed per prompt (a number or an array broadcastable to
    ``(..., 1)``)."""
    return r - greedy_reward


@register("grpo_passk", defaults={"eps": 1e-6, "norm": 1}, unbiased=False, min_group=2, peer=True)
def _grpo_passk(r, S, ell, eps, norm):
    """``A_j = (r_j − max_{k≠j} r_k)/(std(r) + eps)`` for the best response ``j`` (where ``r_j = max r``),
    ``0`` for the others (GRPO pass@k; ``norm=0``: no division; ``std`` Bessel-corrected as
    ``torch.std``). A tied maximum gives ``0`` to every response. T1: biased — it is the
    gradient of a pass@G-type objective, not of ``J``. Valid for G ≥ 2."""
    if norm not in (0, 1):
        raise ValueError(f"grpo_passk parameter norm must be 0 or 1, got {norm!r}")
    if not eps >= 0:
        raise ValueError(f"grpo_passk parameter eps must be >= 0, got {eps!r}")
    top = _ops.max_keep(r)
    rows = r[..., None, :] + 0 * r[..., :, None]  # (..., G, G): row j holds r
    low = -_ops.max_keep(-r)[..., None]  # (..., 1, 1): the group min never exceeds the others' max
    others = _ops.where(_ops.off_diagonal(r) > 0, rows, low + 0 * rows)
    second = _ops.max_keep(others)[..., 0]  # (..., G): max_{k≠j} r_k
    gap = _ops.where(r == top, r - second, 0 * r)
    if norm == 0:
        return gap
    G = r.shape[-1]
    centred = r - _ops.sum_keep(r) / G
    tie = top == -_ops.max_keep(-r)
    centred = _ops.where(tie, 0 * centred, centred)
    den = _ops.sqrt(_ops.sum_keep(centred * centred) / (G - 1)) + eps
    ok = den > 0
    return _ops.where(ok, gap / _ops.where(ok, den, _ops.ones_like(den)), 0 * gap)


@register("otb", needs=("sq_norms",), defaults={"eps": 1e-8}, unbiased=False, peer=True)
def _otb(r, S, ell, eps):
    """``A_j = r_j − Σ_k W_k r_k / (Σ_k W_k + eps)``, ``W = sq_norms``: verl's optimal token baseline
    at the sequence level (its baseline at a response's last token, where ``W_t`` is the whole
    response's squared-score proxy; pass the proxy ``Σ_t (1 − 2π_t + Σπ²_t)`` or the exact ``S``).
    T1: biased, O(1/G) — the baseline includes ``y_j`` (inclusive, as ``optimal``; ``optimal_loo``
    is its unbiased leave-one-out form). verl's per-token baselines ``B_t`` at earlier tokens are
    not of this form (the advantage varies along the response):
    :func:`oblr_theory.peers_token.otb_token_advantages`. Valid for ``S ≥ 0``, ``eps ≥ 0``."""
    if not eps >= 0:
        raise ValueError(f"otb parameter eps must be >= 0, got {eps!r}")
    den = _ops.sum_keep(S) + eps
    ok = den > 0
    return r - _ops.where(ok, _ops.sum_keep(S * r) / _ops.where(ok, den, _ops.ones_like(den)), 0 * den)
