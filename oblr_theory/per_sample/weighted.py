"""Weighted gradients from a ghost pass's kept factors, without a second forward or backward.

After ``GhostPass`` with ``keep_factors``: per trainable parameter, the per-group weighted
gradient ``V_b = Σ_g w_bg ∇θ_bg`` (each rule's ``weighted_source``: the per-sample rule applied to
``w b``, since it is linear in ``b``), the Gram ``K_bc = ⟨v_b, v_c⟩`` of the per-group gradients
(or its diagonal) and ``.grad += Σ_b V_b``.
"""

from __future__ import annotations

import torch

from .kernels import ACC, add_rows_, batch_gram, chunk_cuts, fold_weights, is_plain
from .kernels import average_into_shards, merge_sparse_rows, row_block_norms, sum_parts
from .kernels import work_dtype
from .rules.linear import LinearRule

__all__ = ["WeightedPass"]


class WeightedPass:
    """One ``weighted_gradients`` call over a ``GhostPass``'s kept factors (``gp``)."""

    def __init__(self, gp, w_bg: torch.Tensor, diagonal_only: bool):
        self.gp, self.w_bg, self.diag = gp, w_bg, diagonal_only
        self._w_cast: dict = {}  # the weights per (work dtype, device), cast once per pass
        self._fold_cache = None  # (key, folded input), reused by the layers fed one input

    def run(self, accumulate_grad: bool) -> torch.Tensor:
        """``K_bc = ⟨v_b, v_c⟩`` for ``v_b = Σ_g w_bg s_bg``; optionally ``.grad += Σ_b v_b``.

        Per trainable parameter, every hooked use contributes its ``V_b``; uses of one parameter
        (tied embedding and head, a module called twice) are summed before the Gram, so ``K`` is
        over the true shared-parameter gradient. Dense parameters are built in chunks of rows
        (at most ``max_elems`` entries of ``V`` at a time); embedding-only parameters on the
        batch's distinct token rows. Returns float64 (B, B); with ``diagonal_only`` only the
        squared norms ``||v_b||²`` are computed (float32 block norms, squared and summed in
        float64 once for all parameters), on the diagonal.

        A sharded parameter (a DTensor, FSDP2) gets its gradient as FSDP's backward would: each
        rank's full local ``Σ_b V_b`` is averaged over the ranks into the parameter's shards
        (``kernels.average_into_shards``); every rank must call this, with the same model.

        Cost: one weight-gradient matmul per linear weight (the weights folded into its narrower
        factor), its sum over groups and one norm kernel; the per-sample bias and norm-weight
        gradients kept from the Gram pass are only folded, a whole panel at once (one small
        matmul, ``_panels``).
        """
        gp = self.gp
        changed = [gp.names[pid][0] for pid, v in gp.versions.items()
                   if gp.trainable[pid]._version != v]
        if changed:
            raise ValueError(
                f"parameter(s) {changed[:3]}{' ...' if len(changed) > 3 else ''} changed in place "
                "since the ghost pass; its kept factors hold only at the parameters they were "
                "recorded at: run score_gram(..., keep_factors=True) again"
            )
        grams: list[torch.Tensor] = []
        pending = {id(u): len(u.params) for u in gp.uses}
        done = {id(p) for params, _ in gp.panels for p in params}
        done |= {id(p) for st in gp.stacks for p in st.params}
        grams.extend(self._panels(accumulate_grad))
        grams.extend(self._stacks(accumulate_grad))
        for pid, uses in gp.uses_by_param.items():
            p = gp.trainable[pid]
            sources = [] if pid in done else [self._source(u, p) for u in uses
                                              if u.grad is not None]
            if sources:
                grams.extend(self._param(p, sources, accumulate_grad))
            elif accumulate_grad and not is_plain(p):
                # no local gradient: still join the ranks' reduction, with zeros
                set_grad(p, torch.zeros(p.shape, dtype=p.dtype, device=self.w_bg.device))
            for u in uses:  # free each use's factors once all its parameters are done
                pending[id(u)] -= 1
                if pending[id(u)] == 0:
                    u.saved, u.scale, u.grad = None, None, None
                    u.vocab, u.batch_vocab = None, None
        self._fold_cache, self._w_cast = None, {}
        if not grams:
            return torch.zeros(gp.B, gp.B, dtype=ACC, device=self.w_bg.device)
        if self.diag:  # every parameter's block norms, squared and summed in one pass
            return torch.diag_embed(sum_parts(norms=grams))
        return torch.stack(grams).sum(0)

    # ------------------------------------------------------------------------- for the rules
    def weights_for(self, x: torch.Tensor) -> torch.Tensor:
        """The weights ``w_bg`` in ``x``'s work dtype and device, cast once per pass."""
        key = (work_dtype(x.dtype), x.device)
        if key not in self._w_cast:
            self._w_cast[key] = self.w_bg.to(device=x.device, dtype=key[0])
        return self._w_cast[key]

    def fold(self, x_bg_: torch.Tensor) -> torch.Tensor:
        """``w_bg x_bg…`` (``kernels.fold_weights``) with the pass's weights."""
        return fold_weights(x_bg_, self.weights_for(x_bg_))

    def folded_input(self, a_bgtd: torch.Tensor) -> torch.Tensor:
        """``w_bg a_bgt`` for a linear input, reused by consecutive uses of one input (q/k/v)."""
        key = (a_bgtd.data_ptr(), tuple(a_bgtd.shape), a_bgtd.stride())
        if self._fold_cache is None or self._fold_cache[0] != key:
            self._fold_cache = (key, self.fold(a_bgtd))
        return self._fold_cache[1]

    # ------------------------------------------------------------------------- sources
    def _source(self, use, p: torch.Tensor):
        """One use's ``V`` of ``p``, from its rule's ``weighted_source``."""
        pname = next(k for k, q in use.params.items() if q is p)
        g_bg_ = use.grad.reshape(self.gp.B, self.gp.G, *use.grad.shape[1:])
        return use.rule.weighted_source(self, use, pname, p, g_bg_)

    def _panels(self, accumulate: bool) -> list[torch.Tensor]:
        """Panels of kept small per-sample gradients (``GhostPass.to_panel``):
        ``V_b = Σ_g w_bg ∇p_bg`` for all their parameters at once (one matmul), their Grams or
        block norms, and ``.grad += Σ_b V_b`` as views of one total per panel."""
        grams = []
        for params, data_bgk in self.gp.panels:
            w_b1g = self.weights_for(data_bgk).unsqueeze(1)
            v_bk = torch.bmm(w_b1g, data_bgk).squeeze(1)
            grams.extend(row_block_norms(v_bk) if self.diag else [batch_gram(v_bk)])
            if not accumulate:
                continue
            total_k, casts, start = v_bk.sum(0), {}, 0
            for p in params:
                if p.dtype not in casts:
                    casts[p.dtype] = total_k if total_k.dtype == p.dtype else total_k.to(p.dtype)
                g = casts[p.dtype][start:start + p.numel()].view(p.shape)
                start += p.numel()
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad += g
        self.gp.panels = []
        return grams

    def _stacks(self, accumulate: bool) -> list[torch.Tensor]:
        """Stacked linear weights: ``V`` of the stacked weight in one matmul per chunk of rows,
        its Grams or block norms, and each member's ``.grad += `` its rows (views of one total)."""
        grams = []
        for st in self.gp.stacks:
            shape = torch.Size((st.bounds[-1][1], st.a.shape[-1]))
            dense = [LinearRule.weighted_rows(self, st.a, st.b)]
            part, total = self._rows(shape, st.params[0].dtype, dense, [], None, accumulate)
            grams.extend(part)
            if accumulate:
                for p, (r0, r1) in zip(st.params, st.bounds):
                    if p.grad is None:
                        p.grad = total[r0:r1]
                    else:
                        p.grad += total[r0:r1]
        self.gp.stacks = []
        return grams

    def _param(self, p: torch.Tensor, sources: list, accumulate: bool) -> list[torch.Tensor]:
        """Grams (B, B) of one parameter's summed per-group gradients, one per chunk of rows
        (``diagonal_only``: the chunks' block norms); ``.grad += Σ_b V_b``."""
        dense = [f for kind, f in sources if kind == "rows"]
        sparse = [s for kind, s in sources if kind == "sparse"]
        # the full local gradient: p.grad itself for a plain parameter (None: not yet created)
        grad = p.grad if accumulate and is_plain(p) else None
        if len(sparse) > 1:  # several embedding uses: one set of rows (a host sync)
            uniq_u, rows_bud = merge_sparse_rows([(u, rows) for u, rows, _ in sparse])
            sparse = [(uniq_u, rows_bud, chunk_cuts(uniq_u, self.gp.row_step(p.shape), p.shape[0]))]
        if not dense:  # embedding-only: the batch's distinct rows
            uniq_u, rows_bud, _ = sparse[0]
            if accumulate:
                if grad is None:
                    grad = torch.zeros(p.shape, dtype=p.dtype, device=rows_bud.device)
                add_rows_(grad, uniq_u, rows_bud.sum(0))
                set_grad(p, grad)
            return row_block_norms(rows_bud) if self.diag else [batch_gram(rows_bud)]
        grams, grad = self._rows(p.shape, p.dtype, dense, sparse, grad, accumulate)
        if accumulate:
            set_grad(p, grad if grad.shape == p.shape else grad.view(p.shape))
        return grams

    def _rows(self, shape: torch.Size, dtype: torch.dtype, dense: list, sparse: list,
              grad: torch.Tensor | None, accumulate: bool):
        """``(grams, grad)`` of a parameter of ``shape`` from row sources (``f(rows)``) and
        sparse rows, in chunks of at most ``max_elems`` entries of ``V``: the chunks' Grams or
        block norms, and (``accumulate``) ``grad + Σ_b V_b`` in ``dtype`` (``grad`` None: a new
        tensor, the total itself when there is one chunk)."""
        shape = shape or torch.Size((1,))  # rows along the first axis; a 0-d parameter is one row
        step = self.gp.row_step(shape)
        whole = step >= shape[0]  # one chunk: the gradient is assigned, not added to zeros
        grams, local = [], []
        for uniq_u, rows_bud, cuts in sparse:  # ids local to their chunk; rows in V's dtype
            local.append((uniq_u.remainder(step), rows_bud.transpose(0, 1).to(dtype), cuts))
        for i, r0 in enumerate(range(0, shape[0], step)):
            rows = None if whole else slice(r0, r0 + step)  # None: all rows, no indexing
            v_br_ = dense[0](rows)
            for f in dense[1:]:
                v_br_ = v_br_ + f(rows)
            if sparse and v_br_._is_view():
                v_br_ = v_br_.clone()  # never write into a kept factor
            for local_u, rows_ub_, cuts in local:  # this chunk's ids: U[cuts[i]:cuts[i + 1]]
                lo, hi = cuts[i], cuts[i + 1]
                add_rows_(v_br_.transpose(0, 1), local_u[lo:hi], rows_ub_[lo:hi])
            grams.extend(row_block_norms(v_br_) if self.diag else [batch_gram(v_br_)])
            if accumulate:
                total = v_br_.sum(0)  # half precision: float32 accumulation, one rounding
                total = total if total.dtype == dtype else total.to(dtype)
                if grad is None and whole:
                    grad = total
                else:
                    if grad is None:
                        grad = torch.zeros(shape, dtype=dtype, device=total.device)
                    grad.view(shape)[rows or slice(None)] += total
        return grams, grad


def set_grad(p: torch.Tensor, full: torch.Tensor) -> None:
    """``p.grad = full`` (plain parameter; a no-op when ``full`` is ``p.grad``), or, for a
    sharded parameter, ``p.grad += `` the ranks' mean of ``full`` in ``p``'s layout."""
    if is_plain(p):
        if full is not p.grad:
            p.grad = full
        return
    shards = average_into_shards(p, full)
    p.grad = shards if p.grad is None else p.grad + shards
