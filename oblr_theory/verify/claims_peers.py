"""PEERS and KL: the exact bias of every peer estimator and batch-coupled mode, and the value and
gradient biases of the KL estimators k1/k2/k3.

PEERS rows state ``E ĝ − ∇J`` exactly (multiset engine for per-group estimators,
:mod:`oblr_theory.exact_batch` for the batch-coupled ones). An estimator registered as unbiased
holds when ``max|E ĝ − ∇J| ≤ tol``; one registered as biased holds when its exact bias exceeds
``tol`` (so a biased claim about an unbiased estimator fails), and the row reports
``||bias|| / ||∇J||``. ``tol`` is the float64 round-off of the engine's weighted sums,
``16 · (N + d) · u · Σ_batches w ||ĝ||_∞``, bounded by ``16 (N + d) u · max|A| · max|s|_∞``.

The token-level OTB rows (:mod:`oblr_theory.peers_token`, not a registry estimator: its advantage
varies along the response) state verl's inclusive form biased and the leave-one-out form unbiased on
the token MDP families, with two planted baseline terms as controls: one that reads the response's
own current token must come out biased, one that reads only its prefix unbiased.

KL rows compare :func:`oblr_theory.kl.kl_moments` (sums over outcomes) with the softmax closed
forms ``∇KL(π‖q) = π ⊙ (log(π/q) − KL)`` and ``∇KL(q‖π) = π − q`` (gradients in the logits), and
state k2's biases (which have no shorter form) as non-zero facts.
"""

from __future__ import annotations

import numpy as np

from .. import estimators, exact, exact_batch, families, kl, peers_token, stats
from ..problems import SoftmaxBandit, TokenMDP
from .report import Claim, Row, test_row, z_row

__all__ = ["claims"]

U = float(np.finfo(np.float64).eps) / 2

_BANDIT = ([1.5, 0.5, 0.0, -1.0], [0.0, 0.2, 0.5, 1.0])  # the best arm is the least likely
_MDP = dict(V=2, H=3, reward="sum_mod", num_prompts=2, seed=0)


def _bandit():
    return SoftmaxBandit(*_BANDIT)


def _mdp():
    k = _MDP
    return TokenMDP(k["V"], k["H"], k["reward"], num_prompts=k["num_prompts"], parametrization="tabular",
                    seed=k["seed"], reward_kwargs={"modulus": 2})


def _greedy_reward(P) -> float:
    """ReMax's baseline on a one-prompt bandit: the reward of the most likely arm (greedy decoding)."""
    return float(np.asarray(P.rewards).reshape(-1)[int(np.argmax(np.asarray(P.logits).reshape(-1)))])


def _bias_row(est, m, where, N, scale) -> Row:
    modes = "".join(f"; {k}={v}" for k, v in (("aggregation", est.aggregation), ("std_scope", est.std_scope))
                    if v not in ("seq-mean-token-sum", "group"))
    return _bias_fact(f"{est.name}{modes}", est.unbiased, m, where, N, scale)


def _bias_fact(name, unbiased, m, where, N, scale, note="T1") -> Row:
    """The exact-bias row of ``name``: unbiased holds when ``max|E ĝ − ∇J| ≤ tol``, biased when it
    exceeds ``tol = 16 (N + d) u · scale``."""
    bias = m.mean - m.grad
    err = float(np.max(np.abs(bias)))
    tol = 16.0 * (N + m.grad.size) * U * scale
    gn = float(np.linalg.norm(m.grad))
    rel = float(np.linalg.norm(bias)) / gn if gn > 0 else float("inf")
    if unbiased:
        return Row("PEERS", f"{name}: unbiased, E ĝ = ∇J", where, "exact", gn, float(np.linalg.norm(m.mean)),
                   err, tol, bool(err <= tol), note=note)
    return Row("PEERS", f"{name}: biased, ||E ĝ − ∇J|| = {rel:.3g} ||∇J||", where, "exact", 0.0, err, err, tol,
               bool(err > tol), note=f"exact bias: max|E ĝ − ∇J| = {err:.3g}; relative {rel:.3g}",
               details={"bias": bias.tolist(), "relative_bias": rel})


