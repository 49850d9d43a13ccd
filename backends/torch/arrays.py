"""Array adapters for the PyTorch backend (the conformance protocol's ``asarray``/``to_numpy``/``dtype_name``)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch

__all__ = ["asarray", "cast", "dtype_name", "to_numpy", "torch_dtype"]


def asarray(x: np.ndarray) -> torch.Tensor:
    """A CPU tensor with exactly the dtype of ``x`` (bfloat16 as ``ml_dtypes.bfloat16``, float16, complex, bool).

    The tensor owns its memory (a copy), so later writes to ``x`` do not leak into it.
    """
    x = np.asarray(x)
    if x.dtype == np.dtype(ml_dtypes.bfloat16):
        # NumPy has no bfloat16 torch understands; float32 holds every bfloat16 value exactly.
        return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(x, copy=True))


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)``, skipped when it would be a no-op: even a no-op ``to`` is a dispatched call (~1 µs on CPU),
    which a one-token decode step pays for every parameter and state it touches. A decoder's packed kernel
    (``native_dense.PackedKernel``) stays packed in its own dtype and becomes its plain kernel in another."""
    if x.dtype == dtype:
        return x
    from linrec.backends.torch.native_dense import PackedKernel  # (imported here: native_dense is heavier)

    return (x.kernel if isinstance(x, PackedKernel) else x).to(dtype)


def to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A NumPy array of the same dtype (bfloat16 comes back as ``ml_dtypes.bfloat16``)."""
    if not isinstance(x, torch.Tensor):
        return np.asarray(x)
    x = x.detach().cpu().resolve_conj().resolve_neg()
    if x.dtype == torch.bfloat16:
        return x.to(torch.float32).numpy().astype(ml_dtypes.bfloat16)
    return x.numpy()


def dtype_name(x: torch.Tensor | np.ndarray) -> str:
    """Canonical dtype name: ``"float32"``, ``"bfloat16"``, ``"complex64"``, ``"bool"``, ..."""
    if isinstance(x, torch.Tensor):
        return str(x.dtype).removeprefix("torch.")
    return np.dtype(np.asarray(x).dtype).name


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a canonical name."""
    return getattr(torch, name)
