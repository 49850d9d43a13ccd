"""GatedLinearRNN with its gates fused into the Pallas scan (``method="pallas"`` of the JAX layer).

Shape legend: ``B`` batch, ``T`` time, ``H`` state width, ``n`` 3 (tied gates) or 4 (untied).

From the layer's projection ``u (B, T, nH) = [u_in | u_i | (u_f |) u_o]`` with the default activations (tanh
input, sigmoid gates; ``linrec.spec.gated_linear_rnn.fusable``): ``h_t = f h_{t-1} + i tanh(u_in)`` with
``f = 1 - i`` when tied (spec/gated_linear_rnn.md). The kernel (``pallas_scan.fused_layer_scan``) reads the parts of
``u`` in place and computes ``f`` and ``i tanh(u_in)`` inside the scan; the read-out ``tanh(h) o`` stays with the
layer (XLA fuses it into the output projection's input). Interpreted on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from linrec.backends.jax import pallas_scan
from linrec.backends.jax.arrays import dtype_name

__all__ = ["applies", "pallas_gated_linear_rnn"]

Array = jax.Array


def _gates_tied(u_in: Array, u_i: Array) -> tuple[Array, Array]:
    i = jax.nn.sigmoid(u_i)
    return 1 - i, i * jnp.tanh(u_in)


def _gates_untied(u_in: Array, u_i: Array, u_f: Array) -> tuple[Array, Array]:
    return jax.nn.sigmoid(u_f), jax.nn.sigmoid(u_i) * jnp.tanh(u_in)


def applies(method: str) -> bool:
    """Whether the layer's scan ``method`` is the fused Pallas kernel (only when asked for)."""
    return method == "pallas"


def pallas_gated_linear_rnn(u: Array, h0: Array, tied: bool, reverse: bool) -> tuple[Array, Array]:
    """``(h (B, T, H), final (B, H))`` from projections ``u (B, T, nH)`` and ``h0 (B, H)`` (``u``'s dtype).

    Differentiable in ``u`` (the ``u_o`` part gets no gradient from here) and ``h0``.
    """
    pallas_scan.check_pallas_dtype("x", dtype_name(u))
    pallas_scan.notice_interpreted()
    if tied:
        return pallas_scan.fused_layer_scan(u, 3, (0, 1), _gates_tied, h0, reverse)
    return pallas_scan.fused_layer_scan(u, 4, (0, 1, 2), _gates_untied, h0, reverse)
