"""T7 (SNR pieces) exactly on toy problems, the EMA, the T5 learning-rate rules, numpy == torch.

Exactness: the law of one per-group gradient ``u`` is enumerated (prompt x multiset, with
multinomial weights), and every ``B``-tuple of i.i.d. units is enumerated too, so
``E[statistic]`` is an exact finite sum: no Monte Carlo, float64 agreement to the rounding bounds of
tests/tolerances.py (unit roundoff x accumulation length x the size of the accumulated terms).
"""

import itertools

import numpy as np
import pytest

from conftest import random_bandit, random_token_mdp
from oblr_theory import estimators, exact, snr, theory
from tolerances import engine_tol, rounding_tol


def unit_law(problem, name, group_size):
    """Support of one per-group gradient ``u = ĝ_x``: weights (N,), vectors (N, d)."""
    m = exact.prompt_moments(problem)
    weights, vectors = [], []
    for x in range(problem.num_prompts):
        out = problem.outcomes(x)
        idx = exact.multisets(out.size, group_size)
        with np.errstate(divide="ignore"):
            w = np.exp(exact.multiset_log_weights(idx, np.log(out.probs)))
        params = {"b_star": m.b_star[x]} if name == "oracle_optimal" else {}
        A = estimators.get(name, **params).advantages(out.rewards[idx], out.sq_norms[idx], out.lengths[idx])
        weights.append(problem.prompt_probs[x] * w)
        vectors.append(np.einsum("mg,mgd->md", A, out.scores[idx]) / group_size)
    return np.concatenate(weights), np.concatenate(vectors)


def expect_over_batches(weights_n, vectors_nd, batch_size, statistic):
    """``E statistic(gram)`` over ``B`` i.i.d. units, by enumerating all ``N^B`` tuples."""
    n = len(weights_n)
    idx = np.array(list(itertools.product(range(n), repeat=batch_size)))  # (N^B, B)
    gram_full = vectors_nd @ vectors_nd.T
    gram = gram_full[idx[:, :, None], idx[:, None, :]]  # (N^B, B, B)
    w = np.prod(weights_n[idx], axis=1)
    return np.tensordot(w, statistic(gram), axes=1)


PROBLEMS = {
    "bandit": lambda: random_bandit(11, K=3),
    "bandit-multi": lambda: random_bandit(12, X=2, K=3),
    "mdp-loglinear": lambda: random_token_mdp(13, "loglinear", V=3, H=2, reward="short_answer"),
}


# B = 3 on the token MDP would enumerate 56^3 unit triples; the bandits cover B = 3.
T7_CASES = [(p, B) for p in sorted(PROBLEMS) for B in (2, 3) if not (p == "mdp-loglinear" and B == 3)]


@pytest.mark.parametrize("problem_name, batch_size", T7_CASES)
@pytest.mark.parametrize("name", ["rloo", "optimal_loo", "grpo"])
def test_t7_pieces_exactly_unbiased(problem_name, name, batch_size):
    """T7: E Σ̂ = tr Cov(u), E V̂ = V_batch, E[||ū||² − V̂] = ||E u||², exactly; and the plug-in
    ``||ū||²`` is biased up by exactly V (the negative control a wrong formula would fail)."""
    problem = PROBLEMS[problem_name]()
    G = 2
    w, u = unit_law(problem, name, G)
    one = exact.estimator_moments(problem, name, G, batch_size=1)
    batch = exact.estimator_moments(problem, name, G, batch_size=batch_size)
    mean_sq = float(one.mean @ one.mean)  # ||E u||² (= ||∇J||² for an unbiased estimator)

    def pieces(gram):
        p = snr.snr_pieces_from_gram(gram)
        return np.stack([p.trace_cov_hat, p.noise_var_hat, p.grad_sq_norm_hat, p.mean_sq_norm], axis=-1)

    e_sigma, e_v, e_num, e_plugin = expect_over_batches(w, u, batch_size, pieces)
    expected = theory.snr_pieces_expectation(mean_sq, one.trace_var, batch_size)
    # the engine's two-route bound, plus the N^B-tuple sum of B×B Gram statistics, each at most
    # 4·B·max||u||² (a centred sum of B squared norms), with weights summing to 1
    B = batch_size
    tol = engine_tol(problem, G) + rounding_tol(len(w) ** B + B * B + 16, 4 * B * float((u * u).sum(1).max()))
    assert abs(e_sigma - one.trace_var) <= tol
    assert abs(e_sigma - expected.sigma_hat) <= tol
    assert abs(e_v - batch.trace_var) <= tol
    assert abs(e_num - mean_sq) <= tol
    # negative control: the plug-in numerator misses by V_batch, which the tolerance cannot hide
    assert abs(e_plugin - mean_sq - batch.trace_var) <= tol
    assert batch.trace_var > 2 * tol
    if name in theory.UNBIASED:
        assert abs(e_num - float(one.grad @ one.grad)) <= tol