def _group_claim(G: int, ctx) -> list[Row]:
    """The per-group peers on the bandit K=4 (multiset engine)."""
    P = _bandit()
    rows = []
    for name in estimators.peer_names():
        if estimators.spec(name).batch_coupled:
            continue
        params = {"greedy_reward": _greedy_reward(P)} if name == "remax" else {}
        est = estimators.get(name, **params)
        m = exact.estimator_moments(P, est, G)
        N = exact.num_multisets(4, G) * G
        # scale ≥ max|A| · max|s|_∞: rewards in [0, 1], so |A| ≤ 1 (remax, otb) or ≤ 1/std ≤ √G ·
        # (a gap over a Bessel std) for grpo_passk, padded 4-fold; a softmax score is ≤ 2
        scale = 4.0 * max(1.0, np.sqrt(G)) * (1.0 + np.max(np.abs(np.asarray(P.rewards)))) * 2.0
        rows.append(_bias_row(est, m, f"bandit K=4, G={G}", N, scale))
    return rows


def _batch_claim(G: int, B: int, ctx) -> list[Row]:
    """The batch-coupled peers and modes on a token MDP with lengths 1–3 (whole batches enumerated)."""
    P = _mdp()
    ests = [estimators.get(n) for n in estimators.peer_names() if estimators.spec(n).batch_coupled]
    ests += [estimators.get("rloo", aggregation="batch-token-mean"), estimators.get("grpo", std_scope="batch"),
             estimators.get("grpo", aggregation="batch-token-mean")]
    rows = []
    for est in ests:
        m = exact_batch.batch_moments(P, est, G, B)
        # scale ≥ max|A| · max|s|_∞ (rewards in {0, 1}): a whitened or std-scaled reward is at most
        # √N ≤ √(3BG) (N tokens or rewards), gpg's α ≤ BG, batch-token-mean multiplies by ≤ BG;
        # so |A| ≤ (BG)^1.5 · √3 ≤ 2 (BG)^1.5, and a tabular score is ≤ 2 per token, 3 tokens: 6
        scale = (B * G) ** 1.5 * 2.0 * 6.0
        rows.append(_bias_row(est, m, f"mdp V=2 H=3 X=2, G={G}, B={B}", m.num_batches * B * G, scale))
    return rows


#: The planted baseline terms' coefficient (``c · w_{j,t}`` reads y_j's own token; ``c · W_{j,t−1}`` its prefix).
_PLANT = 0.3


def _planted(extra):
    """The leave-one-out token OTB with a baseline term ``extra(W, w)`` of the response's own tokens added."""
    def fn(r, w, mask):
        W = np.cumsum(w * mask, axis=-1)
        return peers_token.otb_token_advantages(r, w, mask, leave_one_out=True) - _PLANT * extra(W, w) * mask
    return fn


def _token_claim(family: str, G: int, ctx) -> list[Row]:
    """verl's token-level OTB (:mod:`oblr_theory.peers_token`, plain token sum) on a token MDP with
    lengths 1–3, by multiset enumeration: the inclusive baseline (verl) is biased, its leave-one-out form
    unbiased; a planted baseline term that reads the response's own current token must come out
    biased, one that reads only its prefix unbiased (so the check can go both ways)."""
    P = families.make(family)
    H, d = P.horizon, P.dim
    M = sum(exact.num_multisets(int(np.count_nonzero(o.probs > 0)), G) for o in exact.all_outcomes(P))
    R = max(float(np.max(np.abs(o.rewards))) for o in exact.all_outcomes(P))
    # scale ≥ 2 max|ĝ|_∞: |A| ≤ 2R (r − a convex combination of rewards, shrunk by ε) plus the planted
    # c·W ≤ c·2H (a proxy ||e_y − π||² ≤ 2 per token); a score entry is ≤ 1 per token, H tokens
    scale = 2.0 * (2.0 * R + 2.0 * _PLANT * H) * H
    N, where = M * G * H, f"{family}, G={G}"
    cases = [("otb_token (verl: inclusive, zero tail)", False, peers_token.otb_token_moments(P, G), "T1"),
             ("otb_token leave-one-out", True, peers_token.otb_token_moments(P, G, leave_one_out=True), "T1"),
             (f"planted: leave-one-out + {_PLANT}·w_(j,t) (reads y_j's own token)", False,
              peers_token.token_estimator_moments(P, _planted(lambda W, w: w), G), "control: must be biased"),
             (f"planted: leave-one-out + {_PLANT}·W_(j,t−1) (reads y_j's prefix only)", True,
              peers_token.token_estimator_moments(P, _planted(lambda W, w: W - w), G), "control: T1 holds")]
    return [_bias_fact(name, unbiased, m, where, N, scale, note=note) for name, unbiased, m, note in cases]


