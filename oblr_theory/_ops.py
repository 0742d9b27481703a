"""The few array operations that the registry and the SNR rules need, for numpy and torch alike.

One source serves both array types: each function dispatches on the argument's type, and torch
is never imported here (a torch tensor is recognised by its module name), so the core package
stays torch-free.
"""

from __future__ import annotations

import numpy as np


def is_torch(x) -> bool:
    """True for a ``torch.Tensor`` (checked without importing torch)."""
    return type(x).__module__.startswith("torch")


def sum_keep(x):
    """``Σ`` over the last axis, keeping it: ``(..., G) -> (..., 1)``."""
    return x.sum(-1, keepdim=True) if is_torch(x) else x.sum(-1, keepdims=True)


def sum_axes_keep(x, axes):
    """``Σ`` over the axes ``axes`` (a tuple of ints), keeping them."""
    return x.sum(tuple(axes), keepdim=True) if is_torch(x) else x.sum(axis=tuple(axes), keepdims=True)


def max_axes_keep(x, axes):
    """``max`` over the axes ``axes`` (a tuple of ints), keeping them."""
    return x.amax(tuple(axes), keepdim=True) if is_torch(x) else x.max(axis=tuple(axes), keepdims=True)


def loo_sum(x):
    """``Σ_{k≠j} x_k`` for every j over the last axis, ``(..., G) -> (..., G)``.

    Summed directly (``x @ (1 − I)``), not as ``Σ_k x_k − x_j``, which cancels catastrophically
    when ``x_j`` dominates the total.
    """
    return x @ off_diagonal(x)


def off_diagonal(x):
    """The ``(G, G)`` matrix ``1 − I`` in ``x``'s array type, dtype and device."""
    G = x.shape[-1]
    if is_torch(x):
        import torch  # only reached when the caller already uses torch

        return 1 - torch.eye(G, dtype=x.dtype, device=x.device)
    return 1.0 - np.eye(G, dtype=x.dtype)


def loo_rows(x):
    """``(..., G) -> (..., G, G)``: row j holds ``x_k`` for ``k ≠ j`` and 0 at ``k = j``."""
    return x[..., None, :] * off_diagonal(x)


def max_keep(x):
    """``max`` over the last axis, keeping it: ``(..., G) -> (..., 1)``."""
    return x.amax(-1, keepdim=True) if is_torch(x) else x.max(-1, keepdims=True)


def mean(x, axis=None):
    """Mean over ``axis`` (all axes when None)."""
    if is_torch(x):
        return x.mean() if axis is None else x.mean(dim=axis)
    return x.mean(axis=axis)


def sqrt(x):
    return x.sqrt() if is_torch(x) else np.sqrt(x)


def where(cond, a, b):
    if is_torch(cond):
        import torch  # only reached when the caller already uses torch

        return torch.where(cond, a, b)
    return np.where(cond, a, b)


def ones_like(x):
    if is_torch(x):
        return x.new_ones(x.shape)
    return np.ones_like(x)


def any_(x) -> bool:
    return bool(x.any())


def isnan(x):
    return x.isnan() if is_torch(x) else np.isnan(x)


def isinf(x):
    return x.isinf() if is_torch(x) else np.isinf(x)


def zeros_like(x):
    return ones_like(x) * 0.0


def as_float(x):
    """Python numbers and lists become float64 numpy arrays; a float array or tensor passes
    through, an integer one becomes float64."""
    if is_torch(x):
        return x if x.is_floating_point() else x.double()
    a = np.asarray(x)
    return a if a.dtype.kind == "f" else a.astype(np.float64)


def check_finite(x, name: str):
    """Raise ``ValueError`` naming ``name`` if ``x`` holds NaN or inf."""
    ok = x.isfinite() if is_torch(x) else np.isfinite(x)
    if not bool(ok.all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")


def clip_min0(x):
    """``max(x, 0)`` elementwise (``+0.0``, never ``-0.0``)."""
    return where(x > 0, x, zeros_like(x))


def plain(x):
    """numpy 0-d arrays as numpy scalars (torch tensors unchanged)."""
    return x if is_torch(x) else np.asarray(x)[()]


def safe_ratio(num, den, at_zero_den):
    """``num / den`` where ``den > 0``, ``at_zero_den`` elsewhere (no division by zero)."""
    ok = den > 0
    return where(ok, num / where(ok, den, ones_like(den)), at_zero_den)


def check_array(name: str, x, like=None, nonneg: bool = False, values: bool = True):
    """Validate an input array: float dtype, finite, shape of ``like`` (if given), ``>= 0`` if asked.

    Raises ``ValueError`` naming the argument. Plain Python lists become float64 numpy arrays.
    ``values=False`` skips the checks of the values (finite, sign), which for a tensor on an
    accelerator wait for the device; the caller then answers for them.
    """
    if not is_torch(x):
        x = np.asarray(x, dtype=np.float64) if not isinstance(x, np.ndarray) or x.dtype.kind != "f" else x
    elif not x.is_floating_point():
        x = x.double()
    if like is not None and tuple(x.shape) != tuple(like.shape):
        raise ValueError(f"{name} must have the rewards' shape {tuple(like.shape)}, got {tuple(x.shape)}")
    if like is not None and is_torch(x) != is_torch(like):
        raise ValueError(f"{name} must be the same array type as rewards (numpy or torch)")
    if not values:
        return x
    check_finite(x, name)
    if nonneg and bool((x < 0).any()):
        raise ValueError(f"{name} must be >= 0, got a minimum of {float(x.min())}")
    return x
