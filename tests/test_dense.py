"""``dense``, the twin dense product every layer uses, against ``x @ kernel + bias`` in float64 NumPy, values and
gradients, with the tolerances of ``spec/tolerances.py``."""

from __future__ import annotations

import numpy as np
import pytest

from linrec.spec.tolerances import max_violation, tolerance_for

SHAPES = [(5,), (3, 5), (2, 3, 5)]  # one row, a batch of rows (the decode step), (B, T, I) (training)


def _case(shape: tuple[int, ...], seed: int = 0):
    rng = np.random.default_rng(seed)
    x, kernel, bias = (rng.standard_normal(s).astype(np.float32) for s in (shape, (5, 4), (4,)))
    cotangent = rng.standard_normal((*shape[:-1], 4)).astype(np.float32)
    return x, kernel, bias, cotangent


def _reference(x, kernel, bias, cotangent, with_bias: bool):
    """``y`` and the gradients of ``<y, cotangent>`` w.r.t. ``x``, ``kernel``, ``bias`` in float64."""
    x, kernel, bias, ct = (a.astype(np.float64) for a in (x, kernel, bias, cotangent))
    y = x @ kernel + (bias if with_bias else 0)
    rows, ct_rows = x.reshape(-1, x.shape[-1]), ct.reshape(-1, ct.shape[-1])
    return y, ct @ kernel.T, rows.T @ ct_rows, ct_rows.sum(0)


def _check(got, want) -> None:
    tol = tolerance_for("float32", grad=True)
    for g, w in zip(got, want):
        err, allowed = max_violation(np.asarray(g), w, tol)
        assert np.shape(g) == w.shape and err <= allowed, (err, allowed)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_jax_dense_matches_the_product_with_gradients(shape, with_bias):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from linrec.backends.jax.dense import dense

    x, kernel, bias, ct = _case(shape)
    want = _reference(x, kernel, bias, ct, with_bias)

    def f(x, kernel, bias):
        return dense(x, kernel, bias if with_bias else None)

    y, vjp = jax.vjp(f, *(jnp.asarray(a) for a in (x, kernel, bias)))
    dx, dk, db = vjp(jnp.asarray(ct))
    _check([y, dx, dk], want[:3])
    if with_bias:
        _check([db], want[3:])


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["canonical", "nn.Linear"])
def test_torch_dense_matches_the_product_with_gradients(shape, with_bias, layout):
    """``layout="nn.Linear"``: the kernel is the transposed view of an ``(O, I)`` weight, as the modules pass it."""
    torch = pytest.importorskip("torch")

    from linrec.backends.torch.dense import dense

    x, kernel, bias, ct = _case(shape)
    want = _reference(x, kernel, bias, ct, with_bias)
    xt, bt = torch.tensor(x, requires_grad=True), torch.tensor(bias, requires_grad=True)
    weight = torch.tensor(kernel.T.copy() if layout == "nn.Linear" else kernel, requires_grad=True)
    kt = weight.T if layout == "nn.Linear" else weight
    y = dense(xt, kt, bt if with_bias else None)
    y.backward(torch.tensor(ct))
    dk = weight.grad.T if layout == "nn.Linear" else weight.grad
    _check([y.detach(), xt.grad, dk], want[:3])
    if with_bias:
        _check([bt.grad], want[3:])
