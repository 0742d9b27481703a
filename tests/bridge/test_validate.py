"""Theory-vs-practice statistics: Gram algebra, a check against the exact engine on a bandit
(where both apply), and the experiment script end to end (the enumerated-LM reference:
test_exact_lm.py; the claims: test_validate_claims.py)."""

import json
import os

import numpy as np
import pytest

from oblr_theory import exact
from oblr_theory.problems import SoftmaxBandit
from oblr_theory.stats import bonferroni_z

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from oblr_theory.bridge import validate as V  # noqa: E402
from oblr_theory.bridge import validate_claims as VC  # noqa: E402
from bridge_helpers import roundoff_tol, sampled_bandit  # noqa: E402


def test_group_gram_equals_gram_of_explicit_group_gradients():
    rng = np.random.default_rng(0)
    M, G, d = 5, 3, 7
    s = rng.normal(size=(M * G, d))
    A = rng.normal(size=(M, G))
    u = np.einsum("mg,mgd->md", A, s.reshape(M, G, d)) / G
    # <u_m, u_m'> two ways: sums of d then of G² terms, or of G then of d: per entry
    # |error| <= (d + G² + G) u a_m a_m', a_m = Σ_g |A_mg| ||s_mg|| / G
    a = np.einsum("mg,mg->m", np.abs(A), np.linalg.norm(s.reshape(M, G, d), axis=-1)) / G
    bound = roundoff_tol(d + G * G + G) * np.outer(a, a)
    K = V.group_gram(s @ s.T, A)
    assert np.all(np.abs(K - u @ u.T) <= bound)
    # the mean over m != m' against an explicit loop over the pairs (M² more terms)
    pairs = [u[m] @ u[k] for m in range(M) for k in range(M) if m != k]
    got = V.cross_group_mean_inner(K)
    assert got == pytest.approx(np.mean(pairs), rel=0, abs=float(
        (bound + roundoff_tol(M * M) * np.outer(a, a)).max()))
    assert abs(np.mean(pairs)) > 100 * float(bound.max())  # the check can tell a wrong value


def test_sample_moments_grad_sq_norm_is_a_u_statistic():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(6, 4))
    r = rng.uniform(size=6)
    mom = V.sample_moments(r, (s**2).sum(1), s @ s.T)
    rs = r[:, None] * s
    pairs = [rs[i] @ rs[k] for i in range(6) for k in range(6) if i != k]
    # Σ_{i≠k} r_i r_k K_ik over 30 pairs (+ d = 4 in K, and the 6² of the sum) against a loop:
    # |error| <= (n² + d + n) u max_{i,k} |r_i r_k| ||s_i|| ||s_k||
    mags = np.abs(r) * np.linalg.norm(s, axis=1)
    tol = roundoff_tol(36 + 4 + 6) * float(np.outer(mags, mags).max())
    assert mom["grad_sq_norm"] == pytest.approx(np.mean(pairs), rel=0, abs=tol)


def test_statistics_agree_with_the_exact_engine_on_a_bandit():
    """Where both apply: measured V (T7 across groups) and predicted V (T2 from sampled moments)
    against the exact multiset engine, z-tests at family-wise rate 1% (Bonferroni); negative
    control: grpo's bias must be detected."""
    rng = np.random.default_rng(3)
    prob = SoftmaxBandit(rng.normal(size=(3, 4)), rng.uniform(size=(3, 4)))
    M, G = 200, 4
    d = sampled_bandit(prob, M, G, seed=4)
    pre = V.precompute(d["r"], d["S"], d["ell"], d["S"], d["gram"], G)
    fn = lambda keep: V.statistics(pre, keep)  # noqa: E731
    full, se = VC.jackknife(fn, M)
    names = ("reinforce", "rloo", "dr_grpo", "optimal_loo", "opo")
    thr = bonferroni_z(0.01, 2 * len(names))
    for name in names:
        ex = exact.estimator_moments(prob, name, G).prompt_trace_var.mean()
        z = (full[f"V_measured/{name}"] - ex) / se[f"V_measured/{name}"]
        assert abs(z) < thr, (name, full[f"V_measured/{name}"], ex, z)
        if name in V.CLOSED_FORMS:
            z = (full[f"V_predicted/{name}"] - ex) / se[f"V_predicted/{name}"]
            assert abs(z) < thr, (name, "predicted", z)
    rows = VC.analyse(full, se, G, alpha=0.01)
    control = [r for r in rows if r.kind == "negative-control"]
    assert len(control) == 1 and control[0].passed is True


