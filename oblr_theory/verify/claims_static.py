"""Claims T1, T2, T3 and T8 (and docs/theory.md: Token aggregation) on bandits and token MDPs.

Three kinds of evidence per claim:

* exact: a closed form of :mod:`oblr_theory.theory` against the multiset engine
  (:mod:`oblr_theory.exact`), float64 rounding only;
* Monte Carlo: sampled per-group estimates (:mod:`oblr_theory.montecarlo`) against the engine's
  exact mean and variance under calibrated tests (:mod:`oblr_theory.stats`);
* negative controls: false claims (``grpo``, ``opo``, ``optimal``, ``dr_grpo`` without its
  ``(G−1)/G``, ``token-mean`` aggregation) on problems and sample sizes where the exact bias
  exceeds the test's minimum detectable bias; each must be rejected. Every variance test also
  has one: the engine's ``V`` times ``1 ± 2c`` (planted) must be rejected;
* power ceilings: per suite, a row that fails when any test's minimum detectable error (at the
  run's ``α`` and power) exceeds the stated ceiling ``c``: :data:`MEAN_CEILING` of ``||E ĝ||`` for
  the mean tests, :data:`VAR_CEILING` of ``V`` for the variance tests. So a test that lost its
  power (fewer samples, a wrong standard error) fails loudly instead of passing vacuously.

Problems are small on purpose (skewed rewards, ``G`` = 2–4) so that the O(1/G) biases are large
against the Monte Carlo noise; the V = 16, H = 12 token MDP is Monte Carlo only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from .. import estimators, exact, montecarlo as mc, stats, theory
from ..problems import SoftmaxBandit, TokenMDP
from .report import Claim, Row, exact_row, fact_row, test_row

__all__ = ["claims", "problem", "PROBLEMS", "MEAN_CEILING", "VAR_CEILING"]

#: Largest allowed minimum detectable bias of a mean test, relative to the claimed ``||E ĝ||``.
MEAN_CEILING = 0.25
#: Largest allowed minimum detectable error of a ``tr Var`` test, relative to the exact ``V``;
#: the planted wrong variances are ``V · (1 ± 2 VAR_CEILING)``.
VAR_CEILING = 0.25


# ---------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------

PROBLEMS: dict[str, Callable[[], object]] = {
    # the best arm is the least likely: skewed rewards, b* far from μ
    "bandit K=4": lambda: SoftmaxBandit([1.5, 0.5, 0.0, -1.0], [0.0, 0.2, 0.5, 1.0]),
    "bandit X=3 K=4": lambda: SoftmaxBandit(
        [[1.5, 0.5, 0.0, -1.0], [0.0, 0.3, -0.5, 1.0], [0.2, -0.2, 0.8, 0.0]],
        [[0.0, 0.2, 0.5, 1.0], [1.0, 0.0, 0.0, 0.5], [0.3, 0.9, 0.1, 0.0]], prompt_probs=[0.5, 0.3, 0.2]),
    # binary, length-correlated reward: long answers are wrong, so b* < μ (T3)
    "mdp tabular V=3 H=3": lambda: TokenMDP(3, 3, "short_answer", parametrization="tabular", seed=0,
                                            reward_kwargs={"token": 2, "max_len": 2}),
    "mdp loglinear V=3 H=3 X=2": lambda: TokenMDP(3, 3, "short_answer", num_prompts=2,
                                                  parametrization="loglinear", seed=0,
                                                  reward_kwargs={"token": 2, "max_len": 2}),
    # too large to enumerate (16^12 sequences): Monte Carlo only
    # (init_scale 0.3 keeps every token probability >= 1%: no rare-event coordinates, see stats)
    "mdp loglinear V=16 H=12 X=2": lambda: TokenMDP(16, 12, "contains", num_prompts=2,
                                                    parametrization="loglinear", seed=0, init_scale=0.3,
                                                    reward_kwargs={"token": 3}),
}


@lru_cache(maxsize=None)
def problem(key: str):
    """The named problem (built once per process)."""
    if key not in PROBLEMS:
        raise ValueError(f"unknown problem {key!r}; known: {sorted(PROBLEMS)}")
    return PROBLEMS[key]()


@lru_cache(maxsize=None)
def _moments(key: str):
    return exact.prompt_moments(problem(key))


# ---------------------------------------------------------------------------------------------
# Claimed means (what each row says E ĝ is)
# ---------------------------------------------------------------------------------------------


def _claim_grad(P, pm, G, C):
    """T1: ``E ĝ = ∇J``."""
    return pm.prompt_probs @ pm.grad


def _claim_scaled(P, pm, G, C):
    """T1 (dr_grpo): ``E ĝ = ((G−1)/G) ∇J``, from :func:`theory.expected_estimate`."""
    return theory.expected_estimate(pm.prompt_probs @ pm.grad, "dr_grpo", G)


def _claim_per_length(P, pm, G, C):
    """Section 6 (token-mean as a length-normalised REINFORCE): ``Σ_x p_x ∇J_x / E[ℓ|x]``; false
    at finite G (ratio bias O(1/G))."""
    return pm.prompt_probs @ (pm.grad / pm.m_len[:, None])


def _claim_per_constant(P, pm, G, C):
    """Section 6 (Dr.GRPO constant normaliser ``C``): ``E ĝ = ∇J / C`` for an unbiased advantage."""
    return pm.prompt_probs @ pm.grad / C


CLAIMED = {"grad": ("E ĝ = ∇J", _claim_grad),
           "scaled": ("E ĝ = ((G−1)/G)∇J", _claim_scaled),
           "per-length": ("E ĝ = Σp_x∇J_x/E[ℓ|x]", _claim_per_length),
           "per-constant": ("E ĝ = ∇J/C", _claim_per_constant)}


@dataclass(frozen=True)
class Spec:
    """One estimator in a Monte Carlo suite and the mean claims checked on its samples.

    checks: ``(claimed-mean key, negative?)`` pairs; var_test: also test ``tr Var`` against the engine.
    """

    label: str
    name: str
    aggregation: str = "seq-mean-token-sum"
    params: tuple = ()
    checks: tuple = (("grad", False),)
    var_test: bool = False

    def estimator(self, max_length):
        ml = max_length if self.aggregation == "constant" else None
        return estimators.get(self.name, aggregation=self.aggregation, max_length=ml, **dict(self.params))

    @property
    def num_tests(self) -> int:
        return len(self.checks) + 2 * int(self.var_test)  # a variance test and its planted control


def _specs(is_mdp: bool) -> list[Spec]:
    specs = [
        Spec("reinforce", "reinforce", var_test=True),
        Spec("constant b=0.5", "constant", params=(("b", 0.5),), var_test=True),
        Spec("rloo", "rloo", var_test=True),
        Spec("optimal_loo", "optimal_loo", var_test=True),
        Spec("oracle_optimal", "oracle_optimal", var_test=True),
        Spec("dr_grpo", "dr_grpo", checks=(("scaled", False), ("grad", True)), var_test=True),
        Spec("grpo", "grpo", checks=(("grad", True),), var_test=True),
        Spec("optimal", "optimal", checks=(("grad", True),), var_test=True),
    ]
    if is_mdp:  # lengths vary only on token MDPs
        specs += [
            Spec("opo_loo", "opo_loo", var_test=True),
            Spec("opo", "opo", checks=(("grad", True),)),
            Spec("rloo token-mean", "rloo", aggregation="token-mean", checks=(("per-length", True),)),
            Spec("rloo constant-norm", "rloo", aggregation="constant", checks=(("per-constant", False),)),
        ]
    return specs


# ---------------------------------------------------------------------------------------------
# Monte Carlo suites
# ---------------------------------------------------------------------------------------------


def _mc_suite(key: str, G: int, num_groups: int, ctx) -> list[Row]:
    """Sample ``num_groups`` groups once; every estimator of :func:`_specs` is evaluated on the
    same groups. Per estimator: the T1 mean claims (z-test per coordinate) and T2 (tr Var)."""
    P = problem(key)
    pm = _moments(key)
    is_mdp = isinstance(P, TokenMDP)
    C = float(P.horizon) if is_mdp else 1.0
    specs = _specs(is_mdp)
    ests = {s.label: "oracle_optimal" if s.name == "oracle_optimal" else s.estimator(C) for s in specs}  # b* per prompt below
    engine = {s.label: exact.estimator_moments(P, "oracle_optimal" if s.name == "oracle_optimal" else ests[s.label], G)
              for s in specs}
    acc = {s.label: stats.TraceVarianceMoments(engine[s.label].mean) for s in specs}
    for sample in mc.iter_groups(P, G, num_groups, ctx.rng):
        for s in specs:
            b_star = pm.b_star if s.name == "oracle_optimal" else None
            acc[s.label].update(mc.group_gradients(sample, ests[s.label], b_star=b_star))
    rows = []
    where = f"{key}, G={G}"
    power = _PowerLog()
    for i, s in enumerate(specs):
        em = engine[s.label]
        for claimed_key, negative in s.checks:
            text, fn = CLAIMED[claimed_key]
            claimed = fn(P, pm, G, C)
            t = stats.mean_test(acc[s.label].coords, claimed, ctx.alpha, ctx.power)
            power.mean(s.label, t, claimed)
            rows.append(test_row("T1" if claimed_key in ("grad", "scaled") else "S6", f"{text} ({s.label})",
                                 where, t, negative=negative, exact_bias=em.mean - claimed,
                                 details={"num_groups": num_groups}))
        if s.var_test:
            rows += _variance_rows(acc[s.label], em.trace_var, s.label, where, i, power, ctx,
                                   {"num_groups": num_groups})
    return rows + power.rows(where, num_groups)


def _variance_rows(acc, V, label, where, index, power, ctx, details, statement="tr Var ĝ = engine V") -> list[Row]:
    """T2: the variance test against the engine's ``V``, and its negative control: the same
    samples against a planted ``V · (1 ± 2·VAR_CEILING)`` (sign alternating with ``index``), which
    must be rejected (it is twice the ceiling on the detectable error, so when the ceiling row
    holds the control is missed with probability far below ``1 − power``)."""
    t = stats.trace_variance_test(acc, V, ctx.alpha, ctx.power)
    power.var(label, t, V)
    factor = 1.0 + (2.0 if index % 2 == 0 else -2.0) * VAR_CEILING
    planted = stats.trace_variance_test(acc, V * factor, ctx.alpha, ctx.power)
    return [test_row("T2", f"{statement} ({label})", where, t,
                     details=dict(details, relative_detectable_error=float(t.mde[0] / V) if V > 0 else None)),
            test_row("T2", f"{statement} × {factor:g} is rejected (planted; {label})", where, planted,
                     negative=True, exact_bias=[V - V * factor], details=details)]


class _PowerLog:
    """The minimum detectable errors of a suite's tests, relative to the claimed values, and the
    two ceiling rows that fail when one exceeds :data:`MEAN_CEILING` / :data:`VAR_CEILING`."""

    def __init__(self):
        self.means, self.vars = [], []

    def mean(self, label, test, claimed):
        norm = float(np.linalg.norm(claimed))
        self.means.append((float(np.max(test.mde)) / norm if norm > 0 else np.inf, label))

    def var(self, label, test, V):
        self.vars.append((float(test.mde[0]) / V if V > 0 else np.inf, label))

    def rows(self, where, n, mean_label="T1", of_mean="||E ĝ||") -> list[Row]:
        out = []
        for lab, what, log, ceiling, of in ((mean_label, "mean", self.means, MEAN_CEILING, of_mean),
                                            ("T2", "tr Var", self.vars, VAR_CEILING, "V")):
            if not log:
                continue
            worst, name = max(log)
            out.append(fact_row(lab, f"power: every {what} test detects an error of {ceiling:.0%} of {of}", where,
                                worst, bool(worst <= ceiling), threshold=ceiling,
                                note=f"largest min. detectable error / {of} = {worst:.3g} ({name}) over "
                                     f"{len(log)} tests, {n} samples",
                                details={"relative_detectable_errors": {nm: v for v, nm in log}}))
        return out


def _mc_batch(key: str, G: int, B: int, num_batches: int, ctx) -> list[Row]:
    """T2 (batch): the mean of ``B`` i.i.d. prompt groups has ``V_batch`` of the law of total variance."""
    P = problem(key)
    rows = []
    power = _PowerLog()
    where = f"{key}, G={G}"
    for i, name in enumerate(("rloo", "optimal_loo")):
        em = exact.estimator_moments(P, name, G, batch_size=B)
        u = mc.sample_gradients(P, name, G, B, num_batches, ctx.rng).mean(axis=1)  # (num_batches, d)
        acc = stats.TraceVarianceMoments(em.mean).update(u)
        t = stats.mean_test(acc.coords, em.grad, ctx.alpha, ctx.power)
        power.mean(f"{name}, B={B}", t, em.grad)
        rows.append(test_row("T1", f"E ĝ_batch = ∇J ({name}, B={B})", where, t))
        rows += _variance_rows(acc, em.trace_var, f"{name}, B={B}", where, i, power, ctx,
                               {"num_batches": num_batches}, statement="tr Var ĝ_batch = V_batch")
    return rows + power.rows(where, num_batches)


def _mc_baseline_gap(key: str, G: int, num_groups: int, ctx) -> list[Row]:
    """T3 by Monte Carlo, paired on the same groups: ``E[||ĝ_μ − c||² − ||ĝ_b* − c||²]`` equals the
    mean baseline's excess variance ``Σ_x p_x Cov(S, r)² / (G m_S)`` (any fixed centre c)."""
    P = problem(key)
    pm = _moments(key)
    centre = pm.prompt_probs @ pm.grad
    diff = stats.SampleMoments(1)
    for sample in mc.iter_groups(P, G, num_groups, ctx.rng):
        b_mu = estimators.get("constant", b=pm.mu[sample.prompts][:, None])
        g_mu = mc.group_gradients(sample, b_mu) - centre
        g_star = mc.group_gradients(sample, "oracle_optimal", b_star=pm.b_star) - centre
        diff.update(np.einsum("nd,nd->n", g_mu, g_mu) - np.einsum("nd,nd->n", g_star, g_star))
    excess = float(pm.prompt_probs @ theory.mean_baseline_excess(pm.m_rS, pm.m_S, pm.mu, G))
    t = stats.mean_test(diff, [excess], ctx.alpha, ctx.power)
    power = _PowerLog()
    power.mean("paired V(μ) − V(b*)", t, [excess])
    return [test_row("T3", "V(μ) − V(b*) = Cov(S,r)²/(G m_S) (paired)", f"{key}, G={G}", t,
                     exact_value=excess, estimate=float(diff.mean[0]))] + power.rows(f"{key}, G={G}", num_groups, "T3",
                                                                       "the claimed V(μ) − V(b*)")


