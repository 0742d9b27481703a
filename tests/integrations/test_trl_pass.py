"""The per-generation pass of the TRL integration (no TRL needed): T7's two sums against
per-group gradients built by autograd, and the data-parallel split (two ranks) against one
process, with threads (fast) and with two gloo processes (slow).

Tolerance: float64 throughout; ghost vs per-sequence loop agree to ~1e-12 relative
(docs/bridge.md), so 1e-9 relative leaves three orders of magnitude of margin.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from oblr_theory import estimators
from oblr_theory.bridge import score_gram, sequence_logprobs
from oblr_theory.integrations._trl_math import sequence_weights
from oblr_theory.integrations._trl_pass import Comm, LocalBatch, oblrpo_generation

from .trl_helpers import tiny_model

pytestmark = pytest.mark.torch
G = 4


def make_batch(n_groups: int, seed: int = 0):
    """Left-padded prompts (2..4 tokens) and right-padded completions (1..5 tokens), rewards
    in {0, 1} with spread in every group."""
    g = torch.Generator().manual_seed(seed)
    n, P, C = n_groups * G, 4, 5
    ids = torch.randint(2, 16, (n, P + C), generator=g)
    attn = torch.zeros(n, P + C, dtype=torch.long)
    loss = torch.zeros(n, P + C, dtype=torch.long)
    for i in range(n):
        p = int(torch.randint(2, P + 1, (1,), generator=g))
        c = int(torch.randint(1, C + 1, (1,), generator=g))
        attn[i, P - p:P + c] = 1
        loss[i, P:P + c] = 1
    ids = ids * attn  # pad id 0
    r = torch.zeros(n, dtype=torch.float64)
    r[torch.randperm(n, generator=g)[: n // 2]] = 1.0
    r.view(-1, G)[:, 0], r.view(-1, G)[:, 1] = 1.0, 0.0  # spread in every group
    return LocalBatch(ids, attn, loss), r


def rows(batch: LocalBatch, sl: slice) -> LocalBatch:
    return LocalBatch(batch.input_ids[sl], batch.attention_mask[sl], batch.loss_mask[sl])


@pytest.fixture(scope="module")
def model():
    return tiny_model(dtype=torch.float64)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_t7_sums_equal_per_group_gradients(model, loss_type):
    batch, r = make_batch(3)
    est = estimators.get("optimal_loo")
    res = oblrpo_generation(model, batch, r, est, group_size=G, rows_per_pass=8, loss_type=loss_type)
    # reference: S from the per-sequence loop, A from the registry, u_b by autograd
    ref = score_gram(model, batch.input_ids[None], batch.attention_mask[None], batch.loss_mask[None],
                     method="loop")
    S = ref.sq_norms_bg[0]
    assert torch.allclose(res.sq_norms, S, rtol=1e-9, atol=0)
    A = est.advantages(r.view(-1, G), sq_norms=S.view(-1, G)).reshape(-1)
    assert torch.allclose(res.advantages, A, rtol=1e-9, atol=1e-12)
    lam = sequence_weights(loss_type, batch.lengths)
    params = [p for p in model.parameters() if p.requires_grad]
    us = []
    for b in range(3):
        sl = slice(b * G, (b + 1) * G)
        seq = sequence_logprobs(model, batch.input_ids[None, sl], batch.attention_mask[None, sl],
                                batch.loss_mask[None, sl]).seq_logp_bg[0]
        grads = torch.autograd.grad((lam[sl] * A[sl] * seq).sum() / G, params)
        us.append(torch.cat([x.reshape(-1) for x in grads]))
    U = torch.stack(us)
    assert res.n_groups == 3
    assert np.isclose(res.sum_group_sq, float((U * U).sum()), rtol=1e-9, atol=0)
    assert np.isclose(res.mean_grad_sq, float(U.mean(0).pow(2).sum()), rtol=1e-9, atol=0)
    assert all(p.grad is None for p in params)  # the caller's gradients are untouched
    # negative control: lambda matters (grpo's 1/length changes the sums when lengths differ)
    other = oblrpo_generation(model, batch, r, est, group_size=G,
                              loss_type="grpo" if loss_type == "dapo" else "dapo")
    assert not np.isclose(other.sum_group_sq, res.sum_group_sq, rtol=1e-6)


def _flat_grad(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_update_factor_adds_the_scaled_gradient_of_the_batch(model, loss_type):
    """The single-pass update: ``.grad ← .grad + κ Σ_b u_b`` with ``Σ_b u_b`` by autograd of
    ``Σ_j λ_j A_j log π(y_j) / G``; the caller's earlier gradient is kept (added to)."""
    m = copy.deepcopy(model)
    batch, r = make_batch(3, seed=3)
    params = [p for p in m.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    before = _flat_grad(params).clone()
    kappa = -0.7
    res = oblrpo_generation(m, batch, r, estimators.get("optimal_loo"), group_size=G,
                            loss_type=loss_type, update_factor=kappa)
    lam = sequence_weights(loss_type, batch.lengths)
    seq = sequence_logprobs(m, batch.input_ids[None], batch.attention_mask[None],
                            batch.loss_mask[None]).seq_logp_bg[0]
    ref = torch.autograd.grad((lam * res.advantages * seq).sum() / G, params)
    ref = torch.cat([x.reshape(-1) for x in ref])
    got = _flat_grad(params) - before
    assert ref.abs().max() > 0
    assert (got - kappa * ref).abs().max() <= 1e-9 * ref.abs().max()
    # ||Σ_b u_b||² / B² is the T7 piece, from the same kept gradient
    assert np.isclose(res.mean_grad_sq, float(ref.pow(2).sum()) / 9, rtol=1e-9)
    # negative control: without update_factor the caller's gradient is restored unchanged
    oblrpo_generation(m, batch, r, estimators.get("optimal_loo"), group_size=G, loss_type=loss_type)
    assert torch.equal(_flat_grad(params) - before, got)


def test_update_factor_needs_the_ghost_weighted_pass(model):
    batch, r = make_batch(2)
    for kw in (dict(), dict(loss_type="dapo", source="logit")):
        with pytest.raises(ValueError, match="update_factor"):
            oblrpo_generation(model, batch, r, estimators.get("optimal_loo"), group_size=G,
                              update_factor=-1.0, **kw)


class ThreadComm(Comm):
    """Ranks as threads of one process: gather and all-reduce through shared slots."""

    def __init__(self, rank: int, world: int, shared: dict):
        self.rank, self.world, self.shared = rank, world, shared

    def _exchange(self, x):
        self.shared["slots"][self.rank] = x.detach().clone()
        self.shared["barrier"].wait()
        vals = list(self.shared["slots"])
        self.shared["barrier"].wait()
        return vals

    def gather(self, x):
        return torch.cat(self._exchange(x))

    def all_reduce_sum_(self, x):
        x.copy_(sum(self._exchange(x)))
        return x


def run_ranks(model, batch, r, world, models=None, **kw):
    """``oblrpo_generation`` on ``world`` contiguous row slices, one thread (and model copy) each;
    the copies are appended to ``models`` (in rank order) when it is given."""
    n = batch.input_ids.shape[0] // world
    shared = {"barrier": threading.Barrier(world), "slots": [None] * world}
    out, errors = [None] * world, []
    copies = [copy.deepcopy(model) for _ in range(world)]
    if models is not None:
        models.extend(copies)

    def work(k):
        try:
            out[k] = oblrpo_generation(copies[k], rows(batch, slice(k * n, (k + 1) * n)), r,
                                       estimators.get("optimal_loo"), group_size=G,
                                       comm=ThreadComm(k, world, shared), **kw)
        except Exception as err:  # surfaced below
            errors.append(err)
            shared["barrier"].abort()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def test_two_ranks_equal_one_process(model):
    batch, r = make_batch(4, seed=1)
    one = oblrpo_generation(model, batch, r, estimators.get("optimal_loo"), group_size=G,
                            loss_type="dapo")
    for res in run_ranks(model, batch, r, 2, loss_type="dapo"):
        assert torch.allclose(res.sq_norms, one.sq_norms, rtol=1e-12, atol=0)
        assert torch.allclose(res.advantages, one.advantages, rtol=1e-12, atol=1e-15)
        assert res.n_groups == one.n_groups == 4
        assert np.isclose(res.sum_group_sq, one.sum_group_sq, rtol=1e-12)
        assert np.isclose(res.mean_grad_sq, one.mean_grad_sq, rtol=1e-12)


def test_two_ranks_keep_the_one_process_update(model):
    """Under the split, every rank's kept gradient is the whole batch's (the all-reduced sum)."""
    batch, r = make_batch(4, seed=1)
    one_model = copy.deepcopy(model)
    oblrpo_generation(one_model, batch, r, estimators.get("optimal_loo"), group_size=G,
                      loss_type="grpo", update_factor=-2.0)
    params = [p for p in one_model.parameters() if p.requires_grad]
    ref = _flat_grad(params)
    models = []
    run_ranks(model, batch, r, 2, models=models, loss_type="grpo", update_factor=-2.0)
    for m in models:
        got = _flat_grad([p for p in m.parameters() if p.requires_grad])
        assert (got - ref).abs().max() <= 1e-12 * ref.abs().max()
    assert all(p.grad is None for p in model.parameters())  # the rank copies were used


def test_group_split_across_ranks_gets_whole_group_advantages(model):
    batch, r = make_batch(3, seed=2)  # 12 rows, 2 ranks x 6: the middle group is split
    one = oblrpo_generation(model, batch, r, estimators.get("optimal_loo"), group_size=G)
    ranks = run_ranks(model, batch, r, 2)
    for res in ranks:
        assert torch.allclose(res.advantages, one.advantages, rtol=1e-12, atol=1e-15)
    # negative control: advantages from each rank's own rows only (no gather) differ
    alone = [estimators.get("optimal_loo").advantages(
        r[k * 6:(k + 1) * 6][:4].view(1, G), sq_norms=one.sq_norms[k * 6:(k + 1) * 6][:4].view(1, G))
        for k in range(2)]
    assert not torch.allclose(alone[1].reshape(-1), one.advantages[6:10], atol=1e-6)
    with pytest.raises(ValueError, match="whole groups"):
        run_ranks(model, batch, r, 2, loss_type="dapo")


def _gloo_worker(rank, world, port, path):
    import torch.distributed as dist

    class DistComm(Comm):
        def __init__(self):
            self.rank, self.world = rank, world

        def gather(self, x):
            out = [torch.empty_like(x) for _ in range(world)]
            dist.all_gather(out, x.contiguous())
            return torch.cat(out)

        def all_reduce_sum_(self, x):
            dist.all_reduce(x)
            return x

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        batch, r = make_batch(4, seed=1)
        n = batch.input_ids.shape[0] // world
        res = oblrpo_generation(tiny_model(dtype=torch.float64), rows(batch, slice(rank * n, (rank + 1) * n)),
                                r, estimators.get("optimal_loo"), group_size=G, comm=DistComm(),
                                loss_type="dapo")
        torch.save({"S": res.sq_norms, "A": res.advantages, "sum": res.sum_group_sq,
                    "mean": res.mean_grad_sq, "B": res.n_groups}, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(model, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_worker, args=(2, port, str(tmp_path / "res")), nprocs=2, join=True)
    batch, r = make_batch(4, seed=1)
    one = oblrpo_generation(model, batch, r, estimators.get("optimal_loo"), group_size=G,
                            loss_type="dapo")
    for k in range(2):
        res = torch.load(f"{tmp_path / 'res'}.{k}")
        assert torch.allclose(res["S"], one.sq_norms, rtol=1e-12, atol=0)
        assert torch.allclose(res["A"], one.advantages, rtol=1e-12, atol=1e-15)
        assert res["B"] == one.n_groups
        assert np.isclose(res["sum"], one.sum_group_sq, rtol=1e-12)
        assert np.isclose(res["mean"], one.mean_grad_sq, rtol=1e-12)