def test_validation_experiment_end_to_end_and_resumes(tmp_path):
    import importlib.util
    import subprocess
    import sys

    path = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "qwen3_validation.py")
    spec = importlib.util.spec_from_file_location("qwen3_validation", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["qwen3_validation"] = mod
    spec.loader.exec_module(mod)
    cfg = mod.Config(prompts=3, groups=4, group_size=4, pretrain_steps=20)
    out = str(tmp_path / "val")
    report = mod.run(cfg, out, progress=False)
    assert report["verdict"]["tested"] > 0
    for f in ("report.json", "claims.csv", "statistics.csv"):
        assert os.path.getsize(os.path.join(out, f)) > 0
    with open(os.path.join(out, "report.json")) as fh:  # strict JSON: non-finite numbers are null
        saved = json.load(fh, parse_constant=lambda c: pytest.fail(f"report.json holds {c}"))
    assert any(c["kind"] == "measurement" and c["exact"] is None for c in saved["claims"])
    assert saved["config"]["theta"] and saved["git_revision"] and saved["config"]["seed"] == 0
    # the enumeration's total probability: the bound derived in test_exact_lm.py is
    # 4 chain u max(1, |z|) + n u, with chain ≈ 900 for this tiny Qwen3 (float64): 4e-13 max(1, |z|),
    # so 1e-10 holds for logits up to |z| ≈ 250 (a briefly pretrained tiny model's are O(10))
    assert saved["exact_reference"]["prob_total_max_dev"] < 1e-10
    stamp = os.path.getmtime(os.path.join(out, "work", "prompt_0000.npz"))
    again = mod.run(cfg, out, progress=False)  # resumes: no resampling, same statistics
    assert os.path.getmtime(os.path.join(out, "work", "prompt_0000.npz")) == stamp
    assert json.dumps(again["statistics"]) == json.dumps(report["statistics"])  # NaN-safe equality
    with pytest.raises(SystemExit, match="another configuration"):
        mod.run(mod.Config(prompts=3, groups=4, group_size=4, pretrain_steps=20, seed=1), out, progress=False)
    # the figure is drawn from the saved report alone (nulls included)
    fig_path = os.path.join(os.path.dirname(__file__), "..", "..", "paper_figures", "qwen3_validation.py")
    result = subprocess.run([sys.executable, fig_path, out, "--figures", str(tmp_path / "fig")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert os.path.getsize(tmp_path / "fig" / "qwen3_validation.png") > 0


def _experiment():
    import importlib.util
    import sys

    path = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "qwen3_validation.py")
    spec = importlib.util.spec_from_file_location("qwen3_validation", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["qwen3_validation"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_validation_cli_passes_gram_method_device_and_dtype(monkeypatch, tmp_path):
    """``--gram-method``, ``--device``, ``--dtype`` reach the run's Config; omitted, they are None
    (device, dtype: the defaults of the model source) and "ghost"; a bad choice is a usage error."""
    mod = _experiment()
    seen = []
    monkeypatch.setattr(mod, "run", lambda cfg, out, progress: seen.append(cfg) or
                        {"reward_mean": 0.0, "claims": [],
                         "verdict": dict(VC.tally([]), failed_rows=[], untested_rows=[])})
    mod.main(["--out", str(tmp_path), "--quiet", "--gram-method", "loop", "--device", "cpu",
              "--dtype", "float16"])
    mod.main(["--out", str(tmp_path), "--quiet"])
    assert (seen[0].gram_method, seen[0].device, seen[0].dtype) == ("loop", "cpu", "float16")
    assert (seen[1].gram_method, seen[1].device, seen[1].dtype) == ("ghost", None, None)
    for bad in (["--gram-method", "length"], ["--dtype", "float8"]):
        with pytest.raises(SystemExit):
            mod.main(["--out", str(tmp_path), *bad])


class _Stop(Exception):
    pass


def test_validation_run_passes_device_dtype_and_gram_method_to_the_model_and_the_gram(
        monkeypatch, tmp_path):
    """Wiring: the run's ``load_model`` gets the device and dtype (None for a checkpoint: its own;
    float64 for the built-in model), and the Gram stage gets the method."""
    mod = _experiment()
    calls = {}

    def fake_load(model, task, **kw):
        calls["load"] = kw
        return _load(model, task, **kw)

    def fake_collect(*args, **kw):
        calls["collect"] = kw
        raise _Stop

    _load = mod.load_model
    monkeypatch.setattr(mod, "load_model", fake_load)
    monkeypatch.setattr(mod.V, "collect_prompt", fake_collect)
    cases = [(dict(device="cpu", dtype="bfloat16", gram_method="loop"), "cpu", "bfloat16", "loop"),
             (dict(), None, "float64", "ghost")]
    for i, (kw, device, dtype, method) in enumerate(cases):
        with pytest.raises(_Stop):
            mod.run(mod.Config(pretrain_steps=0, **kw), str(tmp_path / str(i)), progress=False)
        assert (calls["load"]["device"], calls["load"]["dtype"]) == (device, dtype)
        assert calls["collect"]["method"] == method
        with open(tmp_path / str(i) / "work" / "config.json") as fh:
            assert json.load(fh)["dtype"] == dtype  # the dtype the model has, recorded


@pytest.mark.slow
def test_validation_on_a_checkpoint_honours_dtype_and_gram_method(tmp_path):
    """A tiny saved checkpoint (``--model PATH``): the run uses the requested dtype and Gram
    method (recorded in the configuration), and ghost and loop give the same per-prompt Gram up
    to float64 rounding (``n_params · u`` relative: one accumulation over the parameters); a
    checkpoint it cannot load is a one-line exit."""
    from oblr_theory.bridge.models import load_model, param_count
    from oblr_theory.bridge.task import ArithmeticTask
    from test_models import save_char_tokenizer

    mod = _experiment()
    ckpt = tmp_path / "ckpt"
    # briefly pretrained (as the end-to-end test), so that rewards vary: the statistics need it
    model, _ = load_model(None, ArithmeticTask(max_operand=9, max_answer=9), pretrain_steps=20)
    model.save_pretrained(ckpt, safe_serialization=True)
    save_char_tokenizer(ckpt)
    grams = {}
    for method in ("ghost", "loop"):
        cfg = mod.Config(model=str(ckpt), prompts=2, groups=3, group_size=4, exact=False,
                         batch_gram=False, device="cpu", dtype="float64", gram_method=method)
        out = str(tmp_path / method)
        report = mod.run(cfg, out, progress=False)
        assert report["config"]["dtype"] == "float64" and report["config"]["gram_method"] == method
        assert report["config"]["device"] == "cpu"
        with np.load(os.path.join(out, "work", "prompt_0000.npz")) as z:
            grams[method] = z["gram_nn"]
    scale = np.abs(grams["loop"]).max()
    assert scale > 0
    assert np.abs(grams["ghost"] - grams["loop"]).max() <= param_count(model) * 2.0**-53 * scale
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer_config.json").unlink()
    with pytest.raises(SystemExit, match="^error: .*has no tokenizer"):
        mod.run(mod.Config(model=str(ckpt), prompts=2, groups=2, group_size=2), str(tmp_path / "x"),
                progress=False)


def test_undefined_ratios_are_nan_not_an_exception():
    """Every reward equal makes every score-weighted gradient 0: the relative statistics are
    undefined (NaN, counted untested by the claims), not a ZeroDivisionError or ±inf."""
    import math

    from oblr_theory.bridge.validate import _ratio

    assert math.isnan(_ratio(1.0, 0.0)) and math.isnan(_ratio(0.0, 0.0))
    assert math.isnan(_ratio(1.0, float("nan")))
    assert _ratio(3.0, 2.0) == 1.5
