"""Benchmark: one OBLR-PO update against one GRPO update on the same batch (generation excluded).

Both run through ``oblr_theory.bridge.step.OBLRPO.update`` on the same model, batch and rewards:

- ``grpo``: estimator ``grpo``, constant learning rate: forward + backward of the surrogate and an
  optimizer step (no Gram);
- ``oblr_po``: estimator ``optimal_loo`` with the exact ``S`` from the ghost Gram and the T7/T5
  SNR learning rate; one diagonal-only ghost pass (``S`` only) whose kept factors also give the
  update gradient and the per-group squared norms ``||u_b||²`` for the SNR
  (``score_gram(..., keep_factors=True, diagonal_only=True)``, then
  ``weighted_gradients(..., diagonal_only=True)``), optimizer step;
- ``oblr_po_two_pass``: the same with ``single_pass=False`` (Gram pass, then the surrogate's
  forward and backward);
- ``ghost``: the full (within-group) ghost Gram pass alone;
- ``ghost_diagonal``: the diagonal-only ghost pass alone (``S``, no cross terms).

Timings are medians (and minima, robust to other load on a shared machine) over ``--repeats``
interleaved rounds after ``--warmup`` rounds; on a GPU, each call is synchronised and the peak
memory (``max_memory_allocated``) is recorded (null on a CPU). The update's cost target is
``oblr_po / grpo <= 1.3``. Prints one JSON document (strict: no NaN).

``dispatched_ops``: the operators one GRPO and one OBLR-PO update dispatch (``count_ops``; all,
and those that are not views), a device-independent measure of the host work per update: on a
GPU an update whose kernels are small is bound by how fast the host issues them.

``--profile PATH`` also writes ``torch.profiler`` operator tables (sorted by self time on the
device) of one GRPO and one OBLR-PO update, after the timed rounds.

    python experiments/benchmarks/bench_step.py                         # small Qwen3 on CPU
    python experiments/benchmarks/bench_step.py --shape 0.6B --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from oblr_theory.bridge.gram import score_gram  # noqa: E402
from oblr_theory.bridge.models import qwen3_shaped  # noqa: E402
from oblr_theory.bridge.rollout import Rollout  # noqa: E402
from oblr_theory.bridge.step import OBLRPO, StepConfig  # noqa: E402
from oblr_theory.results import git_revision  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass
class Config:
    shape: str = "custom"  # "custom" (the fields below) or a QWEN3_SHAPES key, e.g. "0.6B"
    layers: int | None = None  # depth override for --shape
    hidden: int = 256
    n_layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    intermediate: int = 768
    vocab: int = 2048
    batch: int = 4  # B prompts
    group: int = 8  # G responses per prompt
    prompt_len: int = 16
    completion_len: int = 64  # longest completion; lengths are uniform in [len/2, len]
    dtype: str = "float32"
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    seed: int = 0
    profile: str = ""  # if set: torch.profiler tables of one grpo and one oblr_po update -> this file
    count_ops: int = 1  # 1: count the operators one grpo and one oblr_po update dispatch (host work)


def build_model(cfg: Config):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    dtype = DTYPES[cfg.dtype]
    if cfg.shape != "custom":
        return qwen3_shaped(cfg.shape, cfg.vocab, seed=cfg.seed, dtype=dtype,
                            num_hidden_layers=cfg.layers, device=cfg.device)
    qc = Qwen3Config(vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.n_layers,
                     num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
                     head_dim=cfg.head_dim, intermediate_size=cfg.intermediate,
                     tie_word_embeddings=True, max_position_embeddings=4096, pad_token_id=0,
                     eos_token_id=1)
    torch.manual_seed(cfg.seed)
    return Qwen3ForCausalLM(qc).to(dtype).to(cfg.device)


def build_batch(cfg: Config) -> Rollout:
    """Random prompts and completions (lengths uniform in [L/2, L]), right padding, 0/1 rewards."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    B, G, P, L = cfg.batch, cfg.group, cfg.prompt_len, cfg.completion_len
    T = P + L
    ids = torch.randint(2, cfg.vocab, (B, G, T), generator=g)
    ids[:, :, :P] = ids[:, :1, :P]  # one prompt per group
    lengths = torch.randint(max(1, L // 2), L + 1, (B, G), generator=g)
    pos = torch.arange(T)
    attn = pos < (P + lengths).unsqueeze(-1)
    comp = attn & (pos >= P)
    rewards = torch.randint(0, 2, (B, G), generator=g).double()
    rewards[:, 0], rewards[:, 1] = 1.0, 0.0  # every group has signal
    d = cfg.device
    return Rollout([None] * B, ids.to(d), attn.to(d), comp.to(d), [[""] * G] * B, rewards.to(d))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> tuple[float, float | None]:
    """(seconds, peak bytes above the start on GPU, else None: not measured)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    dt = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() - base) if device.startswith("cuda") else None
    return dt, peak


def write_profile(path: str, jobs: dict, device: str, rows: int = 30) -> None:
    """One call of each job under ``torch.profiler`` (CPU, and CUDA on a GPU): per-operator tables
    sorted by self time on the device, so a slow phase can be traced to its operators."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    parts = []
    for name, fn in jobs.items():
        _sync(device)
        with profile(activities=activities) as prof:
            fn()
            _sync(device)
        events = prof.key_averages()
        n_ops = sum(e.count for e in events)
        parts.append(f"== {name}: {n_ops} operator calls\n" + events.table(sort_by=sort, row_limit=rows))
    with open(path, "w") as f:
        f.write("\n\n".join(parts) + "\n")


def count_ops(fn) -> dict:
    """Operators one call of ``fn`` dispatches (autograd's backward included): ``all``, and
    ``compute`` (not views: each launches a kernel or allocates). On a GPU each costs host time
    whatever its size, so their ratio is a device-independent measure of the host work an
    update adds, next to the timed ratio."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.all, self.compute = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.all += 1
            self.compute += not (func.is_view or func is torch.ops.aten._unsafe_view.default)
            return func(*args, **(kwargs or {}))

    with _Count() as counter:
        fn()
    return {"all": counter.all, "compute": counter.compute}


def run(cfg: Config) -> dict:
    model = build_model(cfg).train()
    roll = build_batch(cfg)
    grpo = OBLRPO(model, StepConfig(estimator="grpo", lr_rule="constant", eta_max=1e-6))
    oblr = OBLRPO(model, StepConfig(estimator="optimal_loo", lr_rule="snr", eta_max=1e-6))
    two = OBLRPO(model, StepConfig(estimator="optimal_loo", lr_rule="snr", eta_max=1e-6, single_pass=False))
    args = (roll.input_ids_bgt, roll.attention_bgt, roll.completion_bgt)
    jobs = {"grpo": lambda: grpo.update(roll), "oblr_po": lambda: oblr.update(roll),
            "oblr_po_two_pass": lambda: two.update(roll),
            "ghost": lambda: score_gram(model, *args, method="ghost"),
            "ghost_diagonal": lambda: score_gram(model, *args, method="ghost", diagonal_only=True)}
    times = {k: [] for k in jobs}
    peaks = {k: [] for k in jobs}
    for r in range(cfg.warmup + cfg.repeats):
        for k, fn in jobs.items():
            dt, peak = _timed(fn, cfg.device)
            if r >= cfg.warmup:
                times[k].append(dt)
                peaks[k].append(peak)
    if cfg.profile:
        write_profile(cfg.profile, {k: jobs[k] for k in ("grpo", "oblr_po")}, cfg.device)
    ops = {k: count_ops(jobs[k]) for k in ("grpo", "oblr_po")} if cfg.count_ops else None
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # robust to other load on a shared machine
    ratio = med["oblr_po"] / med["grpo"]
    return {
        "benchmark": "bench_step",
        "config": asdict(cfg),
        "params": sum(p.numel() for p in model.parameters()),
        "tokens": int(roll.attention_bgt.sum()),
        "device": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu",
        "torch_threads": torch.get_num_threads(),
        "median_s": med,
        "min_s": best,
        "all_s": times,
        "ratio_min_oblr_po_over_grpo": best["oblr_po"] / best["grpo"],
        "ratio_min_two_pass_over_grpo": best["oblr_po_two_pass"] / best["grpo"],
        "peak_bytes": {k: max(v) if None not in v else None for k, v in peaks.items()},
        "dispatched_ops": ops,
        "ratio_compute_ops_oblr_po_over_grpo": (
            ops["oblr_po"]["compute"] / ops["grpo"]["compute"] if ops else None),
        "ratio_oblr_po_over_grpo": ratio,
        "ratio_ghost_over_grpo": med["ghost"] / med["grpo"],
        "ratio_ghost_diagonal_over_grpo": med["ghost_diagonal"] / med["grpo"],
        "ratio_two_pass_over_grpo": med["oblr_po_two_pass"] / med["grpo"],
        "oblr_po_single_pass": oblr.single_pass,
        "target_ratio": 1.3,
        "meets_target": bool(ratio <= 1.3),
        "note": "oblr_po: one diagonal-only ghost pass (S) whose kept factors give the update "
                "gradient and the per-group squared norms for T7 (single pass, when score_gram "
                "supports keep_factors); oblr_po_two_pass: full ghost Gram pass + surrogate "
                "forward/backward; ghost / ghost_diagonal: the full / diagonal-only Gram pass alone",
        "git_revision": git_revision(),
    }


def parse_config(argv, description: str) -> Config:
    """A :class:`Config` from command-line flags (one per field: ``--completion-len 64``)."""
    ap = argparse.ArgumentParser(description=description)
    for f, default in asdict(Config()).items():
        kind = type(default) if default is not None else int
        ap.add_argument("--" + f.replace("_", "-"), type=kind, default=default)
    cfg = Config(**vars(ap.parse_args(argv)))
    if cfg.dtype not in DTYPES:
        raise SystemExit(f"--dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but no CUDA GPU is visible")
    return cfg


def main(argv=None) -> None:
    cfg = parse_config(argv, __doc__.split("\n\n")[0])
    print(json.dumps(run(cfg), indent=2, allow_nan=False))  # strict JSON


if __name__ == "__main__":
    main()
