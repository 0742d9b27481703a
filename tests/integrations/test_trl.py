"""OBLRPOTrainer against TRL's own trainers, on a tiny float64 Qwen3 on CPU (all offline).

Tolerances: TRL computes rewards and advantages in float32, so advantages agree to a few float32
roundings (unit roundoff 6e-8, |A| <= G, a few operations): 1e-5 absolute. Updates of float64
models from those advantages agree to the same relative level. Exact float64 paths (S against
the per-sequence loop, checkpointing on/off) agree to 1e-9 relative (loop vs ghost in float64,
docs/bridge.md).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from oblr_theory import estimators  # noqa: E402
from oblr_theory.bridge import score_gram  # noqa: E402
from oblr_theory.integrations.trl import OBLRPOConfig, OBLRPOTrainer  # noqa: E402

from .trl_helpers import (arithmetic_dataset, base_kwargs, capture, char_tokenizer,  # noqa: E402
                          dense_reward, tiny_model)

pytestmark = pytest.mark.torch


def _run(trainer_cls, config_cls, model, tmp_path, reward=dense_reward, **kw):
    args = config_cls(**base_kwargs(output_dir=str(tmp_path), **kw))
    tr = capture(trainer_cls)(model=model, reward_funcs=reward, args=args,
                              train_dataset=arithmetic_dataset(64), processing_class=char_tokenizer())
    tr.train()
    return tr


def _delta(model, before):
    return torch.cat([(p.detach() - before[n]).reshape(-1) for n, p in model.named_parameters()])


def test_grpo_estimator_matches_grpotrainer(tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    m0 = tiny_model(dtype=torch.float64)
    init = {n: p.detach().clone() for n, p in m0.named_parameters()}
    m_ref, m_ours = copy.deepcopy(m0), copy.deepcopy(m0)
    ref = _run(GRPOTrainer, GRPOConfig, m_ref, tmp_path / "a")
    ours = _run(OBLRPOTrainer, OBLRPOConfig, m_ours, tmp_path / "b", estimator="grpo",
                estimator_params={"eps": 1e-4, "ddof": 1}, lr_rule="constant")
    a_ref, a_ours = ref.captured[0], ours.captured[0]
    assert torch.equal(a_ref["completion_ids"], a_ours["completion_ids"])  # same samples
    assert a_ref["advantages"].abs().max() > 0.5  # the rewards have spread: a real comparison
    assert torch.allclose(a_ours["advantages"], a_ref["advantages"], rtol=0, atol=1e-5)
    d_ref, d_ours = _delta(m_ref, init), _delta(m_ours, init)
    assert d_ref.abs().max() > 0
    assert (d_ours - d_ref).abs().max() <= 1e-5 * d_ref.abs().max()
    # negative control: optimal_loo on the same rewards and S gives different advantages
    last = ours.oblrpo_last
    other = estimators.get("optimal_loo").advantages(last["rewards"].double().view(-1, 4),
                                                     sq_norms=last["sq_norms"].view(-1, 4))
    assert not torch.allclose(other.reshape(-1).float(), a_ours["advantages"], atol=1e-3)


def _counting(trainer_cls):
    """A subclass of ``trainer_cls`` that counts TRL's loss forwards (``_compute_loss`` calls) in
    its class attribute ``loss_forwards``."""

    class Counting(trainer_cls):
        loss_forwards = 0

        def _compute_loss(self, model, inputs):
            Counting.loss_forwards += 1
            return super()._compute_loss(model, inputs)

    return Counting


@pytest.mark.parametrize("loss_type, accumulation, temperature", [
    ("dapo", 1, 1.0), ("grpo", 1, 1.0), ("dr_grpo", 1, 1.0), ("luspo", 1, 1.0), ("dapo", 1, 0.7),
    pytest.param("dapo", 2, 1.0, marks=pytest.mark.slow), pytest.param("grpo", 2, 1.0, marks=pytest.mark.slow)])
def test_single_pass_update_equals_grpotrainer(tmp_path, loss_type, accumulation, temperature):
    """The update taken from the ghost pass (no forward or backward of TRL's loss) equals
    GRPOTrainer's, for each supported loss type, with gradient accumulation (two micro-batches
    of one group each per optimizer step) and at a sampling temperature; so does the logged loss.
    The two-pass path (``single_pass='off'``, first case) gives the same update. Negative
    control: the two-pass path runs TRL's loss forward, the single pass never does."""
    from trl import GRPOConfig, GRPOTrainer

    m0 = tiny_model(dtype=torch.float64)
    init = {n: p.detach().clone() for n, p in m0.named_parameters()}
    # unclipped (a clipped step hides the gradient's scale); completions of up to 8 tokens, so
    # that their lengths differ (loss types weigh them differently)
    kw = dict(loss_type=loss_type, max_steps=2, gradient_accumulation_steps=accumulation,
              per_device_train_batch_size=8 // accumulation, temperature=temperature,
              max_grad_norm=0.0, max_completion_length=8)
    m_ref, m_one, m_two = (copy.deepcopy(m0) for _ in range(3))
    ref = _run(GRPOTrainer, GRPOConfig, m_ref, tmp_path / "a", **kw)
    ours = dict(estimator="grpo", estimator_params={"eps": 1e-4, "ddof": 1}, lr_rule="constant", **kw)
    one_cls = _counting(OBLRPOTrainer)
    one = _run(one_cls, OBLRPOConfig, m_one, tmp_path / "b", single_pass="on", **ours)
    assert one.oblrpo_single_pass and one_cls.loss_forwards == 0
    # the second step's samples depend on the first update: a wrong update shows here first
    for step in range(2):
        assert torch.equal(ref.captured[step]["completion_ids"], one.captured[step]["completion_ids"])
    assert ref.captured[0]["advantages"].abs().max() > 0.5
    lengths = torch.cat([c["completion_mask"].sum(-1) for c in ref.captured])
    assert lengths.unique().numel() > 1  # the loss types' weights differ on this batch
    d_ref, d_one = _delta(m_ref, init), _delta(m_one, init)
    assert d_ref.abs().max() > 0
    assert (d_one - d_ref).abs().max() <= 1e-5 * d_ref.abs().max()
    if (loss_type, accumulation, temperature) == ("dapo", 1, 1.0):
        two_cls = _counting(OBLRPOTrainer)
        two = _run(two_cls, OBLRPOConfig, m_two, tmp_path / "c", single_pass="off", **ours)
        assert not two.oblrpo_single_pass and two_cls.loss_forwards == 2
        assert (_delta(m_two, init) - d_one).abs().max() <= 1e-5 * d_ref.abs().max()
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (ref, one)]
    assert len(losses[0]) == 2 and np.allclose(losses[1], losses[0], rtol=1e-4, atol=1e-6)