def _mc_large_mdp(key: str, G: int, num_groups: int, ctx) -> list[Row]:
    """No enumeration possible: T1 through identities that need no ``∇J``. ``E[s] = 0``;
    ``E[ĝ_e − ĝ_reinforce] = 0`` for unbiased e (paired on the same groups); T8:
    ``E[S − Σ_t ||s_t||²] = 0`` and ``E[Σ_t ||e_{y_t} − π_t||² − Σ_t (1 − ||π_t||²)] = 0``."""
    P = problem(key)
    d = P.dim
    names = ("rloo", "optimal_loo", "opo_loo")
    score = stats.SampleMoments(d)
    diffs = {n: stats.SampleMoments(d) for n in names}
    cross, proxy = stats.SampleMoments(1), stats.SampleMoments(1)
    reward_mean = stats.SampleMoments(1)
    for sample in mc.iter_groups(P, G, num_groups, ctx.rng):
        seq = sample.sequences
        score.update(seq.scores)
        g_ref = mc.group_gradients(sample, "reinforce")
        for n in names:
            diffs[n].update(mc.group_gradients(sample, n) - g_ref)
        cross.update(seq.sq_norms - seq.diag_sq_norms)
        proxy.update(seq.logit_proxy - seq.logit_proxy_mean)
        reward_mean.update(seq.rewards)
    where = f"{key}, G={G}"
    info = {"num_groups": num_groups, "mean_reward": float(reward_mean.mean[0]),
            "sequences": int(score.count)}
    rows = [test_row("T1", "E[s] = 0 (score identity)", where,
                     stats.mean_test(score, np.zeros(d), ctx.alpha, ctx.power), details=info)]
    for n in names:
        rows.append(test_row("T1", f"E[ĝ_{n} − ĝ_reinforce] = 0 (paired)", where,
                             stats.mean_test(diffs[n], np.zeros(d), ctx.alpha, ctx.power), details=info))
    rows.append(test_row("T8", "E[S − Σ_t||s_t||²] = 0 (shared params)", where,
                         stats.mean_test(cross, [0.0], ctx.alpha, ctx.power), details=info,
                         estimate=float(cross.mean[0])))
    rows.append(test_row("T8", "E||e_y−π_t||² = 1−||π_t||² (logit proxy)", where,
                         stats.mean_test(proxy, [0.0], ctx.alpha, ctx.power), details=info,
                         estimate=float(proxy.mean[0])))
    return rows


