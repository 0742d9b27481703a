"""Data parallelism over prompt groups with ``torch.distributed``: DDP, or FSDP2 for large models.

The unit of independence is the prompt group (T7), so a batch of ``B`` groups is split by whole
groups: rank ``k`` of ``R`` owns ``B/R`` groups, samples them, scores them and computes their
advantages locally (every estimator's advantage map works within one group). What crosses ranks:

- the gradient ``ĝ = (1/B) Σ_b u_b``: DDP (two-pass update) or an all-reduce of the ghost-factor
  gradients (single-pass update); under FSDP, FSDP's reduce-scatter (two passes) or a
  reduce-scatter of the ghost-factor gradients into the shards (single pass). Each averages the
  local means (equal local ``B``), so ``||ĝ||²`` is global;
- ``Σ_b ||u_b||²`` and ``B`` (sums, all-reduced), which with ``||ĝ||²`` give the T7 pieces
  exactly (see :mod:`oblr_theory.bridge.step`); hence the same SNR and learning rate on every
  rank, and the same statistics as one process on the whole batch.

Launch with ``torchrun --nproc-per-node R script.py`` or ``accelerate launch`` (both set
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); :func:`init` reads them and
:func:`shutdown` ends the run on every rank. The ghost
Gram runs on the unwrapped module (no DDP hooks), the surrogate forward/backward on the DDP
wrapper, so the gradient all-reduce is DDP's own.

FSDP: :func:`fsdp_oblrpo` shards the model with :func:`shard_fsdp` (FSDP2 ``fully_shard`` on each
decoder layer and the root). The ghost Gram's forward and backward go through the FSDP modules
(parameters are unsharded inside each layer's forward and backward, so the hooks see plain
tensors). Single pass: ``weighted_gradients`` forms each rank's full local gradient from the kept
factors, one parameter at a time, and averages it into the parameter's ``Shard(0)`` DTensor
gradient (a reduce-scatter); two passes: the surrogate's backward ends in FSDP's own
reduce-scatter. ``||ĝ||²`` is the sum of the shards' squares reduced over ranks
(:func:`oblr_theory.bridge.surrogate.grad_sq_norm`). Both modes are tested on CPU with two gloo
processes and a float64 tiny Qwen3 against one process (``tests/bridge/test_distributed.py``);
not with NCCL on GPUs.
"""

from __future__ import annotations

import gc
import os
from typing import Sequence

import torch
import torch.distributed as dist

from .rollout import Rollout
from .step import OBLRPO, StepConfig
from .surrogate import DTensor

__all__ = ["init", "shutdown", "shard_groups", "all_reduce_sum", "average_gradients",
           "data_parallel_oblrpo", "local_rollout", "default_mesh_device", "shard_fsdp", "fsdp_oblrpo",
           "full_parameters", "world"]


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


