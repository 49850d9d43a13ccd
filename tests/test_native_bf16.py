"""bfloat16 through the native kernel: ``a``, ``b``, ``h`` (and ``a_bar``, ``b_bar``) read and written as bfloat16,
the state carried in float32 (recurrence.md §5), in the PyTorch and JAX wrappers.

The kernel's arithmetic is the float32 kernel's on the widened inputs, so its results must be *bit for bit* those of
the composition "widen a, b to float32, run the float32 kernel, round h to bfloat16" (and, for the backward: widen
the bf16 ``h`` and cotangents, run the float32 backward kernel, round ``a_bar`` and ``b_bar``). NaN payloads are not
compared: torch canonicalises a NaN when rounding, the kernel keeps its sign and top payload bits (both are NaN).
The wrappers must also hand bf16 buffers to the kernel with no float32 copy of ``a``, ``b`` or ``h``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from linrec.backends import native
from linrec.spec import reference
from linrec.spec.tolerances import max_violation, tolerance_for

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernel unavailable: {native.build_error()}")

B, T, STATE = 3, 29, (4, 16)
# a full decay, per-row (H, K, 1): R = 16, a scalar decay: R = 64 (no copies in the kernel layout).
DECAY_SHAPES = [STATE, (4, 1), (1, 1)]
OPTIONS = [  # (reverse, resets, initial state dtype)
    (False, False, None), (True, False, None), (False, True, "float32"), (True, True, "float32"),
    (False, False, "bfloat16"), (True, True, "bfloat16"),
]


def _inputs(seed: int, a_state=STATE, resets: bool = True):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-0.3, 1.0, (B, T, *a_state)).astype(np.float32)
    b = rng.standard_normal((B, T, *STATE)).astype(np.float32)
    h0 = rng.standard_normal((B, *STATE)).astype(np.float32)
    cut = rng.random((B, T)) < 0.2 if resets else None
    ct_h = rng.standard_normal((B, T, *STATE)).astype(np.float32)
    ct_f = rng.standard_normal((B, *STATE)).astype(np.float32)
    return a, b, h0, cut, ct_h, ct_f


def _same_bits(x: np.ndarray, y: np.ndarray) -> None:
    """Bitwise equality of two bf16 arrays (as uint16), NaN compared by position only."""
    assert x.shape == y.shape and x.dtype == y.dtype == np.uint16
    xf = (x.astype(np.uint32) << 16).view(np.float32)
    yf = (y.astype(np.uint32) << 16).view(np.float32)
    nan = np.isnan(xf)
    np.testing.assert_array_equal(nan, np.isnan(yf))
    differ = (x != y) & ~nan
    assert not differ.any(), f"{differ.sum()} of {x.size} values differ, e.g. {xf[differ][:4]} vs {yf[differ][:4]}"


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch


torch = pytest.importorskip("torch")
from linrec.backends.torch import native as tnative  # noqa: E402
from linrec.backends.torch.scan import linear_scan as torch_scan  # noqa: E402


def _tbits(x) -> np.ndarray:
    assert x.dtype == torch.bfloat16
    return x.detach().contiguous().view(torch.int16).numpy().view(np.uint16)


def _torch_case(seed, a_state, reverse, resets, h0_dtype):
    a, b, h0, cut, ct_h, ct_f = _inputs(seed, a_state, resets)
    tb = lambda x: torch.from_numpy(x).to(torch.bfloat16)  # noqa: E731
    a_t, b_t = tb(a), tb(b)
    h0_t = None if h0_dtype is None else torch.from_numpy(h0).to(getattr(torch, h0_dtype))
    res_t = None if cut is None else torch.from_numpy(cut)
    return a_t, b_t, h0_t, res_t, tb(ct_h), tb(ct_f)


@pytest.mark.parametrize("a_state", DECAY_SHAPES, ids=str)
@pytest.mark.parametrize(("reverse", "resets", "h0_dtype"), OPTIONS)
def test_torch_forward_and_backward_match_the_float32_composition_bitwise(a_state, reverse, resets, h0_dtype):
    a, b, h0, resets_t, ct_h, ct_f = _torch_case(0, a_state, reverse, resets, h0_dtype)
    a.requires_grad_(True)
    b.requires_grad_(True)
    if h0 is not None:
        h0.requires_grad_(True)
    h, final = torch_scan(a, b, initial_state=h0, reverse=reverse, resets=resets_t, method="native")
    assert h.dtype == final.dtype == torch.bfloat16
    grads = torch.autograd.grad((h, final), [x for x in (a, b, h0) if x is not None], (ct_h, ct_f))

    # the composition: widen, the float32 kernel, round (the same custom ops on float32 tensors)
    n, d = B, math.prod(STATE)
    target, da, _ = native.decay_layout(a_state, STATE)
    a3 = a.detach().float().expand(B, T, *target).reshape(n, T, da)
    h03 = torch.zeros(n, d) if h0 is None else h0.detach().float().reshape(n, d)
    cut = None if resets_t is None else torch.from_numpy(reference.cut_mask(resets_t.numpy(), reverse))
    h_ref, f_ref = tnative.scan_fwd(a3, b.detach().float().reshape(n, T, d), h03, cut, reverse)
    _same_bits(_tbits(h.reshape(n, T, d)), _tbits(h_ref.to(torch.bfloat16)))
    _same_bits(_tbits(final.reshape(n, d)), _tbits(f_ref.to(torch.bfloat16)))
    # the backward reads the bf16 h the forward stored, and the bf16 cotangents
    ab_ref, bb_ref, h0b_ref = tnative.scan_bwd(a3, h.detach().float().reshape(n, T, d), h03,
                                               ct_h.float().reshape(n, T, d), ct_f.float().reshape(n, d), cut,
                                               reverse)
    a_bar, b_bar = grads[0], grads[1]
    assert a_bar.dtype == b_bar.dtype == torch.bfloat16 and a_bar.shape == a.shape
    # a per-row or scalar decay's a_bar is summed over the state (R) in float32 inside the kernel, rounded once
    _same_bits(_tbits(a_bar.reshape(n, T, da)), _tbits(ab_ref.to(torch.bfloat16)))
    _same_bits(_tbits(b_bar.reshape(n, T, d)), _tbits(bb_ref.to(torch.bfloat16)))
    if h0 is not None:
        assert grads[2].dtype == h0.dtype
        expected = h0b_ref.to(h0.dtype).reshape(h0.shape)
        if h0.dtype == torch.bfloat16:
            _same_bits(_tbits(grads[2]), _tbits(expected))
        else:
            assert torch.equal(grads[2], expected)
    # and within the spec's bf16 tolerances of the float64 reference
    ref_h, _ = reference.linear_scan(
        a.detach().double().numpy(), b.detach().double().numpy(),
        initial_state=None if h0 is None else h0.detach().double().numpy(), reverse=reverse,
        resets=None if resets_t is None else resets_t.numpy())
    err, allowed = max_violation(h.detach().double().numpy(), ref_h, tolerance_for("bfloat16"))
    assert 0 < np.abs(ref_h).max() and err <= allowed


def test_torch_kernel_op_takes_bf16_in_and_gives_bf16_out_directly():
    a, b, h0, cut, _, _ = _inputs(1)
    n, d = B, math.prod(STATE)
    a3 = torch.from_numpy(a).to(torch.bfloat16).reshape(n, T, d)
    b3 = torch.from_numpy(b).to(torch.bfloat16).reshape(n, T, d)
    h, final = tnative.scan_fwd(a3, b3, torch.from_numpy(h0).reshape(n, d), torch.from_numpy(cut), False)
    assert h.dtype == torch.bfloat16 and final.dtype == torch.float32  # the state leaves the kernel unrounded
    assert h.shape == (n, T, d) and bool(torch.isfinite(h).all()) and float(h.abs().max()) > 0.5
    # final is the carry itself: h's last step rounds it
    assert torch.equal(final.to(torch.bfloat16), h[:, -1])
    with pytest.raises(TypeError, match=r"h0 in torch\.float32"):
        tnative.scan_fwd(a3, b3, torch.from_numpy(h0).reshape(n, d).to(torch.bfloat16), None, False)


def test_torch_rounding_is_nearest_even_and_keeps_nan_inf_and_subnormals():
    # h_t = 1 * h_{t-1} + 0: h is the float32 initial state rounded by the kernel's store
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    special = np.array([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F817FFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000,
                        0xFF800000, 0x7FC00001, 0xFFA00000, 0x7F800001, 0x00008000, 0x00018000, 0x80000001,
                        0x00000000, 0x80000000], dtype=np.uint32)
    h0 = torch.from_numpy(np.concatenate([special, bits]).view(np.float32).copy()).reshape(1, -1)
    d = h0.shape[1]
    one = torch.ones(1, 1, d, dtype=torch.bfloat16)
    zero = torch.zeros(1, 1, d, dtype=torch.bfloat16)
    h, _ = tnative.scan_fwd(one, zero, h0, None, False)
    got = _tbits(h).reshape(-1)
    want = _tbits((h0 + 0.0).to(torch.bfloat16)).reshape(-1)  # + 0.0: as the kernel adds b (turns -0 into +0)
    _same_bits(got, want)
    # ties to even: 1 + 2^-8 (exactly halfway) rounds down to 1, 1 + 3 * 2^-8 rounds up
    assert got[0] == 0x3F80 and got[1] == 0x3F82 and got[2] == 0x3F81 and got[3] == 0x3F81
    assert got[4] == 0x7F80 and got[5] == 0xFF80  # beyond bf16's largest finite value: inf
    # NaNs stay NaN (quiet, with their sign); a signalling NaN is not turned into inf
    assert got[8] == 0x7FC0 and got[9] == 0xFFE0 and got[10] == 0x7FC0
    assert got[11] == 0x0000 and got[12] == 0x0002  # subnormals round like the rest (tie to even, up)


def _dispatched(fn) -> list[tuple[str, list[tuple[torch.dtype, int]]]]:
    """The aten/custom ops ``fn`` runs, each with the (dtype, numel) of the tensors it returns."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            flat = out if isinstance(out, (tuple, list)) else (out,)
            seen.append((str(func), [(x.dtype, x.numel()) for x in flat if isinstance(x, torch.Tensor)]))
            return out

    with Record():
        fn()
    return seen


