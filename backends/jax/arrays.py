"""Array adapters for the JAX backend (the conformance protocol's ``asarray``/``to_numpy``/``dtype_name``).

linrec changes no JAX setting, ``jax_enable_x64`` included (recurrence.md §5): float32, bfloat16, float16 and
complex64 work in JAX's default 32-bit mode, and every array this backend creates is given an explicit dtype, so
the mode never changes its results in those dtypes. float64 and complex128 exist in JAX only in 64-bit mode,
which the caller turns on where they need it (``with jax.enable_x64(True):``); outside it a 64-bit float input is
refused with a ``TypeError`` (:func:`to_jax`) instead of being truncated to 32 bits. :func:`precision_scope` is
the conformance runner's hook for entering that mode around a case.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "WIDE_DTYPES",
    "as_jax",
    "asarray",
    "dtype_name",
    "eager_unless",
    "jnp_dtype",
    "precision_scope",
    "require_x64",
    "to_jax",
    "to_numpy",
    "x64_enabled",
]

#: The spec dtypes (§5) that JAX holds only with ``jax_enable_x64`` on.
WIDE_DTYPES = ("float64", "complex128")


def x64_enabled() -> bool:
    """Whether JAX's 64-bit mode is on here (globally, or inside ``jax.enable_x64(True)`` on this thread)."""
    return bool(jax.config.read("jax_enable_x64"))


def require_x64(dtype, name: str) -> None:
    """Raise ``TypeError`` naming ``name`` if ``dtype`` is float64/complex128 and JAX's 64-bit mode is off
    (JAX would silently compute in float32/complex64)."""
    dtype = np.dtype(dtype)
    wide = (dtype.kind == "f" and dtype.itemsize == 8) or (dtype.kind == "c" and dtype.itemsize == 16)
    if wide and not x64_enabled():
        raise TypeError(
            f"{name} has dtype {dtype.name}, which JAX holds only in 64-bit mode and would truncate to 32 bits; "
            f"run the call inside `with jax.enable_x64(True):` (linrec does not change JAX's global settings), "
            f"or pass {'complex64' if dtype.kind == 'c' else 'float32'}"
        )


def to_jax(x, name: str) -> jax.Array:
    """``x`` as a JAX array (itself when it already is one): what the backend's functions do with an argument.

    A float64/complex128 ``x`` with JAX's 64-bit mode off raises ``TypeError`` naming ``name`` (see
    :func:`require_x64`); Python scalars and lists, which carry no dtype, take JAX's default one.
    """
    dtype = getattr(x, "dtype", None)
    if dtype is not None:
        require_x64(dtype, name)
    return x if isinstance(x, jax.Array) else jnp.asarray(x)


def asarray(x: np.ndarray) -> jax.Array:
    """A JAX array with exactly the dtype of ``x`` (bfloat16 as ``ml_dtypes.bfloat16``, float16, complex, bool).

    float64/complex128 need JAX's 64-bit mode (``TypeError`` otherwise, :func:`require_x64`). 64-bit integers
    become JAX's default int32 when the mode is off, as in JAX itself; values outside int32 raise ``ValueError``.
    """
    x = np.asarray(x)
    require_x64(x.dtype, "x")
    if x.dtype.kind in "iu" and x.dtype.itemsize == 8 and not x64_enabled():
        small = np.dtype(x.dtype.kind + "4")
        if x.size and (x.min() < np.iinfo(small).min or x.max() > np.iinfo(small).max):
            raise ValueError(f"x has {x.dtype.name} values outside {small.name}, which JAX holds only in 64-bit mode; "
                             "run the call inside `with jax.enable_x64(True):`")
        return jnp.asarray(x.astype(small))
    return jnp.asarray(x, dtype=x.dtype)


def as_jax(x) -> jax.Array:
    """``x`` itself when it already is a JAX array (or tracer), else ``jnp.asarray(x)``: per-token decode calls
    skip the ~12 µs that ``jnp.asarray`` spends re-wrapping an array it is given. A float64/complex128 ``x``
    needs JAX's 64-bit mode (``TypeError`` otherwise, :func:`require_x64`)."""
    return to_jax(x, "input")


@contextlib.contextmanager
def precision_scope(dtypes: Collection[str]) -> Iterator[None]:
    """The conformance runner's hook: a context in which this backend can hold every dtype in ``dtypes``.

    JAX's 64-bit mode is switched on (``jax.enable_x64(True)``, for this thread only, restored on exit) when
    ``dtypes`` holds float64 or complex128; other cases run in the caller's own configuration.
    """
    if any(d in WIDE_DTYPES for d in dtypes):
        with jax.enable_x64(True):
            yield
    else:
        yield


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
