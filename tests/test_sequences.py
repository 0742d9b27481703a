"""The token-MDP sequence sampler (``sequences.py``): exact replay of enumerated sequences, the
sampling law (chi-square, with a control), and the vectorised sampler against a per-sequence
reference (its fast paths included)."""

import numpy as np
import pytest
from scipy import stats as sps

from oblr_theory import montecarlo as mc, sequences as sq
from oblr_theory.problems import TokenMDP

from conftest import short_answer_mdp as _mdp

from tolerances import gamma, logp_tol, rounding_tol, score_tol, sq_norm_tol

ALPHA = 1e-6  # false-failure rate of the statistical test below


@pytest.mark.parametrize("par", ["tabular", "loglinear"])
def test_replay_reproduces_enumerated_outcomes(par):
    P = _mdp(par)
    for x in range(P.num_prompts):
        out = P.outcomes(x)
        seq = sq.score_sequences(P, np.full(out.size, x), P.sequences(x))
        # two routes (replay, enumeration) to the same sums: twice each route's rounding bound
        np.testing.assert_allclose(seq.scores, out.scores, rtol=0, atol=2 * score_tol(P))
        np.testing.assert_allclose(seq.log_probs, out.log_probs, rtol=0, atol=2 * logp_tol(P))
        np.testing.assert_array_equal(seq.rewards, out.rewards)
        np.testing.assert_array_equal(seq.lengths, out.lengths)
        s_tol = 2 * sq_norm_tol(P, float(out.sq_norms.max()))
        np.testing.assert_allclose(seq.sq_norms, out.sq_norms, rtol=0, atol=s_tol)
        if par == "tabular":  # T8: no shared parameters, so S = Σ_t ||s_t||² per sample
            np.testing.assert_allclose(seq.sq_norms, seq.diag_sq_norms, rtol=0, atol=s_tol)


def test_logits_match_step_logits():
    P = TokenMDP(5, 4, "contains", num_prompts=3, parametrization="loglinear", seed=2, reward_kwargs={"token": 1})
    rng = np.random.default_rng(0)
    n = 50
    rows = P.param_rows(rng.integers(0, 3, n), 2, rng.integers(0, 5, n), np.zeros(n, dtype=np.int64))
    k = rows.shape[1]  # each logit is a sum of k parameters
    np.testing.assert_allclose(sq._logits(P, P.theta.reshape(-1, 5), rows), P.step_logits(rows), rtol=0,
                               atol=rounding_tol(k, k * float(np.abs(P.theta).max())))


def test_sequence_frequencies_match_probabilities():
    """Chi-square goodness of fit of sampled sequences against the enumerated π(y|x)."""
    P = _mdp("loglinear", X=1)
    out, seqs = P.outcomes(0), P.sequences(0)
    sample = sq.sample_sequences(P, np.zeros(40_000, dtype=np.int64), np.random.default_rng(5))
    code = {tuple(s): i for i, s in enumerate(seqs)}
    counts = np.bincount([code[tuple(t)] for t in sample.tokens], minlength=len(seqs))
    p = sps.chisquare(counts, out.probs * counts.sum()).pvalue
    assert p > ALPHA
    # and the test has teeth: the same counts against a perturbed distribution are rejected
    q = out.probs * np.exp(0.3 * (np.arange(len(seqs)) % 2))
    assert sps.chisquare(counts, q / q.sum() * counts.sum()).pvalue < ALPHA


# ---------------------------------------------------------------------------------------------
# The vectorised token-MDP sampler against a per-sequence reference (its fast paths included)
# ---------------------------------------------------------------------------------------------


def _reference_scores(P, prompt, tokens_h):
    """One sequence, step by step through ``param_rows`` / ``step_logits``: (score, log π(y))."""
    V, score, logp, prev, code = P.vocab_size, np.zeros(P.dim), 0.0, 0, 0
    for t, y in enumerate(int(v) for v in tokens_h if v >= 0):
        rows = P.param_rows(np.array([prompt]), t, np.array([prev]), np.array([code]))
        lp = P.step_logits(rows)[0]
        lp = lp - lp.max() - np.log(np.exp(lp - lp.max()).sum())
        gain = np.eye(V)[y] - np.exp(lp)
        for r in rows[0]:
            score[r:r + V] += gain
        logp += lp[y]
        prev, code = y, code * (V - 1) + y - 1
    return score, logp


class _LateTables(TokenMDP):
    """Log-linear tables whose rows move late: the position row stays 0 until step 2 and then
    repeats (a shared row written more than once); the previous-token row stays 0 until step 2
    (a table that leaves its step-0 row late)."""

    def param_rows(self, prompts_n, t, prev_n, code_n):
        rows = super().param_rows(prompts_n, t, prev_n, code_n)
        V = self.vocab_size
        pos, prev = self.tables[1], self.tables[2]
        rows[:, 1] = pos.offset + min(max(t - 1, 0), 2) * V
        if t < 2:
            rows[:, 2] = prev.offset
        return rows


