"""Theory along training (T2, T4, T5, T7) at a fixed ``θ`` of an RL run on the arithmetic task.

The task's reward is exact match against one completion ``y*_x = answer ⊕ <eos>``, so over a
finite prompt pool (uniform, the training law) the objective and its gradient are exact by
teacher forcing::

    J_x = π_θ(y*_x | x),   ∇J_x = J_x s*_x,   J = mean_x J_x,   ∇J = mean_x ∇J_x,

with ``s*_x = ∇ log π_θ(y*_x | x)`` and ``S*_x = ||s*_x||²``. Every per-prompt moment of T2 is then
exact except ``m_S,x = E[S | x]``: ``μ_x = J_x``, ``σ²_x = J_x (1 − J_x)``,
``m_rS,x = m_r2S,x = J_x S*_x``, ``||g_x||² = J_x² S*_x``; and T2's closed forms are affine in
``m_S,x``, ``V_x = α_x + β_x m_S,x``.

A probe draws ``K`` i.i.d. batches shaped like a training step (``B`` prompts uniform on the pool,
``G`` completions each, sampled from ``π_θ``), materialises the per-sample scores ``s_bj`` (one
backward pass per completion: the reference method) and, for each estimator ``e``, forms
``ĝ_{e,k} = (1/(BG)) Σ_bj A_bj s_bj`` on the same batches (common random numbers).

**Given the drawn prompts** everything T2 and T7 speak of is exact except ``m_S``: with T1's scale
``c`` (1 for unbiased estimators, ``(G−1)/G`` for dr_grpo) the batch's conditional mean is
``m_k = (c/B) Σ_b ∇J_{x_b}`` (the drawn prompts' exact gradients), so per batch

- **T2**: ``D2_k = ||ĝ_k − m_k||² − (1/B²) Σ_b (α_{x_b} + β_{x_b} S̄_b)`` has mean 0 (``S̄_b``: the
  group's mean ``S``, unbiased for ``m_S,x_b``);
- **T7**: with ``Δ_k = (1/(B(B−1))) Σ_b ||c∇J_{x_b} − m_k||²`` (the spread of the conditional group
  means), ``E[V̂ | prompts] = E[||ĝ − m_k||² | prompts] + Δ_k`` and
  ``E[||ĝ||² − V̂ | prompts] = ||m_k||² − Δ_k``, for the within-batch ``V̂ = Σ̂/B`` of T7;

and these per-batch differences are i.i.d. across batches: a t-test of their mean against 0
(conditioning removes the prompt-sampling part of the noise, which on the arithmetic task is
heavy-tailed: a few prompts carry most of ``Σ_x ||∇J_x||²``). Without conditioning (measurements,
delete-one-batch jackknife errors):

- **T2 (batch)**: ``V̂_e = (1/(K−1)) Σ_k ||ĝ_{e,k} − ḡ_e||²`` against the law of total variance
  ``V_e = (1/B) (c² (E_x||∇J_x||² − ||∇J||²) + E_x V_x)``;
- **T5**: the exact ``SNR = ||∇J||²/V`` and ``SNR/(1+SNR)``; for any estimator the figure of merit
  ``(∇J·m)² / (||m||² + V)`` (T5's optimal gain times ``2L``), ``m = E ĝ``;
- **T4**: the step the trainer takes, ``δ_k = c_k ĝ_k`` (``c_k``: rate, TRL's loss scaling and
  gradient clipping), its first-order gain ``∇J·δ_k``, and the realised change
  ``ΔJ_k = J(θ + δ_k) − J(θ)`` (exact). T4 with a *local* constant: ``L̂`` is the largest negative
  secant curvature ``−2 (ΔJ − ∇J·δ)/||δ||²`` over the first half of the batches (all estimators),
  and ``E ΔJ ≥ E[∇J·δ] − (L̂/2) E||δ||²`` is tested on the second half; and T4's quadratic model
  with one effective constant for all estimators (fitted on the first half) against each
  estimator's realised gain on the second half.

The claim rows (tests, negative controls, measurements) are in
:mod:`oblr_theory.integrations.rlvr_probe_claims`.

Valid only if: the task's reward is exact match with a character tokenizer (a unique rewarded
completion), the model has no active dropout, and completions are sampled at temperature 1.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from .. import theory
from ..bridge.gram import score_gram
from ..bridge.logprobs import forward_logprobs, sequence_logprobs
from ..bridge.rollout import answer_inputs, sample_rollout
from ..bridge.validate import _ratio, advantages, group_gram
from ..per_sample.loop import trainable_parameters
from ..snr import snr_fraction, snr_pieces_from_gram
from ._trl_math import loss_scale

__all__ = ["PoolObjective", "ProbeConfig", "pool_objective", "per_sample_scores", "closed_form_affine",
           "step_scale", "check_probe_inputs", "probe", "statistics", "t4_split"]

#: Torch's ``clip_grad_norm_`` adds this to the norm in its coefficient ``max_norm / (norm + ε)``.
CLIP_EPS = 1e-6


@dataclass
class PoolObjective:
    """Exact ``J``, ``∇J`` (flat, float64, over ``trainable_parameters``) and per-prompt
    ``J_x``, ``S*_x`` over the pool."""

    J: float
    grad: torch.Tensor  # (d,)
    J_x: np.ndarray  # (X,)
    S_star_x: np.ndarray  # (X,)


def _flat(grads, params) -> torch.Tensor:
    """One float64 vector (d,) of per-parameter gradients (zeros where a parameter is unused)."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                      for g, p in zip(grads, params)])


