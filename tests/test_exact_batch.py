"""Batch-coupled modes (batch-token-mean, grpo's batch std) and their exact engine, ``exact_batch``:
the advantages against the trainers' formulas written out, the engine against brute force over
ordered tuples of responses, against ``exact`` for per-group modes, and calibrated Monte Carlo."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oblr_theory import estimators, exact, exact_batch, stats
from oblr_theory.problems import SoftmaxBandit

from conftest import random_bandit, random_token_mdp
from tolerances import rounding_tol

BTM = estimators.get("rloo", aggregation="batch-token-mean")
BSTD = estimators.get("grpo", std_scope="batch")


# --- the advantages -----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_batch_token_mean_is_the_batch_token_ratio(B, G, seed):
    """ĝ = (1/(BG)) Σ A'_bj s_bj equals Σ A_bj s_bj / Σ ℓ_bk (TRL bnpo/dapo, verl token-mean), and
    permuting the groups of a batch permutes the advantages."""
    rng = np.random.default_rng(seed)
    r, ell = rng.uniform(-1, 2, (3, B, G)), rng.integers(1, 9, (3, B, G)).astype(float)
    s = rng.normal(size=(3, B, G, 2))
    A = estimators.get("rloo").advantages(r)
    got = np.einsum("nbj,nbjd->nd", BTM.advantages(r, lengths=ell, batch_axis=1), s) / (B * G)
    want = np.einsum("nbj,nbjd->nd", A, s) / ell.sum(axis=(1, 2))[:, None]
    scale = np.einsum("nbj,nbjd->nd", np.abs(A), np.abs(s)).max() * 4 * B * G
    assert np.max(np.abs(got - want)) <= rounding_tol(4 * B * G, scale)
    perm = rng.permutation(B)
    assert np.array_equal(BTM.advantages(r[:, perm], lengths=ell[:, perm], batch_axis=1),
                          BTM.advantages(r, lengths=ell, batch_axis=1)[:, perm])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_batch_std_is_trl_scale_rewards_batch(B, G, seed):
    """TRL 1.16 ``scale_rewards="batch"``: (r − group mean) / (Bessel std of the batch + eps)."""
    rng = np.random.default_rng(seed)
    r = rng.integers(0, 3, (B, G)).astype(float) / 2
    est = estimators.get("grpo", std_scope="batch", eps=1e-4)
    got = est.advantages(r, batch_axis=0)
    want = (r - r.mean(1, keepdims=True)) / (np.std(r, ddof=1) + 1e-4)
    if np.ptp(r) == 0:
        assert np.all(got == 0)
    assert np.max(np.abs(got - want)) <= rounding_tol(4 * B * G, 1e4 * (1 + np.abs(r).max()))
    if B == 1:  # one group: the batch std is the group std
        np.testing.assert_array_equal(got, estimators.get("grpo", eps=1e-4).advantages(r))


def test_batch_modes_on_torch_match_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    r, ell = rng.uniform(0, 1, (2, 3, 4)), rng.integers(1, 9, (2, 3, 4)).astype(float)
    for est, kw in ((BTM, {"lengths": ell}), (BSTD, {})):
        a = est.advantages(r, batch_axis=-2, **kw)
        t = est.advantages(torch.tensor(r), batch_axis=-2, **{k: torch.tensor(v) for k, v in kw.items()})
        assert np.max(np.abs(t.numpy() - a)) <= rounding_tol(16, 8 * max(1, np.abs(a).max()))


def test_batch_coupled_modes_refuse_without_batch_axis():
    r, ell = np.ones((2, 3)), np.ones((2, 3))
    for est, kw in ((BTM, {"lengths": ell}), (BSTD, {})):
        with pytest.raises(ValueError, match="batch_axis=.*exact_batch"):
            est.advantages(r, **kw)
        with pytest.raises(ValueError, match="group axis"):
            est.advantages(r, batch_axis=-1, **kw)
        with pytest.raises(ValueError, match="batch_axis must be an int"):
            est.advantages(r, batch_axis=2, **kw)
        with pytest.raises(ValueError, match="exact_batch.batch_moments"):
            exact.estimator_moments(SoftmaxBandit([0.0, 1.0], [0.0, 1.0]), est, 2)
    with pytest.raises(ValueError, match="grpo' only"):
        estimators.get("rloo", std_scope="batch")
    with pytest.raises(ValueError, match="lengths"):
        BTM.advantages(r, batch_axis=0)
    assert not estimators.get("rloo").batch_coupled and BTM.batch_coupled and BSTD.batch_coupled
    assert not BTM.unbiased


# --- the engine ---------------------------------------------------------------------------------


def brute_force(problem, est, G, B):
    """E ĝ and tr Var ĝ over every ordered tuple of B prompts and B·G ordered responses."""
    outs = exact.all_outcomes(problem)
    vals, ws = [], []
    for xs in itertools.product(range(problem.num_prompts), repeat=B):
        sizes = [outs[x].size for x in xs]
        for tup in itertools.product(*[range(n) for n in sizes for _ in range(G)]):
            t = np.array(tup).reshape(B, G)
            w = np.prod([problem.prompt_probs[x] * np.prod(outs[x].probs[t[b]]) for b, x in enumerate(xs)])
            r = np.array([outs[x].rewards[t[b]] for b, x in enumerate(xs)])
            S = np.array([outs[x].sq_norms[t[b]] for b, x in enumerate(xs)])
            ell = np.array([outs[x].lengths[t[b]] for b, x in enumerate(xs)])
            A = est.advantages(r, sq_norms=S, lengths=ell, batch_axis=0)
            g = sum(A[b, j] * outs[x].scores[t[b, j]] for b, x in enumerate(xs) for j in range(G)) / (B * G)
            vals.append(g)
            ws.append(w)
    w, v = np.array(ws), np.array(vals)
    mean = w @ v
    return mean, float(w @ np.einsum("nd,nd->n", v - mean, v - mean)), w, v


def _tol(w, v, n):
    return rounding_tol(n, 4 * float(w @ (np.abs(v).max(axis=1) + np.einsum("nd,nd->n", v, v))))


@pytest.mark.parametrize("est", [BTM, BSTD, estimators.get("grpo", aggregation="batch-token-mean", eps=0.0)],
                         ids=["rloo batch-token-mean", "grpo batch std", "grpo batch-token-mean"])
@pytest.mark.parametrize("make, G, B", [(lambda: random_bandit(3, X=2, K=2), 2, 2),
                                        (lambda: random_token_mdp(5, "tabular", V=2, H=2, X=1), 2, 2)])
def test_batch_moments_equal_brute_force(est, make, G, B):
    P = make()
    mean, var, w, v = brute_force(P, est, G, B)
    m = exact_batch.batch_moments(P, est, G, B)
    tol = _tol(w, v, len(w) + 4 * B * G + P.dim)
    assert np.max(np.abs(m.mean - mean)) <= tol
    assert abs(m.trace_var - var) <= tol
    np.testing.assert_allclose(m.grad, exact.gradient(P), rtol=0, atol=tol)


@pytest.mark.parametrize("name, agg", [("rloo", "seq-mean-token-sum"), ("grpo", "token-mean"),
                                       ("optimal_loo", "seq-mean-token-mean")])
def test_batch_moments_reproduce_the_group_engine_for_per_group_modes(name, agg):
    """For per-group modes the batch law is T2's: the same mean, V_batch = V_group-law / B."""
    P = random_token_mdp(7, "loglinear", V=2, H=2, X=2)
    est = estimators.get(name, aggregation=agg)
    for B in (1, 2):
        a, b = exact_batch.batch_moments(P, est, 2, B), exact.estimator_moments(P, est, 2, batch_size=B)
        tol = rounding_tol(a.num_batches + 64, 16 * (1 + a.trace_var + float(np.abs(a.mean).sum())))
        assert np.max(np.abs(a.mean - b.mean)) <= tol and abs(a.trace_var - b.trace_var) <= tol


