"""The backward kernels read an expanded cotangent (``h.sum()``: one row over every step) as that one
row, with row stride 0, instead of a copy the size of ``h``: results bit-identical to the materialised cotangent."""

from __future__ import annotations

import numpy as np
import pytest

from linrec.backends import native

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernel not built")

N, T, D = 3, 37, 70  # D not a multiple of the vector width; several thread blocks at N*D


def _row_and_full(rng, dtype, n=N, t=T, d=D):
    row = rng.standard_normal(d).astype(dtype)
    if np.iscomplexobj(row):
        row = row + 1j * rng.standard_normal(d).astype(row.real.dtype)
    return np.broadcast_to(row, (n, t, d)), np.ascontiguousarray(np.broadcast_to(row, (n, t, d)))


def test_shares_one_row():
    assert native.shares_one_row((2, 5, 4), (0, 0, 4))
    assert native.shares_one_row((2, 5, 4), (0, 0, 0))  # a scalar expanded
    assert not native.shares_one_row((2, 5, 4), (80, 16, 4))
    assert not native.shares_one_row((2, 5, 4), (0, 16, 4))  # one batch row, every step its own
    assert not native.shares_one_row((1, 1, 4), (0, 0, 4))  # one row anyway: nothing to save
    assert not native.shares_one_row((2, 5, 0), (0, 0, 0))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype, conjugate", [(np.float32, False), (np.float64, False), (np.complex64, False),
                                              (np.complex64, True)])
@pytest.mark.parametrize("with_cut", [False, True])
def test_scan_vjp_reads_a_shared_row_bit_for_bit(dtype, conjugate, reverse, with_cut):
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 1.0, (N, T, D)).astype(dtype)
    b = rng.standard_normal((N, T, D)).astype(dtype)
    h0 = rng.standard_normal((N, D)).astype(dtype)
    cut = rng.random((N, T)) < 0.1 if with_cut else None
    h, _ = native.scan_3d(a, b, h0, cut, reverse)
    shared, full = _row_and_full(rng, dtype)
    ct_final = rng.standard_normal((N, D)).astype(dtype)
    got = native.scan_vjp_3d(a, h, h0, shared, ct_final, cut, reverse, conjugate)
    want = native.scan_vjp_3d(a, h, h0, full, ct_final, cut, reverse, conjugate)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("gates, candidate", [("mingru", "g"), ("mingru", "identity"), ("minlstm", "g")])
def test_fused_mingru_vjp_reads_a_shared_row_bit_for_bit(gates, candidate):
    rng = np.random.default_rng(1)
    blocks = 3 if gates == "minlstm" else 2
    u = rng.standard_normal((N, T, blocks * D)).astype(np.float32)
    h0 = rng.standard_normal((N, D)).astype(np.float32)
    h, _ = native.mingru_scan(u, h0, candidate, gates)
    shared, full = _row_and_full(rng, np.float32)
    ct_final = rng.standard_normal((N, D)).astype(np.float32)
    got = native.mingru_scan_vjp(u, h, h0, shared, ct_final, candidate, gates)
    want = native.mingru_scan_vjp(u, h, h0, full, ct_final, candidate, gates)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_glr_vjp_reads_a_shared_row_bit_for_bit(tied, reverse):
    rng = np.random.default_rng(2)
    u = rng.standard_normal((N, T, (3 if tied else 4) * D)).astype(np.float64)
    h0 = rng.standard_normal((N, D))
    _, h, _ = native.glr_scan(u, h0, tied, reverse)
    shared, full = _row_and_full(rng, np.float64)
    ct_final = rng.standard_normal((N, D))
    got = native.glr_scan_vjp(u, h, h0, shared, ct_final, tied, reverse)
    want = native.glr_scan_vjp(u, h, h0, full, ct_final, tied, reverse)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_a_cotangent_row_stride_other_than_d_or_0_is_refused():
    lib = native._builder().load()
    a = np.full((1, 2, 4), 0.5, np.float32)
    h = np.ones((1, 2, 4), np.float32)
    h0 = np.zeros((1, 4), np.float32)
    outs = [np.empty_like(a), np.empty_like(h), np.empty_like(h0)]
    ptr = native._ptr
    status = lib.linrec_scan_bwd(0, 0, 1, 2, 4, 4, ptr(a), ptr(h), ptr(h0), ptr(h), 3, ptr(h0), None, 0, 0,
                                 *(ptr(x) for x in outs))
    with pytest.raises(ValueError, match="linrec native kernel"):
        native._check(status)


def test_torch_sum_backward_does_not_materialise_the_cotangent(monkeypatch):
    torch = pytest.importorskip("torch")
    import linrec.backends.torch as lt
    from linrec.backends.torch import native as tnative

    seen = []
    real = tnative._cotangent_rows

    def spy(ct, dtype):
        out = real(ct, dtype)
        seen.append(out[1])
        return out

    monkeypatch.setattr(tnative, "_cotangent_rows", spy)
    rng = np.random.default_rng(3)
    a0 = torch.from_numpy(rng.uniform(0.5, 1.0, (N, T, D)).astype(np.float32))
    b0 = torch.from_numpy(rng.standard_normal((N, T, D)).astype(np.float32))
    ones = torch.ones(N, T, D)
    grads = []
    for loss in (lambda h: h.sum(), lambda h: (h * ones).sum()):  # an expanded, then a dense cotangent
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        loss(lt.linear_scan(a, b, method="native")[0]).backward()
        grads.append((a.grad, b.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert seen == [0, D]


@pytest.mark.parametrize("layer", ["mingru", "glr"])
def test_torch_fused_layer_kernels_take_the_shared_row(layer):
    torch = pytest.importorskip("torch")
    from linrec.backends.torch import native_gated_linear_rnn as tglr
    from linrec.backends.torch import native_mingru as tmg

    rng = np.random.default_rng(4)
    blocks = 2 if layer == "mingru" else 3
    u = torch.from_numpy(rng.standard_normal((N, T, blocks * D)).astype(np.float32))
    h0 = torch.from_numpy(rng.standard_normal((N, D)).astype(np.float32))
    row = torch.from_numpy(rng.standard_normal(D).astype(np.float32))
    ct_final = torch.zeros(N, D)
    if layer == "mingru":
        code = native.fused_code("g")
        h, _ = tmg.mingru_fwd(u, h0, code)
        run = lambda ct: tmg.mingru_bwd(u, h, h0, ct, ct_final, code)  # noqa: E731
    else:
        _, h, _ = tglr.glr_fwd(u, h0, True, False)
        run = lambda ct: tglr.glr_bwd(u, h, h0, ct, ct_final, True, False)  # noqa: E731
    expanded = row.expand(N, T, D)
    for got, want in zip(run(expanded), run(expanded.contiguous())):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