def pool_J(model, inputs) -> float:
    """``J = mean_x π_θ(y*_x | x)`` over the pool's teacher-forcing ``inputs`` (no gradient)."""
    with torch.no_grad():
        return float(sequence_logprobs(model, *inputs).seq_logp_bg[:, 0].double().exp().mean())


def pool_objective(model, tokenizer, problems) -> PoolObjective:
    """Exact ``J``, ``∇J = mean_x J_x s*_x`` (autograd of the teacher-forced mean) and ``S*_x``
    (ghost squared norms of the rewarded completions) over the pool ``problems``."""
    params = trainable_parameters(model)
    inputs = answer_inputs(tokenizer, problems, next(model.parameters()).device)
    with torch.enable_grad():
        J_x = sequence_logprobs(model, *inputs).seq_logp_bg[:, 0].exp()
        J = J_x.mean()
        grad = _flat(torch.autograd.grad(J, params, allow_unused=True), params)
    S = score_gram(model, *inputs, method="ghost", diagonal_only=True).sq_norms_bg[:, 0]
    return PoolObjective(float(J.detach()), grad, J_x.detach().double().cpu().numpy(),
                         S.double().cpu().numpy())


def per_sample_scores(model, roll) -> torch.Tensor:
    """``Φ`` (N, d) float64: row ``n`` is ``s_n = ∇ Σ_{t ∈ completion} log π(y_t | y_<t)`` of
    completion ``n`` (flattened ``(B, G)``), one backward pass each (the reference method)."""
    params = trainable_parameters(model)
    B, G, T = roll.shape
    with torch.enable_grad():
        tok_logp, _ = forward_logprobs(model, roll.input_ids_bgt.reshape(B * G, T),
                                       roll.attention_bgt.reshape(B * G, T), roll.completion_bgt.reshape(B * G, T))
        seq = tok_logp.sum(-1)
        rows = [_flat(torch.autograd.grad(seq[n], params, retain_graph=n < B * G - 1, allow_unused=True), params)
                for n in range(B * G)]
    return torch.stack(rows)


def _answers(tokenizer, problems, device):
    """The rewarded completions ``answer ⊕ <eos>`` of ``problems`` as a one-group rollout."""
    from ..bridge.rollout import Rollout

    ids, attn, comp = answer_inputs(tokenizer, problems, device)
    X = len(problems)
    return Rollout(list(problems), ids.reshape(1, X, -1), attn.reshape(1, X, -1), comp.reshape(1, X, -1),
                   [[p.answer for p in problems]], torch.ones(1, X, dtype=torch.float64, device=device))


def closed_form_affine(obj: PoolObjective, label: str, G: int) -> tuple[np.ndarray, np.ndarray]:
    """T2's ``V_x = α_x + β_x m_S,x`` for a closed-form estimator (``reinforce``, ``rloo``,
    ``dr_grpo``) on the exact moments of the task (module docstring); ``(α_x, β_x)``, (X,) each.

    The closed forms are affine in ``m_S``; the coefficients are read off two evaluations of
    :func:`oblr_theory.theory.prompt_variance` at ``m_S = J S*`` and ``J S* + 1`` (both feasible:
    ``m_S ≥ J S*``)."""
    mu, S = obj.J_x, obj.S_star_x
    mom = lambda m_S: SimpleNamespace(mu=mu, var_r=mu * (1 - mu), m_S=m_S, m_rS=mu * S,  # noqa: E731
                                      m_r2S=mu * S, grad_sq_norm=mu**2 * S)
    v0 = np.asarray(theory.prompt_variance(mom(mu * S), label, G), float)
    v1 = np.asarray(theory.prompt_variance(mom(mu * S + 1.0), label, G), float)
    beta = v1 - v0
    return v0 - beta * mu * S, beta