def test_single_pass_auto_falls_back_and_on_refuses(tmp_path):
    """``auto`` takes the two-pass path where the single pass is not valid; ``on`` refuses there,
    naming the setting."""
    from oblr_theory.integrations.trl import single_pass_reasons

    args = OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path), num_iterations=2))
    assert any("num_iterations" in w for w in single_pass_reasons(args, 1, False, False))
    tr = OBLRPOTrainer(model=tiny_model(), reward_funcs=dense_reward, args=args,
                       train_dataset=arithmetic_dataset(8), processing_class=char_tokenizer())
    assert not tr.oblrpo_single_pass
    for over, needle in ((dict(num_iterations=2), "num_iterations"),
                         (dict(sq_norms_source="logit"), "sq_norms_source"),
                         (dict(steps_per_generation=2), "steps_per_generation"),
                         (dict(loss_type="bnpo", lr_rule="constant"), "loss_type='bnpo'")):
        args = OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path), single_pass="on", **over))
        with pytest.raises(ValueError, match=needle):
            OBLRPOTrainer(model=tiny_model(), reward_funcs=dense_reward, args=args,
                          train_dataset=arithmetic_dataset(8), processing_class=char_tokenizer())


def test_rloo_estimator_matches_rlootrainer(tmp_path):
    from trl import RLOOConfig, RLOOTrainer

    m0 = tiny_model(dtype=torch.float64)
    ref = _run(RLOOTrainer, RLOOConfig, copy.deepcopy(m0), tmp_path / "a", beta=0.0)
    ours = _run(OBLRPOTrainer, OBLRPOConfig, copy.deepcopy(m0), tmp_path / "b", estimator="rloo",
                lr_rule="constant")
    a_ref, a_ours = ref.captured[0], ours.captured[0]
    assert torch.equal(a_ref["completion_ids"], a_ours["completion_ids"])
    assert a_ref["advantages"].abs().max() > 0.1
    assert torch.allclose(a_ours["advantages"].double(), a_ref["advantages"].double(), rtol=0, atol=1e-5)


