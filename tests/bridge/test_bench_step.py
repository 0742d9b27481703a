"""Smoke test: experiments/bench_step.py runs end to end on a toy size, prints its JSON and, with
``--profile``, writes the operator tables. Timings are not asserted (ratios are benchmark output)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ARGS = [
    "--hidden", "32", "--n-layers", "1", "--heads", "2", "--kv-heads", "1", "--head-dim", "16",
    "--intermediate", "48", "--vocab", "64", "--batch", "2", "--group", "3", "--prompt-len", "4",
    "--completion-len", "6", "--repeats", "1", "--warmup", "0",
]


def test_smoke_bench_step(tmp_path):
    table = tmp_path / "profile.txt"
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "bench_step.py"), *ARGS, "--profile", str(table)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    result = json.loads(out.stdout)
    assert set(result["median_s"]) == {"grpo", "oblr_po", "oblr_po_two_pass", "ghost", "ghost_diagonal"}
    assert result["oblr_po_single_pass"] is True
    assert result["ratio_oblr_po_over_grpo"] > 0 and result["target_ratio"] == 1.3
    ops = result["dispatched_ops"]
    assert 0 < ops["grpo"]["compute"] <= ops["grpo"]["all"]
    assert 0 < ops["oblr_po"]["compute"] <= ops["oblr_po"]["all"]
    text = table.read_text()
    assert "== grpo:" in text and "== oblr_po:" in text