def step_scale(g_hat_norm: float, n_samples: int, n_tokens: int, max_len: int, lr: float,
               loss_type: str = "dapo", max_grad_norm: float | None = 1.0) -> float:
    """``c_k`` in the trainer's SGD step ``δ = c_k ĝ`` at the sampling policy.

    TRL's loss gradient is ``−c Σ_j A_j s_j = −c N ĝ`` (``c``: :func:`~._trl_math.loss_scale`,
    ``N`` completions); clipping multiplies it by ``min(1, max_norm / (||c N ĝ|| + ε))`` (torch's
    ``clip_grad_norm_``); SGD without momentum steps ``−lr`` times the clipped gradient.
    """
    c = loss_scale(loss_type, n_samples, n_tokens, max_len) * n_samples
    clip = 1.0
    if max_grad_norm is not None and max_grad_norm > 0:
        clip = min(1.0, max_grad_norm / (c * g_hat_norm + CLIP_EPS))
    return lr * c * clip


@contextlib.contextmanager
def displaced(params, theta0: torch.Tensor, delta: torch.Tensor):
    """Parameters set to ``θ0 + δ`` inside the block and restored to ``θ0`` exactly after it."""
    try:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters((theta0 + delta).to(params[0].dtype), params)
        yield
    finally:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta0.to(params[0].dtype), params)


