"""Cross-checks against the peers' own code (optional: ``python -m pytest -m peers``; skipped when
verl or TRL is absent). verl 0.9's ``core_algos`` advantage functions against the registry
(``oblr_theory.estimators`` and ``oblr_theory.peers``) on random batches, shuffled and of unequal
group sizes where verl allows it; the adapter's registered names through verl's own
``get_adv_estimator_fn``; the adapter's ``compute_advantage`` against verl's ``ray_trainer`` one; TRL's ``nanstd`` (the one pure function of its advantage code) against
``grpo`` with ``std_scope`` ``"group"`` and ``"batch"``. All in float64, so every tolerance is a
rounding bound (tests/tolerances.py)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from oblr_theory import estimators
from oblr_theory.integrations import verl as ov

from .test_verl import T, batch, tol
from tolerances import rounding_tol

pytestmark = [pytest.mark.peers, pytest.mark.torch]

SEEDS = range(4)
_prefixes = itertools.count()


def core_algos():
    """verl's ``core_algos``, or a skip (verl absent, or one of its import-time dependencies)."""
    try:
        from verl.trainer.ppo import core_algos as ca
    except ImportError as err:
        pytest.skip(f"verl.trainer.ppo.core_algos does not import: {err}")
    return ca


def close(a, b, G, scale):
    """``|a − b| ≤ 2 γ_n · scale`` with ``n = 4G + 16`` (G-term means/stds/ratios, then a few
    operations), ``scale`` = ``4G · max(1, max|r|) · max(1, max|A|)`` (a division by a std or a
    token-weighted scale multiplies the rounding of its numerator by at most ``max|A|``)."""
    bound = rounding_tol(4 * G + 16, 4 * G * max(1.0, scale) * max(1.0, float(b.abs().max())))
    return float((a - b).abs().max()) <= bound, (float((a - b).abs().max()), bound)


@pytest.mark.parametrize("seed", SEEDS)
def test_registered_names_run_through_verl_registry(seed):
    ca = core_algos()
    prefix = f"oblrtest{next(_prefixes)}_"
    fns = ov.register(prefix=prefix)
    assert set(fns) == {prefix + n for n in ov.DEFAULT_NAMES}
    rewards, mask, index, S, logp, spi2, _ = batch((4, 3, 5, 4), seed)
    for name in ov.DEFAULT_NAMES:
        fn = ca.get_adv_estimator_fn(prefix + name)
        a, ret = fn(token_level_rewards=rewards, response_mask=mask, index=index, config=None,
                    **{ov.SQ_NORMS_FIELD: S})
        ref, _ = ov.group_advantages(rewards, mask, index, name, sq_norms=S)
        assert torch.equal(a, ref) and torch.equal(a, ret)
    with pytest.raises(ValueError, match="already has an advantage estimator named 'rloo'"):
        ov.register(names=("rloo",))


