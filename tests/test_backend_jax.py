"""The JAX backend against the float64 NumPy reference (recurrence.md), with the tolerances of §9.

Inputs are drawn in float64, rounded once to the case dtype, and the reference runs on the rounded values upcast
back, so every comparison judges exactly the numbers the backend received.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax.ad_checkpoint import print_saved_residuals  # noqa: E402

from linrec.backends import jax as J  # noqa: E402
from linrec.backends.jax import scan as jax_scan  # noqa: E402
from linrec.spec import reference as R  # noqa: E402
from linrec.spec.tolerances import max_violation, tolerance_for  # noqa: E402

DTYPES = ("float32", "float64", "complex64", "bfloat16")


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(jnp.bfloat16) if name == "bfloat16" else np.dtype(name)


def _up(x: np.ndarray | None) -> np.ndarray | None:
    """Rounded values upcast for the reference run."""
    if x is None:
        return None
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _draw(rng, shape, dtype, *, positive=False, decay=False, real=False):
    """Values rounded to ``dtype``; ``real=True`` with a complex dtype gives the real dtype of that precision."""
    complex_ = dtype.startswith("complex") and not real
    if positive:
        x = rng.uniform(0.05, 1, shape) if decay else rng.uniform(0.1, 2, shape)
    elif decay:
        x = rng.uniform(-1, 1, shape) * (np.exp(1j * rng.uniform(-np.pi, np.pi, shape)) if complex_ else 1)
    else:
        x = rng.standard_normal(shape) + (1j * rng.standard_normal(shape) if complex_ else 0)
    if dtype.startswith("complex") and not complex_:
        dtype = {"complex64": "float32", "complex128": "float64"}[dtype]
    return np.asarray(x).astype(_np_dtype(dtype))


def _inputs(seed, shape_a, shape_b, dtype, *, positive=False, init=True, reset_rate=0.0, real_a=False):
    rng = np.random.default_rng(seed)
    a = _draw(rng, shape_a, dtype, positive=positive, decay=True, real=real_a)
    b = _draw(rng, shape_b, dtype, positive=positive)
    h0 = _draw(rng, (shape_b[0], *shape_b[2:]), dtype, positive=positive) if init else None
    resets = rng.random(shape_b[:2]) < reset_rate if reset_rate else None
    return a, b, h0, resets


def _close(name, got, ref, dtype, *, method=None, length=0, grad=False):
    got = np.asarray(J.to_numpy(got))
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    err, allowed = max_violation(got, ref, tolerance_for(dtype, method=method, length=length, grad=grad))
    assert err <= allowed, f"{name}: max error {err:.3g} > allowed {allowed:.3g}"


# (shape of a, shape of b, reverse, reset rate, initial state, chunk size). Few cases, each covering several laws:
# every distinct shape/dtype/option costs an XLA compile, which dominates the runtime of this file.
EMPTY = ((2, 0, 3), (2, 0, 3), False, 0.0, True, None)  # T = 0: empty h, final_state = initial_state
# odd T, chunk size not dividing T, row decay of an (H, K, V) state, reverse, resets, no initial state
MIXED = ((2, 7, 2, 3, 1), (2, 7, 2, 3, 4), True, 0.3, False, 3)
MORE = [
    ((2, 1, 3), (2, 1, 3), False, 0.0, True, 1),  # T = 1
    ((2, 5, 3), (2, 5, 3), False, 0.4, True, None),  # forward with resets, default chunk size (longer than T)
    ((1, 19, 1), (1, 19, 5), False, 0.0, True, 8),  # a broadcast over D, chunk size not dividing T
]


def _check_against_reference(method, dtype, cases, seed=0):
    log = method == "log"
    for i, (sa, sb, reverse, rate, init, chunk) in enumerate(cases):
        # the log method refuses resets (tested below)
        a, b, h0, resets = _inputs(seed + i, sa, sb, dtype, positive=log, init=init, reset_rate=0.0 if log else rate)
        h, final = J.linear_scan(
            J.asarray(a), J.asarray(b), initial_state=None if h0 is None else J.asarray(h0), reverse=reverse,
            resets=None if resets is None else J.asarray(resets), method=method, chunk_size=chunk,
        )
        assert J.dtype_name(h) == dtype and J.dtype_name(final) == dtype
        h_ref, final_ref = R.linear_scan(_up(a), _up(b), initial_state=_up(h0), reverse=reverse, resets=resets)
        _close(f"h case {i}", h, h_ref, dtype, method=method, length=sb[1])
        _close(f"final_state case {i}", final, final_ref, dtype, method=method, length=sb[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", J.METHODS)
def test_linear_scan_matches_reference(method, dtype):
    if method == "log" and dtype.startswith("complex"):
        with pytest.raises(ValueError, match="log-space domain"):
            J.linear_scan(J.asarray(np.ones((1, 2, 1), dtype)), J.asarray(np.ones((1, 2, 1), dtype)), method="log")
        return
    _check_against_reference(method, dtype, [EMPTY, MIXED])


@pytest.mark.parametrize("method", J.METHODS)
def test_linear_scan_more_shapes(method):
    _check_against_reference(method, "float64", MORE, seed=10)


@pytest.mark.parametrize("method", ("sequential", "associative", "chunked"))
def test_real_decay_of_complex_state(method):
    a, b, h0, resets = _inputs(5, (2, 6, 3), (2, 6, 3), "complex64", real_a=True, reset_rate=0.3)
    assert a.dtype == np.float32 and b.dtype == np.complex64
    h, final = J.linear_scan(J.asarray(a), J.asarray(b), initial_state=J.asarray(h0), resets=J.asarray(resets),
                             method=method, chunk_size=4)
    h_ref, final_ref = R.linear_scan(_up(a), _up(b), initial_state=_up(h0), resets=resets)
    _close("h", h, h_ref, "complex64")
    _close("final_state", final, final_ref, "complex64")


def test_float16_accumulates_in_float32():
    # 1000 + 8 * 0.25: a loop with a float16 state stays at 1000 (0.25 is half an ulp there; ties round to even).
    a = np.ones((1, 9, 1), np.float16)
    b = np.array([1000] + [0.25] * 8, np.float16).reshape(1, 9, 1)
    for method in ("sequential", "associative", "chunked"):
        h, final = J.linear_scan(J.asarray(a), J.asarray(b), method=method, chunk_size=4)
        assert J.dtype_name(h) == "float16"
        assert float(final[0, 0]) == 1002.0


@pytest.mark.parametrize("method", J.METHODS)
def test_initial_state_none_equals_zeros(method):
    log = method == "log"
    a, b, _, resets = _inputs(0, (2, 7, 2, 3, 1), (2, 7, 2, 3, 4), "float64", positive=True, reset_rate=0.3)
    kwargs = dict(reverse=True, resets=None if log else J.asarray(resets), chunk_size=3)
    got = J.linear_scan(J.asarray(a), J.asarray(b), method=method, **kwargs)
    zeros = jnp.zeros((2, 2, 3, 4), jnp.float64)
    # the log method refuses an explicit h0 = 0 (log 0), so its None is compared with the loop
    want = J.linear_scan(J.asarray(a), J.asarray(b), initial_state=zeros, method="sequential" if log else method,
                         **kwargs)
    for x, y in zip(got, want, strict=True):
        if log:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- gradients (§10) -------------------------------------------------------------------------------------------------

# (shape of a, shape of b, reverse, reset rate, initial state, final_state cotangent)
GRAD_CASES = [
    ((2, 6, 3), (2, 6, 3), False, 0.3, True, False),  # forward with resets
    ((2, 7, 2, 3, 1), (2, 7, 2, 3, 2), True, 0.3, False, True),  # broadcast a: a_bar summed over V; resets
]


@pytest.mark.parametrize("dtype", ("float64", "complex128"))
@pytest.mark.parametrize("method", J.METHODS)
def test_vjp_matches_reference(method, dtype):
    log = method == "log"
    if log and dtype.startswith("complex"):
        ones = J.asarray(np.ones((1, 2, 1), dtype))
        with pytest.raises(ValueError, match="log-space domain"):
            J.linear_scan_vjp(ones, ones, ones, method="log")
        return
    for i, (sa, sb, reverse, rate, init, with_final) in enumerate(GRAD_CASES):
        a, b, h0, resets = _inputs(10 + i, sa, sb, dtype, positive=log, init=init, reset_rate=0.0 if log else rate)
        rng = np.random.default_rng(i)
        ct_h = _draw(rng, sb, dtype)
        ct_f = _draw(rng, (sb[0], *sb[2:]), dtype) if with_final else None
        got = J.linear_scan_vjp(
            J.asarray(a), J.asarray(b), J.asarray(ct_h), None if ct_f is None else J.asarray(ct_f),
            initial_state=None if h0 is None else J.asarray(h0), reverse=reverse,
            resets=None if resets is None else J.asarray(resets), method=method, chunk_size=3,
        )
        ref = R.linear_scan_vjp(_up(a), _up(b), _up(ct_h), _up(ct_f), initial_state=_up(h0), reverse=reverse,
                                resets=resets)
        for name, g, r in zip(("a_bar", "b_bar", "initial_state_bar"), got, ref, strict=True):
            _close(f"{name} case {i}", g, r, dtype, method=method, length=sb[1], grad=True)
        assert J.dtype_name(got[0]) == J.dtype_name(J.asarray(a))


@pytest.mark.parametrize("method", ("sequential", "associative", "chunked"))
def test_vjp_real_decay_complex_state_is_real(method):
    a, b, h0, resets = _inputs(3, (2, 6, 3), (2, 6, 3), "complex128", real_a=True, reset_rate=0.3)
    ct_h = _draw(np.random.default_rng(0), b.shape, "complex128")
    got = J.linear_scan_vjp(J.asarray(a), J.asarray(b), J.asarray(ct_h), initial_state=J.asarray(h0),
                            resets=J.asarray(resets), method=method, chunk_size=4)
    ref = R.linear_scan_vjp(a, b, ct_h, initial_state=h0, resets=resets)
    assert J.dtype_name(got[0]) == "float64"
    for g, r in zip(got, ref, strict=True):
        _close("grad", g, r, "complex128", grad=True)


def test_vjp_bfloat16():
    a, b, h0, _ = _inputs(4, (2, 9, 3), (2, 9, 3), "bfloat16")
    ct_h = _draw(np.random.default_rng(1), b.shape, "bfloat16")
    got = J.linear_scan_vjp(J.asarray(a), J.asarray(b), J.asarray(ct_h), initial_state=J.asarray(h0),
                            method="chunked", chunk_size=4)
    ref = R.linear_scan_vjp(_up(a), _up(b), _up(ct_h), initial_state=_up(h0))
    for g, r in zip(got, ref, strict=True):
        assert J.dtype_name(g) == "bfloat16"
        _close("grad", g, r, "bfloat16", grad=True)


@pytest.mark.parametrize("method", J.METHODS)
def test_jit_vmap_grad(method):
    """grad of a loss through h and final_state, vmapped over an extra axis and jitted, equals the reference."""
    n, shape = 3, (2, 6, 4)
    rng = np.random.default_rng(7)
    a = rng.uniform(0.1, 1, (n, *shape))
    b = rng.uniform(0.1, 2, (n, *shape))
    h0 = rng.uniform(0.1, 2, (n, 2, 4))
    w_h, w_f = rng.standard_normal(shape), rng.standard_normal((2, 4))

    def loss(a, b, h0):
        h, final = J.linear_scan(a, b, initial_state=h0, reverse=True, method=method, chunk_size=4)
        return jnp.sum(h * w_h) + jnp.sum(final * w_f)

    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2))))(a, b, h0)
    for k in range(n):
        ref = R.linear_scan_vjp(a[k], b[k], w_h, w_f, initial_state=h0[k], reverse=True)
        for g, r in zip(grads, ref, strict=True):
            _close("grad", g[k], r, "float64", method=method, length=6, grad=True)


def test_vjp_is_the_custom_scan_not_autodiff_of_associative_scan(capsys):
    """T = 1000: the VJP matches the reference, and what it saves for the backward pass is O(B·T·D) (a, h0, h),
    not the O(B·T·D·log T) intermediates of differentiating ``lax.associative_scan``."""
    shape = (2, 1000, 3)
    a, b, h0, _ = _inputs(8, shape, shape, "float64")
    ct_h = np.random.default_rng(2).standard_normal(shape)
    got = J.linear_scan_vjp(J.asarray(a), J.asarray(b), J.asarray(ct_h), initial_state=J.asarray(h0),
                            method="associative")
    ref = R.linear_scan_vjp(a, b, ct_h, initial_state=h0)
    for g, r in zip(got, ref, strict=True):
        _close("grad", g, r, "float64", grad=True)

    def fn(a, b, h0):
        return J.linear_scan(a, b, initial_state=h0, method="associative")

    print_saved_residuals(fn, a, b, h0)  # traces only; one line per array kept for the backward pass
    shapes = re.findall(r"\[([\d,]*)\]", capsys.readouterr().out)
    saved = sum(int(np.prod([int(n) for n in shape.split(",") if n])) for shape in shapes)
    assert 0 < saved <= 3 * a.size + h0.size, shapes
    assert "custom_vjp_call" in str(jax.make_jaxpr(fn)(a, b, h0))


# --- the log method and log_scan (§8) ---------------------------------------------------------------------------------


_jit_log_method = jax.jit(lambda a, b, h0: J.linear_scan(a, b, initial_state=h0, method="log"))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(a=-0.5), "a"),
        (dict(a=0.0), "a"),
        (dict(b=-1.0), "b"),
        (dict(h0=-1.0), "initial_state"),
        (dict(h0=0.0), "initial_state"),
    ],
)
def test_log_method_domain(kwargs, name):
    a = np.full((1, 4, 2), kwargs.get("a", 0.5))
    b = np.full((1, 4, 2), kwargs.get("b", 1.0))
    h0 = np.full((1, 2), kwargs.get("h0", 1.0))
    with pytest.raises(ValueError, match=f"^{name} is outside the log-space domain.*'chunked'"):
        J.linear_scan(J.asarray(a), J.asarray(b), initial_state=J.asarray(h0), method="log")

    # traced: the runtime check raises when the computation executes, never a silent NaN
    with pytest.raises(Exception, match=f"{name} is outside the log-space domain"):
        jax.block_until_ready(_jit_log_method(a, b, h0))


def test_log_method_refuses_complex_and_resets():
    ones = np.ones((1, 3, 2), np.complex64)
    with pytest.raises(ValueError, match=r"^a is outside the log-space domain.*complex"):
        J.linear_scan(J.asarray(ones * 0.5), J.asarray(ones), method="log")
    resets = np.array([[False, True, False]])
    with pytest.raises(ValueError, match=r"^resets is outside the log-space domain.*'chunked'"):
        J.linear_scan(J.asarray(np.full((1, 3, 2), 0.5)), J.asarray(np.ones((1, 3, 2))), resets=resets, method="log")


def test_log_method_domain_under_vmap():
    a = np.full((2, 1, 4, 2), 0.5)
    a[1, 0, 2, 1] = -0.5
    b = np.ones((1, 4, 2))
    with pytest.raises(Exception, match="a is outside the log-space domain"):
        jax.block_until_ready(jax.vmap(lambda a: J.linear_scan(a, b, method="log"))(a))


def test_log_method_in_domain_under_jit_and_grad_has_no_error():
    a, b, h0, _ = _inputs(1, (2, 5, 3), (2, 5, 3), "float64", positive=True)
    fn = jax.jit(jax.grad(lambda a: J.linear_scan(a, b, initial_state=h0, method="log")[0].sum()))
    assert np.all(np.isfinite(np.asarray(fn(a))))


LOG_CASES = [
    ((2, 0, 3), (2, 0, 3), False, 0.0, True),
    ((2, 7, 3), (2, 7, 3), False, 0.3, True),  # heinsen refuses resets and runs it without
    ((2, 8, 2, 1), (2, 8, 2, 3), True, 0.0, False),  # broadcast log_a, reverse, zero initial state (-inf)
]


@pytest.mark.parametrize("dtype", ("float32", "float64", "bfloat16"))
@pytest.mark.parametrize("method", ("auto", *J.LOG_METHODS))
def test_log_scan_matches_reference(method, dtype):
    for i, (sa, sb, reverse, rate, init) in enumerate(LOG_CASES):
        if method == "heinsen":
            rate = 0.0
        rng = np.random.default_rng(i)
        la = rng.uniform(-2, 0, sa).astype(_np_dtype(dtype))
        lb = rng.uniform(-3, 1, sb).astype(_np_dtype(dtype))
        lh0 = rng.uniform(-1, 1, (sb[0], *sb[2:])).astype(_np_dtype(dtype)) if init else None
        resets = rng.random(sb[:2]) < rate if rate else None
        got = J.log_scan(J.asarray(la), J.asarray(lb), log_initial_state=None if lh0 is None else J.asarray(lh0),
                         reverse=reverse, resets=None if resets is None else J.asarray(resets), method=method)
        ref = R.log_scan(_up(la), _up(lb), log_initial_state=_up(lh0), reverse=reverse, resets=resets)
        for name, g, r in zip(("log_h", "log_final_state"), got, ref, strict=True):
            assert J.dtype_name(g) == dtype
            finite = np.isfinite(r)
            np.testing.assert_array_equal(np.isfinite(np.asarray(J.to_numpy(g), np.float64)), finite)
            _close(f"{name} case {i}", np.where(finite, J.to_numpy(g).astype(np.float64), 0), np.where(finite, r, 0),
                   dtype, method="log", length=sb[1])


@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_heinsen_loop_and_parallel_forms_agree_with_gradients(dtype):
    """CPU runs the Heinsen form as a loop, other platforms through ``cumlogsumexp``; on CPU only this test runs
    the parallel form. Both must give the reference's values and gradients (broadcast ``log_a``, with and without
    ``log h0``, where the loop starts its running sum at ``log h0`` and the parallel form adds it afterwards)."""
    tol = tolerance_for(dtype, method="log", length=9)
    for i, (sa, init) in enumerate([((2, 9, 3), True), ((2, 9, 1), False)]):
        rng = np.random.default_rng(10 + i)
        la = jnp.asarray(rng.uniform(-2, 0, sa), dtype)
        lb = jnp.asarray(rng.uniform(-3, 1, (2, 9, 3)), dtype)
        lh0 = jnp.asarray(rng.uniform(-1, 1, (2, 3)), dtype) if init else None
        ref = R.log_scan(_up(la), _up(lb), log_initial_state=_up(lh0))[0]
        forms = (jax_scan._heinsen_loop, jax_scan._heinsen_parallel, jax_scan._heinsen)
        for form in forms:
            err, allowed = max_violation(np.asarray(form(la, lb, lh0), np.float64), ref, tol)
            assert err <= allowed, (form.__name__, i, err, allowed)
        grads = [jax.grad(lambda la, lb, f=form, lh0=lh0: jnp.sum(jnp.sin(f(la, lb, lh0))), argnums=(0, 1))(la, lb)
                 for form in forms]
        for g in grads[1:]:
            for x, y in zip(g, grads[0], strict=True):
                err, allowed = max_violation(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                             tolerance_for(dtype, method="log", length=9, grad=True))
                assert err <= allowed


def test_log_scan_domain():
    zeros = np.zeros((1, 3, 2), np.float32)
    bad = zeros.copy()
    bad[0, 1, 0] = -np.inf
    fn = jax.jit(lambda la, lb, lh0: J.log_scan(la, lb, log_initial_state=lh0))
    for kwargs, name in ((dict(log_a=np.full_like(zeros, np.nan)), "log_a"), (dict(log_b=bad), "log_b"),
                         (dict(log_initial_state=np.full((1, 2), np.inf, np.float32)), "log_initial_state")):
        args = dict(log_a=zeros, log_b=zeros, log_initial_state=None) | kwargs
        with pytest.raises(ValueError, match=f"^{name} is outside the log-space domain"):
            J.log_scan(args["log_a"], args["log_b"], log_initial_state=args["log_initial_state"])
        with pytest.raises(Exception, match=f"{name} is outside the log-space domain"):
            jax.block_until_ready(fn(args["log_a"], args["log_b"], args["log_initial_state"]))
    resets = np.array([[False, True, False]])
    with pytest.raises(ValueError, match="'sequential'"):
        J.log_scan(zeros, zeros, resets=resets, method="heinsen")
    with pytest.raises(TypeError, match="log_a"):
        J.log_scan(zeros.astype(np.complex64), zeros.astype(np.complex64))


# --- argument errors: the same messages as the reference (shared checks, §11) -----------------------------------------


def _f(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


BAD_CALLS = [
    (ValueError, dict(a=_f(1, 4, 2), b=_f(1, 3, 2))),
    (ValueError, dict(a=_f(1, 3, 3), b=_f(1, 3, 2))),
    (ValueError, dict(a=_f(3), b=_f(3))),
    (ValueError, dict(a=_f(2, 3, 2), b=_f(2, 3, 2), initial_state=_f(1, 2))),
    (ValueError, dict(a=_f(2, 3, 2), b=_f(2, 3, 2), resets=np.zeros((2, 4), bool))),
    (TypeError, dict(a=_f(2, 3, 2), b=_f(2, 3, 2), resets=np.zeros((2, 3), np.float32))),
    (TypeError, dict(a=_f(1, 3, 2, dtype=np.float64), b=_f(1, 3, 2))),
    (TypeError, dict(a=_f(1, 3, 2, dtype=np.int32), b=_f(1, 3, 2, dtype=np.int32))),
    (TypeError, dict(a=_f(1, 3, 2, dtype=np.complex64), b=_f(1, 3, 2))),
    (TypeError, dict(a=_f(1, 3, 2), b=_f(1, 3, 2), initial_state=_f(1, 2, dtype=np.float64))),
]


@pytest.mark.parametrize(("exc", "args"), BAD_CALLS)
def test_bad_arguments_raise_the_reference_message(exc, args):
    with pytest.raises(exc) as expected:
        R.linear_scan(**args)
    jax_args = {k: J.asarray(v) for k, v in args.items()}
    with pytest.raises(exc) as got:
        J.linear_scan(**jax_args)
    assert str(got.value) == str(expected.value)


def test_unknown_method_and_chunk_size():
    a = J.asarray(_f(1, 3, 2))
    with pytest.raises(ValueError, match="'sequential', 'associative', 'chunked', 'log'"):
        J.linear_scan(a, a, method="fastest")
    with pytest.raises(ValueError, match="'sequential', 'heinsen'"):
        J.log_scan(a, a, method="associative")
    with pytest.raises(ValueError, match="chunk_size"):
        J.linear_scan(a, a, method="chunked", chunk_size=0)
    with pytest.raises(ValueError, match="unknown method"):
        J.linear_scan_vjp(a, a, a, method="log-space")


# --- helpers and adapters ---------------------------------------------------------------------------------------------


def test_cu_seqlens_to_resets():
    got = J.cu_seqlens_to_resets([0, 2, 2, 5], 5)
    assert J.dtype_name(got) == "bool"
    np.testing.assert_array_equal(np.asarray(got), R.cu_seqlens_to_resets([0, 2, 2, 5], 5))
    with pytest.raises(ValueError, match="cu_seqlens"):
        J.cu_seqlens_to_resets([0, 3], 5)


@pytest.mark.parametrize("dtype", ("float64", "float32", "float16", "bfloat16", "complex64", "complex128", "bool"))
def test_array_adapters_preserve_dtype(dtype):
    x = np.arange(6).reshape(2, 3).astype(_np_dtype(dtype))
    y = J.asarray(x)
    assert J.dtype_name(y) == dtype
    back = J.to_numpy(y)
    assert back.dtype == x.dtype
    np.testing.assert_array_equal(back, x)


def test_auto_picks_a_general_method():
    assert jax_scan._pick_method("auto") in ("sequential", "associative", "chunked", "native")
    a, b, _, _ = _inputs(0, (2, 5, 3), (2, 5, 3), "complex64")
    h, _ = J.linear_scan(J.asarray(a), J.asarray(b))  # complex is outside the log domain: auto must not pick log
    _close("h", h, R.linear_scan(_up(a), _up(b))[0], "complex64")


# --- JAX's 64-bit mode: linrec never turns it on; 64-bit inputs need the caller's scope (§5) -------------------------


NARROW = ("float32", "bfloat16", "float16", "complex64")


def test_x64_off_computes_every_narrow_dtype_in_that_dtype():
    """In JAX's default mode (x64 off, what a user has) every method, the VJP, ``jit(grad)`` and ``log_scan`` keep
    the input dtype and match the reference: nothing depends on 64-bit mode or on a 64-bit integer."""
    with jax.enable_x64(False):
        for dtype in NARROW:
            methods = [m for m in J.METHODS if m != "log" and not (m == "native" and dtype in ("bfloat16",
                                                                                                 "float16"))]
            for method in methods:
                _check_against_reference(method, dtype, [MIXED], seed=20)
            a, b, h0, resets = _inputs(21, (2, 6, 3), (2, 6, 3), dtype, reset_rate=0.3)
            ct_h = _draw(np.random.default_rng(22), b.shape, dtype)
            got = J.linear_scan_vjp(J.asarray(a), J.asarray(b), J.asarray(ct_h), initial_state=J.asarray(h0),
                                    resets=J.asarray(resets), method="chunked", chunk_size=4)
            ref = R.linear_scan_vjp(_up(a), _up(b), _up(ct_h), initial_state=_up(h0), resets=resets)
            for g, r in zip(got, ref, strict=True):
                assert J.dtype_name(g) == dtype
                _close("grad", g, r, dtype, grad=True)
        a, b, h0, _ = _inputs(23, (2, 5, 3), (2, 5, 3), "float32", positive=True)
        grad = jax.jit(jax.grad(lambda a: J.linear_scan(a, b, initial_state=h0, method="log")[0].sum()))(a)
        assert grad.dtype == jnp.float32
        _close("grad", grad, R.linear_scan_vjp(_up(a), _up(b), np.ones(b.shape), initial_state=_up(h0))[0],
               "float32", method="log", length=5, grad=True)
        log_h, _ = J.log_scan(J.asarray(np.log(a)), J.asarray(np.log(b)), method="heinsen")
        assert J.dtype_name(log_h) == "float32"
        _close("log_h", jnp.exp(log_h), R.linear_scan(_up(a), _up(b))[0], "float32", method="log", length=5)
        assert J.dtype_name(J.cu_seqlens_to_resets(np.array([0, 2, 5], np.int64), 5)) == "bool"
        assert not jax.config.jax_enable_x64


@pytest.mark.parametrize(("call", "name"), [
    (lambda f64, f32: J.linear_scan(f64, f32), "a"),
    (lambda f64, f32: J.linear_scan(f32, f64), "b"),
    (lambda f64, f32: J.linear_scan(f32.astype(np.complex64), f64.astype(np.complex128)), "b"),
    (lambda f64, f32: J.linear_scan(f32, f32, initial_state=f64[:, 0]), "initial_state"),
    (lambda f64, f32: J.linear_scan_vjp(f64, f64, f64), "a"),
    (lambda f64, f32: J.log_scan(f32, f64), "log_b"),
    (lambda f64, f32: J.log_scan(f32, f32, log_initial_state=f64[:, 0]), "log_initial_state"),
    (lambda f64, f32: J.asarray(f64), "x"),
])
def test_x64_off_refuses_64_bit_floats_instead_of_truncating(call, name):
    """float64/complex128 in JAX's default mode: a ``TypeError`` naming the argument and the way to enable x64,
    never a float32 answer."""
    f64 = np.full((1, 3, 2), 0.5)
    with jax.enable_x64(False):
        with pytest.raises(TypeError, match=rf"^{name} has dtype (float64|complex128), .*jax\.enable_x64\(True\)"):
            call(f64, f64.astype(np.float32))
        with jax.enable_x64(True):  # a 64-bit JAX array made in the scope, used after it: refused too
            wide = J.asarray(f64)
        with pytest.raises(TypeError, match=r"^a has dtype float64"):
            J.linear_scan(wide, wide)


def test_x64_scope_serves_float64_and_is_left_as_found():
    with jax.enable_x64(False):
        a = np.full((1, 3, 2), 0.5)
        with jax.enable_x64(True):
            h, final = J.linear_scan(J.asarray(a), J.asarray(a), method="chunked")
            assert J.dtype_name(h) == J.dtype_name(final) == "float64"
        np.testing.assert_allclose(J.to_numpy(final), R.linear_scan(a, a)[1], rtol=1e-15)
        assert not jax.config.jax_enable_x64 and jnp.arange(3).dtype == jnp.int32


def test_precision_scope_turns_x64_on_only_for_64_bit_dtypes():
    """The conformance runner's hook (``conformance/case.py``): 64-bit mode for float64/complex128 cases only,
    and the caller's setting restored on exit, also when the case raises."""
    with jax.enable_x64(False):
        with J.precision_scope(("float32", "bfloat16")):
            assert not jax.config.jax_enable_x64
        for wide in (("float32", "float64"), ("complex128",)):
            with J.precision_scope(wide):
                assert jax.config.jax_enable_x64
            assert not jax.config.jax_enable_x64
        with pytest.raises(RuntimeError), J.precision_scope(("float64",)):
            raise RuntimeError
        assert not jax.config.jax_enable_x64


