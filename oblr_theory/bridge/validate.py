"""Theory against practice at a fixed ``θ`` on a causal LM (T1, T2, T3, T5, T7, T8).

Design. ``P`` prompts, ``M`` independent groups of ``G`` completions per prompt, sampled from
``π_θ``; the ghost Gram of *all* ``n = M·G`` completions of a prompt, ``K_p = [s_i · s_k]``
(``(P, n, n)``), and the batch Grams ``(P·G) × (P·G)`` of batch ``m`` = group ``m`` of every
prompt. Everything below is a function of these Grams, the rewards ``r``, the lengths ``ℓ``
and the logit proxy ``λ`` (T8); no gradient is materialised.

For an estimator with advantages ``A_m`` on group ``m``, the per-group gradient is
``u_m = (1/G) Σ_j A_mj s_mj``; with the coefficient matrix ``C`` (``M × n``, block ``A_m/G``)
their Gram is ``C K Cᵀ`` (``M × M``). Then, per prompt:

- measured variance ``V̂_x = Σ̂ = (1/(M−1)) Σ_m ||u_m − ū||²`` (T7, unbiased for ``V_x``);
- per-sample moments from the ``n`` samples: ``μ̂, σ̂², m̂_S, m̂_rS, m̂_r2S`` (sample means) and
  ``||g||²^ = Σ_{i≠k} r_i r_k K_ik / (n(n−1))`` (a U-statistic, unbiased), and from them the
  predicted ``V_x`` of T2 (reinforce, rloo, dr_grpo, fixed ``b``) and T3 (``b*``, mean excess),
  computed by :mod:`oblr_theory.theory`;
- bias (T1): ``⟨E ĝ_e, E ĝ_f⟩`` is estimated without bias from pairs of *different* groups,
  ``(1/(M(M−1))) Σ_{m≠m'} u^e_m · u^f_m'``; the scale ``c_e = ⟨E ĝ_e, g⟩/||g||²`` (reference
  ``g``: reinforce, unbiased by the score identity alone; ``||g||²`` from the sample
  U-statistic) and the relative bias ``||E ĝ_e − g||²/||g||²`` follow (ratios of
  sums over prompts). T1 predicts ``c = 1`` for unbiased estimators and ``(G−1)/G`` for dr_grpo.

Uncertainty: the ``M`` batches (group ``m`` of every prompt) are i.i.d., so every statistic gets a
delete-one-batch jackknife standard error, and ``z = (measured − predicted)/SE``; a claim holds
when ``|z|`` is below the Bonferroni threshold (Student t, ``M − 1`` degrees of freedom) for the
stated family-wise false-failure rate. The jackknife is asymptotic: with heavy-tailed ``S`` it
needs a fair number of batches (the default ``M = 16``; tiny ``M`` is a smoke run, not a test).
The jackknife, the thresholds and the claim rows are in :mod:`oblr_theory.bridge.validate_claims`.

Where the completions can be enumerated (short answers, ``max_new_tokens ≤ 2``),
:func:`oblr_theory.bridge.exact_lm.exact_reference` computes the exact per-prompt moments and the
exact ``V_x`` (closed forms on exact moments; the multiset engine
:func:`oblr_theory.exact.group_moments` for any estimator when the number of multisets allows),
so the sampled statistics are checked against exact ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps

from .. import estimators, theory
from ..snr import EMASNR, SNRPieces, snr_fraction, snr_hat, snr_pieces_from_gram
from .gram import score_gram
from .rollout import sample_rollout

__all__ = ["ESTIMATORS", "CLOSED_FORMS", "PromptSamples", "collect_prompt", "batch_gram",
           "advantages", "group_gram", "cross_group_mean_inner", "sample_moments", "precompute",
           "statistics"]

#: (label, registry name, source of S): the estimators compared. ``logit_loo`` is
#: ``optimal_loo`` with the logit proxy in place of S (verl's optimal token baseline, T8).
ESTIMATORS = (("reinforce", "reinforce", "exact"), ("rloo", "rloo", "exact"),
              ("dr_grpo", "dr_grpo", "exact"), ("grpo", "grpo", "exact"), ("opo", "opo", "exact"),
              ("opo_loo", "opo_loo", "exact"), ("optimal", "optimal", "exact"),
              ("optimal_loo", "optimal_loo", "exact"), ("logit_loo", "optimal_loo", "logit"))
#: Estimators whose one-group variance T2 gives in closed form from per-sample moments.
CLOSED_FORMS = ("reinforce", "rloo", "dr_grpo")


# ============================================================================== collection
@dataclass
class PromptSamples:
    """``n = M·G`` completions of one prompt at fixed ``θ``.

    rewards_n, sq_norms_n (exact S, Gram diagonal), lengths_n, logit_n (T8 proxy): (n,);
    gram_nn: (n, n) ghost Gram; ids_nt / attn_nt / comp_nt: the sequences (for batch Grams).
    """

    rewards_n: np.ndarray
    sq_norms_n: np.ndarray
    lengths_n: np.ndarray
    logit_n: np.ndarray
    gram_nn: np.ndarray
    ids_nt: np.ndarray
    attn_nt: np.ndarray
    comp_nt: np.ndarray

    def to_npz(self) -> dict:
        return self.__dict__.copy()


def collect_prompt(model, tokenizer, task, problem, n: int, max_new_tokens: int, seed: int,
                   method: str = "ghost") -> PromptSamples:
    """Sample ``n`` completions of ``problem`` and measure their exact Gram and proxies."""
    roll = sample_rollout(model, tokenizer, task, [problem], n, max_new_tokens, seed=seed)
    args = (roll.input_ids_bgt, roll.attention_bgt, roll.completion_bgt)
    gram = score_gram(model, *args, method=method)
    logit = score_gram(model, *args, method="logit")
    f64 = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
    return PromptSamples(
        rewards_n=f64(roll.rewards_bg[0]), sq_norms_n=f64(gram.sq_norms_bg[0]),
        lengths_n=f64(roll.lengths_bg[0]), logit_n=f64(logit.sq_norms_bg[0]),
        gram_nn=f64(gram.gram_bgg[0]), ids_nt=roll.input_ids_bgt[0].cpu().numpy(),
        attn_nt=roll.attention_bgt[0].cpu().numpy(), comp_nt=roll.completion_bgt[0].cpu().numpy())


def batch_gram(model, samples: list[PromptSamples], m: int, group_size: int, pad_id: int,
               method: str = "ghost") -> np.ndarray:
    """Gram ``(P·G, P·G)`` of batch ``m`` (group ``m`` of every prompt), across prompts.

    Rows are right-padded to a common length (the real tokens stay contiguous, so positions and
    log-probs are unchanged).
    """
    sl = slice(m * group_size, (m + 1) * group_size)
    T = max(s.ids_nt.shape[1] for s in samples)
    pad = lambda a, v: np.pad(a[sl], ((0, 0), (0, T - a.shape[1])), constant_values=v)  # noqa: E731
    ids = np.concatenate([pad(s.ids_nt, pad_id) for s in samples])
    attn = np.concatenate([pad(s.attn_nt, False) for s in samples])
    comp = np.concatenate([pad(s.comp_nt, False) for s in samples])
    dev = next(model.parameters()).device
    t = lambda a: torch.as_tensor(a, device=dev)[None]  # noqa: E731  (1, P·G, T)
    return score_gram(model, t(ids), t(attn), t(comp), method=method).gram_bgg[0].double().cpu().numpy()


# ============================================================================== statistics
def advantages(name: str, source: str, r_mg, S_mg, ell_mg, logit_mg, **params) -> np.ndarray:
    """Registry advantages per group (``(..., G)`` arrays); ``source="logit"`` swaps S for λ."""
    weights = S_mg if source == "exact" else logit_mg
    return estimators.get(name, **params).advantages(r_mg, sq_norms=weights, lengths=ell_mg)


def _coef(A_mg: np.ndarray) -> np.ndarray:
    """``C`` (M, M·G): row m holds ``A_m / G`` on the columns of group m."""
    M, G = A_mg.shape
    C = np.zeros((M, M * G))
    for m in range(M):
        C[m, m * G:(m + 1) * G] = A_mg[m] / G
    return C


def group_gram(gram_nn: np.ndarray, A_mg: np.ndarray, B_mg: np.ndarray | None = None) -> np.ndarray:
    """``[u^A_m · u^B_m']`` (M, M) with ``u_m = (1/G) Σ_j A_mj s_mj`` (T7's per-group gradients)."""
    Ca = _coef(A_mg)
    Cb = Ca if B_mg is None else _coef(B_mg)
    return Ca @ gram_nn @ Cb.T


def cross_group_mean_inner(K_mm: np.ndarray) -> float:
    """``(1/(M(M−1))) Σ_{m≠m'} K_mm'``: unbiased for ``⟨E u^A, E u^B⟩`` (independent groups)."""
    M = K_mm.shape[0]
    return float((K_mm.sum() - np.trace(K_mm)) / (M * (M - 1)))


def sample_moments(r_n, S_n, gram_nn) -> dict[str, float]:
    """Per-sample moments of one prompt from ``n`` i.i.d. samples (T2's ingredients).

    ``μ̂, σ̂²`` (unbiased), ``m̂_S, m̂_rS, m̂_r2S`` (sample means), ``||g||²^`` (U-statistic
    ``Σ_{i≠k} r_i r_k K_ik / (n(n−1))``, unbiased for ``||E[r s]||²``) and ``b̂* = m̂_rS/m̂_S``.
    """
    n = len(r_n)
    rr = np.outer(r_n, r_n) * gram_nn
    return _moments(r_n, S_n, (rr.sum() - np.trace(rr)) / (n * (n - 1)))


def _moments(r_n, S_n, grad_sq_norm) -> dict[str, float]:
    """The sample moments of :func:`sample_moments` given the U-statistic ``||g||²^``."""
    mu, m_S, m_rS = r_n.mean(), S_n.mean(), (r_n * S_n).mean()
    return dict(mu=mu, var_r=r_n.var(ddof=1), m_S=m_S, m_rS=m_rS, m_r2S=(r_n**2 * S_n).mean(),
                grad_sq_norm=grad_sq_norm, b_star=theory.optimal_baseline(m_rS, m_S, mu=mu))


def predicted_variance(mom: dict, label: str, G: int) -> float:
    """T2/T3 closed forms (:func:`oblr_theory.theory.prompt_variance`) on measured or exact moments.

    ``fixed_mean`` / ``fixed_b_star`` are the fixed baselines ``b = μ`` and ``b = b*`` (T3's
    optimum); NaN for estimators without a closed form. A U-statistic ``||g||²^ < 0`` is clipped
    at 0 (the closed forms need ``||g||² ≥ 0``).
    """
    from types import SimpleNamespace

    m = SimpleNamespace(**{**mom, "grad_sq_norm": max(float(mom["grad_sq_norm"]), 0.0)})
    if label in CLOSED_FORMS:
        return float(theory.prompt_variance(m, label, G))
    if label == "fixed_mean":
        return float(theory.prompt_variance(m, "constant", G, baseline=m.mu))
    if label == "fixed_b_star":
        return float(theory.prompt_variance(m, "oracle_optimal", G))
    return float("nan")


@dataclass
class _Prompt:
    """Per-prompt pieces that the jackknife re-uses: samples, and (M, M) group-level Grams."""

    r: np.ndarray
    S: np.ndarray
    ell: np.ndarray
    lam: np.ndarray
    K_u: dict  # label -> [u^e_m · u^e_m'] (M, M)
    K_ref: dict  # label -> [u^e_m · u^ref_m'] (M, M)
    W: np.ndarray  # block sums Σ_{i∈m, k∈m'} r_i r_k K_ik (M, M)


@dataclass
class Precomputed:
    """Everything :func:`statistics` needs; built once by :func:`precompute`."""

    prompts: list
    G: int
    M: int
    snr: dict | None  # label -> (nums (M,), dens (M,)) T7 pieces per batch


def precompute(r_pn, S_pn, ell_pn, logit_pn, gram_pnn, G: int, batch_grams=None) -> Precomputed:
    """Advantages and group-level Grams once (``C K Cᵀ``); the jackknife then drops rows/columns.

    Valid because every estimator's advantages use only its own group, so deleting batch ``m``
    deletes row and column ``m`` of each group-level Gram and nothing else changes.
    """
    P, n = r_pn.shape
    if n % G:
        raise ValueError(f"samples per prompt ({n}) must be a multiple of group_size={G}")
    M = n // G
    if M < 3:
        raise ValueError(f"need M >= 3 groups per prompt for the jackknife, got {M}")
    prompts = []
    for p in range(P):
        r, S, ell, lam, K = r_pn[p], S_pn[p], ell_pn[p], logit_pn[p], gram_pnn[p]
        shp = (M, G)
        A = {lab: advantages(name, src, r.reshape(shp), S.reshape(shp), ell.reshape(shp), lam.reshape(shp))
             for lab, name, src in ESTIMATORS}
        ref = A["reinforce"]  # unbiased by the score identity alone (T1 with b = 0)
        rr = np.outer(r, r) * K
        W = rr.reshape(M, G, M, G).sum(axis=(1, 3))
        prompts.append(_Prompt(r, S, ell, lam, {k: group_gram(K, a) for k, a in A.items()},
                               {k: group_gram(K, a, ref) for k, a in A.items()}, W))
    snr = None
    if batch_grams is not None:
        snr = {}
        for lab, name, src in ESTIMATORS:
            nums, dens = np.zeros(M), np.zeros(M)
            for m in range(M):
                sl = slice(m * G, (m + 1) * G)
                A = advantages(name, src, r_pn[:, sl], S_pn[:, sl], ell_pn[:, sl], logit_pn[:, sl])  # (P, G)
                pieces = snr_pieces_from_gram(group_gram(batch_grams[m], A))  # B = P groups
                nums[m], dens[m] = float(pieces.grad_sq_norm_hat), float(pieces.noise_var_hat)
            snr[lab] = (nums, dens)
    return Precomputed(prompts, G, M, snr)


def _kept_moments(pr: _Prompt, keep_m: np.ndarray, G: int) -> dict:
    """:func:`sample_moments` on the kept groups, from block sums (no n × n work)."""
    keep_n = np.repeat(keep_m, G)
    r, S = pr.r[keep_n], pr.S[keep_n]
    n = len(r)
    return _moments(r, S, (pr.W[np.ix_(keep_m, keep_m)].sum() - np.sum(r * r * S)) / (n * (n - 1)))


def statistics(pre: Precomputed, keep_m=None, ema_beta: float = 0.9, eta_max: float = 1.0) -> dict[str, float]:
    """All scalar statistics of one data set (optionally without some batches), flat dict.

    ``keep_m`` (bool, (M,)) drops batches for the jackknife. Keys: ``V_measured/<e>``,
    ``V_predicted/<e>``, ``scale/<e>``, ``rel_bias_sq/<e>``, ``moment/<k>``, ``removed/<a>_vs_<b>``,
    ``corr/...``, ``snr/<e>/...`` (means over prompts unless stated).
    """
    G, M = pre.G, pre.M
    keep_m = np.ones(M, bool) if keep_m is None else np.asarray(keep_m, bool)
    keep_n = np.repeat(keep_m, G)
    ix = np.ix_(keep_m, keep_m)
    out: dict[str, list] = {}
    put = lambda k, v: out.setdefault(k, []).append(v)  # noqa: E731
    for pr in pre.prompts:
        mom = _kept_moments(pr, keep_m, G)
        for k, v in mom.items():
            put(f"moment/{k}", v)
        for lab in CLOSED_FORMS + ("fixed_mean", "fixed_b_star"):
            put(f"V_predicted/{lab}", predicted_variance(mom, lab, G))
        for lab, _, _ in ESTIMATORS:
            Ku = pr.K_u[lab][ix]
            put(f"V_measured/{lab}", float(snr_pieces_from_gram(Ku).trace_cov_hat))
            put(f"inner/{lab}_ref", cross_group_mean_inner(pr.K_ref[lab][ix]))
            put(f"inner/{lab}_{lab}", cross_group_mean_inner(Ku))
        S, ell, lam = pr.S[keep_n], pr.ell[keep_n], pr.lam[keep_n]
        put("corr/S_length", _pearson(S, ell))
        put("corr/S_logit", _pearson(S, lam))
        put("corr/S_length_spearman", _spearman(S, ell))
        put("corr/S_logit_spearman", _spearman(S, lam))
    res = {k: float(np.nanmean(v)) if np.any(np.isfinite(v)) else float("nan") for k, v in out.items()}
    for k in ("corr/S_length", "corr/S_logit"):
        res[f"{k}_defined_prompts"] = float(np.sum(np.isfinite(out[k])))
    sum_ref = float(np.sum(out["moment/grad_sq_norm"]))  # Σ_p ||g_p||² (sample U-statistics)
    for lab, _, _ in ESTIMATORS:
        me_ref, me_me = np.sum(out[f"inner/{lab}_ref"]), np.sum(out[f"inner/{lab}_{lab}"])
        res[f"scale/{lab}"] = _ratio(me_ref, sum_ref)
        res[f"rel_bias_sq/{lab}"] = _ratio(me_me - 2 * me_ref + sum_ref, sum_ref)
    for base in ("rloo", "dr_grpo", "opo_loo", "logit_loo", "reinforce"):
        vb = res[f"V_measured/{base}"]
        res[f"removed/optimal_loo_vs_{base}"] = _ratio(vb - res["V_measured/optimal_loo"], vb)
    res["T3/mean_excess_over_b_star"] = res["V_predicted/fixed_mean"] - res["V_predicted/fixed_b_star"]
    res["T3/b_star_minus_mu"] = res["moment/b_star"] - res["moment/mu"]
    for lab in CLOSED_FORMS:  # jackknifed jointly, so its SE is the SE of the difference
        res[f"diff_V/{lab}"] = res[f"V_measured/{lab}"] - res[f"V_predicted/{lab}"]
    if pre.snr is not None:
        res.update(_snr_stats(pre, keep_m, ema_beta, eta_max))
    return res


def _ratio(num, den) -> float:
    """``num / den``, or NaN where ``den`` is 0 or not finite (e.g. every reward equal, so every
    score-weighted gradient is 0): an undefined ratio, which the claims count as untested."""
    num, den = float(num), float(den)
    return num / den if den != 0 and np.isfinite(den) else float("nan")


def _pearson(a, b) -> float:
    return float(sps.pearsonr(a, b)[0]) if np.std(a) > 0 and np.std(b) > 0 else float("nan")


def _spearman(a, b) -> float:
    return float(sps.spearmanr(a, b)[0]) if np.std(a) > 0 and np.std(b) > 0 else float("nan")


def _snr_stats(pre: Precomputed, keep_m, beta, eta_max) -> dict:
    """T7 per batch (B = P prompt groups), EMA over the kept batches in order, pooled SNR
    ``max(mean n, 0)/mean v``, and T5's step ``η_max SNR/(1+SNR)`` from the pooled SNR."""
    res = {}
    for lab, (nums, dens) in pre.snr.items():
        ema = EMASNR(beta)
        snrs = []
        for m in np.flatnonzero(keep_m):
            pieces = SNRPieces(nums[m], dens[m], None, None, len(pre.prompts))
            snrs.append(float(snr_hat(pieces)))
            ema.update(pieces)
        n_, d_ = nums[keep_m].mean(), dens[keep_m].mean()
        pooled = max(n_, 0.0) / d_ if d_ > 0 else float("inf")
        res[f"snr/{lab}/batch_mean"] = float(np.mean(snrs))
        res[f"snr/{lab}/ema"] = float(ema.snr)
        res[f"snr/{lab}/pooled"] = float(pooled)
        res[f"snr/{lab}/grad_sq_norm_hat"] = float(n_)
        res[f"snr/{lab}/noise_var_hat"] = float(d_)
        res[f"lr/{lab}/T5_fraction"] = float(snr_fraction(np.float64(pooled)))
        res[f"lr/{lab}/eta"] = eta_max * res[f"lr/{lab}/T5_fraction"]
    res["snr/batch_size"] = float(len(pre.prompts))
    return res