def onepass32_tol(rewards, mask, index, adv):
    """verl's ``grpo_vectorized`` computes in float32 with the one-pass variance
    ``(Σr² − (Σr)²/n)/(n − 1)`` (``verl.utils.groupwise.group_mean_std``): its absolute error is at most
    ``γ_{2n}(u₃₂) · 2Σr²/(n − 1)``, a relative error of ``δv / (2v)`` in the std, so
    ``|δA| ≤ γ_{4n+16}(u₃₂) · (Σr²/((n − 1) v) · max|A| + 2 max|r| / std)`` per group (rewards are exact
    in float32: they are multiples of 1/2)."""
    u32 = 2.0 ** -24
    r = rewards.sum(-1)
    worst = 0.0
    for uid in dict.fromkeys(index.tolist()):
        ix = torch.tensor(np.flatnonzero(index == uid))
        g, n = r[ix], len(ix)
        var = float(g.var())  # two-pass, float64, Bessel
        if var == 0:
            continue  # a tied group: r − mean is exactly 0 in both, A = 0
        gam = (4 * n + 16) * u32 / (1 - (4 * n + 16) * u32)
        a_max = float(adv[ix].abs().max())
        worst = max(worst, gam * (float((g * g).sum()) / ((n - 1) * var) * a_max + 2 * float(g.abs().max()) / var ** 0.5))
    return worst


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("verl_name,name,params,kw", [
    ("grpo", "grpo", {"eps": 1e-6}, {"norm_adv_by_std_in_grpo": True}),
    ("grpo", "dr_grpo", {}, {"norm_adv_by_std_in_grpo": False}),
    ("grpo_vectorized", "grpo", {"eps": 1e-6}, {}),
    ("rloo", "rloo", {}, {}),
    ("rloo_vectorized", "rloo", {}, {}),
    ("opo", "opo", {}, {}),
    ("grpo_passk", "grpo_passk", {"eps": 1e-6, "norm": 1}, {"config": {"norm_adv_by_std_in_grpo": True}}),
    ("grpo_passk", "grpo_passk", {"norm": 0}, {"config": {"norm_adv_by_std_in_grpo": False}}),
])
def test_verl_group_estimators_equal_the_registry(seed, verl_name, name, params, kw):
    fn = core_algos().get_adv_estimator_fn(verl_name)
    rewards, mask, index, *_ = batch((4, 2, 5, 4), seed)  # shuffled rows, unequal groups
    a_verl, _ = fn(token_level_rewards=rewards.clone(), response_mask=mask, index=index, **kw)
    a_reg, _ = ov.group_advantages(rewards, mask, index, name, params=params, s_source="length")
    if verl_name == "grpo_vectorized":
        err, bound = float((a_verl - a_reg).abs().max()), onepass32_tol(rewards, mask, index, a_reg.max(-1).values)
        assert err <= bound, (err, bound)
        return
    ok, info = close(a_verl, a_reg, 5, float(rewards.abs().max()))
    assert ok, info


@pytest.mark.parametrize("fields", ["exact", "otb_proxy", "none"])
def test_batch_kwargs_reads_a_verl_dataproto(fields):
    """``batch_kwargs`` on verl's own ``DataProto``: the registered function gets the S field that the
    batch holds (``"auto"`` picks it), and refuses when the batch holds none."""
    core_algos()
    from verl import DataProto

    rewards, mask, index, S, logp, spi2, _ = batch((4, 3, 4), 11)
    tensors = {"token_level_rewards": rewards, "response_mask": mask}
    tensors.update({"exact": {ov.SQ_NORMS_FIELD: S}, "otb_proxy": {"old_log_probs": logp, "sum_pi_squared": spi2},
                    "none": {}}[fields])
    data = DataProto.from_dict(tensors=tensors, non_tensors={"uid": index})
    fn = ov.make_adv_fn("optimal_loo")
    if fields == "none":
        with pytest.raises(ValueError, match="S is not available"):
            fn(**ov.batch_kwargs(data))
        return
    a, _ = fn(**ov.batch_kwargs(data))
    src = {"exact": {"sq_norms": S}, "otb_proxy": {"old_log_probs": logp, "sum_pi_squared": spi2}}[fields]
    ref, _ = ov.group_advantages(rewards, mask, index, "optimal_loo", **src)
    assert torch.equal(a, ref)


def ray_trainer():
    """verl's ``ray_trainer`` (its ``compute_advantage``), or a skip naming the missing dependency."""
    core_algos()
    try:
        from verl.trainer.ppo import ray_trainer as rt
    except ImportError as err:
        pytest.skip(f"verl.trainer.ppo.ray_trainer does not import (it also needs torchdata, cachetools, "
                    f"uvicorn and fastapi): {err}")
    return rt


def dataproto(seed, **extra):
    """verl's own ``DataProto``: shuffled unequal groups, ``oblr_sq_norms`` and the OTB fields."""
    from verl import DataProto

    rewards, mask, index, S, logp, spi2, _ = batch((4, 3, 5, 4), seed)
    tensors = {"token_level_rewards": rewards, "response_mask": mask, ov.SQ_NORMS_FIELD: S,
               "old_log_probs": logp, "sum_pi_squared": spi2, **extra}
    return DataProto.from_dict(tensors={k: v.clone() for k, v in tensors.items()}, non_tensors={"uid": index.copy()})


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("name,norm", [("grpo", True), ("grpo", False), ("rloo", True)])
def test_drop_in_equals_verl_compute_advantage_on_its_own_estimators(seed, name, norm):
    """``oblr_verl.compute_advantage`` hands verl's own estimators to verl's ``compute_advantage``:
    the advantages and returns are identical, bit for bit."""
    rt = ray_trainer()
    from verl.trainer.ppo.core_algos import AdvantageEstimator

    est = AdvantageEstimator(name)
    d_verl = rt.compute_advantage(dataproto(seed), est, norm_adv_by_std_in_grpo=norm)
    d_ours = ov.compute_advantage(dataproto(seed), est, norm_adv_by_std_in_grpo=norm)
    for key in ("advantages", "returns"):
        assert torch.equal(d_verl.batch[key], d_ours.batch[key])