def test_batch_coupling_changes_the_moments_at_B_2_not_at_B_1():
    """The coupled modes equal their per-group counterparts at B = 1 and differ at B = 2 (the
    engine sees the coupling): a control that the comparison above could fail."""
    P = random_token_mdp(7, "loglinear", V=2, H=2, X=2)
    pairs = [(BTM, estimators.get("rloo", aggregation="token-mean")), (BSTD, estimators.get("grpo"))]
    for coupled, per_group in pairs:
        one = exact_batch.batch_moments(P, coupled, 2, 1)
        ref1 = exact.estimator_moments(P, per_group, 2)
        tol = rounding_tol(one.num_batches + 64, 16 * (1 + one.trace_var + float(np.abs(one.mean).sum())))
        assert np.max(np.abs(one.mean - ref1.mean)) <= tol
        two = exact_batch.batch_moments(P, coupled, 2, 2)
        ref2 = exact.estimator_moments(P, per_group, 2, batch_size=2)
        assert np.max(np.abs(two.mean - ref2.mean)) > 1e-3 * np.abs(ref2.mean).max()


def test_batch_moments_refuse_above_the_limit_naming_monte_carlo():
    P = random_token_mdp(7, "loglinear", V=3, H=3, X=2)
    with pytest.raises(ValueError, match="Monte Carlo.*sample_batch_gradients"):
        exact_batch.batch_moments(P, BTM, 4, 3)