# ---------------------------------------------------------------------------------------------
# Monte Carlo: calibrated against whole-batch enumeration, then beyond its limits
# ---------------------------------------------------------------------------------------------

_MC_ESTS = (("rloo", {"aggregation": "batch-token-mean"}), ("grpo", {"std_scope": "batch"}), ("reinforce_pp", {}))


def _mc_claim(ctx) -> list[Row]:
    """At G = B = 2 a mean test of whole-batch samples against the exact batch law (one per mode),
    and as a negative control against the per-group law of batch-token-mean (``token-mean``),
    which it must reject; at G = 4, B = 8 (beyond enumeration: U^B ≈ 10^22 batches) the bias
    along ``∇J``, ``E[ĝ·∇J]/||∇J||² − 1``, measured with its standard error, and the false claim
    "it is 0" rejected by a z-test."""
    P = _mdp()
    where = "mdp V=2 H=3 X=2"
    n = ctx.size(40_000 if not ctx.quick else 10_000)
    rows = []
    for name, kw in _MC_ESTS:
        est = estimators.get(name, **kw)
        m = exact_batch.batch_moments(P, est, 2, 2)
        x = exact_batch.sample_batch_gradients(P, est, 2, 2, n, ctx.rng)
        t = stats.mean_test(stats.SampleMoments.of(x), m.mean, ctx.alpha, ctx.power)
        label = f"{name}{''.join(f'; {k}={v}' for k, v in kw.items())}"
        rows.append(test_row("PEERS", f"Monte Carlo E ĝ = exact batch law ({label})", f"{where}, G=2, B=2", t))
        if kw.get("aggregation") == "batch-token-mean":
            wrong = exact.estimator_moments(P, estimators.get(name, aggregation="token-mean"), 2, batch_size=2).mean
            t_neg = stats.mean_test(stats.SampleMoments.of(x), wrong, ctx.alpha, ctx.power)
            rows.append(test_row("PEERS", f"FALSE: E ĝ = per-group token-mean law ({label})", f"{where}, G=2, B=2",
                                 t_neg, negative=True, exact_bias=wrong - m.mean))
    grad = exact.gradient(P)
    for name, kw in _MC_ESTS:
        est = estimators.get(name, **kw)
        x = exact_batch.sample_batch_gradients(P, est, 4, 8, max(1000, n // 8), ctx.rng)
        proj = x @ grad / (grad @ grad) - 1.0
        sm = stats.SampleMoments.of(proj)
        label = f"{name}{''.join(f'; {k}={v}' for k, v in kw.items())}"
        rows.append(z_row("PEERS", f"FALSE: unbiased along ∇J, E[ĝ·∇J]/||∇J||² − 1 = 0 ({label})",
                          f"{where}, G=4, B=8", float(sm.mean[0]), float(sm.std_error[0]), 0.0,
                          stats.bonferroni_z(ctx.alpha, 1), negative=True,
                          note=f"beyond enumeration: measured bias along ∇J {float(sm.mean[0]):.3g} "
                               f"± {float(sm.std_error[0]):.2g} (se)"))
    return rows


# ---------------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------------

_KL_CASES = {  # (logits of π, reference probabilities q)
    "K=4 near": ([0.3, -0.2, 0.5, 0.0], [0.3, 0.2, 0.3, 0.2]),
    "K=5 far": ([2.0, -1.0, 0.5, 0.0, -2.5], [0.05, 0.4, 0.15, 0.2, 0.2]),
}


def _kl_claim(key: str, ctx) -> list[Row]:
    z, q = (np.asarray(a, float) for a in _KL_CASES[key])
    p = np.exp(z - z.max())
    p /= p.sum()
    s = np.eye(p.size) - p  # ∇_z log π(y) = e_y − π
    m = kl.kl_moments(p, q, s)
    KL = float(np.sum(p * np.log(p / q)))
    g = p * (np.log(p / q) - KL)  # ∇KL(π‖q) in the logits
    g_rev = p - q  # ∇KL(q‖π) in the logits
    scale = 1.0 + float(np.max(np.abs(np.log(p / q)))) ** 2
    tol = 64.0 * (p.size + 4) * U * scale
    where = f"softmax {key}"
    claims = [("k1 value: E k1 = KL (unbiased)", KL, m.value["k1"]),
              ("k3 value: E k3 = KL (unbiased)", KL, m.value["k3"]),
              ("k1 loss: E ∇k1 = E s = 0 (bias −∇KL)", np.zeros_like(g), m.loss_grad["k1"]),
              ("k2 loss: E ∇k2 = ∇KL(π‖q) (unbiased)", g, m.loss_grad["k2"]),
              ("k3 loss: E ∇k3 = ∇KL(q‖π) (bias ∇KL(q‖π) − ∇KL(π‖q))", g_rev, m.loss_grad["k3"]),
              ("k1 reward: E[k1 s] = ∇KL(π‖q) (unbiased)", g, m.reward_grad["k1"]),
              ("k3 reward: E[k3 s] = ∇KL(π‖q) − ∇KL(q‖π)", g - g_rev, m.reward_grad["k3"])]
    rows = []
    for statement, want, got in claims:
        want_a, got_a = np.atleast_1d(want), np.atleast_1d(got)
        err = float(np.max(np.abs(want_a - got_a)))
        rows.append(Row("KL", statement, where, "exact", float(np.linalg.norm(want_a)), float(np.linalg.norm(got_a)),
                        err, tol, bool(err <= tol)))
    for statement, bias in (("k2 value: biased, E k2 − KL ≠ 0", m.value_bias("k2")),
                            ("k2 reward: biased, E[k2 s] − ∇KL ≠ 0", float(np.max(np.abs(m.reward_bias("k2"))))),
                            ("k3 loss: biased for ∇KL(π‖q)", float(np.max(np.abs(m.loss_bias("k3"))))),
                            ("k3 reward: biased for ∇KL(π‖q)", float(np.max(np.abs(m.reward_bias("k3")))))):
        rows.append(Row("KL", statement, where, "exact", 0.0, abs(bias), abs(bias), tol, bool(abs(bias) > tol),
                        note=f"exact bias {bias:.4g}"))
    return rows


def claims(quick: bool, seed: int) -> list[Claim]:
    del seed  # exact rows only
    out = [Claim(f"peers/group/G={G}", "PEERS", "bandit K=4", lambda ctx, G=G: _group_claim(G, ctx))
           for G in ((2, 4) if quick else (2, 4, 8))]
    batches = ((2, 2),) if quick else ((2, 2), (3, 2), (2, 3))
    out += [Claim(f"peers/batch/G={G}/B={B}", "PEERS", "mdp V=2 H=3 X=2",
                  lambda ctx, G=G, B=B: _batch_claim(G, B, ctx), cost=1.0 if (G, B) == (2, 2) else 20.0)
            for G, B in batches]
    tokens = (("length_mdp", 2), ("length_mdp", 3), ("sparse_mdp", 2)) + ((("sparse_mdp", 3),) if not quick else ())
    out += [Claim(f"peers/otb_token/{fam}/G={G}", "PEERS", fam, lambda ctx, fam=fam, G=G: _token_claim(fam, G, ctx))
            for fam, G in tokens]
    if not quick:
        out.append(Claim("peers/mc", "PEERS", "mdp V=2 H=3 X=2", _mc_claim, num_tests=7, cost=20.0))
    out += [Claim(f"kl/{key}", "KL", f"softmax {key}", lambda ctx, key=key: _kl_claim(key, ctx)) for key in _KL_CASES]
    return out