# ---------------------------------------------------------------------------------------------
# Exact claims: closed forms (theory.py) against the multiset engine
# ---------------------------------------------------------------------------------------------


def _exact_t1(key: str, G: int, ctx) -> list[Row]:
    P = problem(key)
    where = f"{key}, G={G}"
    grad = exact.gradient(P)
    rows = []
    for name in sorted(theory.UNBIASED):
        em = exact.estimator_moments(P, name, G, **({"b": 0.5} if name == "constant" else {}))
        rows.append(exact_row("T1", f"E ĝ = ∇J exactly ({name})", where, grad, em.mean))
    em = exact.estimator_moments(P, "dr_grpo", G)
    rows.append(exact_row("T1", "E ĝ = ((G−1)/G)∇J exactly (dr_grpo)", where,
                          theory.expected_estimate(grad, "dr_grpo", G), em.mean))
    scale = 1e-12 * max(1.0, float(np.max(np.abs(grad))))
    for name in sorted(theory.RATIO_BIASED):
        b = exact.estimator_moments(P, name, G).bias
        norm = float(np.linalg.norm(b))
        rows.append(fact_row("T1", f"{name} is biased: ||E ĝ − ∇J|| > 0", where, norm, norm > 1e3 * scale,
                             threshold=1e3 * scale, note="exact bias norm vs 1000x float64 rounding"))
    return rows


