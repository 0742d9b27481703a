"""Benchmark: sampled token-MDP sequences scored per second, against per-sample torch autograd.

    python experiments/benchmarks/bench_montecarlo.py [--sequences N] [--baseline-sequences M] [--seed S]

Problem: the V = 16, H = 12 log-linear token MDP of ``oblr-theory verify`` (16^12 sequences, far
too many to enumerate). Ours: :func:`oblr_theory.montecarlo.sample_sequences`, all sequences
advanced together, scores added analytically (``e_y − π_t`` at each active table row). Ours is
called on ``--chunk`` sequences at a time; the default is the library's own chunk bound,
``MAX_CHUNK_ENTRIES // dim`` sequences (8064 here: a 32 MB score array per call, as
``iter_groups`` uses), since per-step Python overhead is paid once per call.

Baseline (measured in the same run, on sequences our sampler drew, so both compute the same
scores): one sequence at a time, the straightforward torch route. For each sequence the active
table rows of every step come from the problem's own ``param_rows``; then torch gathers ``θ`` into
the logits, takes ``log_softmax``, sums the log-probabilities of the sampled tokens and calls
``backward``. We also time the torch part alone (rows precomputed outside the clock), the
baseline's lower bound. Both baselines use one torch thread (the tensors are tiny).

Prints one JSON object; ``ratio`` is ours over the full per-sample baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from oblr_theory import montecarlo as mc  # noqa: E402
from oblr_theory.problems import TokenMDP  # noqa: E402
from oblr_theory.results import git_revision  # noqa: E402

TARGET_RATIO = 100.0


def make_problem() -> TokenMDP:
    """The verify suite's large token MDP (``claims_static.PROBLEMS``)."""
    from oblr_theory.verify.claims_static import problem

    return problem("mdp loglinear V=16 H=12 X=2")


def sequence_rows(problem: TokenMDP, prompt: int, tokens_h: np.ndarray, length: int) -> np.ndarray:
    """Active parameter rows of every step of one sequence, (length, n_tables), via ``param_rows``."""
    V = problem.vocab_size
    prev, code, rows = 0, 0, []
    for t in range(length):
        rows.append(problem.param_rows(np.array([prompt]), t, np.array([prev]), np.array([code]))[0])
        y = int(tokens_h[t])
        prev, code = y, code * (V - 1) + y - 1
    return np.stack(rows)


def torch_score(torch, theta, rows_tk, tokens_t, V):
    """``∇θ Σ_t log softmax(Σ_k θ[row_k(t)])[y_t]`` by autograd, one sequence."""
    th = theta.detach().requires_grad_(True)
    idx = torch.as_tensor(rows_tk[:, :, None] + np.arange(V))  # (T, k, V)
    logp = torch.log_softmax(th[idx].sum(dim=1), dim=-1)  # (T, V)
    logp.gather(1, torch.as_tensor(tokens_t[:, None])).sum().backward()
    return th.grad


def bench_ours(problem, n_total: int, chunk: int, rng) -> tuple[float, mc.SequenceScores]:
    prompts = mc.draw_prompts(problem, chunk, rng)
    mc.sample_sequences(problem, prompts, rng)  # warm-up
    t0 = time.perf_counter()
    done, last = 0, None
    while done < n_total:
        last = mc.sample_sequences(problem, mc.draw_prompts(problem, chunk, rng), rng)
        done += chunk
    return done / (time.perf_counter() - t0), last


def bench_torch(problem, seq: mc.SequenceScores, m: int):
    import torch

    torch.set_num_threads(1)
    V = problem.vocab_size
    theta = torch.tensor(problem.theta, dtype=torch.float64)
    lengths = seq.lengths.astype(int)
    # full baseline: rows + torch, per sequence
    t0 = time.perf_counter()
    grads = []
    for i in range(m):
        rows = sequence_rows(problem, int(seq.prompts[i]), seq.tokens[i], lengths[i])
        grads.append(torch_score(torch, theta, rows, seq.tokens[i, :lengths[i]], V))
    full = m / (time.perf_counter() - t0)
    err = float(max(np.max(np.abs(g.numpy() - seq.scores[i])) for i, g in enumerate(grads)))
    # torch only: rows precomputed outside the clock
    rows_all = [sequence_rows(problem, int(seq.prompts[i]), seq.tokens[i], lengths[i]) for i in range(m)]
    t0 = time.perf_counter()
    for i in range(m):
        torch_score(torch, theta, rows_all[i], seq.tokens[i, :lengths[i]], V)
    autograd_only = m / (time.perf_counter() - t0)
    return full, autograd_only, err, torch.__version__


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequences", type=int, default=200_000, help="sequences sampled and scored by ours")
    p.add_argument("--chunk", type=int, default=None,
                   help="sequences per sampler call (default: MAX_CHUNK_ENTRIES // dim, the library's chunk bound)")
    p.add_argument("--baseline-sequences", type=int, default=400, help="sequences scored by the torch baselines")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    problem = make_problem()
    chunk = args.chunk if args.chunk is not None else max(1, mc.MAX_CHUNK_ENTRIES // problem.dim)
    rng = np.random.default_rng(np.random.SeedSequence(args.seed))
    ours, last = bench_ours(problem, args.sequences, chunk, rng)
    m = min(args.baseline_sequences, len(last.prompts))
    full, autograd_only, err, torch_version = bench_torch(problem, last, m)
    out = {
        "problem": repr(problem), "dim": problem.dim, "mean_length": float(last.lengths.mean()),
        "sequences_per_second": ours,
        "baseline_sequences_per_second": full,
        "ratio": ours / full,
        "baseline_autograd_only_sequences_per_second": autograd_only,
        "ratio_vs_autograd_only": ours / autograd_only,
        "target_ratio": TARGET_RATIO, "meets_target": bool(ours / full >= TARGET_RATIO),
        "max_abs_score_difference": err,
        "sequences": args.sequences, "baseline_sequences": m, "chunk": chunk, "seed": args.seed,
        "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(), "numpy": np.__version__, "torch": torch_version,
        "git_revision": git_revision(),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
