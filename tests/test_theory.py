"""theory.py's closed forms (T1-T8) against the exact multiset engine, to float64 precision.

Problems: random softmax bandits (one and several prompts, continuous rewards) and random token
MDPs (tabular and log-linear, binary rewards). Every comparison is to the engine's enumerated
values, never to a number typed here.
"""

import numpy as np
import pytest

from oblr_theory import estimators, exact, theory
from oblr_theory.problems import SoftmaxBandit

from conftest import random_bandit, random_token_mdp
from tolerances import engine_tol, rounding_tol

PROBLEMS = {
    "bandit-K3": lambda: random_bandit(11, K=3),
    "bandit-X3-K4": lambda: random_bandit(12, X=3, K=4),
    "mdp-tabular": lambda: random_token_mdp(13, "tabular", V=3, H=2, reward="contains"),
    "mdp-loglinear": lambda: random_token_mdp(14, "loglinear", V=3, H=3, reward="sum_mod"),
}


@pytest.fixture(params=sorted(PROBLEMS), scope="module")
def problem(request):
    return PROBLEMS[request.param]()


def close(a, b, tol):
    """``|a − b| ≤ tol`` elementwise; ``tol`` from :mod:`tolerances` at each call."""
    np.testing.assert_allclose(a, b, rtol=0, atol=tol)


def few_ops(*values, n=32):
    """Two float64 evaluations of a closed form of at most ``n`` operations on inputs no larger
    than ``values`` (or 1): ``2 γ_n · max(1, |values|)``."""
    return rounding_tol(n, max([1.0] + [float(np.max(np.abs(v))) for v in values]))


# ----------------------------------------------------------------------------- T1
@pytest.mark.parametrize("G", [2, 3, 5])
def test_t1_bias_factor_matches_engine(problem, G):
    for name in sorted(theory.UNBIASED | theory.SCALE_BIASED):
        em = exact.estimator_moments(problem, name, G, b=0.3) if name == "constant" else \
            exact.estimator_moments(problem, name, G)
        tol = engine_tol(problem, G)
        close(em.prompt_mean, theory.expected_estimate(exact.prompt_moments(problem).grad, name, G), tol)
        close(em.mean, theory.expected_estimate(exact.gradient(problem), name, G), tol)


@pytest.mark.parametrize("name, prob", [
    ("grpo", random_bandit(21, K=4)),
    ("optimal", random_bandit(22, X=2, K=3)),
    # opo needs unequal lengths (on a bandit every length is 1 and opo is dr_grpo, a pure scale)
    ("opo", random_token_mdp(23, "loglinear", V=3, H=3, reward="sum_mod")),
])
def test_t1_ratio_estimators_are_refused_and_really_not_scaled(name, prob):
    """grpo/opo/optimal get no closed form, and the engine shows E g_hat is not c * grad J."""
    with pytest.raises(ValueError, match="name="):
        theory.bias_factor(name, 4)
    g = exact.gradient(prob)
    m = exact.estimator_moments(prob, name, 3).mean
    c = (m @ g) / (g @ g)       # the best scale; the residual is the non-scale part of the bias
    # beyond rounding: each entry of m is within engine_tol of its exact value, c·g adds a few ops
    assert np.linalg.norm(m - c * g) > 2 * np.sqrt(prob.dim) * engine_tol(prob, 3), name


def test_t1_every_registered_estimator_is_classified():
    """A new registry entry must be placed: closed-form scale (checked above) or ratio bias."""
    assert set(estimators.names()) == theory.UNBIASED | theory.SCALE_BIASED | theory.RATIO_BIASED
    for name in estimators.names():
        assert (name in theory.UNBIASED) == estimators.spec(name).unbiased, name


def test_t1_unknown_name():
    with pytest.raises(ValueError, match="unknown estimator"):
        theory.bias_factor("nope", 3)


# ----------------------------------------------------------------------------- T2
@pytest.mark.parametrize("G", [2, 3, 4, 6])
def test_t2_prompt_variances_match_engine(problem, G):
    pm = exact.prompt_moments(problem)
    for name, params in [("reinforce", {}), ("constant", {"b": -0.4}), ("oracle_optimal", {}),
                         ("rloo", {}), ("dr_grpo", {})]:
        em = exact.estimator_moments(problem, name, G, **params)
        close(theory.prompt_variance(pm, name, G, baseline=params.get("b")), em.prompt_trace_var,
              engine_tol(problem, G))


