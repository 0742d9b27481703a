"""Benchmark: exact per-sample score Grams (ghost, loop) against one plain GRPO training step.

Four jobs run side by side in one process on the same model and batch:

- ``plain``: forward + backward of the usual GRPO surrogate ``L = −Σ_bj A_bj seq_logp_bj / (B G)``
  (parameter gradients accumulated as in training, then cleared);
- ``ghost``: ``score_gram(..., method="ghost")`` (one forward, one backward, exact Gram);
- ``ghost_weighted``: the OBLR-PO update's gradient work, from the same single pass:
  ``score_gram(..., keep_factors=True)``, advantages ``A = optimal_loo(r, S)`` from the registry
  on the Gram's diagonal (binary rewards ``r = [A_plain > 0]``), then
  ``weighted_gradients(−A/(B G))`` (``.grad`` of the surrogate and the B × B per-group Gram for
  T7), then cleared;
- ``loop``: ``score_gram(..., method="loop")`` (one backward per sequence, exact Gram).

Timings are medians (and minima) over ``--repeats`` interleaved rounds after a warm-up round
(the loop: one timed round); ratios are taken on the same batch in the same run. Peak memory:
on GPU, ``torch.cuda.max_memory_allocated`` above the resident model and batch; on CPU, the
peak resident set (VmHWM, reset through /proc/self/clear_refs, or ru_maxrss) above the RSS
before the call, each job in its own fresh process so that allocator caches don't hide peaks.
Prints one JSON document (a list of results in ``--gpu`` mode, one per dtype).

    python experiments/benchmarks/bench_gram.py                      # small Qwen3 on CPU
    python experiments/benchmarks/bench_gram.py --gpu    # Qwen3-0.6B shape, random weights, bf16 and fp32
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from oblr_theory import estimators  # noqa: E402
from oblr_theory.bridge import score_gram, sequence_logprobs  # noqa: E402
from oblr_theory.bridge.models import QWEN3_SHAPES  # noqa: E402
from oblr_theory.results import git_revision  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
JOBS = ("plain", "ghost", "ghost_weighted", "loop")


@dataclass
class BenchConfig:
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    intermediate: int = 768
    vocab: int = 4096
    tied: bool = True
    batch: int = 4  # B prompts
    group: int = 8  # G responses per prompt
    seq_len: int = 128  # T
    prompt_len: int = 32
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0


_Q06 = QWEN3_SHAPES["0.6B"]  # the published Qwen3-0.6B shape, random weights
GPU_SHAPE = dict(
    hidden=_Q06["hidden_size"], layers=_Q06["num_hidden_layers"], heads=_Q06["num_attention_heads"],
    kv_heads=_Q06["num_key_value_heads"], head_dim=_Q06["head_dim"], intermediate=_Q06["intermediate_size"],
    tied=_Q06["tie_word_embeddings"], vocab=151936, batch=2, group=8, seq_len=512, prompt_len=128,
)


def build(cfg: BenchConfig):
    """Random-weight Qwen3 model, a padded (B, G, T) batch with shared prompts, and advantages."""
    torch.manual_seed(cfg.seed)
    qcfg = transformers.Qwen3Config(
        hidden_size=cfg.hidden, intermediate_size=cfg.intermediate, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim,
        vocab_size=cfg.vocab, tie_word_embeddings=cfg.tied, max_position_embeddings=4 * cfg.seq_len,
    )
    model = transformers.AutoModelForCausalLM.from_config(qcfg, dtype=DTYPES[cfg.dtype])
    model = model.to(cfg.device).eval()
    B, G, T, P = cfg.batch, cfg.group, cfg.seq_len, cfg.prompt_len
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    ids_bgt = torch.randint(0, cfg.vocab, (B, G, T), generator=gen)
    ids_bgt[:, :, :P] = ids_bgt[:, :1, :P]  # one prompt per group
    lengths_bg = torch.randint((T - P) // 2, T - P + 1, (B, G), generator=gen)  # completions
    pos_t = torch.arange(T)
    attn_bgt = (pos_t < (P + lengths_bg).unsqueeze(-1)).long()  # right padding
    comp_bgt = attn_bgt * (pos_t >= P).long()
    adv_bg = torch.randn(B, G, generator=gen)
    dev = cfg.device
    batch = (ids_bgt.to(dev), attn_bgt.to(dev), comp_bgt.to(dev))
    return model, batch, adv_bg.to(dev)


def surrogate_backward(model, batch, w_bg) -> None:
    """``backward()`` of ``Σ_bj w_bj seq_logp_bj`` (plain GRPO: ``w = −A/(B G)``)."""
    out = sequence_logprobs(model, *batch)
    (w_bg.to(out.seq_logp_bg.dtype) * out.seq_logp_bg).sum().backward()


def oblr_weighted(model, batch, adv_bg):
    """One ghost pass, ``A = optimal_loo(r, S)``, then ``weighted_gradients(−A/(B G))``.

    Returns ``(weights_bg, gram_bb)``; the surrogate's gradient is left in ``.grad``.
    """
    B, G = adv_bg.shape
    res = score_gram(model, *batch, method="ghost", keep_factors=True)
    rewards_bg = (adv_bg > 0).to(torch.float64)
    A_bg = estimators.get("optimal_loo").advantages(rewards_bg, sq_norms=res.sq_norms_bg)
    w_bg = -A_bg / (B * G)
    return w_bg, res.weighted_gradients(w_bg)


def run_job(job: str, model, batch, adv_bg):
    """One call of a job; returns the Gram for ghost/loop (None for plain)."""
    B, G = adv_bg.shape
    if job == "plain":
        surrogate_backward(model, batch, -adv_bg / (B * G))
        model.zero_grad(set_to_none=True)
        return None
    if job == "ghost_weighted":
        _, gram_bb = oblr_weighted(model, batch, adv_bg)
        model.zero_grad(set_to_none=True)
        return None
    return score_gram(model, *batch, method=job).gram_bgg


def weighted_grad_error(cfg: BenchConfig) -> float:
    """Max-entry relative error of ``weighted_gradients``' ``.grad`` against autograd's backward
    of the same surrogate (float32 round-off in float32; see docs/bridge.md)."""
    model, batch, adv_bg = build(cfg)
    w_bg, _ = oblr_weighted(model, batch, adv_bg)
    params = [p for p in model.parameters() if p.requires_grad]
    got = [p.grad.detach().clone() for p in params]
    model.zero_grad(set_to_none=True)
    surrogate_backward(model, batch, w_bg)
    scale = max(float(p.grad.abs().max()) for p in params)
    err = max(float((g - p.grad).abs().max()) for g, p in zip(got, params)) / scale
    model.zero_grad(set_to_none=True)
    return err


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_jobs(cfg: BenchConfig, jobs, repeats: int) -> tuple[dict, dict]:
    """Median seconds per job over interleaved rounds (round 0 is a discarded warm-up)."""
    model, batch, adv_bg = build(cfg)
    times = {j: [] for j in jobs}
    grams = {}
    for rnd in range(repeats + 1):
        for job in jobs:
            if job == "loop" and rnd > 1:
                continue  # the loop is G times slower; one timed round is enough
            _sync(cfg.device)
            t0 = time.perf_counter()
            gram = run_job(job, model, batch, adv_bg)
            _sync(cfg.device)
            if rnd > 0:
                times[job].append(time.perf_counter() - t0)
            if gram is not None:
                grams[job] = gram
    stats = {
        j: {"median": statistics.median(v), "min": min(v), "rounds": len(v)}
        for j, v in times.items()
    }
    return stats, grams


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_peak_child(cfg_dict: dict, job: str, queue) -> None:
    """In a fresh process: peak RSS above the pre-call RSS for one call of ``job``."""
    cfg = BenchConfig(**cfg_dict)
    model, batch, adv_bg = build(cfg)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        hwm = True
    except OSError:
        hwm = False
    before = _rss_bytes()
    run_job(job, model, batch, adv_bg)
    if hwm:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmHWM"))
        peak = int(line.split()[1]) * 1024
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put(max(peak - before, 0))


def peak_memory(cfg: BenchConfig, jobs) -> dict:
    """Peak extra memory (bytes) of one call of each job, above model + batch."""
    if cfg.device.startswith("cuda"):
        model, batch, adv_bg = build(cfg)
        out = {}
        for job in jobs:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run_job(job, model, batch, adv_bg)
            torch.cuda.synchronize()
            out[job] = torch.cuda.max_memory_allocated() - base
        return out
    ctx = mp.get_context("spawn")
    out = {}
    for job in jobs:
        queue = ctx.Queue()
        proc = ctx.Process(target=_cpu_peak_child, args=(asdict(cfg), job, queue))
        proc.start()
        out[job] = queue.get()
        proc.join()
    return out


def bench(cfg: BenchConfig, repeats: int, with_loop: bool, with_memory: bool) -> dict:
    jobs = JOBS if with_loop else JOBS[:3]
    secs, grams = time_jobs(cfg, jobs, repeats)
    result = {
        "config": asdict(cfg),
        "device_name": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git": git_revision(),
        "seconds": secs,
        "ratio_ghost_vs_plain": secs["ghost"]["median"] / secs["plain"]["median"],
        "ratio_ghost_vs_plain_min": secs["ghost"]["min"] / secs["plain"]["min"],
        "ratio_ghost_weighted_vs_plain": secs["ghost_weighted"]["median"] / secs["plain"]["median"],
        "ratio_ghost_weighted_vs_plain_min": secs["ghost_weighted"]["min"] / secs["plain"]["min"],
        "weighted_grad_vs_autograd_max_rel_err": weighted_grad_error(cfg),
    }
    if with_loop:
        result["ratio_loop_vs_plain"] = secs["loop"]["median"] / secs["plain"]["median"]
        result["ratio_loop_vs_plain_min"] = secs["loop"]["min"] / secs["plain"]["min"]
        ref, got = grams["loop"], grams["ghost"]
        result["ghost_vs_loop_max_rel_err"] = float((got - ref).abs().max() / ref.abs().max())
    if with_memory:
        mem = peak_memory(cfg, jobs)
        weighted = mem.pop("ghost_weighted")
        result["peak_extra_bytes"] = mem
        result["memory_ratio_ghost_vs_plain"] = mem["ghost"] / max(mem["plain"], 1)
        result["peak_extra_bytes_ghost_weighted"] = weighted
        result["memory_ratio_ghost_weighted_vs_plain"] = weighted / max(mem["plain"], 1)
        if with_loop:
            result["memory_ratio_loop_vs_plain"] = mem["loop"] / max(mem["plain"], 1)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    d = BenchConfig()
    for name in ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab",
                 "batch", "group", "seq_len", "prompt_len", "seed"):
        gpu_default = GPU_SHAPE.get(name, getattr(d, name))
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help=f"default {getattr(d, name)} (CPU) / {gpu_default} (--gpu)")
    p.add_argument("--untied", action="store_true", help="separate lm_head and embed_tokens")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default float32 (CPU); --gpu runs bfloat16 and float32")
    p.add_argument("--gpu", action="store_true", help="Qwen3-0.6B shape on cuda, bf16 and fp32")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (loop: 1)")
    p.add_argument("--no-loop", action="store_true", help="skip the per-sequence loop")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    return p.parse_args(argv)


def configs_from_args(args) -> list[BenchConfig]:
    base = asdict(BenchConfig())
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA device")
        base.update(GPU_SHAPE, device="cuda")
    for name in ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab",
                 "batch", "group", "seq_len", "prompt_len", "seed"):
        if getattr(args, name) is not None:
            base[name] = getattr(args, name)
    if args.untied:
        base["tied"] = False
    if base["prompt_len"] >= base["seq_len"]:
        raise SystemExit("--prompt-len must be smaller than --seq-len")
    dtypes = [args.dtype] if args.dtype else (["bfloat16", "float32"] if args.gpu else ["float32"])
    return [BenchConfig(**{**base, "dtype": dt}) for dt in dtypes]


def main(argv=None) -> None:
    args = parse_args(argv)
    results = [
        bench(cfg, args.repeats, not args.no_loop, not args.no_memory)
        for cfg in configs_from_args(args)
    ]
    print(json.dumps(results if args.gpu else results[0], indent=2))


if __name__ == "__main__":
    main()
