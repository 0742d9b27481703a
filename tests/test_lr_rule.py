"""T5 with a local curvature (snr.secant_curvature, EMACurvature, local_lr), Adam (dynamics),
and their registration in the dynamics.

The closed-form checks use a quadratic ``J(θ) = bᵀθ − ½ θᵀAθ`` (``∇J = b − Aθ``, ``∇²J = −A``),
where the curvature along a direction ``d`` is exactly ``dᵀAd/||d||²``.
"""

import numpy as np
import pytest

from oblr_theory import dynamics, families, snr, stats
from tolerances import rounding_tol

#: Two-sided threshold of the Monte Carlo checks: false-failure rate 1e-6 per assertion.
Z = stats.bonferroni_z(1e-6)


def _spd(rng, d, isotropic):
    if isotropic:
        return 0.7 * np.eye(d)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return Q @ np.diag(np.linspace(0.2, 1.5, d)) @ Q.T


# ---------------------------------------------------------------------- secant, exact gradients
@pytest.mark.parametrize("isotropic", [True, False])
def test_secant_is_exact_on_a_quadratic_with_exact_gradients(isotropic):
    """``V = 0``: ``num/den = dᵀAd/||d||²`` for every direction (float64 rounding only)."""
    rng = np.random.default_rng(0)
    d_ = 6
    A, b = _spd(rng, d_, isotropic), rng.normal(size=d_)
    theta = rng.normal(size=(50, d_))  # 50 independent points at once (leading axis)
    g_prev = b - theta @ A
    eta = 0.3
    g_new = b - (theta + eta * g_prev) @ A
    num, den = snr.secant_curvature(g_new, g_prev, eta, (g_prev * g_prev).sum(-1))
    want = np.einsum("nd,de,ne->n", g_prev, A, g_prev) / den
    scale = np.abs(g_new * g_prev).sum(-1) / eta / den + np.abs(want)
    assert np.all(np.abs(num / den - want) <= rounding_tol(4 * d_ + 8, scale.max()))


# ---------------------------------------------------------------------- secant, noisy gradients
def _noisy_secants(isotropic, n=40_000, B=4, eta=0.3, seed=1):
    """``n`` independent replications of one step from a fixed ``θ``: per-group gradients
    ``u_b = ∇J + z_b`` (``z_b ~ N(0, diag s²)``), ``d = ĝ_{t−1}``, a fresh ``ĝ_t`` at ``θ + ηd``."""
    rng = np.random.default_rng(seed)
    d_ = 5
    A, b = _spd(rng, d_, isotropic), rng.normal(size=d_)
    theta = np.zeros(d_)
    g = b - A @ theta
    s = np.linspace(0.5, 1.5, d_)
    u = g + s * rng.normal(size=(n, B, d_))
    pieces = snr.snr_pieces(u)
    d = u.mean(1)
    g_t = g - eta * d @ A
    ghat_t = g_t + (s * rng.normal(size=(n, B, d_))).mean(1)
    V = float((s**2).sum() / B)  # tr Var(ĝ)
    # E dᵀAd and E||d||² in closed form (d = g + ξ̄, Cov ξ̄ = diag(s²)/B)
    E_dAd = g @ A @ g + float(np.diag(A) @ s**2) / B
    E_dd = g @ g + V
    return dict(ghat_t=ghat_t, d=d, eta=eta, pieces=pieces, A=A, V=V, E_dAd=E_dAd, E_dd=E_dd)


def _ratio_and_se(num, den):
    """Ratio of sums and its delta-method standard error (i.i.d. replications)."""
    R = num.sum() / den.sum()
    resid = num - R * den
    return R, resid.std(ddof=1) / np.sqrt(len(num)) / den.mean()


@pytest.mark.parametrize("isotropic", [True, False])
def test_t7_corrected_secant_converges_to_the_local_curvature(isotropic):
    """``Σ num / Σ den → E[dᵀAd]/E||d||²`` (``= a`` exactly when ``A = aI``); the estimate's
    standard error is below 2% of the target, so a bias of ``Z · 2% ≈ 10%`` cannot pass."""
    s = _noisy_secants(isotropic)
    num, den = snr.secant_curvature(s["ghat_t"], s["d"], s["eta"], s["pieces"].grad_sq_norm_hat)
    R, se = _ratio_and_se(num, den)
    target = s["E_dAd"] / s["E_dd"]
    if isotropic:
        assert target == pytest.approx(0.7, rel=1e-12)
    assert se < 0.02 * target
    assert abs(R - target) < Z * se


