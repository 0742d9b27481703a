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


def test_local_rate_secant_is_the_exact_curvature_on_a_quadratic():
    """Exact gradients of ``J = −½ θᵀAθ`` (so ``V̂ = 0`` and ``n̂ = ||∇J||²``): after one step
    ``θ₁ = θ₀ + η ĝ₀`` the secant's curvature is ``dᵀAd / ||d||²`` with ``d = ĝ₀``, and the rate
    is ``clip(SNR/(1+SNR)/κ, η_min, η_max)``; before any step ``κ₀ = 1/η_max``. Negative control:
    recording another step size gives another curvature."""
    from oblr_theory.integrations._trl_math import LocalRate

    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    theta0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    grad = lambda th: -A @ th  # noqa: E731
    eta = 0.3
    rule = LocalRate(beta=0.0)
    g0 = grad(theta0)
    rule.observe(g0, float(g0 @ g0))
    assert rule.kappa(eta_max=2.0) == 0.5  # κ₀ = 1/η_max before any secant
    rule.stepped(eta)
    g1 = grad(theta0 + eta * g0)
    rule.observe(g1, float(g1 @ g1))
    exact = float(g0 @ A @ g0 / (g0 @ g0))
    assert abs(rule.kappa(2.0) - exact) <= 1e-14 * exact
    snr = 3.0
    assert abs(rule.rate(snr, eta_max=2.0, eta_min=0.01) - (snr / (1 + snr)) / exact) <= 1e-14
    assert rule.rate(snr, eta_max=0.1, eta_min=0.01) == 0.1  # the trust region caps
    other = LocalRate(beta=0.0)
    other.observe(g0, float(g0 @ g0))
    other.stepped(2 * eta)
    other.observe(g1, float(g1 @ g1))
    assert abs(other.kappa(2.0) - exact) > 0.1 * exact
    with pytest.raises(RuntimeError, match="before observe"):
        LocalRate(0.9).stepped(0.1)


def test_loss_scale_per_loss_type_and_refusals():
    """``c`` of TRL's gradient per loss type (its agreement with TRL's own update is tested end to
    end in test_trl.py); unsupported types and empty counts are refused."""
    from oblr_theory.integrations._trl_math import loss_scale

    assert loss_scale("dapo", 8, 40, 16) == 1 / 40
    assert loss_scale("grpo", 8, 40, 16) == loss_scale("luspo", 8, 40, 16) == 1 / 8
    assert loss_scale("dr_grpo", 8, 40, 16) == 1 / (8 * 16)
    with pytest.raises(ValueError, match="bnpo"):
        loss_scale("bnpo", 8, 40, 16)
    with pytest.raises(ValueError, match="n_tokens=0"):
        loss_scale("dapo", 8, 0, 16)
