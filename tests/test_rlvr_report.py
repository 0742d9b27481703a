"""The RLVR study's report (oblr_theory.rlvr_report) on planted rows: a planted difference is
detected and a null one is not, few seeds give no verdict, an edge-tuned rate is flagged, the
same-rate comparison and the collapse counts by rate ratio."""

import numpy as np

from oblr_theory import rlvr_report


def _planted_rows(gain: float, seeds=range(8)):
    """Rows of two methods whose sampled-accuracy curves differ by ``gain`` at every step after 0."""
    rng = np.random.default_rng(0)
    rows = []
    for est, extra in (("grpo", 0.0), ("optimal_loo", gain)):
        for s in seeds:
            noise = rng.normal(0, 0.01)
            base = {"key": f"{est}-{s}", "phase": "eval", "method": f"base/{est}/constant/adamw_torch",
                    "variant": "base", "estimator": est, "rule": "constant", "optim": "adamw_torch", "lr": 1e-3,
                    "seed": s, "status": "done"}
            for step in (0, 10, 20):
                acc = 0.2 + (0.0 if step == 0 else 0.01 * step / 10 + extra + noise + 0.002 * s)
                rows.append({**base, "step": step, "wall_s": 0.1 * step, "acc_sampled": acc, "acc_greedy": acc,
                             "train_log": {}})
    return rows


def test_report_detects_a_planted_difference_and_not_a_null_one():
    tuning = [{"method": "base/grpo/constant/adamw_torch", "status": "done", "best_lr": 1e-3,
               "grid": [5e-4, 1e-3, 2e-3], "position": "interior", "extensions": 0},
              {"method": "base/optimal_loo/constant/adamw_torch", "status": "done", "best_lr": 2e-3,
               "grid": [5e-4, 1e-3, 2e-3], "position": "high_edge", "extensions": 3}]
    s = rlvr_report.summarize(_planted_rows(0.05), tuning, n_boot=2000)
    (p,) = s["paired"]
    assert p["kind"] == "vs_grpo" and p["auc"]["verdict"] == "wins" and p["auc"]["low"] > 0
    (same,) = s["same_rate"]  # grpo's runs share optimal_loo's rate here
    assert same["kind"] == "vs_grpo_same_rate" and same["auc"]["verdict"] == "wins"
    assert s["edge_tuned"] == ["base/optimal_loo/constant/adamw_torch"]
    assert [(c["ratio"], c["collapsed"], c["runs"]) for c in s["collapse_by_rate_ratio"]] == [(0.5, 0, 8), (1.0, 0, 8)]
    assert "EDGE" in rlvr_report.markdown(s)
    (p0,) = rlvr_report.summarize(_planted_rows(0.0), tuning, n_boot=2000)["paired"]
    assert p0["auc"]["verdict"] != "wins"  # negative control (seeded noise: independent across methods)
    (few,) = rlvr_report.summarize(_planted_rows(0.05, seeds=range(3)), tuning, n_boot=2000)["paired"]
    assert few["auc"]["verdict"].startswith("no verdict")