@dataclass
class ProbeConfig:
    """One probe: ``batches`` (K) i.i.d. batches of ``batch_size`` (B) prompts × ``group_size`` (G);
    the trainer's step (``lr``, ``loss_type``, ``max_grad_norm``); ``estimators`` maps a label to
    ``(registry name, S source "exact" | "logit", params)``."""

    estimators: dict
    batches: int = 64
    batch_size: int = 8
    group_size: int = 8
    lr: float = 0.025
    loss_type: str = "dapo"
    max_grad_norm: float | None = 1.0
    max_new_tokens: int = 3
    seed: int = 0
    closed_forms: tuple = field(default=("reinforce", "rloo", "dr_grpo"))

    def __post_init__(self):
        if self.batches < 4:
            raise ValueError(f"batches={self.batches}: need K >= 4 (two halves of >= 2 for T4, and a jackknife)")
        if self.batch_size < 2 or self.group_size < 2:
            raise ValueError(f"batch_size and group_size must be >= 2 (T7), got {self.batch_size}, {self.group_size}")
        for lab in self.closed_forms:
            if lab not in self.estimators:
                raise ValueError(f"closed_forms names {lab!r}, which is not in estimators {sorted(self.estimators)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def check_probe_inputs(tokenizer, pool, max_new_tokens: int) -> None:
    """Refuse what would make the "exact" ``J`` quietly wrong: a tokenizer other than
    :class:`~oblr_theory.bridge.task.CharTokenizer` (another tokenisation of the answer could also
    score), an empty or repeated pool (the training law is uniform on distinct prompts), or
    ``max_new_tokens`` too short for some answer and its ``<eos>`` (its reward could never be 1)."""
    from ..bridge.task import CharTokenizer

    if not isinstance(tokenizer, CharTokenizer):
        raise ValueError(f"tokenizer must be a CharTokenizer (one rewarded completion per prompt), got "
                         f"{type(tokenizer).__name__}")
    if not pool or len(set(pool)) != len(pool):
        raise ValueError(f"pool must be a non-empty list of distinct problems, got {len(pool)} "
                         f"({len(set(pool))} distinct)")
    need = max(len(p.answer) for p in pool) + 1
    if max_new_tokens < need:
        raise ValueError(f"max_new_tokens={max_new_tokens} cannot hold the longest answer and <eos>: "
                         f"use max_new_tokens >= {need}")


def probe(model, tokenizer, task, pool, cfg: ProbeConfig, progress: bool = False) -> dict:
    """Run one probe at the model's current ``θ`` (module docstring); returns the per-batch record.

    Record: ``exact`` (``J``, ``grad_sq_norm``, ``between`` = ``E_x||g_x||² − ||∇J||²``,
    ``alpha_mean/<e>``), and per estimator ``gram`` (K, K) of the ``ĝ_k``, and (K,) arrays
    ``gdot`` (``∇J·ĝ``), ``t7_var`` / ``t7_num`` (T7 within the batch), ``scale`` (``c_k``),
    ``dJ`` (realised), ``betaS`` (closed forms: mean of ``β_x S_bj``), and given the drawn prompts
    ``cond_sq`` (``||ĝ − m_k||²``), ``cond_msq`` (``||m_k||²``), ``cond_spread`` (``Δ_k``) where T1
    gives ``c``, and ``cond_pred`` (``(1/B²) Σ_b (α_{x_b} + β_{x_b} S̄_b)``) for the closed forms;
    NaN where undefined.
    """
    from tqdm.auto import tqdm

    check_probe_inputs(tokenizer, pool, cfg.max_new_tokens)
    model.eval()
    params = trainable_parameters(model)
    theta0 = torch.nn.utils.parameters_to_vector(params).detach().double().clone()
    obj = pool_objective(model, tokenizer, pool)
    inputs = answer_inputs(tokenizer, pool, theta0.device)
    index = {p: i for i, p in enumerate(pool)}
    affine = {lab: closed_form_affine(obj, lab, cfg.group_size) for lab in cfg.closed_forms}
    B, G, K = cfg.batch_size, cfg.group_size, cfg.batches
    keys = ("gdot", "t7_var", "t7_num", "scale", "dJ", "betaS", "cond_sq", "cond_pred", "cond_msq", "cond_spread")
    rec = {e: {k: np.full(K, np.nan) for k in keys} for e in cfg.estimators}
    vecs = {e: [] for e in cfg.estimators}
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed))
    for k in tqdm(range(K), desc="probe batches", disable=not progress):
        probs = [pool[i] for i in rng.integers(len(pool), size=B)]
        roll = sample_rollout(model, tokenizer, task, probs, G, cfg.max_new_tokens, seed=int(rng.integers(2**31)))
        phi = per_sample_scores(model, roll)  # (N, d)
        gram_nn = (phi @ phi.T).cpu().numpy()
        r = roll.rewards_bg.double().cpu().numpy()
        S = np.diag(gram_nn).reshape(B, G)
        ell = roll.lengths_bg.double().cpu().numpy()
        lam = score_gram(model, roll.input_ids_bgt, roll.attention_bgt, roll.completion_bgt,
                         method="logit").sq_norms_bg.double().cpu().numpy()
        xs = np.array([index[p] for p in probs])
        n_tokens = int(roll.completion_bgt.sum())
        # the drawn prompts' exact gradients ∇J_x = J_x s*_x, (B, d)
        grads_x = torch.as_tensor(obj.J_x[xs])[:, None] * per_sample_scores(model, _answers(tokenizer, probs, theta0.device))
        m_base = grads_x.mean(0)
        spread = float(((grads_x - m_base) ** 2).sum()) / (B * (B - 1))
        for e, (name, source, params_e) in cfg.estimators.items():
            A = advantages(name, source, r, S, ell, lam, **(params_e or {}))  # (B, G)
            g_hat = phi.T @ torch.as_tensor(A.reshape(-1) / (B * G), dtype=phi.dtype)
            pieces = snr_pieces_from_gram(group_gram(gram_nn, A))
            c_k = step_scale(float(g_hat.norm()), B * G, n_tokens, cfg.max_new_tokens, cfg.lr,
                             cfg.loss_type, cfg.max_grad_norm)
            with displaced(params, theta0, c_k * g_hat):
                J1 = pool_J(model, inputs)
            row = rec[e]
            row["gdot"][k] = float(obj.grad @ g_hat)
            row["t7_var"][k] = float(pieces.noise_var_hat)
            row["t7_num"][k] = float(pieces.grad_sq_norm_hat)
            row["scale"][k], row["dJ"][k] = c_k, J1 - obj.J
            if e in affine:
                row["betaS"][k] = float(np.mean(affine[e][1][xs][:, None] * S))
                a_x, b_x = affine[e]
                row["cond_pred"][k] = float(np.sum(a_x[xs] + b_x[xs] * S.mean(1))) / B**2
            c = _bias_scale(name, G)
            if np.isfinite(c):
                row["cond_sq"][k] = float(((g_hat - c * m_base) ** 2).sum())
                row["cond_msq"][k] = c**2 * float(m_base @ m_base)
                row["cond_spread"][k] = c**2 * spread
            vecs[e].append(g_hat)
    out = {"exact": {"J": obj.J, "grad_sq_norm": float(obj.grad @ obj.grad),
                     "between": float(np.mean(obj.J_x**2 * obj.S_star_x) - obj.grad @ obj.grad),
                     **{f"alpha_mean/{e}": float(np.mean(a)) for e, (a, _) in affine.items()}},
           "batch_size": B, "group_size": G, "batches": K}
    for e, v in vecs.items():
        M = torch.stack(v)
        rec[e]["gram"] = (M @ M.T).cpu().numpy()
    out["estimators"] = rec
    return out