def _exact_t2(key: str, G: int, B: int, ctx) -> list[Row]:
    P = problem(key)
    pm = _moments(key)
    where = f"{key}, G={G}"
    rows = []
    for name, params, baseline in (("reinforce", {}, None), ("constant", {"b": 0.5}, 0.5),
                                   ("oracle_optimal", {}, None), ("rloo", {}, None), ("dr_grpo", {}, None)):
        em = exact.estimator_moments(P, name, G, **params)
        closed = theory.prompt_variance(pm, name, G, baseline=baseline)
        rows.append(exact_row("T2", f"V_x closed form = engine ({name})", where, closed, em.prompt_trace_var))
    outs = exact.all_outcomes(P)
    v_mu = np.array([exact.group_moments(o, estimators.get("constant", b=float(pm.mu[x])), G)[1]
                     for x, o in enumerate(outs)])
    v_rloo = exact.estimator_moments(P, "rloo", G).prompt_trace_var
    rows.append(exact_row("T2", "V_rloo − V(b=μ) = (σ²m_S+||g||²)/(G(G−1))", where,
                          theory.rloo_minus_mean_baseline(pm.var_r, pm.m_S, pm.grad_sq_norm, G), v_rloo - v_mu))
    for name in ("rloo", "optimal_loo", "grpo"):
        em1 = exact.estimator_moments(P, name, G)
        emB = exact.estimator_moments(P, name, G, batch_size=B)
        closed = theory.var_batch(pm.prompt_probs, em1.prompt_mean, em1.prompt_trace_var, B)
        rows.append(exact_row("T2", f"V_batch = (E||m_x−m||²+E V_x)/B ({name}, B={B})", where, closed,
                              emB.trace_var))
    return rows