def test_torch_wrapper_makes_no_float32_copy_of_the_streams():
    a, b, h0, resets, ct_h, ct_f = _torch_case(3, STATE, False, True, "float32")
    a.requires_grad_(True)
    b.requires_grad_(True)
    big = b.numel()

    def forward_backward():
        h, final = torch_scan(a, b, initial_state=h0, resets=resets, method="native")
        torch.autograd.grad((h, final), (a, b), (ct_h, ct_f))

    ops = _dispatched(forward_backward)
    names = [name for name, _ in ops]
    assert any("linrec.scan_fwd" in x for x in names) and any("linrec.scan_bwd" in x for x in names)
    full_fp32 = [(name, outs) for name, outs in ops if (torch.float32, big) in outs]
    assert not full_fp32, f"float32 copies of a (B, T, *S) stream: {full_fp32}"
    # the conversion path (float16) does make them: the check above sees copies when there are any
    a16, b16 = a.detach().half(), b.detach().half()
    ops16 = _dispatched(lambda: torch_scan(a16, b16, initial_state=h0, resets=resets, method="native"))
    assert any((torch.float32, big) in outs for _, outs in ops16)


def test_torch_double_backward_of_bf16_runs_and_agrees_with_float32():
    a, b, h0, resets, ct_h, ct_f = _torch_case(4, STATE, True, True, "float32")
    for x in (a, b, h0):
        x.requires_grad_(True)
    h, final = torch_scan(a, b, initial_state=h0, reverse=True, resets=resets, method="native")
    (gb,) = torch.autograd.grad((h, final), (b,), (ct_h, ct_f), create_graph=True)
    (gga,) = torch.autograd.grad(gb.float().square().sum(), (a,))
    a32, b32 = a.detach().float().requires_grad_(True), b.detach().float().requires_grad_(True)
    h32, f32 = torch_scan(a32, b32, initial_state=h0.detach(), reverse=True, resets=resets, method="native")
    (gb32,) = torch.autograd.grad((h32, f32), (b32,), (ct_h.float(), ct_f.float()), create_graph=True)
    (gga32,) = torch.autograd.grad(gb32.square().sum(), (a32,))
    assert gga.dtype == torch.bfloat16 and float(gga32.abs().max()) > 0.1
    err, allowed = max_violation(gga.double().numpy(), gga32.double().numpy(), tolerance_for("bfloat16", grad=True))
    assert err <= allowed