def test_monte_carlo_agrees_with_the_exact_batch_law_and_catches_the_per_group_law():
    """Calibrated: mean_test at α = 1e-3 (Bonferroni over d) accepts the exact batch mean and, as
    a negative control, rejects the per-group engine's mean of the uncoupled mode, whose distance
    exceeds the test's minimum detectable shift (asserted)."""
    P = SoftmaxBandit([[0.5, 0.0, -0.5], [1.0, -1.0, 0.0]], [[0.0, 1.0, 0.3], [1.0, 0.0, 0.2]])
    G, B = 2, 3
    exact_m = exact_batch.batch_moments(P, BSTD, G, B)
    wrong = exact.estimator_moments(P, "grpo", G, batch_size=B).mean
    x = exact_batch.sample_batch_gradients(P, BSTD, G, B, 40_000, np.random.default_rng(1))
    mom = stats.SampleMoments.of(x)
    ok = stats.mean_test(mom, exact_m.mean, alpha=1e-3)
    bad = stats.mean_test(mom, wrong, alpha=1e-3)
    assert ok.passed
    assert ok.power_ratio(wrong - exact_m.mean) >= 1.0  # detectable with probability >= power
    assert not bad.passed


@pytest.mark.slow  # importing trl takes about 10 s
@pytest.mark.torch
def test_batch_modes_match_trl_code():
    """TRL 1.16: ``scale_rewards="batch"`` divides by its own ``nanstd`` of the whole batch plus 1e-4,
    and ``loss_type="bnpo"`` sums the per-token loss over the batch's tokens divided by their count;
    the gradient of that loss at ratio 1 (``per_token_loss = −A``) is ``−Σ A_bj s_bj / Σ ℓ``."""
    torch = pytest.importorskip("torch")
    trl_utils = pytest.importorskip("trl.trainer.utils")
    rng = np.random.default_rng(5)
    B, G, T, d = 3, 4, 6, 2
    r = rng.integers(0, 3, (B, G)).astype(float) / 2
    rt = torch.tensor(r).reshape(-1)
    trl_adv = (rt - rt.view(-1, G).mean(1).repeat_interleave(G)) / (trl_utils.nanstd(rt) + 1e-4)
    ours = estimators.get("grpo", std_scope="batch", eps=1e-4).advantages(r, batch_axis=0)
    # TRL's nanstd forms its Bessel factor count/(count−1) from int64 counts, which torch divides in
    # float32 (the default dtype): relative error ≤ 2⁻²⁴ in the variance, ≤ 2⁻²⁴ in A after the sqrt
    f32 = 2.0 ** -24 * float(np.max(np.abs(ours)))
    assert np.max(np.abs(trl_adv.numpy().reshape(B, G) - ours)) <= f32 + rounding_tol(4 * B * G, 1e4 * 2)
    # bnpo / dapo: per-token scores t_bjt, s_bj = Σ_t t_bjt; the batch-token-mean advantage gives the same ĝ
    ell = rng.integers(1, T + 1, (B, G))
    mask = (np.arange(T)[None, None, :] < ell[..., None]).astype(float)  # (B, G, T)
    tok = rng.normal(size=(B, G, T, d)) * mask[..., None]
    A = estimators.get("rloo").advantages(r)
    trl_grad = np.einsum("bgt,bgtd->d", A[..., None] * mask, tok) / mask.sum()  # −∇ of bnpo's loss
    A_btm = estimators.get("rloo", aggregation="batch-token-mean").advantages(r, lengths=ell.astype(float),
                                                                               batch_axis=0)
    ours_grad = np.einsum("bg,bgd->d", A_btm, tok.sum(2)) / (B * G)
    assert np.max(np.abs(trl_grad - ours_grad)) <= rounding_tol(4 * B * G * T, 8 * np.abs(tok).sum())


def test_the_per_group_sampler_refuses_batch_coupled_modes():
    from oblr_theory import montecarlo

    P = SoftmaxBandit([0.0, 1.0], [0.0, 1.0])
    for est in (BTM, BSTD, estimators.get("gpg")):
        with pytest.raises(ValueError, match="sample_batch_gradients"):
            montecarlo.sample_gradients(P, est, 2, 2, 3, np.random.default_rng(0))
