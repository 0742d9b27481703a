"""Pure functions: within-group Gram matrices of per-sample gradients from layer factors.

For a batch flattened to ``N = B·G`` independent sequences, the gradient of
``L = Σ_n seq_logp_n`` with respect to sequence ``n``'s activations is the gradient of
``seq_logp_n`` alone (per-sample independence). So a layer's per-sample parameter gradient can
be rebuilt from what one backward pass sees at that layer:

- linear ``y = W a (+ c)``:  ``∇W_n = Σ_t b_nt a_ntᵀ``,  ``∇c_n = Σ_t b_nt``;
- embedding ``y_t = E[i_t]``: ``∇E_n[v] = Σ_{t : i_nt = v} b_nt``;
- elementwise affine norm ``y = x̂ ⊙ w (+ c)``: ``∇w_n = Σ_pos b_n ⊙ x̂_n``, ``∇c_n = Σ_pos b_n``,

where ``a`` is the layer input, ``b = ∂L/∂y`` the output gradient, and "pos" runs over every
axis but the sample axis and the parameter axes (positions and, for Qwen3's ``q_norm`` /
``k_norm``, heads). Gram entries are Frobenius inner products ``⟨∇θ_i, ∇θ_j⟩`` for ``i, j`` in
one group. Every function returns float64 ``(B, G, G)``.
"""

from __future__ import annotations

import torch

ACC = torch.float64  # the Gram is always accumulated in float64 (it is tiny)


BLOCK = 2**16  # float32 partial dot products run over at most this many entries


def cross_rows(x_bgk: torch.Tensor, y_bgk: torch.Tensor) -> torch.Tensor:
    """``K[b, i, j] = x_bi · y_bj`` for (B, G, K) tensors, returned in float64.

    Float64 inputs are multiplied directly. Lower precision is multiplied in float32 in blocks of
    ``BLOCK`` entries whose partial sums are added in float64: a float32 dot product over the
    ``d_in·d_out`` entries of a weight would lose about four digits. The blocks of one row ``b``
    go through one batched matmul (a strided view, no Python loop over blocks).
    """
    if x_bgk.dtype == ACC:
        return x_bgk @ y_bgk.to(ACC).transpose(1, 2)
    B, G, K = x_bgk.shape
    H = y_bgk.shape[1]
    n_full = K // BLOCK
    main = n_full * BLOCK
    out_bgg = torch.zeros(B, G, H, dtype=ACC, device=x_bgk.device)
    for b in range(B):
        if n_full:
            xb = x_bgk[b, :, :main].float().reshape(G, n_full, BLOCK).transpose(0, 1)
            yb = y_bgk[b, :, :main].float().reshape(H, n_full, BLOCK).transpose(0, 1)
            out_bgg[b] += torch.bmm(xb, yb.transpose(1, 2)).to(ACC).sum(0)  # (n, G, H) -> (G, H)
        if main < K:
            xr, yr = x_bgk[b, :, main:].float(), y_bgk[b, :, main:].float()
            out_bgg[b] += (xr @ yr.T).to(ACC)
    return out_bgg


def gram_of_rows(x_bgk: torch.Tensor) -> torch.Tensor:
    """``K[b, i, j] = x_bi · x_bj`` for per-sample vectors ``x`` of shape (B, G, K), float64."""
    return cross_rows(x_bgk, x_bgk)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Gram factors of half-precision layers are combined in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def prefer_ghost(group_size: int, seq_len: int, d_in: int, d_out: int) -> bool:
    """Choose the cheaper linear-layer route by multiply-adds per group.

    ghost: ``G²T²(d_in + d_out)``  (activation and output-gradient Gram matrices);
    materialised: ``G T d_in d_out + G² d_in d_out`` (per-sample gradients, then their Gram).
    """
    G, T = group_size, seq_len
    ghost = G * G * T * T * (d_in + d_out)
    materialised = G * T * d_in * d_out + G * G * d_in * d_out
    return ghost < materialised


def live_span(live_t: torch.Tensor, min_saving: float = 0.125) -> slice:
    """Positions ``t0:t1`` spanning every True entry of ``live_t`` (T,), with one host sync.

    Returns ``slice(None)`` unless the span drops at least ``min_saving`` of the positions (a
    crop copies the factors), ``slice(0, 0)`` when nothing is live.
    """
    T = live_t.shape[0]
    idx = live_t.nonzero().flatten()
    if idx.numel() == 0:
        return slice(0, 0)
    t0, t1 = int(idx[0]), int(idx[-1]) + 1
    return slice(t0, t1) if (T - (t1 - t0)) >= min_saving * T else slice(None)


