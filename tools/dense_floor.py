"""The matrix-product floor of a layer or model: its dense products alone, timed in one framework.

Shape legend: ``N`` rows (``B·T`` for a training step, ``B`` for a decode step), ``I``/``O`` a kernel's input and
output width.

Any implementation of a layer computes its dense projections, whatever it does for the recurrence, so the time
of those products alone (same shapes, same framework, same process) bounds how fast its training or decode step
can get, and ``original's time / floor`` bounds the speedup over an original that computes them too (Amdahl). The
benchmarks report it beside the targets that ask for a multiple of an original's speed.

A kernel is every 2-D canonical parameter except embedding tables (a lookup, not a product): ``(I, O)`` applied to
an ``(N, I)`` input. Biases, norms and the recurrence are left out, so the floor is a lower bound for any
implementation that runs these products through the framework's matrix multiply (one that merged products sharing
an input into a wider one could go somewhat lower). The products are independent (each reads its own input).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["dense_shapes", "jax_dense", "torch_dense"]


def dense_shapes(params: Mapping[str, Any]) -> list[tuple[int, int]]:
    """``(I, O)`` of every 2-D parameter of canonical ``params`` except embedding tables, in order."""
    return [tuple(int(n) for n in np.shape(v)) for k, v in params.items()
            if np.ndim(v) == 2 and k.rsplit(".", 1)[-1] != "embedding"]


def _inputs(shapes: list[tuple[int, int]], rows: int, seed: int = 0) -> tuple[list, list, list]:
    """float32 inputs ``x (N, I)``, kernels ``w (I, O)`` and output cotangents ``(N, O)``."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((rows, i), dtype=np.float32) for i, _ in shapes]
    ws = [(rng.standard_normal((i, o), dtype=np.float32) / np.sqrt(i)).astype(np.float32) for i, o in shapes]
    cts = [rng.standard_normal((rows, o), dtype=np.float32) for _, o in shapes]
    return xs, ws, cts


def jax_dense(shapes: list[tuple[int, int]], rows: int, *, train: bool) -> Callable[[], Any]:
    """One compiled JAX call of every product ``x (N, I) @ w (I, O)`` (concatenated into one ``(N, ΣO)`` result);
    ``train``: the products and their VJP for fixed random output cotangents with respect to every ``x`` and ``w``
    (forward and backward), returned as ``(ys, (xs_bar, ws_bar))``. Returns the call (compiled here).

    Without ``train`` (a decode step) the products run in order, each input plus a column of the previous
    product's output: in a model every layer waits for the one before, while independent products let XLA:CPU run
    them side by side on its thread pool (the GatedLinearRNN LM's 17 products at ``N=16``: 778 µs independent,
    a floor no sequential model can reach; the PyTorch floor is eager, in order, anyway).

    Why the products are returned: the VJP of a product does not need its output, so a call returning only the
    cotangents lets XLA drop the forward products, a third of the work any training step does (the floor then
    read 2/3 of what a layer cannot avoid)."""
    import jax
    import jax.numpy as jnp

    xs, ws, cts = (jax.device_put(a) for a in _inputs(shapes, rows))

    def products(xs, ws):
        return [x @ w for x, w in zip(xs, ws)]

    def vjp(xs, ws, cts):
        ys, pullback = jax.vjp(products, xs, ws)
        return ys, pullback(cts)

    if train:
        compiled = jax.jit(vjp).lower(xs, ws, cts).compile()
        return lambda: compiled(xs, ws, cts)
    def chained(xs, ws):
        ys, previous = [], 0.0
        for x, w in zip(xs, ws):
            ys.append((x + previous) @ w)
            previous = ys[-1][:, :1]  # (N, 1): the next product waits for this one, as a model's layers do
        # one output buffer: at B=1 the call's overhead per returned array is a visible part of the floor
        return jnp.concatenate(ys, axis=-1)

    compiled = jax.jit(chained).lower(xs, ws).compile()
    return lambda: compiled(xs, ws)


def torch_dense(shapes: list[tuple[int, int]], rows: int, *, train: bool) -> Callable[[], Any]:
    """Every product ``x (N, I) @ w (I, O)`` in eager PyTorch; ``train``: the products and ``torch.autograd.grad``
    for fixed random output cotangents with respect to every ``x`` and ``w`` (forward and backward), returned as
    ``(ys, xs_bar + ws_bar)``, else the products under ``no_grad``."""
    import torch

    xs, ws, cts = ([torch.from_numpy(a).requires_grad_(train and k < 2) for a in arrays]
                   for k, arrays in enumerate(_inputs(shapes, rows)))

    def forward():
        with torch.no_grad():
            return [x @ w for x, w in zip(xs, ws)]

    def step():
        ys = [x @ w for x, w in zip(xs, ws)]
        return [y.detach() for y in ys], torch.autograd.grad(ys, [*xs, *ws], cts)

    return step if train else forward
