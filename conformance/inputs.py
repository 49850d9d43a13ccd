"""Seeded input generation for scan cases: shapes, dtypes and gate regimes (recurrence.md §1, §5).

Inputs are drawn in float64/complex128, rounded once to the case dtype, and the reference is run on
the rounded values upcast back, so every backend is judged on exactly the numbers it received.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from linrec.backends.numpy.arrays import np_dtype
from linrec.conformance.compare import to_reference_precision

__all__ = ["REGIMES", "ScanInputs", "make_scan_inputs", "rounded"]

#: How the decay ``a`` is drawn; each stresses a different part of the numerics.
REGIMES = {
    "uniform": "a ~ U(0, 1)",
    "near-zero": "a ~ U(0, 1e-3): the state forgets almost at once",
    "near-one": "a ~ U(1 - 1e-3, 1): long memory, state grows like T",
    "exact-0-1": "a in {0, 1} exactly: hard resets and pure accumulation",
    "negative": "a ~ U(-1, 1): sign flips",
    "complex": "a = r e^{i phi}, r ~ U(0, 1): rotations (complex dtypes only)",
}


def rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` (a NumPy array of that dtype; bfloat16 via ml_dtypes)."""
    if np.iscomplexobj(x) and not dtype.startswith("complex"):
        x = x.real
    return np.asarray(x).astype(np_dtype(dtype))


def _draw_a(rng: np.random.Generator, shape: tuple[int, ...], regime: str, complex_: bool) -> np.ndarray:
    if regime == "uniform":
        a = rng.uniform(0, 1, shape)
    elif regime == "near-zero":
        a = rng.uniform(0, 1e-3, shape)
    elif regime == "near-one":
        a = rng.uniform(1 - 1e-3, 1, shape)
    elif regime == "exact-0-1":
        a = rng.integers(0, 2, shape).astype(np.float64)
    elif regime == "negative":
        a = rng.uniform(-1, 1, shape)
    elif regime == "complex":
        a = rng.uniform(0, 1, shape) * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
    else:
        raise ValueError(f"unknown gate regime {regime!r}; known: {sorted(REGIMES)}")
    if complex_ and not np.iscomplexobj(a):
        a = a + 0j
    return a


@dataclass
class ScanInputs:
    """One scan problem in the case dtype (``a``, ``b``, ...) and its float64 twin (``*_ref``)."""

    a: np.ndarray
    b: np.ndarray
    initial_state: np.ndarray | None
    resets: np.ndarray | None
    dtype: str

    def ref(self, name: str) -> np.ndarray | None:
        x = getattr(self, name)
        return None if x is None else to_reference_precision(x)


def make_scan_inputs(
    seed: int,
    *,
    batch: int,
    length: int,
    state: tuple[int, ...],
    dtype: str,
    regime: str = "uniform",
    broadcast_a: tuple[int, ...] | None = None,
    with_initial_state: bool = True,
    reset_rate: float = 0.0,
    positive: bool = False,
) -> ScanInputs:
    """Draw a scan problem. ``broadcast_a`` is the per-step shape of ``a`` (default: ``state``).

    ``positive=True`` draws ``a`` in (0.05, 1), ``b`` and ``initial_state`` in (0.1, 2): the domain of
    ``method="log"``.
    """
    rng = np.random.default_rng(seed)
    complex_ = dtype.startswith("complex")
    a_state = broadcast_a if broadcast_a is not None else state
    if positive:
        a = rng.uniform(0.05, 1, (batch, length, *a_state))
        b = rng.uniform(0.1, 2, (batch, length, *state))
        h0 = rng.uniform(0.1, 2, (batch, *state)) if with_initial_state else None
    else:
        a = _draw_a(rng, (batch, length, *a_state), regime, complex_)
        b = rng.standard_normal((batch, length, *state))
        h0 = rng.standard_normal((batch, *state)) if with_initial_state else None
        if complex_:
            b = b + 1j * rng.standard_normal(b.shape)
            h0 = None if h0 is None else h0 + 1j * rng.standard_normal(h0.shape)
    resets = rng.random((batch, length)) < reset_rate if reset_rate > 0 else None
    return ScanInputs(
        a=rounded(a, dtype),
        b=rounded(b, dtype),
        initial_state=None if h0 is None else rounded(h0, dtype),
        resets=resets,
        dtype=dtype,
    )
