"""`oblr-theory verify`: the quick run passes end to end; failures and misses set the exit code."""

import json
import sys
import textwrap
import warnings

import numpy as np
import pytest

from oblr_theory import verify
from oblr_theory.verify import report


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("verify") / "report.json"
    with warnings.catch_warnings():  # a RuntimeWarning (also in a forked worker) fails its claim
        warnings.simplefilter("error", RuntimeWarning)
        code = verify.main(["--quick", "--json", str(path), "--seed", "7"])
    return code, json.loads(path.read_text())


def test_quick_run_passes_and_reports_every_claim(quick_report):
    code, rep = quick_report
    assert code == 0 and rep["summary"]["passed"]
    rows = rep["rows"]
    for col in ("claim", "problem", "exact", "symbolic", "estimate", "statistic", "threshold", "verdict"):
        assert all(col in r for r in rows)
    labels = {r["claim"] for r in rows}
    assert {"T1", "T2", "T3", "T4", "T5", "T7", "T8"} <= labels
    for lab in ("T1", "T2", "T3", "T8"):  # on a bandit and on a token MDP
        probs = {r["problem"].split(",")[0] for r in rows if r["claim"] == lab}
        assert any(p.startswith("bandit") for p in probs) and any(p.startswith("mdp") for p in probs)
    neg = [r for r in rows if r["kind"] == "negative-control"]
    named = " ".join(r["statement"] for r in neg)
    for control in ("grpo", "opo", "optimal", "dr_grpo", "token-mean"):
        assert f"({control}" in named or f" {control})" in named
    assert all(r["verdict"] == "caught" and r["details"]["bias_over_detectable"] > 1 for r in neg)
    mc_rows = [r for r in rows if r["kind"] == "monte-carlo"]
    assert len(mc_rows) > 50 and all(r["statistic"] <= r["threshold"] for r in mc_rows)
    assert rep["meta"]["num_tests"] == len(mc_rows) + len(neg)
    assert rep["meta"]["alpha_per_test"] == rep["meta"]["alpha"] / rep["meta"]["num_tests"]  # one division
    dropped = rep["meta"]["quick_dropped"]  # --quick names the claims it leaves out, and runs none of them
    assert dropped == verify.quick_dropped(7) and not {r["key"] for r in rows} & set(dropped)


def _module(tmp_path, monkeypatch, body):
    (tmp_path / "fake_claims.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fake_claims", None)
    return ("fake_claims",)


def test_failing_claim_or_missed_control_fails_the_suite(tmp_path, monkeypatch):
    mods = _module(tmp_path, monkeypatch, """
        import numpy as np
        from oblr_theory import stats
        from oblr_theory.verify.report import Claim, test_row

        def _run(ctx, shift, negative):
            x = ctx.rng.normal(size=(5000, 2)) + shift
            t = stats.mean_test(stats.SampleMoments.of(x), np.zeros(2), ctx.alpha, ctx.power)
            return [test_row("T1", "toy", "toy", t, negative=negative, exact_bias=np.full(2, shift))]

        def claims(quick, seed):
            return [Claim("ok", "T1", "toy", lambda ctx: _run(ctx, 0.0, False), num_tests=1),
                    Claim("missed", "T1", "toy", lambda ctx: _run(ctx, 0.0, True), num_tests=1),
                    Claim("caught", "T1", "toy", lambda ctx: _run(ctx, 1.0, True), num_tests=1),
                    Claim("boom", "T1", "toy", lambda ctx: 1 / 0)]
    """)
    rep = verify.run_suite(quick=True, modules=mods)
    verdicts = {r["key"]: r["verdict"] for r in rep["rows"]}
    assert verdicts == {"ok": "holds", "missed": "MISSED", "caught": "caught", "boom": "FAILS"}
    assert not rep["summary"]["passed"]


