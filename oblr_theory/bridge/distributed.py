"""Data parallelism over prompt groups with ``torch.distributed`` (DDP), FSDP for large models.

The unit of independence is the prompt group (T7), so a batch of ``B`` groups is split by whole
groups: rank ``k`` of ``R`` owns ``B/R`` groups, samples them, scores them and computes their
advantages locally (every estimator's advantage map works within one group). What crosses ranks:

- the gradient ``ĝ = (1/B) Σ_b u_b``: DDP (two-pass update) or an all-reduce of the ghost-factor
  gradients (single-pass update) averages the local means (equal local ``B``), so every rank
  holds the global ``ĝ`` and ``||ĝ||²``;
- ``Σ_b ||u_b||²`` and ``B`` (sums, all-reduced), which with ``||ĝ||²`` give the T7 pieces
  exactly (see :mod:`oblr_theory.bridge.step`); hence the same SNR and learning rate on every
  rank, and the same statistics as one process on the whole batch.

Launch with ``torchrun --nproc-per-node R script.py`` or ``accelerate launch`` (both set
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); :func:`init` reads them. The ghost
Gram runs on the unwrapped module (no DDP hooks), the surrogate forward/backward on the DDP
wrapper, so the gradient all-reduce is DDP's own.

FSDP: :func:`shard_fsdp` applies ``torch.distributed.fsdp.fully_shard`` (FSDP2) to each decoder
layer and the root, for models that do not fit one device. Valid only with a ``score_gram`` that
supports sharded parameters (see ``docs/bridge_part2.md``); the surrogate path is FSDP's own.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as dist

from .step import OBLRPO, Rollout, StepConfig

__all__ = ["init", "shard_groups", "all_reduce_sum", "average_gradients", "data_parallel_oblrpo", "local_rollout",
           "shard_fsdp", "world"]


def init(backend: str | None = None) -> tuple[int, int]:
    """Initialise the default process group from the launcher's environment; ``(rank, world)``.

    One process without ``WORLD_SIZE`` set is ``(0, 1)`` and initialises nothing. The backend is
    ``nccl`` on a GPU, ``gloo`` otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return dist.get_rank(), dist.get_world_size()


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the default group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_groups(items: Sequence, rank: int, world_size: int) -> list:
    """Rank ``rank``'s contiguous share of ``items`` (whole groups); equal shares required."""
    if len(items) % world_size:
        raise ValueError(f"the batch has {len(items)} prompt groups, not divisible by the world size "
                         f"{world_size}; whole groups stay on one rank and every rank needs as many")
    k = len(items) // world_size
    return list(items[rank * k:(rank + 1) * k])


def local_rollout(roll: Rollout, rank: int, world_size: int) -> Rollout:
    """Rank ``rank``'s whole groups of a rollout (for tests and replays of a global batch)."""
    B = roll.shape[0]
    idx = shard_groups(list(range(B)), rank, world_size)
    sl = slice(idx[0], idx[-1] + 1)
    return Rollout(roll.problems[sl], roll.input_ids_bgt[sl], roll.attention_bgt[sl],
                   roll.completion_bgt[sl], roll.texts_bg[sl], roll.rewards_bg[sl])


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``Σ_ranks t`` (a copy; identity without a process group). Float64 stays float64."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    out = t.detach().clone()
    if dist.get_backend() == "nccl" and out.device.type != "cuda":
        out = out.cuda()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def average_gradients(params) -> None:
    """``p.grad ← (1/R) Σ_ranks p.grad`` (``torch.distributed.all_reduce``), for gradients that
    did not come through a DDP backward (the single-pass update's kept-factor gradients)."""
    _, R = world()
    if R == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(R)


def data_parallel_oblrpo(model: torch.nn.Module, config: StepConfig, device_ids=None) -> OBLRPO:
    """OBLR-PO over data parallelism: T7 sums all-reduced; the gradient averaged by
    ``DistributedDataParallel`` (two-pass update: the surrogate runs through the DDP wrapper) or
    by :func:`average_gradients` (single-pass update: the gradient comes from the ghost factors).

    Every rank must call :meth:`OBLRPO.update` with the same number of local groups.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    _, R = world()
    if R == 1:
        return OBLRPO(model, config)
    ddp = DDP(model, device_ids=device_ids, broadcast_buffers=False)
    params = [p for p in model.parameters() if p.requires_grad]
    return OBLRPO(model, config, reduce=all_reduce_sum, forward_model=ddp,
                  grad_sync=lambda: average_gradients(params))


def shard_fsdp(model: torch.nn.Module, layer_attr: str = "model.layers", **kwargs) -> torch.nn.Module:
    """FSDP2: ``fully_shard`` every decoder layer (``model.model.layers[i]``) and then the root."""
    from torch.distributed.fsdp import fully_shard

    layers = model
    for a in layer_attr.split("."):
        layers = getattr(layers, a)
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model
