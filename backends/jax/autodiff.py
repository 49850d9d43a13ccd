"""A framework-neutral VJP adapter, so conformance can check gradients in any backend.

``vjp(fn, primals, cotangents)`` returns the cotangents of ``primals`` in the JAX convention
(for complex holomorphic functions: no conjugation; recurrence.md §10).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

__all__ = ["vjp"]


def vjp(fn: Callable[..., Any], primals: Sequence[Any], cotangents: Any) -> tuple[Any, ...]:
    """Pull ``cotangents`` (same structure as ``fn(*primals)``) back to ``primals``."""
    _, pullback = jax.vjp(fn, *primals)
    return tuple(pullback(cotangents))