# ---------------------------------------------------------------------------------------------------------------------
# JAX


def _jax():
    jax = pytest.importorskip("jax")
    return jax, jax.numpy


def _jbits(x) -> np.ndarray:
    return np.asarray(x).view(np.uint16)


@pytest.mark.parametrize("a_state", DECAY_SHAPES, ids=str)
@pytest.mark.parametrize(("reverse", "resets", "h0_dtype"), OPTIONS)
def test_jax_forward_and_backward_match_the_float32_composition_bitwise(a_state, reverse, resets, h0_dtype):
    jax, jnp = _jax()
    from linrec.backends.jax import native as jnative
    from linrec.backends.jax.scan import linear_scan as jax_scan

    a, b, h0, cut_np, ct_h, ct_f = _inputs(5, a_state, resets)
    a, b, ct_h, ct_f = (jnp.asarray(x, jnp.bfloat16) for x in (a, b, ct_h, ct_f))
    h0 = None if h0_dtype is None else jnp.asarray(h0, h0_dtype)
    resets_j = None if cut_np is None else jnp.asarray(cut_np)

    def run(a, b, h0):
        return jax_scan(a, b, initial_state=h0, reverse=reverse, resets=resets_j, method="native")

    (h, final), pullback = jax.vjp(run, a, b, h0)
    assert h.dtype == final.dtype == jnp.bfloat16
    a_bar, b_bar, h0_bar = pullback((ct_h, ct_f))

    n, d = B, math.prod(STATE)
    target, da, _ = native.decay_layout(a_state, STATE)
    a3 = jnp.broadcast_to(a.astype(jnp.float32), (B, T, *target)).reshape(n, T, da)
    h03 = jnp.zeros((n, d)) if h0 is None else h0.astype(jnp.float32).reshape(n, d)
    cut = jnp.zeros((n, 0), bool) if cut_np is None else jnp.asarray(reference.cut_mask(cut_np, reverse))
    h_ref, f_ref = jnative._ffi_fwd(a3, b.astype(jnp.float32).reshape(n, T, d), h03, cut, reverse)
    _same_bits(_jbits(h.reshape(n, T, d)), _jbits(h_ref.astype(jnp.bfloat16)))
    _same_bits(_jbits(final.reshape(n, d)), _jbits(f_ref.astype(jnp.bfloat16)))
    ab_ref, bb_ref, h0b_ref = jnative._ffi_bwd(a3, h.astype(jnp.float32).reshape(n, T, d), h03,
                                               ct_h.astype(jnp.float32).reshape(n, T, d),
                                               ct_f.astype(jnp.float32).reshape(n, d), cut, reverse)
    assert a_bar.dtype == b_bar.dtype == jnp.bfloat16 and a_bar.shape == a.shape
    _same_bits(_jbits(a_bar.reshape(n, T, da)), _jbits(ab_ref.astype(jnp.bfloat16)))
    _same_bits(_jbits(b_bar.reshape(n, T, d)), _jbits(bb_ref.astype(jnp.bfloat16)))
    if h0 is not None:
        assert h0_bar.dtype == h0.dtype
        np.testing.assert_array_equal(np.asarray(h0_bar.astype(jnp.float32)),
                                      np.asarray(h0b_ref.astype(h0.dtype).astype(jnp.float32)).reshape(h0.shape))
    assert float(jnp.abs(h.astype(jnp.float32)).max()) > 0.5


