"""The surrogate loss of one update and its T7 statistics, on torch tensors: the loss whose
gradient is ``−ĝ`` (docs/theory.md: Setting and notation), the per-group gradient norms ``||u_b||²`` from the
within-group Gram, ``||ĝ||²`` from the gradients (also sharded ones), the T7 pieces they give, and
the T3 plug-in baseline. Used by :mod:`oblr_theory.bridge.step` (one update) and its tests.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from .. import estimators
from ..snr import snr_pieces_from_norms

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch build without torch.distributed: no sharded gradients
    DTensor = ()

__all__ = ["surrogate_loss", "group_sq_norms", "grad_sq_norm", "batch_snr_pieces",
           "plugin_optimal_baseline"]


def surrogate_loss(seq_logp_bg: torch.Tensor, advantages_bg: torch.Tensor) -> torch.Tensor:
    """``L = −(1/(BG)) Σ_bj A_bj log π(y_bj|x_b)``; ``−∇L = ĝ = (1/(BG)) Σ_bj A_bj s_bj``.

    The advantages are constants (detached): the estimator's gradient is the score-function
    form of docs/theory.md (Setting and notation), also for ``optimal``-type estimators whose ``A`` depends on
    ``θ`` through ``S``.
    """
    if seq_logp_bg.shape != advantages_bg.shape:
        raise ValueError(f"advantages_bg {tuple(advantages_bg.shape)} must match seq_logp_bg "
                         f"{tuple(seq_logp_bg.shape)}")
    B, G = seq_logp_bg.shape
    return -(advantages_bg.detach().to(seq_logp_bg.dtype) * seq_logp_bg).sum() / (B * G)


def group_sq_norms(gram_bgg: torch.Tensor, advantages_bg: torch.Tensor) -> torch.Tensor:
    """``||u_b||² = A_bᵀ K_b A_b / G²`` for ``u_b = (1/G) Σ_j A_bj s_bj`` (T7's per-group gradient).

    Valid only if: ``gram_bgg`` holds exact inner products (``ghost`` / ``loop``), not a proxy.
    """
    G = gram_bgg.shape[-1]
    A = advantages_bg.to(gram_bgg.dtype)
    return torch.einsum("bi,bij,bj->b", A, gram_bgg, A) / G**2


def grad_sq_norm(params) -> torch.Tensor:
    """``||ĝ||² = Σ_p Σ_i (p.grad)_i²`` over the full gradients, float64 scalar (T7's
    ``||ĝ||²`` when ``p.grad = −ĝ``).

    Plain gradients: per-tensor norms by ``torch._foreach_norm`` (a few fused kernels for all
    parameters; float32 accumulation for half precision, over each whole tensor, not in the
    blocks of ``per_sample.kernels.row_block_norms``), squared and summed in float64. A DTensor
    shard's sum of squares (FSDP2) is a ``Partial(sum)`` scalar; those of one device mesh are
    added locally and reduced once (one all-reduce per mesh), so every rank must call it when any
    gradient is sharded.
    """
    params = list(params)
    if not params:
        raise ValueError("params is empty: no gradient to take the norm of")
    total = torch.zeros((), dtype=torch.float64, device=params[0].device)
    plain: dict = defaultdict(list)  # (device, dtype) -> gradients
    partial = {}  # (mesh, placements) -> Partial DTensor scalar
    for p in params:
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            sq = p.grad.detach().double().pow(2).sum()
            key = (sq.device_mesh, tuple(sq.placements))
            partial[key] = sq if key not in partial else partial[key] + sq
        else:
            plain[(p.grad.device, p.grad.dtype)].append(p.grad.detach())
    for (device, dtype), grads in plain.items():
        acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        norms = torch._foreach_norm(grads, 2, dtype=acc)
        total += torch.stack(norms).to(device=total.device, dtype=torch.float64).square().sum()
    for sq in partial.values():
        total += sq.full_tensor().to(total.device)
    return total


def batch_snr_pieces(group_sq_norm_sum, batch_size: int, mean_grad_sq_norm):
    """T7 pieces from ``Σ_b ||u_b||²``, ``B`` and ``||ĝ||²`` (``ĝ`` the batch-mean gradient), in
    float64: torch tensors stay tensors (on their device), numbers become numpy scalars."""
    def f64(x):
        return x.to(torch.float64) if isinstance(x, torch.Tensor) else np.float64(x)

    return snr_pieces_from_norms(f64(group_sq_norm_sum), f64(mean_grad_sq_norm), batch_size)


def plugin_optimal_baseline(rewards_bg, sq_norms_bg):
    """T3 plug-in per group, ``b̂*_b = Σ_j S_bj r_bj / Σ_j S_bj``, shape (B,): the baseline of the
    registry's inclusive ``optimal`` estimator (``r_j − A_j``), with its documented fallback to the
    group mean where ``Σ_j S_bj = 0``. Torch tensors or numpy arrays (the registry takes both)."""
    adv_bg = estimators.get("optimal").advantages(rewards_bg, sq_norms=sq_norms_bg)
    return (rewards_bg - adv_bg)[..., 0]
