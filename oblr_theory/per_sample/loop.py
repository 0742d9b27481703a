"""The reference: per-sample gradients by one backward pass per sequence.

Exact for any model (no rule, no independence assumption beyond the sequences' own log-probs);
about ``G`` times the cost of training. The ghost pass is tested against it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["trainable_parameters", "group_gram", "gram_float64"]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad``, each once (tied parameters are one parameter)."""
    return [p for p in model.parameters() if p.requires_grad]


def gram_float64(flat_gk: list[torch.Tensor], chunk: int = 2**22) -> torch.Tensor:
    """``K[i, j] = x_i · x_j`` accumulated in float64, ``chunk`` entries of each vector at a time."""
    n = flat_gk[0].numel()
    out_gg = torch.zeros(len(flat_gk), len(flat_gk), dtype=torch.float64, device=flat_gk[0].device)
    for c0 in range(0, n, chunk):
        m_gk = torch.stack([x[c0 : c0 + chunk] for x in flat_gk]).to(torch.float64)
        out_gg += m_gk @ m_gk.T
    return out_gg


def group_gram(seq_g: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    """``K[i, j] = Σ_params ⟨∂ seq_g[i]/∂θ, ∂ seq_g[j]/∂θ⟩``, float64 (G, G), from ``G`` backward
    passes of one group's sequence log-probs ``seq_g`` (G,). Memory: ``G`` copies of the
    trainable parameters."""
    G = seq_g.shape[0]
    gram_gg = torch.zeros(G, G, dtype=torch.float64, device=seq_g.device)
    if not params:
        return gram_gg
    per_seq = [torch.autograd.grad(seq_g[j], params, retain_graph=j < G - 1, allow_unused=True)
               for j in range(G)]
    for k, p in enumerate(params):
        cols = [per_seq[j][k] for j in range(G)]
        if all(c is None for c in cols):
            continue
        flat_gk = [(c if c is not None else torch.zeros_like(p)).reshape(-1) for c in cols]
        gram_gg += gram_float64(flat_gk)
    return gram_gg
