"""The reference (``per_sample/loop.py``): one backward per sequence."""

import pytest

torch = pytest.importorskip("torch")

from oblr_theory.per_sample.loop import group_gram, trainable_parameters  # noqa: E402


def test_group_gram_of_a_linear_score_is_the_inputs_gram():
    """``seq_g[j] = w · x_j + c`` has per-sample gradients ``(x_j, 1)``: the Gram is
    ``X Xᵀ + 1``; a frozen parameter adds nothing. Tolerance: float64 dot products of at most
    four terms, ``4 · 2^-53 Σ|x||y|`` each, in both computations."""
    gen = torch.Generator().manual_seed(0)
    x_gd = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    lin = torch.nn.Linear(3, 1, dtype=torch.float64)
    bound = 8 * 2.0**-53 * (x_gd.abs() @ x_gd.abs().T + 1)
    gram = group_gram(lin(x_gd).squeeze(-1), trainable_parameters(lin))
    assert bool(((gram - (x_gd @ x_gd.T + 1)).abs() <= bound).all())
    lin.bias.requires_grad_(False)
    gram = group_gram(lin(x_gd).squeeze(-1), trainable_parameters(lin))
    assert bool(((gram - x_gd @ x_gd.T).abs() <= bound).all())
    assert bool((group_gram(lin(x_gd).squeeze(-1), []) == 0).all())
