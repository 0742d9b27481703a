"""The array helpers behind the registry (``_ops.py``): one source for numpy and torch, exact
leave-one-out sums, and input checks whose errors name the argument."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from oblr_theory import _ops
from tolerances import rounding_tol

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(2, 6)), elements=finite))
def test_loo_sum_and_rows_are_the_definitions(x):
    """``loo_sum(x)_j = Σ_{k≠j} x_k`` and ``loo_rows(x)[j, k] = x_k [k ≠ j]``, loop by loop."""
    G = x.shape[-1]
    want = np.array([[sum(row[k] for k in range(G) if k != j) for j in range(G)] for row in x])
    # G − 1 terms of |x| ≤ 1e6 in another order: 2γ_G · Σ_k |x_k|
    tol = rounding_tol(G, float(np.abs(x).sum(-1).max()))
    np.testing.assert_allclose(_ops.loo_sum(x), want, rtol=0, atol=tol)
    rows = _ops.loo_rows(x)
    assert rows.shape == x.shape + (G,)
    for j in range(G):
        np.testing.assert_array_equal(rows[..., j, j], 0.0)
        np.testing.assert_array_equal(np.delete(rows[..., j, :], j, axis=-1), np.delete(x, j, axis=-1))


def test_loo_sum_does_not_cancel_when_one_entry_dominates():
    """Summed directly: ``Σ_k x_k − x_j`` would lose the small entries next to 1e17."""
    x = np.array([1e17, 1.0, 2.0])
    np.testing.assert_array_equal(_ops.loo_sum(x), [3.0, 1e17 + 2.0, 1e17 + 1.0])
    assert x.sum() - x[0] != 3.0  # the subtraction this avoids does lose them


def test_numpy_and_torch_give_the_same_values():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(3, 5))
    t = torch.as_tensor(x)
    scale = float(np.abs(x).sum(-1).max())
    assert not _ops.is_torch(x) and _ops.is_torch(t)
    for f in (_ops.sum_keep, _ops.loo_sum, _ops.loo_rows, _ops.max_keep, _ops.ones_like):
        out = f(t)
        assert _ops.is_torch(out) and out.dtype == t.dtype
        # sums of ≤ 5 terms in either library's order: 2γ_5 Σ|x| (a row's |x| sum ≤ scale)
        np.testing.assert_allclose(out.numpy(), f(x), rtol=0, atol=rounding_tol(5, scale))
    np.testing.assert_allclose(_ops.mean(t, -1).numpy(), _ops.mean(x, -1), rtol=0, atol=rounding_tol(6, scale))
    assert abs(float(_ops.mean(t)) - float(_ops.mean(x))) <= rounding_tol(16, float(np.abs(x).mean()))
    # sqrt is correctly rounded in both (IEEE 754): identical
    np.testing.assert_array_equal(_ops.sqrt(t.abs()).numpy(), _ops.sqrt(np.abs(x)))
    np.testing.assert_array_equal(_ops.where(t > 0, t, -t).numpy(), _ops.where(x > 0, x, -x))
    assert _ops.any_(t > 2) == _ops.any_(x > 2)


def test_check_array_converts_lists_and_integers_to_float():
    out = _ops.check_array("rewards", [1, 0, 1])
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert _ops.check_array("rewards", np.array([1, 2])).dtype.kind == "f"


@pytest.mark.parametrize("bad, kwargs, match", [
    ([0.0, np.nan], {}, "rewards contains non-finite"),
    ([0.0, np.inf], {}, "rewards contains non-finite"),
    ([1.0, -0.5], {"nonneg": True}, "rewards must be >= 0"),
])
def test_check_array_errors_name_the_argument(bad, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _ops.check_array("rewards", bad, **kwargs)


def test_check_array_checks_shape_and_array_type_against_like():
    r = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"sq_norms must have the rewards' shape \(2, 3\)"):
        _ops.check_array("sq_norms", np.zeros((3, 2)), like=r)
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="sq_norms must be the same array type"):
        _ops.check_array("sq_norms", torch.zeros(2, 3), like=r)
    # values=False: shape checked, values (here non-finite) left to the caller
    out = _ops.check_array("sq_norms", torch.full((2, 3), float("nan")), like=torch.zeros(2, 3), values=False)
    assert out.shape == (2, 3)