def _bias_scale(name: str, G: int) -> float:
    """T1's exact scale ``c`` in ``E ĝ = c ∇J``, or NaN for ratio estimators (no closed form)."""
    try:
        return float(theory.bias_factor(name, G))
    except ValueError:
        return float("nan")


def statistics(rec: dict, names: dict, keep=None, reference: str = "grpo") -> dict[str, float]:
    """Flat scalar statistics of a probe record over the kept batches (``keep``: bool (K,)), for the
    delete-one-batch jackknife. ``names``: label -> registry name (for T1's scale). Comparisons
    with the ``reference`` estimator (``V_ratio/<e>``, ``realised_minus_ref/<e>``,
    ``merit_ratio/<e>``) use the same batches, so their jackknife errors are paired."""
    K, B, G = rec["batches"], rec["batch_size"], rec["group_size"]
    keep = np.ones(K, bool) if keep is None else np.asarray(keep, bool)
    k = int(keep.sum())
    ex = rec["exact"]
    gsq = ex["grad_sq_norm"]
    res = {"exact/J": ex["J"], "exact/grad_sq_norm": gsq}
    for e, r in rec["estimators"].items():
        Gm = r["gram"][np.ix_(keep, keep)]
        tr, tot = np.trace(Gm), Gm.sum()
        V = (tr - tot / k) / (k - 1)  # (1/(K−1)) Σ ||ĝ_k − ḡ||²
        m_sq = (tot - tr) / (k * (k - 1))  # U-statistic: unbiased for ||E ĝ||²
        m_dot = float(r["gdot"][keep].mean())
        c = _bias_scale(names[e], G)
        res[f"V_measured/{e}"] = V
        res[f"mean_sq_norm/{e}"] = m_sq
        res[f"scale/{e}"] = m_dot / gsq if gsq > 0 else float("nan")
        res[f"t7_var/{e}"] = float(r["t7_var"][keep].mean())
        res[f"t7_num/{e}"] = float(r["t7_num"][keep].mean())
        res[f"t7_num_exact/{e}"] = c**2 * gsq
        res[f"snr/{e}"] = gsq / V if V > 0 else float("nan")
        res[f"T5_fraction/{e}"] = float(snr_fraction(np.float64(res[f"snr/{e}"])))
        res[f"merit/{e}"] = m_dot**2 / (m_sq + V) if m_sq + V > 0 else float("nan")
        if f"alpha_mean/{e}" in ex:
            res[f"V_predicted/{e}"] = (c**2 * ex["between"] + ex[f"alpha_mean/{e}"] + float(r["betaS"][keep].mean())) / B
            res[f"diff_V/{e}"] = V - res[f"V_predicted/{e}"]
        s = r["scale"][keep]
        first = s * r["gdot"][keep]
        sq = s**2 * np.diag(Gm)
        dJ = r["dJ"][keep]
        res[f"step/first_order/{e}"] = float(first.mean())
        res[f"step/realised/{e}"] = float(dJ.mean())
        res[f"step/sq_norm/{e}"] = float(sq.mean())
        Gs = np.outer(s, s) * Gm
        res[f"step/noise_share/{e}"] = float((np.trace(Gs) - Gs.sum() / k) / (k - 1) / sq.mean()) if sq.mean() > 0 else float("nan")
        res[f"step/realised_over_first/{e}"] = float(dJ.mean() / first.mean()) if first.mean() != 0 else float("nan")
        res[f"step/curvature_term/{e}"] = float((dJ - first).mean())
    for e, r in rec["estimators"].items():
        res[f"diff_t7_var/{e}"] = res[f"t7_var/{e}"] - res[f"V_measured/{e}"]
        res[f"diff_t7_num/{e}"] = res[f"t7_num/{e}"] - res[f"t7_num_exact/{e}"]
        if np.all(np.isfinite(r["cond_sq"][keep])):  # given the prompts (module docstring)
            sq, msq, spr = r["cond_sq"][keep], r["cond_msq"][keep], r["cond_spread"][keep]
            res[f"cond/sq/{e}"] = float(sq.mean())
            res[f"cond/msq/{e}"] = float(msq.mean())
            res[f"cond/T7var/{e}"] = float((r["t7_var"][keep] - sq - spr).mean())
            res[f"cond/T7num/{e}"] = float((r["t7_num"][keep] - msq + spr).mean())
            if np.all(np.isfinite(r["cond_pred"][keep])):
                res[f"cond/pred/{e}"] = float(r["cond_pred"][keep].mean())
                res[f"cond/T2/{e}"] = float((sq - r["cond_pred"][keep]).mean())
        if reference in rec["estimators"]:
            res[f"V_ratio/{e}"] = _ratio(res[f"V_measured/{e}"], res[f"V_measured/{reference}"])
            res[f"merit_ratio/{e}"] = _ratio(res[f"merit/{e}"], res[f"merit/{reference}"])
            res[f"realised_minus_ref/{e}"] = res[f"step/realised/{e}"] - res[f"step/realised/{reference}"]
    # negative controls, each a plausible mistake with a planted error of known size
    if "cond/T2/dr_grpo" in res and "cond/pred/rloo" in res:  # T2 without dr_grpo's ((G−1)/G)² factor
        res["control/dr_grpo_as_rloo"] = res["cond/sq/dr_grpo"] - res["cond/pred/rloo"]
        res["control/dr_grpo_as_rloo_size"] = res["cond/pred/rloo"] - res["cond/pred/dr_grpo"]
    if "cond/T7num/rloo" in res:  # T7 without the V̂ correction: E||ĝ||² exceeds ||m||² by the variance
        r = rec["estimators"]["rloo"]
        res["control/rloo_uncorrected"] = float((np.diag(r["gram"])[keep] - r["cond_msq"][keep]
                                                 + r["cond_spread"][keep]).mean())
        res["control/rloo_uncorrected_size"] = res["cond/sq/rloo"]
    return res