def test_patched_ray_trainer_gives_our_estimator_the_sq_norms():
    """Through ``verl.trainer.ppo.ray_trainer.compute_advantage`` (the name verl's trainer calls) on verl's
    ``DataProto``: unpatched, verl passes no ``S`` field and ``"auto"`` refuses (the negative control; the
    length proxy it leaves gives other advantages); patched, the estimator reads ``oblr_sq_norms``."""
    rt = ray_trainer()
    original = rt.compute_advantage
    prefix = f"oblrtest{next(_prefixes)}_"
    ov.register(names=("optimal_loo",), prefix=prefix)
    ov.register(names=("optimal_loo",), prefix=prefix + "len_", s_source="length")
    data = dataproto(5)
    b = data.batch
    ref, _ = ov.group_advantages(b["token_level_rewards"], b["response_mask"], data.non_tensor_batch["uid"],
                                 sq_norms=b[ov.SQ_NORMS_FIELD])
    with pytest.raises(ValueError, match="S is not available"):
        rt.compute_advantage(dataproto(5), prefix + "optimal_loo")
    a_len = rt.compute_advantage(dataproto(5), prefix + "len_optimal_loo").batch["advantages"]
    assert (a_len - ref).abs().max().item() > 1e3 * tol(5, b["token_level_rewards"])
    try:
        assert ov._RAY_TRAINER in ov.patch_ray_trainer()
        assert rt.compute_advantage is ov.compute_advantage
        out = rt.compute_advantage(data, prefix + "optimal_loo")
        assert torch.equal(out.batch["advantages"], ref) and torch.equal(out.batch["returns"], ref)
    finally:
        ov.unpatch_ray_trainer()
    assert rt.compute_advantage is original


def test_negative_control_a_different_estimator_fails_the_bound():
    """The comparison can fail: verl's ``rloo`` against the registry's ``dr_grpo`` (its ``(G−1)/G``
    scale) exceeds the bound by orders of magnitude."""
    fn = core_algos().get_adv_estimator_fn("rloo")
    rewards, mask, index, *_ = batch((4, 2, 5, 4), 0)
    a_verl, _ = fn(token_level_rewards=rewards.clone(), response_mask=mask, index=index)
    a_reg, _ = ov.group_advantages(rewards, mask, index, "dr_grpo")
    ok, (err, bound) = close(a_verl, a_reg, 5, float(rewards.abs().max()))
    assert not ok and err > 1e6 * bound


def grouped(B, G, seed):
    """Contiguous equal groups (the batch-coupled estimators' (B, G) layout)."""
    rewards, mask, index, S, logp, spi2, _ = batch((G,) * B, seed, shuffle=False)
    return rewards, mask, index, rewards.sum(-1).reshape(B, G), mask.sum(-1).reshape(B, G)


@pytest.mark.parametrize("seed", SEEDS)
def test_verl_batch_coupled_estimators_equal_the_peers(seed):
    ca = core_algos()
    B, G = 3, 4
    rewards, mask, index, r_bg, ell_bg = grouped(B, G, seed)
    cfg = SimpleNamespace(gamma=1.0)
    cases = [
        (ca.get_adv_estimator_fn("reinforce_plus_plus")(token_level_rewards=rewards, response_mask=mask, config=cfg),
         estimators.get("reinforce_pp")),
        (ca.get_adv_estimator_fn("reinforce_plus_plus_baseline")(
            token_level_rewards=rewards.clone(), response_mask=mask, index=index, config=cfg),
         estimators.get("reinforce_pp_baseline")),
        (ca.get_adv_estimator_fn("gpg")(token_level_rewards=rewards.clone(), response_mask=mask, index=index),
         estimators.get("gpg")),
    ]
    centred = r_bg - r_bg.mean(-1, keepdim=True)
    for ((a_verl, _), est), x in zip(cases, (r_bg, centred, None)):
        a = est.advantages(r_bg, lengths=ell_bg, batch_axis=0).reshape(-1)
        ok, (err, bound) = close(a_verl, a[:, None] * mask, B * G * T, float(rewards.abs().max()))
        if x is not None:
            bound += masked_mean_eps_tol(x, ell_bg, a)
        else:  # gpg: verl's α = bsz / count_nonzero(scores) divides an int by an int64 tensor, which torch
            bound += float(a.abs().max()) * 2.0 ** -24  # rounds to float32: relative error ≤ u₃₂ in α
        assert err <= bound, (est.name, err, bound)


