"""``oblr-theory figures --quick``: the CI smoke test of the whole figure pipeline."""

import json
import os
import warnings

from oblr_theory import cli, figures


def test_smoke(tmp_path):
    """Quick experiments, then every figure as PNG and PDF; a second run resumes (no new rows)."""
    res, fig = str(tmp_path / "results"), str(tmp_path / "figures")
    with warnings.catch_warnings():  # no RuntimeWarning reaches the terminal
        warnings.simplefilter("error", RuntimeWarning)
        assert cli.main(["figures", "--quick", "--results", res, "--figures", fig]) == 0
    for name in figures.FIGURES:
        for ext in ("png", "pdf"):
            path = os.path.join(fig, f"{name}.{ext}")
            assert os.path.getsize(path) > 1000, path
    rows = [json.loads(line) for line in open(os.path.join(res, "comparison.jsonl"))]
    assert all({"key", "seed", "rev", "eta", "final_objective"} <= set(r) for r in rows)
    before = {f: os.path.getsize(os.path.join(res, f)) for f in os.listdir(res)}
    assert figures.main(["--quick", "--results", res, "--figures", fig, "--only", "t4_bound"]) == 0
    assert before == {f: os.path.getsize(os.path.join(res, f)) for f in os.listdir(res)}


def test_missing_results_is_reported(tmp_path):
    assert figures.main(["--results", str(tmp_path), "--figures", str(tmp_path / "f"), "--only", "t4_bound"]) == 1