def _batch_S_reference(model_state, out):
    """S of the captured batch from the per-sequence loop (the independent reference)."""
    m = tiny_model(dtype=torch.float64)
    m.load_state_dict(model_state)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)[None]
    attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)[None]
    comp = torch.cat([torch.zeros_like(out["prompt_mask"]), out["completion_mask"]], 1)[None]
    return {m_: score_gram(m, ids, attn, comp, method=m_).sq_norms_bg[0] for m_ in ("loop", "ghost")}


def test_S_equals_score_gram(tmp_path, checkpointing=True):
    m0 = tiny_model(dtype=torch.float64)
    state = copy.deepcopy(m0.state_dict())
    tr = _run(OBLRPOTrainer, OBLRPOConfig, m0, tmp_path, gradient_checkpointing=checkpointing)
    ref = _batch_S_reference(state, tr.captured[0])
    S = tr.oblrpo_last["sq_norms"]
    assert torch.allclose(S, ref["loop"], rtol=1e-9, atol=0)
    assert torch.allclose(S, ref["ghost"], rtol=1e-12, atol=0)


def test_checkpointing_on_off_same_S_and_update(tmp_path):
    m0 = tiny_model(dtype=torch.float64)
    init = {n: p.detach().clone() for n, p in m0.named_parameters()}
    runs = {}
    for gc in (True, False):
        m = copy.deepcopy(m0)
        tr = _run(OBLRPOTrainer, OBLRPOConfig, m, tmp_path / str(gc), gradient_checkpointing=gc,
                  snr_factor_min=0.5)
        runs[gc] = (tr.oblrpo_last["sq_norms"], _delta(m, init))
    (S1, d1), (S0, d0) = runs[True], runs[False]
    assert torch.allclose(S1, S0, rtol=1e-12, atol=0)
    assert d0.abs().max() > 0
    assert (d1 - d0).abs().max() <= 1e-9 * d0.abs().max()


@pytest.mark.parametrize("over, needle", [
    (dict(loss_type="bnpo"), "loss_type='bnpo'"),
    (dict(beta=0.04), "beta"),
    (dict(scale_rewards="none"), "scale_rewards"),
])
def test_unsupported_settings_raise_at_construction(tmp_path, over, needle):
    args = OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path), **over))
    with pytest.raises(ValueError, match=needle):
        OBLRPOTrainer(model=tiny_model(), reward_funcs=dense_reward, args=args,
                      train_dataset=arithmetic_dataset(8), processing_class=char_tokenizer())


def test_snr_refuses_groups_split_across_processes(tmp_path):
    from oblr_theory.integrations.trl import unsupported_reasons

    args = OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path)))
    assert unsupported_reasons(args, 2, False, False) == []
    args.per_device_train_batch_size = 6  # 2 processes x 6 = 3 groups of 4: one group split
    assert any("whole groups" in w for w in unsupported_reasons(args, 2, False, False))
    args.lr_rule = "constant"  # advantages alone gather S, so split groups are fine
    assert unsupported_reasons(args, 2, False, False) == []


def test_config_rejects_bad_values(tmp_path):
    for bad in (dict(estimator="nope"), dict(sq_norms_source="exact"), dict(lr_rule="cosine"),
                dict(snr_factor_min=0.5, snr_factor_max=0.2), dict(single_pass="yes")):
        with pytest.raises(ValueError):
            OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path), **bad))