def active_span(b_bgto: torch.Tensor, min_saving: float = 0.125) -> slice:
    """Positions ``t0:t1`` outside which the output gradient is zero for every sample.

    Positions where ``b = 0`` add nothing to ``Σ_t b_t a_tᵀ`` (the LM head's prompt positions,
    right padding), so the linear factors can be cropped to the span (``live_span``). Reads
    ``b``, so the host waits for the backward pass up to this layer.
    """
    live_t = ((b_bgto.amax(-1) != 0) | (b_bgto.amin(-1) != 0)).flatten(0, 1).any(0)
    return live_span(live_t, min_saving)


def logit_span(completion_nt: torch.Tensor, min_saving: float = 0.125) -> slice:
    """Logit positions whose output gradient can be nonzero, from the completion mask alone.

    The logits at position ``t`` score token ``t + 1``
    (``logprobs.token_logprobs_from_logits``), so ``∂L/∂z_t = 0`` for every sample unless some
    sample has a completion token at ``t + 1``. Known before the forward pass (its host sync
    is free there), unlike ``active_span`` of the LM head's gradient; ``outside_span_nonzero``
    checks it on the device.
    """
    live_t = torch.zeros(completion_nt.shape[1], dtype=torch.bool, device=completion_nt.device)
    live_t[:-1] = completion_nt[:, 1:].any(0)
    return live_span(live_t, min_saving)


def outside_span_nonzero(b_bgto: torch.Tensor, span: slice) -> torch.Tensor:
    """Device bool scalar: does the output gradient have a nonzero entry outside ``span``
    (positions, axis 2)? Checked later, at a host sync the caller already has."""
    T = b_bgto.shape[2]
    parts = [b_bgto[:, :, r] for r in (slice(0, span.start), slice(span.stop, T))
             if r.stop > r.start]
    if not parts:
        return torch.zeros((), dtype=torch.bool, device=b_bgto.device)
    return torch.stack([(x != 0).any() for x in parts]).any()


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


def norm_weight_grads(
    b_bgp_: torch.Tensor, xhat_bgp_: torch.Tensor, param_dims: int
) -> torch.Tensor:
    """Per-sample affine-norm weight gradients ``∇w_n = Σ_pos b_n ⊙ x̂_n``.

    Inputs (B, G, *pos, *param_shape); the ``pos`` axes (positions, heads) are summed.
    Returns (B, G, *param_shape) in the work dtype. Half precision: the product is rounded to
    the factors' dtype (as the layer's own backward rounds it) and summed in float32, two
    kernels and no casts.
    """
    prod = b_bgp_ * xhat_bgp_
    wd = work_dtype(prod.dtype)
    pos_axes = tuple(range(2, prod.dim() - param_dims))
    return prod.sum(dim=pos_axes, dtype=wd) if pos_axes else prod.to(wd)


def norm_bias_grads(b_bgp_: torch.Tensor, param_dims: int) -> torch.Tensor:
    """Per-sample affine-norm bias gradients ``∇c_n = Σ_pos b_n``: (B, G, *param_shape)."""
    pos_axes = tuple(range(2, b_bgp_.dim() - param_dims))
    wd = work_dtype(b_bgp_.dtype)
    return b_bgp_.to(wd).sum(dim=pos_axes) if pos_axes else b_bgp_.to(wd)


def add_rows_(out_r_: torch.Tensor, idx_n: torch.Tensor, src_n_: torch.Tensor) -> torch.Tensor:
    """``out[idx[n]] += src[n]`` in place, repeated indices accumulated.

    ``index_put_(accumulate=True)``: on CPU, ``index_add_`` along dim 0 runs one small kernel per
    index (about 100x slower here).
    """
    return out_r_.index_put_((idx_n,), src_n_.to(out_r_.dtype), accumulate=True)