def _exact_t3(key: str, G: int, ctx) -> list[Row]:
    P = problem(key)
    pm = _moments(key)
    where = f"{key}, G={G}"
    outs = exact.all_outcomes(P)
    rows = []
    v_star = exact.estimator_moments(P, "oracle_optimal", G).prompt_trace_var
    grid = (0.0, 0.25, 0.5, 1.0)
    gaps_engine, gaps_closed = [], []
    for b in grid:
        v_b = np.array([exact.group_moments(o, estimators.get("constant", b=b), G)[1] for o in outs])
        gaps_engine.append(v_b - v_star)
        gaps_closed.append(theory.variance_gap(pm.m_S, b, pm.b_star, G))
    rows.append(exact_row("T3", f"V(b)−V(b*) = (m_S/G)(b−b*)², b∈{list(grid)}", where,
                          np.array(gaps_closed), np.array(gaps_engine)))
    rows.append(fact_row("T3", "b* minimises V over the grid (V(b) ≥ V(b*))", where,
                         float(np.min(gaps_engine)), bool(np.min(gaps_engine) >= -1e-12),
                         threshold=-1e-12, note="smallest engine V(b) − V(b*) on the grid"))
    v_mu = np.array([exact.group_moments(o, estimators.get("constant", b=float(pm.mu[x])), G)[1]
                     for x, o in enumerate(outs)])
    rows.append(exact_row("T3", "V(μ)−V(b*) = Cov(S,r)²/(G m_S)", where,
                          theory.mean_baseline_excess(pm.m_rS, pm.m_S, pm.mu, G), v_mu - v_star))
    rewards = np.concatenate([o.rewards for o in outs])
    if np.all((rewards == 0) | (rewards == 1)):  # binary rewards: b* = p w1 / (p w1 + (1−p) w0)
        w1 = np.array([o.probs[o.rewards == 1] @ o.sq_norms[o.rewards == 1] / max(pm.mu[x], 1e-300)
                       for x, o in enumerate(outs)])
        w0 = np.array([o.probs[o.rewards == 0] @ o.sq_norms[o.rewards == 0] / max(1 - pm.mu[x], 1e-300)
                       for x, o in enumerate(outs)])
        rows.append(exact_row("T3", "binary r: b* = p·w1/(p·w1+(1−p)·w0)", where,
                              theory.binary_optimal_baseline(pm.mu, w1, w0), pm.b_star))
        longer_wrong = w0 > w1
        rows.append(fact_row("T3", "E[S|r=0] > E[S|r=1] ⇒ b* < p", where,
                             float(np.max(pm.b_star - pm.mu)), bool(np.all(pm.b_star[longer_wrong] < pm.mu[longer_wrong]))
                             and bool(np.any(longer_wrong)),
                             note=f"w0−w1 = {np.round(w0 - w1, 4).tolist()}, b*−p = {np.round(pm.b_star - pm.mu, 4).tolist()}"))
    return rows