def test_lora_with_several_steps_and_iterations_per_generation(tmp_path):
    """LoRA adapters (peft), steps_per_generation = 2, num_iterations = 2: runs; S is over the
    adapters only (it equals the ghost S of the adapter parameters on the captured batch)."""
    from peft import LoraConfig

    args = OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path), max_steps=2, steps_per_generation=2,
                                      per_device_train_batch_size=4, num_iterations=2))
    model = tiny_model(dtype=torch.float64)
    tr = capture(OBLRPOTrainer)(model=model, reward_funcs=dense_reward, args=args,
                                train_dataset=arithmetic_dataset(64), processing_class=char_tokenizer(),
                                peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model = tr.accelerator.unwrap_model(tr.model)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    tr.train()
    assert len(tr.captured) == 1  # one generation fed both optimizer steps
    S = tr.oblrpo_last["sq_norms"]
    assert torch.isfinite(S).all() and (S > 0).all()
    assert tr.oblrpo_last["pieces"].batch_size == 2


def _ddp_worker(rank, world, port, path):
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    saved = {}
    for single in ("on", "off"):
        args = OBLRPOConfig(**base_kwargs(output_dir=path, per_device_train_batch_size=4, max_steps=2,
                                          ddp_backend="gloo", single_pass=single, snr_factor_min=0.5))
        tr = capture(OBLRPOTrainer)(model=tiny_model(dtype=torch.float64), reward_funcs=dense_reward,
                                    args=args, train_dataset=arithmetic_dataset(64),
                                    processing_class=char_tokenizer())
        tr.train()
        last = tr.oblrpo_last
        saved[single] = {"S": last["sq_norms"], "A": last["advantages"],
                         "pieces": torch.tensor(last["pieces"][:4]), "world": tr.accelerator.num_processes,
                         "single": tr.oblrpo_single_pass,
                         "ids": torch.cat([c["completion_ids"].reshape(-1) for c in tr.captured]),
                         "params": torch.cat([p.detach().reshape(-1) for p in tr.model.parameters()])}
    torch.save(saved, f"{path}/rank{rank}.pt")


@pytest.mark.slow
def test_full_trl_run_in_two_gloo_processes(tmp_path):
    """accelerate's multi-CPU data parallelism (gloo), 2 steps, whole groups per process: both
    ranks hold the same gathered S and advantages, the same T7 pieces and the same parameters,
    with the single-pass update and with TRL's backward (DDP's gradient average); and the two
    paths give the same update. (Equality with one process is tested on the integration's pass
    in test_trl_pass.py: TRL's sampling differs between one and two processes.)"""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{k}.pt") for k in (0, 1))
    for single in ("on", "off"):
        a, b = r0[single], r1[single]
        assert a["world"] == 2 and a["S"].numel() == 8  # the gathered batch: 2 processes x 4
        assert a["single"] == (single == "on")
        for key in ("S", "A", "pieces", "params"):
            assert torch.equal(a[key], b[key]), (single, key)
    on, off = r0["on"], r0["off"]
    assert torch.equal(on["ids"], off["ids"])  # the same samples in both runs
    init = torch.cat([p.detach().reshape(-1) for p in tiny_model(dtype=torch.float64).parameters()])
    d_on, d_off = on["params"] - init, off["params"] - init
    assert d_off.abs().max() > 0
    assert (d_on - d_off).abs().max() <= 1e-5 * d_off.abs().max()


def test_t5_factor_scales_the_scheduled_rate_of_the_step(tmp_path):
    """SGD without momentum: the step with lr_rule='snr' is the constant-rate step times the
    factor (same samples, same advantages, same clipped gradient); the scheduled rate is
    restored after the step."""
    m0 = tiny_model(dtype=torch.float64)
    init = {n: p.detach().clone() for n, p in m0.named_parameters()}
    m_c, m_s = copy.deepcopy(m0), copy.deepcopy(m0)
    const = _run(OBLRPOTrainer, OBLRPOConfig, m_c, tmp_path / "c", lr_rule="constant")
    snr = _run(OBLRPOTrainer, OBLRPOConfig, m_s, tmp_path / "s", snr_factor_min=0.3, snr_factor_max=0.9)
    assert torch.equal(const.captured[0]["completion_ids"], snr.captured[0]["completion_ids"])
    f = snr.oblrpo_lr_factor
    assert 0.3 <= f <= 0.9
    d_c, d_s = _delta(m_c, init), _delta(m_s, init)
    assert d_c.abs().max() > 0
    assert (d_s - f * d_c).abs().max() <= 1e-12 * d_c.abs().max()
    assert all(g["lr"] == 0.1 and "oblrpo_scheduled_lr" not in g for g in snr.optimizer.param_groups)


def test_local_rule_records_the_step_it_took(tmp_path):
    """``lr_rule='local'`` (plain SGD): the parameters move by exactly ``η_eff ĝ`` with ``η_eff``
    the step the rule recorded for its next secant (rate × the clipping factor; the clip is
    active here: ``max_grad_norm`` is small); after three steps two secants are folded in and
    ``κ`` is logged. Refusals: another optimizer, a zero floor."""
    m = tiny_model(dtype=torch.float64)
    init = torch.cat([p.detach().reshape(-1).clone() for p in m.parameters()])
    tr = _run(OBLRPOTrainer, OBLRPOConfig, m, tmp_path / "a", lr_rule="local", snr_factor_min=0.05,
              max_grad_norm=1e-3)
    ghat, eta_eff = tr.oblrpo_last["ghat"], tr.oblrpo_local._prev[2]
    sched = 0.1
    assert 0 < eta_eff < tr.oblrpo_lr_factor * sched * 0.999  # clipped: the step is shorter
    delta = torch.cat([p.detach().reshape(-1) for p in m.parameters()]) - init
    assert (delta - eta_eff * ghat).abs().max() <= 1e-9 * delta.abs().max()
    tr3 = _run(OBLRPOTrainer, OBLRPOConfig, tiny_model(dtype=torch.float64), tmp_path / "b",
               lr_rule="local", snr_factor_min=0.05, max_steps=3)
    assert tr3.oblrpo_local.curvature.steps == 2
    kappas = [h["oblrpo/kappa"] for h in tr3.state.log_history if "oblrpo/kappa" in h]
    assert len(kappas) == 3 and all(math.isfinite(k) for k in kappas)
    for over, needle in ((dict(optim="adamw_torch"), "optim='sgd'"),
                         (dict(snr_factor_min=0.0), "snr_factor_min > 0")):
        args = OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path / "c"), lr_rule="local",
                                          **{"snr_factor_min": 0.05, **over}))
        with pytest.raises(ValueError, match=needle):
            OBLRPOTrainer(model=tiny_model(), reward_funcs=dense_reward, args=args,
                          train_dataset=arithmetic_dataset(8), processing_class=char_tokenizer())
    args = OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path / "d"), lr_rule="local", snr_factor_min=0.05,
                                      optim_args="momentum=0.9"))
    tr = OBLRPOTrainer(model=tiny_model(), reward_funcs=dense_reward, args=args,
                       train_dataset=arithmetic_dataset(8), processing_class=char_tokenizer())
    with pytest.raises(ValueError, match="momentum"):
        tr.create_optimizer()


