"""The validation's claims (``bridge/validate_claims.py``): the jackknife's standard error, the
Bonferroni thresholds, and claim rows that hold on sampled statistics and fail when a measurement
is moved off its prediction (negative controls)."""

import dataclasses

import numpy as np
import pytest
from scipy import stats as sps

from oblr_theory import exact
from oblr_theory.problems import SoftmaxBandit

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


@pytest.mark.parametrize("alpha, family, df", [(0.05, 1, None), (0.01, 10, None), (0.05, 3, 15)])
def test_z_threshold_is_the_two_sided_bonferroni_quantile(alpha, family, df):
    q = 1 - alpha / (2 * family)
    expected = sps.norm.ppf(q) if df is None else sps.t.ppf(q, df)
    # the same scipy quantile at the same q (the same two operations form it): identical
    assert VC.z_threshold(alpha, family, df) == expected


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
    return [r for r in rows if r.section == section and r.estimator == estimator and r.quantity.startswith(prefix)]


def test_claims_hold_on_sampled_statistics(bandit_stats):
    """T2 (predicted = measured) and T1 (scales; grpo's bias detected) hold on a bandit sample."""
    full, se, _, G, M = bandit_stats
    rows = VC.analyse(full, se, G, alpha=ALPHA, n_batches=M)
    tested = [r for r in rows if r.section in ("T1", "T2") and r.holds is not None]
    # T2: the 3 closed forms; T1: the 5 scales with a prediction (rloo, dr_grpo, opo_loo,
    # optimal_loo, logit_loo), grpo's control, and dr_grpo's relative bias 1/G²
    assert len(tested) == 3 + 5 + 1 + 1
    assert all(r.holds for r in tested), [(r.quantity, r.estimator, r.z) for r in tested if not r.holds]
    t2 = _rows(rows, "T2", "rloo")[0]
    # the same computations (one scipy quantile; one product): identical
    assert t2.threshold == VC.z_threshold(ALPHA, len(V.CLOSED_FORMS), M - 1)
    assert t2.min_detectable == t2.threshold * t2.se


def test_claims_fail_when_a_measurement_is_off(bandit_stats):
    """Negative controls: a variance gap of twice the detectable size fails T2, a dr_grpo scale
    of 1 (the unbiased value) fails T1's (G−1)/G, and an unbiased 'grpo' fails the bias control."""
    full, se, _, G, M = bandit_stats
    rows0 = VC.analyse(full, se, G, alpha=ALPHA, n_batches=M)
    t2 = _rows(rows0, "T2", "rloo")[0]
    bad = dict(full)
    bad["diff_V/rloo"] = full["diff_V/rloo"] + 2 * t2.min_detectable
    bad["scale/dr_grpo"] = 1.0
    bad["scale/grpo"] = 1.0
    rows = VC.analyse(bad, se, G, alpha=ALPHA, n_batches=M)
    assert _rows(rows, "T2", "rloo")[0].holds is False
    assert _rows(rows, "T2", "dr_grpo")[0].holds is True
    dr = _rows(rows, "T1", "dr_grpo", "scale")[0]
    assert dr.min_detectable < 1 / G and dr.holds is False  # the shift 1/G is detectable, and detected
    assert _rows(rows, "T1", "grpo", "negative control")[0].holds is False


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
    exact_rows = [r for r in rows if r.section == "exact"]
    assert len(exact_rows) == 5 + len(V.CLOSED_FORMS) + 2 + len(v_exact)
    assert all(r.holds for r in exact_rows), [(r.quantity, r.estimator, r.z) for r in exact_rows if not r.holds]
    row = [r for r in exact_rows if r.estimator == "optimal_loo"][0]
    wrong = dict(ref, **{"V_multiset/optimal_loo": v_exact["optimal_loo"] + 2 * row.min_detectable})
    rows = VC.analyse(full, se, G, alpha=ALPHA, exact_ref=wrong, n_batches=M)
    assert [r for r in rows if r.section == "exact" and r.estimator == "optimal_loo"][0].holds is False


def test_claim_rows_are_plain_records(bandit_stats):
    """Every row has the report's fields; an undefined prediction gives no verdict, not a NaN pass."""
    full, se, _, G, M = bandit_stats
    rows = VC.analyse(full, se, G, alpha=ALPHA, n_batches=M)
    names = {f.name for f in dataclasses.fields(VC.Claim)}
    assert {"section", "quantity", "estimator", "measured", "se", "predicted", "z", "holds"} <= names
    measured_only = [r for r in rows if r.note == "measured only"]
    assert measured_only and all(r.holds is None and np.isnan(r.z) for r in measured_only)
