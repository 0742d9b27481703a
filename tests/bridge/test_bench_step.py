"""Smoke test: experiments/benchmarks/bench_step.py runs end to end on a toy size, prints its JSON and, with
``--profile``, writes the operator tables. Timings are not asserted (ratios are benchmark output)."""

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ARGS = [
    "--hidden", "32", "--n-layers", "1", "--heads", "2", "--kv-heads", "1", "--head-dim", "16",
    "--intermediate", "48", "--vocab", "64", "--batch", "2", "--group", "3", "--prompt-len", "4",
    "--completion-len", "6", "--repeats", "1", "--warmup", "0",
]


def _reject(constant: str):
    raise ValueError(f"non-standard JSON constant {constant}")


def test_smoke_bench_step(tmp_path):
    table = tmp_path / "profile.txt"
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "benchmarks", "bench_step.py"), *ARGS, "--profile", str(table)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    result = json.loads(out.stdout, parse_constant=_reject)  # strict JSON: no NaN / Infinity
    assert set(result["median_s"]) == {"grpo", "oblr_po", "oblr_po_two_pass", "ghost", "ghost_diagonal"}
    assert result["oblr_po_single_pass"] is True
    assert result["ratio_oblr_po_over_grpo"] > 0 and result["target_ratio"] == 1.3
    ops = result["dispatched_ops"]
    assert 0 < ops["grpo"]["compute"] <= ops["grpo"]["all"]
    assert 0 < ops["oblr_po"]["compute"] <= ops["oblr_po"]["all"]
    assert set(result["peak_bytes"].values()) == {None}  # not measured on a CPU
    text = table.read_text()
    assert "== grpo:" in text and "== oblr_po:" in text


def test_bench_step_ops_layer_extrapolation_equals_a_direct_count_on_a_tiny_model():
    """The fast case of the check below: operator counts are additive in layers, so 2- and
    3-layer counts extrapolate to a direct count of a 4-layer model (tiny widths, one chunk)."""
    sys.path.insert(0, os.path.join(ROOT, "experiments", "benchmarks"))
    import bench_step
    import bench_step_ops

    def count(n_layers):
        return bench_step_ops.count_update_ops(bench_step.Config(
            hidden=32, n_layers=n_layers, heads=2, kv_heads=1, head_dim=16, intermediate=48,
            vocab=64, batch=2, group=2, prompt_len=4, completion_len=6))

    got = bench_step_ops.extrapolate(count(2), count(3), None, 4, 1, 1)
    direct = count(4)
    for job in ("grpo", "oblr_po"):
        assert (got[job]["all"], got[job]["compute"]) == (direct[job]["all"], direct[job]["compute"])
        assert got[job]["compute_per_layer"] > 0


@pytest.mark.slow  # about 5 minutes on two CPU cores: Qwen3-0.6B widths
def test_bench_step_ops_extrapolation_equals_a_direct_count():
    """experiments/benchmarks/bench_step_ops.py extrapolates operator counts from small models
    (layers and LM-head chunks are additive); checked against a direct count of a 3-layer model
    with 4 chunks at Qwen3-0.6B widths."""
    sys.path.insert(0, os.path.join(ROOT, "experiments", "benchmarks"))
    import bench_step
    import bench_step_ops

    chunk = bench_step_ops.MAX_ELEMS // (4 * 1024)
    vocab = 3 * chunk + 64  # 4 chunks, the last one partial (whole norm blocks, as 151936's)
    result = bench_step_ops.run("0.6B", 3, vocab, "float32", 4)
    assert result["lm_head_chunks"] == 4
    direct = bench_step_ops.count_update_ops(bench_step.Config(
        shape="0.6B", layers=3, vocab=vocab, batch=4, group=2, prompt_len=4, completion_len=12))
    for job in ("grpo", "oblr_po"):
        got = result["dispatched_ops"][job]
        assert (got["all"], got["compute"]) == (direct[job]["all"], direct[job]["compute"])
    with pytest.raises(ValueError, match="--layers must be at least 2"):
        bench_step_ops.run("0.6B", 1, vocab, "float32", 4)


def test_smoke_bench_step_phases_accounts_for_every_operator():
    """experiments/benchmarks/bench_step_phases.py runs end to end; its phases together hold every operator
    of an update (the same totals as bench_step's direct count, so no phase loses any), and the
    functions it wraps are restored afterwards. Times are not asserted."""
    sys.path.insert(0, os.path.join(ROOT, "experiments", "benchmarks"))
    import bench_step
    import bench_step_phases
    from oblr_theory.bridge import gram
    from oblr_theory.per_sample import GhostPass

    before = (GhostPass.__init__, gram.forward_logprobs, torch.Tensor.backward)
    cfg = bench_step.parse_config(ARGS, "test")
    result = bench_step_phases.run(cfg)
    assert (GhostPass.__init__, gram.forward_logprobs, torch.Tensor.backward) == before
    json.dumps(result, allow_nan=False)
    direct = bench_step.run(cfg)["dispatched_ops"]
    for job in ("grpo", "oblr_po"):
        phases = result["jobs"][job]["phases"]
        assert sum(p["compute_ops"] for p in phases.values()) == direct[job]["compute"]
        assert result["jobs"][job]["median_ms"] > 0
    assert phases["per-use rules (S)"]["compute_ops"] > 0 and phases["weighted pass"]["compute_ops"] > 0
    assert "weighted pass" not in result["jobs"]["grpo"]["phases"]
