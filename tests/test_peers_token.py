"""The token-level OTB (oblr_theory.peers_token): the vectorised advantages against the naive loop of
verify/reference.py, its reductions to the sequence-level ``otb`` and ``optimal_loo``, the per-token
outcomes of a token MDP, and its exact moments (multiset engine against ordered tuples, the
leave-one-out form unbiased, verl's inclusive form biased, planted baselines that must be caught)."""

import itertools

import numpy as np
import pytest

from oblr_theory import estimators, exact, families
from oblr_theory import peers_token as pt
from oblr_theory.problems import TokenMDP
from oblr_theory.verify import reference as ref

from tolerances import logp_tol, rounding_tol

SEEDS = range(6)


def random_groups(seed, B=4, G=3, T=5, zero_w=0.0, equal=False):
    """``B`` groups: rewards (B, G) in {0, 1/2, 1} or uniform, proxies (B, G, T) in (0, 2) (a fraction
    ``zero_w`` set to 0), prefix masks with lengths in 1..T (a unique longest response in group 0)."""
    rng = np.random.default_rng(seed)
    r = rng.choice([0.0, 0.5, 1.0], size=(B, G)) if seed % 2 else rng.uniform(-1, 2, size=(B, G))
    w = rng.uniform(0.0, 2.0, size=(B, G, T)) * (rng.uniform(size=(B, G, T)) >= zero_w)
    ell = np.full((B, G), T) if equal else rng.integers(1, T + 1, size=(B, G))
    if not equal and G > 1:
        ell[0] = np.minimum(ell[0], T - 1)
        ell[0, 0] = T
    mask = (np.arange(T) < ell[..., None]).astype(float)
    return r, w, mask, ell


def advantage_tol(r, G, T):
    """Two float64 routes to ``r_j − B_t``: ``W`` is a ≤T-term sum, the numerator and denominator
    G-term sums, then one division and one subtraction: ``n = 2T + 2G + 8`` operations, and since
    ``den ≥ Σ W``, ``|B| ≤ max|r|`` and each rounding is relative to ``Σ|r|W/den + |B| ≤ 2 max|r|``."""
    return rounding_tol(2 * T + 2 * G + 8, 2.0 * max(1.0, float(np.max(np.abs(r)))))


def reference_advantages(r, w, mask, ell, **kw):
    out = np.zeros_like(mask)
    for b in range(r.shape[0]):
        A = ref.otb_token_group(list(r[b]), list(w[b]), list(ell[b]), **kw)
        for j, row in enumerate(A):
            out[b, j, :len(row)] = row
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("G", [1, 2, 3, 5])
@pytest.mark.parametrize("eps,zero_w", [(1e-8, 0.0), (0.0, 0.5), (0.3, 0.2)])
@pytest.mark.parametrize("zero_tail,loo", [(True, False), (False, False), (True, True)])
def test_advantages_equal_the_naive_loop(seed, G, eps, zero_w, zero_tail, loo):
    r, w, mask, ell = random_groups(seed, G=G, zero_w=zero_w)
    got = pt.otb_token_advantages(r, w, mask, eps=eps, zero_tail=zero_tail, leave_one_out=loo)
    want = reference_advantages(r, w, mask, ell, eps=eps, zero_tail=zero_tail, leave_one_out=loo)
    assert np.max(np.abs(got - want)) <= advantage_tol(r, G, mask.shape[-1])
    assert np.all(got[mask == 0] == 0)


def test_naive_loop_detects_a_dropped_zero_tail():
    """Negative control: the zero-tail rule changes the unique longest response's tail (group 0)."""
    r, w, mask, ell = random_groups(0, G=3)
    r[0] = [1.0, 0.0, 0.5]
    got = pt.otb_token_advantages(r, w, mask, zero_tail=False)
    want = reference_advantages(r, w, mask, ell, eps=1e-8, zero_tail=True)
    assert np.max(np.abs(got - want)) > 1e6 * advantage_tol(r, 3, mask.shape[-1])


def test_group_of_one_gets_no_baseline():
    r, w, mask, _ = random_groups(1, G=1)
    for loo in (False, True):
        assert np.array_equal(pt.otb_token_advantages(r, w, mask, leave_one_out=loo), r[..., None] * mask)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("G", [2, 4])
