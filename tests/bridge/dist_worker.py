"""Worker for test_distributed.py, launched by ``torchrun --nproc-per-node R`` (gloo on CPU).

Every rank rebuilds the same tiny float64 model and the same global rollout of B groups, keeps
its whole groups, runs data-parallel OBLR-PO updates, and writes its diagnostics and final
parameters to ``OUT/rank{k}.pt``. With ``WORLD_SIZE`` unset it is the one-process reference.
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from oblr_theory.bridge import distributed as D  # noqa: E402
from oblr_theory.bridge.models import tiny_qwen3  # noqa: E402
from oblr_theory.bridge.step import StepConfig, sample_rollout  # noqa: E402
from oblr_theory.bridge.task import ArithmeticTask, CharTokenizer  # noqa: E402


def main(out: str, single_pass: bool, steps: int = 2, B: int = 4, G: int = 4) -> None:
    torch.set_num_threads(1)
    rank, world = D.init("gloo")
    tok, task = CharTokenizer(), ArithmeticTask()
    model = tiny_qwen3(tok, seed=0, dtype=torch.float64)
    cfg = StepConfig(estimator="optimal_loo", eta_max=0.05, ema_beta=0.5, single_pass=single_pass)
    algo = D.data_parallel_oblrpo(model, cfg)
    diags = []
    for t in range(steps):
        roll = sample_rollout(model, tok, task, task.sample(B, np.random.default_rng(t)), G, 3, seed=100 + t)
        first = roll.input_ids_bgt.gather(-1, roll.completion_bgt.long().argmax(-1, keepdim=True)).squeeze(-1)
        roll.rewards_bg = (first % 3 == 0).double()  # a reward with signal on a random model
        diags.append(algo.update(D.local_rollout(roll, rank, world)).asdict())
    torch.save({"diags": diags, "params": [p.detach().clone() for p in model.parameters()],
                "single_pass": algo.single_pass},
               os.path.join(out, f"rank{rank}_{'single' if single_pass else 'two'}.pt"))


if __name__ == "__main__":
    import inspect

    from oblr_theory.bridge.gram import score_gram

    modes = [False] + ([True] if "keep_factors" in inspect.signature(score_gram).parameters else [])
    for mode in modes:
        main(sys.argv[1], mode)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
