"""The trade-off table (oblr_theory.tradeoff): its columns, one cell against a brute-force route,
the guide's picks, and the README / docs/tradeoff.md against the committed rows (no drift)."""

import itertools
import os

import numpy as np
import pytest

from oblr_theory import estimators, exact, exact_batch, exact_map, families, tradeoff

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = os.path.join(REPO, "docs", "tradeoff.jsonl")
U = float(np.finfo(np.float64).eps) / 2


def _brute_force(problem, name, G, per_prompt=None):
    """``E ĝ``, ``V`` and ``∇J`` of one group by enumerating every ordered G-tuple of outcomes
    (independent of the multiset engine's weights and chunking)."""
    outs = exact.all_outcomes(problem)
    g_mean, g_sq = np.zeros(problem.dim), 0.0
    for x, (px, o) in enumerate(zip(problem.prompt_probs, outs)):
        est = estimators.get(name, **{k: v[x] for k, v in (per_prompt or {}).items()})
        for tup in itertools.product(range(len(o.probs)), repeat=G):
            t = list(tup)
            w = px * np.prod(o.probs[t])
            A = est.advantages(o.rewards[t][None], sq_norms=o.sq_norms[t][None], lengths=o.lengths[t][None])[0]
            g = A @ o.scores[t] / G
            g_mean += w * g
            g_sq += w * (g @ g)
    return g_mean, g_sq - g_mean @ g_mean, exact.gradient(problem)


def test_columns_and_one_cell_equal_a_brute_force_enumeration():
    fam, G = "hard_arm_bandit", 4
    names = ["grpo", "rloo", "reinforce_pp_baseline", "remax", "oracle_optimal"]
    rows = tradeoff.compute_rows([fam], (G,), names)
    assert [r["estimator"] for r in rows] == names
    by = {r["estimator"]: r for r in rows}
    for n in ("grpo", "rloo", "reinforce_pp_baseline", "oracle_optimal"):
        assert {"bias_sq", "trace_var", "mse", "gain", "eta_star", "num_prompts", "n_responses", "dim"} <= set(by[n])
    P = families.make(fam)
    L = P.smoothness_bound()
    # float64 sums of 3·4^4 terms of size ≤ max||ĝ||² (|A| ≤ √G, ||s|| ≤ 2): 16 · N · u · scale
    tol = 16 * 3 * 4**G * U * (np.sqrt(G) * 2) ** 2
    greedy = {"greedy_reward": [float(r[np.argmax(lg)]) for r, lg in zip(P.rewards, P.logits)]}
    for name, per_prompt in (("grpo", None), ("remax", greedy)):
        mean, V, grad = _brute_force(P, name, G, per_prompt)
        gm, den = grad @ mean, mean @ mean + V
        r = by[name]
        assert abs(r["bias_sq"] - (mean - grad) @ (mean - grad)) <= tol
        assert abs(r["trace_var"] - V) <= tol
        assert abs(r["mse"] - (V + (mean - grad) @ (mean - grad))) <= 2 * tol
        assert r["gain"] == pytest.approx(gm * gm / (2 * L * den), rel=1e-9)
        assert r["eta_star"] == pytest.approx(gm / (L * den), rel=1e-9)
    assert by["remax"]["bias_sq"] <= tol  # ReMax is unbiased (T1: a fixed baseline per prompt)
    # the batch-coupled peer: whole-batch enumeration at B = 1
    m = exact_batch.batch_moments(P, "reinforce_pp_baseline", G, 1)
    assert by["reinforce_pp_baseline"]["trace_var"] == pytest.approx(m.trace_var, rel=1e-12)
    assert by["reinforce_pp_baseline"]["bias_sq"] == pytest.approx(float(m.bias @ m.bias), rel=1e-12)
    # the rendered full table carries those numbers
    doc = tradeoff.render_doc(rows)
    r = by["grpo"]
    assert (f"| {fam} | {G} | `grpo` | no | {r['bias_sq']:.3g} | {r['trace_var']:.3g} | {r['mse']:.3g} | "
            f"{r['gain']:.3g} | {r['eta_star']:.3g} | {r['gain'] / by['rloo']['gain']:.3g} |") in doc
    assert "| family | G | estimator | unbiased | bias² | V | MSE | gain | η* | gain / rloo |" in doc


