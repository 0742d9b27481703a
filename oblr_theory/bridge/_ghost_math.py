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
    ``d_in·d_out`` entries of a weight would lose about four digits.
    """
    if x_bgk.dtype == ACC:
        return x_bgk @ y_bgk.to(ACC).transpose(1, 2)
    B, G, H = x_bgk.shape[0], x_bgk.shape[1], y_bgk.shape[1]
    out_bgg = torch.zeros(B, G, H, dtype=ACC, device=x_bgk.device)
    for k0 in range(0, x_bgk.shape[-1], BLOCK):
        xk = x_bgk[..., k0 : k0 + BLOCK].float()
        yk = y_bgk[..., k0 : k0 + BLOCK].float()
        out_bgg += (xk @ yk.transpose(1, 2)).to(ACC)
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
    Returns (B, G, *param_shape).
    """
    wd = work_dtype(b_bgp_.dtype)
    prod = b_bgp_.to(wd) * xhat_bgp_.to(wd)
    pos_axes = tuple(range(2, prod.dim() - param_dims))
    return prod.sum(dim=pos_axes) if pos_axes else prod


def norm_bias_grads(b_bgp_: torch.Tensor, param_dims: int) -> torch.Tensor:
    """Per-sample affine-norm bias gradients ``∇c_n = Σ_pos b_n``: (B, G, *param_shape)."""
    pos_axes = tuple(range(2, b_bgp_.dim() - param_dims))
    wd = work_dtype(b_bgp_.dtype)
    return b_bgp_.to(wd).sum(dim=pos_axes) if pos_axes else b_bgp_.to(wd)


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
    rows.index_add_(0, flat_idx, b_gtd.reshape(G * T, d).to(wd))
    return rows.reshape(G, n_rows, d)


def pair_gram(x_gk: torch.Tensor, y_gk: torch.Tensor) -> torch.Tensor:
    """Cross Gram ``K[i, j] = x_i · y_j`` for (G, ...) per-sample tensors, float64 (G, G)."""
    G = x_gk.shape[0]
    return cross_rows(x_gk.reshape(1, G, -1), y_gk.reshape(1, G, -1))[0]
