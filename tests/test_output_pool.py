"""The PyTorch native ops' output pool (``linrec.backends.torch.output_pool``): a freed output's buffer serves the
next output of its size, within a limit, and reuse never changes a result."""

from __future__ import annotations

import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from linrec.backends import native  # noqa: E402
from linrec.backends.torch import native as tnative  # noqa: E402
from linrec.backends.torch import output_pool  # noqa: E402
from linrec.spec import reference  # noqa: E402
from linrec.spec.tolerances import max_violation, tolerance_for  # noqa: E402

needs_kernel = pytest.mark.skipif(not native.available(), reason="native kernel unavailable")
LARGE = (4, 128, 1024)  # 2 MiB of float32: above output_pool.MIN_BYTES


@pytest.fixture(autouse=True)
def _empty_pool():
    output_pool.clear()
    yield
    output_pool.clear()


def test_a_freed_buffer_serves_the_next_output_of_its_size():
    first = output_pool.empty(LARGE, np.float32)
    address = first.ctypes.data
    del first
    gc.collect()
    assert output_pool.free_bytes() == 4 * np.prod(LARGE)
    second = output_pool.empty(LARGE, np.float32)
    assert second.ctypes.data == address and second.shape == LARGE and second.dtype == np.float32
    assert output_pool.free_bytes() == 0
    # the same bytes serve another dtype of the same size; a different size gets a fresh buffer
    del second
    gc.collect()
    assert output_pool.empty((4, 128, 512), np.complex64).ctypes.data == address
    assert output_pool.empty((3, 128, 1024), np.float32).ctypes.data != address


def test_small_outputs_are_not_pooled():
    small = output_pool.empty((16, 16), np.float32)
    del small
    gc.collect()
    assert output_pool.free_bytes() == 0


def test_the_limit_caps_the_free_memory_held(monkeypatch):
    monkeypatch.setenv("LINREC_TORCH_POOL_MB", "3")  # room for one 2 MiB buffer, not two
    outs = [output_pool.empty(LARGE, np.float32) for _ in range(2)]
    del outs
    gc.collect()
    assert output_pool.free_bytes() == 2 << 20
    monkeypatch.setenv("LINREC_TORCH_POOL_MB", "0")  # off: outputs neither come from the pool nor go back to it
    out = output_pool.empty(LARGE, np.float32)
    del out
    gc.collect()
    assert output_pool.free_bytes() == 2 << 20


@pytest.mark.parametrize("raw", ["lots", "-1", "inf", "nan"])
def test_a_bad_limit_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv("LINREC_TORCH_POOL_MB", raw)
    with pytest.raises(ValueError, match="LINREC_TORCH_POOL_MB"):
        output_pool.empty(LARGE, np.float32)  # at the call that allocates, not later in a finalizer


@needs_kernel
def test_the_torch_ops_reuse_freed_outputs_and_results_do_not_change():
    """Two scans of different inputs in a row: the second writes into the first's freed ``h`` and still matches the
    float64 reference (no stale value survives)."""
    rng = np.random.default_rng(0)
    results = []
    for _ in range(2):
        a = rng.uniform(0.5, 1.0, LARGE).astype(np.float32)
        b = rng.standard_normal(LARGE).astype(np.float32)
        h, final = tnative.native_linear_scan(torch.from_numpy(a), torch.from_numpy(b), None)
        want, want_final = reference.linear_scan(a.astype(np.float64), b.astype(np.float64))
        tol = tolerance_for("float32", method="native", length=LARGE[1])
        for got, ref in ((h, want), (final, want_final)):
            err, allowed = max_violation(got.numpy(), ref, tol)
            assert err <= allowed
        results.append(h.data_ptr())
        del h, final
        gc.collect()
    assert results[0] == results[1]


@needs_kernel
def test_an_expanded_cotangent_gives_the_gradient_of_a_materialised_one():
    """``h.sum().backward()`` hands the op a stride-0 ones tensor: it is materialised (into a pooled buffer), and
    the gradients equal those of an explicit ones cotangent."""
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.uniform(0.5, 1.0, LARGE).astype(np.float32)).requires_grad_(True)
    b = torch.from_numpy(rng.standard_normal(LARGE).astype(np.float32)).requires_grad_(True)
    for _ in range(2):  # the second step reuses the first step's freed buffers
        a.grad = b.grad = None
        tnative.native_linear_scan(a, b, None)[0].sum().backward()
    want = torch.autograd.grad(tnative.native_linear_scan(a, b, None)[0], (a, b), torch.ones(LARGE))
    assert torch.equal(a.grad, want[0]) and torch.equal(b.grad, want[1])