def test_t2_direct_calls_in_prompt_moments_order(problem):
    pm = exact.prompt_moments(problem)
    args = (pm.mu, pm.var_r, pm.m_S, pm.m_rS, pm.m_r2S, pm.grad_sq_norm)
    G = 4
    tol = engine_tol(problem, G)
    close(theory.var_rloo(*args, G), exact.estimator_moments(problem, "rloo", G).prompt_trace_var, tol)
    close(theory.var_dr_grpo(*args, G), exact.estimator_moments(problem, "dr_grpo", G).prompt_trace_var, tol)
    close(theory.var_fixed_baseline(pm.m_S, pm.m_rS, pm.m_r2S, pm.grad_sq_norm, G, 0.25),
          exact.estimator_moments(problem, "constant", G, b=0.25).prompt_trace_var, tol)


@pytest.mark.parametrize("B", [1, 2, 5])
def test_t2_batch_variance_matches_engine(problem, B):
    pm = exact.prompt_moments(problem)
    G = 3
    for name in ("rloo", "dr_grpo", "reinforce"):
        em = exact.estimator_moments(problem, name, G, batch_size=B)
        means = theory.expected_estimate(pm.grad, name, G)
        v = theory.var_batch(pm.prompt_probs, np.atleast_2d(means), theory.prompt_variance(pm, name, G), B)
        close(v, em.trace_var, engine_tol(problem, G))


def test_t2_rloo_minus_mean_baseline(problem):
    pm = exact.prompt_moments(problem)
    for G in (2, 3, 5):
        v_rloo = exact.estimator_moments(problem, "rloo", G).prompt_trace_var
        v_mu = np.array([exact.estimator_moments(problem, "constant", G, b=mu).prompt_trace_var[x]
                         for x, mu in enumerate(pm.mu)])
        # two engine values and a closed form: three routes, so twice the two-route bound
        close(v_rloo - v_mu, theory.rloo_minus_mean_baseline(pm.var_r, pm.m_S, pm.grad_sq_norm, G),
              2 * engine_tol(problem, G))
        assert np.all(v_rloo - v_mu >= 0)


# ----------------------------------------------------------------------------- T3
def test_t3_optimal_baseline_gap_and_mean_excess(problem):
    pm = exact.prompt_moments(problem)
    close(theory.optimal_baseline(pm.m_rS, pm.m_S), exact.optimal_baseline(problem), engine_tol(problem, 1))
    G = 4
    tol = 2 * engine_tol(problem, G, max_abs_b=1.3)  # two engine values and a closed form
    v_star = exact.estimator_moments(problem, "oracle_optimal", G).prompt_trace_var
    for b in (-0.5, 0.2, 1.3):
        v_b = exact.estimator_moments(problem, "constant", G, b=b).prompt_trace_var
        close(v_b - v_star, theory.variance_gap(pm.m_S, b, pm.b_star, G), tol)
    v_mu = np.array([exact.estimator_moments(problem, "constant", G, b=mu).prompt_trace_var[x]
                     for x, mu in enumerate(pm.mu)])
    close(v_mu - v_star, theory.mean_baseline_excess(pm.m_rS, pm.m_S, pm.mu, G), tol)


def test_t3_optimal_baseline_falls_back_to_the_mean_where_m_S_is_zero():
    """``b* = m_rS/m_S`` where ``m_S > 0``; ``b* = mu`` where ``m_S = 0`` (given ``mu``); refused
    without ``mu`` or with a negative ``m_S``."""
    b = theory.optimal_baseline([0.6, 0.3, 0.0], [2.0, 0.0, 0.5], mu=[0.1, 0.4, 0.7])
    np.testing.assert_array_equal(b, [0.3, 0.4, 0.0])
    assert theory.optimal_baseline(0.6, 2.0) == 0.3
    assert theory.optimal_baseline(0.0, 0.0, mu=0.25) == 0.25
    with pytest.raises(ValueError, match="m_S"):
        theory.optimal_baseline([0.6, 0.0], [2.0, 0.0])
    with pytest.raises(ValueError, match="m_S"):
        theory.optimal_baseline(0.6, -1.0, mu=0.1)
    with pytest.raises(ValueError, match="mu"):
        theory.optimal_baseline(0.6, 0.0, mu=np.nan)