def test_t7_responses_are_not_independent_units():
    """T7: within a group, rloo terms are dependent, so treating the G per-response terms
    ``A_j s_j`` as i.i.d. units mis-estimates V (exact negative control), while i.i.d. groups do not."""
    problem = random_bandit(21, K=3)
    G = 3
    out = problem.outcomes(0)
    idx = exact.multisets(out.size, G)
    w = np.exp(exact.multiset_log_weights(idx, np.log(out.probs)))
    A = estimators.get("rloo").advantages(out.rewards[idx], out.sq_norms[idx])
    terms = A[:, :, None] * out.scores[idx]  # (M, G, d): unit j of group c is A_j s_j
    p = snr.snr_pieces(terms)
    wrong_v = float(w @ p.noise_var_hat)  # E[V̂] pretending the G terms are i.i.d.
    true_v = exact.estimator_moments(problem, "rloo", G).trace_var
    assert abs(wrong_v - true_v) > 2 * engine_tol(problem, G)  # beyond any rounding of either route


def test_gram_route_equals_vector_route_and_explicit_formula():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(4, 6, 5))  # (seeds, B, d)
    p = snr.snr_pieces(u)
    pg = snr.snr_pieces_from_gram(u @ u.swapaxes(-1, -2))
    ubar = u.mean(axis=1)
    sigma = ((u - ubar[:, None]) ** 2).sum(axis=(1, 2)) / (6 - 1)
    # sums of B·d = 30 products (a Gram entry is a d-term dot product, B² of them are added),
    # each route's terms adding up to at most 4·Σ_b ||u_b||²
    tol = rounding_tol(30 + 36 + 8, 4 * float((u * u).sum(axis=(1, 2)).max()))
    for a, b in zip(p[:4], pg[:4]):
        np.testing.assert_allclose(a, b, rtol=0, atol=tol)
    np.testing.assert_allclose(p.trace_cov_hat, sigma, rtol=0, atol=tol)
    np.testing.assert_allclose(p.mean_sq_norm, (ubar**2).sum(-1), rtol=0, atol=tol)
    np.testing.assert_allclose(p.grad_sq_norm_hat, (ubar**2).sum(-1) - sigma / 6, rtol=0, atol=tol)


def test_numpy_equals_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    u = rng.normal(size=(3, 5, 4))
    p_np, p_t = snr.snr_pieces(u), snr.snr_pieces(torch.tensor(u))
    # the same formulas in two libraries: B·d = 20-term sums of terms adding up to ≤ 4 Σ_b ||u_b||²
    tol = rounding_tol(20 + 8, 4 * float((u * u).sum(axis=(1, 2)).max()))
    for a, b in zip(p_np[:4], p_t[:4]):
        assert isinstance(b, torch.Tensor)
        np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=tol)
    # a ratio of two such pieces: relative error ≤ the sum of theirs, over the denominator
    snr_tol = 2 * tol / float(np.min(p_np.noise_var_hat)) * (1 + float(np.max(snr.snr_hat(p_np))))
    np.testing.assert_allclose(snr.snr_hat(p_np), snr.snr_hat(p_t).numpy(), rtol=0, atol=snr_tol)
    rng = np.random.default_rng(2)
    ema_np, ema_t = snr.EMASNR(0.8), snr.EMASNR(0.8)
    for k in range(3):
        batch = rng.normal(size=(2, 5, 4)) + 0.5
        a = ema_np.update(snr.snr_pieces(batch))
        b = ema_t.update(snr.snr_pieces(torch.tensor(batch)))
        # k + 1 EMA steps over 20-term sums, as a ratio: relative 2γ per step, over the denominator
        ema_tol = rounding_tol((k + 1) * 40, 4 * float((batch * batch).sum(axis=(1, 2)).max()))
        np.testing.assert_allclose(a, b.numpy(), rtol=0,
                                   atol=ema_tol / float(np.min(ema_np.denominator)) * (1 + float(np.max(np.abs(a)))))
    s = np.array([0.0, 0.3, 2.0, np.inf])
    st = torch.tensor(s)
    few = rounding_tol(4)  # SNR/(L(1 + SNR)) and its clipped scaling: at most 4 correctly rounded ops
    np.testing.assert_allclose(snr.oracle_lr(s, 2.5), snr.oracle_lr(st, 2.5).numpy(), rtol=few)
    np.testing.assert_allclose(snr.snr_lr(s, 0.7, 0.1), snr.snr_lr(st, 0.7, 0.1).numpy(), rtol=few)
    np.testing.assert_allclose(snr.constant_lr(s, 0.3), snr.constant_lr(st, 0.3).numpy(), rtol=0)


