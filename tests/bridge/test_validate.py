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
from bridge_helpers import sampled_bandit  # noqa: E402


def test_group_gram_equals_gram_of_explicit_group_gradients():
    rng = np.random.default_rng(0)
    M, G, d = 5, 3, 7
    s = rng.normal(size=(M * G, d))
    A = rng.normal(size=(M, G))
    u = np.einsum("mg,mgd->md", A, s.reshape(M, G, d)) / G
    np.testing.assert_allclose(V.group_gram(s @ s.T, A), u @ u.T, rtol=1e-12, atol=1e-12)
    K = V.group_gram(s @ s.T, A)
    off = (K.sum() - np.trace(K)) / (M * (M - 1))
    assert V.cross_group_mean_inner(K) == pytest.approx(off)


def test_sample_moments_grad_sq_norm_is_a_u_statistic():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(6, 4))
    r = rng.uniform(size=6)
    mom = V.sample_moments(r, (s**2).sum(1), s @ s.T)
    rs = r[:, None] * s
    pairs = [rs[i] @ rs[k] for i in range(6) for k in range(6) if i != k]
    assert mom["grad_sq_norm"] == pytest.approx(np.mean(pairs))


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
