"""The ghost rules (``GramRulesMixin``, a part of ``GhostRecorder``): from one use's factors, its
parameters' contributions to the within-group Gram ``(B, G, G)``, or with ``diagonal_only`` to
its diagonal ``S`` (per-sample squared norms). The formulas are in ``_ghost_math``; here, which rule
applies to which parameter (single use, stacked linear layers, a tied embedding / head, any other
sharing), panels of small per-sample gradients, and the sum in ``finalize``.
"""

from __future__ import annotations

import torch

from . import _ghost_diag as gd
from . import _ghost_math as gm
from ._records import _Stack, _TieState, _Use, _is_plain


class GramRulesMixin:
    """The Gram (or ``S``) rules of ``GhostRecorder`` (state set in its ``__init__``)."""

    # ----------------------------------------------------------------------------- gradients
    def _add(self, gram_bgg: torch.Tensor) -> None:
        """Add one contribution: (B, G, G), or (B, G) squared norms when ``diagonal_only``."""
        self._contributions.append(gram_bgg)

    def _add_parts(self, dots: list = (), norms: list = ()) -> None:
        """``diagonal_only``: add unreduced per-sample parts (N, k) (``gd.sum_parts``), reduced in
        float64 once for all layers in ``finalize``."""
        self._dot_parts.extend(dots)
        self._norm_parts.extend(norms)

    def _plan(self, pid: int) -> str:
        uses = self.uses_by_param[pid]
        if len(uses) == 1:
            return "single"
        kinds = sorted(u.kind for u in uses)
        if len(uses) == 2 and kinds == ["embedding", "linear"]:
            return "tie"
        return "shared"

    def _on_grad(self, use: _Use, g: torch.Tensor) -> None:
        if use.kind == "embedding":
            g = self._embedding_grad(use, g)
        if self.keep_factors:
            use.grad = g  # ``saved`` stays too: weighted_gradients rebuilds from both
        g_bg_ = None  # (B, G, …), made when a rule needs it (not for a stacked weight)
        for pname, p in use.params.items():
            if pname == "weight" and self._join_stack(use, g):
                continue
            if g_bg_ is None:
                g_bg_ = g.reshape(self.B, self.G, *g.shape[1:])
            plan = self._plan(id(p))
            if plan == "shared":
                self._accumulate_shared(use, pname, p, g_bg_)
                continue
            self._add_single(use, pname, p, g_bg_)
            if plan == "tie":
                self._tie_cross(use, p, g_bg_)
        if not self.keep_factors:
            use.saved = None
        use.got_grad = True

    # ----------------------------------------------------------------------------- stacks
    def _stackable(self, use: _Use) -> bool:
        """A linear weight that can join a stack: used once, plain (not sharded), not the output
        layer nor another wide layer (those are cropped to their own spans, ``_factors``)."""
        w = use.params.get("weight")
        return (use.kind == "linear" and w is not None and self._plan(id(w)) == "single"
                and use.module is not self.head and _is_plain(w) and w.shape[0] < 4 * w.shape[1])

    def _stack_of(self, use: _Use) -> int | None:
        """The id of the stack of linear layers fed ``use``'s input (``_stack_members[id]``, in
        forward order), or None when it stays alone. Layers fed one input ``a`` (Qwen3's q/k/v,
        gate/up) have per-sample gradients ``∇W_l,n = b_l,nᵀ a_n``, row blocks of the gradient
        ``b_nᵀ a_n`` of the stacked weight ``[W_1; W_2; …]`` with ``b = [b_1, b_2, …]``
        (concatenated features), so their summed Gram contributions are that weight's: one
        rule for the stack instead of one per layer."""
        if use.in_key is None:
            return None
        if use.stack_id == -1:  # once per input: every use fed it learns its stack
            candidates = self._by_input[use.in_key]
            members = [u for u in candidates if self._stackable(u)]
            same = len({(u.params["weight"].dtype, u.params["weight"].device) for u in members}) == 1
            stacked = len(members) > 1 and same
            if stacked:
                self._stack_members.append(members)
            for u in candidates:  # an id, not the list: a use in its own list would be a cycle
                u.stack_id = len(self._stack_members) - 1 if stacked and u in members else None
        return use.stack_id

    def _join_stack(self, use: _Use, g: torch.Tensor) -> bool:
        """Queue a stacked layer's output gradient; the stack is added once all its members'
        have arrived (``finalize`` adds any whose other members got none). False: not stacked."""
        sid = self._stack_of(use)
        if sid is None:
            return False
        arrived = self._arrived[sid]
        arrived.append((use, use.saved, g))
        if len(arrived) == len(self._stack_members[sid]):
            self._add_stack(sid)
        return True

    def _add_stack(self, sid: int) -> None:
        """Add the Gram (or ``S`` parts) of one stack's arrived members as one linear weight;
        with ``keep_factors`` keep it for the weighted pass, each member's ``grad`` becoming a
        view of the concatenated output gradient (which replaces the members' own)."""
        order = {id(u): i for i, u in enumerate(self._stack_members[sid])}
        arrived = sorted(self._arrived.pop(sid), key=lambda e: order[id(e[0])])
        a = arrived[0][1]
        a_bgtd = a.reshape(self.B, self.G, -1, a.shape[-1])
        b_bgto = torch.cat([g.reshape(*a_bgtd.shape[:3], g.shape[-1]) for _, _, g in arrived], -1)
        self._add_linear(a_bgtd, b_bgto)
        if not self.keep_factors:
            return
        bounds, start = [], 0
        for use, _, g in arrived:
            bounds.append((start, start + g.shape[-1]))
            # a member's bias (its other parameter) reads its rows; else nothing does
            use.grad = (b_bgto[..., start:start + g.shape[-1]].reshape(g.shape)
                        if len(use.params) > 1 else None)
            start += g.shape[-1]
        params = [use.params["weight"] for use, _, _ in arrived]
        self._stacks.append(_Stack(params, bounds, a_bgtd, b_bgto))
        self._stack_pids.update(map(id, params))

    def _factors(self, use: _Use, g_bg_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear factors reshaped to (B, G, T', d_in) and (B, G, T', d_out), cropped to the
        positions where ``b`` is nonzero for some sample: for the output layer, the positions
        the completion mask scores (``head_span``, no host sync); for other wide layers
        (``d_out >= 4 d_in``), the span read from ``b`` itself (``gm.active_span``)."""
        a = use.saved.reshape(self.B, self.G, -1, use.saved.shape[-1])
        g = g_bg_.reshape(self.B, self.G, -1, g_bg_.shape[-1])
        if use.span is None and use.module is self.head and self.head_span is not None:
            use.span = self.head_span
            if use.span != slice(None):
                self._span_checks.append(gm.outside_span_nonzero(g, use.span))
        elif use.span is None:  # only output layers (d_out >= 4 d_in) are worth the sync
            wide = g.shape[-1] >= 4 * a.shape[-1]
            use.span = gm.active_span(g) if wide else slice(None)
        if use.span == slice(None):
            return a, g
        return a[:, :, use.span], g[:, :, use.span]

    def span_violation(self) -> torch.Tensor | None:
        """Device bool scalar, True if the output layer's gradient was nonzero outside the
        ``head_span`` its factors were cropped to (the contributions would then be wrong);
        None when no crop was made. Read it at a host sync the caller already has."""
        if not self._span_checks:
            return None
        return torch.stack(self._span_checks).any()

    @staticmethod
    def _embedding_grad(use: _Use, g_n_: torch.Tensor) -> torch.Tensor:
        """An embedding's output gradient (N, …, d) with its ``padding_idx`` tokens zeroed (that
        row gets no gradient); applied once, on arrival, for every rule that reads it."""
        pad = use.module.padding_idx
        if pad is None:
            return g_n_
        return g_n_.masked_fill((use.saved == pad).reshape(*g_n_.shape[:-1], 1), 0)

    @staticmethod
    def _vocab(use: _Use, b: int):
        """Group ``b``'s distinct ids and inverse, from the embedding's forward hook."""
        return use.vocab[b]

    def _add_single(self, use: _Use, pname: str, p: torch.Tensor, g_bg_: torch.Tensor) -> None:
        """Add the Gram ``(B, G, G)`` of one use of one parameter (``diagonal_only``: its
        diagonal, the per-sample squared norms, mostly as unreduced parts)."""
        diag = self.diagonal_only
        if use.kind in ("linear", "conv1d"):
            if pname == "weight":
                self._add_linear(*self._factors(use, g_bg_))
                return
            g_bgto = g_bg_.reshape(self.B, self.G, -1, g_bg_.shape[-1])
            grads = gm.bias_grads(g_bgto.to(gm.work_dtype(g_bgto.dtype)))
        elif use.kind == "embedding":
            if diag:  # one ghost rule for the whole batch
                ids_nt = use.saved.reshape(self.N, -1)
                g_ntd = g_bg_.reshape(self.N, ids_nt.shape[1], -1)
                self._add_parts(dots=[gd.embedding_sq_norm_parts(ids_nt, g_ntd, self.max_elems)])
                return
            out = []
            for b in range(self.B):
                uniq_u, inv_gt = self._vocab(use, b)
                rows = gm.embedding_rows(inv_gt, uniq_u.numel(), g_bg_[b])
                out.append(gm.pair_gram(rows, rows))
            self._add(torch.stack(out))
            return
        elif pname == "weight":  # norm: divided by its weight in the panel (or below)
            grads, scale = self._norm_weight_parts(use, g_bg_, p)
            if not self._to_panel(p, grads, scale):
                self._add_rows(grads if scale is None else grads / scale)
            return
        else:
            grads = gm.norm_bias_grads(g_bg_, p.dim())
        if not self._to_panel(p, grads):
            self._add_rows(grads)

    def _add_linear(self, a_bgtd: torch.Tensor, b_bgto: torch.Tensor) -> None:
        """Add a linear weight's Gram (``diagonal_only``: its ``S`` parts) from its factors."""
        if self.diagonal_only:
            self._add_parts(*gd.linear_sq_norm_parts(
                a_bgtd, b_bgto, self.max_elems, self.route,
                ka_of=lambda: self._act_kernels(a_bgtd)))
        else:
            self._add(gm.linear_gram(a_bgtd, b_bgto, self.max_elems, self.route))

    def _add_rows(self, grads_bg_: torch.Tensor) -> None:
        """Add the Gram (or the squared norms) of per-sample gradients (B, G, …)."""
        if self.diagonal_only:
            self._add_parts(norms=gd.row_block_norms(grads_bg_.reshape(self.N, -1)))
        else:
            self._add(gm.gram_of_rows(grads_bg_.reshape(self.B, self.G, -1)))

    def _to_panel(self, p: torch.Tensor, grads_bg_: torch.Tensor,
                  scale: torch.Tensor | None = None) -> bool:
        """Queue a single-use parameter's small per-sample gradients (at most ``max_elems``
        entries), to be divided by ``scale`` (a norm weight, see ``_norm_weight_parts``), for the
        current panel; False when they are too large (added on their own).

        A panel (all queued gradients of one dtype, at most ``max_elems`` entries) is one
        ``(B, G, k)`` tensor: one division by its norm weights, its Gram or squared norms in one
        reduction for ~100 norm weights, and with ``keep_factors`` the weighted pass folds it
        with one matmul (``_weighted_panels``) instead of a few kernels per parameter."""
        n = grads_bg_.numel()
        if n > self.max_elems or (self.keep_factors and not _is_plain(p)):
            return False  # a sharded parameter keeps its place in the ranks' reduction order
        if self._pending and (self._pending[0][1].dtype != grads_bg_.dtype
                              or self._pending_elems + n > self.max_elems):
            self._flush_panel()
        self._pending.append((p, grads_bg_, scale))
        self._pending_elems += n
        return True

    def _flush_panel(self) -> None:
        if not self._pending:
            return
        params = [p for p, _, _ in self._pending]
        data = torch.cat([g.reshape(self.B, self.G, -1) for _, g, _ in self._pending], dim=2)
        if any(scale is not None for _, _, scale in self._pending):  # one division for all
            scales = [torch.ones(g.shape[2:], dtype=g.dtype, device=g.device) if scale is None
                      else scale for _, g, scale in self._pending]
            data = data / torch.cat([scale.reshape(-1) for scale in scales])  # promoted
        self._pending, self._pending_elems = [], 0
        self._add_rows(data)
        if self.keep_factors:
            self._panels.append((params, data))
            self._panel_pids.update(map(id, params))

    def _act_kernels(self, a_bgtd: torch.Tensor) -> torch.Tensor:
        """``gd.act_kernels(a)``, reused by consecutive layers with the same input (q/k/v,
        gate/up): a one-entry cache keyed by the factor's storage, shape and strides."""
        key = (a_bgtd.data_ptr(), tuple(a_bgtd.shape), a_bgtd.stride())
        if self._ka_cache is None or self._ka_cache[0] != key:
            self._ka_cache = (key, gd.act_kernels(a_bgtd))
        return self._ka_cache[1]

    @staticmethod
    def _norm_weight_parts(use: _Use, g_bg_: torch.Tensor, p: torch.Tensor):
        """``(Σ_pos b ⊙ saved, w or None)``: the per-sample norm weight gradients (B, G,
        *p.shape) are the first divided by ``w`` (``saved = y − c``), or the first itself
        (``saved = x̂``, ``w`` None)."""
        return gm.norm_weight_grads(g_bg_, use.saved.reshape(g_bg_.shape), p.dim()), use.scale

    def _norm_weight_grads(self, use: _Use, g_bg_: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Per-sample norm weight gradients (B, G, *p.shape), from x̂ or from (y − c) / w."""
        grads, scale = self._norm_weight_parts(use, g_bg_, p)
        return grads if scale is None else grads / scale  # promoted in the kernel

    def _tie_cross(self, use: _Use, p: torch.Tensor, g_bg_: torch.Tensor) -> None:
        """Cross terms ``⟨E_i, H_j⟩ + ⟨H_i, E_j⟩`` of a tied embedding / output matrix, added
        once both uses' gradients have arrived (``diagonal_only``: ``_tie_cross_diagonal``)."""
        state = self.ties.setdefault(id(p), _TieState())
        emb_use = next(u for u in self.uses_by_param[id(p)] if u.kind == "embedding")
        if self.diagonal_only:
            self._tie_cross_diagonal(use, emb_use, state, g_bg_)
            return
        if state.vocab is None:
            state.vocab = [self._vocab(emb_use, b) for b in range(self.B)]
        if use.kind != "embedding":
            a_bgtd, b_bgto = self._factors(use, g_bg_)
        cross = torch.zeros(self.B, self.G, self.G, dtype=gm.ACC, device=g_bg_.device)
        for b in range(self.B):
            uniq_u, inv_gt = state.vocab[b]
            if use.kind == "embedding":
                mine = gm.embedding_rows(inv_gt, uniq_u.numel(), g_bg_[b])
                mine_store, other_store = state.emb_rows, state.lin_rows
            else:
                mine = gm.linear_grads_rows(a_bgtd[b], b_bgto[b], uniq_u)
                mine = mine.to(gm.work_dtype(mine.dtype))
                mine_store, other_store = state.lin_rows, state.emb_rows
            if b in other_store:
                k = gm.pair_gram(mine, other_store.pop(b))
                cross[b] = k + k.T
            else:
                mine_store[b] = mine
        self._add(cross)

    def _tie_cross_diagonal(self, use: _Use, emb_use: _Use, state: _TieState, g_bg_) -> None:
        """``2⟨E_n, H_n⟩`` for the whole batch (``gd.tie_cross_parts``): the output layer's use
        leaves its input and its gradient at the input ids (``gd.head_rows_at_ids``), the
        embedding's its output gradient; whichever comes second adds the term."""
        if state.ids is None:
            state.ids = emb_use.saved.reshape(self.N, -1)
        if use.kind == "embedding":
            state.emb_b = g_bg_.reshape(self.N, state.ids.shape[1], -1)
        else:
            a_bgsd, b_bgsv = self._factors(use, g_bg_)
            k2 = gd.head_rows_at_ids(b_bgsv.reshape(self.N, -1, b_bgsv.shape[-1]), state.ids,
                                     self.max_elems)
            state.head = (a_bgsd.reshape(self.N, -1, a_bgsd.shape[-1]), k2)
        if state.emb_b is not None and state.head is not None:
            part = gd.tie_cross_parts(state.emb_b, *state.head)
            self._add_parts(dots=[part, part])  # the cross term counts twice
            state.ids, state.emb_b, state.head = None, None, None

    def _full_grads(self, use: _Use, pname: str, p: torch.Tensor, g_bg_: torch.Tensor):
        """Per-sample gradients of one use, materialised: (N, *p.shape)."""
        N = self.N
        g_n_ = g_bg_.reshape(N, *g_bg_.shape[2:])
        if use.kind in ("linear", "conv1d"):
            g_nto = g_n_.reshape(N, -1, g_n_.shape[-1])
            if pname != "weight":
                return g_nto.sum(1)
            a_ntd = use.saved.reshape(N, -1, use.saved.shape[-1])
            w = gm.linear_grads_rows(a_ntd, g_nto, slice(None))  # (N, d_out, d_in)
            return w if use.kind == "linear" else w.transpose(1, 2)
        if use.kind == "embedding":
            g_ntd = g_bg_.reshape(N, -1, p.shape[-1])
            V = p.shape[0]
            idx = (torch.arange(N, device=p.device).unsqueeze(1) * V + use.saved.reshape(N, -1))
            out = torch.zeros(N * V, p.shape[-1], dtype=g_ntd.dtype, device=p.device)
            gm.add_rows_(out, idx.reshape(-1), g_ntd.reshape(-1, p.shape[-1]))
            return out.reshape(N, *p.shape)
        if pname == "weight":
            grads = self._norm_weight_grads(use, g_bg_, p)
        else:
            grads = gm.norm_bias_grads(g_bg_, p.dim())
        return grads.reshape(N, *p.shape)

    def _accumulate_shared(self, use: _Use, pname: str, p: torch.Tensor, g_bg_: torch.Tensor):
        if self.N * p.numel() > 4 * self.max_elems:
            names = sorted({u.name for u in self.uses_by_param[id(p)]})
            raise ValueError(
                f"parameter {self.names.get(id(p), ['?'])} is shared by modules {names}; the ghost "
                f"method would need {self.N} x {p.numel()} per-sample entries. Use method='loop'"
            )
        full = self._full_grads(use, pname, p, g_bg_)
        full = full.to(gm.work_dtype(full.dtype))
        pid = id(p)
        self.shared[pid] = full if pid not in self.shared else self.shared[pid] + full

    def finalize(self, device, dtype=gm.ACC) -> torch.Tensor:
        """The total Gram ``(B, G, G)``: hooked contributions plus shared-parameter buffers.

        With ``diagonal_only`` it is ``diag(S)``: the exact diagonal, zeros off it.
        """
        for sid in list(self._arrived):  # stacks some of whose members got no gradient
            self._add_stack(sid)
        self._ka_cache = None
        self._flush_panel()
        for full in self.shared.values():
            self._add_rows(full)
        self.shared.clear()
        if self._dot_parts or self._norm_parts:
            self._add(gd.sum_parts(self._dot_parts, self._norm_parts).reshape(self.B, self.G))
            self._dot_parts, self._norm_parts = [], []
        if not self._contributions:
            return torch.zeros(self.B, self.G, self.G, dtype=dtype, device=device)
        total = torch.stack(self._contributions).sum(0)
        self._contributions.clear()
        return torch.diag_embed(total) if self.diagonal_only else total

