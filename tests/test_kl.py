"""The KL estimators: exact value and gradient biases against torch autograd and closed forms."""

import numpy as np
import pytest

from oblr_theory import kl

from tolerances import rounding_tol


def _softmax_case(seed, K=5):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=K)
    p = np.exp(z - z.max())
    p /= p.sum()
    return z, p, rng.dirichlet(np.ones(K)), np.eye(K) - p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_reward_gradients_equal_autograd(seed):
    """E ∇k (loss term) and E[k s] (reward term) by torch autograd on every outcome."""
    torch = pytest.importorskip("torch")
    z, p, q, s = _softmax_case(seed)
    m = kl.kl_moments(p, q, s)
    zt = torch.tensor(z, requires_grad=True)
    lq = torch.tensor(np.log(q))
    for name in kl.ESTIMATORS:
        loss_g, reward_g = np.zeros_like(z), np.zeros_like(z)
        for y in range(len(z)):
            logp = torch.log_softmax(zt, 0)[y]
            k = getattr(kl, name)(logp, lq[y])
            (g_k,) = torch.autograd.grad(k, zt)
            (g_s,) = torch.autograd.grad(torch.log_softmax(zt, 0)[y], zt)
            loss_g += p[y] * g_k.numpy()
            reward_g += p[y] * float(k.detach()) * g_s.numpy()
        tol = rounding_tol(64, 16 * (1 + np.max(np.abs(np.log(p / q)))) ** 2)
        assert np.max(np.abs(loss_g - m.loss_grad[name])) <= tol
        assert np.max(np.abs(reward_g - m.reward_grad[name])) <= tol


def test_the_table_of_biases():
    z, p, q, s = _softmax_case(7)
    m = kl.kl_moments(p, q, s)
    KL = np.sum(p * np.log(p / q))
    tol = rounding_tol(64, 16 * (1 + np.max(np.abs(np.log(p / q)))) ** 2)
    np.testing.assert_allclose(m.grad, p * (np.log(p / q) - KL), rtol=0, atol=tol)
    np.testing.assert_allclose(m.grad_reverse, p - q, rtol=0, atol=tol)
    for (name, mode), claimed in kl.claimed_biases(m, p, q).items():
        got = {"value": m.value_bias, "loss": m.loss_bias, "reward": m.reward_bias}[mode](name)
        assert np.max(np.abs(np.asarray(got) - claimed)) <= tol, (name, mode)
    # k2 is biased for the value and as a reward; k3 and k1 are biased as losses
    assert abs(m.value_bias("k2")) > 1e3 * tol
    for bias in (m.reward_bias("k2"), m.loss_bias("k3"), m.loss_bias("k1"), m.reward_bias("k3")):
        assert np.max(np.abs(bias)) > 1e3 * tol


def test_refusals():
    _, p, q, s = _softmax_case(0)
    q0 = q.copy()
    q0[0], q0[1] = 0.0, q[0] + q[1]
    with pytest.raises(ValueError, match="same support"):
        kl.kl_moments(p, q0, s)
    with pytest.raises(ValueError, match="probability vector"):
        kl.kl_moments(p * 2, q, s)
    with pytest.raises(ValueError, match="not one of"):
        kl.derivative("k4", np.zeros(2), np.zeros(2))
