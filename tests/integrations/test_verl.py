"""The verl adapter (oblr_theory.integrations.verl) without verl: its pure function equals the
registry on whole groups (any group order, unequal sizes), its S sources, and its refusals; its
``compute_advantage`` drop-in and ``patch_ray_trainer`` against small stand-ins for verl's modules.
The cross-checks against verl's and TRL's own code: tests/integrations/test_peers_verl_trl.py (-m peers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oblr_theory import estimators
from oblr_theory.integrations import verl as ov

from tolerances import rounding_tol

pytestmark = pytest.mark.torch

T = 6  # response tokens


def batch(sizes, seed, shuffle=True):
    """A verl-shaped batch: ``len(sizes)`` groups of the given sizes, rows shuffled (or grouped in
    order), outcome reward on each response's last token. Returns (rewards_bt, mask_bt, index, S_b,
    old_log_probs_bt, sum_pi_squared_bt, groups) with ``groups`` the row indices of each uid."""
    rng = np.random.default_rng(seed)
    bs = sum(sizes)
    uids = np.repeat(np.array([f"u{k}" for k in range(len(sizes))], dtype=object), sizes)
    perm = rng.permutation(bs) if shuffle else np.arange(bs)
    index = uids[perm]
    lengths = rng.integers(1, T + 1, size=bs)
    mask = torch.tensor(np.arange(T)[None, :] < lengths[:, None], dtype=torch.float64)
    rewards = torch.zeros(bs, T, dtype=torch.float64)
    rewards[torch.arange(bs), torch.tensor(lengths - 1)] = torch.tensor(rng.choice([0.0, 0.5, 1.0], size=bs))
    S = torch.tensor(rng.uniform(0.1, 3.0, size=bs))
    pi = torch.tensor(rng.uniform(0.05, 0.95, size=(bs, T)))
    sum_pi2 = pi * pi + torch.tensor(rng.uniform(0.0, 0.2, size=(bs, T)))
    groups = [np.flatnonzero(index == u) for u in dict.fromkeys(index.tolist())]
    return rewards, mask, index, S, pi.log(), sum_pi2, groups


def per_group_reference(name, rewards, mask, S, groups, **params):
    """The registry on each group alone, scattered back to the rows: the law the adapter must follow."""
    est = estimators.get(name, **params)
    r, ell = rewards.sum(-1), mask.sum(-1)
    out = torch.full_like(r, float("nan"))
    for rows in groups:
        ix = torch.tensor(rows)
        out[ix] = est.advantages(r[ix], S[ix], ell[ix])
    return out


def tol(G, rewards):
    # a baseline is a ratio of two G-term sums of terms at most max|r| (weights normalised), then a
    # subtraction: 4G + 16 operations on terms summing to at most 4G·max|r|
    return rounding_tol(4 * G + 16, 4 * G * max(1.0, float(rewards.abs().max())))


@pytest.mark.parametrize("name,params", [("optimal_loo", {}), ("opo_loo", {}), ("optimal_loo_shrink", {"lam": 0.3}),
                                         ("optimal", {}), ("rloo", {}), ("grpo", {"eps": 1e-6})])
@pytest.mark.parametrize("sizes", [(4, 4, 4), (2, 5, 3, 5)])
def test_equals_registry_on_whole_groups_any_order(name, params, sizes):
    rewards, mask, index, S, logp, spi2, groups = batch(sizes, seed=len(sizes))
    adv, ret = ov.group_advantages(rewards, mask, index, name, params=params, sq_norms=S)
    ref = per_group_reference(name, rewards, mask, S, groups, **params)
    assert torch.equal(adv, ret)
    assert torch.equal(adv * (1 - mask), torch.zeros_like(adv))  # padding gets nothing
    on = mask.bool()
    diff = (adv - ref[:, None] * mask)[on].abs().max().item()
    assert diff <= tol(max(sizes), rewards)
    # negative control: the same rows grouped in order of position instead of by uid differ
    if len(set(sizes)) == 1 and name != "grpo":
        wrong = np.repeat(np.arange(len(sizes)), sizes)
        bad, _ = ov.group_advantages(rewards, mask, wrong, name, params=params, sq_norms=S)
        assert (bad - adv).abs().max().item() > 1e3 * tol(max(sizes), rewards)


def test_row_permutation_permutes_the_advantages():
    rewards, mask, index, S, *_ = batch((3, 5, 4), seed=7)
    perm = torch.tensor(np.random.default_rng(1).permutation(len(index)))
    a, _ = ov.group_advantages(rewards, mask, index, sq_norms=S)
    b, _ = ov.group_advantages(rewards[perm], mask[perm], index[perm.numpy()], sq_norms=S[perm])
    assert (a[perm] - b).abs().max().item() <= tol(5, rewards)


def test_s_sources():
    rewards, mask, index, S, logp, spi2, groups = batch((4, 4), seed=3)
    proxy = ((1 - 2 * logp.exp() + spi2) * mask).sum(-1)
    got = ov.sequence_sq_norms(mask, s_source="otb_proxy", old_log_probs=logp, sum_pi_squared=spi2)
    assert (got - proxy).abs().max().item() <= rounding_tol(4 * T, float((3 * mask).sum(-1).max()))
    assert torch.equal(ov.sequence_sq_norms(mask, s_source="length"), mask.sum(-1))
    assert torch.equal(ov.sequence_sq_norms(mask, sq_norms=S, old_log_probs=logp, sum_pi_squared=spi2), S)
    assert torch.equal(ov.sequence_sq_norms(mask, old_log_probs=logp, sum_pi_squared=spi2), got)
    # the adapter uses the source it is given: the proxy's advantages are the registry's with S = proxy
    a, _ = ov.group_advantages(rewards, mask, index, old_log_probs=logp, sum_pi_squared=spi2)
    ref = per_group_reference("optimal_loo", rewards, mask, proxy, groups)
    assert (a - ref[:, None] * mask).abs().max().item() <= tol(4, rewards) + rounding_tol(4 * T, 12.0)
    # an estimator that needs no S runs without any S field
    ov.group_advantages(rewards, mask, index, "opo_loo")


@pytest.mark.parametrize("call,needle", [
    (lambda b: ov.group_advantages(*b[:3]), "S is not available"),
    (lambda b: ov.group_advantages(b[0], b[1], b[2], s_source="exact"), "oblr_sq_norms"),
    (lambda b: ov.group_advantages(b[0], b[1], b[2], s_source="otb_proxy", old_log_probs=b[4]), "sum_pi_squared"),
    (lambda b: ov.group_advantages(b[0], b[1], b[2], s_source="magic"), "s_source"),
    (lambda b: ov.group_advantages(b[0], b[1], None, sq_norms=b[3]), "index"),
    (lambda b: ov.group_advantages(b[0], b[1], b[2][:-1], sq_norms=b[3]), "one uid per response"),
    (lambda b: ov.group_advantages(b[0], b[1][:, :-1], b[2], sq_norms=b[3]), "shape"),
    (lambda b: ov.group_advantages(b[0], b[1], b[2], sq_norms=b[3][:-1]), "oblr_sq_norms"),
    (lambda b: ov.group_advantages(b[0], b[1], b[2], "opo_loo", params={"aggregation": "token-mean"}), "loss_agg_mode"),
    (lambda b: ov.group_advantages(b[0], b[1], b[2], "reinforce_pp"), "batch-coupled"),
    (lambda b: ov.group_advantages(b[0], b[1], b[2], "nope"), "unknown estimator"),
    (lambda b: ov.make_adv_fn("optimal_loo_shrink", params={"lam": float("nan")}), "lam"),
])
def test_refusals(call, needle):
    b = batch((3, 3), seed=5)
    with pytest.raises(ValueError, match=needle):
        call(b)


def test_group_too_small_is_refused_by_uid():
    rewards, mask, index, S, *_ = batch((3, 1, 3), seed=2)
    with pytest.raises(ValueError, match=r"uid 'u1' has 1"):
        ov.group_advantages(rewards, mask, index, sq_norms=S)


def test_adv_fn_has_verl_signature_and_reads_the_fields():
    rewards, mask, index, S, logp, spi2, _ = batch((4, 2, 4), seed=9)
    fn = ov.make_adv_fn("optimal_loo")
    a, r = fn(token_level_rewards=rewards.float(), response_mask=mask.float(), index=index, config=None,
              reward_baselines=None, **{ov.SQ_NORMS_FIELD: S})
    assert a.dtype == torch.float32 and torch.equal(a, r)
    ref, _ = ov.group_advantages(rewards.float(), mask.float(), index, sq_norms=S)
    assert torch.equal(a, ref)
    with pytest.raises(ValueError, match="S is not available"):
        fn(token_level_rewards=rewards, response_mask=mask, index=index, config=None)
    fn_len = ov.make_adv_fn("optimal_loo", s_source="length")
    a_len, _ = fn_len(token_level_rewards=rewards, response_mask=mask, index=index, config=None)
    b_len, _ = ov.group_advantages(rewards, mask, index, sq_norms=mask.sum(-1), s_source="exact")
    assert torch.equal(a_len, b_len)


# --- the drop-in for verl's ray_trainer.compute_advantage, against small stand-ins for verl ----------

class FakeDataProto:
    """The two attributes of verl's ``DataProto`` that the advantage step reads and writes."""

    def __init__(self, tensors, uid=None):
        self.batch = dict(tensors)
        self.non_tensor_batch = {} if uid is None else {"uid": uid}


