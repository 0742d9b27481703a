"""Embeddings: ``nn.Embedding``, ``y_t = E[i_t]``.

Per-sample gradient, with ``b = ∂L/∂y`` (zero at ``padding_idx`` tokens, whose row gets none):

    ∇E_n[v] = Σ_{t : i_nt = v} b_nt.

Gram: rows outside a group's distinct ids ``U`` are zero for every sample of the group, so
``⟨∇E_i, ∇E_j⟩`` is taken over the ``|U|`` rows (``embedding_rows``). Diagonal: the linear ghost
rule with the one-hot kernel ``[i_nt = i_nt']`` for ``a aᵀ`` (``embedding_sq_norm_parts``).
Weighted gradient: ``V_b[u] = Σ_g Σ_{t: i_bgt = U[u]} w_bg b_bgt`` on the batch's distinct ids
(``weighted_embedding_rows``).

Embedding outputs root the pass's single backward (``roots_backward``), so every
``nn.Embedding`` is hooked, trainable or not. A module whose output is not ``E[i]`` (times the
rule's ``scale``) is refused on its first call (``check_form``): a subclass that changes the
lookup needs its own rule (``scaled_embedding.py`` is one).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..kernels import add_rows_, chunk_cuts, group_vocab, kernel_dot_parts, pair_gram
from ..kernels import sample_rows, work_dtype
from ..records import forward_identity
from .base import LayerRule

__all__ = ["EmbeddingRule", "embedding_rows", "embedding_sq_norm_parts", "weighted_embedding_rows"]

# modules whose output was checked to be E[i]·scale, with the forward that was checked
_FORM_CHECKED: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


class EmbeddingRule(LayerRule):
    """``nn.Embedding``: ``y_t = E[i_t]`` (formulas in the module docstring)."""

    name = "embedding"
    roots_backward = True
    tie_role = "embedding"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Embedding)

    def scale(self, module: nn.Module) -> torch.Tensor | None:
        """The factor ``s`` of ``y_t = s E[i_t]``; None for 1."""
        return None

    def check(self, name, module, own) -> None:
        if own and (module.max_norm is not None or module.scale_grad_by_freq or module.sparse):
            raise ValueError(
                f"module '{name}' ({type(module).__name__}) uses max_norm, scale_grad_by_freq or "
                "sparse gradients, which the ghost method does not support; use method='loop'"
            )

    def check_form(self, use, x: torch.Tensor, output: torch.Tensor) -> None:
        """On a module's first call: its first sample's output is ``s E[i]``, else refuse."""
        module = use.module
        if _FORM_CHECKED.get(module) is forward_identity(module):
            return
        with torch.no_grad():
            expect = nn.functional.embedding(x[:1], module.weight)
            s = self.scale(module)
            if s is not None:
                expect = expect * s.to(expect.dtype)
            ok = expect.shape == output[:1].shape and bool((expect == output[:1].detach()).all())
        if not ok:
            raise ValueError(
                f"module '{use.name}' ({type(module).__name__}) does not return y = "
                f"{'s·' if self.scale(module) is not None else ''}E[ids]; the ghost method has no "
                "rule for it (add one in oblr_theory/per_sample/rules/, or use method='loop')"
            )
        _FORM_CHECKED[module] = forward_identity(module)

    def capture(self, gp, use, x, output, args, kwargs) -> None:
        use.saved = x.detach()
        if not output.requires_grad:
            output.requires_grad_()  # a frozen embedding still roots the backward pass
        gp.roots.append((use, output))
        if not use.params:
            return
        self.check_form(use, x, output)
        # distinct ids now: their host syncs are cheap while the device queue is short
        ids_bgt = use.saved.reshape(gp.B, gp.G, -1)
        if not gp.diagonal_only:  # the full Gram's per-group rows
            use.vocab = [group_vocab(ids_bgt[b]) for b in range(gp.B)]
        if gp.keep_factors:  # and where the weighted pass's chunks of rows start in it
            w = use.params["weight"]
            uniq_u, inv_n = group_vocab(use.saved.reshape(-1))
            use.batch_vocab = (uniq_u, inv_n, chunk_cuts(uniq_u, gp.row_step(w.shape), w.shape[0]))

    def output_grad(self, use, g: torch.Tensor) -> torch.Tensor:
        """``∂L/∂E[i_t]`` per token: ``s b`` with ``padding_idx`` tokens zeroed (that row gets no
        gradient); applied once, on arrival, for every formula that reads it."""
        s = self.scale(use.module)
        if s is not None:
            g = g * s.to(device=g.device, dtype=g.dtype)
        pad = use.module.padding_idx
        if pad is None:
            return g
        return g.masked_fill((use.saved == pad).reshape(*g.shape[:-1], 1), 0)

    def add(self, gp, use, pname, p, g_bg_) -> None:
        if gp.diagonal_only:  # one ghost rule for the whole batch
            ids_nt = use.saved.reshape(gp.N, -1)
            g_ntd = g_bg_.reshape(gp.N, ids_nt.shape[1], -1)
            gp.add_parts(dots=[embedding_sq_norm_parts(ids_nt, g_ntd, gp.max_elems)])
            return
        out = []
        for b in range(gp.B):
            uniq_u, inv_gt = use.vocab[b]
            rows = embedding_rows(inv_gt, uniq_u.numel(), g_bg_[b])
            out.append(pair_gram(rows, rows))
        gp.add(torch.stack(out))

    def per_sample(self, gp, use, pname, p, g_bg_) -> torch.Tensor:
        N, V = gp.N, p.shape[0]
        g_ntd = g_bg_.reshape(N, -1, p.shape[-1])
        idx = torch.arange(N, device=p.device).unsqueeze(1) * V + use.saved.reshape(N, -1)
        out = torch.zeros(N * V, p.shape[-1], dtype=g_ntd.dtype, device=p.device)
        add_rows_(out, idx.reshape(-1), g_ntd.reshape(-1, p.shape[-1]))
        return out.reshape(N, *p.shape)

    def weighted_source(self, wp, use, pname, p, g_bg_):
        wg_bg_ = wp.fold(g_bg_)
        wg_bgtd = wg_bg_.reshape(wp.gp.B, wp.gp.G, -1, wg_bg_.shape[-1])
        uniq_u, inv_n, cuts = use.batch_vocab
        return "sparse", (*weighted_embedding_rows(uniq_u, inv_n, wg_bgtd), cuts)


# ---------------------------------------------------------------------------- the formulas
def embedding_rows(inv_gt: torch.Tensor, n_rows: int, b_gtd: torch.Tensor) -> torch.Tensor:
    """Per-sample embedding gradient on the group's rows ``U``: ``E_j[u] = Σ_{t: i_jt = U[u]} b_jt``.

    Rows of the embedding outside ``U`` have zero gradient for every sample of the group.
    Returns (G, |U|, d) in the work dtype.
    """
    G, T, d = b_gtd.shape
    wd = work_dtype(b_gtd.dtype)
    flat_idx = (torch.arange(G, device=inv_gt.device).unsqueeze(1) * n_rows + inv_gt).reshape(-1)
    rows = torch.zeros(G * n_rows, d, dtype=wd, device=b_gtd.device)
    add_rows_(rows, flat_idx, b_gtd.reshape(G * T, d))
    return rows.reshape(G, n_rows, d)


def embedding_sq_norm_parts(ids_nt: torch.Tensor, b_ntd: torch.Tensor, max_elems: int) -> torch.Tensor:
    """Partial sums ``P[n, t] = Σ_{t'} [i_nt = i_nt'] (b_nt · b_nt')`` (N, T) of an embedding's
    per-sample ``||∇E_n||²`` (``sum_parts(dots=...)``), with ``b`` the output gradient (zero at
    padding positions, ``padding_idx``).

    ``∇E_n[v] = Σ_{t: i_nt = v} b_nt``, so ``||∇E_n||²`` is the linear ghost rule with the
    one-hot inputs' kernel ``[i_nt = i_nt']`` for ``a aᵀ``: a comparison and one matmul for the
    whole batch, whatever its vocabulary. Samples in chunks of at most ``max_elems`` kernel
    entries; products rounded to ``b``'s dtype and summed in its work dtype (as
    ``linear_sq_norm_parts_ghost``).
    """
    def same_id(rows):
        ids = sample_rows(ids_nt, rows)
        return ids.unsqueeze(2) == ids.unsqueeze(1)

    return kernel_dot_parts(same_id, b_ntd, max_elems)


def weighted_embedding_rows(
    uniq_u: torch.Tensor, inv_n: torch.Tensor, wb_bgtd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group weighted embedding gradient on the batch's distinct ids ``U``.

    ``V_b[u] = Σ_g Σ_{t: i_bgt = U[u]} w_bg b_bgt`` (``wb = w b`` already folded); rows outside
    ``U`` are zero for every group. ``(U, inv)``: ``group_vocab`` of the batch's ids, flattened
    in (b, g, t) order. Returns ``(U, rows_bud)`` with rows (B, |U|, d).
    """
    B, d = wb_bgtd.shape[0], wb_bgtd.shape[-1]
    n_u = uniq_u.numel()
    per_group = inv_n.numel() // B
    group_n = torch.arange(B, device=inv_n.device).repeat_interleave(per_group)
    wd = work_dtype(wb_bgtd.dtype)
    rows = torch.zeros(B * n_u, d, dtype=wd, device=wb_bgtd.device)
    add_rows_(rows, group_n * n_u + inv_n.reshape(-1), wb_bgtd.reshape(-1, d))
    return uniq_u, rows.reshape(B, n_u, d)

