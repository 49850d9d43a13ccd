"""A framework-neutral VJP adapter, so conformance can check gradients in any backend.

``vjp(fn, primals, cotangents)`` returns the cotangents of ``primals`` in the JAX convention
(for complex holomorphic functions: no conjugation; recurrence.md §10).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

__all__ = ["first_order_only", "vjp"]


def vjp(fn: Callable[..., Any], primals: Sequence[Any], cotangents: Any) -> tuple[Any, ...]:
    """Pull ``cotangents`` (same structure as ``fn(*primals)``) back to ``primals``."""
    _, pullback = jax.vjp(fn, *primals)
    return tuple(pullback(cotangents))


def first_order_only(fn: Callable[..., Any], message: str) -> Callable[..., Any]:
    """``fn`` (array arguments only) made to raise ``ValueError(message)`` when differentiated: a backward kernel
    that has no derivative of its own says so instead of failing inside JAX (``ffi_call`` has no JVP rule)."""
    wrapped = jax.custom_jvp(fn)

    def refuse(primals, tangents):
        raise ValueError(message)

    wrapped.defjvp(refuse)
    return wrapped
