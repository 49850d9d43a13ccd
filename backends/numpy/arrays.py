"""Array adapters for the NumPy backend (the conformance protocol's ``asarray``/``to_numpy``/``dtype_name``)."""

from __future__ import annotations

import numpy as np

__all__ = ["asarray", "dtype_name", "np_dtype", "to_numpy"]


def asarray(x: np.ndarray) -> np.ndarray:
    """NumPy arrays are already backend arrays; bfloat16 is ``ml_dtypes.bfloat16``."""
    return np.asarray(x)


def to_numpy(x: np.ndarray) -> np.ndarray:
    return np.asarray(x)


def dtype_name(x: np.ndarray) -> str:
    return np.asarray(x).dtype.name


def np_dtype(name: str) -> np.dtype:
    """The NumPy dtype for a canonical name, bfloat16 included."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
