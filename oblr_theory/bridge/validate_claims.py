"""The claims of the theory-vs-practice validation (:mod:`oblr_theory.bridge.validate`): the
delete-one-batch jackknife over the ``M`` i.i.d. batches and the claim rows (T1, T2, T3, T5, T7,
T8, and the exact reference where the completions are enumerable).

The rows are the report rows of ``oblr-theory verify`` (:class:`oblr_theory.verify.report.Row`).
A claim holds when ``|z| = |measured − predicted| / SE`` is below the two-sided Bonferroni threshold
(Student t, ``M − 1`` degrees of freedom; :func:`oblr_theory.stats.bonferroni_z`) for the stated
family-wise false-failure rate ``alpha``; each row also reports the smallest deviation the test
detects (threshold × SE). A claim whose SE is undefined, or whose test cannot detect a deviation
as large as the quantity itself, is *untested* (``passed=None``), not holding. grpo's scale is the
negative control: it passes when its bias (T1) is detected. Quantities without a prediction are
``measurement`` rows.
"""

from __future__ import annotations

import numpy as np

from .. import theory
from ..stats import bonferroni_z
from ..verify.report import Row, measured_row, tally, z_row
from .validate import CLOSED_FORMS, ESTIMATORS

__all__ = ["analyse", "jackknife", "tally"]


def jackknife(fn, M: int, progress: bool = False) -> tuple[dict, dict]:
    """Delete-one jackknife over the ``M`` i.i.d. batches: ``(estimates, standard errors)``.

    ``SE² = ((M−1)/M) Σ_i (θ_(i) − θ̄_(·))²``; ``fn(keep_m)`` returns a flat dict of scalars.
    """
    from tqdm.auto import tqdm

    full = fn(np.ones(M, bool))
    reps = []
    for i in tqdm(range(M), desc="jackknife", disable=not progress):
        keep = np.ones(M, bool)
        keep[i] = False
        reps.append(fn(keep))
    se = {}
    for k in full:
        v = np.array([r[k] for r in reps])
        se[k] = float(np.sqrt((M - 1) / M * np.sum((v - v.mean()) ** 2))) if np.all(np.isfinite(v)) else float("nan")
    return full, se