def test_jax_lowering_passes_bf16_buffers_with_no_float32_stream():
    jax, jnp = _jax()
    from linrec.backends.jax.scan import linear_scan as jax_scan

    a, b, h0, cut, ct_h, ct_f = _inputs(6)
    a, b, ct_h, ct_f = (jnp.asarray(x, jnp.bfloat16) for x in (a, b, ct_h, ct_f))
    h0, resets = jnp.asarray(h0), jnp.asarray(cut)

    def fwd_bwd(a, b, h0, ct_h, ct_f):
        out, pullback = jax.vjp(lambda a, b: jax_scan(a, b, initial_state=h0, resets=resets, method="native"), a, b)
        return out, pullback((ct_h, ct_f))

    text = jax.jit(fwd_bwd).lower(a, b, h0, ct_h, ct_f).as_text()
    stream = "x".join(map(str, b.shape))
    assert f"tensor<{stream}xbf16>" in text
    assert f"tensor<{stream}xf32>" not in text, "a float32 copy of a (B, T, *S) stream"
    calls = [line for line in text.splitlines() if "custom_call @linrec_scan_" in line]
    assert len(calls) == 2 and all(f"tensor<{B}x{T}x{math.prod(STATE)}xbf16>" in line for line in calls)


def test_jax_ffi_refuses_a_bf16_initial_state_for_the_kernel():
    jax, jnp = _jax()
    from linrec.backends.jax import native as jnative

    jnative.register()
    a3 = jnp.ones((1, 4, 8), jnp.bfloat16)
    with pytest.raises(Exception, match="state dtype"):
        jax.block_until_ready(jnative._ffi_fwd(a3, a3, jnp.zeros((1, 8), jnp.bfloat16), jnp.zeros((1, 0), bool),
                                               False))
    with pytest.raises(TypeError, match="float32 for bfloat16"):
        jnative.native_linear_scan(a3, a3, jnp.zeros((1, 8), jnp.bfloat16))


