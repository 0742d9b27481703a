"""Smoke test: experiments/benchmarks/bench_gram.py runs end to end on a toy size and prints its JSON."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


ARGS = [
    "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--head-dim", "16",
    "--intermediate", "48", "--vocab", "64", "--batch", "2", "--group", "3", "--seq-len", "10",
    "--prompt-len", "4", "--repeats", "1", "--dtype", "float64",
]


def run_bench(*extra):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "benchmarks", "bench_gram.py"), *ARGS, *extra],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return json.loads(out.stdout)


def test_bench_gram_smoke():
    result = run_bench("--no-memory")
    assert result["ghost_vs_loop_max_rel_err"] < 1e-9
    assert result["ratio_ghost_vs_plain"] > 0 and result["ratio_loop_vs_plain"] > 0


@pytest.mark.slow
def test_bench_gram_memory():
    result = run_bench()  # one fresh process per job
    assert set(result["peak_extra_bytes"]) == {"plain", "ghost", "loop"}
