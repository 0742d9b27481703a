"""The RLVR study harness (experiments/rlvr_study.py, oblr_theory.integrations.rlvr): held-out
split, SFT refusal, the --gpu refusal, method selection, and a `smoke` run of a quick slice that
resumes without rerunning anything (the report's statistics: tests/test_rlvr_report.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")

import torch  # noqa: E402

from oblr_theory import rlvr_report  # noqa: E402
from oblr_theory.integrations import rlvr  # noqa: E402
from scripts import load_script  # noqa: E402

pytestmark = [pytest.mark.torch]



def _script():
    return load_script("experiments/rlvr_study.py", "_rlvr_study")


def test_held_out_problems_are_never_training_prompts():
    for name in rlvr.VARIANTS:
        task = rlvr.variant_task(name)
        ev = rlvr.held_out(task, 50, seed=3)
        assert len(set(ev)) == 50 and ev == rlvr.held_out(task, 50, seed=3)
        train = rlvr.TrainSampler(task, ev).sample(2000, np.random.default_rng(0))
        assert not set(train) & set(ev)
    with pytest.raises(ValueError, match="n_eval"):
        rlvr.held_out(rlvr.variant_task("base"), 10_000, seed=0)


def test_hard_variant_has_more_spread_in_answer_length():
    rng = np.random.default_rng(0)
    spread = {name: np.std([len(p.answer) for p in rlvr.variant_task(name).sample(2000, rng)])
              for name in rlvr.VARIANTS}
    assert spread["hard"] > 1.5 * spread["base"], spread


def test_sft_refuses_when_the_band_is_not_reached(tmp_path):
    cfg = rlvr.SFTConfig(model="quick", max_steps=2, check_every=1, n_eval=20)
    with pytest.raises(rlvr.BandNotReached, match="max_steps=2"):
        rlvr.sft_checkpoint(str(tmp_path), cfg)
    assert not any(p.startswith("sft_") for p in os.listdir(tmp_path))  # nothing saved


def test_gpu_mode_builds_its_plan_and_refuses_cleanly_without_cuda(tmp_path):
    mod = _script()
    plan = mod.make_plan(quick=False, gpu=True)
    spec = rlvr.MODEL_SPECS[plan.model]
    n = spec.num_hidden_layers * (spec.hidden_size * spec.head_dim * (2 * spec.num_attention_heads
                                                                     + 2 * spec.num_key_value_heads)
                                  + 3 * spec.hidden_size * spec.intermediate_size)
    assert 20e6 <= n <= 100e6 and plan.device == "cuda"
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the refusal is for machines without one")
    with pytest.raises(SystemExit, match="CUDA"):
        mod.main(["run", "--gpu", "--out", str(tmp_path)])


def test_only_and_chunk_partition_the_methods():
    mod = _script()
    methods = mod.Plan().methods()
    assert len(methods) == 2 * 7 * 3 * 2
    sel = mod.select(methods, ["estimator=grpo,rloo", "rule=snr"], None)
    assert {m["estimator"] for m in sel} == {"grpo", "rloo"} and {m["rule"] for m in sel} == {"snr"}
    chunks = [mod.select(methods, [], f"{i}/5") for i in range(5)]
    assert sorted(map(mod.method_name, sum(chunks, []))) == sorted(map(mod.method_name, methods))
    with pytest.raises(SystemExit, match="--only"):
        mod.select(methods, ["colour=red"], None)
    with pytest.raises(SystemExit, match="--chunk"):
        mod.select(methods, [], "5/5")


def test_smoke_quick_slice_runs_resumes_and_reports(tmp_path):
    """A quick slice end to end (SFT to the band, two constant-rate methods), the same command
    again (every unit is reused, nothing reruns), then the local rule: a skipped cell with AdamW
    (refused by OBLRPOTrainer, with its reason), a run with SGD."""
    mod = _script()
    out = str(tmp_path / "study")
    argv = ["run", "--quick", "--out", out, "--no-progress", "--only", "estimator=grpo,optimal_loo",
            "--only", "rule=constant", "--only", "optim=adamw_torch"]
    assert mod.main(argv) == 0
    units = sorted(os.listdir(os.path.join(out, "units")))
    assert len(units) == 2 * (2 + 2)  # 2 methods x (2 grid rates x 1 tuning seed + 2 evaluation seeds)
    (ckpt,) = [d for d in os.listdir(os.path.join(out, "checkpoints")) if d.startswith("sft_")]
    files = os.listdir(os.path.join(out, "checkpoints", ckpt))
    assert "model.safetensors" in files and "tokenizer.json" in files
    sft = json.load(open(os.path.join(out, "checkpoints", ckpt, "sft.json")))
    assert 0.3 <= sft["acc_greedy"] <= 0.6
    rows = rlvr_report.load_rows(out)
    assert all(r["git_rev"] and r["config"]["run"]["lr"] == r["lr"] for r in rows)
    eval_rows = [r for r in rows if r["phase"] == "eval"]
    assert sorted({r["step"] for r in eval_rows}) == [0, 2, 4]
    assert all(0.0 <= r["acc_sampled"] <= 1.0 and "oblrpo/S_mean" in r["train_log"] for r in eval_rows if r["step"])
    mtimes = {u: os.path.getmtime(os.path.join(out, "units", u)) for u in units}
    assert mod.main(argv) == 0
    assert {u: os.path.getmtime(os.path.join(out, "units", u)) for u in units} == mtimes  # nothing reran
    assert mod.main(["run", "--quick", "--out", out, "--no-progress", "--only", "estimator=grpo",
                     "--only", "rule=local"]) == 0
    tuning = {t["method"]: t for t in rlvr_report.load_tuning(out)}
    refused = tuning["base/grpo/local/adamw_torch"]  # OBLRPOTrainer refuses the local rule with AdamW
    assert refused["status"] == "skipped" and "local" in refused["reason"]
    assert tuning["base/grpo/local/sgd"]["status"] == "done"
    assert mod.main(["report", "--out", out, "--n-boot", "200"]) == 0
    rep = json.load(open(os.path.join(out, "report.json")))
    assert set(rep["edge_tuned"]) >= {"base/grpo/constant/adamw_torch"}  # two grid points: always an edge
    # restore: a fresh --out from the saved rows alone reruns nothing (the units come back)
    fresh = str(tmp_path / "fresh")
    assert mod.main(["restore", "--rows", out, "--out", fresh]) == 0
    restored = sorted(os.listdir(os.path.join(fresh, "units")))
    assert set(units) <= set(restored)
    mt = {u: os.path.getmtime(os.path.join(fresh, "units", u)) for u in restored}
    assert mod.main(argv[:3] + [fresh] + argv[4:]) == 0
    assert {u: os.path.getmtime(os.path.join(fresh, "units", u)) for u in restored} == mt
    # negative control: restored runs that saw another SFT checkpoint are refused, not mixed
    path = os.path.join(fresh, "restored_sft.json")
    seen = json.load(open(path))
    for v in seen.values():
        v["acc_greedy"] += 0.01
    json.dump(seen, open(path, "w"))
    with pytest.raises(SystemExit, match="differs"):
        mod.main(argv[:3] + [fresh] + argv[4:])


def test_bridge_subcommand_refuses_bad_methods_before_any_work(tmp_path):
    mod = _script()
    out = str(tmp_path / "b")
    with pytest.raises(SystemExit, match="estimator 'nope'"):
        mod.main(["bridge", "--out", out, "--method", "base/nope/constant/sgd", "--lr", "0.1"])
    with pytest.raises(SystemExit, match="VARIANT/ESTIMATOR/RULE/OPTIM"):
        mod.main(["bridge", "--out", out, "--method", "base/optimal_loo"])
    with pytest.raises(SystemExit, match="lr_rule='snr'"):  # the bridge loop runs the constant rule only
        mod.main(["bridge", "--out", out, "--method", "base/optimal_loo/snr/sgd", "--lr", "0.1"])
    with pytest.raises(SystemExit, match="no tuning record"):
        mod.main(["bridge", "--out", out, "--tuning", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="--lr must be > 0"):
        mod.main(["bridge", "--out", out, "--lr", "0"])
    assert not os.path.exists(os.path.join(out, "checkpoints"))  # refused before the SFT stage


def test_smoke_bridge_loop_runs_resumes_and_compares(tmp_path):
    """The quick plan: one method through OBLRPOTrainer (tuned, 2 evaluation seeds), then through
    the bridge's loop at its tuned rate from the same SFT checkpoint (2 seeds), the same command
    again (nothing reruns), and the comparison (2 runs a side: intervals, no verdict)."""
    mod = _script()
    out = str(tmp_path / "q")
    assert mod.main(["run", "--quick", "--out", out, "--no-progress", "--only", "estimator=optimal_loo",
                     "--only", "rule=constant", "--only", "optim=sgd"]) == 0
    argv = ["bridge", "--quick", "--out", out, "--tuning", os.path.join(out, "tuning")]
    assert mod.main(argv) == 0
    bdir = os.path.join(out, "bridge")
    units = sorted(os.listdir(os.path.join(bdir, "units")))
    assert len(units) == 2
    rows = rlvr_report.load_rows(bdir)
    trl = [r for r in rlvr_report.load_rows(out) if r["phase"] == "eval"]
    assert {r["phase"] for r in rows} == {"bridge"} and sorted({r["step"] for r in rows}) == [0, 2, 4]
    assert {r["sft"]["key"] for r in rows} == {r["sft"]["key"] for r in trl} and rows[0]["lr"] == trl[0]["lr"]
    assert all("grad_norm" in r["train_log"] and r["config"]["loop"] == "bridge" for r in rows if r["step"])
    j0 = {r["acc_sampled"] for r in rows + trl if r["step"] == 0}
    assert len(j0) == 1  # one checkpoint, one step-0 accuracy
    mtimes = {u: os.path.getmtime(os.path.join(bdir, "units", u)) for u in units}
    assert mod.main(argv) == 0
    assert {u: os.path.getmtime(os.path.join(bdir, "units", u)) for u in units} == mtimes
    assert mod.main(["compare", "--bridge", bdir, "--study", out]) == 0
    cmp = json.load(open(os.path.join(bdir, "compare.json")))
    (g,) = cmp["groups"]
    assert g["role"] == "reproduction" and [r["label"] for r in g["sampled"]["rows"]] == ["0", "2", "4", "auc"]
    assert g["sampled"]["verdict"].startswith("no verdict")


def test_estimators_option_refuses_unknown_names_and_keeps_the_study_default(tmp_path):
    """``--estimators`` sets the plan's estimators (e.g. reinforce, outside the study's seven);
    an unknown name is refused before any work."""
    mod = _script()
    assert mod.Plan().estimators == mod.STUDY_ESTIMATORS and "reinforce" in mod.ESTIMATORS
    assert "reinforce" not in mod.STUDY_ESTIMATORS
    with pytest.raises(SystemExit, match="--estimators"):
        mod.main(["run", "--out", str(tmp_path), "--estimators", "grpo,bogus"])
    assert not os.listdir(tmp_path)
