"""The bridge's step (``OBLRPO.update`` with ``rlvr.bridge_step_config``) replays OBLRPOTrainer's
step in the RLVR study's settings: ``optimal_loo`` with exact ``S`` (ghost), TRL's default loss
(``dapo``), ``beta = 0``, SGD at a constant rate, with and without gradient clipping. The
completions TRL generated in one step are fed to ``OBLRPO.update`` as a ``Rollout``, from the
same float32 initial parameters; the parameters after the step must agree to the float32 bound
of :func:`_float32_bound`. Both are also checked against a float64 reference step computed
token by token, and a wrong token aggregation (per-group ``token-mean``, or none) must fail.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from oblr_theory.bridge.models import make_float64_exact  # noqa: E402
from oblr_theory.bridge.rollout import Rollout  # noqa: E402
from oblr_theory.bridge.step import OBLRPO  # noqa: E402
from oblr_theory.integrations.rlvr import RunConfig, bridge_step_config  # noqa: E402
from oblr_theory.integrations.trl import OBLRPOConfig, OBLRPOTrainer  # noqa: E402

from .trl_helpers import arithmetic_dataset, base_kwargs, capture, char_tokenizer, dense_reward, tiny_model  # noqa: E402

pytestmark = pytest.mark.torch

U32 = 2.0 ** -24  # float32 unit roundoff
LR = 0.1


def _gamma(n: int, u: float = U32) -> float:
    return n * u / (1 - n * u)


def _trl_step(model, tmp_path, single_pass: str, max_grad_norm: float):
    """One OBLRPOTrainer step in the study's settings (``G = 4`` completions of up to 8 tokens
    for each of 2 prompts: the lengths differ, so the aggregation matters)."""
    args = OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path), estimator="optimal_loo", sq_norms_source="ghost",
                                      lr_rule="constant", single_pass=single_pass, max_grad_norm=max_grad_norm,
                                      max_completion_length=8, learning_rate=LR, optim="sgd"))
    tr = capture(OBLRPOTrainer)(model=model, reward_funcs=dense_reward, args=args,
                                train_dataset=arithmetic_dataset(64), processing_class=char_tokenizer())
    tr.train()
    return tr, args


def _rollout(captured: dict, rewards: torch.Tensor, G: int) -> Rollout:
    """TRL's generation batch as a bridge ``Rollout``: ``[left-padded prompt | completion]`` rows,
    the completion mask up to and including the first ``<eos>`` (TRL's ``completion_mask``), the
    rows of one prompt consecutive (TRL's ``RepeatSampler``)."""
    pm, cm = captured["prompt_mask"], captured["completion_mask"]
    ids = torch.cat([captured["prompt_ids"], captured["completion_ids"]], 1)
    attn = torch.cat([pm, cm], 1).bool()
    comp = torch.cat([torch.zeros_like(pm), cm], 1).bool()
    N, T = ids.shape
    B = N // G
    return Rollout([None] * B, ids.view(B, G, T), attn.view(B, G, T), comp.view(B, G, T),
                   [[""] * G for _ in range(B)], rewards.to(torch.float64).view(B, G))


def _token_terms(model, roll: Rollout, adv_bg: torch.Tensor):
    """Float64, token by token (an independent route): the ascent direction
    ``ĝ = (1/N) Σ_jt A_j ∇ log π(y_jt)`` with ``N`` the batch's completion tokens (TRL's dapo
    weight), and the absolute sum of its terms ``Σ_jt |A_j ∇ log π(y_jt)| / N`` per parameter."""
    m = make_float64_exact(copy.deepcopy(model).double())
    params = [p for p in m.parameters() if p.requires_grad]
    B, G, T = roll.shape
    ids, attn, comp = (x.reshape(B * G, T) for x in (roll.input_ids_bgt, roll.attention_bgt, roll.completion_bgt))
    pos = (attn.long().cumsum(-1) - 1).clamp(min=0)
    logits = m(input_ids=ids, attention_mask=attn.long(), position_ids=pos).logits
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    mask, A = comp[:, 1:], adv_bg.reshape(-1).to(torch.float64)
    N = int(mask.sum())
    g = [torch.zeros_like(p) for p in params]
    absum = [torch.zeros_like(p) for p in params]
    for j, t in mask.nonzero().tolist():
        grads = torch.autograd.grad(logp[j, t], params, retain_graph=True)
        for k, d in enumerate(grads):
            g[k] += A[j] * d / N
            absum[k] += (A[j] * d).abs() / N
    flat = lambda xs: torch.cat([x.reshape(-1) for x in xs])  # noqa: E731
    return flat(g), flat(absum), N


def _float32_bound(theta0, g64, absum, max_grad_norm: float | None, n: int, dA_terms):
    """Largest difference of two float32 evaluations of ``θ₁ = θ₀ + η f ĝ`` (per parameter).

    Each route accumulates ``ĝ_i`` over ``n`` terms (the batch's tokens times the positions that
    attention mixes, plus the dot products of one backward pass: hidden, MLP and vocabulary
    widths per layer); in float32, with any order of summation, the result is within
    ``γ_n(u₃₂) Σ|terms|`` of the exact sum (Higham, sections 3.1 and 4.2, with the float64
    per-token terms as the terms), so two routes differ by ``e_i = 2 γ_n Σ|terms|_i``, plus
    ``dA_terms_i = Σ_jt |δA_j| |∇_i log π(y_jt)| / N`` for the two routes' advantages (from
    float32 ``S``). Clipping (``f = c / (||ĝ|| + 1e-6)`` when ``||ĝ|| > c``): ``|δf| / f <=
    ||e||₂ / ||ĝ||₂ + 2 γ_P(u₃₂)`` (``P`` parameters in the norm). The updated parameter is rounded
    to float32 in each route: ``u₃₂ (|θ₁| + η f |ĝ|)`` each.
    """
    e = 2 * _gamma(n) * absum + dA_terms
    norm = float(g64.norm())
    f, df = 1.0, 0.0
    if max_grad_norm is not None and norm > max_grad_norm:
        f = max_grad_norm / (norm + 1e-6)
        df = f * (float(e.norm()) / norm + 2 * _gamma(g64.numel()))
    theta1 = theta0 + LR * f * g64
    return LR * (f * e + df * g64.abs()) + 2 * U32 * (theta1.abs() + LR * f * g64.abs()), f


def _flat(model):
    return torch.cat([p.detach().reshape(-1).to(torch.float64) for p in model.parameters()])


@pytest.mark.parametrize("trl_single_pass, bridge_single_pass, max_grad_norm", [
    ("auto", None, 0.3),    # the study: the single pass in both, clipping active (||ĝ|| ≈ 0.69)
    ("off", False, 0.0),    # TRL's own dapo loss and backward; the bridge's surrogate; no clipping
    ("off", None, 0.3),     # TRL's own backward against the bridge's single pass, clipped
])
def test_bridge_step_replays_the_trl_step(tmp_path, trl_single_pass, bridge_single_pass, max_grad_norm):
    m0 = tiny_model(seed=0)  # float32, as in the study
    m_trl, m_bridge = copy.deepcopy(m0), copy.deepcopy(m0)
    theta0 = _flat(m0)
    tr, args = _trl_step(m_trl, tmp_path, trl_single_pass, max_grad_norm)
    assert tr.oblrpo_single_pass == (trl_single_pass == "auto")
    G, last = args.num_generations, tr.oblrpo_last
    roll = _rollout(tr.captured[0], last["rewards"], G)
    lengths = roll.lengths_bg.sum(-1)
    assert lengths[0] != lengths[1]  # the groups' token totals differ: the aggregation matters

    mgn = max_grad_norm or None
    cfg = RunConfig(variant="base", estimator="optimal_loo", sq_norms_source="ghost", lr_rule="constant",
                    optim="sgd", lr=LR, seed=0)
    step_cfg = replace(bridge_step_config(cfg, mgn), single_pass=bridge_single_pass)
    algo = OBLRPO(m_bridge, step_cfg)
    m_bridge.train()
    S_b = algo.sq_norms_and_gram(roll)[0]
    A_b = algo.estimator.advantages(roll.rewards_bg, sq_norms=S_b.double(), lengths=roll.lengths_bg.double(),
                                    batch_axis=0)
    diag = algo.update(roll)

    # the same S (two float32 ghost passes: within 2 γ_n(u₃₂) relative, n as for the gradient below)
    # and advantages: TRL's A before its dapo weight, the bridge's carries BG/N. optimal_loo's
    # baseline is an S-weighted mean of the other rewards: S_k (1 + ε_k) with |ε_k| <= ε moves it
    # by at most 2ε/(1 − ε) · (max r − min r) (plus float64 roundings)
    spec, T = m0.config, roll.shape[-1]
    N = int(roll.lengths_bg.sum())
    n = N * T + spec.num_hidden_layers * (spec.hidden_size + spec.intermediate_size + T) + spec.vocab_size
    S_t, A_t = last["sq_norms"].view_as(S_b).double(), last["advantages"].view_as(S_b).double()
    eps = float(((S_b.double() - S_t).abs() / S_t).max())
    assert eps <= 2 * _gamma(n), eps
    A_b_plain = A_b * N / A_b.numel()
    dA = (A_b_plain - A_t).abs()
    r = roll.rewards_bg
    assert float(dA.max()) <= 2 * eps / (1 - eps) * float(r.max() - r.min()) + 64 * 2.0 ** -53

    g64, absum, n_tok = _token_terms(m0, roll, A_t)
    assert n_tok == N
    _, dA_abs, _ = _token_terms(m0, roll, dA)  # Σ_jt |δA_j| |∇ log π| / N
    tol, f = _float32_bound(theta0, g64, absum, mgn, n, dA_abs)
    clipped = mgn is not None
    assert (f < 1) == clipped and (diag.grad_norm > max_grad_norm if clipped else True)

    d_tb = (_flat(m_trl) - _flat(m_bridge)).abs()
    assert (d_tb <= tol).all(), float((d_tb / tol).max())
    # each route against the float64 token-by-token step (one route's error is within the same bound)
    for m in (m_trl, m_bridge):
        err = (_flat(m) - (theta0 + LR * f * g64)).abs()
        assert (err <= tol).all(), float((err / tol).max())
    step = (_flat(m_bridge) - theta0).abs()
    assert float(step.max()) > 100 * float(tol.max())  # the bound is far below the step: a real check

    # negative controls: the per-group token mean, or no token weight at all, is another step
    for agg in ("token-mean", "seq-mean-token-sum"):
        m_wrong = copy.deepcopy(m0)
        OBLRPO(m_wrong, replace(step_cfg, aggregation=agg)).update(roll)
        if clipped and agg == "seq-mean-token-sum":
            continue  # a global rescale of ĝ: clipping removes it (checked unclipped)
        assert not ((_flat(m_wrong) - _flat(m_trl)).abs() <= tol).all(), agg