def _exact_t8(ctx) -> list[Row]:
    rows = []
    # bandit: S(a) = ||e_a − π||² = 1 − 2π_a + ||π||²
    key = "bandit K=4"
    o = problem(key).outcomes(0)
    rows.append(exact_row("T8", "bandit S(a) = 1 − 2π_a + ||π||²", key,
                          theory.bandit_sq_norms(o.probs), o.sq_norms))
    rows.append(exact_row("T8", "E_a||e_a−π||² = 1−||π||² (logit proxy)", key,
                          theory.logit_proxy_expectation(o.probs), o.probs @ o.sq_norms))
    for key, per_sample in (("mdp tabular V=3 H=3", True), ("mdp loglinear V=3 H=3 X=2", False)):
        P = problem(key)
        diffs, e_s, e_diag, e_proxy = [], 0.0, 0.0, 0.0
        for x in range(P.num_prompts):
            out = P.outcomes(x)
            seq = mc.score_sequences(P, np.full(out.size, x), P.sequences(x))
            if np.max(np.abs(seq.scores - out.scores)) > 1e-12:
                raise RuntimeError(f"replayed scores disagree with outcomes on {key}")
            diffs.append(out.sq_norms - seq.diag_sq_norms)
            p = P.prompt_probs[x]
            e_s += p * (out.probs @ out.sq_norms)
            e_diag += p * (out.probs @ seq.diag_sq_norms)
            e_proxy += p * (out.probs @ (seq.logit_proxy - seq.logit_proxy_mean))
        gap = float(np.max(np.abs(np.concatenate(diffs))))
        if per_sample:
            rows.append(exact_row("T8", "no sharing: S = Σ_t||s_t||² per sample", key, 0.0, gap))
        else:
            rows.append(fact_row("T8", "shared params: S ≠ Σ_t||s_t||² per sample", key, gap, gap > 1e-6,
                                 threshold=1e-6, note="max |S − Σ_t||s_t||²| over sequences"))
        rows.append(exact_row("T8", "E[S] = E[Σ_t||s_t||²] (martingale)", key, e_s, e_diag))
        rows.append(exact_row("T8", "E Σ_t||e_y−π_t||² = E Σ_t(1−||π_t||²)", key, 0.0, e_proxy))
    return rows