def test_t3_zero_m_S_on_a_deterministic_prompt_gives_the_mean_and_zero_variance():
    """A prompt whose policy is one-hot (``exp(-1000)`` underflows to 0) has every ``s = 0``, so
    ``m_S = 0``: the engine's ``b*`` is the prompt's mean reward and its ``V`` is 0."""
    prob = SoftmaxBandit(np.array([[1000.0, 0.0, 0.0], [0.3, -0.2, 0.1]]),
                         np.array([[0.7, 0.1, 0.4], [1.0, 0.0, 0.5]]))
    pm = exact.prompt_moments(prob)
    assert pm.m_S[0] == 0.0 and pm.m_S[1] > 0
    assert pm.b_star[0] == pm.mu[0] == 0.7
    assert pm.b_star[1] == pm.m_rS[1] / pm.m_S[1]  # the same division
    v = exact.estimator_moments(prob, "oracle_optimal", 3).prompt_trace_var
    assert v[0] == 0.0 and v[1] > 0


@pytest.mark.parametrize("param", ["tabular", "loglinear"])
def test_t3_binary_form(param):
    prob = random_token_mdp(31, param, V=3, H=3, reward="short_answer")
    b_star = exact.optimal_baseline(prob)
    for x in range(prob.num_prompts):
        o = prob.outcomes(x)
        assert set(np.unique(o.rewards)) <= {0.0, 1.0}
        win = o.rewards == 1
        p = o.probs[win].sum()
        w1 = o.probs[win] @ o.sq_norms[win] / p
        w0 = o.probs[~win] @ o.sq_norms[~win] / (1 - p)
        close(theory.binary_optimal_baseline(p, w1, w0), b_star[x], engine_tol(prob, 1))
        assert np.sign(b_star[x] - p) == np.sign(w1 - w0)   # longer wrong answers: b* < p


# ----------------------------------------------------------------------------- T4, T5
def expected_next_objective(prob, name, G, eta, **params):
    """Exact E J(theta + eta g_hat) on a bandit (batch 1): prompts x multisets."""
    total = 0.0
    for x in range(prob.num_prompts):
        o = prob.outcomes(x)
        idx = exact.multisets(o.size, G)
        w = np.exp(exact.multiset_log_weights(idx, np.log(o.probs)))
        A = estimators.get(name, **params).advantages(o.rewards[idx], o.sq_norms[idx], o.lengths[idx])
        g_hat = np.einsum("mj,mjd->md", A, o.scores[idx]) / G
        total += prob.prompt_probs[x] * sum(wi * exact.objective(prob.with_theta(prob.theta + eta * gi))
                                            for wi, gi in zip(w, g_hat))
    return total


@pytest.mark.parametrize("name", ["rloo", "dr_grpo", "grpo", "optimal", "reinforce"])
def test_t4_bound_holds_exactly_on_bandits(name):
    prob = random_bandit(41, X=2, K=3)
    L = theory.bandit_smoothness_bound(prob.rewards)
    G = 3
    em = exact.estimator_moments(prob, name, G)
    J = exact.objective(prob)
    for eta in (0.05, 0.5, 1 / L, 2.0, 10.0):
        lhs = expected_next_objective(prob, name, G, eta)
        rhs = theory.one_step_bound(J, em.grad, em.mean, em.trace_var, L, eta)
        # lhs: Σ over prompts x multisets of w·J (each J a K-term softmax sum); rhs: a few ops on
        # the engine's moments; both of magnitude ≤ max(1, |J| + η|∇J·m| + Lη²(||m||²+V))
        tol = 2 * engine_tol(prob, G) + few_ops(lhs, rhs, n=G * prob.num_arms + 64)
        assert lhs >= rhs - tol, (name, eta, lhs, rhs)


