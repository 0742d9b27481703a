"""OBLR-PO step on a tiny Qwen3 (float64): surrogate gradient, registry advantages, T7 pieces,
T5 learning rate, and a smoke run on the built-in task (sampling: test_rollout.py; the surrogate's
statistics on explicit scores: test_surrogate.py)."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from oblr_theory import estimators  # noqa: E402
from oblr_theory.bridge.logprobs import sequence_logprobs  # noqa: E402
from oblr_theory.bridge.models import pretrain, tiny_qwen3  # noqa: E402
from oblr_theory.bridge.rollout import expected_task_reward, sample_rollout  # noqa: E402
from oblr_theory.bridge.step import OBLRPO, StepConfig, train  # noqa: E402
from bridge_helpers import TASK, TOK, U64, chain_length, roundoff_tol, task_model64  # noqa: E402
from oblr_theory.snr import snr_pieces  # noqa: E402

model64 = pytest.fixture(scope="module", name="model64")(task_model64)


@pytest.fixture(scope="module")
def rollout(model64):
    problems = TASK.sample(3, np.random.default_rng(0))
    roll = sample_rollout(model64, TOK, TASK, problems, group_size=4, max_new_tokens=4, seed=5)
    # rewards with variance (a random model is almost never right); any reward works for the
    # gradient identities below
    roll.rewards_bg = torch.as_tensor(np.random.default_rng(1).integers(0, 2, (3, 4)), dtype=torch.float64)
    roll.rewards_bg[0, 0], roll.rewards_bg[0, 1] = 1.0, 0.0
    return roll


def per_sample_scores(model, roll):
    """Reference: s_bj = ∇θ log π(y_bj|x_b), one backward per sequence, flattened: (B, G, d)."""
    params = [p for p in model.parameters() if p.requires_grad]
    seq = sequence_logprobs(model, roll.input_ids_bgt, roll.attention_bgt, roll.completion_bgt).seq_logp_bg
    B, G = seq.shape
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(seq[b, j], params, retain_graph=True)])
            for b in range(B) for j in range(G)]
    return torch.stack(rows).reshape(B, G, -1)


def flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])


SINGLE_PASS = "keep_factors" in __import__("inspect").signature(
    __import__("oblr_theory.bridge.gram", fromlist=["score_gram"]).score_gram).parameters


@pytest.mark.parametrize("single_pass", [False, pytest.param(True, marks=pytest.mark.skipif(
    not SINGLE_PASS, reason="score_gram has no keep_factors"))])
@pytest.mark.parametrize("name", ["optimal_loo", "grpo", "opo", "rloo"])
def test_surrogate_gradient_is_weighted_sum_of_per_sample_scores(model64, rollout, name, single_pass):
    """−∇L = ĝ = (1/(BG)) Σ_bj A_bj s_bj, with A from the registry on the exact S; two passes
    (Gram, then the surrogate's backward) or one (the ghost pass's kept factors)."""
    s_bgd = per_sample_scores(model64, rollout)
    S_bg = (s_bgd**2).sum(-1)
    A_bg = estimators.get(name).advantages(rollout.rewards_bg, S_bg, rollout.lengths_bg.double())
    B, G, _ = s_bgd.shape
    g_ref = torch.einsum("bg,bgd->d", A_bg, s_bgd) / (B * G)
    algo = OBLRPO(model64, StepConfig(estimator=name, lr_rule="snr", single_pass=single_pass))
    assert algo.single_pass == single_pass
    diag = algo.update(rollout, apply=False)
    g_step = -flat_grad(model64)
    # float64 throughout; both routes run a forward and a backward (2 chains), then sum B·G
    # weighted scores, whose cancellation is Σ|A_bj| ||s_bj|| / ||Σ A_bj s_bj||
    cond = float((A_bg.abs() * s_bgd.norm(dim=-1)).sum() / (B * G) / torch.linalg.norm(g_ref))
    tol = roundoff_tol(2 * chain_length(model64, rollout.shape[-1]) + B * G, cond)
    assert torch.linalg.norm(g_step - g_ref) <= tol * torch.linalg.norm(g_ref)
    # ||ĝ||²: twice the vector's relative error, plus a sum of d squares
    d = g_ref.numel()
    assert diag.grad_sq_norm == pytest.approx(float(g_ref @ g_ref), rel=2 * tol + roundoff_tol(d), abs=0)


@pytest.mark.parametrize("name", [n for n in estimators.names() if n not in ("oracle_optimal",)])
def test_step_advantages_equal_numpy_registry(model64, rollout, name):
    """The bridge feeds the same registry: torch advantages == numpy advantages on the same inputs."""
    params = {"b": 0.3} if name == "constant" else {}
    algo = OBLRPO(model64, StepConfig(estimator=name, estimator_params=params))
    S_bg, _, _ = algo.sq_norms_and_gram(rollout)
    A_torch = algo.advantages(rollout, S_bg).numpy()
    A_np = estimators.get(name, **params).advantages(rollout.rewards_bg.numpy(), S_bg.numpy(),
                                                     rollout.lengths_bg.double().numpy())
    # the same float64 formula; numpy and torch may order its G-term sums differently: at most
    # a few sums and ratios of G terms (4 G u relative) of |r| <= 1, amplified for grpo by
    # 1/std <= 1/std_min (0/1 rewards of a group of G with both values: std >= sqrt(1/G))
    G = A_np.shape[-1]
    np.testing.assert_allclose(A_torch, A_np, rtol=0, atol=roundoff_tol(4 * G, np.sqrt(G)))


@pytest.mark.parametrize("single_pass", [False, pytest.param(True, marks=pytest.mark.skipif(
    not SINGLE_PASS, reason="score_gram has no keep_factors"))])
def test_step_snr_pieces_equal_pieces_from_per_group_gradients(model64, rollout, single_pass):
    """The update's T7 pieces equal those of the explicit u_b = (1/G) Σ_j A_bj s_bj: two passes
    (within-group Gram, A_bᵀ K_b A_b / G²) and one pass (diagonal-only ghost S for A, then
    Σ_b ||u_b||² = B² tr K from weighted_gradients' B × B Gram)."""
    s_bgd = per_sample_scores(model64, rollout)
    S_bg = (s_bgd**2).sum(-1)
    A_bg = estimators.get("optimal_loo").advantages(rollout.rewards_bg, S_bg)
    G = s_bgd.shape[1]
    ref = snr_pieces(torch.einsum("bg,bgd->bd", A_bg, s_bgd) / G)
    algo = OBLRPO(model64, StepConfig(estimator="optimal_loo", lr_rule="snr", single_pass=single_pass))
    assert algo.single_pass == single_pass
    diag = algo.update(rollout, apply=False)
    # each u_b has absolute error <= eps · a_b, a_b = Σ_j |A_bj| ||s_bj|| / G (eps: a forward
    # and a backward chain); the pieces are combinations, with coefficients <= 2 B/(B-1), of
    # ||u_b||² and <u_b, u_c>, each then off by <= 2 eps a_b a_c
    B = s_bgd.shape[0]
    eps = roundoff_tol(2 * chain_length(model64, rollout.shape[-1]) + G)
    a_b = (A_bg.abs() * s_bgd.norm(dim=-1)).sum(-1) / G
    abs_tol = 2 * eps * float(a_b.max() ** 2) * 2 * B / (B - 1)
    assert diag.grad_sq_norm_hat == pytest.approx(float(ref.grad_sq_norm_hat), rel=0, abs=abs_tol)
    assert diag.noise_var_hat == pytest.approx(float(ref.noise_var_hat), rel=0, abs=abs_tol)
    # S = ||s||² >= 0 (no cancellation): twice the score's relative error plus a sum of d squares
    assert diag.S_mean == pytest.approx(float(S_bg.mean()), rel=2 * eps + roundoff_tol(s_bgd.shape[-1]))


def test_snr_learning_rate_shrinks_when_noise_grows(model64):
    """T5: η = η_max SNR/(1+SNR) falls when V grows at fixed ∇J.

    The reward depends on the completion (first token even), so ∇J ≠ 0. Shifting every reward by
    c = 3 leaves E ĝ = ∇J unchanged for reinforce (T1) and adds V(−c) − V(0) = (m_S/G)(c² + 2c b*)
    of noise (T3), about 20x here, so the T7 SNR and the T5 step must drop. Power: with B = 32
    groups the SNR estimate's noise, ~ sqrt(2/B) ≈ 0.25 (T7), is small against the unshifted
    SNR (≈ 1 on this model).
    """
    rolls = [sample_rollout(model64, TOK, TASK, TASK.sample(32, np.random.default_rng(k)), 4, 2, seed=k)
             for k in range(2)]
    out = {}
    for shift in (0.0, 3.0):
        algo = OBLRPO(model64, StepConfig(estimator="reinforce", eta_max=1.0, ema_beta=0.5))
        for roll in rolls:
            first_bg = roll.input_ids_bgt.gather(-1, roll.completion_bgt.long().argmax(-1, keepdim=True))
            roll.rewards_bg = (first_bg.squeeze(-1) % 2 == 0).double() + shift
            diag = algo.update(roll, apply=False)
        out[shift] = diag
    assert out[3.0].noise_var_hat > out[0.0].noise_var_hat
    assert out[3.0].lr < out[0.0].lr
    # T5 with η_max = 1: one addition and one division after the EMA (two roundings)
    assert out[0.0].lr == pytest.approx(out[0.0].snr_ema / (1 + out[0.0].snr_ema), rel=4 * U64, abs=0)


def test_bad_config_errors_name_the_argument(model64, rollout):
    with pytest.raises(ValueError, match="unknown estimator"):
        StepConfig(estimator="ppo")
    with pytest.raises(ValueError, match="lr_rule"):
        StepConfig(lr_rule="cosine")
    one = dataclasses.replace(rollout)
    one.input_ids_bgt, one.attention_bgt = rollout.input_ids_bgt[:1], rollout.attention_bgt[:1]
    one.completion_bgt, one.rewards_bg = rollout.completion_bgt[:1], rollout.rewards_bg[:1]
    with pytest.raises(ValueError, match="B >= 2"):
        OBLRPO(model64, StepConfig()).update(one, apply=False)


def test_smoke_oblr_po_raises_mean_reward():
    """Smoke: a short OBLR-PO run (optimal_loo, SNR learning rate, SGD) on the built-in task
    raises the exact expected reward J = mean_x π(answer ⊕ eos | x) over all 100 problems."""
    torch.manual_seed(0)
    model = tiny_qwen3(TOK, seed=0)
    pretrain(model, TOK, TASK, steps=40, seed=0)
    problems = TASK.all_problems()
    J0 = float(expected_task_reward(model, TOK, problems).mean())
    rows = train(model, TOK, TASK, StepConfig(estimator="optimal_loo", eta_max=0.1), steps=20,
                 batch_size=8, group_size=8, max_new_tokens=TASK.max_answer_chars + 1, seed=0)
    J1 = float(expected_task_reward(model, TOK, problems).mean())
    assert all(np.isfinite(r["lr"]) and 0 <= r["lr"] <= 0.1 for r in rows)
    assert J1 > J0, (J0, J1)


def test_adamw_step_uses_the_snr_learning_rate(model64, rollout):
    """AdamW's first step is ``Δθ = −η g / (|g| + ε_adam)`` (bias-corrected moments ``m̂ = g``,
    ``v̂ = g²``; no weight decay): the step taken is that with the T5 rate ``η`` of the
    diagnostics (not ``eta_max``), elementwise, for the gradient the update left in ``.grad``."""
    import copy

    m = copy.deepcopy(model64)
    before = [p.detach().clone() for p in m.parameters()]
    algo = OBLRPO(m, StepConfig(optimizer="adamw", eta_max=1e-3, eta_min=1e-5))
    diag = algo.update(rollout)
    assert 1e-5 <= diag.lr < 1e-3 and algo.opt.param_groups[0]["lr"] == diag.lr
    eps_adam = algo.opt.param_groups[0]["eps"]
    for p, p0 in zip(m.parameters(), before):
        g = p.grad
        want = p0 - diag.lr * g / (g.abs() + eps_adam)
        # a handful of float64 operations per element (sqrt, divide, add), each rounding once
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=roundoff_tol(8, float(p0.abs().max()) + diag.lr))