def t4_split(rec: dict) -> dict:
    """T4 with a local constant, out of sample: fitted on the first half of the batches (every
    estimator's steps), tested per estimator on the second half.

    - the bound: ``L̂`` is the largest ``max(0, −2 (ΔJ − ∇J·δ)/||δ||²)`` (secant curvature) on the
      first half; ``D_k = ΔJ_k − ∇J·δ_k + (L̂/2) ||δ_k||²`` (T4: ``E D ≥ 0``), mean and standard
      error on the second half;
    - the quadratic model behind it, with one constant for all estimators: the effective
      ``L_eff = 2 Σ (∇J·δ − ΔJ) / Σ ||δ||²`` on the first half, and on the second half each
      estimator's realised gain against ``E[∇J·δ] − (L_eff/2) E||δ||²`` (T4's predicted gain with
      ``E||δ||² = ||E δ||² + tr Var δ``): mean and standard error of the per-batch difference.
    """
    K = rec["batches"]
    h = K // 2
    curv, gap, sqs = [], 0.0, 0.0
    per = {}
    for e, r in rec["estimators"].items():
        s = r["scale"]
        first, sq = s * r["gdot"], s**2 * np.diag(r["gram"])
        with np.errstate(divide="ignore", invalid="ignore"):
            sec = np.where(sq > 0, -2 * (r["dJ"] - first) / sq, 0.0)
        curv.append(sec[:h])
        gap += float((first[:h] - r["dJ"][:h]).sum())
        sqs += float(sq[:h].sum())
        per[e] = (r["dJ"][h:], first[h:], sq[h:])
    L = float(max(0.0, np.max(np.concatenate(curv))))
    L_eff = 2 * gap / sqs if sqs > 0 else float("nan")
    out = {"L_local": L, "L_eff": L_eff, "n_fit": h, "n_test": K - h}
    se = lambda x: float(x.std(ddof=1) / np.sqrt(len(x)))  # noqa: E731
    for e, (dJ, first, sq) in per.items():
        D = dJ - first + 0.5 * L * sq
        M = dJ - (first - 0.5 * L_eff * sq)
        out[e] = {"mean_D": float(D.mean()), "se_D": se(D), "realised": float(dJ.mean()),
                  "predicted": float((first - 0.5 * L * sq).mean()),
                  "predicted_eff": float((first - 0.5 * L_eff * sq).mean()),
                  "model_diff": float(M.mean()), "model_se": se(M)}
    return out