def test_t5_eta_star_maximises_the_bound_and_scale_bias_keeps_the_gain(problem):
    G = 3
    L = 2.0
    rl = exact.estimator_moments(problem, "rloo", G)
    dr = exact.estimator_moments(problem, "dr_grpo", G)
    g = rl.grad
    J = exact.objective(problem)
    for em in (rl, dr):
        eta = theory.optimal_step_size(g @ em.mean, em.mean @ em.mean, em.trace_var, L)
        best = theory.one_step_bound(J, g, em.mean, em.trace_var, L, eta)
        grid = np.linspace(0, 3 * eta, 301)
        # the same closed form at other η: rounding of a few ops on numbers of size ≤ max(1, |J|)
        assert best >= np.max(theory.one_step_bound(J, g, em.mean, em.trace_var, L, grid)) - few_ops(J, best)
        close(best - J, theory.guaranteed_gain(g @ em.mean, em.mean @ em.mean, em.trace_var, L), few_ops(J, best))
    # unbiased: SNR form equals the general form
    s = theory.snr(g @ g, rl.trace_var)
    close(theory.snr_step_size(s, L), theory.optimal_step_size(g @ g, g @ g, rl.trace_var, L), few_ops(1 / L))
    close(theory.snr_guaranteed_gain(g @ g, s, L), theory.guaranteed_gain(g @ g, g @ g, rl.trace_var, L),
          few_ops(g @ g))
    # dr_grpo (c = (G-1)/G): the engine's exact moments give rloo's gain, and eta* scales by 1/c
    c = (G - 1) / G
    gain_dr = theory.guaranteed_gain(g @ dr.mean, dr.mean @ dr.mean, dr.trace_var, L)
    tol = engine_tol(problem, G)  # dr's and rloo's engine moments enter a few-op closed form
    close(gain_dr, theory.guaranteed_gain(g @ g, g @ g, rl.trace_var, L), tol)
    close(theory.scaled_guaranteed_gain(c, g @ g, dr.trace_var, L), gain_dr, tol)
    close(theory.scaled_optimal_step_size(c, g @ g, dr.trace_var, L),
          theory.optimal_step_size(g @ g, g @ g, rl.trace_var, L) / c, tol / L)


# ----------------------------------------------------------------------------- T6
def test_t6_bounds_hold_for_exact_gradient_ascent():
    """V = 0 (the exact gradient): both bounds must hold along the deterministic trajectory."""
    prob = random_bandit(61, X=2, K=4)
    L = theory.bandit_smoothness_bound(prob.rewards)
    J_star = float(prob.prompt_probs @ prob.rewards.max(axis=1))
    gap = J_star - exact.objective(prob)
    T = 200
    for eta in (0.5 / L, 1 / L):
        p, sq = prob, []
        for _ in range(T):
            g = exact.gradient(p)
            sq.append(g @ g)
            p = p.with_theta(p.theta + eta * g)
        assert np.mean(sq) <= theory.constant_step_bound(gap, eta, T, L, 0.0)
    # eta* = 1/L at SNR = inf; progress sum_t ||g_t||^2 * 1 <= 2 L gap
    snrs = np.full(T, np.inf)
    assert theory.adaptive_step_progress(np.array(sq), snrs) <= theory.adaptive_step_bound(gap, L)


def test_t6_step_size_must_respect_smoothness():
    with pytest.raises(ValueError, match="step_size"):
        theory.constant_step_bound(1.0, 0.6, 10, 2.0, 0.1)


# ----------------------------------------------------------------------------- T7
def _unit_distribution(prob, name, G):
    """Values (n, d) and probabilities (n,) of one unit u = one prompt group's estimate."""
    vals, probs = [], []
    for x in range(prob.num_prompts):
        o = prob.outcomes(x)
        idx = exact.multisets(o.size, G)
        w = np.exp(exact.multiset_log_weights(idx, np.log(o.probs)))
        A = estimators.get(name).advantages(o.rewards[idx], o.sq_norms[idx], o.lengths[idx])
        vals.append(np.einsum("mj,mjd->md", A, o.scores[idx]) / G)
        probs.append(prob.prompt_probs[x] * w)
    return np.concatenate(vals), np.concatenate(probs)


@pytest.mark.parametrize("B", [2, 3])
def test_t7_snr_piece_expectations_by_enumeration(B):
    prob = random_bandit(71, X=2, K=2)
    G = 2
    em = exact.estimator_moments(prob, "rloo", G)
    vals, probs = _unit_distribution(prob, "rloo", G)
    n = len(probs)
    e_sigma = e_var = e_plug = 0.0
    for combo in np.ndindex(*([n] * B)):
        u = vals[list(combo)]
        w = np.prod(probs[list(combo)])
        g_hat = u.mean(axis=0)
        sigma = np.sum((u - g_hat) ** 2) / (B - 1)
        e_sigma, e_var, e_plug = e_sigma + w * sigma, e_var + w * sigma / B, e_plug + w * (g_hat @ g_hat)
    pieces = theory.snr_pieces_expectation(em.mean @ em.mean, em.trace_var, B)
    # the loop adds n^B weighted terms (each ≤ B·max||u||² ≤ the engine's scale)
    tol = B * engine_tol(prob, G) + rounding_tol(n ** B + 8, B * float((vals ** 2).sum(1).max()))
    close([e_sigma, e_var, e_plug, e_plug - e_var], list(pieces), tol)
    close(theory.expected_plugin_numerator(em.mean @ em.mean, em.trace_var / B), e_plug, tol)


