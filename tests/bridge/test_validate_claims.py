"""The validation's claims (``bridge/validate_claims.py``): the jackknife's standard error, and
claim rows that hold on sampled statistics, fail when a measurement is moved off its prediction
(negative controls), and are untested when the test cannot decide."""

import numpy as np
import pytest

from oblr_theory import exact
from oblr_theory.problems import SoftmaxBandit
from oblr_theory.stats import bonferroni_z
from oblr_theory.verify.report import Row

torch = pytest.importorskip("torch")

from oblr_theory.bridge import validate as V  # noqa: E402
from oblr_theory.bridge import validate_claims as VC  # noqa: E402
from bridge_helpers import sampled_bandit  # noqa: E402

ALPHA = 0.01  # family-wise false-failure rate of every claim below


def test_jackknife_se_of_a_mean_is_the_standard_error():
    """For the mean the delete-one jackknife SE is exactly ``sd(x, ddof=1)/√M``."""
    x = np.random.default_rng(0).normal(size=23)
    full, se = VC.jackknife(lambda keep: {"mean": float(x[keep].mean())}, len(x))
    # M = 23 leave-one-out means of M - 1 terms, then their mean: |error| <= 2 M u mean|x|; the
    # SE is from their deviations, of size sd/(M - 1), so relative to it that error is
    # amplified by (M - 1) mean|x| / sd (plus M u for the sum of squares)
    M, u = len(x), 2.0**-53
    mean_abs, sd = float(np.abs(x).mean()), float(x.std(ddof=1))
    assert full["mean"] == pytest.approx(x.mean(), rel=0, abs=2 * M * u * mean_abs)
    assert se["mean"] == pytest.approx(sd / np.sqrt(M), rel=2 * M * u * (M - 1) * mean_abs / sd + M * u)


def test_jackknife_se_is_nan_when_a_replicate_is_not_finite():
    x = np.arange(5.0)
    fn = lambda keep: {"m": float("inf") if not keep[2] else float(x[keep].mean())}  # noqa: E731
    _, se = VC.jackknife(fn, len(x))
    assert np.isnan(se["m"])


@pytest.fixture(scope="module")
def bandit_stats():
    """Statistics of 200 sampled batches on a 3-prompt bandit, their jackknife SEs, the exact
    multiset engine's variances and per-prompt moments (means over prompts), G and M."""
    rng = np.random.default_rng(3)
    prob = SoftmaxBandit(rng.normal(size=(3, 4)), rng.uniform(size=(3, 4)))
    M, G = 200, 4
    d = sampled_bandit(prob, M, G, seed=4)
    pre = V.precompute(d["r"], d["S"], d["ell"], d["S"], d["gram"], G)
    full, se = VC.jackknife(lambda keep: V.statistics(pre, keep), M)
    v_exact = {lab: float(exact.estimator_moments(prob, name, G).prompt_trace_var.mean())
               for lab, name, src in V.ESTIMATORS if src == "exact"}
    pm = exact.prompt_moments(prob)
    v_exact["moments"] = {k: float(np.mean(getattr(pm, k))) for k in ("mu", "m_S", "m_rS", "grad_sq_norm", "b_star")}
    per_prompt = [{k: getattr(pm, k)[x] for k in ("mu", "var_r", "m_S", "m_rS", "m_r2S", "grad_sq_norm", "b_star")}
                  for x in range(prob.num_prompts)]
    v_exact["fixed"] = {lab: float(np.mean([V.predicted_variance(m, lab, G) for m in per_prompt]))
                        for lab in ("fixed_b_star", "fixed_mean")}
    return full, se, v_exact, G, M


def _rows(rows, section, estimator, prefix=""):
    return [r for r in rows if r.claim == section and r.details["estimator"] == estimator
            and r.details["quantity"].startswith(prefix)]


def test_claims_hold_on_sampled_statistics(bandit_stats):
    """T2 (predicted = measured) and T1 (scales; grpo's bias detected) hold on a bandit sample."""
    full, se, _, G, M = bandit_stats
    rows = VC.analyse(full, se, G, alpha=ALPHA, n_batches=M)
    tested = [r for r in rows if r.claim in ("T1", "T2") and r.passed is not None]
    # T2: the 3 closed forms; T1: the 5 scales with a prediction (rloo, dr_grpo, opo_loo,
    # optimal_loo, logit_loo) and grpo's control
    assert len(tested) == 3 + 5 + 1
    assert all(r.passed for r in tested), [(r.statement, r.details["z"]) for r in tested if not r.passed]
    # dr_grpo's relative bias 1/G² = 0.0625 is below what 200 batches detect: untested, not "holds"
    rel = _rows(rows, "T1", "dr_grpo", "relative bias")[0]
    assert rel.passed is None and rel.details["min_detectable"] >= 1 / G**2 and "untested" in rel.note
    assert VC.tally(rows)["untested"] == 1 and VC.tally(rows)["tested"] == 3 + 5 + 1
    t2 = _rows(rows, "T2", "rloo")[0]
    assert t2.threshold == bonferroni_z(ALPHA, len(V.CLOSED_FORMS), df=M - 1)  # the same call
    assert t2.details["min_detectable"] == t2.threshold * t2.details["se"]  # the same product
    assert t2.details["min_detectable"] < t2.details["scale"] == full["V_predicted/rloo"]


