"""The OBLR-PO arithmetic of the TRL integration, free of TRL: advantages on gathered groups,
the T7 pieces under a data-parallel split, the T5 learning-rate factor, and the diagnostics.

Everything here works on flat per-completion tensors in TRL's order (``N = B·G`` rows, group
``b`` is rows ``b·G .. b·G + G − 1``, the order in which TRL gathers rewards across processes).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import estimators
from ..snr import (EMACurvature, SNRPieces, local_lr, secant_curvature, snr_fraction, snr_hat,
                   snr_pieces_from_norms)

__all__ = ["SNR_LOSS_WEIGHTS", "sequence_weights", "loss_scale", "group_advantages", "snr_pieces_dp",
           "informative", "lr_factor", "LocalRate", "diagnostics", "snr_metrics"]

#: TRL ``loss_type`` -> the per-sequence weight ``λ_j`` of ``A_j s_j`` in TRL's on-policy gradient,
#: up to one constant per generation batch (T7's SNR does not see that constant):
#: ``dapo`` (token sum / global token count), ``dr_grpo`` (token sum / (n · max length)) and
#: ``luspo`` (token sum / n) weigh ``s_j`` by 1; ``grpo`` (token mean per sequence) by ``1/ℓ_j``.
#: ``bnpo`` (divides by each micro-batch's own token count), ``cispo``, ``sapo`` and ``vespo``
#: (advantage-dependent ratio weights) have no such form and are refused with ``lr_rule="snr"``.
SNR_LOSS_WEIGHTS = {"dapo": "one", "dr_grpo": "one", "luspo": "one", "grpo": "inverse_length"}


def sequence_weights(loss_type: str, lengths_n: torch.Tensor) -> torch.Tensor:
    """``λ_j`` (see :data:`SNR_LOSS_WEIGHTS`), float64, shape of ``lengths_n``.

    Valid only if: ``loss_type`` is a key of :data:`SNR_LOSS_WEIGHTS`; ``ℓ_j > 0`` for ``grpo``
    (a completion with no loss token has ``s_j = 0``, so its weight is irrelevant and set to 0).
    """
    if loss_type not in SNR_LOSS_WEIGHTS:
        raise ValueError(f"loss_type={loss_type!r} has no per-sequence gradient weight; "
                         f"lr_rule='snr' supports {sorted(SNR_LOSS_WEIGHTS)}")
    ell = lengths_n.to(torch.float64)
    if SNR_LOSS_WEIGHTS[loss_type] == "one":
        return torch.ones_like(ell)
    return torch.where(ell > 0, 1.0 / ell.clamp(min=1.0), torch.zeros_like(ell))


def loss_scale(loss_type: str, n_sequences: int, n_tokens: int, max_completion_length: int) -> float:
    """``c`` in TRL's on-policy gradient ``∇L = −c Σ_j λ_j A_j s_j`` of one optimizer step.

    ``n_sequences`` and ``n_tokens``: the completions and loss tokens of the whole generation
    batch (all processes). With ``num_iterations = 1`` and ``steps_per_generation`` equal to
    ``gradient_accumulation_steps`` (one generation batch per optimizer step), at the sampling
    policy (importance ratio 1, inside the clip range) each token's loss gradient is
    ``−A_j ∇ log π(y_jt)`` times TRL's aggregation weight; summed over the accumulation window and
    averaged over the data-parallel processes, the weight of ``λ_j A_j s_j`` is:

    - ``dapo``: ``1/n_tokens`` (token sum over ``num_items_in_batch / processes`` per window);
    - ``grpo``: ``1/n_sequences`` (per-sequence token mean, ``λ_j = 1/ℓ_j``, mean over rows);
    - ``luspo``: ``1/n_sequences`` (per-sequence token sum, mean over rows);
    - ``dr_grpo``: ``1/(n_sequences · max_completion_length)``.

    Valid only if: ``loss_type`` is a key of :data:`SNR_LOSS_WEIGHTS`; the counts are positive.
    """
    if loss_type not in SNR_LOSS_WEIGHTS:
        raise ValueError(f"loss_type={loss_type!r} has no per-sequence gradient weight; "
                         f"supported: {sorted(SNR_LOSS_WEIGHTS)}")
    if n_sequences < 1 or n_tokens < 1 or max_completion_length < 1:
        raise ValueError(f"need positive counts, got n_sequences={n_sequences}, n_tokens={n_tokens}, "
                         f"max_completion_length={max_completion_length}")
    if loss_type == "dapo":
        return 1.0 / n_tokens
    if loss_type == "dr_grpo":
        return 1.0 / (n_sequences * max_completion_length)
    return 1.0 / n_sequences


def group_advantages(estimator, rewards_n: torch.Tensor, sq_norms_n: torch.Tensor | None,
                     lengths_n: torch.Tensor, group_size: int) -> torch.Tensor:
    """``A = f(r, S, ℓ)`` from the registry on whole groups: ``(N,) -> (B, G) -> (N,)``, float64.

    ``rewards_n`` etc. are the *gathered* per-completion values (all processes), so a group split
    across processes is complete here. Raises (naming the argument) on a non-finite reward, e.g.
    a completion that every reward function left unscored (``None``).
    """
    n = rewards_n.numel()
    if n % group_size:
        raise ValueError(f"{n} gathered completions are not whole groups of num_generations={group_size}")
    r = rewards_n.to(torch.float64).reshape(-1, group_size)
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards contain NaN or inf (a completion no reward function scored?); "
                         "OBLRPOTrainer needs a finite reward for every completion")
    S = sq_norms_n.to(torch.float64).reshape(-1, group_size) if sq_norms_n is not None else None
    ell = lengths_n.to(torch.float64).reshape(-1, group_size)
    needs = estimator.needs
    A = estimator.advantages(r, sq_norms=S if "sq_norms" in needs else None,
                             lengths=ell if "lengths" in needs else None)
    return A.reshape(-1)


def snr_pieces_dp(sum_group_sq: float, mean_grad_sq: float, n_groups: int) -> SNRPieces:
    """T7 from the two numbers that are exact under a data-parallel split.

    With per-group gradients ``u_b = (1/G) Σ_j λ_j A_bj s_bj`` over the ``B`` groups of all
    processes and ``ū = (1/B) Σ_b u_b``:

    - ``sum_group_sq = Σ_b ||u_b||²``: each process sums ``||u_b||²`` over the groups it holds
      whole, then the sums are added across processes (an all-reduce of one number);
    - ``mean_grad_sq = ||ū||²``: each process forms ``Σ_{b local} u_b``, the vectors are summed
      across processes (an all-reduce of one gradient), then the squared norm over ``B²``.

    Then ``Σ̂ = (Σ_b ||u_b||² − B ||ū||²)/(B−1)``, ``V̂ = Σ̂/B``, ``||∇J||²^ = ||ū||² − V̂``, each
    unbiased (T7, :func:`oblr_theory.snr.snr_pieces_from_norms`).

    Valid only if: ``B ≥ 2`` i.i.d. prompt groups, each held whole by one process.
    """
    return snr_pieces_from_norms(np.float64(sum_group_sq), np.float64(mean_grad_sq), int(n_groups))


def informative(advantages_n: torch.Tensor, rewards_n: torch.Tensor) -> bool:
    """False for a batch with no gradient signal: every advantage is 0 (e.g. every group's
    rewards equal, for any baseline estimator), hence every ``u_b = 0``, ``||ū||² = V̂ = 0`` and
    ``SNR̂ = 0/0``. "0" allows the estimator's rounding: ``max |A| ≤ 64 u max(1, max |r|)``
    with ``u`` the float64 unit roundoff (an estimator's baseline is a few operations on the
    rewards, e.g. ``Σ S_k c / Σ S_k`` for equal rewards ``c`` is ``c`` up to a few ulps).

    Such a batch says nothing about the SNR at ``θ`` (its step is a no-op for SGD), so it does
    not enter T7's EMA; folding it in as ``SNR̂ = 0`` (:func:`oblr_theory.snr.snr_hat`'s rule at
    ``V̂ = 0``) would set the T5 factor to 0 at the start of training, when sparse rewards make
    such batches common, and keep it there.
    """
    A = advantages_n.detach().to(torch.float64).abs().max()
    scale = max(1.0, float(rewards_n.detach().to(torch.float64).abs().max()))
    return bool(A > 64 * torch.finfo(torch.float64).eps / 2 * scale)


def lr_factor(snr: float, factor_min: float, factor_max: float) -> float:
    """T5's factor on the scheduled rate: ``clip(SNR/(1+SNR), factor_min, factor_max)``.

    ``η_t = η_sched(t) · factor``: the scheduled rate plays ``η_max = 1/L`` of
    ``η* = (1/L) SNR/(1+SNR)`` (T5). ``factor_min > 0`` keeps learning alive while the smoothed
    estimate of ``||∇J||²`` is not positive (``SNR̂ = 0`` by T7's clip), the floor of
    :func:`oblr_theory.snr.snr_lr`.

    Valid only if: ``0 ≤ factor_min ≤ factor_max ≤ 1``, ``SNR ≥ 0`` (inf allowed).
    """
    f = float(snr_fraction(np.float64(snr)))
    return min(max(f, factor_min), factor_max)


class LocalRate:
    """T5-local for TRL's SGD steps: ``η_t = clip((1/κ_t) SNR/(1+SNR), η_min, η_max)`` with the
    curvature ``κ_t`` of ``J`` along the recent steps from T7-corrected secants
    (:func:`oblr_theory.snr.secant_curvature`, smoothed by :class:`~oblr_theory.snr.EMACurvature`)
    and ``η_max``, ``η_min`` fractions of the scheduled rate (``η_max`` a trust region).

    Per optimizer step ``t`` (one generation batch, ``num_iterations = 1``):
    :meth:`observe` takes ``ĝ_t`` (the ascent direction of the step, in the scale of TRL's
    gradient, before clipping) and ``n̂_t`` (T7's unbiased ``||∇J||²`` in that scale) and folds
    in the secant of the previous step; :meth:`rate` gives ``η_t``; :meth:`stepped` records the
    rate the step took along ``ĝ_t`` (the learning rate times the gradient-clipping factor), so
    that ``θ_{t+1} = θ_t + η ĝ_t`` is the step the next secant divides by. Before any secant,
    ``κ_0 = 1/η_max`` (the step is then the SNR rule's ``η_max SNR/(1+SNR)``); a ``κ`` that is
    undefined (every step so far zero) keeps ``κ_0``.

    Valid only if: plain SGD (no momentum, no weight decay), so that the step is along ``ĝ_t``;
    ``ĝ_t`` is a fresh estimate given ``θ_t`` (a new generation batch per step).
    """

    def __init__(self, beta: float):
        self.curvature = EMACurvature(beta)
        self._prev = None  # (ĝ_{t−1}, n̂_{t−1}, η_{t−1} along ĝ_{t−1} or None before its step)

    def observe(self, ghat, grad_sq_norm_hat: float) -> None:
        if self._prev is not None and self._prev[2] is not None and self._prev[2] > 0:
            num, den = secant_curvature(ghat, self._prev[0], self._prev[2], self._prev[1])
            self.curvature.update(float(num), float(den))
        self._prev = (ghat, float(grad_sq_norm_hat), None)

    def kappa(self, eta_max: float) -> float:
        """``κ_t``, or ``κ_0 = 1/η_max`` where none is defined yet."""
        k = float(self.curvature.curvature) if self.curvature.steps else math.nan
        return 1.0 / eta_max if math.isnan(k) else k

    def rate(self, snr: float, eta_max: float, eta_min: float) -> float:
        return float(local_lr(float(snr), self.kappa(eta_max), eta_max, eta_min))

    def stepped(self, eta_along_ghat: float) -> None:
        if self._prev is None:
            raise RuntimeError("LocalRate.stepped before observe: no gradient of this step")
        self._prev = (self._prev[0], self._prev[1], float(eta_along_ghat))


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN (undefined) when either side is constant or has < 2 entries."""
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def diagnostics(rewards_n: torch.Tensor, sq_norms_n: torch.Tensor | None, lengths_n: torch.Tensor,
                group_size: int) -> dict[str, float]:
    """Per-generation statistics of the gathered batch (host floats, NaN where undefined):

    ``S_mean``, ``S_std`` (Bessel), ``corr_S_length`` (Pearson over completions), and the
    plug-in gradient-weighted baseline ``b̂*_b = Σ_j S_bj r_bj / Σ_j S_bj`` (T3) against the
    group mean ``r̄_b``: ``b_star_mean``, ``mean_baseline``, ``b_star_minus_mean_abs`` (mean over
    groups with ``Σ S > 0``).
    """
    r = rewards_n.detach().to(torch.float64).cpu().numpy().reshape(-1, group_size)
    out = {"S_mean": math.nan, "S_std": math.nan, "corr_S_length": math.nan,
           "b_star_mean": math.nan, "mean_baseline": float(r.mean(-1).mean()),
           "b_star_minus_mean_abs": math.nan}
    if sq_norms_n is None:
        return out
    S = sq_norms_n.detach().to(torch.float64).cpu().numpy().reshape(-1, group_size)
    ell = lengths_n.detach().to(torch.float64).cpu().numpy().reshape(-1, group_size)
    out["S_mean"] = float(S.mean())
    out["S_std"] = float(S.std(ddof=1)) if S.size > 1 else math.nan
    out["corr_S_length"] = _corr(S.ravel(), ell.ravel())
    tot = S.sum(-1)
    ok = tot > 0
    if ok.any():
        b_star = (S * r).sum(-1)[ok] / tot[ok]
        out["b_star_mean"] = float(b_star.mean())
        out["b_star_minus_mean_abs"] = float(np.abs(b_star - r.mean(-1)[ok]).mean())
    return out


def snr_metrics(pieces: SNRPieces, snr_ema: float, factor: float) -> dict[str, float]:
    """The T7 pieces, the per-batch and smoothed SNR, and the T5 factor as host floats."""
    batch = float(snr_hat(pieces)) if float(pieces.noise_var_hat) > 0 or float(pieces.mean_sq_norm) > 0 \
        else math.nan  # 0/0: undefined
    return {"snr_batch": batch, "snr_ema": float(snr_ema),
            "grad_sq_norm_hat": float(pieces.grad_sq_norm_hat), "noise_var_hat": float(pieces.noise_var_hat),
            "trace_cov_hat": float(pieces.trace_cov_hat), "mean_sq_norm": float(pieces.mean_sq_norm),
            "n_groups": float(pieces.batch_size), "lr_factor": float(factor)}
