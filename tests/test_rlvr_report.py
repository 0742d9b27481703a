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


def _loop_rows(phase: str, lr: float, gain: float, seeds=range(8), seed: int = 0):
    """Rows of ``base/optimal_loo/constant/sgd`` runs in ``phase`` at rate ``lr``: curves
    ``0.2 + 0.01·step/10 + gain`` after step 0, with seeded noise; a constant logged grad norm."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in seeds:
        noise = rng.normal(0, 0.01, size=3)
        base = {"key": f"{phase}-{lr}-{s}", "phase": phase, "method": "base/optimal_loo/constant/sgd",
                "variant": "base", "estimator": "optimal_loo", "rule": "constant", "optim": "sgd", "lr": lr,
                "seed": s, "status": "done"}
        for i, step in enumerate((0, 10, 20)):
            acc = 0.2 + (0.0 if step == 0 else 0.01 * step / 10 + gain + noise[i])
            log = {} if step == 0 else ({"grad_norm": 1.0} if phase == "bridge" else {"grad_norm": 1.0, "reward": 0.3})
            rows.append({**base, "step": step, "wall_s": 0.1 * step, "acc_sampled": acc, "acc_greedy": acc,
                         "train_log": log})
    return rows


def test_bridge_comparison_same_curve_and_a_control_that_differs():
    """The study's rows (phase eval) against bridge rows at the study's rate (same law: "same
    curve" for this seeded draw, which is also the null's likely outcome) and at another rate whose
    curve is 0.05 lower (a control: "differs"); fewer than 8 runs a side: no verdict; runs at
    different steps or too few runs are refused."""
    import pytest

    study = _loop_rows("eval", 0.025, 0.0, seed=1)
    bridge = _loop_rows("bridge", 0.025, 0.0, seed=2) + _loop_rows("bridge", 0.1, -0.05, seed=3)
    c = rlvr_report.bridge_comparison(study, bridge, "base/optimal_loo/constant/sgd")
    rep, ctl = c["groups"]
    assert (rep["lr"], rep["role"], ctl["lr"], ctl["role"]) == (0.025, "reproduction", 0.1, "control")
    assert rep["sampled"]["verdict"] == "same curve" and ctl["sampled"]["verdict"] == "differs"
    assert rep["sampled"]["family"] == 3 and rep["sampled"]["rows"][0]["constant"]  # steps 10, 20 and the AUC
    assert rep["logs"]["grad_norm"] == [1.0, 1.0] and rep["logs"]["reward_mean"] == [None, 0.3]
    assert "**differs**" in rlvr_report.bridge_markdown(c)
    few = rlvr_report.bridge_comparison(study, _loop_rows("bridge", 0.025, 0.0, seeds=range(3)),
                                        "base/optimal_loo/constant/sgd")
    assert few["groups"][0]["sampled"]["verdict"].startswith("no verdict")
    with pytest.raises(ValueError, match=">= 2 runs"):
        rlvr_report.bridge_comparison(study, [], "base/optimal_loo/constant/sgd")
    shifted = [{**r, "step": r["step"] * 2} for r in _loop_rows("bridge", 0.025, 0.0)]
    with pytest.raises(ValueError, match="same steps"):
        rlvr_report.bridge_comparison(study, shifted, "base/optimal_loo/constant/sgd")
