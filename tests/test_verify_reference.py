"""verify/reference.py against values worked out by hand, and the DEF layer's rows."""

import math

import numpy as np
import pytest

from oblr_theory import estimators
from oblr_theory.verify import claims_definitions, reference as ref
from oblr_theory.verify.report import Context


def test_hand_computed_advantages():
    r, S, ell = [1.0, 0.0, 0.0], [1.0, 2.0, 3.0], [2.0, 1.0, 1.0]
    assert ref.group_advantages("rloo", r) == [1.0, -0.5, -0.5]
    assert ref.group_advantages("dr_grpo", r) == pytest.approx([2 / 3, -1 / 3, -1 / 3])
    # grpo, Bessel std of (1, 0, 0) = sqrt(1/3)
    assert ref.group_advantages("grpo", r, eps=0.0, ddof=1) == pytest.approx([2 / 3 * math.sqrt(3), -1 / 3 * math.sqrt(3),
                                                                             -1 / 3 * math.sqrt(3)])
    # optimal: baseline Σ S r / Σ S = 1/6; optimal_loo: row 0 others carry no reward, row 1 1/(1+3), row 2 1/(1+2)
    assert ref.group_advantages("optimal", r, S) == pytest.approx([5 / 6, -1 / 6, -1 / 6])
    assert ref.group_advantages("optimal_loo", r, S) == pytest.approx([1.0, -0.25, -1 / 3])
    assert ref.group_advantages("opo", r, ell=ell) == pytest.approx([0.5, -0.5, -0.5])
    # aggregation: token-mean multiplies by G / Σ ℓ = 3/4
    assert ref.group_advantages("rloo", r, ell=ell, aggregation="token-mean") == pytest.approx([0.75, -0.375, -0.375])


def test_hand_computed_zero_rules():
    fired = set()
    assert ref.group_advantages("optimal_loo", [1.0, 0.0, 0.5], [2.0, 0.0, 0.0], fired=fired) == [0.75, -1.0, -0.5]
    assert ref.group_advantages("optimal", [1.0, 0.0], [0.0, 0.0], fired=fired) == [0.5, -0.5]
    assert ref.group_advantages("grpo", [0.1, 0.1, 0.1], eps=0.0, ddof=1, fired=fired) == [0.0, 0.0, 0.0]
    assert {"optimal_loo: Σ_(k≠j) w_k = 0 -> mean of the others", "optimal: Σ_k w_k = 0 -> group mean",
            "grpo: std + eps = 0 -> A = 0"} == fired


def test_t7_and_ema_by_hand():
    u = [[1.0, 0.0], [0.0, 1.0]]  # ū = (1/2, 1/2), Σ̂ = (1/2 + 1/2)/1 = 1, V̂ = 1/2, ||ū||² = 1/2
    assert ref.snr_pieces(u) == pytest.approx((0.0, 0.5, 1.0, 0.5))
    assert ref.snr_hat(0.0, 0.0) == 0.0 and ref.snr_hat(1.0, 0.0) == math.inf
    snrs, nums, dens = ref.ema_snr([(1.0, 1.0), (3.0, 1.0)], 0.5)
    assert nums == pytest.approx([1.0, (0.25 + 1.5) / 0.75]) and dens == pytest.approx([1.0, 1.0])
    assert ref.snr_lr(0.1, 0.3, 0.05) == 0.05 and ref.snr_lr(math.inf, 0.3, 0.0) == 0.3


def test_every_registered_estimator_has_a_reference_definition():
    assert set(estimators.names()) <= ref.NAMES


def test_def_layer_holds_and_exercises_every_zero_rule():
    ctx = Context(np.random.default_rng(0), 1e-8, 0.99, True)
    rows = claims_definitions._registry_claim(ctx)
    assert all(r.passed for r in rows), [r.statement for r in rows if not r.passed]
    assert rows[-1].statement.startswith("every zero-denominator rule fires")


def test_def_row_fails_for_a_wrong_definition(monkeypatch):
    """Negative control: the registry row fails when the registry's rloo divides by G."""
    spec = estimators.spec("rloo")
    wrong = estimators._Spec("rloo", lambda r, S, ell: r - (r.sum(-1, keepdims=True) - r) / r.shape[-1],
                             spec.needs, spec.defaults, spec.unbiased, spec.min_group, spec.summary)
    monkeypatch.setitem(estimators._REGISTRY, "rloo", wrong)
    row = claims_definitions._registry_row("rloo", {}, "seq-mean-token-sum")
    assert not row.passed and row.statistic > row.threshold
