"""The claims of the RLVR probes (:mod:`oblr_theory.integrations.rlvr_probe`): calibrated tests,
negative controls with planted errors of known size, and measurements, as report rows
(:class:`oblr_theory.verify.report.Row`).
"""

from __future__ import annotations

import numpy as np

from ..stats import bonferroni_z
from ..verify.report import Row, measured_row, z_row

__all__ = ["claims"]


def claims(full: dict, se: dict, t4: dict, closed_forms, K: int, alpha: float = 0.05,
           problem: str = "RLVR probe", reference: str = "grpo") -> list:
    """Report rows (:class:`oblr_theory.verify.report.Row`) of one probe.

    Calibrated claims, given the drawn prompts (module docstring), each a t-test of a mean of ``K``
    i.i.d. per-batch differences against 0 (Student t, ``K − 1`` degrees of freedom; family-wise
    rate ``alpha`` per family, Bonferroni): T2's closed form for each of ``closed_forms``; T7's two
    identities for every estimator whose mean T1 gives; T4 with the out-of-sample local constant
    (one-sided: a violation is ``E D < 0``, ``n_test − 1`` degrees of freedom). Negative controls,
    each with a planted error of known size (rejected, or untested when the test cannot detect an
    error that large; never counted as holding): dr_grpo's conditional variance against rloo's
    closed form (T2 without the ``((G−1)/G)²`` factor), and ``E||ĝ||²`` against ``||m_k||² − Δ_k``
    (T7 without the ``V̂`` correction). The rest are measurements, the unconditional batch-level
    T2 among them (its jackknife error misses the prompt-level heavy tail).
    """
    rows = []
    labels = [k.split("/", 1)[1] for k in full if k.startswith("V_measured/")]
    thr = lambda fam, df=K - 1: bonferroni_z(alpha, fam, df=df)  # noqa: E731

    def z(claim, stmt, key, fam, scale, note=""):
        rows.append(z_row(claim, stmt, problem, full[key], se[key], 0.0, thr(fam), scale=scale, note=note,
                          details={"key": key}))

    def control(claim, stmt, key, note):
        """Rejected, or untested when the planted error is below what the test detects."""
        size, thr1 = full[f"{key}_size"], thr(1)
        row = z_row(claim, stmt, problem, full[key], se[key], 0.0, thr1, negative=True, note=note,
                    details={"key": key, "planted_error": size})
        if row.passed is False and not abs(size) > thr1 * se[key]:
            row.passed = None
            row.note = f"untested: the planted error {abs(size):.3g} is below the detectable {thr1 * se[key]:.3g}"
        rows.append(row)

    def meas(claim, stmt, key, note=""):
        rows.append(measured_row(claim, stmt, problem, full[key], se.get(key, float("nan")), note=note,
                                 details={"key": key}))

    t2 = [e for e in closed_forms if f"cond/T2/{e}" in full]
    for e in t2:
        z("T2", f"E||g_hat - m_k||^2 = (1/B^2) sum_b V_x_b (closed form, given the prompts) [{e}]", f"cond/T2/{e}",
          len(t2), full[f"cond/pred/{e}"], f"predicted {full[f'cond/pred/{e}']:.4g}, measured {full[f'cond/sq/{e}']:.4g}")
    if "control/dr_grpo_as_rloo" in full:
        control("T2", "negative control: dr_grpo's variance against rloo's closed form", "control/dr_grpo_as_rloo",
                "passes when rejected: T2 scales dr_grpo's by ((G-1)/G)^2")
    t7 = [e for e in labels if f"cond/T7var/{e}" in full]
    for e in t7:
        z("T7", f"E V_hat = E||g_hat - m_k||^2 + spread (given the prompts) [{e}]", f"cond/T7var/{e}", 2 * len(t7),
          full[f"cond/sq/{e}"])
        z("T7", f"E[||g_hat||^2 - V_hat] = ||m_k||^2 - spread (given the prompts) [{e}]", f"cond/T7num/{e}",
          2 * len(t7), full[f"cond/msq/{e}"])
    if "control/rloo_uncorrected" in full:
        control("T7", "negative control: E||g_hat||^2 = ||m_k||^2 - spread, without the V_hat correction [rloo]",
                "control/rloo_uncorrected", "passes when rejected: E||g_hat||^2 exceeds ||m||^2 by the variance")
    fam = len(labels)
    t_one = bonferroni_z(min(1.0, 2 * alpha), fam, df=max(t4["n_test"] - 1, 1))
    for e in labels:
        d = t4[e]
        zval = d["mean_D"] / d["se_D"] if d["se_D"] > 0 else float("nan")
        ok = None if not np.isfinite(zval) else bool(zval > -t_one)
        rows.append(Row("T4", f"E dJ >= E[gradJ.delta] - (L_loc/2) E||delta||^2 [{e}]", problem, "monte-carlo",
                        d["predicted"], d["realised"], zval, -t_one, ok,
                        note=f"L_loc = {t4['L_local']:.4g} from {t4['n_fit']} held-out batches (local, not global); "
                             f"detects a violation >= {t_one * d['se_D']:.3g}",
                        details={"key": f"t4/{e}", "se": d["se_D"], "min_detectable": t_one * d["se_D"]}))
    for e in labels:
        d = t4[e]
        zz = d["model_diff"] / d["model_se"] if d["model_se"] > 0 else float("nan")
        rows.append(measured_row("T4", f"realised gain - T4 predicted gain with one L_eff for all estimators [{e}]",
                                 problem, d["model_diff"], d["model_se"],
                                 note=f"L_eff = {t4['L_eff']:.4g} (first half), predicted {d['predicted_eff']:.4g}, "
                                      f"realised {d['realised']:.4g}, z = {zz:.2f}",
                                 details={"key": f"t4_model/{e}"}))
        if f"diff_V/{e}" in full:
            zz = full[f"diff_V/{e}"] / se[f"diff_V/{e}"] if se.get(f"diff_V/{e}", 0) > 0 else float("nan")
            meas("T2", f"batch V measured - law-of-total-variance plug-in [{e}]", f"diff_V/{e}",
                 f"plug-in {full[f'V_predicted/{e}']:.4g}, measured {full[f'V_measured/{e}']:.4g}, z = {zz:.2f} "
                 "(jackknife; the prompt-level tail makes it optimistic)")
        for key, stmt in (("V_measured", "V (measured)"), ("snr", "SNR = ||grad J||^2 / V"),
                          ("T5_fraction", "T5 factor SNR/(1+SNR)"), ("merit", "T5 merit (gradJ.m)^2/(||m||^2+V)"),
                          ("scale", "scale <grad J, E g_hat>/||grad J||^2"),
                          ("step/first_order", "first-order gain E[gradJ.delta]"),
                          ("step/realised", "realised gain E dJ (exact J)"),
                          ("step/realised_over_first", "realised / first-order"),
                          ("step/curvature_term", "E[dJ - gradJ.delta] (T4 at L = 0)"),
                          ("step/noise_share", "noise share tr Var(delta) / E||delta||^2"),
                          ("V_ratio", f"V / V[{reference}]"), ("merit_ratio", f"merit / merit[{reference}]"),
                          ("realised_minus_ref", f"realised gain - realised gain[{reference}]")):
            if f"{key}/{e}" in full and not (e == reference and key in ("V_ratio", "merit_ratio", "realised_minus_ref")):
                meas("T5" if key in ("snr", "T5_fraction", "merit", "merit_ratio") else
                     "T4" if key.startswith("step/") or key == "realised_minus_ref" else "T2", f"{stmt} [{e}]",
                     f"{key}/{e}")
    return rows
