"""The claims of the theory-vs-practice validation (:mod:`oblr_theory.bridge.validate`): the
delete-one-batch jackknife over the ``M`` i.i.d. batches, Bonferroni z-thresholds, and the claim rows
(T1, T2, T3, T5, T7, T8, and the exact reference where the completions are enumerable).

A claim holds when ``|z| = |measured − predicted| / SE`` is below the two-sided Bonferroni threshold
(Student t, ``M − 1`` degrees of freedom) for the stated family-wise false-failure rate ``alpha``;
each row also reports the smallest deviation the test detects (threshold × SE). grpo's scale is the
negative control: that claim holds when its bias (T1) is detected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from .. import theory
from .validate import CLOSED_FORMS, ESTIMATORS

__all__ = ["Claim", "analyse", "jackknife", "z_threshold"]


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


def z_threshold(alpha: float, family: int, df: int | None = None) -> float:
    """Two-sided Bonferroni threshold for family-wise false-failure rate ``alpha``: normal, or
    Student t with ``df`` degrees of freedom (a jackknife over ``M`` batches has ``df = M − 1``)."""
    q = 1 - alpha / (2 * max(family, 1))
    return float(sps.norm.ppf(q) if df is None else sps.t.ppf(q, df))


# ============================================================================== report
@dataclass
class Claim:
    """One theory-vs-practice row."""

    section: str
    quantity: str
    estimator: str
    measured: float
    se: float
    predicted: float
    z: float
    threshold: float
    holds: bool | None
    note: str = ""
    min_detectable: float = float("nan")  # threshold x SE: the smallest deviation the test detects


def analyse(full: dict, se: dict, G: int, alpha: float = 0.05, exact_ref: dict | None = None,
            n_batches: int | None = None) -> list[Claim]:
    """Turn statistics (and optionally the exact reference) into claim rows with z-tests.

    With ``n_batches = M`` the thresholds are Student t with ``M − 1`` degrees of freedom (the
    jackknife SE's), else normal.
    """
    rows: list[Claim] = []
    df = None if n_batches is None else n_batches - 1

    def claim(section, quantity, est, meas_key, pred, note="", family=1, pred_se=0.0):
        m, s = full[meas_key], se.get(meas_key, float("nan"))
        thr = z_threshold(alpha, family, df)
        sd = np.hypot(s, pred_se)
        z = (m - pred) / sd if np.isfinite(pred) and sd > 0 else float("nan")
        holds = bool(abs(z) < thr) if np.isfinite(z) else None
        rows.append(Claim(section, quantity, est, m, s, pred, z, thr, holds, note, thr * sd))

    nf = len(CLOSED_FORMS)
    for lab in CLOSED_FORMS:  # T2: predicted (from measured moments) vs measured across groups
        claim("T2", "V_measured - V_predicted", lab, f"diff_V/{lab}", 0.0,
              f"predicted {full[f'V_predicted/{lab}']:.4g}, measured {full[f'V_measured/{lab}']:.4g}", nf)
    t1_pred = {lab: float("nan") if lab == "reinforce" else 1.0 if lab in theory.UNBIASED or lab == "logit_loo"
               else (G - 1) / G if lab == "dr_grpo" else float("nan") for lab, _, _ in ESTIMATORS}
    t1_family = sum(np.isfinite(v) for v in t1_pred.values())
    for lab, pred in t1_pred.items():  # T1: scale of E ĝ along g (reinforce is the reference: reported only)
        note = "reference estimator" if lab == "reinforce" else "" if np.isfinite(pred) else "ratio estimator: no closed form"
        claim("T1", "scale c = <E g_hat, g>/||g||^2", lab, f"scale/{lab}", pred, note, t1_family)
    # negative control: grpo's scale is ~E[1/std(r)] ≠ 1 (T1: biased); the claim is that the
    # measurement detects it (|z| above the threshold)
    m, s_ = full["scale/grpo"], se.get("scale/grpo", float("nan"))
    thr = z_threshold(alpha, 1, df)
    z = (m - 1.0) / s_ if s_ > 0 else float("nan")
    rows.append(Claim("T1", "negative control: grpo scale differs from 1", "grpo", m, s_, 1.0, z, thr,
                      bool(abs(z) > thr) if np.isfinite(z) else None, "holds when the bias is detected",
                      thr * s_))
    claim("T1", "relative bias ||E g_hat - g||^2/||g||^2", "dr_grpo", "rel_bias_sq/dr_grpo", 1 / G**2, "T1: 1/G^2")
    claim("T1", "relative bias ||E g_hat - g||^2/||g||^2", "grpo", "rel_bias_sq/grpo", float("nan"), "measured only")
    for base in ("rloo", "dr_grpo", "opo_loo", "logit_loo", "reinforce"):
        claim("T3", f"variance removed by optimal_loo vs {base} (fraction)", "optimal_loo",
              f"removed/optimal_loo_vs_{base}", float("nan"), "measured only")
    claim("T3", "b* - mu (mean over prompts)", "-", "T3/b_star_minus_mu", float("nan"),
          "T3: < 0 when wrong answers have larger S")
    claim("T3", "V(mu) - V(b*) = Cov(S,r)^2/(G m_S) from measured moments", "-",
          "T3/mean_excess_over_b_star", float("nan"), "excess variance of the mean baseline")
    for k in ("S_length", "S_logit", "S_length_spearman", "S_logit_spearman"):
        claim("T8", f"corr({k.replace('_spearman', '')}) {'spearman' if 'spearman' in k else 'pearson'}", "-",
              f"corr/{k}", float("nan"), "mean over prompts")
    for lab, _, _ in ESTIMATORS:
        if f"snr/{lab}/pooled" in full:
            claim("T7", "SNR (pooled over batches)", lab, f"snr/{lab}/pooled", float("nan"))
            claim("T5", "eta / eta_max = SNR/(1+SNR)", lab, f"lr/{lab}/T5_fraction", float("nan"))
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