# ---------------------------------------------------------------------------------------------
# The claim list
# ---------------------------------------------------------------------------------------------


def claims(quick: bool, seed: int) -> list[Claim]:
    """Every static claim; ``quick`` shrinks the Monte Carlo sample sizes (and the G grid)."""
    del seed  # all randomness comes from ctx.rng, seeded per claim by the runner
    n_small = 30_000 if quick else 200_000
    n_large = 4_000 if quick else 40_000
    groups = (2, 4) if quick else (2, 3, 4)
    out: list[Claim] = []
    enumerable = ("bandit K=4", "bandit X=3 K=4", "mdp tabular V=3 H=3", "mdp loglinear V=3 H=3 X=2")
    for key in enumerable:
        is_mdp = isinstance(problem(key), TokenMDP)
        n_tests = sum(s.num_tests for s in _specs(is_mdp))
        for G in groups:
            out.append(Claim(f"mc-suite/{key}/G={G}", "T1", key,
                             lambda ctx, key=key, G=G: _mc_suite(key, G, ctx.size(n_small), ctx),
                             num_tests=n_tests, cost=3.0 if is_mdp else 1.0))
        out.append(Claim(f"exact-t1/{key}", "T1", key, lambda ctx, key=key: _exact_t1(key, 3, ctx)))
        out.append(Claim(f"exact-t2/{key}", "T2", key, lambda ctx, key=key: _exact_t2(key, 3, 4, ctx)))
    for key in ("bandit K=4", "mdp tabular V=3 H=3", "mdp loglinear V=3 H=3 X=2"):
        out.append(Claim(f"exact-t3/{key}", "T3", key, lambda ctx, key=key: _exact_t3(key, 2, ctx)))
        out.append(Claim(f"mc-t3/{key}", "T3", key, lambda ctx, key=key: _mc_baseline_gap(key, 2, ctx.size(n_small), ctx),
                         num_tests=1))
    for key in ("bandit X=3 K=4", "mdp loglinear V=3 H=3 X=2"):
        out.append(Claim(f"mc-batch/{key}", "T2", key,
                         lambda ctx, key=key: _mc_batch(key, 3, 4, ctx.size(n_small // 4), ctx), num_tests=6))
    out.append(Claim("exact-t8", "T8", "bandit + token MDPs", _exact_t8))
    big = "mdp loglinear V=16 H=12 X=2"
    out.append(Claim(f"mc-large/{big}", "T1", big, lambda ctx: _mc_large_mdp(big, 4, ctx.size(n_large), ctx),
                     num_tests=6, cost=3.0))
    return out
