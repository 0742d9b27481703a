"""The TRL integration's scalar arithmetic: weights, T5 factor, the no-signal rule, diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oblr_theory.integrations._trl_math import (diagnostics, group_advantages, informative, lr_factor,
                                                sequence_weights, snr_pieces_dp)
from oblr_theory import estimators

pytestmark = pytest.mark.torch


def test_sequence_weights():
    ell = torch.tensor([1, 2, 4, 0])
    assert torch.equal(sequence_weights("dapo", ell), torch.ones(4, dtype=torch.float64))
    expected = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64)
    assert torch.equal(sequence_weights("grpo", ell), expected)
    with pytest.raises(ValueError, match="bnpo"):
        sequence_weights("bnpo", ell)


def test_lr_factor_is_t5_fraction_clipped():
    assert lr_factor(1.0, 0.0, 1.0) == 0.5
    assert lr_factor(3.0, 0.0, 0.6) == 0.6
    assert lr_factor(0.0, 0.1, 1.0) == 0.1
    assert lr_factor(math.inf, 0.0, 1.0) == 1.0


def test_no_signal_batch_is_not_informative():
    est = estimators.get("optimal_loo")
    S = torch.tensor([0.3, 1.7, 2.9, 0.1], dtype=torch.float64)
    for c in (0.0, 1.0, 0.7):  # equal rewards: A = 0 up to rounding (0.7: a few ulps)
        r = torch.full((4,), c, dtype=torch.float64)
        A = group_advantages(est, r, S, torch.ones(4), 4)
        assert not informative(A, r)
        if c == 0.7:
            assert (A != 0).any()  # rounding left nonzero advantages: the tolerance is exercised
    r = torch.tensor([0.7, 0.7, 0.7, 0.7 + 1e-9], dtype=torch.float64)  # a real, tiny spread
    assert informative(group_advantages(est, r, S, torch.ones(4), 4), r)
    p = snr_pieces_dp(4.0, 0.5, 4)  # Σ̂ = (4 − 2)/3, V̂ = Σ̂/4, ||∇J||² = 0.5 − V̂
    assert np.isclose(p.noise_var_hat, 2 / 12) and np.isclose(p.grad_sq_norm_hat, 0.5 - 2 / 12)


def test_group_advantages_refuse_unscored_and_partial_groups():
    est = estimators.get("rloo")
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    A = group_advantages(est, r, None, torch.ones(4), 2)
    assert torch.equal(A, torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="whole groups"):
        group_advantages(est, r, None, torch.ones(4), 3)
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(est, torch.tensor([1.0, math.nan, 0.0, 1.0]), None, torch.ones(4), 2)


def test_diagnostics_plugin_b_star():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0])
    S = torch.tensor([1.0, 3.0, 2.0, 2.0], dtype=torch.float64)
    d = diagnostics(r, S, torch.tensor([1, 3, 2, 2]), 2)
    # groups: b* = 1·1/(1+3) = 0.25 and 2/(2+2) = 0.5; the group means are 0.5
    assert np.isclose(d["b_star_mean"], 0.375) and np.isclose(d["b_star_minus_mean_abs"], 0.125)
    assert np.isclose(d["corr_S_length"], 1.0)
    assert math.isnan(diagnostics(r, S, torch.tensor([2, 2, 2, 2]), 2)["corr_S_length"])  # undefined