@pytest.fixture
def fake_verl(monkeypatch):
    """Stand-ins for ``verl.trainer.ppo.core_algos`` (its registry) and ``ray_trainer`` (a
    ``compute_advantage`` that records its arguments), plus a module that bound it by name, as verl's
    v1 ``utils`` does. Returns (registry, calls, the stand-in function, the trainer-like module)."""
    import sys
    import types

    registry, calls = {}, []
    core = types.ModuleType(ov._CORE_ALGOS)
    core.ADV_ESTIMATOR_REGISTRY = registry

    def register_adv_est(name):
        def deco(fn):
            registry[name] = fn
            return fn
        return deco

    core.register_adv_est = register_adv_est

    def verl_compute_advantage(data, adv_estimator, gamma=1.0, lam=1.0, num_repeat=1,
                               norm_adv_by_std_in_grpo=True, config=None):
        calls.append((data, adv_estimator, gamma, lam, num_repeat, norm_adv_by_std_in_grpo, config))
        data.batch["advantages"] = data.batch["returns"] = "from verl"
        return data

    trainer = types.ModuleType(ov._RAY_TRAINER)
    trainer.compute_advantage = verl_compute_advantage
    user = types.ModuleType("oblr_test_fake_trainer")
    user.compute_advantage = verl_compute_advantage
    for mod in (core, trainer, user):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(ov, "_PATCHED", {})
    return registry, calls, verl_compute_advantage, user


