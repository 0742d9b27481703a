"""The peers' estimators (oblr_theory.peers): hand values from verl's definitions, properties,
numpy = torch, the batch-coupled refusals and their exact biases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oblr_theory import estimators, exact, exact_batch
from oblr_theory.problems import SoftmaxBandit
from oblr_theory.verify import reference as ref

from conftest import random_bandit, random_token_mdp
from tolerances import rounding_tol

R = np.array([[1.0, 0.0, 0.5, 1.0], [0.2, 0.9, 0.1, 0.3]])  # (B=2, G=4)
L = np.array([[2.0, 3.0, 1.0, 4.0], [1.0, 1.0, 2.0, 2.0]])
S = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])


def close(got, want, n=32):
    assert np.max(np.abs(np.asarray(got) - want)) <= rounding_tol(n, 8 * max(1.0, np.max(np.abs(want))))


def test_registry_lists_the_peers_apart():
    peers = estimators.peer_names()
    assert set(peers) == {"reinforce_pp", "reinforce_pp_baseline", "gpg", "remax", "grpo_passk", "otb"}
    assert not set(peers) & set(estimators.names())
    assert set(peers) <= ref.NAMES
    assert [n for n in peers if estimators.spec(n).unbiased] == ["remax"]


def test_hand_values():
    # gpg: 7 of 8 rewards non-zero -> α = 8/7; A = α (r − r̄_b)
    close(estimators.get("gpg").advantages(R, batch_axis=0), 8 / 7 * (R - R.mean(1, keepdims=True)))
    # remax: r − r(greedy)
    close(estimators.get("remax", greedy_reward=0.5).advantages(R), R - 0.5)
    # grpo_passk: the best response gets (r_max − r_2nd)/(std + eps); a tied top gets 0
    A = estimators.get("grpo_passk", eps=0.0).advantages(R)
    close(A[0], np.zeros(4))
    close(A[1], [0.0, 0.6 / np.std(R[1], ddof=1), 0.0, 0.0])
    close(estimators.get("grpo_passk", norm=0).advantages(R)[1], [0.0, 0.6, 0.0, 0.0])
    # otb: r − Σ W r / (Σ W + eps)
    close(estimators.get("otb", eps=0.0).advantages(R, sq_norms=S),
          R - (S * R).sum(1, keepdims=True) / S.sum(1, keepdims=True))
    # reinforce_pp: whitening over the batch's 16 tokens (token-weighted, Bessel over tokens)
    mu = (L * R).sum() / L.sum()
    var = (L * (R - mu) ** 2).sum() / (L.sum() - 1)
    close(estimators.get("reinforce_pp").advantages(R, lengths=L, batch_axis=0), (R - mu) / np.sqrt(var + 1e-8))
    C = R - R.mean(1, keepdims=True)
    mu = (L * C).sum() / L.sum()
    var = (L * (C - mu) ** 2).sum() / (L.sum() - 1)
    close(estimators.get("reinforce_pp_baseline").advantages(R, lengths=L, batch_axis=0),
          (C - mu) / np.sqrt(var + 1e-8))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_grpo_passk_credits_only_a_unique_best(G, seed):
    r = np.random.default_rng(seed).integers(0, 4, (5, G)).astype(float)
    A = estimators.get("grpo_passk", norm=0).advantages(r)
    for row, a in zip(r, A):
        top = np.sort(row)[::-1]
        if top[0] == top[1]:
            assert np.all(a == 0)
        else:
            assert np.count_nonzero(a) == 1 and a[np.argmax(row)] == top[0] - top[1]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_token_whitening_has_token_mean_0_and_unit_variance(B, G, seed):
    rng = np.random.default_rng(seed)
    r, ell = rng.uniform(0, 1, (B, G)), rng.integers(1, 6, (B, G)).astype(float)
    A = estimators.get("reinforce_pp", eps=0.0).advantages(r, lengths=ell, batch_axis=0)
    N = ell.sum()
    assert abs((ell * A).sum() / N) <= rounding_tol(int(4 * N), 8 * np.abs(A).max())
    assert abs((ell * A * A).sum() / (N - 1) - 1) <= rounding_tol(int(8 * N), 8 * max(1.0, np.max(A * A)))


def test_otb_is_optimal_and_gpg_is_dr_grpo_where_they_should_be():
    """eps = 0 and S > 0: otb is the registry's inclusive 'optimal'; no zero reward: α = 1 and gpg is
    dr_grpo (a control that their definitions differ only where stated)."""
    rng = np.random.default_rng(3)
    r, S_ = rng.uniform(0.1, 1, (4, 5)), rng.uniform(0.5, 2, (4, 5))
    close(estimators.get("otb", eps=0.0).advantages(r, sq_norms=S_), estimators.get("optimal").advantages(r, S_))
    close(estimators.get("gpg").advantages(r, batch_axis=0), estimators.get("dr_grpo").advantages(r))
    r[0, 0] = 0.0
    assert np.max(np.abs(estimators.get("gpg").advantages(r, batch_axis=0)
                         - estimators.get("dr_grpo").advantages(r))) > 0.01


def test_numpy_equals_torch():
    torch = pytest.importorskip("torch")
    t = {k: torch.tensor(v) for k, v in (("r", R), ("S", S), ("L", L))}
    for name in estimators.peer_names():
        est = estimators.get(name, **({"greedy_reward": 0.5} if name == "remax" else {}))
        kw = {"batch_axis": 0} if est.batch_coupled else {}
        a = est.advantages(R, S, L, **kw)
        b = est.advantages(t["r"], t["S"], t["L"], **kw).numpy()
        close(b, a)


def test_batch_coupled_peers_refuse_the_group_engine_and_run_in_exact_batch():
    P = random_bandit(4, K=3)
    for name in ("reinforce_pp", "reinforce_pp_baseline", "gpg"):
        est = estimators.get(name)
        with pytest.raises(ValueError, match="batch_axis="):
            est.advantages(R, lengths=L)
        with pytest.raises(ValueError, match="exact_batch"):
            exact.estimator_moments(P, est, 2)
        m = exact_batch.batch_moments(P, est, 2, 2)
        assert np.all(np.isfinite(m.mean)) and m.trace_var > 0
    with pytest.raises(ValueError, match="needs parameter"):
        estimators.get("remax")


def test_remax_is_unbiased_and_passk_is_not():
    P = random_token_mdp(9, "tabular", V=2, H=2, X=1)
    m = exact.estimator_moments(P, "remax", 3, greedy_reward=0.7)
    grad = exact.gradient(P)
    tol = rounding_tol(64 * exact.num_multisets(8, 3), 8 * (1 + np.abs(grad).sum()))
    assert np.max(np.abs(m.mean - grad)) <= tol
    bias = exact.estimator_moments(P, "grpo_passk", 3).bias
    assert np.max(np.abs(bias)) > 1e3 * tol
    assert not estimators.get("grpo_passk").unbiased and estimators.get("remax", greedy_reward=0).unbiased


def test_batch_coupled_peers_are_biased_by_their_coupling():
    """gpg's exact batch mean differs from its per-group counterpart's (dr_grpo) on a problem with
    zero rewards: α is random."""
    P = SoftmaxBandit([0.5, 0.0, -0.5], [0.0, 1.0, 0.3])
    gpg = exact_batch.batch_moments(P, estimators.get("gpg"), 2, 2)
    dr = exact.estimator_moments(P, "dr_grpo", 2, batch_size=2)
    assert np.max(np.abs(gpg.mean - dr.mean)) > 1e-3