@pytest.mark.parametrize("make", [
    lambda: TokenMDP(16, 12, "contains", num_prompts=2, parametrization="loglinear", seed=0, init_scale=0.3,
                     reward_kwargs={"token": 3}),
    lambda: _LateTables(5, 6, "contains", num_prompts=3, parametrization="loglinear", seed=1,
                        reward_kwargs={"token": 1}),
    lambda: TokenMDP(4, 4, "contains", num_prompts=2, parametrization="tabular", seed=2, reward_kwargs={"token": 1}),
])
def test_sampler_matches_per_sequence_reference(make):
    """Scores and log-probabilities of sampled sequences equal a per-sequence recomputation."""
    P = make()
    s = sq.sample_sequences(P, mc.draw_prompts(P, 3000, np.random.default_rng(0)), np.random.default_rng(1))
    for i in range(0, 3000, 97):
        score, logp = _reference_scores(P, int(s.prompts[i]), s.tokens[i])
        np.testing.assert_allclose(s.scores[i], score, rtol=0, atol=2 * score_tol(P))
        assert abs(s.log_probs[i] - logp) <= 2 * logp_tol(P)
    # the same scores, squared and summed in another order: 2γ_d S
    np.testing.assert_allclose(s.sq_norms, np.einsum("nd,nd->n", s.scores, s.scores), rtol=2 * gamma(P.dim), atol=0)


def test_policy_columns_do_not_change_the_sample(monkeypatch):
    """Per-combination policies (prompt × previous token) give the same draws and values as one
    policy per sequence."""
    P = TokenMDP(6, 8, "contains", num_prompts=2, parametrization="loglinear", seed=3, reward_kwargs={"token": 2})
    prompts = mc.draw_prompts(P, 2000, np.random.default_rng(0))
    fast = sq.sample_sequences(P, prompts, np.random.default_rng(4))
    columns = sq._columns
    used = []

    def per_sequence(problem, rows, m):
        used.append(columns(problem, rows, m)[2] is not None)
        return rows, m, None

    monkeypatch.setattr(sq, "_columns", per_sequence)
    slow = sq.sample_sequences(P, prompts, np.random.default_rng(4))
    assert any(used)  # the fast run did use per-combination columns
    np.testing.assert_array_equal(fast.tokens, slow.tokens)
    tols = {"scores": 2 * score_tol(P), "log_probs": 2 * logp_tol(P),
            "sq_norms": 2 * sq_norm_tol(P, float(fast.sq_norms.max())),
            # Σ_t ||e_y − π_t||² (terms ≤ 2) and its expectation Σ_t (1 − ||π_t||²): H steps of
            # V-term sums of softmax entries
            "logit_proxy": 2 * P.horizon * (2 * score_tol(P) + gamma(P.vocab_size) * 2),
            "logit_proxy_mean": 2 * P.horizon * (2 * score_tol(P) + gamma(P.vocab_size) * 2)}
    for f, tol in tols.items():
        np.testing.assert_allclose(getattr(fast, f), getattr(slow, f), rtol=0, atol=tol)


def test_draw_tokens_counts_thresholds_below_u():
    """Binary search equals the definition ``y = #{v < V−1 : F(v) ≤ u}`` (the rule of
    ``montecarlo.categorical``), ties and F ≥ 1 included."""
    rng = np.random.default_rng(0)
    for V in (2, 3, 5, 16, 17):
        pi = rng.dirichlet(np.ones(V) * 0.3, size=7).T  # (V, C)
        cdf = np.cumsum(pi[:-1], axis=0)
        cdf[-1, 0] = 1.0 + 1e-16 if V > 2 else cdf[-1, 0]
        key = rng.integers(0, 7, 4000)
        u = rng.random(4000)
        u[:50] = cdf[rng.integers(0, V - 1, 50), key[:50]]  # exact ties: u == F(v) is counted
        want = (u >= cdf[:, key]).sum(axis=0)
        np.testing.assert_array_equal(sq._draw_tokens(cdf, key, u), want)


def test_row_writes_match_fancy_indexing():
    rng = np.random.default_rng(0)
    buf = rng.random((50, 4))
    rows = rng.choice(50, 20, replace=False)
    gain = rng.random((20, 4))
    want = buf.copy()
    want[rows] += gain
    sq._add_rows(buf, rows, gain)
    np.testing.assert_array_equal(buf, want)
    want[rows[:5]] = gain[:5]
    sq._put_rows(buf, rows[:5], gain[:5])
    np.testing.assert_array_equal(buf, want)
