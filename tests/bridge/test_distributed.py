"""Data parallelism over prompt groups: two gloo processes (torchrun) give the same T7
statistics, learning rate and parameters as one process on the whole batch, with DDP and with
FSDP2 (parameters and gradients sharded)."""

import os
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from oblr_theory.bridge import distributed as D  # noqa: E402
from oblr_theory.bridge.step import grad_sq_norm  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_worker.py")
SHARED = ("grad_sq_norm", "snr_batch", "snr_ema", "grad_sq_norm_hat", "noise_var_hat", "lr")


def _run(args, out, worker_args=(), env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(env_extra or {})
    try:
        subprocess.run(args + [WORKER, str(out), *worker_args], check=True, env=env, timeout=300,
                       capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"{' '.join(args[-4:])} failed:\n{e.stderr[-3000:]}")


def _free_port() -> int:
    """A port nothing listens on now, picked by the OS (a fixed port collides with a parallel run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out, worker_args=()):
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
          "--master-port", str(_free_port())], out, worker_args, {"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process on the whole batch: ``rank0_two.pt`` (and ``rank0_single.pt``)."""
    one = tmp_path_factory.mktemp("one")
    _run([sys.executable], one, env_extra={"OMP_NUM_THREADS": "1"})
    return one


def _assert_matches(ref, r, mode):
    """Global diagnostics and full parameters of one rank equal the one-process reference."""
    assert len(r["diags"]) == len(ref["diags"]) > 0
    for d_ref, d in zip(ref["diags"], r["diags"]):
        for k in SHARED:  # global quantities: identical up to float64 summation order
            assert d[k] == pytest.approx(d_ref[k], rel=1e-9, abs=1e-12), (mode, k)
    assert len(r["params"]) == len(ref["params"]) > 0
    for p_ref, p in zip(ref["params"], r["params"]):
        torch.testing.assert_close(p, p_ref, rtol=1e-9, atol=1e-12)


def _assert_not_vacuous(ref, ranks):
    """The ranks saw different groups, and the update moved the parameters far beyond 1e-9."""
    assert ref["diags"][-1]["noise_var_hat"] > 0
    assert ranks[0]["diags"][0]["loss"] != ranks[1]["diags"][0]["loss"]  # local: different groups
    moved = max(float((p - p0).abs().max()) for p, p0 in zip(ref["params"], ref["initial"]))
    assert moved > 1e-4


def test_two_gloo_processes_match_one_process(reference, tmp_path):
    _torchrun(tmp_path)
    modes = sorted(f.name.split("_")[1] for f in reference.glob("rank0_*.pt"))
    assert "two.pt" in modes  # DDP (two-pass); "single.pt" too when score_gram keeps factors
    for mode in modes:
        ref = torch.load(reference / f"rank0_{mode}")
        ranks = [torch.load(tmp_path / f"rank{k}_{mode}") for k in range(2)]
        for r in ranks:
            assert r["single_pass"] == ref["single_pass"]
            _assert_matches(ref, r, mode)
        _assert_not_vacuous(ref, ranks)


def test_two_gloo_fsdp_processes_match_one_process(reference, tmp_path):
    """FSDP2 on CPU (gloo): the ghost Gram through sharded layers; the gradient from FSDP's
    reduce-scatter (two passes) or from the ghost factors averaged into the shards (single
    pass); ``||ĝ||²`` from the shards; each equal to one process's update of the same mode."""
    _torchrun(tmp_path, ["fsdp"])
    for mode, ref_mode in (("fsdp", "two"), ("fsdp_single", "single")):
        ref = torch.load(reference / f"rank0_{ref_mode}.pt")
        ranks = [torch.load(tmp_path / f"rank{k}_{mode}.pt") for k in range(2)]
        for r in ranks:
            assert r["single_pass"] == ref["single_pass"] == (mode == "fsdp_single")
            assert r["n_sharded"] == len(r["params"])  # every parameter was a DTensor shard
            assert r["outside_use_caught"]  # the graph check sees through FSDP's unsharded copies
            _assert_matches(ref, r, mode)
        _assert_not_vacuous(ref, ranks)


def test_fsdp_without_a_process_group_is_unsharded():
    from oblr_theory.bridge.models import tiny_qwen3
    from oblr_theory.bridge.step import StepConfig

    algo = D.fsdp_oblrpo(tiny_qwen3(seed=0), StepConfig())
    assert algo.single_pass and all(type(p) is torch.nn.Parameter for p in algo.params)


def test_fsdp_under_gloo_keeps_a_cpu_model_on_the_cpu_beside_an_accelerator(monkeypatch, tmp_path):
    """``fully_shard``'s default mesh follows the visible accelerator and moves the shards there,
    where gloo cannot run FSDP's collectives; under gloo :func:`shard_fsdp` builds a CPU mesh.
    One gloo process; the accelerator is simulated, and ``fully_shard``'s own default is shown to
    follow it (the negative control: without the CPU mesh the test fails)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from oblr_theory.bridge.models import tiny_qwen3

    assert D.default_mesh_device("gloo") == "cpu" and D.default_mesh_device("nccl") is None
    monkeypatch.setattr(torch._C, "_get_accelerator", lambda: torch.device("cuda"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        plain = torch.nn.Linear(2, 2)
        try:
            fully_shard(plain)
            default = {p.device.type for p in plain.parameters()}
        except (RuntimeError, AssertionError):  # this CPU-only torch refuses the cuda mesh
            default = {"cuda"}
        assert default == {"cuda"}
        model = D.shard_fsdp(tiny_qwen3(seed=0))
        assert {p.device_mesh.device_type for p in model.parameters()} == {"cpu"}
        assert {p.device.type for p in model.parameters()} == {"cpu"}
    finally:
        D.shutdown()


def test_whole_groups_stay_on_one_rank():
    assert D.shard_groups(list(range(6)), 1, 3) == [2, 3]
    with pytest.raises(ValueError, match="not divisible by the world size"):
        D.shard_groups(list(range(5)), 0, 2)


def test_single_process_needs_no_process_group():
    assert D.world() == (0, 1)
    D.shutdown()  # nothing to tear down: a no-op
    t = torch.ones(2, dtype=torch.float64)
    assert D.all_reduce_sum(t) is t
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    p.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert float(grad_sq_norm([p])) == 25.0


@pytest.mark.parametrize("arch", ["qwen3", "gpt2"])
def test_decoder_layers_come_from_the_models_no_split_modules(arch):
    """The layers FSDP shards one by one are the model's ``_no_split_modules`` blocks (Qwen3's
    ``model.layers``, GPT-2's ``transformer.h``); a model that declares none is refused."""
    from bridge_helpers import tiny_model

    model = tiny_model(arch)
    expect = model.model.layers if arch == "qwen3" else model.transformer.h
    assert [id(m) for m in D.decoder_layers(model)] == [id(m) for m in expect]
    with pytest.raises(ValueError, match="pass layers="):
        D.decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