def test_negative_control_plain_secant_is_biased_by_v_over_eta():
    """The plain secant (``||ĝ_{t−1}||²`` in place of T7's ``||ĝ||² − V̂``) converges to
    ``(E dᵀAd + V/η) / E||d||²``, detectably away from the curvature."""
    s = _noisy_secants(True)
    d = s["d"]
    num, den = snr.secant_curvature(s["ghat_t"], d, s["eta"], (d * d).sum(-1))
    R, se = _ratio_and_se(num, den)
    truth = s["E_dAd"] / s["E_dd"]
    biased = (s["E_dAd"] + s["V"] / s["eta"]) / s["E_dd"]
    assert abs(R - biased) < Z * se
    assert abs(R - truth) > 2 * Z * se  # the bias is many standard errors: the control has power


def test_ema_curvature_is_a_ratio_of_averages():
    ema = snr.EMACurvature(0.5)
    assert ema.update(2.0, 1.0) == pytest.approx(2.0)
    # N = 0.5·0.5·2 + 0.5·3 = 2.0, D = 0.5·0.5·1 + 0.5·3 = 1.75
    assert ema.update(3.0, 3.0) == pytest.approx(2.0 / 1.75, rel=1e-15)
    zero = snr.EMACurvature(0.9)
    assert np.isnan(zero.update(0.0, 0.0))  # no step taken yet: undefined, not 0