def test_an_untested_row_is_listed_and_fails_the_exit_code(tmp_path, monkeypatch, capsys):
    """A row that could not decide (``passed=None``) is not a pass: the summary lists it, the run
    does not print "all claims hold", and the exit code is 1."""
    mods = _module(tmp_path, monkeypatch, """
        from oblr_theory.verify.report import Claim, fact_row, z_row

        def claims(quick, seed):
            return [Claim("ok", "T3", "toy", lambda ctx: [fact_row("T3", "fact", "toy", 1.0, True)]),
                    Claim("no_se", "T3", "toy", num_tests=1, run=
                          lambda ctx: [z_row("T3", "no SE", "toy", 1.0, float("nan"), 1.0, 3.0)])]
    """)
    rep = verify.run_suite(quick=True, modules=mods)
    assert not rep["summary"]["passed"] and rep["summary"]["failed"] == []
    assert rep["summary"]["untested"] == ["T3 | toy | no SE"]
    assert {r["key"]: r["outcome"] for r in rep["rows"]} == {"ok": "holds", "no_se": "untested"}
    collect = verify.collect_claims
    monkeypatch.setattr(verify, "collect_claims", lambda quick, seed, modules: collect(quick, seed, mods))
    assert verify.main(["--quick", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "UNTESTED" in out and "no SE" in out and "all claims hold" not in out


def test_z_row_outcomes():
    """holds / fails for a decisive test; untested when the SE is undefined or zero, the
    threshold is NaN (too few samples), or the smallest detectable deviation (threshold × SE)
    is not below the quantity's own size; a negative control passes when it rejects."""
    assert report.z_row("T", "s", "p", 1.1, 0.05, 1.0, 3.0).outcome == "holds"  # |z| = 2 < 3
    bad = report.z_row("T", "s", "p", 1.2, 0.05, 1.0, 3.0)  # |z| = 4
    assert bad.outcome == "fails" and bad.verdict == "FAILS" and bad.statistic == (1.2 - 1.0) / 0.05
    assert bad.details["min_detectable"] == 3.0 * 0.05 and bad.details["z"] == (1.2 - 1.0) / 0.05
    for se, thr in ((float("nan"), 3.0), (0.0, 3.0), (0.05, float("nan"))):
        r = report.z_row("T", "s", "p", 1.1, se, 1.0, thr)
        assert r.passed is None and r.verdict == "untested" and "undefined" in r.note
    weak = report.z_row("T", "s", "p", 0.1, 0.05, 0.1, 3.0)  # detects only >= 0.15, quantity 0.1
    assert weak.passed is None and "untested" in weak.note
    assert report.z_row("T", "s", "p", 0.1, 0.05, 0.0, 3.0, scale=1.0).outcome == "holds"
    assert report.z_row("T", "s", "p", 0.1, 0.05, 0.1, 3.0, scale=0.15).passed is None  # not below: untested
    neg = report.z_row("T", "s", "p", 2.0, 0.1, 1.0, 3.0, negative=True)
    assert neg.passed is True and neg.verdict == "caught"
    assert report.z_row("T", "s", "p", 1.1, 0.1, 1.0, 3.0, negative=True).verdict == "MISSED"
    m = report.measured_row("T", "s", "p", 0.3, 0.1)
    assert m.kind == "measurement" and m.passed is None and m.verdict == "measured"
    t = report.tally([bad, weak, neg, m])
    assert t == {"tested": 2, "hold": 1, "fail": 1, "untested": 1, "measured": 1}
    with pytest.raises(ValueError, match="passed"):
        report.Row("T", "s", "p", "measurement", None, 0.3, None, None, True)
    with pytest.raises(ValueError, match="passed"):
        report.Row("T", "s", "p", "exact", None, 0.3, None, None, 1)


def test_claim_generators_depend_on_seed_and_key():
    a = verify.claim_rng(0, "x").random()
    assert a == verify.claim_rng(0, "x").random()
    assert a != verify.claim_rng(1, "x").random() and a != verify.claim_rng(0, "y").random()


def test_json_is_written_atomically(tmp_path):
    path = tmp_path / "sub" / "r.json"
    report.write_json(str(path), {"x": np.float64(1.5), "y": np.arange(2), "z": float("inf")})
    assert json.loads(path.read_text()) == {"x": 1.5, "y": [0, 1], "z": "inf"}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


@pytest.mark.slow
def test_default_run_passes(tmp_path):
    assert verify.main(["--json", str(tmp_path / "r.json"), "--no-progress"]) == 0