def test_jax_vmap_and_second_derivative_of_bf16():
    jax, jnp = _jax()
    from linrec.backends.jax.scan import linear_scan as jax_scan

    a, b, h0, cut, ct_h, _ = _inputs(7)
    a16, b16, ct16 = (jnp.asarray(x, jnp.bfloat16) for x in (a, b, ct_h))
    h0, resets = jnp.asarray(h0), jnp.asarray(cut)

    def h_of(a, b, h0, resets):
        return jax_scan(a, b, initial_state=h0, resets=resets, reverse=True, method="native")[0]

    # vmap over a leading axis folds into the kernel's batch: the same bits as the plain call
    stacked = jax.vmap(h_of)(a16[:, None], b16[:, None], h0[:, None], resets[:, None])
    np.testing.assert_array_equal(_jbits(stacked[:, 0]), _jbits(h_of(a16, b16, h0, resets)))

    # grad of a function of the VJP (second order) runs through the composite backward, close to float32's
    def second(a, b, ct):
        _, pullback = jax.vjp(lambda b: h_of(a, b, h0, resets), b)
        (b_bar,) = pullback(ct)
        return jnp.sum(jnp.square(b_bar.astype(jnp.float32)))

    g16 = jax.grad(second)(a16, b16, ct16)
    g32 = jax.grad(second)(a16.astype(jnp.float32), b16.astype(jnp.float32), ct16.astype(jnp.float32))
    assert g16.dtype == jnp.bfloat16 and float(jnp.abs(g32).max()) > 0.1
    err, allowed = max_violation(np.asarray(g16, np.float64), np.asarray(g32, np.float64),
                                 tolerance_for("bfloat16", grad=True))
    assert err <= allowed
