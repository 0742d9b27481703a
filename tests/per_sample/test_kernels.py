"""The rules' shared pure functions (``per_sample/kernels.py``): precision policy and helpers."""

import pytest

torch = pytest.importorskip("torch")

from oblr_theory.per_sample import kernels as K  # noqa: E402


def test_has_zero_entry_per_tensor():
    ts = [torch.ones(3), torch.tensor([1.0, 0.0]), torch.ones(2, dtype=torch.bfloat16),
          torch.zeros(1, dtype=torch.bfloat16), torch.tensor([0.0, 1.0, 0.0]), torch.ones(4),
          torch.tensor([2.0, -0.0])]
    assert K.has_zero_entry(ts) == [False, True, False, True, True, False, True]
    assert K.has_zero_entry([]) == []


@pytest.mark.parametrize("K_len", [5, K.BLOCK + 7])  # a partial block, and a full one plus a rest
def test_block_gram_and_norms_of_float32_rows_match_float64(K_len):
    """Float32 rows: the Gram (``cross_rows``) and the squared norms (``row_sq_norms``) are
    float32 block products summed in float64. Each entry is within ``γ_BLOCK Σ|x||y|`` of the
    float64 result (``γ_k = k 2^-24 / (1 − k 2^-24)``, float32 sums of at most ``BLOCK`` terms;
    the inputs are exact in float32)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, K_len, generator=gen, dtype=torch.float64).float()
    gram = K.cross_rows(x, x)
    exact = x.double() @ x.double().transpose(1, 2)
    n = min(K_len, K.BLOCK)
    gamma = n * 2.0**-24 / (1 - n * 2.0**-24)
    bound = gamma * (x.double().abs() @ x.double().abs().transpose(1, 2))
    assert gram.dtype == torch.float64 and bool(((gram - exact).abs() <= bound).all())
    sq = K.row_sq_norms(x.reshape(6, K_len))
    assert bool(((sq - exact.diagonal(dim1=1, dim2=2).reshape(6)).abs()
                 <= 2 * bound.diagonal(dim1=1, dim2=2).reshape(6)).all())