def fake_data(seed=4, fields=("exact",), uid=True):
    rewards, mask, index, S, logp, spi2, _ = batch((4, 3, 5), seed)
    tensors = {"token_level_rewards": rewards, "response_mask": mask}
    if "exact" in fields:
        tensors[ov.SQ_NORMS_FIELD] = S
    if "otb_proxy" in fields:
        tensors.update(old_log_probs=logp, sum_pi_squared=spi2)
    return FakeDataProto(tensors, index if uid else None), (rewards, mask, index, S, logp, spi2)


@pytest.mark.parametrize("fields", ["exact", "otb_proxy"])
def test_drop_in_passes_the_s_fields(fake_verl, fields):
    registry, calls, *_ = fake_verl
    ov.register()
    data, (rewards, mask, index, S, logp, spi2) = fake_data(fields=(fields,))
    out = ov.compute_advantage(data, "optimal_loo", config=None)
    src = {"exact": {"sq_norms": S}, "otb_proxy": {"old_log_probs": logp, "sum_pi_squared": spi2}}[fields]
    ref, _ = ov.group_advantages(rewards, mask, index, "optimal_loo", **src)
    assert out is data and not calls
    assert torch.equal(data.batch["advantages"], ref) and torch.equal(data.batch["returns"], ref)
    # negative control: what verl's stock step passes (no S field) gets the length proxy at best, and
    # that differs; with s_source="auto" it is refused
    stock = {"token_level_rewards": rewards, "response_mask": mask, "config": None, "index": index}
    with pytest.raises(ValueError, match="S is not available.*patch_ray_trainer"):
        registry["optimal_loo"](**stock)
    a_len, _ = ov.make_adv_fn("optimal_loo", s_source="length")(**stock)
    assert (a_len - ref).abs().max().item() > 1e3 * tol(5, rewards)


