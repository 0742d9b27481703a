"""Data parallelism over prompt groups: two gloo processes (torchrun) give the same T7
statistics, learning rate and parameters as one process on the whole batch."""

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from oblr_theory.bridge import distributed as D  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_worker.py")
SHARED = ("grad_sq_norm", "snr_batch", "snr_ema", "grad_sq_norm_hat", "noise_var_hat", "lr")


def _run(args, out, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(env_extra or {})
    subprocess.run(args + [WORKER, str(out)], check=True, env=env, timeout=300,
                   capture_output=True, text=True)


def test_two_gloo_processes_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _run([sys.executable], one)
    try:
        _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
              "--master-port", "29533"], two, {"OMP_NUM_THREADS": "1"})
    except subprocess.CalledProcessError as e:
        pytest.fail(f"torchrun failed:\n{e.stderr[-3000:]}")
    modes = sorted(f.name.split("_")[1] for f in one.glob("rank0_*.pt"))
    assert "two.pt" in modes  # DDP (two-pass); "single.pt" too when score_gram keeps factors
    for mode in modes:
        ref = torch.load(one / f"rank0_{mode}")
        ranks = [torch.load(two / f"rank{k}_{mode}") for k in range(2)]
        for r in ranks:
            assert r["single_pass"] == ref["single_pass"]
            for d_ref, d in zip(ref["diags"], r["diags"]):
                for k in SHARED:  # global quantities: identical up to float64 summation order
                    assert d[k] == pytest.approx(d_ref[k], rel=1e-9, abs=1e-12), (mode, k)
            for p_ref, p in zip(ref["params"], r["params"]):
                torch.testing.assert_close(p, p_ref, rtol=1e-9, atol=1e-12)
        assert ref["diags"][-1]["noise_var_hat"] > 0  # the comparison is not vacuous


def test_whole_groups_stay_on_one_rank():
    assert D.shard_groups(list(range(6)), 1, 3) == [2, 3]
    with pytest.raises(ValueError, match="not divisible by the world size"):
        D.shard_groups(list(range(5)), 0, 2)


def test_single_process_needs_no_process_group():
    assert D.world() == (0, 1)
    t = torch.ones(2, dtype=torch.float64)
    assert D.all_reduce_sum(t) is t