def _greedy_by_steps(P, x):
    """The greedy rollout of a token MDP from its step logits (not from the enumerated responses)."""
    V, H = P.vocab_size, P.horizon
    toks, code, prev = np.full(H, -1), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    for t in range(H):
        v = int(np.argmax(P.step_logits(P.param_rows(np.array([x]), t, prev, code))[0]))
        toks[t] = v
        if v == 0 or t + 1 == H:  # EOS = 0
            return float(P._rewards(np.array([x]), toks[None], np.array([t + 1]))[0])
        code, prev = code * (V - 1) + v - 1, np.array([v])


def test_greedy_rewards_follow_the_step_logits():
    for fam in ("length_mdp", "sparse_mdp"):
        P = families.make(fam)
        assert list(exact_map.greedy_rewards(P)) == [_greedy_by_steps(P, x) for x in range(P.num_prompts)]
    # a policy whose greedy rollout is the short correct answer (1, EOS): reward 1 on length_mdp
    P = families.make("length_mdp")
    theta = np.zeros(P.dim)
    bias = P.tables[0]
    theta[bias.offset + 1] = 5.0  # token 1 first
    pos = P.tables[1]
    assert pos.name == "position"
    theta[pos.offset + P.vocab_size * 1 + 0] = 10.0  # then EOS at step 1
    P = P.with_theta(theta)
    assert [_greedy_by_steps(P, x) for x in range(2)] == [1.0, 1.0]
    assert list(exact_map.greedy_rewards(P)) == [1.0, 1.0]


def test_cells_beyond_enumeration_are_na_with_the_multiset_count():
    why = tradeoff.unavailable("length_mdp", "rloo", 16, 15)
    assert why is not None and f"{exact.num_multisets(15, 16):,} multisets" in why
    assert tradeoff.unavailable("sparse_mdp", "grpo", 8, 40) is not None
    assert tradeoff.unavailable("hard_arm_bandit", "grpo", 16, 4) is None
    assert tradeoff.unavailable("length_mdp", "otb", 8, 15) is None


def test_token_level_otb_rows_are_its_exact_moments():
    """The per-token estimators' rows (outside the registry) carry :func:`peers_token.otb_token_moments`;
    on the bandit they are n/a (no tokens); the guide reads T1 from ``TOKEN_ESTIMATORS``."""
    from oblr_theory import peers_token

    rows = tradeoff.compute_rows(["length_mdp"], (4,), ["otb_token", "otb_token_loo"])
    P = families.make("length_mdp")
    for r in rows:
        m = peers_token.otb_token_moments(P, 4, **tradeoff.TOKEN_ESTIMATORS[r["estimator"]][0])
        assert r["trace_var"] == m.trace_var and r["bias_sq"] == float(m.bias @ m.bias)
    by = {r["estimator"]: r for r in rows}
    assert by["otb_token"]["bias_sq"] > 1e6 * by["otb_token_loo"]["bias_sq"]  # biased vs round-off
    assert not tradeoff.is_unbiased("otb_token") and tradeoff.is_unbiased("otb_token_loo")
    assert "needs a token MDP" in tradeoff.unavailable("hard_arm_bandit", "otb_token", 4, 4)
    assert "multisets" in tradeoff.unavailable("length_mdp", "otb_token_loo", 16, 15)


def _row(est, mse, gain, fam="f", G=4):
    return dict(family=fam, group_size=G, estimator=est, mse=mse, gain=gain, bias_sq=0.0, trace_var=mse,
                eta_star=1.0, num_prompts=1, n_responses=2, dim=2)