def test_asarray_of_64_bit_integers_with_x64_off():
    """JAX's default integer is int32 when x64 is off: ``asarray`` gives int32 for in-range int64 values and
    refuses values int32 cannot hold (no silent wrap-around)."""
    with jax.enable_x64(False):
        got = J.asarray(np.array([0, 7, 2**31 - 1], np.int64))
        assert J.dtype_name(got) == "int32"
        np.testing.assert_array_equal(J.to_numpy(got), [0, 7, 2**31 - 1])
        with pytest.raises(ValueError, match="outside int32"):
            J.asarray(np.array([2**31], np.int64))
    with jax.enable_x64(True):
        assert J.dtype_name(J.asarray(np.array([2**31], np.int64))) == "int64"


def test_float64_checkpoint_into_flax_needs_x64():
    """``convert.to_module`` with float64 parameters: a ``TypeError`` naming the parameter with x64 off (not a
    float32 module), float64 parameters inside the scope."""
    pytest.importorskip("flax")
    from linrec.spec.mingru import MinGRUConfig, init_params
    from linrec.tools import convert

    config = MinGRUConfig(d_model=4)
    ckpt = convert.Checkpoint("mingru", config, init_params(config, seed=0, dtype="float64"))
    with jax.enable_x64(False):
        with pytest.raises(TypeError, match=r"^parameter 'proj\.\w+' has dtype float64, .*enable_x64"):
            convert.to_module(ckpt, "jax")
        with jax.enable_x64(True):
            params = convert.to_module(ckpt, "jax").canonical_params()
        assert {str(v.dtype) for v in params.values()} == {"float64"}


def test_module_surface():
    assert J.NAME == "jax"
    assert J.METHODS[:4] == ("sequential", "associative", "chunked", "log")
    assert set(J.METHODS[4:]) <= {"native", "pallas"} and J.METHODS[-1] == "pallas"
    assert J.LOG_METHODS == ("sequential", "heinsen")
    assert set(J.__all__) >= {"linear_scan", "log_scan", "linear_scan_vjp", "cu_seqlens_to_resets", "asarray",
                              "to_numpy", "dtype_name", "NAME", "METHODS", "LOG_METHODS"}
