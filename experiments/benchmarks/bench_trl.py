"""OBLRPOTrainer against GRPOTrainer on the same config: time and memory ratios, side by side.

    python experiments/benchmarks/bench_trl.py [--rounds 3] [--steps 4] [--gpu]
        [--single-pass auto|on|off] [--no-checkpointing]

Each round runs one fresh child process per trainer (alternating which goes first), each doing
``--steps`` optimizer steps on the built-in arithmetic task after one warm-up step. A child
reports, per step after the warm-up: the end-to-end step time (``training_step``, one optimizer
step: generation, rewards, OBLR-PO's ghost pass, forward, backward), the generation time alone
(``_generate``), and their difference, the training step alone; and its peak memory (GPU:
``max_memory_allocated``; CPU: the child's peak resident set). On CPU each time is measured twice:
wall clock (``*_s``) and the child's own CPU time (``*_cpu_s``), with one torch thread per child
by default (``--threads``): several OpenMP threads spin-wait when other jobs hold the cores, which
inflated single steps 10-60x on a shared two-core machine, in CPU time as much as in wall time. The generation ratio is a control: both trainers generate
with the same code, so a value far from 1 says the run was disturbed. The JSON on stdout has the
medians over rounds and the ratios OBLR-PO / GRPO computed within the run.

Both trainers run with TRL's default gradient checkpointing unless ``--no-checkpointing``
(OBLR-PO's ghost pass runs without it either way, bounded by ``sq_norms_batch_size`` rows per
pass). ``--single-pass`` sets ``OBLRPOConfig.single_pass`` (default ``auto``: the update comes
from the ghost pass; ``off``: the ghost pass, then TRL's own forward and backward).

CPU default: tiny Qwen3 shape (hidden 256, 4 layers), float32. ``--gpu``: the Qwen3-0.6B shape
(random weights, bf16) on ``cuda``; the vocabulary is the task's character vocabulary in both
(the LM head of a 151936-token vocabulary is not exercised).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child(kind: str, a) -> dict:
    warnings.filterwarnings("ignore")
    sys.path.insert(0, ROOT)
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from oblr_theory.bridge.models import TinyQwen3Spec, qwen3_shaped, tiny_qwen3
    from oblr_theory.bridge.task import ArithmeticTask, CharTokenizer
    from oblr_theory.integrations.trl import OBLRPOConfig, OBLRPOTrainer
    from oblr_theory.integrations.trl_task import arithmetic_dataset, hf_char_tokenizer
    from oblr_theory.integrations.trl_task import char_sum_reward as dense_reward
    from oblr_theory.integrations.trl_task import cpu_config_kwargs as base_kwargs

    if not a.gpu:
        torch.set_num_threads(a.threads)
    ct = CharTokenizer()
    if a.gpu:
        model = qwen3_shaped("0.6B", ct.vocab_size, ct.pad_token_id, ct.eos_token_id, seed=0,
                             dtype=torch.bfloat16, device="cuda")
    else:
        spec = TinyQwen3Spec(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=64, intermediate_size=768,
                             max_position_embeddings=256)
        model = tiny_qwen3(ct, spec=spec, seed=0)
    kw = base_kwargs(output_dir="/tmp/bench_trl", max_steps=a.steps + 1, use_cpu=not a.gpu,
                     per_device_train_batch_size=a.batch, num_generations=a.group,
                     max_completion_length=a.completion, learning_rate=1e-6, optim="adamw_torch",
                     bf16=a.gpu, gradient_checkpointing=not a.no_checkpointing, logging_steps=1)
    task = ArithmeticTask(max_operand=99)
    if kind == "grpo":
        cfg_cls, tr_cls = GRPOConfig, GRPOTrainer
    else:
        cfg_cls, tr_cls = OBLRPOConfig, OBLRPOTrainer
        kw["single_pass"] = a.single_pass
    clocks = {"step": [], "gen": []}  # (wall, this process's CPU time) per call

    def now():
        if a.gpu:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    class Timed(tr_cls):
        def _generate(self, prompts):
            t0 = now()
            out = super()._generate(prompts)
            t1 = now()
            clocks["gen"].append((t1[0] - t0[0], t1[1] - t0[1]))
            return out

        def training_step(self, *args, **kwargs):
            t0 = now()
            out = super().training_step(*args, **kwargs)
            t1 = now()
            clocks["step"].append((t1[0] - t0[0], t1[1] - t0[1]))
            return out

    tr = Timed(model=model, reward_funcs=dense_reward, args=cfg_cls(**kw),
               train_dataset=arithmetic_dataset(4096, task=task), processing_class=hf_char_tokenizer())
    if a.gpu:
        torch.cuda.reset_peak_memory_stats()
    tr.train()
    steps, gens = clocks["step"][1:], clocks["gen"][1:]  # after the warm-up step
    mem = (torch.cuda.max_memory_allocated() if a.gpu
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    out = {"peak_bytes": mem}
    for k, name in ((0, "s"), (1, "cpu_s")):
        if k == 1 and a.gpu:
            continue  # host CPU time says nothing of GPU work
        out[f"step_{name}"] = statistics.median(x[k] for x in steps)
        out[f"generation_{name}"] = statistics.median(g[k] for g in gens)
        out[f"train_step_{name}"] = statistics.median(x[k] - g[k] for x, g in zip(steps, gens))
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--completion", type=int, default=16)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--single-pass", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per CPU child (1: no OpenMP spin-waiting against other jobs)")
    ap.add_argument("--child", choices=["grpo", "oblrpo"])
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a)))
        return
    passthrough = [f"--steps={a.steps}", f"--batch={a.batch}", f"--group={a.group}",
                   f"--completion={a.completion}", f"--single-pass={a.single_pass}",
                   f"--threads={a.threads}"]
    passthrough += (["--gpu"] if a.gpu else []) + (["--no-checkpointing"] if a.no_checkpointing else [])
    rows = {"grpo": [], "oblrpo": []}
    for r in range(a.rounds):
        for kind in (("grpo", "oblrpo") if r % 2 == 0 else ("oblrpo", "grpo")):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, *passthrough],
                                 check=True, capture_output=True, text=True, cwd=ROOT)
            rows[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in rows.items()}
    ratio = {f"ratio_{m}": med["oblrpo"][m] / med["grpo"][m] for m in med["grpo"]}
    print(json.dumps({"config": vars(a), "median": med, **ratio, "rounds": rows}, indent=1))


if __name__ == "__main__":
    main()
