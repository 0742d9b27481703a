"""Linear layers: ``nn.Linear`` (``y = a Wᵀ + c``) and Hugging Face's ``Conv1D`` (``y = a W + c``,
GPT-2, ``W`` of shape ``(d_in, d_out)``).

Per-sample gradients, with ``a`` the layer input and ``b = ∂L/∂y`` its output gradient:

    ∇W_n = Σ_t b_nt a_ntᵀ   (Conv1D: its transpose),     ∇c_n = Σ_t b_nt.

Gram (two routes, the cheaper by multiply-adds, ``prefer_ghost``):

    ghost:        ⟨∇W_i, ∇W_j⟩ = Σ_{t,t'} (a_it · a_jt') (b_it · b_jt')
    materialised: ∇W_n = b_nᵀ a_n, then ⟨∇W_i, ∇W_j⟩.

Diagonal ``S_n = ||∇W_n||²`` (``prefer_ghost_diagonal``): the ghost rule on the sample's own
``T × T`` kernels, or the materialised gradient's squared norm. Weighted gradient
``V_b = Σ_g w_bg ∇W_bg = Σ_{g,t} (w_bg b_bgt) a_bgtᵀ``: one matmul, the weights folded into the
narrower factor. Linear layers fed one input (q/k/v, gate/up) are stacked by the pass into one
weight ``[W_1; W_2; …]`` with output gradient ``[b_1, b_2, …]`` (``stackable``).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..kernels import ACC, cols_of, gram_of_rows, group_outer, row_block_norms, rows_of
from ..kernels import kernel_dot_parts, sample_rows, work_dtype
from .base import LayerRule

__all__ = ["LinearRule", "Conv1DRule", "linear_gram", "linear_sq_norm_parts"]


class LinearRule(LayerRule):
    """``nn.Linear``: ``y = a Wᵀ + c`` (formulas in the module docstring)."""

    name = "linear"
    stackable = True
    tie_role = "head"  # the output layer of a tied embedding / output matrix

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def capture(self, gp, use, x, output, args, kwargs) -> None:
        if "weight" not in use.params:
            return  # a bias alone needs only b
        use.saved = x.detach()
        if self.stackable:
            use.in_key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device)
            gp.by_input[use.in_key].append(use)

    def add(self, gp, use, pname, p, g_bg_) -> None:
        if pname == "weight":
            self.add_weight(gp, *gp.linear_factors(use, g_bg_))
            return
        g_bgto = g_bg_.reshape(gp.B, gp.G, -1, g_bg_.shape[-1])
        grads = bias_grads(g_bgto.to(work_dtype(g_bgto.dtype)))
        if not gp.to_panel(p, grads):
            gp.add_rows(grads)

    @staticmethod
    def add_weight(gp, a_bgtd: torch.Tensor, b_bgto: torch.Tensor) -> None:
        """Add a weight's Gram (``diagonal_only``: its ``S`` parts) from its factors; layers fed
        one input share the activation kernels (a one-entry cache on the pass)."""
        if not gp.diagonal_only:
            gp.add(linear_gram(a_bgtd, b_bgto, gp.max_elems, gp.route))
            return

        def ka_of():
            key = (a_bgtd.data_ptr(), tuple(a_bgtd.shape), a_bgtd.stride())
            if gp.ka_cache is None or gp.ka_cache[0] != key:
                gp.ka_cache = (key, act_kernels(a_bgtd))
            return gp.ka_cache[1]

        gp.add_parts(*linear_sq_norm_parts(a_bgtd, b_bgto, gp.max_elems, gp.route, ka_of=ka_of))

    def per_sample(self, gp, use, pname, p, g_bg_) -> torch.Tensor:
        g_nto = g_bg_.reshape(gp.N, -1, g_bg_.shape[-1])
        if pname != "weight":
            return g_nto.sum(1)
        a_ntd = use.saved.reshape(gp.N, -1, use.saved.shape[-1])
        return self._layout(linear_grads_rows(a_ntd, g_nto, slice(None)))  # (N, d_out, d_in)

    @staticmethod
    def _layout(w_nod: torch.Tensor) -> torch.Tensor:
        return w_nod

    def weighted_source(self, wp, use, pname, p, g_bg_):
        if pname == "weight":
            return "rows", self.weighted_rows(wp, *wp.gp.linear_factors(use, g_bg_))
        wg_bg_ = wp.fold(g_bg_)
        v_bo = wg_bg_.reshape(wp.gp.B, -1, wg_bg_.shape[-1]).sum(1, dtype=work_dtype(p.dtype))
        return "rows", lambda r: rows_of(v_bo, r)

    @staticmethod
    def weighted_rows(wp, a_bgtd: torch.Tensor, b_bgto: torch.Tensor):
        """``f(r) -> (B, R, d_in)``: rows ``r`` of ``V`` (``group_outer``), the weights folded
        into the narrower factor (a folded input is reused by layers fed it, ``folded_input``)."""
        if b_bgto.shape[-1] < a_bgtd.shape[-1]:
            bw_bgto = wp.fold(b_bgto)
            return lambda r: group_outer(cols_of(bw_bgto, r), a_bgtd)
        aw_bgtd = wp.folded_input(a_bgtd)
        return lambda r: group_outer(cols_of(b_bgto, r), aw_bgtd)


@functools.cache
def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional: then no module is a Conv1D
        return None
    return Conv1D


class Conv1DRule(LinearRule):
    """Hugging Face's ``Conv1D`` (GPT-2): ``y = a W + c`` with ``W`` (d_in, d_out), the transpose
    of ``nn.Linear``'s layout; same Gram and diagonal, gradients transposed."""

    name = "conv1d"
    stackable = False
    tie_role = None

    def matches(self, module: nn.Module) -> bool:
        cls = _conv1d_class()
        return cls is not None and isinstance(module, cls) and module.weight is not None

    @staticmethod
    def _layout(w_nod: torch.Tensor) -> torch.Tensor:
        return w_nod.transpose(1, 2)

    @staticmethod
    def weighted_rows(wp, a_bgtd: torch.Tensor, b_bgto: torch.Tensor):
        """``f(r) -> (B, R, d_out)``: rows ``r`` of ``V`` in Conv1D's layout (rows are inputs)."""
        bw_bgto = wp.fold(b_bgto)
        return lambda r: group_outer(cols_of(a_bgtd, r), bw_bgto)