def test_single_pass_rejects_non_finite_rewards_and_advantages(model64, rollout, monkeypatch):
    """Rewards are checked before the ghost pass; the advantages (hence S) through the
    weighted pass's deferred check. Either way no update is made."""
    before = [p.detach().clone() for p in model64.parameters()]
    bad = dataclasses.replace(rollout, rewards_bg=rollout.rewards_bg.clone())
    bad.rewards_bg[1, 2] = float("inf")
    step = OBLRPO(model64, StepConfig(lr_rule="snr", eta_max=0.1))
    assert step.single_pass
    with pytest.raises(ValueError, match="rewards contains non-finite"):
        step.update(bad)
    nan_adv = estimators.get("optimal_loo")
    real = type(nan_adv).advantages
    monkeypatch.setattr(type(nan_adv), "advantages",
                        lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    with pytest.raises(ValueError, match="non-finite advantages"):
        step.update(rollout)
    assert all(torch.equal(p, q) for p, q in zip(model64.parameters(), before))
    assert all(p.grad is None for p in model64.parameters())


def _is_project_object(o) -> bool:
    """Whether ``o`` belongs to oblr_theory: an instance of one of its classes, one of its
    functions (closures and bound methods included), or a frame or code object of its files."""
    import os
    import types

    import oblr_theory

    pkg = os.path.dirname(os.path.abspath(oblr_theory.__file__)) + os.sep
    if isinstance(o, types.FrameType):
        o = o.f_code
    if isinstance(o, types.CodeType):
        return os.path.abspath(o.co_filename).startswith(pkg)
    if isinstance(o, types.MethodType):
        o = o.__func__
    if isinstance(o, types.FunctionType):
        return (o.__module__ or "").split(".")[0] == "oblr_theory"
    return (type(o).__module__ or "").split(".")[0] == "oblr_theory"


def project_cyclic_garbage(run) -> list:
    """The oblr_theory objects among the cyclic garbage that ``run()`` leaves (collector paused
    meanwhile; ``gc.DEBUG_SAVEALL`` keeps what a collection finds, for inspection).

    Only the project's objects are attributed: libraries the update calls may leave cycles of
    their own (torch.einsum's contraction-path search through opt_einsum, when installed, leaves
    a closure cycle per call), which the collector frees once it runs again and which are not
    this project's to test. Not seen: a cycle made only of other libraries' objects (a dict
    holding itself) even when the project's code built it."""
    import gc

    gc.collect()
    debug, enabled = gc.get_debug(), gc.isenabled()
    gc.disable()
    try:
        run()
        gc.set_debug(debug | gc.DEBUG_SAVEALL)
        gc.collect()
        return [o for o in gc.garbage if _is_project_object(o)]
    finally:
        gc.set_debug(debug)
        gc.garbage.clear()
        if enabled:
            gc.enable()


def test_project_cyclic_garbage_sees_a_planted_project_cycle_and_ignores_a_foreign_one(
        model64, rollout, monkeypatch):
    """Negative control of the attribution: a cycle through an oblr_theory object is caught,
    also when planted inside an update; a cycle of plain dicts (another library's kind) is not."""

    def plant_project_cycle():
        cfg = StepConfig()
        cfg.self_ref = cfg  # noqa: B010 (a cycle through the project's dataclass)

    def plant_foreign_cycle():
        d = {}
        d["self"] = d

    found = project_cyclic_garbage(plant_project_cycle)
    assert any(isinstance(o, StepConfig) for o in found)
    assert project_cyclic_garbage(plant_foreign_cycle) == []

    step = OBLRPO(model64, StepConfig(eta_max=1e-3))
    grad_sq_norm = OBLRPO._grad_sq_norm

    def leaky(self):  # a bug: the update's config made cyclic
        cfg = dataclasses.replace(self.cfg)
        cfg.self_ref = cfg
        return grad_sq_norm(self)

    monkeypatch.setattr(OBLRPO, "_grad_sq_norm", leaky)
    found = project_cyclic_garbage(lambda: step.update(rollout, apply=False))
    assert any(isinstance(o, StepConfig) for o in found)


@pytest.mark.parametrize("estimator, lr_rule, single_pass", [
    ("optimal_loo", "snr", True), ("optimal_loo", "snr", False), ("grpo", "constant", None)])
def test_update_creates_no_reference_cycles_and_restores_the_collector(model64, rollout, estimator,
                                                                      lr_rule, single_pass):
    """``update`` pauses the cyclic garbage collector (``gc_paused``); that is lossless only if
    an update leaves no cyclic garbage of the project's behind: everything it allocates must be
    freed by reference counting, and nothing of the pass (GhostPass, use records) may stay
    reachable (other libraries' cycles: see ``project_cyclic_garbage``). The collector's state
    is restored, enabled or not."""
    import gc

    from oblr_theory.bridge.step import gc_paused

    step = OBLRPO(model64, StepConfig(estimator=estimator, lr_rule=lr_rule, eta_max=1e-3,
                                      single_pass=single_pass))
    step.update(rollout, apply=False)  # warm: one-time checks and caches
    assert project_cyclic_garbage(lambda: step.update(rollout, apply=False)) == []
    gc.disable()
    try:
        assert not [o for o in gc.get_objects() if type(o).__name__ in ("GhostPass", "Use")]
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # was disabled: stays disabled
    finally:
        gc.enable()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_batch_token_mean_couples_the_rollout_groups(model64, rollout):
    """``aggregation="batch-token-mean"`` (TRL's dapo weight): the advantages are the per-group
    ones times ``BG / Σ_bj ℓ_bj`` over the whole rollout; refused with a data-parallel reduce
    (a rank sees only its own groups)."""
    plain = OBLRPO(model64, StepConfig(lr_rule="constant"))
    coupled = OBLRPO(model64, StepConfig(lr_rule="constant", aggregation="batch-token-mean"))
    S = plain.sq_norms_and_gram(rollout)[0]
    ell = rollout.lengths_bg.to(torch.float64)
    assert ell.sum(-1).unique().numel() > 1  # groups of different token totals: not a per-group weight
    expected = plain.advantages(rollout, S) * ell.numel() / ell.sum()
    assert torch.allclose(coupled.advantages(rollout, S), expected, rtol=8 * U64, atol=0)
    with pytest.raises(ValueError, match="data parallelism"):
        OBLRPO(model64, StepConfig(aggregation="batch-token-mean"), reduce=lambda t: t)


def test_train_draws_from_the_sampler_and_calls_back_after_each_update(monkeypatch):
    """``train(..., sampler=, callback=)``: every rollout's prompts come from the sampler (here
    one problem only), and the callback sees updates 1..steps with their rows."""
    import oblr_theory.bridge.step as step_mod

    model = tiny_qwen3(TOK, seed=0)
    only = TASK.all_problems()[7]

    class One:
        def sample(self, n, rng):
            return [only] * n

    seen, problems = [], []
    real = step_mod.sample_rollout

    def spy(model_, tok, task, probs, *a, **k):
        problems.extend(probs)
        return real(model_, tok, task, probs, *a, **k)

    monkeypatch.setattr(step_mod, "sample_rollout", spy)
    rows = train(model, TOK, TASK, StepConfig(lr_rule="constant", eta_max=0.01), steps=2, batch_size=2,
                 group_size=2, max_new_tokens=3, sampler=One(), callback=lambda d, r: seen.append((d, r)))
    assert problems == [only] * 4 and [d for d, _ in seen] == [1, 2] and [r for _, r in seen] == rows