def test_leave_one_out_needs_no_zero_tail(seed, G):
    """The leave-one-out baseline is already 0 where no other response has tokens (verl's zero tail)."""
    r, w, mask, _ = random_groups(seed, G=G)
    a = pt.otb_token_advantages(r, w, mask, leave_one_out=True, zero_tail=True)
    assert np.array_equal(a, pt.otb_token_advantages(r, w, mask, leave_one_out=True, zero_tail=False))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_reduces_to_the_sequence_level_otb(seed, eps):
    """Equal lengths and ``W`` constant over tokens (all of ``w`` at the first token): every token of
    response j has the sequence-level ``otb`` advantage with ``S = W`` (and ``optimal_loo`` for the
    leave-one-out form, ``eps = 0``); with any ``w``, the last token has ``otb`` with ``S = Σ_t w``."""
    G, T = 4, 5
    r, w, mask, _ = random_groups(seed, G=G, T=T, equal=True)
    S = w.sum(-1)
    flat = np.zeros_like(w)
    flat[..., 0] = S
    tol = advantage_tol(r, G, T)
    seq = estimators.get("otb", eps=eps).advantages(r, sq_norms=S)
    got = pt.otb_token_advantages(r, flat, mask, eps=eps)
    assert np.max(np.abs(got - seq[..., None])) <= tol
    assert np.max(np.abs(pt.otb_token_advantages(r, w, mask, eps=eps)[..., -1] - seq)) <= tol
    if eps == 0:
        loo = estimators.get("optimal_loo").advantages(r, S)
        assert np.max(np.abs(pt.otb_token_advantages(r, flat, mask, eps=0.0, leave_one_out=True) - loo[..., None])) <= tol
    # negative control: with a proxy spread over the tokens the advantage changes along the response
    assert np.max(np.abs(np.diff(pt.otb_token_advantages(r, w, mask, eps=eps), axis=-1))) > 1e6 * tol


@pytest.mark.parametrize("bad,match", [
    (dict(rewards=np.zeros((2, 3, 1))), "token_weights must have shape"),
    (dict(mask=np.ones((2, 3, 5))), "mask must have the shape"),
    (dict(mask=np.array([[[1, 0, 1, 0]] * 3] * 2)), "prefix mask"),
    (dict(mask=np.full((2, 3, 4), 0.5)), "only 0 and 1"),
    (dict(token_weights=-np.ones((2, 3, 4))), "token_weights must be >= 0"),
    (dict(rewards=np.array([[np.nan, 0, 0], [0, 0, 0]])), "finite"),
    (dict(eps=-1.0), "eps must be >= 0"),
])
def test_bad_input_is_refused(bad, match):
    args = dict(rewards=np.zeros((2, 3)), token_weights=np.ones((2, 3, 4)), mask=np.ones((2, 3, 4)))
    bad = dict(bad)
    eps = bad.pop("eps", 1e-8)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        pt.otb_token_advantages(**args, eps=eps)


# ---------------------------------------------------------------------------------------------
# Per-token outcomes of a token MDP
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [families.length_mdp, families.sparse_mdp,
                                  lambda: TokenMDP(3, 3, "sum_mod", parametrization="tabular", seed=4,
                                                   reward_kwargs={"modulus": 2})])
def test_token_outcomes_sum_to_the_sequence_scores(make):
    """Σ_t s_t is ``TokenMDP.outcomes``' score; the proxy ``1 − 2π(y_t) + Σ_v π_t(v)²`` with ``π_t`` read
    off the enumerated response probabilities (prefix masses ``P(y_<t, v) / P(y_<t)``), an independent route."""
    P = make()
    for x in range(P.num_prompts):
        o, seq, toks = pt.token_outcomes(P, x), P.outcomes(x), P.sequences(x)
        n, H = toks.shape
        assert np.array_equal(o.probs, seq.probs) and np.array_equal(o.rewards, seq.rewards)
        assert np.array_equal(o.mask, (toks >= 0).astype(float))
        assert np.max(np.abs(o.token_scores.sum(1) - seq.scores)) <= rounding_tol(4 * H * P.vocab_size, 2 * H)
        for i, t in itertools.product(range(n), range(H)):
            if toks[i, t] < 0:
                assert o.token_proxy[i, t] == 0 and not o.token_scores[i, t].any()
                continue
            prefix = np.all(toks[:, :t] == toks[i, :t], axis=1)
            pi = np.array([seq.probs[prefix & (toks[:, t] == v)].sum() for v in range(P.vocab_size)])
            pi /= seq.probs[prefix].sum()
            want = 1 - 2 * pi[toks[i, t]] + pi @ pi
            # each π_t(v) is a ratio of n-term sums of probabilities exp(log π(y)), each with the relative
            # error of a log-probability (logp_tol) and γ_{2n+2} from the sums; |∂w/∂π| sums to ≤ 4
            tol = rounding_tol(2 * n + 2 * P.vocab_size + 8, 4.0) + 16 * logp_tol(P)
            assert abs(o.token_proxy[i, t] - want) <= tol


# ---------------------------------------------------------------------------------------------
# Exact moments
# ---------------------------------------------------------------------------------------------