def test_drop_in_delegates_every_other_estimator_unchanged(fake_verl):
    import enum

    registry, calls, *_ = fake_verl
    ov.register()
    registry["custom"] = lambda **kw: None  # registered by hand, not made by make_adv_fn

    class Est(str, enum.Enum):  # verl's AdvantageEstimator is a str Enum
        GRPO = "grpo"
        OURS = "optimal_loo"

    cfg = object()
    for name in ("grpo", Est.GRPO, "gae", "custom"):
        data, _ = fake_data()
        out = ov.compute_advantage(data, name, 0.9, 0.8, 4, False, cfg)
        assert out is data and data.batch["advantages"] == "from verl"
        assert calls.pop() == (data, name, 0.9, 0.8, 4, False, cfg)
    data, _ = fake_data()
    ov.compute_advantage(data, Est.OURS)
    assert not calls and isinstance(data.batch["advantages"], torch.Tensor)


@pytest.mark.parametrize("drop,needle", [
    ("s", "S is not available"), ("uid", "'uid'"), ("response_mask", "'response_mask'"),
    ("token_level_rewards", "'token_level_rewards'"), ("sq_norms_shape", "oblr_sq_norms")])
def test_drop_in_refuses_a_missing_field(fake_verl, drop, needle):
    ov.register()
    data, _ = fake_data(fields=() if drop == "s" else ("exact",), uid=drop != "uid")
    if drop in ("response_mask", "token_level_rewards"):
        del data.batch[drop]
    if drop == "sq_norms_shape":
        data.batch[ov.SQ_NORMS_FIELD] = data.batch[ov.SQ_NORMS_FIELD][:-1]
    with pytest.raises(ValueError, match=needle):
        ov.compute_advantage(data, "optimal_loo")
    assert "advantages" not in data.batch


def test_patch_and_unpatch_ray_trainer(fake_verl):
    import sys

    registry, calls, original, user = fake_verl
    ov.register()
    trainer = sys.modules[ov._RAY_TRAINER]
    assert set(ov.patch_ray_trainer()) == {ov._RAY_TRAINER, user.__name__}
    assert trainer.compute_advantage is ov.compute_advantage and user.compute_advantage is ov.compute_advantage
    assert set(ov.patch_ray_trainer()) == {ov._RAY_TRAINER, user.__name__}  # again: a no-op
    data, (rewards, mask, index, S, *_) = fake_data()
    trainer.compute_advantage(data, "grpo")  # the patched name reaches verl's own, without recursion
    assert calls.pop()[1] == "grpo"
    user.compute_advantage(data, "optimal_loo")
    ref, _ = ov.group_advantages(rewards, mask, index, sq_norms=S)
    assert torch.equal(data.batch["advantages"], ref) and not calls
    assert set(ov.unpatch_ray_trainer()) == {ov._RAY_TRAINER, user.__name__}
    assert trainer.compute_advantage is original and user.compute_advantage is original
    assert ov.unpatch_ray_trainer() == []
