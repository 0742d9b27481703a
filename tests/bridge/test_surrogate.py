"""The surrogate loss and its T7 statistics (``bridge/surrogate.py``) on explicit per-sample
scores: ``−∇L = ĝ``, ``||u_b||²`` from the Gram, ``||ĝ||²`` from the gradients, the T7 pieces, the
T3 plug-in baseline, and the errors."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from oblr_theory import estimators  # noqa: E402
from oblr_theory.bridge.surrogate import (batch_snr_pieces, grad_sq_norm, group_sq_norms,  # noqa: E402
                                          plugin_optimal_baseline, surrogate_loss)
from oblr_theory.snr import snr_pieces  # noqa: E402
from bridge_helpers import U64, roundoff_tol  # noqa: E402

B, G, D = 3, 4, 11


@pytest.fixture
def scores():
    """Per-sample scores s_bj (B, G, D), rewards with variance, and S = ||s||²."""
    gen = torch.Generator().manual_seed(0)
    s_bgd = torch.randn(B, G, D, generator=gen, dtype=torch.float64)
    r_bg = torch.randint(0, 2, (B, G), generator=gen).double()
    r_bg[:, 0], r_bg[:, 1] = 1.0, 0.0
    return s_bgd, r_bg, (s_bgd**2).sum(-1)


def test_surrogate_gradient_is_minus_the_estimate(scores):
    """With ``log π(y_bj) = θ · s_bj`` (so ``∇ log π = s_bj``): ``−∇L = (1/(BG)) Σ A_bj s_bj``,
    and the advantages are constants (no gradient flows into them)."""
    s_bgd, r_bg, S_bg = scores
    theta = torch.zeros(D, dtype=torch.float64, requires_grad=True)
    A_bg = estimators.get("optimal_loo").advantages(r_bg, S_bg).requires_grad_()
    surrogate_loss(s_bgd @ theta, A_bg).backward()
    g_hat = torch.einsum("bg,bgd->d", A_bg.detach(), s_bgd) / (B * G)
    # both sum the same B·G products per coordinate, possibly in another order: per coordinate
    # |error| <= B G u Σ_bj |A_bj s_bjd| / (B G)
    bound = roundoff_tol(B * G + 2) * (A_bg.detach().abs()[..., None] * s_bgd.abs()).sum((0, 1)) / (B * G)
    assert bool(((-theta.grad - g_hat).abs() <= bound).all())
    assert A_bg.grad is None


def test_surrogate_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="advantages_bg"):
        surrogate_loss(torch.zeros(2, 3), torch.zeros(3, 2))


def test_t7_pieces_from_group_norms_equal_pieces_from_per_group_gradients(scores):
    """T7 from ``(Σ_b ||u_b||², ||ĝ||²)`` with ``||u_b||² = A_bᵀ K_b A_b / G²`` equals T7 from the
    explicit per-group gradients ``u_b``."""
    s_bgd, r_bg, S_bg = scores
    A_bg = estimators.get("optimal_loo").advantages(r_bg, S_bg)
    u_bd = torch.einsum("bg,bgd->bd", A_bg, s_bgd) / G
    gram_bgg = s_bgd @ s_bgd.transpose(1, 2)
    # ||u_b||² two ways: sums of D products (the Gram) then of G² (AᵀKA), or of G then of D;
    # error <= (D + G² + G) u a_b², a_b = Σ_j |A_bj| ||s_bj|| / G (no cancellation bound needed)
    a_b = (A_bg.abs() * s_bgd.norm(dim=-1)).sum(-1) / G
    err = (group_sq_norms(gram_bgg, A_bg) - (u_bd**2).sum(-1)).abs()
    assert bool((err <= roundoff_tol(D + G * G + G) * a_b**2).all())
    ref = snr_pieces(u_bd)
    mine = batch_snr_pieces(group_sq_norms(gram_bgg, A_bg).sum(), B, u_bd.mean(0).pow(2).sum())
    # the pieces combine ||u_b||² and <u_b, u_c> (coefficients <= 2 B/(B-1)); each is off by at
    # most (D + G² + G + B) u a_b a_c on either route
    abs_tol = roundoff_tol(D + G * G + G + B) * float(a_b.max()) ** 2 * 2 * B / (B - 1)
    for a, b in zip(ref[:4], mine[:4]):
        assert float(b) == pytest.approx(float(a), rel=0, abs=abs_tol)
    mine_np = batch_snr_pieces(float(group_sq_norms(gram_bgg, A_bg).sum()), B, float(u_bd.mean(0).pow(2).sum()))
    # the same few scalar float64 operations in numpy and torch (each rounds once: <= 8 of them)
    assert isinstance(mine_np[0], np.floating) and float(mine_np[0]) == pytest.approx(
        float(mine[0]), rel=8 * U64, abs=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_grad_sq_norm_is_the_sum_of_squares_of_every_gradient(dtype):
    """``||ĝ||² = Σ_p ||p.grad||²`` in float64, over tensors of mixed dtypes; parameters without
    a gradient count as zero."""
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.zeros(n, dtype=dt)) for n, dt in ((5, dtype), (7, torch.float32), (3, dtype))]
    for p in params[:2]:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
    expected = sum(float((p.grad.double() ** 2).sum()) for p in params[:2])
    got = grad_sq_norm(params)
    assert got.dtype == torch.float64 and got.shape == ()
    # per-tensor norms are accumulated in float32 for the float32 and half-precision gradients
    # (in float64 for float64 ones): at most 7 squares, a square root and its square, all
    # positive terms, in float32: relative error <= (7 + 3) u32 (the float64 sums add less)
    assert float(got) == pytest.approx(expected, rel=roundoff_tol(7 + 3, u=2.0**-24), abs=0)


def test_grad_sq_norm_rejects_an_empty_parameter_list():
    with pytest.raises(ValueError, match="params"):
        grad_sq_norm([])


def test_plugin_optimal_baseline_is_the_registry_baseline():
    """T3 plug-in ``b̂* = Σ S r / Σ S`` per group; a group with ``Σ S = 0`` falls back to its mean.
    Torch and numpy give the same."""
    r = torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.0, 0.0]], dtype=torch.float64)
    S = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    b = plugin_optimal_baseline(r, S)
    # Σ S r / Σ S over 3 terms each, one division: relative error <= (3 + 3 + 1) u
    tol = roundoff_tol(7)
    assert torch.allclose(b, torch.tensor([2.5 / 6, 1 / 3], dtype=torch.float64), rtol=tol, atol=0)
    np.testing.assert_allclose(plugin_optimal_baseline(r.numpy(), S.numpy()), b.numpy(), rtol=tol, atol=0)
