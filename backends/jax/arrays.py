"""Array adapters for the JAX backend (the conformance protocol's ``asarray``/``to_numpy``/``dtype_name``).

Importing this module turns on ``jax_enable_x64``: recurrence.md §5 requires float64 and complex128,
which JAX otherwise silently truncates to 32 bits. Nothing else is changed globally; every array this
backend creates is given an explicit dtype, so the flag does not change its results in other dtypes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

__all__ = ["as_jax", "asarray", "dtype_name", "eager_unless", "jnp_dtype", "to_numpy"]


def asarray(x: np.ndarray) -> jax.Array:
    """A JAX array with exactly the dtype of ``x`` (bfloat16 as ``ml_dtypes.bfloat16``, float16, complex, bool)."""
    x = np.asarray(x)
    return jnp.asarray(x, dtype=x.dtype)


def as_jax(x) -> jax.Array:
    """``x`` itself when it already is a JAX array (or tracer), else ``jnp.asarray(x)``: per-token decode calls
    skip the ~12 µs that ``jnp.asarray`` spends re-wrapping an array it is given."""
    return x if isinstance(x, jax.Array) else jnp.asarray(x)


def to_numpy(x: jax.Array) -> np.ndarray:
    """A NumPy array of the same dtype (bfloat16 comes back as ``ml_dtypes.bfloat16``)."""
    return np.asarray(jax.device_get(x))


def dtype_name(x) -> str:
    """Canonical dtype name: ``"float32"``, ``"bfloat16"``, ``"complex64"``, ``"bool"``, ..."""
    return np.dtype(x.dtype).name


def eager_unless(compiled: bool, fn):
    """``fn`` itself when ``compiled``, else ``fn`` wrapped to run under ``jax.disable_jit()`` (op by op)."""
    if compiled:
        return fn

    def eager(*args, **kwargs):
        with jax.disable_jit():
            return fn(*args, **kwargs)

    return eager


def jnp_dtype(name: str) -> np.dtype:
    """The dtype for a canonical name, bfloat16 included."""
    return np.dtype(jnp.bfloat16) if name == "bfloat16" else np.dtype(name)
