"""The NumPy backend: the reference semantics, vectorised; no autodiff (the VJP is analytic)."""

from linrec.backends.numpy.arrays import asarray, dtype_name, to_numpy
from linrec.backends.numpy.scan import (
    LOG_METHODS,
    METHODS,
    cu_seqlens_to_resets,
    linear_scan,
    linear_scan_vjp,
    log_scan,
)

NAME = "numpy"

__all__ = [
    "LOG_METHODS",
    "METHODS",
    "NAME",
    "asarray",
    "cu_seqlens_to_resets",
    "dtype_name",
    "linear_scan",
    "linear_scan_vjp",
    "log_scan",
    "to_numpy",
]