# ----------------------------------------------------------------------------- T8 and bandit facts
def test_t8_logit_proxy_and_bandit_facts():
    prob = random_bandit(81, X=3, K=5)
    for x in range(prob.num_prompts):
        o = prob.outcomes(x)
        pi = prob.policy(x)
        tol = few_ops(2.0)  # K = 5 terms of size ≤ 2 on each side (||e_a − π||² ≤ 2)
        close(theory.logit_proxy(np.broadcast_to(pi, (5, 5)), np.arange(5)), o.sq_norms, tol)
        close(theory.bandit_sq_norms(pi), o.sq_norms, tol)
        close(theory.logit_proxy_expectation(pi), exact.prompt_moments(prob).m_S[x], tol)
        close(theory.bandit_gradient(pi, prob.rewards[x]), exact.prompt_moments(prob).grad[x, x * 5:(x + 1) * 5], tol)
    L = theory.bandit_smoothness_bound(prob.rewards)
    assert L == prob.smoothness_bound()
    assert np.abs(np.linalg.eigvalsh(exact.hessian(prob))).max() <= L


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("call, arg", [
    (lambda: theory.var_rloo(0.5, 0.25, 1.0, 0.5, 1.0, 0.1, group_size=1), "group_size"),
    (lambda: theory.var_dr_grpo(0.5, 0.25, 1.0, 0.5, 1.0, 0.1, group_size=2.5), "group_size"),
    (lambda: theory.var_fixed_baseline(m_S=-1.0, m_rS=0.5, m_r2S=1.0, grad_sq_norm=0.1, group_size=2), "m_S"),
    (lambda: theory.var_rloo(mu=0.5, var_r=-0.1, m_S=1.0, m_rS=0.5, m_r2S=1.0, grad_sq_norm=0.1, group_size=3), "var_r"),
    (lambda: theory.optimal_baseline(0.3, 0.0), "m_S"),
    (lambda: theory.var_fixed_baseline(m_S=1.0, m_rS=0.5, m_r2S=np.nan, grad_sq_norm=0.1, group_size=2), "m_r2S"),
    (lambda: theory.var_batch([0.5, 0.6], np.zeros((2, 3)), [1.0, 1.0], 2), "prompt_probs"),
    (lambda: theory.var_batch([0.5, 0.5], np.zeros((3, 3)), [1.0, 1.0], 2), "prompt_means"),
    (lambda: theory.optimal_step_size(-0.1, 1.0, 1.0, 1.0), "grad_dot_mean"),
    (lambda: theory.one_step_bound(0.0, [1.0], [1.0], 0.1, 0.0, 0.1), "smoothness"),
    (lambda: theory.snr(0.0, 0.0), "SNR"),
    (lambda: theory.snr_pieces_expectation(1.0, 1.0, 1), "batch_size"),
    (lambda: theory.binary_optimal_baseline(1.2, 1.0, 1.0), "p"),
    (lambda: theory.logit_proxy([0.5, 0.5], 2), "action"),
    (lambda: theory.logit_proxy_expectation([0.5, 0.6]), "probs"),
    (lambda: theory.prompt_variance(object(), "grpo", 3), "name"),
])
def test_bad_input_names_the_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def test_broadcasting_over_prompts_is_elementwise():
    pm = exact.prompt_moments(random_bandit(91, X=4, K=3))
    vec = theory.var_rloo(pm.mu, pm.var_r, pm.m_S, pm.m_rS, pm.m_r2S, pm.grad_sq_norm, 3)
    one = [theory.var_rloo(pm.mu[x], pm.var_r[x], pm.m_S[x], pm.m_rS[x], pm.m_r2S[x], pm.grad_sq_norm[x], 3)
           for x in range(4)]
    np.testing.assert_array_equal(vec, one)  # elementwise: the same operations, bit for bit
    assert isinstance(one[0], float)
