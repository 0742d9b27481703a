"""Worker for test_distributed.py, launched by ``torchrun --nproc-per-node R`` (gloo on CPU).

Every rank rebuilds the same tiny float64 model and the same global rollout of B groups, keeps
its whole groups, runs data-parallel OBLR-PO updates, and writes its diagnostics and final
parameters (gathered in full under FSDP) to ``OUT/rank{k}_{mode}.pt``. With ``WORLD_SIZE`` unset
it is the one-process reference. ``python dist_worker.py OUT [ddp|fsdp]``: ``ddp`` (default) runs
the two-pass update (``two``) and, when ``score_gram`` keeps factors, the single pass
(``single``) with :func:`data_parallel_oblrpo`; ``fsdp`` runs both with :func:`fsdp_oblrpo`
(``fsdp``: two passes, ``fsdp_single``: single pass; one process: the same updates unsharded,
i.e. ``two`` and ``single``).
"""

import os
import sys

import numpy as np
import torch
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from oblr_theory.bridge import distributed as D  # noqa: E402
from oblr_theory.bridge.models import tiny_qwen3  # noqa: E402
from oblr_theory.bridge.rollout import sample_rollout  # noqa: E402
from oblr_theory.bridge.step import StepConfig  # noqa: E402
from oblr_theory.bridge.task import ArithmeticTask, CharTokenizer  # noqa: E402


def main(out: str, mode: str, steps: int = 2, B: int = 4, G: int = 4) -> None:
    torch.set_num_threads(1)
    rank, world = D.init("gloo")
    tok, task = CharTokenizer(), ArithmeticTask()
    model = tiny_qwen3(tok, seed=0, dtype=torch.float64)
    initial = D.full_parameters(model)
    single = mode in ("single", "fsdp_single")
    cfg = StepConfig(estimator="optimal_loo", eta_max=0.05, ema_beta=0.5, single_pass=single)
    fsdp = mode.startswith("fsdp")
    algo = D.fsdp_oblrpo(model, cfg) if fsdp else D.data_parallel_oblrpo(model, cfg)
    diags = []
    for t in range(steps):
        roll = sample_rollout(model, tok, task, task.sample(B, np.random.default_rng(t)), G, 3, seed=100 + t)
        first = roll.input_ids_bgt.gather(-1, roll.completion_bgt.long().argmax(-1, keepdim=True)).squeeze(-1)
        roll.rewards_bg = (first % 3 == 0).double()  # a reward with signal on a random model
        diags.append(algo.update(D.local_rollout(roll, rank, world)).asdict())
    n_sharded = sum(isinstance(p, DTensor) for p in model.parameters())
    caught = outside_use_caught(model, D.local_rollout(roll, rank, world)) if fsdp else None
    torch.save({"diags": diags, "params": D.full_parameters(model), "initial": initial,
                "single_pass": algo.single_pass, "n_sharded": n_sharded, "outside_use_caught": caught},
               os.path.join(out, f"rank{rank}_{mode}.pt"))


def outside_use_caught(model, roll) -> bool:
    """Negative control for the ghost pass's graph check on a sharded model: a parameter (the
    final norm's weight) also used outside the hooked modules must be refused by name."""
    from oblr_theory.bridge.gram import score_gram

    def extra_use(module, args, output):
        output.logits = output.logits + 0.0 * module.model.norm.weight.sum()
        return output

    handle = model.register_forward_hook(extra_use)
    try:
        score_gram(model, roll.input_ids_bgt, roll.attention_bgt, roll.completion_bgt)
    except ValueError as e:
        return "model.norm.weight" in str(e) and "outside the modules" in str(e)
    finally:
        handle.remove()
    return False


if __name__ == "__main__":
    import inspect

    from oblr_theory.bridge.gram import score_gram

    if (sys.argv[2] if len(sys.argv) > 2 else "ddp") == "fsdp":
        modes = ["fsdp", "fsdp_single"]
    else:
        modes = ["two"] + (["single"] if "keep_factors" in inspect.signature(score_gram).parameters else [])
    for mode in modes:
        main(sys.argv[1], mode)
    D.shutdown()