# ---------------------------------------------------------------------------- the formulas
def prefer_ghost(group_size: int, seq_len: int, d_in: int, d_out: int) -> bool:
    """Choose the cheaper linear-layer route by multiply-adds per group.

    ghost: ``G²T²(d_in + d_out)``  (activation and output-gradient Gram matrices);
    materialised: ``G T d_in d_out + G² d_in d_out`` (per-sample gradients, then their Gram).
    """
    G, T = group_size, seq_len
    ghost = G * G * T * T * (d_in + d_out)
    materialised = G * T * d_in * d_out + G * G * d_in * d_out
    return ghost < materialised


def linear_gram_ghost(a_bgtd: torch.Tensor, b_bgto: torch.Tensor, max_elems: int) -> torch.Tensor:
    """Ghost Gram of a linear weight, never forming per-sample gradients.

    ``⟨∇W_i, ∇W_j⟩ = Σ_{t,t'} (a_it · a_jt') (b_it · b_jt')``.
    Groups are processed in chunks so that a chunk's ``(GT)²`` kernels stay under ``max_elems``.
    """
    B, G, T, _ = a_bgtd.shape
    wd = work_dtype(a_bgtd.dtype)
    per_group = (G * T) ** 2
    step = max(1, max_elems // max(per_group, 1))
    out_bgg = torch.empty(B, G, G, dtype=ACC, device=a_bgtd.device)
    for b0 in range(0, B, step):
        a = a_bgtd[b0 : b0 + step].reshape(-1, G * T, a_bgtd.shape[-1])
        g = b_bgto[b0 : b0 + step].reshape(-1, G * T, b_bgto.shape[-1])
        ka = (a @ a.transpose(1, 2)).to(wd)  # (b, GT, GT)
        kb = (g @ g.transpose(1, 2)).to(wd)  # (b, GT, GT)
        prod = (ka * kb).reshape(-1, G, T, G, T)
        out_bgg[b0 : b0 + step] = prod.to(ACC).sum(dim=(2, 4))
    return out_bgg


def linear_grads_rows(
    a_ntd: torch.Tensor, b_nto: torch.Tensor, rows: slice | torch.Tensor
) -> torch.Tensor:
    """Per-sample gradient rows ``∇W_n[r] = Σ_t b_nt[r] a_ntᵀ`` for output rows ``r``: (N, R, d)."""
    b_ntr = b_nto[..., rows]
    return b_ntr.transpose(1, 2) @ a_ntd


def linear_gram_materialised(
    a_bgtd: torch.Tensor, b_bgto: torch.Tensor, max_elems: int
) -> torch.Tensor:
    """Gram of a linear weight from per-sample gradients, built in chunks of output rows.

    ``∇W_n = b_nᵀ a_n`` (rows ``r0:r1`` at a time, so at most ``max_elems`` entries live at once),
    then ``⟨∇W_i, ∇W_j⟩`` summed over chunks.
    """
    B, G, T, d_in = a_bgtd.shape
    d_out = b_bgto.shape[-1]
    a_ntd = a_bgtd.reshape(B * G, T, d_in)
    b_nto = b_bgto.reshape(B * G, T, d_out)
    step = max(1, max_elems // max(B * G * d_in, 1))
    out_bgg = torch.zeros(B, G, G, dtype=ACC, device=a_bgtd.device)
    for r0 in range(0, d_out, step):
        w_nrd = linear_grads_rows(a_ntd, b_nto, slice(r0, r0 + step))
        out_bgg += gram_of_rows(w_nrd.to(work_dtype(w_nrd.dtype)).reshape(B, G, -1))
    return out_bgg


def linear_gram(
    a_bgtd: torch.Tensor, b_bgto: torch.Tensor, max_elems: int, route: str
) -> torch.Tensor:
    """Gram of a linear weight by ``route`` in {"auto", "ghost", "materialise"}."""
    B, G, T, d_in = a_bgtd.shape
    if route == "auto":
        route = "ghost" if prefer_ghost(G, T, d_in, b_bgto.shape[-1]) else "materialise"
    if route == "ghost":
        return linear_gram_ghost(a_bgtd, b_bgto, max_elems)
    return linear_gram_materialised(a_bgtd, b_bgto, max_elems)


def bias_grads(b_bgto: torch.Tensor) -> torch.Tensor:
    """Per-sample bias gradients ``∇c_n = Σ_t b_nt``: (B, G, d_out)."""
    return b_bgto.sum(dim=2)


def prefer_ghost_diagonal(seq_len: int, d_in: int, d_out: int) -> bool:
    """Cheaper linear-layer route for the diagonal only, by multiply-adds per sample.

    ghost: ``T²(d_in + d_out)`` (the sample's own ``T × T`` activation and output-gradient
    kernels); materialised: ``T d_in d_out + d_in d_out`` (its gradient, then its squared norm).
    Equivalently ghost iff ``T (d_in + d_out) < (T + 1) d_in d_out / T``. No ``G`` factor: the
    full-Gram rule (``prefer_ghost``) pays ``G²`` pairs against ``G`` gradients, the diagonal
    ``G`` against ``G``.
    """
    T = seq_len
    return T * T * (d_in + d_out) < T * d_in * d_out + d_in * d_out


def act_kernels(a_bgtd: torch.Tensor) -> torch.Tensor:
    """Each sample's activation kernel ``Ka_n[t, t'] = a_nt · a_nt'``: (N, T, T) in a's dtype.

    Layers fed the same input (q/k/v, gate/up) share it (see ``linear_sq_norm_parts_ghost``).
    """
    B, G, T, d_in = a_bgtd.shape
    a_ntd = a_bgtd.reshape(B * G, T, d_in)
    return torch.bmm(a_ntd, a_ntd.transpose(1, 2))


def linear_sq_norm_parts_ghost(
    a_bgtd: torch.Tensor, b_bgto: torch.Tensor, max_elems: int,
    ka_ntt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Partial sums ``P[n, t] = Σ_{t'} (a_nt · a_nt') (b_nt · b_nt')``, (N, T) in the work dtype:
    ``||∇W_n||² = Σ_t P[n, t]`` (``sum_parts(dots=...)`` adds them up in float64).

    Only the sample's own ``T × T`` kernels (not the group's ``GT × GT``); samples are processed
    in chunks so that a chunk's kernels stay under ``max_elems`` entries. ``ka_ntt``: the
    activation kernels ``act_kernels(a)`` when already computed for another layer with the same
    input. Sums over ``t'`` run in the work dtype (``T ≤ BLOCK`` terms, as ``cross_rows``).

    Half precision: both kernels come out of their matmuls rounded to the layer's dtype (float32
    accumulation inside), and their product is rounded once more before the float32 sum (two
    kernels, no casts). Each term ``Ka Kb`` then carries about three roundings of ``2^-9``
    instead of two, independent across the ``T²`` terms, so ``S`` moves by far less than the
    layer's own half-precision backward moves it.
    """
    B, G, T, d_in = a_bgtd.shape
    a_ntd = a_bgtd.reshape(B * G, T, d_in)

    def ka_of(rows):
        if ka_ntt is not None:
            return sample_rows(ka_ntt, rows)
        a = sample_rows(a_ntd, rows)
        return torch.bmm(a, a.transpose(1, 2))

    return kernel_dot_parts(ka_of, b_bgto.reshape(B * G, T, b_bgto.shape[-1]), max_elems)


def linear_grad_block_norms(
    a_bgtd: torch.Tensor, b_bgto: torch.Tensor, max_elems: int
) -> list[torch.Tensor]:
    """Block norms (``row_block_norms``) of the per-sample gradients ``∇W_n = b_nᵀ a_n``, built
    in chunks of output rows (at most ``max_elems`` entries at once): parts (N, k) whose squares
    sum to ``||∇W_n||²``."""
    B, G, T, d_in = a_bgtd.shape
    d_out = b_bgto.shape[-1]
    a_ntd = a_bgtd.reshape(B * G, T, d_in)
    b_nto = b_bgto.reshape(B * G, T, d_out)
    step = max(1, max_elems // max(B * G * d_in, 1))
    parts = []
    for r0 in range(0, d_out, step):
        rows = slice(None) if step >= d_out else slice(r0, r0 + step)
        parts.extend(row_block_norms(linear_grads_rows(a_ntd, b_nto, rows)))
    return parts


def linear_sq_norm_parts(
    a_bgtd: torch.Tensor, b_bgto: torch.Tensor, max_elems: int, route: str, ka_of=None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(dots, norms)`` for ``sum_parts``: the per-sample ``||∇W_n||²`` of a linear weight by
    ``route`` ("auto" by ``prefer_ghost_diagonal``, or "ghost" / "materialise"), left unreduced.
    ``ka_of``: optional callable returning the (possibly cached) ``act_kernels(a)``, used on the
    ghost route."""
    T, d_in = a_bgtd.shape[2:]
    if route == "auto":
        route = "ghost" if prefer_ghost_diagonal(T, d_in, b_bgto.shape[-1]) else "materialise"
    if route == "ghost":
        N = a_bgtd.shape[0] * a_bgtd.shape[1]
        ka = ka_of() if ka_of is not None and N * T * T <= max_elems else None
        return [linear_sq_norm_parts_ghost(a_bgtd, b_bgto, max_elems, ka)], []
    return [], linear_grad_block_norms(a_bgtd, b_bgto, max_elems)

