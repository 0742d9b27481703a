"""Tied embedding and output matrix (``embed_tokens`` / ``lm_head`` sharing one ``(V, d)`` weight).

With ``E_j`` and ``H_j`` the per-sample gradients of the two uses (``embedding.py``, ``linear.py``),

    ⟨E_i + H_i, E_j + H_j⟩ = ⟨H_i, H_j⟩ + ⟨E_i, E_j⟩ + ⟨E_i, H_j⟩ + ⟨H_i, E_j⟩,

where ``E_j`` is zero outside the group's token rows ``U``, so the cross terms need ``H_j[U]``
only: each use adds its own Gram through its layer rule, and whichever use arrives second adds
the cross terms. Diagonal: ``||E_n + H_n||² = ||E_n||² + ||H_n||² + 2⟨E_n, H_n⟩`` with

    ⟨E_n, H_n⟩ = Σ_t b_nt · ∇H_n[i_nt] = Σ_{t,s} (b_nt · a_ns) b^H_ns[i_nt]   (``tie_cross_parts``).

The weighted pass sums both uses' ``V_b`` before its Gram (``WeightedPass``), so it needs no rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..kernels import ACC, pair_gram, work_dtype
from .base import ParamRule
from .embedding import embedding_rows
from .linear import linear_grads_rows

__all__ = ["TiedRule", "head_rows_at_ids", "tie_cross_parts"]


@dataclass
class TieState:
    vocab: list | None = None  # per group: (U, inverse_gt)
    emb_rows: dict = field(default_factory=dict)  # group -> (G, |U|, d)
    lin_rows: dict = field(default_factory=dict)  # group -> (G, |U|, d)
    # diagonal_only: the input ids (N, T), and what the first use to arrive leaves
    ids: torch.Tensor | None = None
    emb_b: torch.Tensor | None = None  # the embedding's output gradient (N, T, d)
    head: tuple | None = None  # the output layer's input (N, S, d), its gradient at the ids


class TiedRule(ParamRule):
    """One embedding use and one output-layer use of one matrix (formulas above)."""

    name = "tied"

    def matches(self, uses: list) -> bool:
        roles = sorted(str(u.rule.tie_role) for u in uses)
        return roles == ["embedding", "head"]

    def add(self, gp, use, pname, p, g_bg_) -> None:
        use.rule.add(gp, use, pname, p, g_bg_)
        state = gp.state.setdefault(self.name, {}).setdefault(id(p), TieState())
        emb_use = next(u for u in gp.uses_by_param[id(p)] if u.rule.tie_role == "embedding")
        if gp.diagonal_only:
            self._cross_diagonal(gp, use, emb_use, state, g_bg_)
        else:
            self._cross(gp, use, emb_use, state, g_bg_)

    def reset(self, gp) -> None:
        gp.state.pop(self.name, None)

    @staticmethod
    def _cross(gp, use, emb_use, state: TieState, g_bg_) -> None:
        """``⟨E_i, H_j⟩ + ⟨H_i, E_j⟩`` per group, once both uses' gradients have arrived."""
        if state.vocab is None:
            state.vocab = [emb_use.vocab[b] for b in range(gp.B)]
        is_emb = use.rule.tie_role == "embedding"
        if not is_emb:
            a_bgtd, b_bgto = gp.linear_factors(use, g_bg_)
        cross = torch.zeros(gp.B, gp.G, gp.G, dtype=ACC, device=g_bg_.device)
        for b in range(gp.B):
            uniq_u, inv_gt = state.vocab[b]
            if is_emb:
                mine = embedding_rows(inv_gt, uniq_u.numel(), g_bg_[b])
                mine_store, other_store = state.emb_rows, state.lin_rows
            else:
                mine = linear_grads_rows(a_bgtd[b], b_bgto[b], uniq_u)
                mine = mine.to(work_dtype(mine.dtype))
                mine_store, other_store = state.lin_rows, state.emb_rows
            if b in other_store:
                k = pair_gram(mine, other_store.pop(b))
                cross[b] = k + k.T
            else:
                mine_store[b] = mine
        gp.add(cross)

    @staticmethod
    def _cross_diagonal(gp, use, emb_use, state: TieState, g_bg_) -> None:
        """``2⟨E_n, H_n⟩`` for the whole batch (``tie_cross_parts``): the output layer's use
        leaves its input and its gradient at the input ids (``head_rows_at_ids``), the
        embedding's its output gradient; whichever comes second adds the term."""
        if state.ids is None:
            state.ids = emb_use.saved.reshape(gp.N, -1)
        if use.rule.tie_role == "embedding":
            state.emb_b = g_bg_.reshape(gp.N, state.ids.shape[1], -1)
        else:
            a_bgsd, b_bgsv = gp.linear_factors(use, g_bg_)
            k2 = head_rows_at_ids(b_bgsv.reshape(gp.N, -1, b_bgsv.shape[-1]), state.ids,
                                  gp.max_elems)
            state.head = (a_bgsd.reshape(gp.N, -1, a_bgsd.shape[-1]), k2)
        if state.emb_b is not None and state.head is not None:
            part = tie_cross_parts(state.emb_b, *state.head)
            gp.add_parts(dots=[part, part])  # the cross term counts twice
            state.ids, state.emb_b, state.head = None, None, None


# ---------------------------------------------------------------------------- the formulas
def head_rows_at_ids(b_nsv: torch.Tensor, ids_nt: torch.Tensor, max_elems: int) -> list[torch.Tensor]:
    """``K2[n, s, t] = b_ns[i_nt]``: an output layer's gradient at the input tokens' rows,
    (N, S, T) in chunks of samples of at most ``max_elems`` entries (``tie_cross_parts``)."""
    N, S, _ = b_nsv.shape
    T = ids_nt.shape[1]
    step = max(1, max_elems // max(S * T, 1))
    return [torch.gather(b_nsv[n0:n0 + step], 2, ids_nt[n0:n0 + step].unsqueeze(1).expand(-1, S, -1))
            for n0 in range(0, N, step)]


def tie_cross_parts(
    b_ntd: torch.Tensor, a_nsd: torch.Tensor, k2_chunks: list[torch.Tensor]
) -> torch.Tensor:
    """Partial sums (N, T) of ``⟨∇E_n, ∇H_n⟩`` for a matrix used as embedding ``E`` (input ids
    ``i``, output gradient ``b``, (N, T, d)) and as output layer ``H`` (input ``a`` (N, S, d),
    gradient rows at the ids ``k2 = head_rows_at_ids(...)``, chunks of (n, S, T)):

    ``⟨∇E_n, ∇H_n⟩ = Σ_t b_nt · ∇H_n[i_nt] = Σ_{t,s} (b_nt · a_ns) K2[n, s, t]``,

    one matmul and a product per chunk (the diagonal's tie term, ``sum_parts(dots=...)``).
    """
    wd = work_dtype(b_ntd.dtype)
    parts, n0 = [], 0
    for k2_nst in k2_chunks:
        n1 = n0 + k2_nst.shape[0]
        k1_nts = torch.bmm(b_ntd[n0:n1], a_nsd[n0:n1].transpose(1, 2))
        parts.append((k1_nts * k2_nst.transpose(1, 2)).sum(-1, dtype=wd))
        n0 = n1
    return parts[0] if len(parts) == 1 else torch.cat(parts)