def test_guide_picks_follow_the_numbers_and_skip_oracles():
    rows = [_row("rloo", 3.0, 1.0), _row("grpo", 1.0, 2.0), _row("optimal_loo", 2.0, 1.5),
            _row("oracle_optimal", 0.5, 9.0), dict(family="f", group_size=4, estimator="remax", na="x")]
    (g,) = tradeoff.guide(rows)
    assert (g["lowest_mse"], g["highest_gain"], g["best_unbiased"]) == ("grpo", "grpo", "optimal_loo")
    assert g["gain_rloo"] == 1.0
    rows[1] = _row("grpo", 5.0, 0.5)  # negative control: worse numbers move the picks
    (g,) = tradeoff.guide(rows)
    assert (g["lowest_mse"], g["highest_gain"]) == ("optimal_loo", "optimal_loo")
    rows.append(_row("reinforce", 2.0, 1.5 * (1 + 1e-12)))  # a tie within round-off is reported as one
    (g,) = tradeoff.guide(rows)
    assert g["highest_gain"] == "optimal_loo = reinforce" and g["lowest_mse"] == "optimal_loo = reinforce"
    rows[-1] = _row("reinforce", 2.0, 1.5 * (1 + 1e-6))  # and a real gap is not
    (g,) = tradeoff.guide(rows)
    assert g["highest_gain"] == "reinforce"


def test_readme_and_doc_match_the_committed_rows():
    rows = tradeoff.load_rows(ROWS)
    want = {(f, n, G) for f in families.FAMILIES for n in tradeoff.table_names() for G in tradeoff.GROUP_SIZES}
    assert {(r["family"], r["estimator"], r["group_size"]) for r in rows} == want
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    assert tradeoff.replace_readme_block(readme, tradeoff.render_readme(rows)) == readme
    assert open(os.path.join(REPO, "docs", "tradeoff.md"), encoding="utf-8").read() == tradeoff.render_doc(rows)
    # negative control: a changed number changes the README block
    i = next(k for k, r in enumerate(rows) if "na" not in r and r["estimator"] == "rloo")
    rows[i] = dict(rows[i], gain=rows[i]["gain"] * 2)
    assert tradeoff.replace_readme_block(readme, tradeoff.render_readme(rows)) != readme


def test_missing_readme_markers_are_refused():
    with pytest.raises(ValueError, match="markers"):
        tradeoff.replace_readme_block("no markers here", "x")


def test_per_prompt_parameters_are_checked():
    P = families.make("hard_arm_bandit")
    with pytest.raises(ValueError, match="one value per prompt"):
        exact.estimator_moments(P, "remax", 4, per_prompt={"greedy_reward": [0.5, 0.5]})
    with pytest.raises(ValueError, match="name"):
        exact.estimator_moments(P, estimators.get("rloo"), 4, per_prompt={"greedy_reward": [0, 0, 0]})


def test_the_regenerate_command_checks_clean(tmp_path):
    """``experiments/tradeoff_table.py --check`` on the committed files exits 0 (nothing to regenerate)."""
    import subprocess
    import sys

    def check(*extra):
        return subprocess.run([sys.executable, os.path.join(REPO, "experiments", "tradeoff_table.py"), "--check",
                               *extra], capture_output=True, text=True, cwd=REPO)

    p = check()
    assert p.returncode == 0, p.stderr
    # negative control: rows with one changed number make --check fail (and it writes nothing)
    rows = tradeoff.load_rows(ROWS)
    i = next(k for k, r in enumerate(rows) if "na" not in r)
    rows[i] = dict(rows[i], mse=rows[i]["mse"] * 3)
    changed = str(tmp_path / "rows.jsonl")
    tradeoff.save_rows(rows, changed)
    p = check("--rows", changed)
    assert p.returncode == 1 and "differs" in p.stderr
    assert check().returncode == 0