def test_claims_fail_when_a_measurement_is_off(bandit_stats):
    """Negative controls: a variance gap of twice the detectable size fails T2, a dr_grpo scale
    of 1 (the unbiased value) fails T1's (G−1)/G, and an unbiased 'grpo' fails the bias control."""
    full, se, _, G, M = bandit_stats
    rows0 = VC.analyse(full, se, G, alpha=ALPHA, n_batches=M)
    t2 = _rows(rows0, "T2", "rloo")[0]
    bad = dict(full)
    bad["diff_V/rloo"] = full["diff_V/rloo"] + 2 * t2.details["min_detectable"]
    bad["scale/dr_grpo"] = 1.0
    bad["scale/grpo"] = 1.0
    rows = VC.analyse(bad, se, G, alpha=ALPHA, n_batches=M)
    assert _rows(rows, "T2", "rloo")[0].passed is False
    assert _rows(rows, "T2", "dr_grpo")[0].passed is True
    dr = _rows(rows, "T1", "dr_grpo", "scale")[0]
    assert dr.details["min_detectable"] < 1 / G and dr.passed is False  # the shift 1/G is detectable, and detected
    control = _rows(rows, "T1", "grpo", "negative control")[0]
    assert control.passed is False and control.verdict == "MISSED"
    t = VC.tally(rows)
    assert t["fail"] == 3 and t["hold"] == t["tested"] - 3


def test_exact_reference_claims_hold_and_detect_a_wrong_reference(bandit_stats):
    """Against the exact engine: measured variances hold; a reference moved by twice the row's
    minimum detectable effect is flagged."""
    full, se, v_exact, G, M = bandit_stats
    v_exact = dict(v_exact)
    ref = {f"moment/{k}": v for k, v in v_exact.pop("moments").items()}
    ref.update({f"V_exact/{lab}": v for lab, v in v_exact.pop("fixed").items()})  # T3 on exact moments
    ref.update({f"V_exact/{lab}": v_exact[lab] for lab in V.CLOSED_FORMS})
    ref.update({f"V_multiset/{lab}": v for lab, v in v_exact.items()})
    rows = VC.analyse(full, se, G, alpha=ALPHA, exact_ref=ref, n_batches=M)
    exact_rows = [r for r in rows if r.claim == "exact"]
    assert len(exact_rows) == 5 + len(V.CLOSED_FORMS) + 2 + len(v_exact)
    assert all(r.passed for r in exact_rows), [(r.statement, r.details["z"]) for r in exact_rows if not r.passed]
    row = [r for r in exact_rows if r.details["estimator"] == "optimal_loo"][0]
    wrong = dict(ref, **{"V_multiset/optimal_loo": v_exact["optimal_loo"] + 2 * row.details["min_detectable"]})
    rows = VC.analyse(full, se, G, alpha=ALPHA, exact_ref=wrong, n_batches=M)
    assert [r for r in rows if r.claim == "exact" and r.details["estimator"] == "optimal_loo"][0].passed is False


def test_claim_rows_are_report_rows_and_measurements_have_no_verdict(bandit_stats):
    """Every row is verify's :class:`Row`; a quantity without a prediction is a measurement (no
    verdict), never a NaN pass."""
    full, se, _, G, M = bandit_stats
    rows = VC.analyse(full, se, G, alpha=ALPHA, n_batches=M)
    assert rows and all(isinstance(r, Row) for r in rows)
    measured_only = [r for r in rows if r.note == "measured only"]
    assert measured_only and all(r.kind == "measurement" and r.passed is None and r.verdict == "measured"
                                 and r.exact is None for r in measured_only)
    assert VC.tally(rows)["measured"] == sum(r.kind == "measurement" for r in rows)


def test_a_test_too_weak_for_its_quantity_or_without_an_se_is_untested(bandit_stats):
    """A claim whose test cannot detect a deviation as large as the quantity itself, or whose SE
    is undefined (NaN, or M < 2 batches), is untested, not holding."""
    full, se, _, G, M = bandit_stats
    weak = dict(se, **{"diff_V/rloo": 10 * full["V_predicted/rloo"], "scale/opo_loo": float("nan")})
    rows = VC.analyse(full, weak, G, alpha=ALPHA, n_batches=M)
    t2 = _rows(rows, "T2", "rloo")[0]
    assert t2.passed is None and t2.outcome == "untested" and t2.verdict == "untested"
    assert "untested" in t2.note and t2.details["min_detectable"] >= t2.details["scale"]
    nan_se = _rows(rows, "T1", "opo_loo", "scale")[0]
    assert nan_se.passed is None and "standard error undefined" in nan_se.note
    t = VC.tally(rows)
    assert t["untested"] == 1 + 2 and t["tested"] == 3 + 5 + 1 - 2
    few = VC.analyse(full, se, G, alpha=ALPHA, n_batches=1)
    assert all(r.passed is None for r in few)


def test_a_clipped_snr_says_so(bandit_stats):
    full, se, _, G, M = bandit_stats
    stats = dict(full, **{"snr/rloo/pooled": 0.0, "snr/rloo/grad_sq_norm_hat": -0.5, "lr/rloo/T5_fraction": 0.0,
                          "snr/dr_grpo/pooled": 2.0, "snr/dr_grpo/grad_sq_norm_hat": 0.5,
                          "lr/dr_grpo/T5_fraction": 2 / 3})
    rows = VC.analyse(stats, se, G, alpha=ALPHA, n_batches=M)
    assert all("clipped at 0" in r.note for r in _rows(rows, "T7", "rloo") + _rows(rows, "T5", "rloo"))
    assert not any("clipped" in r.note for r in _rows(rows, "T7", "dr_grpo") + _rows(rows, "T5", "dr_grpo"))