# ============================================================================== report
def analyse(full: dict, se: dict, G: int, alpha: float = 0.05, exact_ref: dict | None = None,
            n_batches: int | None = None, problem: str = "sampled LM") -> list[Row]:
    """Turn statistics (and optionally the exact reference) into report rows with z-tests.

    With ``n_batches = M`` the thresholds are Student t with ``M − 1`` degrees of freedom (the
    jackknife SE's; ``M < 2`` leaves every test untested), else normal. Each row's ``details``
    carry ``estimator`` and ``quantity``, the signed ``z``, ``se`` and ``min_detectable``.
    """
    rows: list[Row] = []
    df = None if n_batches is None else n_batches - 1

    def threshold(family):
        return float("nan") if df is not None and df < 1 else bonferroni_z(alpha, family, df=df)

    def text(quantity, est):
        return quantity if est == "-" else f"{quantity} [{est}]"

    def claim(section, quantity, est, meas_key, pred, note="", family=1, scale=None, negative=False):
        rows.append(z_row(section, text(quantity, est), problem, full[meas_key], se.get(meas_key, float("nan")),
                          pred, threshold(family), scale=scale, negative=negative, note=note,
                          details={"estimator": est, "quantity": quantity, "key": meas_key}))

    def measured(section, quantity, est, meas_key, note=""):
        rows.append(measured_row(section, text(quantity, est), problem, full[meas_key],
                                 se.get(meas_key, float("nan")), note=note,
                                 details={"estimator": est, "quantity": quantity, "key": meas_key}))

    nf = len(CLOSED_FORMS)
    for lab in CLOSED_FORMS:  # T2: predicted (from measured moments) vs measured across groups
        v_pred = full[f"V_predicted/{lab}"]
        claim("T2", "V_measured - V_predicted", lab, f"diff_V/{lab}", 0.0,
              f"predicted {v_pred:.4g}, measured {full[f'V_measured/{lab}']:.4g}", nf, scale=v_pred)
    t1_pred = {lab: float("nan") if lab == "reinforce" else 1.0 if lab in theory.UNBIASED or lab == "logit_loo"
               else (G - 1) / G if lab == "dr_grpo" else float("nan") for lab, _, _ in ESTIMATORS}
    t1_family = sum(np.isfinite(v) for v in t1_pred.values())
    for lab, pred in t1_pred.items():  # T1: scale of E ĝ along g (reinforce is the reference: reported only)
        if np.isfinite(pred):
            claim("T1", "scale c = <E g_hat, g>/||g||^2", lab, f"scale/{lab}", pred, "", t1_family)
        else:
            measured("T1", "scale c = <E g_hat, g>/||g||^2", lab, f"scale/{lab}",
                     "reference estimator" if lab == "reinforce" else "ratio estimator: no closed form")
    # negative control: grpo's scale is ~E[1/std(r)] ≠ 1 (T1: biased); the claim is that the
    # measurement detects it (|z| above the threshold)
    claim("T1", "negative control: grpo scale differs from 1", "grpo", "scale/grpo", 1.0,
          "passes when the bias is detected", negative=True)
    claim("T1", "relative bias ||E g_hat - g||^2/||g||^2", "dr_grpo", "rel_bias_sq/dr_grpo", 1 / G**2, "T1: 1/G^2")
    measured("T1", "relative bias ||E g_hat - g||^2/||g||^2", "grpo", "rel_bias_sq/grpo", "measured only")
    for base in ("rloo", "dr_grpo", "opo_loo", "logit_loo", "reinforce"):
        measured("T3", f"variance removed by optimal_loo vs {base} (fraction)", "optimal_loo",
                 f"removed/optimal_loo_vs_{base}", "measured only")
    measured("T3", "b* - mu (mean over prompts)", "-", "T3/b_star_minus_mu", "T3: < 0 when wrong answers have larger S")
    measured("T3", "V(mu) - V(b*) = Cov(S,r)^2/(G m_S) from measured moments", "-",
             "T3/mean_excess_over_b_star", "excess variance of the mean baseline")
    for k in ("S_length", "S_logit", "S_length_spearman", "S_logit_spearman"):
        measured("T8", f"corr({k.replace('_spearman', '')}) {'spearman' if 'spearman' in k else 'pearson'}", "-",
                 f"corr/{k}", "mean over prompts")
    for lab, _, _ in ESTIMATORS:
        if f"snr/{lab}/pooled" in full:
            num = full.get(f"snr/{lab}/grad_sq_norm_hat", float("nan"))
            clipped = (f"clipped at 0: the numerator ||u_bar||^2 - V_hat = {num:.3g} < 0"
                       if num < 0 else "")
            measured("T7", "SNR (pooled over batches)", lab, f"snr/{lab}/pooled", clipped)
            measured("T5", "eta / eta_max = SNR/(1+SNR)", lab, f"lr/{lab}/T5_fraction", clipped)
    if exact_ref is not None:
        keys = [k for k in ("mu", "m_S", "m_rS", "grad_sq_norm", "b_star")]
        fam = len(keys) + len(CLOSED_FORMS) + 2
        for k in keys:
            claim("exact", f"moment {k}: sampled vs exact", "-", f"moment/{k}", exact_ref[f"moment/{k}"], "", fam)
        for lab in CLOSED_FORMS + ("fixed_b_star", "fixed_mean"):
            key = f"V_measured/{lab}" if lab in CLOSED_FORMS else f"V_predicted/{lab}"
            claim("exact", f"V ({'measured' if lab in CLOSED_FORMS else 'predicted'}) vs exact", lab, key,
                  exact_ref[f"V_exact/{lab}"], "", fam)
        for lab, _, src in ESTIMATORS:
            if f"V_multiset/{lab}" in exact_ref:
                claim("exact", "V measured vs exact multiset engine", lab, f"V_measured/{lab}",
                      exact_ref[f"V_multiset/{lab}"], "", len(ESTIMATORS))
    return rows