def test_lr_rules_match_t5():
    s = np.array([0.0, 1e-3, 0.5, 1.0, 7.0, np.inf])
    L = 2.5
    few = rounding_tol(4)  # each side at most 4 correctly rounded operations
    np.testing.assert_allclose(snr.oracle_lr(s, L), theory.snr_step_size(s, L), rtol=few)
    frac = np.array([0.0, 1e-3 / (1 + 1e-3), 1 / 3, 0.5, 7 / 8, 1.0])
    np.testing.assert_allclose(snr.snr_lr(s, 0.8, 0.05), np.clip(0.8 * frac, 0.05, 0.8), rtol=few)
    np.testing.assert_allclose(snr.constant_lr(s, 0.3), np.full(6, 0.3), rtol=0)
    assert abs(snr.oracle_lr(np.inf, L) - 1 / L) <= few / L


def test_snr_hat_zero_noise_rules():
    assert snr.snr_hat(snr.snr_pieces(np.ones((3, 2)))) == np.inf
    assert snr.snr_hat(snr.snr_pieces(np.zeros((3, 2)))) == 0.0
    p = snr.snr_pieces(np.array([[1.0, 0.0], [-1.0, 0.0]]))  # mean zero: numerator < 0
    assert p.grad_sq_norm_hat < 0 and snr.snr_hat(p) == 0.0


def test_ema_bias_correction_and_beta_zero():
    rng = np.random.default_rng(3)
    batches = rng.normal(size=(6, 4, 3)) + 0.3
    pieces = [snr.snr_pieces(b) for b in batches]
    plain = snr.EMASNR(0.0)
    few = rounding_tol(8)  # β = 0: the EMA is the batch's pieces through ≤ 8 extra roundings
    for p in pieces:
        assert plain.update(p) == pytest.approx(snr.snr_hat(p), rel=few, abs=0)
    beta = 0.9
    ema = snr.EMASNR(beta)
    for t, p in enumerate(pieces, start=1):
        ema.update(p)
        wts = (1 - beta) * beta ** np.arange(t - 1, -1, -1)
        nums = np.array([q.grad_sq_norm_hat for q in pieces[:t]])
        dens = np.array([q.noise_var_hat for q in pieces[:t]])
        num, den = wts @ nums / (1 - beta**t), wts @ dens / (1 - beta**t)
        # a recursion of t steps against a t-term dot product: 2γ_{3t+4} of the weighted |terms|
        tol_num = rounding_tol(3 * t + 4, wts @ np.abs(nums) / (1 - beta**t))
        tol_den = rounding_tol(3 * t + 4, wts @ np.abs(dens) / (1 - beta**t))
        assert abs(ema.numerator - num) <= tol_num
        assert abs(ema.denominator - den) <= tol_den
        assert abs(ema.snr - max(num, 0) / den) <= (tol_num + abs(num) / den * tol_den) / den + rounding_tol(1, ema.snr)
    first = snr.EMASNR(0.99)  # bias correction: the first update reproduces the batch
    assert first.update(pieces[0]) == pytest.approx(snr.snr_hat(pieces[0]), rel=rounding_tol(8), abs=0)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="gram_bb"):
        snr.snr_pieces_from_gram(np.ones((2, 3)))
    with pytest.raises(ValueError, match="B >= 2"):
        snr.snr_pieces_from_gram(np.ones((1, 1)))
    with pytest.raises(ValueError, match="gram_bb"):
        snr.snr_pieces_from_gram(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="u_bd"):
        snr.snr_pieces(np.ones(3))
    with pytest.raises(ValueError, match="snr"):
        snr.oracle_lr(-1.0, 1.0)
    with pytest.raises(ValueError, match="L must"):
        snr.oracle_lr(1.0, 0.0)
    with pytest.raises(ValueError, match="eta_min"):
        snr.snr_lr(1.0, 0.1, 0.2)
    with pytest.raises(ValueError, match="beta"):
        snr.EMASNR(1.0)
    with pytest.raises(ValueError, match="update"):
        snr.EMASNR(0.5).snr


def test_pieces_from_norms_equal_pieces_from_gram():
    """The bridge's route (Σ_b ||u_b||² and ||ū||² only) gives the Gram route's T7 pieces."""
    u = np.random.default_rng(3).normal(size=(5, 7))
    K = u @ u.T
    a = snr.snr_pieces_from_gram(K)
    b = snr.snr_pieces_from_norms(np.trace(K), K.sum() / 25, 5)
    tol = rounding_tol(25 + 8, float(np.abs(K).sum()))  # B² = 25 Gram entries summed, either route
    for f in ("grad_sq_norm_hat", "noise_var_hat", "trace_cov_hat", "mean_sq_norm"):
        assert abs(getattr(a, f) - getattr(b, f)) <= tol
    with pytest.raises(ValueError, match="batch_size"):
        snr.snr_pieces_from_norms(1.0, 1.0, 1)
