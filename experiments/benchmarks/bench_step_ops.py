"""Host work per update: operators one GRPO and one OBLR-PO update dispatch, at Qwen3-0.6B's layer
shapes and real vocabulary, counted on a CPU (no GPU needed) and extrapolated.

On a GPU every dispatched operator costs host time whatever its size, so when an update's kernels
are small (bf16, Qwen3-0.6B, a few thousand tokens) the update is bound by how fast the host issues
them; the ratio of the counts is a device-independent measure of the host work OBLR-PO adds.
The counts (``bench_step.count_ops``: ``all``, and ``compute``, those that are not views) do not
depend on the device, on ``G`` or on the sequence length while the routes stay the same, and they
are additive in layers and in LM-head chunks of the weighted pass (``max_elems // (B d)`` rows)
beyond the second (the first extra chunk also allocates the gradient), so three small models
give them for the full one: (2 layers, c chunks), (3 layers, c) and (2 layers, c + 1) with
``c = min(2, chunks)``, extrapolated to ``--layers`` and the chunks of ``--vocab``
(``tests/bridge/test_bench_step.py`` checks the extrapolation against a direct count). Exact when
the last chunk's rows fill whole norm blocks of ``BLOCK`` entries (true for 151936 rows of 1024 at
B = 4), else one reduction too few. Prints JSON.

    python experiments/benchmarks/bench_step_ops.py                      # fp32, 28 layers, vocab 151936
    python experiments/benchmarks/bench_step_ops.py --dtype bfloat16     # slow on a CPU (bf16 matmuls)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_step as bs  # noqa: E402
from oblr_theory.bridge.models import QWEN3_SHAPES  # noqa: E402
from oblr_theory.bridge.step import OBLRPO, StepConfig  # noqa: E402

MAX_ELEMS = 2**26  # score_gram's default bound on a temporary block
JOBS = {"grpo": ("grpo", "constant"), "oblr_po": ("optimal_loo", "snr")}


def count_update_ops(cfg: bs.Config) -> dict:
    """``count_ops`` of one warm GRPO and one warm OBLR-PO update on ``cfg``'s model and batch."""
    model = bs.build_model(cfg).train()
    roll = bs.build_batch(cfg)
    out = {}
    for name, (estimator, lr_rule) in JOBS.items():
        step = OBLRPO(model, StepConfig(estimator=estimator, lr_rule=lr_rule, eta_max=1e-6))
        step.update(roll)  # warm: one-time checks (e.g. the norms' affine check) run once
        out[name] = bs.count_ops(lambda: step.update(roll))
    return out


def extrapolate(base: dict, more_layers: dict, more_chunks: dict | None, layers: int,
                chunks: int, base_chunks: int) -> dict:
    """``count(L, C) = c(2, c) + (L − 2)·[c(3, c) − c(2, c)] + (C − c)·[c(2, c + 1) − c(2, c)]``
    with ``c = base_chunks`` (``more_chunks`` is ``c(2, c + 1)``, unused when ``C = c``)."""
    res = {}
    for job in JOBS:
        per_layer = {m: more_layers[job][m] - base[job][m] for m in ("all", "compute")}
        per_chunk = {m: (more_chunks[job][m] - base[job][m]) if more_chunks else 0
                     for m in ("all", "compute")}
        res[job] = {m: base[job][m] + (layers - 2) * per_layer[m]
                    + (chunks - base_chunks) * per_chunk[m] for m in ("all", "compute")}
        res[job]["compute_per_layer"] = per_layer["compute"]
        res[job]["compute_per_head_chunk"] = per_chunk["compute"]
    return res


def run(shape: str, layers: int, vocab: int, dtype: str, batch: int) -> dict:
    if shape not in QWEN3_SHAPES:
        raise ValueError(f"--shape must be one of {sorted(QWEN3_SHAPES)}, got {shape!r}")
    if layers < 2:
        raise ValueError(f"--layers must be at least 2, got {layers}")
    hidden = QWEN3_SHAPES[shape]["hidden_size"]
    chunk = MAX_ELEMS // (batch * hidden)  # LM-head rows per chunk of the weighted pass
    chunks = -(-vocab // chunk)
    c = min(2, chunks)

    def cfg(n_layers: int, n_chunks: int) -> bs.Config:
        return bs.Config(shape=shape, layers=n_layers, vocab=min(vocab, n_chunks * chunk),
                         batch=batch, group=2, prompt_len=4, completion_len=12, dtype=dtype)

    more_chunks = count_update_ops(cfg(2, c + 1)) if chunks > c else None
    counts = extrapolate(count_update_ops(cfg(2, c)), count_update_ops(cfg(3, c)), more_chunks,
                         layers, chunks, c)
    return {
        "benchmark": "bench_step_ops",
        "shape": shape, "layers": layers, "vocab": vocab, "lm_head_chunks": chunks,
        "batch": batch, "dtype": dtype,
        "dispatched_ops": counts,
        "ratio_compute_ops_oblr_po_over_grpo": counts["oblr_po"]["compute"] / counts["grpo"]["compute"],
        "ratio_all_ops_oblr_po_over_grpo": counts["oblr_po"]["all"] / counts["grpo"]["all"],
        "git_revision": bs.git_revision(),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="0.6B")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", default="float32", choices=sorted(bs.DTYPES))
    ns = ap.parse_args(argv)
    torch.manual_seed(0)
    print(json.dumps(run(ns.shape, ns.layers, ns.vocab, ns.dtype, ns.batch), indent=2))


if __name__ == "__main__":
    main()
