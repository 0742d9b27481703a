"""Weighted gradients from kept factors (``WeightedMixin``, a part of ``GhostRecorder``).

After a pass with ``keep_factors``: per parameter, ``V_b = Σ_g w_bg s_bg`` from the factors
(``_ghost_math``), the Gram ``K_bc = ⟨v_b, v_c⟩`` of the per-group gradients (or its diagonal) and
``.grad += Σ_b V_b``, without a second forward or backward.
"""

from __future__ import annotations

import torch

from . import _ghost_diag as gd
from . import _ghost_math as gm
from ._records import _Use, _cols, _is_plain, _rows, average_into_shards


class WeightedMixin:
    """``weighted_gradients`` of ``GhostRecorder`` (state set in its ``__init__``)."""

    # ----------------------------------------------------------------- weighted gradients
    def release_factors(self) -> None:
        """Drop every kept factor (layer inputs and output gradients); frees their memory."""
        for use in self.uses:
            use.saved, use.scale, use.grad = None, None, None
            use.vocab, use.batch_vocab = None, None
        self._panels, self._panel_pids = [], set()
        self._stacks, self._stack_pids = [], set()
        self.uses.clear()
        self.uses_by_param.clear()
        self.ties.clear()
        self.keep_factors = False

    def weighted_gradients(self, w_bg: torch.Tensor, accumulate_grad: bool,
                           diagonal_only: bool = False) -> torch.Tensor:
        """``K_bc = ⟨v_b, v_c⟩`` for ``v_b = Σ_g w_bg s_bg``; optionally ``.grad += Σ_b v_b``.

        Per trainable parameter, every hooked use contributes its per-group weighted gradient
        ``V_b`` (``_ghost_math``: the per-sample rule applied to ``w b``); uses of one parameter
        (tied embedding and head, a module called twice) are summed before the Gram, so ``K`` is
        over the true shared-parameter gradient. Dense parameters are built in chunks of rows
        (at most ``max_elems`` entries of ``V`` at a time); embedding-only parameters on the
        batch's distinct token rows. Returns float64 (B, B); with ``diagonal_only`` only the
        squared norms ``||v_b||²`` are computed (one reduction kernel per ``V``: float32 block
        norms, squared and summed in float64 once for all parameters), on the diagonal.

        A sharded parameter (a DTensor, FSDP2) gets its gradient as FSDP's backward would: each
        rank's full local ``Σ_b V_b`` is averaged over the ranks into the parameter's shards
        (``average_into_shards``); every rank must call this, with the same model.

        Cost: one weight-gradient matmul per linear weight (the weights folded into its narrower
        factor), its sum over groups and one norm kernel; the per-sample bias and norm-weight
        gradients kept from the Gram pass are only folded, a whole panel of them at once (one
        small matmul, ``_weighted_panels``). A handful of kernels per linear weight, so that on
        a GPU the launch overhead stays small next to GRPO's own backward.
        """
        changed = [self.names[pid][0] for pid, v in self._versions.items()
                   if self.trainable[pid]._version != v]
        if changed:
            raise ValueError(
                f"parameter(s) {changed[:3]}{' ...' if len(changed) > 3 else ''} changed in place "
                "since the ghost pass; its kept factors hold only at the parameters they were "
                "recorded at: run score_gram(..., keep_factors=True) again"
            )
        grams: list[torch.Tensor] = []
        pending = {id(u): len(u.params) for u in self.uses}
        self._fold_cache, self._w_cast = None, {}
        self._w_bg, self._diag_gram = w_bg, diagonal_only
        grams.extend(self._weighted_panels(accumulate_grad))
        grams.extend(self._weighted_stacks(accumulate_grad))
        for pid, uses in self.uses_by_param.items():
            p = self.trainable[pid]
            done = pid in self._panel_pids or pid in self._stack_pids  # above
            sources = [] if done else [self._weighted_source(u, p)
                                       for u in uses if u.grad is not None]
            if sources:
                grams.extend(self._weighted_param(p, sources, accumulate_grad))
            elif accumulate_grad and not _is_plain(p):
                # no local gradient: still join the ranks' reduction, with zeros
                self._set_grad(p, torch.zeros(p.shape, dtype=p.dtype, device=w_bg.device))
            for u in uses:  # free each use's factors once all its parameters are done
                pending[id(u)] -= 1
                if pending[id(u)] == 0:
                    u.saved, u.scale, u.grad = None, None, None
                    u.vocab, u.batch_vocab = None, None
        self._fold_cache, self._w_cast, self._w_bg = None, {}, None
        self._panel_pids, self._stack_pids = set(), set()
        if not grams:
            return torch.zeros(self.B, self.B, dtype=gm.ACC, device=w_bg.device)
        if diagonal_only:  # every parameter's block norms, squared and summed in one pass
            return torch.diag_embed(gd.sum_parts(norms=grams))
        return torch.stack(grams).sum(0)

    def _weighted_panels(self, accumulate: bool) -> list[torch.Tensor]:
        """Panels of kept small per-sample gradients (``_to_panel``): ``V_b = Σ_g w_bg ∇p_bg``
        for all their parameters at once (one matmul), their Grams or block norms, and
        ``.grad += Σ_b V_b`` as views of one total per panel (one cast per parameter dtype)."""
        grams = []
        for params, data_bgk in self._panels:
            w_b1g = self._weights_for(data_bgk).unsqueeze(1)
            v_bk = torch.bmm(w_b1g, data_bgk).squeeze(1)
            grams.extend(gd.row_block_norms(v_bk) if self._diag_gram else [gm.batch_gram(v_bk)])
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
        self._panels = []
        return grams

    def _weights_for(self, x: torch.Tensor) -> torch.Tensor:
        """The pass's weights ``w_bg`` in ``x``'s work dtype and device, cast once per pass."""
        key = (gm.work_dtype(x.dtype), x.device)
        if key not in self._w_cast:
            self._w_cast[key] = self._w_bg.to(device=x.device, dtype=key[0])
        return self._w_cast[key]

    def _fold(self, x_bg_: torch.Tensor) -> torch.Tensor:
        """``w_bg x_bg…`` (``gm.fold_weights``) with the pass's weights."""
        return gm.fold_weights(x_bg_, self._weights_for(x_bg_))

    def _folded_input(self, a_bgtd: torch.Tensor) -> torch.Tensor:
        """``w_bg a_bgt`` for a linear input, reused by consecutive uses of one input (q/k/v)."""
        key = (a_bgtd.data_ptr(), tuple(a_bgtd.shape), a_bgtd.stride())
        if self._fold_cache is None or self._fold_cache[0] != key:
            self._fold_cache = (key, self._fold(a_bgtd))
        return self._fold_cache[1]

    def _weighted_source(self, use: _Use, p: torch.Tensor):
        """One use's per-group weighted gradient of ``p``: ``("rows", f)`` with ``f(slice) ->
        (B, R, …)`` rows of ``V`` along ``p``'s first axis (``f(None)``: all of them), or
        ``("sparse", (U, rows_bu…, cuts))`` (``gm.chunk_cuts``)."""
        pname = next(k for k, q in use.params.items() if q is p)
        g_bg_ = use.grad.reshape(self.B, self.G, *use.grad.shape[1:])
        if use.kind in ("linear", "conv1d") and pname == "weight":
            return "rows", self._linear_rows(use.kind, *self._factors(use, g_bg_))
        wg_bg_ = self._fold(g_bg_)
        if use.kind in ("linear", "conv1d"):  # bias
            v_bo = wg_bg_.reshape(self.B, -1, wg_bg_.shape[-1]).sum(1, dtype=gm.work_dtype(p.dtype))
            return "rows", lambda r: _rows(v_bo, r)
        if use.kind == "embedding":
            wg_bgtd = wg_bg_.reshape(self.B, self.G, -1, wg_bg_.shape[-1])
            uniq_u, inv_n, cuts = use.batch_vocab
            return "sparse", (*gm.weighted_embedding_rows(uniq_u, inv_n, wg_bgtd), cuts)
        if pname == "weight":  # norm
            v_b_ = self._norm_weight_grads(use, wg_bg_, p).sum(1)
        else:
            v_b_ = gm.norm_bias_grads(wg_bg_, p.dim()).sum(1)
        v_b_ = v_b_.reshape(self.B, *(p.shape or (1,)))  # a 0-d parameter as one row
        return "rows", lambda r: _rows(v_b_, r)

    def _linear_rows(self, kind: str, a_bgtd: torch.Tensor, b_bgto: torch.Tensor):
        """``f(r) -> (B, R, …)``: rows ``r`` of a linear weight's ``V`` (``gm.group_outer``), the
        weights folded into the narrower factor (a folded input is reused, ``_folded_input``)."""
        if kind == "linear":  # W: (d_out, d_in), rows are outputs
            if b_bgto.shape[-1] < a_bgtd.shape[-1]:
                bw_bgto = self._fold(b_bgto)
                return lambda r: gm.group_outer(_cols(bw_bgto, r), a_bgtd)
            aw_bgtd = self._folded_input(a_bgtd)
            return lambda r: gm.group_outer(_cols(b_bgto, r), aw_bgtd)
        bw_bgto = self._fold(b_bgto)  # Conv1D W: (d_in, d_out), rows are inputs
        return lambda r: gm.group_outer(_cols(a_bgtd, r), bw_bgto)

    def _weighted_stacks(self, accumulate: bool) -> list[torch.Tensor]:
        """Stacked linear weights (``_stack_of``): ``V`` of the stacked weight in one matmul per
        chunk of rows, its Grams or block norms, and each member's ``.grad += `` its rows (views
        of one total, like ``_weighted_panels``)."""
        grams = []
        for st in self._stacks:
            shape = torch.Size((st.bounds[-1][1], st.a.shape[-1]))
            dense = [self._linear_rows("linear", st.a, st.b)]
            part, total = self._weighted_rows(shape, st.params[0].dtype, dense, [], None, accumulate)
            grams.extend(part)
            if accumulate:
                for p, (r0, r1) in zip(st.params, st.bounds):
                    if p.grad is None:
                        p.grad = total[r0:r1]
                    else:
                        p.grad += total[r0:r1]
        self._stacks = []
        return grams

    def _weighted_param(self, p: torch.Tensor, sources: list, accumulate: bool) -> list[torch.Tensor]:
        """Grams (B, B) of one parameter's summed per-group gradients, one per chunk of rows
        (when the pass is ``diagonal_only``: the chunks' block norms, ``gd.row_block_norms``);
        ``.grad += Σ_b V_b``."""
        diag = self._diag_gram
        dense = [f for kind, f in sources if kind == "rows"]
        sparse = [s for kind, s in sources if kind == "sparse"]
        # the full local gradient: p.grad itself for a plain parameter (None: not yet created)
        grad = p.grad if accumulate and _is_plain(p) else None
        if len(sparse) > 1:  # several embedding uses: one set of rows (a host sync)
            uniq_u, rows_bud = gm.merge_sparse_rows([(u, rows) for u, rows, _ in sparse])
            sparse = [(uniq_u, rows_bud, gm.chunk_cuts(uniq_u, self._row_step(p.shape), p.shape[0]))]
        if not dense:  # embedding-only: the batch's distinct rows
            uniq_u, rows_bud, _ = sparse[0]
            if accumulate:
                if grad is None:
                    grad = torch.zeros(p.shape, dtype=p.dtype, device=rows_bud.device)
                gm.add_rows_(grad, uniq_u, rows_bud.sum(0))
                self._set_grad(p, grad)
            return gd.row_block_norms(rows_bud) if diag else [gm.batch_gram(rows_bud)]
        grams, grad = self._weighted_rows(p.shape, p.dtype, dense, sparse, grad, accumulate)
        if accumulate:
            self._set_grad(p, grad if grad.shape == p.shape else grad.view(p.shape))
        return grams

    def _weighted_rows(self, shape: torch.Size, dtype: torch.dtype, dense: list, sparse: list,
                       grad: torch.Tensor | None, accumulate: bool):
        """``(grams, grad)`` of a parameter of ``shape`` from row sources (``f(rows)``) and
        sparse rows, in chunks of at most ``max_elems`` entries of ``V``: the chunks' Grams or
        block norms, and (``accumulate``) ``grad + Σ_b V_b`` in ``dtype`` (``grad`` None: a new
        tensor, the total itself when there is one chunk)."""
        diag = self._diag_gram
        shape = shape or torch.Size((1,))  # rows along the first axis; a 0-d parameter is one row
        step = self._row_step(shape)
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
                gm.add_rows_(v_br_.transpose(0, 1), local_u[lo:hi], rows_ub_[lo:hi])
            grams.extend(gd.row_block_norms(v_br_) if diag else [gm.batch_gram(v_br_)])
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

    def _row_step(self, shape: torch.Size) -> int:
        """Rows of a parameter of ``shape`` per chunk of the weighted pass: at most
        ``max_elems`` entries of ``V`` (B, rows, …) at a time."""
        return max(1, self.max_elems // max(self.B * shape[1:].numel(), 1))

    @staticmethod
    def _set_grad(p: torch.Tensor, full: torch.Tensor) -> None:
        """``p.grad = full`` (plain parameter; a no-op when ``full`` is ``p.grad``), or, for a
        sharded parameter, ``p.grad += `` the ranks' mean of ``full`` in ``p``'s layout."""
        if _is_plain(p):
            if full is not p.grad:
                p.grad = full
            return
        shards = average_into_shards(p, full)
        p.grad = shards if p.grad is None else p.grad + shards
