"""recurrence.md §12 as NumPy: the chunked, map-exchanging scan equals the reference for every option."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from linrec.backends.numpy.distributed import exchange_bytes, linear_scan_sharded
from linrec.spec import reference
from linrec.spec.tolerances import max_violation, tolerance_for

B, T = 3, 24


def _split(x, lengths):
    return np.split(x, np.cumsum(lengths)[:-1], axis=1)


def _inputs(rng, dtype, state=(4,), a_state=None):
    a_state = state if a_state is None else a_state
    real = np.float64 if dtype in ("float64", "complex128") else np.float32
    a = rng.uniform(0.5, 1.0, (B, T, *a_state)).astype(real)
    b = rng.standard_normal((B, T, *state)).astype(real)
    h0 = rng.standard_normal((B, *state)).astype(real)
    if dtype.startswith("complex"):
        b = (b + 1j * rng.standard_normal(b.shape)).astype(dtype)
        h0 = (h0 + 1j * rng.standard_normal(h0.shape)).astype(dtype)
        a = (a * np.exp(1j * rng.uniform(-0.3, 0.3, a.shape))).astype(dtype) if a_state == state else a
    return a, b, h0


def _check(h_chunks, final, a, b, h0, reverse, resets, dtype):
    wide = np.complex128 if np.iscomplexobj(b) else np.float64
    ref_h, ref_final = reference.linear_scan(
        a.astype(np.complex128 if np.iscomplexobj(a) else np.float64), b.astype(wide),
        initial_state=None if h0 is None else h0.astype(wide), reverse=reverse, resets=resets)
    tol = tolerance_for(dtype, length=T)
    for got, want in ((np.concatenate(h_chunks, axis=1), ref_h), (final, ref_final)):
        err, allowed = max_violation(got, want, tol)
        assert err <= allowed, (err, allowed)


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("lengths", [(6, 6, 6, 6), (1, 10, 5, 8), (24,)])
def test_equals_reference(dtype, reverse, with_h0, lengths):
    rng = np.random.default_rng(0)
    a, b, h0 = _inputs(rng, dtype)
    h0 = h0 if with_h0 else None
    h, final = linear_scan_sharded(_split(a, lengths), _split(b, lengths), initial_state=h0, reverse=reverse,
                                   method="sequential")
    assert [x.shape[1] for x in h] == list(lengths) and h[0].dtype == b.dtype
    _check(h, final, a, b, h0, reverse, None, dtype)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("method", ["sequential", "associative", "chunked"])
def test_resets_inside_and_at_chunk_edges(reverse, method):
    rng = np.random.default_rng(1)
    a, b, h0 = _inputs(rng, "float64")
    resets = np.zeros((B, T), bool)
    resets[0, 6] = True      # exactly at the first step of chunk 1 (cuts chunk 0 -> 1; reverse: chunk 0's last link)
    resets[1, 9] = True      # inside chunk 1
    resets[1, 18] = True     # at the edge of chunk 3
    resets[2, 0] = True      # global step 0: no effect
    resets[2, 12] = True
    resets[2, 13] = True     # two cuts in a row
    lengths = (6, 6, 6, 6)
    h, final = linear_scan_sharded(_split(a, lengths), _split(b, lengths), initial_state=h0, reverse=reverse,
                                   resets=_split(resets, lengths), method=method)
    _check(h, final, a, b, h0, reverse, resets, "float64")


def test_broadcast_decay_and_matrix_state():
    rng = np.random.default_rng(2)
    a, b, h0 = _inputs(rng, "float64", state=(2, 3, 4), a_state=(2, 3, 1))
    lengths = (8, 8, 8)
    for reverse in (False, True):
        h, final = linear_scan_sharded(_split(a, lengths), _split(b, lengths), initial_state=h0, reverse=reverse)
        _check(h, final, a, b, h0, reverse, None, "float64")


def test_real_decay_of_complex_state():
    rng = np.random.default_rng(3)
    a, b, h0 = _inputs(rng, "complex128", a_state=(1,))
    assert not np.iscomplexobj(a)
    h, final = linear_scan_sharded(_split(a, (12, 12)), _split(b, (12, 12)), initial_state=h0)
    _check(h, final, a, b, h0, False, None, "complex128")


def test_nan_does_not_cross_a_cut_at_a_chunk_edge():
    a = np.full((1, 8, 1), 0.5)
    b = np.ones((1, 8, 1))
    b[0, 2] = np.nan
    resets = np.zeros((1, 8), bool)
    resets[0, 4] = True  # the second chunk starts a new segment
    h, final = linear_scan_sharded(_split(a, (4, 4)), _split(b, (4, 4)), resets=_split(resets, (4, 4)))
    assert np.isnan(h[0][0, 2:]).all() and np.isfinite(h[1]).all() and np.isfinite(final).all()


def test_errors():
    a, b = np.ones((1, 4, 2)), np.ones((1, 4, 2))
    with pytest.raises(ValueError, match=r"method='log'.*'chunked'"):
        linear_scan_sharded([a], [b], method="log")
    with pytest.raises(ValueError, match="lists of chunks"):
        linear_scan_sharded(a, b)
    with pytest.raises(ValueError, match="at least one step"):
        linear_scan_sharded([a, a[:, :0]], [b, b[:, :0]])
    with pytest.raises(ValueError, match="resets"):
        linear_scan_sharded([a], [b], resets=np.zeros((1, 4), bool))


def test_exchange_bytes_is_independent_of_t():
    small = exchange_bytes(np.zeros((8, 16, 1024), np.float32), np.zeros((8, 16, 1024), np.float32), devices=8)
    large = exchange_bytes(np.zeros((8, 4096, 1024), np.float32), np.zeros((8, 4096, 1024), np.float32), devices=8)
    assert small == large == 7 * 8 * 2048 * 4  # the README's 459 KB example of spec §12
    a, b = np.zeros((2, 5, 4, 8, 1)), np.zeros((2, 5, 4, 8, 8))  # float64: 8 bytes per value
    assert exchange_bytes(a, b, devices=4, resets=True) == 3 * (2 * (32 + 256) * 8 + 2)
    assert exchange_bytes(a, b, devices=4, backward=True) == 2 * 3 * 2 * (32 + 256) * 8
    bf16 = np.zeros((8, 16, 1024), ml_dtypes.bfloat16)  # maps travel in the float32 compute dtype
    assert exchange_bytes(bf16, bf16, devices=8) == small
    with pytest.raises(ValueError, match="devices"):
        exchange_bytes(a, b, devices=1)