def test_local_rule_on_exact_gradients_is_newton_on_an_isotropic_quadratic():
    """``V = 0`` (SNR = inf): every secant is ``a``, so ``κ_t = a`` and ``η_t = 1/a`` from the second
    step on; ascent then lands on the maximiser ``θ* = b/a`` in one step."""
    a, eta_max = 0.7, 10.0
    b = np.array([1.0, -2.0, 0.5])
    theta, ema, prev = np.zeros(3), snr.EMACurvature(0.9), None
    for t in range(3):
        g = b - a * theta
        kappa = 1.0 / eta_max if prev is None else ema.update(*snr.secant_curvature(g, *prev))
        eta = snr.local_lr(np.inf, kappa, eta_max, 0.01)
        if t >= 1:
            assert kappa == pytest.approx(a, rel=1e-12) and eta == pytest.approx(1 / a, rel=1e-12)
        prev = (g, eta, g @ g)
        theta = theta + eta * g
    assert np.allclose(theta, b / a, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- local_lr
def test_local_lr_closed_form_floor_and_cap():
    snr_ = np.array([1.0, 3.0, np.inf, 0.0, 1.0, 1.0, 0.0])
    kap = np.array([0.5, -2.0, 0.25, 1.0, np.inf, 0.0, -1.0])
    got = snr.local_lr(snr_, kap, 2.0, 0.1)
    # 0.5/0.5; κ ≤ 0 → cap; 1/0.25 = 4 → cap 2; SNR 0 → floor; κ inf → floor; κ = 0 → cap;
    # SNR 0 → floor
    assert np.allclose(got, [1.0, 2.0, 2.0, 0.1, 0.1, 2.0, 0.1], rtol=1e-15)
    # interior: exactly (1/κ) SNR/(1+SNR)
    k = np.array([0.3, 0.7, 1.9])
    assert np.allclose(snr.local_lr(np.full(3, 4.0), k, 100.0, 1e-3), 0.8 / k, rtol=1e-15)


def test_local_rule_refusals_name_the_argument():
    with pytest.raises(ValueError, match="curvature"):
        snr.local_lr(1.0, np.nan, 1.0, 0.1)
    with pytest.raises(ValueError, match="eta_min"):
        snr.local_lr(1.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="eta_max"):
        snr.local_lr(1.0, 1.0, np.inf, 0.1)
    with pytest.raises(ValueError, match="snr"):
        snr.local_lr(-1.0, 1.0, 1.0, 0.1)
    g = np.ones((2, 3))
    with pytest.raises(ValueError, match="eta_prev"):
        snr.secant_curvature(g, g, np.array([0.1, 0.0]), 1.0)
    with pytest.raises(ValueError, match="ghat_new and ghat_prev"):
        snr.secant_curvature(g, g[:, :2], 0.1, 1.0)
    with pytest.raises(ValueError, match="ghat_new"):
        snr.secant_curvature(g * np.nan, g, 0.1, 1.0)
    with pytest.raises(ValueError, match="beta"):
        snr.EMACurvature(1.0)
    with pytest.raises(ValueError, match="no data"):
        snr.EMACurvature(0.5).curvature


def test_local_rule_numpy_equals_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    gn, gp = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    nn, dn = snr.secant_curvature(gn, gp, 0.2, np.ones(4))
    nt, dt = snr.secant_curvature(torch.tensor(gn), torch.tensor(gp), 0.2, torch.ones(4, dtype=torch.float64))
    assert isinstance(nt, torch.Tensor) and np.allclose(nt.numpy(), nn, rtol=1e-14) and np.allclose(dt.numpy(), dn)
    s = np.array([0.5, 2.0, 0.0, 9.0])
    k = np.array([0.3, -1.0, 1.0, 5.0])
    lt = snr.local_lr(torch.tensor(s), torch.tensor(k), 3.0, 0.1)
    assert isinstance(lt, torch.Tensor) and np.allclose(lt.numpy(), snr.local_lr(s, k, 3.0, 0.1), rtol=1e-15)


# ---------------------------------------------------------------------- Adam
def test_adam_direction_matches_the_recursion():
    g1, g2 = np.array([0.5, -2.0, 0.0]), np.array([1.0, 1.0, -3.0])
    d1, m, v = dynamics.adam_direction(g1, np.zeros(3), np.zeros(3), 1, 0.9, 0.999, 1e-8)
    assert np.allclose(d1, g1 / (np.abs(g1) + 1e-8), rtol=1e-15)  # first step: m̂ = g, v̂ = g²
    d2, m2, v2 = dynamics.adam_direction(g2, m, v, 2, 0.9, 0.999, 1e-8)
    mw = (0.9 * 0.1 * g1 + 0.1 * g2) / (1 - 0.81)
    vw = (0.999 * 0.001 * g1**2 + 0.001 * g2**2) / (1 - 0.999**2)
    assert np.allclose(d2, mw / (np.sqrt(vw) + 1e-8), rtol=1e-13)


def test_adam_refusals_name_the_argument():
    z = np.zeros(2)
    with pytest.raises(ValueError, match="t must"):
        dynamics.adam_direction(z, z, z, 0)
    with pytest.raises(ValueError, match="beta1"):
        dynamics.adam_direction(z, z, z, 1, beta1=1.0)
    with pytest.raises(ValueError, match="eps"):
        dynamics.adam_direction(z, z, z, 1, eps=0.0)
    with pytest.raises(ValueError, match="m and v"):
        dynamics.adam_direction(z, np.zeros(3), z, 1)


# ---------------------------------------------------------------------- registration in dynamics
def test_runconfig_refuses_inconsistent_rules():
    with pytest.raises(ValueError, match="eta_min"):
        dynamics.RunConfig("rloo", lr_rule="local", eta=1.0, eta_min=0.0)
    with pytest.raises(ValueError, match="optimizer"):
        dynamics.RunConfig("rloo", lr_rule="local", eta=1.0, eta_min=0.1, optimizer="adam")
    with pytest.raises(ValueError, match="optimizer"):
        dynamics.RunConfig("rloo", optimizer="lion")
    with pytest.raises(ValueError, match="weight_decay"):
        dynamics.RunConfig("rloo", weight_decay=-1.0)
    assert set(dynamics.RULES) < set(dynamics.LR_RULES)


def test_local_rule_in_the_dynamics_is_the_clipped_t5_step():
    P = families.hard_arm_bandit()
    cfg = dynamics.RunConfig("rloo", 8, 4, 30, "local", eta=8.0, eta_min=0.4)
    tr = dynamics.run(P, cfg, [0, 1, 2])
    assert np.all(np.isfinite(tr.curvature)) and np.allclose(tr.curvature[:, 0], 1 / 8.0)
    assert np.array_equal(tr.lr, snr.local_lr(tr.snr_hat, tr.curvature, 8.0, 0.4))
    assert np.all((tr.lr >= 0.4) & (tr.lr <= 8.0))
    assert np.all(np.diff(tr.objective[:, :2], axis=1) != 0)  # it moves


def test_adam_in_the_dynamics_takes_the_adam_step():
    """One step of ``optimizer='adam'``: ``θ₁ = θ₀ + η ĝ/(|ĝ| + ε)`` (Adam's first direction);
    the SNR variant scales it by the rule's ``η_t``."""
    P = families.hard_arm_bandit()
    sgd = dynamics.run(P, dynamics.RunConfig("rloo", 8, 4, 1, "constant", eta=1.0), [5], keep_theta=True)
    ghat = sgd.thetas[0, 1] - sgd.thetas[0, 0]  # η = 1: the step is ĝ (same seed, same batch)
    for rule in ("constant", "snr"):
        tr = dynamics.run(P, dynamics.RunConfig("rloo", 8, 4, 1, rule, eta=0.1, eta_min=0.005, optimizer="adam"),
                          [5], keep_theta=True)
        want = tr.lr[0, 0] * ghat / (np.abs(ghat) + 1e-8)
        # ĝ recovered as a difference of θ's carries an absolute error up to rounding_tol(2, |θ|),
        # which Adam's first direction amplifies by up to 1/ε where ĝ is at round-off level
        err = rounding_tol(2, np.abs(sgd.thetas[0, :2]).max()) * tr.lr[0, 0] / 1e-8
        assert np.allclose(tr.thetas[0, 1] - tr.thetas[0, 0], want, rtol=1e-12, atol=err)
    assert tr.lr[0, 0] <= 0.1


def test_local_exact_rule_uses_the_exact_secant():
    """``"local_exact"``: κ_t is the EMA of ``−<∇J_t − ∇J_{t−1}, d>/η`` with exact ``∇J``
    (recomputed here from the saved path), and the step is :func:`snr.local_lr` of it."""
    P = families.hard_arm_bandit()
    cfg = dynamics.RunConfig("rloo", 8, 4, 12, "local_exact", eta=16.0, eta_min=0.8)
    tr = dynamics.run(P, cfg, [0, 1], keep_theta=True)
    th, lr = tr.thetas, tr.lr
    ema = snr.EMACurvature(cfg.ema_beta)
    u = 2.0**-53
    dN = dD = 0.0
    for t in range(1, lr.shape[1]):
        d = (th[:, t] - th[:, t - 1]) / lr[:, t - 1, None]
        g = [np.array([dynamics.exact_state(P.with_theta(th[i, s])).grad for i in range(2)]) for s in (t - 1, t)]
        num = -((g[1] - g[0]) * d).sum(-1) / lr[:, t - 1]
        den = (d * d).sum(-1)
        want = ema.update(num, den)
        # d recovered from θ differences: |δd_i| ≤ 2u(|θ_t,i| + |θ_{t−1},i|)/η + u|d_i|; first-order
        # propagation into num and den, then through the EMA (weights sum to ≤ 1), then the ratio;
        # a factor 4 covers the float64 rounding of the sums of both routes (d = 12 terms each)
        dd = np.linalg.norm(2 * u * (np.abs(th[:, t]) + np.abs(th[:, t - 1])) / lr[:, t - 1, None]
                            + u * np.abs(d), axis=1)
        dN = np.maximum(dN, np.linalg.norm(g[1] - g[0], axis=1) * dd / lr[:, t - 1] + 16 * u * np.abs(num))
        dD = np.maximum(dD, 2 * np.sqrt(den) * dd + 16 * u * den)
        D = ema.den
        tol = 4 * (dN + np.abs(want) * dD) / (D - dD)
        assert np.all(np.abs(tr.curvature[:, t] - want) <= tol)
        assert np.all(tol < 1e-6 * np.maximum(np.abs(want), 1e-3))  # the bound is tight enough to test
    assert np.array_equal(lr, snr.local_lr(tr.snr_hat, tr.curvature, 16.0, 0.8))
