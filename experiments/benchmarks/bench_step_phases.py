"""Where an update's host time goes: one GRPO and one OBLR-PO update (as in ``bench_step.py``, same
model, batch and arguments) split into phases, with each phase's time and the operators it
dispatches. A diagnostic for the update's cost target, not the target itself (``bench_step.py``).

Phases are the update's own functions, timed by wrapping them for the run (restored afterwards).
Times are *exclusive*: a phase called inside another (the forward wrappers inside the forward, the
per-use ghost rules inside the ghost backward) is not counted in its caller, so the phases of one
update add up to its time; what no phase covers is ``other`` (the update's own Python, checks,
``zero_grad``). The forward's time includes PyTorch's slower call path for hooked modules.

- ``pass setup``: the ghost pass's module walk, forwards wrapped and restored;
- ``forward wrappers``: what the forward wrappers keep (layer inputs, gradient edges);
- ``forward``: the model's forward and the log-probabilities;
- ``graph check``: the walk of the autograd graph (every trainable parameter used only by hooked
  modules);
- ``backward``: autograd's backward (GRPO: the surrogate's, to the weights; OBLR-PO: the ghost
  pass's, to the layer outputs only);
- ``per-use rules (S)``: the ghost rules after the backward (``S``, and the kept factors);
- ``weighted pass``: ``weighted_gradients`` (the update gradient and the per-group norms for T7);
- ``advantages``, ``step`` (gradient norm, optimizer), ``diagnostics``.

Medians over ``--repeats`` interleaved rounds after ``--warmup``; each round times every update
once as it is (``median_ms``) and once with the phase wrappers (whose own cost is the difference;
the phases' medians need not add up exactly to the total's). On a GPU a phase's time is the host's
time to issue it, plus any wait for the device where it synchronises (the embedding's distinct ids
in the forward, the checks after the weighted pass, the step's scalars). Operators are counted in
one more update (compute operators, not views, as ``bench_step.count_ops``). Prints one JSON
document.

    OMP_NUM_THREADS=1 python experiments/benchmarks/bench_step_phases.py --hidden 16 --n-layers 28 --heads 2 \\
        --kv-heads 1 --head-dim 8 --intermediate 32 --vocab 64 --batch 4 --group 2 \\
        --prompt-len 2 --completion-len 4 --repeats 20      # every operator tiny: host-bound
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_step as bs  # noqa: E402
from oblr_theory.bridge import gram, logprobs  # noqa: E402
from oblr_theory.bridge.step import OBLRPO, StepConfig  # noqa: E402
from oblr_theory.per_sample import GhostPass  # noqa: E402

OTHER = "other"
R = GhostPass
# phase -> the functions an update runs in it, as (owner, attribute)
PHASES = {
    "pass setup": ((R, "__init__"), (R, "__enter__"), (R, "__exit__")),
    "forward wrappers": ((R, "_on_forward"),),
    "forward": ((gram, "forward_logprobs"), (logprobs, "forward_logprobs")),
    "graph check": ((R, "check_graph"),),
    "backward": ((R, "backward"), (torch.Tensor, "backward")),
    "per-use rules (S)": ((R, "_on_grad"), (R, "finalize")),
    "weighted pass": ((gram.ScoreGram, "weighted_gradients"),),
    "advantages": ((OBLRPO, "advantages"),),
    "step": ((OBLRPO, "_grad_sq_norm"),),
    "diagnostics": ((OBLRPO, "_diagnostics"),),
}


class PhaseClock:
    """Exclusive time and the current phase: a stack of phases; entering one pauses its caller."""

    def __init__(self):
        self.stack = [OTHER]
        self.times: dict[str, float] = defaultdict(float)
        self.last = time.perf_counter()

    def tick(self) -> None:
        """Add the time since the last tick to the current phase."""
        now = time.perf_counter()
        self.times[self.stack[-1]] += now - self.last
        self.last = now

    def enter(self, label: str) -> None:
        self.tick()
        self.stack.append(label)

    def leave(self) -> None:
        self.tick()
        self.stack.pop()

    def reset(self) -> None:
        self.times.clear()
        self.last = time.perf_counter()

    @property
    def current(self) -> str:
        return self.stack[-1]


@contextlib.contextmanager
def instrumented(clock: PhaseClock, optimizers: list):
    """Wrap every function of ``PHASES`` (and each optimizer's ``step``) so that it runs inside
    its phase; the originals are restored on exit."""
    targets = [(owner, attr, label) for label, fns in PHASES.items() for owner, attr in fns]
    targets += [(opt, "step", "step") for opt in optimizers]
    saved = [(owner, attr, owner.__dict__.get(attr, None), attr in owner.__dict__)
             for owner, attr, _ in targets]
    try:
        for owner, attr, label in targets:
            setattr(owner, attr, _timed(getattr(owner, attr), clock, label))
        yield clock
    finally:
        for owner, attr, original, own in reversed(saved):
            if own:
                setattr(owner, attr, original)
            else:  # the owner's wrapper hid an inherited (or class) attribute: remove it
                delattr(owner, attr)


def _timed(fn, clock: PhaseClock, label: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        clock.enter(label)
        try:
            return fn(*args, **kwargs)
        finally:
            clock.leave()

    return wrapper


def count_phase_ops(fn, clock: PhaseClock) -> dict[str, int]:
    """Compute operators (not views) one call of ``fn`` dispatches, by the phase running them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: dict[str, int] = defaultdict(int)

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not (func.is_view or func is torch.ops.aten._unsafe_view.default):
                counts[clock.current] += 1
            return func(*args, **(kwargs or {}))

    with _Count():
        fn()
    return dict(counts)


def run(cfg: bs.Config) -> dict:
    model = bs.build_model(cfg).train()
    roll = bs.build_batch(cfg)
    steps = {"grpo": OBLRPO(model, StepConfig(estimator="grpo", lr_rule="constant", eta_max=1e-6)),
             "oblr_po": OBLRPO(model, StepConfig(estimator="optimal_loo", lr_rule="snr", eta_max=1e-6))}
    plain = {k: [] for k in steps}  # update times without the phase wrappers
    totals = {k: [] for k in steps}  # and with them
    phases = {k: defaultdict(list) for k in steps}
    clock = PhaseClock()
    optimizers = [s.opt for s in steps.values()]
    for r in range(cfg.warmup + cfg.repeats):
        for name, step in steps.items():
            bs._sync(cfg.device)
            t = time.perf_counter()
            step.update(roll)
            plain[name].append(time.perf_counter() - t)
            with instrumented(clock, optimizers):
                bs._sync(cfg.device)
                clock.reset()
                t = time.perf_counter()
                step.update(roll)
                clock.tick()  # the tail of the update goes to ``other``
                totals[name].append(time.perf_counter() - t)
            if r >= cfg.warmup:
                for label, sec in clock.times.items():
                    phases[name][label].append(sec)
    with instrumented(clock, optimizers):
        ops = {name: count_phase_ops(lambda step=step: step.update(roll), clock)
               for name, step in steps.items()}
    jobs = {}
    median_ms = lambda v: 1e3 * statistics.median(v[cfg.warmup:])  # noqa: E731
    for name in steps:
        ms = {label: 1e3 * statistics.median(v) for label, v in phases[name].items()}
        jobs[name] = {
            "median_ms": median_ms(plain[name]),
            "median_ms_with_phase_wrappers": median_ms(totals[name]),
            "phases": {label: {"median_ms": ms.get(label, 0.0), "compute_ops": ops[name].get(label, 0)}
                       for label in sorted(set(ms) | set(ops[name]))},
            "compute_ops": sum(ops[name].values()),
        }
    labels = sorted(set(jobs["grpo"]["phases"]) | set(jobs["oblr_po"]["phases"]))
    zero = {"median_ms": 0.0, "compute_ops": 0}
    extra = {label: {k: jobs["oblr_po"]["phases"].get(label, zero)[k] - jobs["grpo"]["phases"].get(label, zero)[k]
                     for k in zero} for label in labels}
    return {
        "benchmark": "bench_step_phases",
        "config": asdict(cfg),
        "device": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu",
        "torch_threads": torch.get_num_threads(),
        "jobs": jobs,
        "oblr_po_minus_grpo": extra,
        "ratio_oblr_po_over_grpo": jobs["oblr_po"]["median_ms"] / jobs["grpo"]["median_ms"],
        "note": "exclusive host time per phase (a phase called inside another is not counted in "
                "its caller), measured with the phase wrappers (their own cost: "
                "median_ms_with_phase_wrappers - median_ms); on a GPU: the host's time to issue "
                "each phase",
        "git_revision": bs.git_revision(),
    }


def main(argv=None) -> None:
    cfg = bs.parse_config(argv, __doc__.split("\n\n")[0])
    print(json.dumps(run(cfg), indent=2, allow_nan=False))


if __name__ == "__main__":
    main()