def test_lora_single_pass_update_equals_two_pass(tmp_path):
    """LoRA adapters (peft): the single-pass update of the adapters equals TRL's backward
    (``single_pass='off'``), unclipped, one step; the base weights do not move."""
    from peft import LoraConfig

    m0 = tiny_model(dtype=torch.float64)
    deltas = {}
    for single in ("on", "off"):
        args = OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path / single), single_pass=single,
                                          lr_rule="constant", max_grad_norm=0.0, max_completion_length=8))
        tr = OBLRPOTrainer(model=copy.deepcopy(m0), reward_funcs=dense_reward, args=args,
                           train_dataset=arithmetic_dataset(64), processing_class=char_tokenizer(),
                           peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        assert tr.oblrpo_single_pass == (single == "on")
        model = tr.accelerator.unwrap_model(tr.model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        tr.train()
        deltas[single] = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    on, off = deltas["on"], deltas["off"]
    lora = [n for n in on if "lora_" in n]
    assert lora and all(on[n].abs().max() == 0 for n in on if "lora_" not in n)
    d_on = torch.cat([on[n].reshape(-1) for n in lora])
    d_off = torch.cat([off[n].reshape(-1) for n in lora])
    assert d_off.abs().max() > 0
    assert (d_on - d_off).abs().max() <= 1e-5 * d_off.abs().max()


def test_local_rule_refuses_parameter_groups_with_different_rates(tmp_path):
    """The secant divides by one step size along ĝ: groups with different rates are refused."""
    args = OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path), lr_rule="local", snr_factor_min=0.05))
    tr = OBLRPOTrainer(model=tiny_model(), reward_funcs=dense_reward, args=args,
                       train_dataset=arithmetic_dataset(8), processing_class=char_tokenizer())
    opt = tr.create_optimizer()
    tr.oblrpo_last = {"ghat": torch.ones(1)}
    opt.param_groups[0]["lr"] = 0.5 * opt.param_groups[-1]["lr"]
    if len(opt.param_groups) == 1:  # TRL made one group: add a second with another rate
        extra = torch.nn.Parameter(torch.zeros(1))
        opt.add_param_group({"params": [extra], "lr": 0.3})
    with pytest.raises(ValueError, match="one learning rate"):
        tr._oblrpo_local_factor(opt)
