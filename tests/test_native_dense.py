"""The native dense product of the decoders (``linrec.backends.native.dense``, ``linrec_dense.cc``) and its twins
``linrec.backends.{numpy,jax,torch}.native_dense``: against a float64 product (spec float32 tolerance for a sum of
``K`` terms), the packed layout, the thread count not changing a bit, clear errors, and the frameworks' bindings
(``jit``/``grad`` in JAX, the custom op under ``torch.compile`` in PyTorch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from linrec.backends import native
from linrec.backends.native import dense as kernel
from linrec.spec.tolerances import max_violation, tolerance_for

pytestmark = pytest.mark.skipif(not native.available(), reason="the native kernel is not built")

#: rows cover one 6-row block and every remainder after full blocks (13 = 6 + 6 + 1, 32 = 5 * 6 + 2)
SHAPES = [(0, 5, 3), (1, 1, 1), (1, 7, 5), (2, 33, 17), (3, 256, 1000), (4, 64, 16), (1, 0, 9), (6, 40, 16),
          (13, 70, 35), (16, 512, 96), (kernel.MAX_ROWS, 96, 40)]


def _case(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32),
            rng.standard_normal(n, dtype=np.float32))


def _check(y, x, w, b):
    ref = x.astype(np.float64) @ w.astype(np.float64) + (0.0 if b is None else b.astype(np.float64))
    err, allowed = max_violation(np.asarray(y), ref, tolerance_for("float32", length=x.shape[1]))
    assert err <= allowed, (err, allowed)


def test_pack_lays_out_16_column_panels():
    w = np.arange(3 * 20, dtype=np.float32).reshape(3, 20)
    packed = kernel.pack(w).reshape(2, 3, kernel.PANEL)  # (P, K, 16)
    np.testing.assert_array_equal(packed[0], w[:, :16])
    np.testing.assert_array_equal(packed[1, :, :4], w[:, 16:])
    assert not packed[1, :, 4:].any()  # the last panel is zero-padded
    assert kernel.packed_size(3, 20) == packed.size


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_kernel_equals_the_float64_product(m, k, n, with_bias):
    x, w, b = _case(m, k, n)
    b = b if with_bias else None
    y = kernel.dense(x, kernel.pack(w), b, n)
    assert y.shape == (m, n) and y.dtype == np.float32
    _check(y, x, w, b)
    if m:  # each row alone gives the same bits: a row's sums do not depend on the block it was computed in
        np.testing.assert_array_equal(kernel.dense(x[-1:], kernel.pack(w), b, n), y[-1:])


def test_thread_count_changes_no_bit():
    """Each output is summed by one thread in a fixed order: 1 and 2 threads give the same bits."""
    code = ("import json, numpy as np; from linrec.backends.native import dense as d; "
            "rng = np.random.default_rng(1); x = rng.standard_normal((3, 512), dtype=np.float32); "
            "w = rng.standard_normal((512, 1536), dtype=np.float32); "
            "print(json.dumps(d.dense(x, d.pack(w), None, 1536).view(np.uint32).tolist()))")
    outs = []
    for threads in ("1", "2"):
        env = {**os.environ, "LINREC_NUM_THREADS": threads}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]


def test_bad_inputs_raise():
    x, w, b = _case(2, 8, 5)
    packed = kernel.pack(w)
    with pytest.raises(ValueError, match=f"at most {kernel.MAX_ROWS} rows"):
        kernel.dense(np.zeros((kernel.MAX_ROWS + 1, 8), np.float32), packed, None, 5)
    with pytest.raises(ValueError, match="packed kernel"):
        kernel.dense(x, packed, None, 17)
    with pytest.raises(ValueError, match=r"\(M, K\)"):
        kernel.dense(x[0], packed, None, 5)
    with pytest.raises(TypeError, match="float32"):
        kernel.dense(x.astype(np.float64), packed, None, 5)
    with pytest.raises(ValueError, match="bias"):
        kernel.dense(x, packed, b[:3], 5)
    with pytest.raises(TypeError, match="float32 kernel"):
        kernel.pack(w.astype(np.float64))


def test_numpy_twin():
    from linrec.backends.numpy import native_dense

    x, w, b = _case(2, 40, 21)
    packed = native_dense.pack(w)
    too_many = np.zeros((kernel.MAX_ROWS + 1, 40), np.float32)
    assert native_dense.applies(x, packed) and not native_dense.applies(too_many, packed)
    _check(native_dense.native_dense(x, packed, b), x, w, b)
    params = native_dense.pack_kernels({"proj.kernel": w, "proj.bias": b, "embed.embedding": w})
    assert isinstance(params["proj.kernel"], native_dense.PackedKernel) and params["embed.embedding"] is w


def test_torch_dense_takes_packed_kernels():
    torch = pytest.importorskip("torch")
    from linrec.backends.torch import native_dense
    from linrec.backends.torch.dense import dense

    x, w, b = _case(3, 96, 40)
    packed = native_dense.pack(torch.from_numpy(w))
    xt, bt = torch.from_numpy(x), torch.from_numpy(b)
    with torch.no_grad():
        _check(dense(xt, packed, bt).numpy(), x, w, b)
        _check(dense(xt[None], packed, bt)[0].numpy(), x, w, b)  # leading axes flattened
        many = torch.from_numpy(_case(kernel.MAX_ROWS + 1, 96, 40)[0])  # more rows: torch's own product, exactly
        torch.testing.assert_close(dense(many, packed, bt), torch.addmm(bt, many, packed.kernel), rtol=0, atol=0)
    # gradients: the framework's product, so autograd works (for x, and for a bias alone)
    xg = xt.clone().requires_grad_(True)
    dense(xg, packed, bt).sum().backward()
    torch.testing.assert_close(xg.grad, torch.from_numpy(w).sum(1).expand(3, 96))
    bg = bt.clone().requires_grad_(True)
    dense(xt, packed, bg).sum().backward()
    torch.testing.assert_close(bg.grad, torch.full((40,), 3.0))
    torch.library.opcheck(native_dense.dense_op, (xt, packed.packed, bt, 40))
    torch.library.opcheck(native_dense.dense_op, (xt, packed.packed, None, 40))


@pytest.mark.slow  # Inductor compiles a C++ graph: ~10 s
def test_torch_dense_compiles_as_one_graph():
    torch = pytest.importorskip("torch")
    from linrec.backends.torch import native_dense
    from linrec.backends.torch.dense import dense

    x, w, b = _case(2, 32, 24)
    packed = native_dense.pack(torch.from_numpy(w))
    step = torch.compile(lambda x: 2.0 * dense(x, packed, torch.from_numpy(b)), fullgraph=True)
    with torch.no_grad():
        _check(step(torch.from_numpy(x)).numpy() / 2.0, x, w, b)


def test_jax_dense_takes_packed_kernels():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from linrec.backends.jax import native_dense
    from linrec.backends.jax.dense import dense

    x, w, b = _case(4, 70, 35)
    params = native_dense.pack_kernels({"proj.kernel": jnp.asarray(w), "proj.bias": jnp.asarray(b)})
    packed = params["proj.kernel"]
    assert isinstance(packed, native_dense.PackedKernel)
    run = jax.jit(lambda p, x: dense(x, p["proj.kernel"], p["proj.bias"]))
    _check(run(params, jnp.asarray(x)), x, w, b)
    many = jnp.asarray(_case(kernel.MAX_ROWS + 1, 70, 35)[0])  # more rows: XLA's dot, exactly
    np.testing.assert_array_equal(np.asarray(run(params, many)), np.asarray(jax.jit(
        lambda x: dense(x, jnp.asarray(w), jnp.asarray(b)))(many)))
    # differentiable: the plain product's derivative
    grad = jax.grad(lambda x, p: dense(x, p["proj.kernel"], p["proj.bias"]).sum(), argnums=(0, 1))
    gx, gp = grad(jnp.asarray(x), params)
    np.testing.assert_allclose(np.asarray(gx), np.broadcast_to(w.sum(1), x.shape), rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gp["proj.kernel"].kernel), np.broadcast_to(x.sum(0)[:, None], w.shape),
                               rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gp["proj.bias"]), np.full(35, 4.0), rtol=0, atol=0)


def test_step_rows_reads_the_rows_of_any_leading_axes():
    from linrec.backends.native.dense import step_rows

    assert step_rows(np.zeros((3, 4))) == 3 and step_rows(np.zeros((2, 3, 4))) == 6
    assert step_rows(np.zeros(4)) == 0 and step_rows([[1.0, 2.0]]) == 0  # no rows to read: the checks say why