def masked_mean_eps_tol(x, ell, adv):
    """verl's ``masked_mean`` divides by ``N + 1e-8`` (``N`` = the batch's token count), which the
    peers' definition of the token whitening leaves out: the token mean and variance shrink by the
    factor ``N/(N + 1e-8)``, so to first order ``|δA| ≤ (1e-8/N)(|μ|/sd + max|A|)``; twice that
    covers the second-order terms."""
    N = float(ell.sum())
    mu = float((ell * x).sum()) / N
    sd = (float((ell * (x - mu) ** 2).sum()) / (N - 1)) ** 0.5
    return 2e-8 / N * (abs(mu) / sd + float(adv.abs().max()))


@pytest.mark.parametrize("seed", SEEDS)
def test_verl_remax_equals_the_peer(seed):
    fn = core_algos().get_adv_estimator_fn("remax")
    B, G = 3, 4
    rewards, mask, index, r_bg, ell_bg = grouped(B, G, seed)
    greedy_b = torch.tensor(np.random.default_rng(seed).uniform(size=(B, 1)))
    a_verl, _ = fn(token_level_rewards=rewards, reward_baselines=greedy_b.expand(B, G).reshape(-1),
                   response_mask=mask)
    a = estimators.get("remax", greedy_reward=greedy_b).advantages(r_bg).reshape(-1)
    ok, info = close(a_verl, a[:, None] * mask, G, 1.0)
    assert ok, info


@pytest.mark.parametrize("seed", SEEDS)
def test_verl_otb_at_the_last_token_equals_the_peer_with_its_proxy(seed):
    """verl's OTB baseline at the last token of equal-length responses is the registry's ``otb``
    with ``S`` = the adapter's ``"otb_proxy"`` (at earlier tokens verl's baseline varies along the
    response, which no sequence-level map reproduces)."""
    fn = core_algos().get_adv_estimator_fn("optimal_token_baseline")
    rewards, mask, index, S, logp, spi2, groups = batch((4, 3, 5), seed)
    mask = torch.ones_like(mask)
    rewards = torch.zeros_like(rewards)
    rewards[:, -1] = torch.tensor(np.random.default_rng(seed).choice([0.0, 1.0], size=len(index)))
    a_verl, _ = fn(token_level_rewards=rewards, response_mask=mask, index=index, old_log_probs=logp,
                   sum_pi_squared=spi2, handle_zero_tail=False)
    W = ov.sequence_sq_norms(mask, s_source="otb_proxy", old_log_probs=logp, sum_pi_squared=spi2)
    est = estimators.get("otb")
    ref = torch.empty(len(index), dtype=torch.float64)
    for rows in groups:
        ix = torch.tensor(rows)
        ref[ix] = est.advantages(rewards.sum(-1)[ix], W[ix])
    ok, info = close(a_verl[:, -1], ref, 5 * T, 3.0 * T)
    assert ok, info


