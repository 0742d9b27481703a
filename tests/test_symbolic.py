"""The symbolic derivations: every proof trace passes, the checker can fail, and the lambdified
sympy results agree with the exact engine (and theory.py) on random problems to float64 rounding
(bounds from tests/tolerances.py)."""

import io
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

from oblr_theory import exact, theory
from oblr_theory.problems import SoftmaxBandit
from oblr_theory.symbolic import LABELS, derive
from oblr_theory.symbolic.baseline import baseline_oracles
from oblr_theory.symbolic.enumeration import bandit, bandit_oracles, bias_witness
from oblr_theory.symbolic.moments import GroupModel, expect, product
from oblr_theory.symbolic.smoothness import hessian_oracle
from oblr_theory.symbolic.stepsize import stepsize_oracles
from oblr_theory.symbolic.trace import ProofTrace, is_zero
from oblr_theory.symbolic.variance import SYM, derive_variance, group_estimate, variance_oracles

from conftest import random_bandit, random_token_mdp
from tolerances import engine_tol, rounding_tol


def close(a, b, tol):
    """``|a − b| ≤ tol``. A lambdified oracle is the same enumeration as the engine's, simplified
    (at most as many terms), so oracle vs engine gets the engine's two-route bound
    (:func:`tolerances.engine_tol`); oracle vs theory.py, a few-op bound (:func:`few_ops`)."""
    np.testing.assert_allclose(a, b, rtol=0, atol=tol)


def few_ops(*values, n=64):
    """``2 γ_n · max(1, |values|)``: two float64 evaluations of a closed form of ≤ n operations."""
    return rounding_tol(n, max([1.0] + [float(np.max(np.abs(v))) for v in values]))


# ----------------------------------------------------------------------------- proof traces
@pytest.mark.parametrize("label", LABELS)
def test_derivation_passes_and_prints_a_trace(label):
    out = io.StringIO()
    assert derive(label, out=out)
    text = out.getvalue()
    assert "[ok]" in text and "[FAIL]" not in text
    assert "checks passed" in text


@pytest.mark.slow
def test_t1_full_enumeration_everywhere():
    """K = 3, G = 4 ratio estimators by full multiset enumeration (about a minute)."""
    out = io.StringIO()
    assert derive("T1", out=out, full=True)
    assert "(own arm" not in out.getvalue()