def moments_tol(problem, G, count, d):
    """The float64 difference of two enumerations of ``E ĝ`` (and ``V``): ``count`` weighted terms,
    each ``ĝ`` entry at most ``2 max|r| · H`` (``|A| ≤ 2 max|r|``, a score entry ``≤ 1`` per token, H
    tokens; the weights sum to 1); ``V``'s terms ``||ĝ − m||² ≤ d (4 max|r| H)²``. Returns
    ``(tol_mean, tol_var)``."""
    H = problem.horizon
    R = max(1.0, max(float(np.abs(pt.token_outcomes(problem, x).rewards).max()) for x in range(problem.num_prompts)))
    n = count + G * H + d + 16
    return rounding_tol(n, 2 * R * H), rounding_tol(n, d * (4 * R * H) ** 2)


@pytest.mark.parametrize("G", [2, 3])
@pytest.mark.parametrize("loo,zero_tail", [(False, True), (False, False), (True, True)])
def test_exact_moments_equal_the_ordered_tuple_loop(G, loo, zero_tail):
    P = families.length_mdp()
    outs = [pt.token_outcomes(P, x) for x in range(P.num_prompts)]
    law = [(o.probs, o.rewards, o.mask.sum(1).astype(int), o.token_proxy, o.token_scores) for o in outs]
    w, v = ref.ordered_token_law(law, P.prompt_probs, G, eps=1e-8, zero_tail=zero_tail, leave_one_out=loo)
    mean, var = ref.law_moments(w, v)
    m = pt.otb_token_moments(P, G, zero_tail=zero_tail, leave_one_out=loo)
    tol_mean, tol_var = moments_tol(P, G, len(w), P.dim)
    assert np.max(np.abs(m.mean - mean)) <= tol_mean
    assert abs(m.trace_var - var) <= tol_var


@pytest.mark.parametrize("name,G", [("reinforce", 1), ("reinforce", 3), ("rloo", 2), ("rloo", 3), ("dr_grpo", 3)])
def test_token_engine_equals_the_multiset_engine_on_sequence_advantages(name, G):
    """A per-response advantage broadcast to the tokens gives ``Σ_t A_j s_{j,t} = A_j s_j``: the token
    engine must reproduce ``exact.estimator_moments`` (the Gram route) in mean and ``V``."""
    P = families.length_mdp()
    est = estimators.get(name)
    m = pt.token_estimator_moments(P, lambda r, w, mask: est.advantages(r)[..., None] * mask, G)
    want = exact.estimator_moments(P, name, G)
    count = sum(exact.num_multisets(15, G) for _ in range(P.num_prompts))
    tol_mean, tol_var = moments_tol(P, G, count, P.dim)
    assert np.max(np.abs(m.mean - want.mean)) <= tol_mean and np.max(np.abs(m.grad - want.grad)) == 0
    assert abs(m.trace_var - want.trace_var) <= tol_var


def _loo_with(extra):
    """The leave-one-out OTB advantage minus ``extra(W (.., G, H), mask)`` (a planted baseline term)."""
    def fn(r, w, mask):
        W = np.cumsum(w * mask, axis=-1)
        return pt.otb_token_advantages(r, w, mask, leave_one_out=True) - extra(W, w, mask) * mask
    return fn


@pytest.mark.parametrize("make,G", [(families.length_mdp, 2), (families.length_mdp, 3), (families.sparse_mdp, 2)])
def test_exact_bias_loo_zero_inclusive_not(make, G):
    """T1 on the token level: the leave-one-out OTB is exactly unbiased, verl's inclusive OTB is not;
    a baseline term that reads the response's own current token (``w_{j,t}``) is caught as biased, one
    that reads only its prefix (``W_{j,t−1}``) is not (both ways the check can go)."""
    P = make()
    count = sum(exact.num_multisets(int(np.count_nonzero(o.probs > 0)), G) for o in exact.all_outcomes(P))
    tol, _ = moments_tol(P, G, count, P.dim)
    loo = pt.otb_token_moments(P, G, leave_one_out=True)
    assert np.max(np.abs(loo.bias)) <= tol
    incl = pt.otb_token_moments(P, G)
    assert np.max(np.abs(incl.bias)) > 1e6 * tol
    leak = pt.token_estimator_moments(P, _loo_with(lambda W, w, m: 0.3 * w), G)
    assert np.max(np.abs(leak.bias)) > 1e6 * tol
    prefix = pt.token_estimator_moments(P, _loo_with(lambda W, w, m: 0.3 * (W - w)), G)
    assert np.max(np.abs(prefix.bias)) <= tol


def test_moments_refuse_a_bad_group_size_and_a_non_token_mdp():
    with pytest.raises(ValueError, match="group_size must be an integer >= 1"):
        pt.otb_token_moments(families.length_mdp(), 0)
    with pytest.raises(ValueError, match="problem must be a TokenMDP"):
        pt.token_outcomes(families.hard_arm_bandit(), 0)