def token_batch(seed):
    """A verl batch (groups of 4, 3, 5 and 1, rows shuffled, unequal lengths) whose first group has a
    unique longest response of ``T`` tokens with reward 1 (so verl's zero tail matters there), outcome reward on
    each response's last token, and the OTB proxy ``w = 1 − 2π + Σπ²`` computed as verl does."""
    rewards, mask, index, _, logp, spi2, groups = batch((4, 3, 5, 1), seed)
    rng = np.random.default_rng(seed + 100)
    ell = mask.sum(-1).long()
    ell[torch.tensor(groups[0])] = torch.tensor([T] + list(rng.integers(1, T, size=len(groups[0]) - 1)))
    r = rewards.sum(-1)
    r[int(groups[0][0])] = 1.0  # a non-zero reward, so that the zero tail changes its advantage
    mask = (torch.arange(T)[None, :] < ell[:, None]).to(torch.float64)
    rewards = torch.zeros_like(rewards)
    rewards[torch.arange(len(r)), ell - 1] = r
    w = 1 - 2 * torch.exp(logp) + spi2
    return rewards, mask, index, logp, spi2, w, groups


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("zero_tail", [True, False])
def test_verl_token_level_otb_equals_otb_token_advantages(seed, zero_tail):
    """verl's ``compute_optimal_token_baseline_advantage`` (every token, every group: a group of one,
    unequal lengths, the zero tail) equals :func:`oblr_theory.peers_token.otb_token_advantages` on each
    group; the leave-one-out form (not verl's) must differ (negative control)."""
    from oblr_theory import peers_token

    fn = core_algos().get_adv_estimator_fn("optimal_token_baseline")
    rewards, mask, index, logp, spi2, w, groups = token_batch(seed)
    a_verl, _ = fn(token_level_rewards=rewards, response_mask=mask, index=index, old_log_probs=logp,
                   sum_pi_squared=spi2, handle_zero_tail=zero_tail)
    r = rewards.sum(-1)
    loo_gap = 0.0
    for rows in groups:
        ix = torch.tensor(rows)
        args = (r[ix].numpy(), w[ix].numpy(), mask[ix].numpy())
        ours = peers_token.otb_token_advantages(*args, zero_tail=zero_tail)
        # G-term sums of ≤T-term cumulative sums, one division: n = 2T + 2G + 8, |A| ≤ 2 max|r|
        bound = rounding_tol(2 * T + 2 * len(rows) + 8, 2.0 * max(1.0, float(r.abs().max())))
        err = float(np.max(np.abs(a_verl[ix].numpy() - ours)))
        assert err <= bound, (rows, err, bound)
        if len(rows) > 1:
            loo = peers_token.otb_token_advantages(*args, zero_tail=zero_tail, leave_one_out=True)
            loo_gap = max(loo_gap, float(np.max(np.abs(a_verl[ix].numpy() - loo))) / bound)
    assert loo_gap > 1e6
    ix0 = torch.tensor(groups[0])  # the zero tail is exercised: it changes group 0's longest response
    args0 = (r[ix0].numpy(), w[ix0].numpy(), mask[ix0].numpy())
    assert not np.array_equal(peers_token.otb_token_advantages(*args0, zero_tail=True),
                              peers_token.otb_token_advantages(*args0, zero_tail=False))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scope", ["group", "batch"])
def test_trl_nanstd_scaling_equals_grpo(seed, scope):
    """TRL 1.16 ``GRPOTrainer`` (``sum_then_normalize``): ``(r − group mean) / (nanstd(·) + 1e-4)`` with
    ``nanstd`` over each group (``scale_rewards="group"``) or over the batch (``"batch"``)."""
    trl_utils = pytest.importorskip("trl.trainer.utils")
    B, G = 3, 4
    r = torch.tensor(np.random.default_rng(seed).choice([0.0, 0.5, 1.0], size=(B, G)))
    std = trl_utils.nanstd(r, dim=1, keepdim=True) if scope == "group" else trl_utils.nanstd(r.reshape(-1))
    a_trl = (r - torch.nanmean(r, dim=1, keepdim=True)) / (std + 1e-4)
    est = estimators.get("grpo", eps=1e-4, std_scope=scope)
    a = est.advantages(r, batch_axis=0 if scope == "batch" else None)
    ok, (err, bound) = close(a_trl, a, B * G, 1.0)
    # nanstd's Bessel factor ``count / (count − 1)`` divides two int64 tensors, which torch does in
    # float32 (the default dtype): a relative error of at most u₃₂ = 2⁻²⁴ in the variance, u₃₂/2 in the
    # std, so |δA| ≤ |A| u₃₂/2 (to first order; the bound doubles it)
    bound += float(a.abs().max()) * 2.0 ** -24
    assert err <= bound, (err, bound)