def test_command_line_entry_point():
    res = subprocess.run([sys.executable, "-m", "oblr_theory.symbolic", "T5"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "eta*" in res.stdout and "ALL CHECKS PASSED" in res.stdout
    bad = subprocess.run([sys.executable, "-m", "oblr_theory.symbolic", "T9"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown label" in bad.stderr


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="label"):
        derive("T0", out=io.StringIO())


# ----------------------------------------------------------------------------- the checker can fail
def test_checker_rejects_wrong_closed_forms():
    """Negative controls: near-miss formulas must not pass the exact zero test."""
    G, v, mS, gsq = SYM.G, SYM.var_r, SYM.m_S, SYM.gsq
    V = derive_variance("rloo")
    wrong = [V + gsq / G ** 3, V.subs(G, G + 1), V - v * mS / (G * (G - 1)) + v * mS / G ** 2]
    assert not any(is_zero(V - w) for w in wrong)
    t = ProofTrace("negative control")
    assert not t.zero("1 = 0", sp.Integer(1))
    assert not t.ok


def test_moment_algebra_uses_the_score_identity():
    """With E[s] != 0 (a broken model) the derived rloo variance changes: the identity is used."""
    class Broken(GroupModel):
        def vector(self, counts, vkind):
            return {0: "e", 1: "g", 2: "h"}.get(counts.get("r", 0))
    model = Broken(SYM.mu, SYM.m2, SYM.m_S, SYM.m_rS, SYM.m_r2S, SYM.gsq)
    g_hat = group_estimate("rloo")
    broken = expect(product(g_hat, g_hat), model, SYM.G)
    good = expect(product(g_hat, g_hat), GroupModel(SYM.mu, SYM.m2, SYM.m_S, SYM.m_rS, SYM.m_r2S, SYM.gsq), SYM.G)
    assert not is_zero(broken - good)


@pytest.mark.parametrize("K, G", [(2, 2), (2, 4), (3, 3)])
def test_general_G_algebra_equals_bandit_enumeration_directly(K, G):
    """Route vs route, no target: moment-algebra V(G) at the bandit's moments = enumerated V."""
    sb = bandit(K)
    m = sb.moments
    for name in ("rloo", "dr_grpo", "constant"):
        alg = derive_variance(name).subs({SYM.G: G, SYM.mu: m["mu"], SYM.var_r: m["var_r"], SYM.m_S: m["m_S"],
                                          SYM.m_rS: m["m_rS"], SYM.m_r2S: m["m_r2S"], SYM.gsq: m["gsq"], SYM.b: sb.b})
        assert is_zero(alg - sb.enumerate_moments(name, G)[1]), name


def test_grpo_witness_is_a_real_bias_and_the_range_one_coincidence():
    """Population-std grpo with K = 2, G = 2 has A = +-1: unbiased iff the reward range is 1."""
    # exact sympy values evaluated to 30 digits: anything above 1e-25 is not rounding
    assert max(abs(sp.N(b, 30)) for b in bias_witness(2, 2, "grpo", bessel=False)) > 1e-25
    sb = bandit(2)
    pt = {sb.p_free[0]: sp.Rational(1, 3), sb.r[0]: 0, sb.r[1]: 1}
    mean = [sp.Integer(0)] * 2
    for arms, w in sb.groups(2):
        mean = [a + (w * e).subs(pt) for a, e in zip(mean, sb.estimate("grpo", arms, bessel=False))]
    assert all(sp.simplify(a - g.subs(pt)) == 0 for a, g in zip(mean, sb.grad))


# ----------------------------------------------------------------------------- oracles vs engine
PROBLEMS = [random_bandit(101, K=3), random_bandit(102, X=3, K=5),
            random_token_mdp(103, "tabular", V=3, H=2, reward="contains"),
            random_token_mdp(104, "loglinear", V=3, H=3, reward="sum_mod")]


@pytest.fixture(scope="module")
def var_oracles():
    return variance_oracles()


@pytest.mark.parametrize("prob", PROBLEMS, ids=repr)
@pytest.mark.parametrize("G", [2, 3, 5])
def test_general_G_variance_oracles_match_engine(var_oracles, prob, G):
    pm = exact.prompt_moments(prob)
    args = (pm.mu, pm.var_r, pm.m_S, pm.m_rS, pm.m_r2S, pm.grad_sq_norm, G)
    for name in ("reinforce", "constant", "rloo", "dr_grpo"):
        extra = (0.7,) if name == "constant" else ()
        em = exact.estimator_moments(prob, name, G, **({"b": 0.7} if extra else {}))
        tol = engine_tol(prob, G)
        close(var_oracles[name](*args, *extra), em.prompt_trace_var, tol)
        close(var_oracles[name + "_mean_factor"](G) * pm.grad, em.prompt_mean, tol)


@pytest.mark.parametrize("K, G", [(2, 2), (2, 3), (2, 4), (3, 2), (3, 3), (3, 4)])
def test_bandit_enumeration_oracles_match_engine(K, G):
    names = ("reinforce", "constant", "dr_grpo", "grpo", "rloo", "opo", "opo_loo", "optimal", "optimal_loo",
             "oracle_optimal", "optimal_loo_shrink")
    if (K, G) == (3, 4):
        names = ("reinforce", "constant", "dr_grpo", "grpo", "rloo", "opo_loo", "oracle_optimal")
    oracles = bandit_oracles(K, G, names)
    rng = np.random.default_rng(1000 * K + G)
    for _ in range(3):
        prob = SoftmaxBandit(rng.normal(size=K), rng.uniform(-1, 2, size=K))
        pi, r = prob.policy(0), prob.rewards[0]
        for name in names:
            params = {"constant": {"b": 0.35}, "grpo": {"eps": 1e-3, "ddof": 1},
                      "optimal_loo_shrink": {"lam": 0.3}}.get(name, {})
            em = exact.estimator_moments(prob, name, G, **params)
            mean, V = oracles[name](pi, r, b=params.get("b", 0.0), eps=params.get("eps", 1e-6),
                                    lam=params.get("lam", 0.5))
            tol = engine_tol(prob, G, max_abs_b=2.0)  # rewards in [-1, 2]
            close(mean, em.mean, tol)
            close(V, em.trace_var, tol)


@pytest.mark.slow
def test_bandit_oracles_ratio_estimators_K3_G4():
    names = ("opo", "optimal", "optimal_loo", "optimal_loo_shrink")
    oracles = bandit_oracles(3, 4, names)
    prob = random_bandit(111, K=3)
    for name in names:
        em = exact.estimator_moments(prob, name, 4)
        mean, V = oracles[name](prob.policy(0), prob.rewards[0])
        close(mean, em.mean, engine_tol(prob, 4))
        close(V, em.trace_var, engine_tol(prob, 4))


def test_baseline_oracles_match_engine_and_theory():
    o = baseline_oracles()
    for prob in PROBLEMS:
        pm = exact.prompt_moments(prob)
        close(o["b_star"](pm.m_rS, pm.m_S), exact.optimal_baseline(prob), few_ops(pm.b_star))
        G = 3
        v_star = exact.estimator_moments(prob, "oracle_optimal", G).prompt_trace_var
        v_b = exact.estimator_moments(prob, "constant", G, b=-0.2).prompt_trace_var
        close(o["gap"](pm.m_S, -0.2, pm.b_star, G), v_b - v_star, 2 * engine_tol(prob, G))  # three routes
        close(o["mean_excess"](pm.m_rS, pm.m_S, pm.mu, G), theory.mean_baseline_excess(pm.m_rS, pm.m_S, pm.mu, G),
              few_ops(pm.m_rS, pm.m_S))


def test_stepsize_oracles_match_theory_and_engine():
    o = stepsize_oracles()
    prob = random_bandit(121, X=2, K=4)
    L = prob.smoothness_bound()
    J = exact.objective(prob)
    for name in ("rloo", "dr_grpo", "optimal_loo", "grpo"):
        em = exact.estimator_moments(prob, name, 4)
        gm, mm, V = em.grad @ em.mean, em.mean @ em.mean, em.trace_var
        for eta in (0.1, 0.4):
            # theory.py takes the vectors (a d-term dot product more than the oracle's scalars)
            close(o["bound"](J, gm, mm, V, L, eta), theory.one_step_bound(J, em.grad, em.mean, V, L, eta),
                  few_ops(J, L * (mm + V), n=64 + prob.dim))
        close(o["eta_star"](gm, mm, V, L), theory.optimal_step_size(gm, mm, V, L), few_ops(1 / L))
        close(o["gain"](gm, mm, V, L), theory.guaranteed_gain(gm, mm, V, L), few_ops(gm))
    g = exact.gradient(prob)
    V = exact.estimator_moments(prob, "rloo", 4).trace_var
    s = theory.snr(g @ g, V)
    close(o["snr_eta_star"](s, L), theory.snr_step_size(s, L), few_ops(1 / L))
    close(o["snr_gain"](g @ g, s, L), theory.snr_guaranteed_gain(g @ g, s, L), few_ops(g @ g))


@pytest.mark.parametrize("K", [2, 3])
def test_hessian_oracle_matches_exact_hessian(K):
    H = hessian_oracle(K)
    rng = np.random.default_rng(K)
    for _ in range(5):
        prob = SoftmaxBandit(rng.normal(scale=2, size=K), rng.uniform(-1, 1, size=K))
        # K² entries, each a sum of ≤ 4K products of π and r (|π| ≤ 1, |r| ≤ 1)
        close(H(prob.policy(0), prob.rewards[0]), exact.hessian(prob), few_ops(4.0, n=16 * K))