def group_vocab(ids_gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ids ``U`` of one group and each token's index into ``U``: ``(U, inverse_gt)``."""
    uniq_u, inv = torch.unique(ids_gt.reshape(-1), return_inverse=True)
    return uniq_u, inv.reshape(ids_gt.shape)


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


def pair_gram(x_gk: torch.Tensor, y_gk: torch.Tensor) -> torch.Tensor:
    """Cross Gram ``K[i, j] = x_i · y_j`` for (G, ...) per-sample tensors, float64 (G, G)."""
    G = x_gk.shape[0]
    return cross_rows(x_gk.reshape(1, G, -1), y_gk.reshape(1, G, -1))[0]


# ---------------------------------------------------------------- per-group weighted gradients
# With weights w (B, G), the per-group weighted gradient of a parameter is
# ``V_b = Σ_g w_bg ∇θ_bg``: one row per prompt group (T7's ``u_b`` when ``w = A / G``). Each
# per-sample rule above is linear in the output gradient ``b``, so ``V_b`` is the same rule
# applied to ``w_bg b_bg`` and summed over the group.


def fold_weights(x_bg_: torch.Tensor, w_bg: torch.Tensor) -> torch.Tensor:
    """``w_bg x_bg…``: per-sample weights broadcast over the trailing axes of (B, G, …).

    ``w_bg`` should already be in ``work_dtype(x.dtype)`` on x's device (cast it once per pass,
    not per layer); half precision multiplies in float32 and rounds once, in one kernel.
    """
    wd = work_dtype(x_bg_.dtype)
    w = w_bg.to(device=x_bg_.device, dtype=wd).view(*w_bg.shape, *([1] * (x_bg_.dim() - 2)))
    if wd == x_bg_.dtype:
        return x_bg_ * w
    return torch.mul(x_bg_, w, out=torch.empty_like(x_bg_))  # float32 product, stored as x's dtype


def group_outer(x_bgtr: torch.Tensor, y_bgtd: torch.Tensor) -> torch.Tensor:
    """``V_b = Σ_{g,t} x_bgt y_bgtᵀ``: one batched matmul over the ``G·T`` rows, (B, R, d).

    With ``x = w b`` (output-gradient rows ``R``) and ``y = a`` this is the linear weight's
    per-group weighted gradient ``V_b[r] = Σ_g w_bg Σ_t b_bgt[r] a_bgtᵀ``: the multiply-adds of
    the usual weight-gradient matmul, split by group.
    """
    B, G, T, R = x_bgtr.shape
    return torch.bmm(x_bgtr.reshape(B, G * T, R).transpose(1, 2), y_bgtd.reshape(B, G * T, -1))


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


def chunk_cuts(uniq_u: torch.Tensor, step: int, n_rows: int) -> list[int]:
    """Where each chunk of ``step`` rows starts in the sorted distinct ids ``U``:
    ``cuts[i] = #{u ∈ U : u < i·step}`` for ``i = 0 … ⌈n_rows/step⌉``, so chunk ``i``'s ids are
    ``U[cuts[i]:cuts[i+1]]``. One host sync (take it where the device queue is short)."""
    n_chunks = -(-n_rows // step)
    bounds = torch.arange(0, n_chunks * step + 1, step, device=uniq_u.device, dtype=uniq_u.dtype)
    return torch.searchsorted(uniq_u, bounds).tolist()


def merge_sparse_rows(
    parts: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum several ``(U, rows_bu…)`` sparse-row gradients of one parameter into one."""
    if len(parts) == 1:
        return parts[0]
    ids = torch.cat([u for u, _ in parts])
    rows = torch.cat([r for _, r in parts], dim=1)
    uniq_u, inv = torch.unique(ids, return_inverse=True)
    out = torch.zeros(rows.shape[0], uniq_u.numel(), *rows.shape[2:], dtype=rows.dtype,
                      device=rows.device)
    add_rows_(out.transpose(0, 1), inv, rows.transpose(0, 1))
    return uniq_u, out


def batch_gram(v_bk: torch.Tensor) -> torch.Tensor:
    """``K[b, c] = v_b · v_c`` for per-group vectors (B, …), float64 (B, B).

    The precision policy of ``cross_rows`` (float64 exact; lower precision in float32 blocks of
    ``BLOCK`` entries with float64 partial sums) in a fixed handful of operations: the rows are
    converted once and every block goes through one batched matmul.
    """
    B = v_bk.shape[0]
    v = v_bk.reshape(B, -1)
    if v.dtype == ACC:
        return v @ v.T
    v = v.float()
    K = v.shape[1]
    main = (K // BLOCK) * BLOCK
    out_bb = (v[:, main:] @ v[:, main:].T).to(ACC)
    if main:
        blocks = v[:, :main].reshape(B, main // BLOCK, BLOCK).transpose(0, 1)  # (n, B, BLOCK)
        out_bb += torch.bmm(blocks, blocks.transpose(1, 2)).to(ACC).sum(0)
    return out_bb
