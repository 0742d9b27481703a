"""Pure functions every rule shares: Gram matrices and squared norms of per-sample vectors in a
fixed precision policy, sparse rows, weights folded into factors, and the positions where an
output gradient can be nonzero.

For a batch flattened to ``N = B·G`` independent sequences, the gradient of
``L = Σ_n seq_logp_n`` with respect to sequence ``n``'s activations is the gradient of
``seq_logp_n`` alone (per-sample independence), so a layer's per-sample parameter gradient is
rebuilt from what one backward pass sees at that layer (the rules in ``rules/``). Gram entries
are Frobenius inner products ``⟨∇θ_i, ∇θ_j⟩`` for ``i, j`` in one group, always returned in
float64; half-precision factors are combined in float32 (``work_dtype``), and long float32 dot
products run in blocks of ``BLOCK`` entries whose partial sums are added in float64.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict

import torch
from torch import nn

ACC = torch.float64  # the Gram is always accumulated in float64 (it is tiny)


BLOCK = 2**16  # float32 partial dot products run over at most this many entries


# ------------------------------------------------------------------ Grams of per-sample vectors
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


def pair_gram(x_gk: torch.Tensor, y_gk: torch.Tensor) -> torch.Tensor:
    """Cross Gram ``K[i, j] = x_i · y_j`` for (G, ...) per-sample tensors, float64 (G, G)."""
    G = x_gk.shape[0]
    return cross_rows(x_gk.reshape(1, G, -1), y_gk.reshape(1, G, -1))[0]


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


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Gram factors of half-precision layers are combined in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# ------------------------------------------------------------------ diagonal only: S_n = ||∇θ_n||²

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


def sample_rows(x: torch.Tensor, rows: slice | None) -> torch.Tensor:
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
        g = sample_rows(b_nto, rows)
        kb = torch.bmm(g, g.transpose(1, 2))  # (n, T, T)
        parts.append((ka_of(rows) * kb).sum(-1, dtype=wd))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


# ------------------------------------------------------------------ sparse rows and weights
# With weights w (B, G), the per-group weighted gradient of a parameter is
# ``V_b = Σ_g w_bg ∇θ_bg``: each per-sample rule is linear in the output gradient ``b``, so
# ``V_b`` is the same rule applied to ``w_bg b_bg`` and summed over the group.

def add_rows_(out_r_: torch.Tensor, idx_n: torch.Tensor, src_n_: torch.Tensor) -> torch.Tensor:
    """``out[idx[n]] += src[n]`` in place, repeated indices accumulated.

    ``index_put_(accumulate=True)``: on CPU, ``index_add_`` along dim 0 runs one small kernel per
    index, which is far slower for long index lists.
    """
    return out_r_.index_put_((idx_n,), src_n_.to(out_r_.dtype), accumulate=True)


def group_vocab(ids_gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ids ``U`` of one group and each token's index into ``U``: ``(U, inverse_gt)``."""
    uniq_u, inv = torch.unique(ids_gt.reshape(-1), return_inverse=True)
    return uniq_u, inv.reshape(ids_gt.shape)


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


# ------------------------------------------------------------------ where b can be nonzero

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


# ------------------------------------------------------------------ tensors and shards

def is_plain(t: torch.Tensor) -> bool:
    """A local tensor (not a sharded/distributed tensor subclass such as DTensor)."""
    return type(t) in (torch.Tensor, nn.Parameter)


def average_into_shards(p: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """A sharded parameter's gradient from each rank's full local gradient ``full``: the mean
    over the parameter's device mesh, laid out as ``p`` (a reduce-scatter for FSDP2's
    ``Shard(0)``), as FSDP's own backward averages data-parallel gradients."""
    from torch.distributed.tensor import DTensor, Partial

    mesh = p.device_mesh
    partial = DTensor.from_local(full, mesh, [Partial("avg")] * mesh.ndim, run_check=False)
    return partial.redistribute(mesh, p.placements)


def rows_of(x: torch.Tensor, r: slice | None) -> torch.Tensor:
    """``x[:, r]``, or ``x`` itself when ``r`` is None (all rows: no indexing operation)."""
    return x if r is None else x[:, r]


def cols_of(x: torch.Tensor, r: slice | None) -> torch.Tensor:
    """``x[..., r]``, or ``x`` itself when ``r`` is None."""
    return x if r is None else x[..., r]


def has_zero_entry(tensors: list[torch.Tensor]) -> list[bool]:
    """Whether each tensor holds an exact zero: one concatenation, one comparison and one host
    sync (``nonzero``) per (device, dtype), however many tensors (a model's ~100 norm weights)."""
    out = [False] * len(tensors)
    groups: dict = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    for idx in groups.values():
        ends = list(itertools.accumulate(tensors[i].numel() for i in idx))
        with torch.no_grad():
            zero_k = torch.cat([tensors[i].reshape(-1) for i in idx]) == 0
        for pos in zero_k.nonzero().flatten().tolist():
            out[idx[bisect.bisect_right(ends, pos)]] = True
    return out

