"""Gradient signal-to-noise ratio (T7) and the learning-rate rules it governs (T5).

Array-generic: every function runs unchanged on numpy arrays and torch tensors (torch is never
imported here; every array operation goes through :mod:`oblr_theory._ops`), so the toy dynamics and
the torch bridge share one source.

The unit of independence is the **prompt group** (T7): from ``B ≥ 2`` i.i.d. per-group
gradients ``u_b = ĝ_{x_b}`` (each ``(1/G) Σ_j A_j s_j`` over one prompt's group) with mean
``ū = ĝ = (1/B) Σ_b u_b`` (the batch gradient)::

    Σ̂ = (1/(B−1)) Σ_b ||u_b − ū||²      unbiased for tr Cov(u)         (T7)
    V̂ = Σ̂ / B                            unbiased for V = tr Var(ĝ)    (T7)
    ||ū||² − V̂                           unbiased for ||E u||²  (= ||∇J||² when u is unbiased)
    SNR̂ = max(||ū||² − V̂, 0) / V̂         a ratio: biased (measured exactly in the dynamics)

The core works from the ``B × B`` Gram matrix ``K_bc = <u_b, u_c>`` only, because an LLM's
per-group gradients cannot be materialised but their inner products can (the bridge's ghost
Gram): ``||ū||² = (1/B²) Σ_bc K_bc`` and ``Σ_b ||u_b − ū||² = tr K − B ||ū||²``.

Responses within one group are *not* independent units (RLOO-type advantages couple them), so
never pass per-response gradients here; pass one gradient per prompt group.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _ops

__all__ = ["SNRPieces", "snr_pieces_from_gram", "snr_pieces", "snr_hat", "EMASNR", "ema_update",
           "snr_fraction", "constant_lr", "oracle_lr", "snr_lr",
           "secant_curvature", "EMACurvature", "local_lr"]


class SNRPieces(NamedTuple):
    """T7's estimates from one batch of ``B`` per-group gradients (scalars, or arrays over any
    leading axes of the Gram matrix).

    grad_sq_norm_hat  ``||ū||² − V̂``, unbiased for ``||E u||²`` (``||∇J||²`` if u is unbiased)
    noise_var_hat     ``V̂ = Σ̂ / B``, unbiased for ``V = tr Var(ū)``
    trace_cov_hat     ``Σ̂ = (1/(B−1)) Σ_b ||u_b − ū||²``, unbiased for ``tr Cov(u)``
    mean_sq_norm      ``||ū||²`` (plug-in; ``E = ||E u||² + V``, biased up by ``V``)
    batch_size        ``B``
    """

    grad_sq_norm_hat: Any
    noise_var_hat: Any
    trace_cov_hat: Any
    mean_sq_norm: Any
    batch_size: int


# -------------------------------------------------------------------------------- T7 pieces
def snr_pieces_from_gram(gram_bb) -> SNRPieces:
    """T7 from the Gram matrix ``K_bc = <u_b, u_c>`` of ``B ≥ 2`` i.i.d. per-group gradients.

    ``gram_bb`` has shape ``(..., B, B)`` (leading axes are independent batches, e.g. seeds)::

        ||ū||²  = (1/B²) Σ_{b,c} K_bc
        Σ̂      = (tr K − B ||ū||²) / (B − 1)        (= (1/(B−1)) Σ_b ||u_b − ū||²)
        V̂      = Σ̂ / B
        ||∇J||²^ = ||ū||² − V̂

    ``E Σ̂ = tr Cov(u)`` because ``E Σ_b ||u_b − ū||² = (B−1) tr Cov(u)`` for i.i.d. ``u_b``;
    ``E ||ū||² = ||E u||² + tr Cov(u)/B``, so ``E[||ū||² − V̂] = ||E u||²`` (T7).
    ``Σ̂`` is clipped at 0 against round-off (it is a sum of squares in exact arithmetic).

    Valid only if: the ``u_b`` are i.i.d. (one per prompt group, prompts i.i.d.), ``B ≥ 2``.
    """
    K = _ops.as_float(gram_bb)
    if K.ndim < 2 or K.shape[-1] != K.shape[-2]:
        raise ValueError(f"gram_bb must have shape (..., B, B), got {tuple(K.shape)}")
    B = int(K.shape[-1])
    if B < 2:
        raise ValueError(f"gram_bb must come from B >= 2 per-group gradients, got B = {B}")
    _ops.check_finite(K, "gram_bb")
    return snr_pieces_from_norms(K.diagonal(0, -2, -1).sum(-1), K.sum((-2, -1)) / B**2, B)


def snr_pieces_from_norms(sum_sq_norms, mean_sq_norm, batch_size: int) -> SNRPieces:
    """T7 from the only two numbers the pieces need: ``Σ_b ||u_b||²`` and ``||ū||²``::

        Σ̂ = (Σ_b ||u_b||² − B ||ū||²) / (B − 1),   V̂ = Σ̂ / B,   ||∇J||²^ = ||ū||² − V̂.

    This is how the torch bridge estimates the SNR of an LLM update without a cross-group Gram:
    ``||u_b||²`` comes from the within-group score Gram and ``||ū||²`` from the update itself.

    Valid only if: as :func:`snr_pieces_from_gram` (``B ≥ 2`` i.i.d. per-group gradients).
    """
    B = int(batch_size)
    if B < 2:
        raise ValueError(f"batch_size must be >= 2 per-group gradients for T7, got {batch_size!r}")
    trace, mean_sq = _ops.as_float(sum_sq_norms), _ops.as_float(mean_sq_norm)
    _ops.check_finite(trace, "sum_sq_norms")
    _ops.check_finite(mean_sq, "mean_sq_norm")
    trace_cov = _ops.clip_min0((trace - B * mean_sq) / (B - 1))  # Σ̂
    noise_var = trace_cov / B  # V̂
    plain = _ops.plain
    return SNRPieces(plain(mean_sq - noise_var), plain(noise_var), plain(trace_cov), plain(mean_sq), B)


def snr_pieces(u_bd) -> SNRPieces:
    """T7 from per-group gradient vectors ``u`` of shape ``(..., B, d)``: the Gram ``K = U Uᵀ``
    then :func:`snr_pieces_from_gram`.

    Valid only if: as :func:`snr_pieces_from_gram` (one row per i.i.d. prompt group).
    """
    U = _ops.as_float(u_bd)
    if U.ndim < 2:
        raise ValueError(f"u_bd must have shape (..., B, d), got {tuple(U.shape)}")
    _ops.check_finite(U, "u_bd")
    return snr_pieces_from_gram(U @ U.swapaxes(-1, -2))


def snr_hat(pieces: SNRPieces):
    """T7: ``SNR̂ = max(||ū||² − V̂, 0) / V̂``.

    Rule at ``V̂ = 0`` (all ``u_b`` equal, no measured noise): ``inf`` if the numerator is
    positive, ``0`` if it is zero (then ``ū = 0`` and any step is a no-op).

    Valid only if: ``pieces`` from :func:`snr_pieces_from_gram`. Biased as a ratio (T7).
    """
    num = _ops.clip_min0(_ops.as_float(pieces.grad_sq_norm_hat))
    den = _ops.as_float(pieces.noise_var_hat)
    inf = _ops.ones_like(num) * float("inf")
    return _ops.plain(_ops.safe_ratio(num, den, _ops.where(num > 0, inf, _ops.zeros_like(num))))


def ema_update(prev, x, beta: float):
    """One step of an exponential moving sum: ``M_t = β M_{t−1} + (1 − β) x_t``, ``M_1 = (1 − β) x_1``
    (``prev=None`` before the first step). Dividing by ``1 − βᵗ`` later removes the start-up bias,
    so ``M_t / (1 − βᵗ)`` is a weighted mean of ``x_1..x_t`` (T7's smoothed pieces).
    Valid only if ``0 ≤ β < 1``."""
    return (1 - beta) * x if prev is None else beta * prev + (1 - beta) * x


class EMASNR:
    """T7 smoothing: separate bias-corrected EMAs of the SNR's numerator and denominator.

    With ``n_t = ||ū_t||² − V̂_t`` and ``v_t = V̂_t``::

        N_t = β N_{t−1} + (1−β) n_t,     D_t = β D_{t−1} + (1−β) v_t,     N_0 = D_0 = 0
        SNR_t = max(N_t / (1−βᵗ), 0) / (D_t / (1−βᵗ)) = max(N_t, 0) / D_t

    (the Adam bias correction ``1/(1−βᵗ)`` is the same for both, so it cancels in the ratio;
    it matters for the corrected pieces :attr:`numerator` and :attr:`denominator`). The
    unclipped numerator is averaged (clipping before averaging would bias it up), so ``N_t``
    stays an unbiased estimate of the weighted average of ``||∇J_s||²``; the ratio of two
    averages has less bias than the average of ratios when ``β`` pools several batches.
    ``β = 0`` gives the per-batch :func:`snr_hat`.

    Works on numpy or torch pieces of any shape (e.g. one entry per seed). Torch users should
    pass detached pieces.

    Valid only if: ``0 ≤ β < 1``; the pieces come from :func:`snr_pieces_from_gram`.
    """

    def __init__(self, beta: float):
        if not (0.0 <= float(beta) < 1.0):
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.beta = float(beta)
        self.reset()

    def reset(self) -> None:
        """Forget the history (``t = 0``)."""
        self.num, self.den, self.steps = None, None, 0

    def update(self, pieces: SNRPieces):
        """Fold in one batch's pieces and return the smoothed ``SNR_t``."""
        n = _ops.as_float(pieces.grad_sq_norm_hat)
        v = _ops.as_float(pieces.noise_var_hat)
        self.num = ema_update(self.num, n, self.beta)
        self.den = ema_update(self.den, v, self.beta)
        self.steps += 1
        return self.snr

    @property
    def numerator(self):
        """Bias-corrected ``N_t / (1 − βᵗ)`` (an estimate of ``||∇J||²``)."""
        self._check_started()
        return self.num / (1 - self.beta**self.steps)

    @property
    def denominator(self):
        """Bias-corrected ``D_t / (1 − βᵗ)`` (an estimate of ``V``)."""
        self._check_started()
        return self.den / (1 - self.beta**self.steps)

    @property
    def snr(self):
        """``max(N̂_t, 0) / D̂_t`` with :func:`snr_hat`'s rule at ``D̂_t = 0``."""
        self._check_started()
        return snr_hat(SNRPieces(self.numerator, self.denominator, None, None, 0))

    def _check_started(self):
        if self.steps == 0:
            raise ValueError("EMASNR has no data yet: call update(pieces) first")


# -------------------------------------------------------------------------------- T5 rules
def _check_snr(snr):
    s = _ops.as_float(snr)
    if bool(_ops.isnan(s).any()) or bool((s < 0).any()):
        raise ValueError("snr must be >= 0 (inf allowed), got NaN or a negative value")
    return s


def snr_fraction(snr):
    """``SNR / (1 + SNR)`` in ``[0, 1]``, with ``inf ↦ 1`` (T5's shrinkage factor).

    Valid only if: ``SNR ≥ 0`` (inf allowed).
    """
    s = _check_snr(snr)
    fin = _ops.where(_ops.isinf(s), _ops.zeros_like(s), s)
    return _ops.plain(_ops.where(_ops.isinf(s), _ops.ones_like(s), fin / (1 + fin)))


def constant_lr(snr, eta):
    """The constant rule ``η_t = η`` (T6's first bound needs ``η ≤ 1/L``), shaped like ``snr``.

    ``snr`` is only used for its shape and type, so every rule has the signature ``rule(snr, ...)``.

    Valid only if: ``η ≥ 0``.
    """
    if not (np.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be finite and >= 0, got {eta!r}")
    return _ops.plain(_ops.ones_like(_check_snr(snr)) * eta)


def oracle_lr(snr, L):
    """T5: ``η* = (1/L) · SNR / (1 + SNR)``, the maximiser of T4's bound for an unbiased estimator.

    With the exact SNR and smoothness ``L`` (toy problems), T6 guarantees that ``E J(θ_t)``
    never decreases. Equals :func:`oblr_theory.theory.snr_step_size` (numpy-only) on numpy input.

    Valid only if: unbiased estimator, ``SNR ≥ 0``, ``L > 0``.
    """
    if not (np.isfinite(L) and L > 0):
        raise ValueError(f"L must be finite and > 0, got {L!r}")
    return _ops.plain(snr_fraction(snr) / L)


def snr_lr(snr, eta_max, eta_min=0.0):
    """T5 online: ``η_t = clip(η_max · SNR̂ / (1 + SNR̂), η_min, η_max)``.

    ``η_max`` plays ``1/L`` (unknown off toy problems, so it is tuned), ``SNR̂`` is the
    (EMA-smoothed) T7 estimate; the floor ``η_min`` keeps learning alive when ``SNR̂`` is 0.

    Valid only if: ``0 ≤ η_min ≤ η_max`` finite, ``SNR̂ ≥ 0``.
    """
    if not (np.isfinite(eta_max) and np.isfinite(eta_min) and 0 <= eta_min <= eta_max):
        raise ValueError(f"need finite 0 <= eta_min <= eta_max, got eta_min={eta_min!r}, eta_max={eta_max!r}")
    eta = eta_max * snr_fraction(snr)
    return _ops.plain(_ops.where(eta < eta_min, _ops.ones_like(eta) * eta_min, eta))


# -------------------------------------------------------------------------------- T5, local L
def secant_curvature(ghat_new, ghat_prev, eta_prev, grad_sq_norm_hat_prev):
    """T5-local: one noisy secant of the curvature of ``J`` along the last step, as ``(num, den)``.

    The last step was ``Δ = η_{t−1} d`` with ``d = ĝ_{t−1}``; ``ĝ_t`` is the fresh estimate at
    ``θ_t = θ_{t−1} + Δ``. With ``H̄ = ∫₀¹ ∇²J(θ_{t−1} + sΔ) ds`` (so ``g_t − g_{t−1} = H̄Δ``)::

        num = −(<ĝ_t, d> − n̂_{t−1}) / η_{t−1}        den = ||d||²
        E num = E[−dᵀ H̄ d],                           κ = num / den  (curvature along d)

    where ``n̂_{t−1} = ||ĝ_{t−1}||² − V̂_{t−1}`` is T7's unbiased estimate of ``||∇J(θ_{t−1})||²``
    (``grad_sq_norm_hat_prev``; ``E n̂ = E<∇J(θ_{t−1}), d>``, the quantity it stands for: where the
    exact ``∇J`` is known, passing the exact ``∇J(θ_t)`` and ``<∇J(θ_{t−1}), d>`` gives the
    exact secant). The plain secant ``−<ĝ_t − ĝ_{t−1}, d>/(η||d||²)`` uses
    ``<ĝ_{t−1}, d> = ||d||²`` instead, whose mean is ``||∇J||² + V``: the step is built from the
    same noise it is compared with, so the plain secant is biased up by ``V/(η ||d||²)``; T7's
    ``V̂`` removes that bias. ``<ĝ_t, d>`` is conditionally unbiased for ``<∇J(θ_t), d>`` because
    ``ĝ_t`` is a fresh batch. On a quadratic ``J`` (``H̄ = −A``) ``num/den = dᵀAd/||d||²`` up to
    the noise of ``ĝ_t`` and ``V̂``, exactly when both are exact.

    Shapes: ``ghat_*`` ``(..., d)``; ``eta_prev`` and ``grad_sq_norm_hat_prev`` broadcast to ``(...)``.

    Valid only if: ``ĝ_t`` is drawn independently of ``ĝ_{t−1}`` given ``θ_t``; ``ĝ`` unbiased
    (``E ĝ = ∇J``); ``η_{t−1} > 0``.
    """
    new, prev = _ops.as_float(ghat_new), _ops.as_float(ghat_prev)
    if tuple(new.shape) != tuple(prev.shape) or new.ndim < 1:
        raise ValueError(f"ghat_new and ghat_prev must have the same shape (..., d), got "
                         f"{tuple(new.shape)} and {tuple(prev.shape)}")
    eta, nhat = _ops.as_float(eta_prev), _ops.as_float(grad_sq_norm_hat_prev)
    for name, x in (("ghat_new", new), ("ghat_prev", prev), ("eta_prev", eta),
                    ("grad_sq_norm_hat_prev", nhat)):
        _ops.check_finite(x, name)
    if not bool((eta > 0).all()):
        raise ValueError("eta_prev must be > 0 (a zero step carries no curvature information); "
                         "use a positive step floor eta_min")
    num = -((new * prev).sum(-1) - _ops.plain(nhat)) / _ops.plain(eta)  # 0-d numpy -> scalar
    return _ops.plain(num), _ops.plain((prev * prev).sum(-1))


class EMACurvature:
    """T5-local smoothing: separate EMAs of :func:`secant_curvature`'s numerator and denominator,
    ``κ_t = Σ_s β^{t−s} num_s / Σ_s β^{t−s} den_s`` (a ratio of averages, like :class:`EMASNR`:
    each secant is weighted by ``||d_s||²``, so long, informative steps count more, and the
    unbiased numerators are averaged before any division).

    ``κ_t`` estimates the curvature ``−dᵀ∇²J d/||d||²`` of ``J`` along recent steps, averaged
    over about ``1/(1−β)`` steps: it lags a curvature that changes faster than that.

    Valid only if: ``0 ≤ β < 1``; the pieces come from :func:`secant_curvature`.
    """

    def __init__(self, beta: float):
        if not (0.0 <= float(beta) < 1.0):
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.beta = float(beta)
        self.num, self.den, self.steps = None, None, 0

    def update(self, num, den):
        """Fold in one secant ``(num, den)`` and return ``κ_t``."""
        self.num = ema_update(self.num, _ops.as_float(num), self.beta)
        self.den = ema_update(self.den, _ops.as_float(den), self.beta)
        self.steps += 1
        return self.curvature

    @property
    def curvature(self):
        """``κ_t = N_t / D_t`` (NaN where ``D_t = 0``: every step so far was zero, κ undefined)."""
        if self.steps == 0:
            raise ValueError("EMACurvature has no data yet: call update(num, den) first")
        nan = _ops.ones_like(self.num) * float("nan")
        return _ops.plain(_ops.safe_ratio(self.num, self.den, nan))


def local_lr(snr, curvature, eta_max, eta_min):
    """T5 with a local smoothness: ``η_t = clip((1/κ_t) · SNR̂/(1 + SNR̂), η_min, η_max)``.

    T4 along the step with ``L`` replaced by the curvature ``κ`` of ``J`` along ``ĝ``
    (``E J(θ + ηĝ) ≈ J + η||∇J||² − (κη²/2)(||∇J||² + V)``) is maximised at
    ``η = (1/κ) SNR/(1+SNR)``. ``η_max`` is a trust region on the *step* (not a stand-in for
    ``1/L``): where ``κ ≤ 0`` (``J`` convex along the step, no maximiser of the model) or
    ``κ < SNR/(1+SNR)/η_max``, the step is ``η_max``; ``κ = +inf`` or ``SNR̂ = 0`` (no measured
    signal, whatever ``κ``) gives ``η_min``.

    Valid only if: ``0 < η_min ≤ η_max`` finite; ``SNR̂ ≥ 0``; ``κ`` not NaN (an undefined
    curvature is refused: start the rule from a stated ``κ_0``, e.g. ``1/η_max``); the
    quadratic model of ``J`` along ``ĝ`` holds over one step (κ changes little over a step).
    """
    if not (np.isfinite(eta_max) and np.isfinite(eta_min) and 0 < eta_min <= eta_max):
        raise ValueError(f"need finite 0 < eta_min <= eta_max, got eta_min={eta_min!r}, eta_max={eta_max!r}")
    frac = _ops.as_float(snr_fraction(snr))
    k = _ops.as_float(curvature)
    if bool(_ops.isnan(k).any()):
        raise ValueError("curvature contains NaN (undefined); pass a starting value such as 1/eta_max")
    k = k + 0 * frac  # broadcast
    hi = _ops.ones_like(k) * eta_max
    # frac ≥ κ η_max (this covers κ ≤ 0) → cap; else frac/κ with κ > 0
    eta = _ops.where(frac >= k * eta_max, hi, frac / _ops.where(k > 0, k, _ops.ones_like(k)))
    eta = _ops.where(frac > 0, eta, _ops.zeros_like(eta))  # no measured signal: the floor
    lo = _ops.ones_like(eta) * eta_min
    return _ops.plain(_ops.where(eta > lo, eta, lo))
