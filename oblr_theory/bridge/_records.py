"""What a ghost pass records, and the small helpers the recorder's parts share.

``_Use`` is one call of a hooked module (its factors: the input ``a``, the output gradient ``b``,
token ids or a normalised input); ``_Stack`` linear layers fed one input, kept as one weight;
``_TieState`` the two uses of a tied embedding / output matrix. See ``_hooks`` for the method.
"""

from __future__ import annotations

import bisect
import itertools
import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn


def module_kind(module: nn.Module) -> str | None:
    """The ghost rule for a module's own parameters, or None when there is none."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return "conv1d"  # GPT-2 style: y = x @ W + c with W of shape (d_in, d_out)
    if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
        return "norm"
    return None


def _first_sample(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's inputs with the first tensor (the hidden states) cut to sample 0."""
    if args:
        return (args[0][:1],) + tuple(args[1:]), kwargs
    key = next(iter(kwargs))
    return (), {**kwargs, key: kwargs[key][:1]}


# Modules already shown to be elementwise-affine in their weight, with the forward that was
# checked: the check costs a call and a host sync, and a module's form does not change with its
# weights, so it runs once per module (again if its forward is replaced).
_AFFINE_CHECKED: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


def _forward_identity(module: nn.Module):
    fwd = module.forward
    fwd = getattr(fwd, "ghost_wrapped", fwd)  # during a pass: the forward the recorder wraps
    return getattr(fwd, "__func__", fwd)


def _is_plain(t: torch.Tensor) -> bool:
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


def _rows(x: torch.Tensor, r: slice | None) -> torch.Tensor:
    """``x[:, r]``, or ``x`` itself when ``r`` is None (all rows: no indexing operation)."""
    return x if r is None else x[:, r]


def _cols(x: torch.Tensor, r: slice | None) -> torch.Tensor:
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


@dataclass(eq=False, slots=True)
class _Use:
    """One call of a hooked module during the forward pass."""

    name: str
    module: nn.Module
    kind: str
    params: dict  # parameter attribute name -> trainable Parameter
    saved: torch.Tensor | None = None  # a (linear), ids (embedding), x̂ or y − c (norm)
    scale: torch.Tensor | None = None  # norm weight w when saved is y − c (divide by it)
    node: object = None  # grad_fn of the output, for the reachability check
    got_grad: bool = False
    grad: torch.Tensor | None = None  # b = ∂L/∂y, kept only with keep_factors
    # a trainable embedding's token ids: per group (U_b, inverse_gt), and over the batch (U, inverse_n)
    vocab: list | None = None
    batch_vocab: tuple | None = None
    span: slice | None = None  # positions where b is nonzero (linear factors only)
    in_key: tuple | None = None  # a linear weight's input, to find the layers that share it
    stack_id: int | None = -1  # its stack (``_stack_of``): -1 not known yet, None alone


@dataclass(eq=False)
class _Stack:
    """Linear layers fed one input (q/k/v, gate/up), kept as one weight ``[W_1; W_2; …]``:
    their output gradients concatenated along the output axis (``b``), one input ``a``."""

    params: list  # the members' weights, in forward order
    bounds: list  # each member's rows (start, end) of the stacked weight
    a: torch.Tensor  # (B, G, T, d_in)
    b: torch.Tensor  # (B, G, T, Σ d_out)


@dataclass
class _TieState:
    vocab: list | None = None  # per group: (U, inverse_gt)
    emb_rows: dict = field(default_factory=dict)  # group -> (G, |U|, d)
    lin_rows: dict = field(default_factory=dict)  # group -> (G, |U|, d)
    # diagonal_only: the input ids (N, T), and what the first use to arrive leaves
    ids: torch.Tensor | None = None
    emb_b: torch.Tensor | None = None  # the embedding's output gradient (N, T, d)
    head: tuple | None = None  # the output layer's input (N, S, d), its gradient at the ids

