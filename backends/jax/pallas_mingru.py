"""minGRU with its gates fused into the Pallas scan (``method="pallas"`` of the JAX minGRU layers).

Shape legend: ``B`` batch, ``T`` time, ``H`` state width.

``u = [u_z | u_h] (B, T, 2H)`` is the layer's projection; per step ``h_t = σ(-u_z) h_{t-1} + σ(u_z) c(u_h)``
(spec/mingru.md) with ``c`` the identity or ``g``. The kernel (``pallas_scan.fused_layer_scan``) reads both halves of
``u`` in place and computes the gates inside the scan, so ``a`` and ``b`` are never written to memory; its VJP
recomputes ``a`` in the adjoint kernel. Interpreted on CPU, like every Pallas kernel here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from linrec.backends.jax import pallas_scan
from linrec.backends.jax.arrays import dtype_name

__all__ = ["applies", "pallas_mingru"]

Array = jax.Array


def _gates_identity(u_z: Array, u_h: Array) -> tuple[Array, Array]:
    return jax.nn.sigmoid(-u_z), jax.nn.sigmoid(u_z) * u_h


def _gates_g(u_z: Array, u_h: Array) -> tuple[Array, Array]:
    return jax.nn.sigmoid(-u_z), jax.nn.sigmoid(u_z) * jnp.where(u_h >= 0, u_h + 0.5, jax.nn.sigmoid(u_h))


_GATES = {"identity": _gates_identity, "g": _gates_g}


def applies(method: str) -> bool:
    """Whether the layer's scan ``method`` is the fused Pallas kernel (only when asked for: ``auto`` keeps the
    backend's choice, which takes the plain Pallas scan on a GPU/TPU)."""
    return method == "pallas"


def pallas_mingru(u: Array, h0: Array, candidate: str) -> tuple[Array, Array]:
    """``(h (B, T, H), final (B, H))`` from projections ``u (B, T, 2H)`` and ``h0 (B, H)`` (``u``'s dtype).

    ``candidate``: ``"identity"`` or ``"g"``. Differentiable in ``u`` and ``h0``. On a GPU/TPU ``u`` must be
    float32 (``TypeError`` naming the method that takes float64 otherwise).
    """
    pallas_scan.check_pallas_dtype("x", dtype_name(u))
    pallas_scan.notice_interpreted()
    return pallas_scan.fused_layer_scan(u, 2, (0, 1), _GATES[candidate], h0, False)