def shutdown() -> None:
    """Tear down the default process group (made by :func:`init`), all ranks together.

    Whatever still holds the group (FSDP's device meshes sit in reference cycles) is collected
    first and the ranks meet at a barrier: otherwise gloo's threads can outlive the group and abort
    a process at exit, after its work is done (seen with two gloo processes on a loaded CPU).
    Call it on every rank at the end; without a process group it does nothing.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


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


def default_mesh_device(backend: str) -> str | None:
    """Device type of the FSDP mesh :func:`shard_fsdp` builds for a process group of ``backend``
    when no ``mesh`` is given: ``"cpu"`` for ``gloo``, else ``None`` (``fully_shard``'s own default).

    ``fully_shard``'s default mesh is on the accelerator whenever one is visible, and it moves the
    shards there; a gloo group runs FSDP's all-gather and reduce-scatter on CPU tensors only, so
    on a machine with a GPU a gloo run would put a CPU model's shards on the GPU and fail.
    """
    return "cpu" if backend == "gloo" else None


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks, found by class name in its ``_no_split_modules``: the
    Hugging Face attribute listing the block classes that must stay on one device (a decoder
    layer: ``Qwen3DecoderLayer``, ``GPT2Block``, ...). Outermost matches only, in model order.
    Raises ValueError when the model declares none or none of its modules matches (then pass
    ``layers`` to :func:`shard_fsdp` yourself)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    if not names:
        raise ValueError(f"{type(model).__name__} has no _no_split_modules to find its decoder "
                         "layers by; pass layers=[...] (the modules to shard one by one)")
    found, inside = [], set()
    for mod in model.modules():
        if id(mod) in inside:
            continue
        if type(mod).__name__ in names:
            found.append(mod)
            inside.update(id(m) for m in mod.modules())
    if not found:
        raise ValueError(f"no module of {type(model).__name__} is one of its _no_split_modules "
                         f"{sorted(names)}; pass layers=[...] (the modules to shard one by one)")
    return found


def shard_fsdp(model: torch.nn.Module, layers=None, **kwargs) -> torch.nn.Module:
    """FSDP2: ``fully_shard`` every layer of ``layers`` and then the root (embedding, tied
    head, final norm); ``kwargs`` go to ``fully_shard`` (``mesh``, ``reshard_after_forward``,
    ...). ``layers`` None: the decoder layers :func:`decoder_layers` finds from the model's
    ``_no_split_modules``. Without ``mesh``, a one-dimensional mesh over the default group's
    ranks on :func:`default_mesh_device` (a CPU mesh under gloo). Use it through
    :func:`fsdp_oblrpo` for OBLR-PO updates."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    layers = decoder_layers(model) if layers is None else list(layers)
    device = default_mesh_device(dist.get_backend()) if dist.is_initialized() else None
    if "mesh" not in kwargs and device is not None:
        kwargs["mesh"] = init_device_mesh(device, (dist.get_world_size(),))
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _is_dtensor(t) -> bool:
    return isinstance(t, DTensor)


def full_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """Detached full copies of ``model.parameters()``: FSDP2 shards are all-gathered
    (``DTensor.full_tensor``, a collective: every rank must call it), plain tensors cloned."""
    return [p.full_tensor().detach() if _is_dtensor(p) else p.detach().clone() for p in model.parameters()]


def fsdp_oblrpo(model: torch.nn.Module, config: StepConfig, layers=None,
                **fsdp_kwargs) -> OBLRPO:
    """OBLR-PO with the model sharded by FSDP2 (:func:`shard_fsdp`).

    - Gram: ``score_gram(model, ..., method="ghost")`` runs through the FSDP modules; each rank
      scores its own groups with the full (unsharded-in-forward) parameters.
    - Gradient, single pass (``config.single_pass`` None or True): ``weighted_gradients`` forms
      each rank's full local gradient from the kept ghost factors, one parameter at a time, and
      averages it over the ranks into the parameter's shards (a reduce-scatter,
      ``per_sample.kernels.average_into_shards``), as FSDP's backward would. Two passes
      (``single_pass=False``): the surrogate's backward through the FSDP modules; FSDP
      reduce-scatters and averages. Either way ``p.grad`` is this rank's shard of ``−ĝ``.
    - T7: ``Σ_b ||u_b||²`` and ``B`` with :func:`all_reduce_sum`, ``||ĝ||²`` with
      :func:`oblr_theory.bridge.surrogate.grad_sq_norm` (it reads the DTensor shards); the optimizer
      steps the shards.

    ``layers``: the modules sharded one by one (None: :func:`decoder_layers`, from the model's
    ``_no_split_modules``). Without a process group it is ``OBLRPO(model, config)`` (nothing
    sharded). A model that is
    already an FSDP module is not sharded again (then ``fsdp_kwargs`` must be empty). The device
    mesh must span the default group's ranks (:func:`shard_fsdp`'s default: on the CPU under
    gloo, else ``fully_shard``'s), over which the groups are split. Every rank must call
    :meth:`OBLRPO.update` with the same number of local groups.

    Valid only if: the ghost Gram's conditions hold (``score_gram``; its graph check follows
    FSDP's unsharded stand-ins of the sharded parameters). Tested on CPU with gloo (float64, two
    processes, both update modes), not with NCCL on GPUs.
    """
    from torch.distributed.fsdp import FSDPModule

    if not (dist.is_available() and dist.is_initialized()):
        return OBLRPO(model, config)
    if isinstance(model, FSDPModule):
        if fsdp_kwargs:
            raise ValueError(f"model is already sharded by FSDP; fsdp_kwargs {sorted(fsdp_kwargs)} "
                             "would be ignored")
    else:
        shard_fsdp(model, layers=layers, **fsdp_kwargs)
    fsdp_modules = [m for m in model.modules() if isinstance(m, FSDPModule)]

    def reshard() -> None:  # the root keeps forward's unsharded parameters after a forward
        for m in fsdp_modules:
            m.reshard()

    reshard()  # the optimizer must hold the sharded parameters, not forward's unsharded ones
    plain = [n for n, p in model.named_parameters() if p.requires_grad and not _is_dtensor(p)]
    if plain:
        raise ValueError(f"parameters {plain[:3]} are not FSDP-sharded; every trainable parameter "
                         "must belong to a fully_shard module (pass layers=[...] covering them)")
    # before every update, so that the ghost pass registers (and writes the single pass's
    # gradients into) the sharded parameters the optimizer holds
    return OBLRPO(model, config, reduce=all_reduce_sum, prepare=reshard)
