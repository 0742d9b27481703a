"""Pure functions: the Gram's diagonal only, ``S_n = ||∇θ_n||²`` per sample, from layer factors.

The update's advantages need only ``S_n = ||∇θ_n||²``, the Gram's diagonal: per sample, not
per pair, so each rule below costs about 1/G of its full-Gram counterpart. Float64 (N,) or
(B, G) results, same precision policy as ``_ghost_math.cross_rows``. The factors and their
per-sample gradients are those of ``_ghost_math`` (its docstring).
"""

from __future__ import annotations

import torch

from ._ghost_math import ACC, BLOCK, linear_grads_rows, work_dtype


def row_dots(x_nk: torch.Tensor, y_nk: torch.Tensor) -> torch.Tensor:
    """``d[n] = x_n · y_n`` for (N, …) tensors (flattened per row), float64 (N,).

    Float64 inputs are multiplied directly; lower precision in float32 blocks of ``BLOCK``
    entries whose partial sums are added in float64 (as ``cross_rows``). For ``y = x`` use
    ``row_sq_norms`` (no float32 copies).
    """
    N = x_nk.shape[0]
    x, y = x_nk.reshape(N, -1), y_nk.reshape(N, -1)
    if x.dtype == ACC:
        return (x * y.to(ACC)).sum(-1)
    x, y = x.float(), y.float()
    main = (x.shape[1] // BLOCK) * BLOCK
    out_n = (x[:, main:] * y[:, main:]).sum(-1).to(ACC)
    if main:
        out_n += (x[:, :main] * y[:, :main]).reshape(N, -1, BLOCK).sum(-1).to(ACC).sum(-1)
    return out_n


def row_block_norms(x_nk: torch.Tensor) -> list[torch.Tensor]:
    """Norms of blocks of each row of (N, …) tensors: parts (N, k) whose squares sum to
    ``||x_n||²`` over all parts (``sum_parts(norms=...)``), with no copy of ``x``.

    Float64: one (N, 1) part. Lower precision: float32 norms of blocks of ``BLOCK`` entries
    (``torch.linalg.vector_norm`` accumulates in float32 as it reads ``x``), one reduction kernel
    per part (two when the row length is not a multiple of ``BLOCK``). Their squares are summed in
    float64 later, so that many parameters' parts are reduced together in one pass.
    """
    N = x_nk.shape[0]
    if x_nk.dtype == ACC:
        return [torch.linalg.vector_norm(x_nk.reshape(N, -1), dim=-1, keepdim=True)]
    K = x_nk.numel() // max(N, 1)
    main = (K // BLOCK) * BLOCK
    f32 = torch.float32
    if main and main == K:  # one kernel over whole blocks, no intermediate view
        return [torch.linalg.vector_norm(x_nk.reshape(N, -1, BLOCK), dim=-1, dtype=f32)]
    x = x_nk.reshape(N, -1)
    parts = []
    if main:
        parts.append(torch.linalg.vector_norm(x[:, :main].reshape(N, -1, BLOCK), dim=-1, dtype=f32))
    if main < K:
        parts.append(torch.linalg.vector_norm(x[:, main:], dim=-1, dtype=f32, keepdim=True))
    return parts


def sum_parts(dots: list[torch.Tensor] = (), norms: list[torch.Tensor] = ()) -> torch.Tensor:
    """``Σ_parts Σ_k dot[n, k] + Σ_parts Σ_k norm[n, k]²`` in float64, (N,).

    ``dots``: partial sums (N, k) of inner products (``linear_sq_norm_parts_ghost``); ``norms``:
    block norms (N, k) (``row_block_norms``), squared here. Both are float32 for half-precision
    layers and are only added up in float64 (the precision policy of ``cross_rows``), one
    concatenation and one reduction per dtype and kind for any number of layers, so a pass adds
    no per-layer float64 work.
    """
    total = None
    for parts, square in ((dots, False), (norms, True)):
        by_dtype: dict = {}
        for part in parts:
            by_dtype.setdefault(part.dtype, []).append(part)
        for same in by_dtype.values():
            blocks = (same[0] if len(same) == 1 else torch.cat(same, dim=1)).to(ACC)
            s = (blocks.square() if square else blocks).sum(-1)
            total = s if total is None else total + s
    if total is None:
        raise ValueError("sum_parts needs at least one part")
    return total


def row_sq_norms(x_nk: torch.Tensor) -> torch.Tensor:
    """``d[n] = ||x_n||²`` for (N, …) tensors (flattened per row), float64 (N,): float32 norms
    of blocks of ``BLOCK`` entries (no float32 copy of ``x``), squares summed in float64."""
    return sum_parts(norms=row_block_norms(x_nk))


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
            return _sample_rows(ka_ntt, rows)
        a = _sample_rows(a_ntd, rows)
        return torch.bmm(a, a.transpose(1, 2))

    return kernel_dot_parts(ka_of, b_bgto.reshape(B * G, T, b_bgto.shape[-1]), max_elems)


def _sample_rows(x: torch.Tensor, rows: slice | None) -> torch.Tensor:
    """``x[rows]``, or ``x`` itself when ``rows`` is None (all samples: no indexing operation)."""
    return x if rows is None else x[rows]


def kernel_dot_parts(ka_of, b_nto: torch.Tensor, max_elems: int) -> torch.Tensor:
    """``P[n, t] = Σ_{t'} Ka_n[t, t'] (b_nt · b_nt')``, (N, T) in ``b``'s work dtype: the ghost
    diagonal of any rule whose per-sample gradient is ``Σ_t b_nt ⊗ (input feature)_nt``, with
    ``Ka`` the inputs' kernel (``ka_of(rows)`` for a chunk of samples, ``rows`` None for all).
    Samples in chunks whose ``T × T`` kernels stay under ``max_elems`` entries; the product is
    rounded to the kernels' dtype and summed in the work dtype (see
    ``linear_sq_norm_parts_ghost``)."""
    N, T = b_nto.shape[:2]
    wd = work_dtype(b_nto.dtype)
    step = max(1, max_elems // max(T * T, 1))
    parts = []
    for n0 in range(0, N, step):
        rows = None if step >= N else slice(n0, n0 + step)
        g = _sample_rows(b_nto, rows)
        kb = torch.bmm(g, g.transpose(1, 2))  # (n, T, T)
        parts.append((ka_of(rows) * kb).sum(-1, dtype=wd))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


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
        ids = _sample_rows(ids_nt, rows)
        return ids.unsqueeze(2) == ids.unsqueeze(1)

    return kernel_dot_parts(same_id, b_ntd, max_elems)


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
