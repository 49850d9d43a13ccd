"""The PyTorch backend against the float64 NumPy reference (recurrence.md), with the spec's tolerances.

Shape legend: ``B`` batch, ``T`` time, ``*S`` state shape, ``*Sa`` the per-step shape of ``a``.
Every comparison runs the reference in float64/complex128 on the *same, already rounded* inputs and
applies ``tolerance_for`` + ``max_violation`` unchanged (§9).
"""

from __future__ import annotations

import itertools
import zlib

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from linrec.backends import torch as tb  # noqa: E402
from linrec.backends.torch import scan as tb_scan  # noqa: E402
from linrec.spec import checks  # noqa: E402
from linrec.spec import reference as ref  # noqa: E402
from linrec.spec.tolerances import max_violation, tolerance_for  # noqa: E402

METHODS = ("sequential", "associative", "chunked", "log")
DTYPES = ("float32", "float64", "complex64", "bfloat16", "float16")


# ---------------------------------------------------------------------------------------------------------------
# helpers


def np_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def up(x: np.ndarray | None) -> np.ndarray | None:
    """Already rounded values in float64/complex128 (bool stays bool): the reference's input."""
    if x is None or x.dtype == bool:
        return x
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def seed(*parts: object) -> int:
    """A per-test seed that is stable across processes (``hash`` of a str is not)."""
    return zlib.crc32(repr(parts).encode())


def t(x: np.ndarray | None):
    return None if x is None else tb.asarray(x)


def make_inputs(
    rng: np.random.Generator,
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    dtype: str,
    *,
    positive: bool = False,
    init: bool = True,
    resets: bool = False,
    real_a: bool = False,
) -> dict[str, np.ndarray | None]:
    """Random, stable inputs rounded to ``dtype``: |a| in (0.5, 1); ``positive`` keeps a, b, h0 > 0 (log domain)."""
    complex_ = np.dtype(np_dtype(dtype)).kind == "c"
    mag = rng.uniform(0.5, 1.0, a_shape)
    a = mag * np.exp(1j * rng.uniform(-1, 1, a_shape)) if complex_ and not real_a else mag
    state_shape = (b_shape[0], *b_shape[2:])
    if positive:
        b, h0 = rng.uniform(0.1, 1.1, b_shape), rng.uniform(0.1, 1.1, state_shape)
    else:
        b, h0 = rng.normal(size=b_shape), rng.normal(size=state_shape)
        if complex_:
            b, h0 = b + 1j * rng.normal(size=b_shape), h0 + 1j * rng.normal(size=state_shape)
    a_dtype = np.dtype(np_dtype(dtype).type(0).real.dtype) if real_a else np_dtype(dtype)
    return {
        "a": a.astype(a_dtype),
        "b": b.astype(np_dtype(dtype)),
        "initial_state": h0.astype(np_dtype(dtype)) if init else None,
        "resets": rng.random(b_shape[:2]) < 0.2 if resets else None,
    }


def assert_close(result, reference: np.ndarray, dtype: str, *, method: str | None = None, length: int = 0,
                 grad: bool = False, what: str = "") -> None:
    tol = tolerance_for(dtype, method=method, length=length, grad=grad)
    err, allowed = max_violation(tb.to_numpy(result), reference, tol)
    assert err <= allowed, f"{what}: max error {err:.3g} > allowed {allowed:.3g} ({dtype}, {method})"


# name -> (a_shape, b_shape, kwargs of the scan, chunk_size)
CASES = {
    "T0": ((2, 0, 3), (2, 0, 3), {}, 4),
    "T1": ((2, 1, 3), (2, 1, 3), {}, 4),
    "odd-T-chunk-not-dividing": ((3, 37, 4), (3, 37, 4), {"init": False}, 8),
    "broadcast-a": ((2, 19, 2, 3, 1), (2, 19, 2, 3, 4), {}, 5),
    "reverse": ((2, 23, 5), (2, 23, 5), {"reverse": True}, 4),
    "resets": ((3, 29, 4), (3, 29, 4), {"resets": True}, 8),
    "resets-reverse-broadcast": ((2, 31, 3, 1), (2, 31, 3, 2), {"resets": True, "reverse": True}, 6),
    "real-a-broadcast": ((2, 15, 3, 1), (2, 15, 3, 2), {"real_a": True}, 4),  # a real decay of a complex state
    "long": ((2, 300, 8), (2, 300, 8), {}, None),  # default chunk size: crosses a chunk boundary
}


# ---------------------------------------------------------------------------------------------------------------
# values


def _grid(*axes: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The product of the axes (method first) without log × complex: outside the log domain (tested as errors)."""
    return [p for p in itertools.product(*axes) if not (p[0] == "log" and p[1].startswith("complex"))]


@pytest.mark.parametrize(("method", "dtype", "case"), _grid(METHODS, DTYPES, tuple(CASES)))
def test_linear_scan_matches_reference(method: str, dtype: str, case: str) -> None:
    a_shape, b_shape, opts, chunk = CASES[case]
    rng = np.random.default_rng(seed(method, dtype, case))
    reverse = opts.get("reverse", False)
    x = make_inputs(rng, a_shape, b_shape, dtype, positive=method == "log", init=opts.get("init", True),
                    resets=opts.get("resets", False), real_a=opts.get("real_a", False))
    if dtype == "bfloat16" and x["initial_state"] is not None:
        x["initial_state"] = x["initial_state"].astype(np.float32)  # a carried float32 state is allowed (§5)
    if method == "log" and x["resets"] is not None:  # a cut is log 0 = -inf: outside the log domain (§7, §8)
        with pytest.raises(ValueError, match=r"^resets is outside the log-space domain.*'chunked'"):
            tb.linear_scan(t(x["a"]), t(x["b"]), resets=t(x["resets"]), method=method)
        return
    h_ref, f_ref = ref.linear_scan(up(x["a"]), up(x["b"]), initial_state=up(x["initial_state"]), reverse=reverse,
                                   resets=x["resets"])
    h, final = tb.linear_scan(t(x["a"]), t(x["b"]), initial_state=t(x["initial_state"]), reverse=reverse,
                              resets=t(x["resets"]), method=method, chunk_size=chunk)
    assert tb.dtype_name(h) == dtype and tb.dtype_name(final) == dtype
    assert tuple(h.shape) == b_shape and tuple(final.shape) == (b_shape[0], *b_shape[2:])
    assert_close(h, h_ref, dtype, method=method, length=b_shape[1], what="h")
    assert_close(final, f_ref, dtype, method=method, length=b_shape[1], what="final_state")


@pytest.mark.parametrize("method", ["auto", *METHODS])
@pytest.mark.parametrize("reverse", [False, True])
def test_initial_state_none_is_zeros(method: str, reverse: bool) -> None:
    rng = np.random.default_rng(1)
    x = make_inputs(rng, (2, 13, 3), (2, 13, 3), "float32", positive=True, resets=method != "log")
    kw = {"reverse": reverse, "resets": t(x["resets"]), "method": method, "chunk_size": 4}
    h0, f0 = tb.linear_scan(t(x["a"]), t(x["b"]), **kw)
    if method != "log":  # zeros are outside the log domain (initial_state > 0), so None is its only zero state
        h1, f1 = tb.linear_scan(t(x["a"]), t(x["b"]), initial_state=torch.zeros(2, 3), **kw)
        assert torch.equal(h0, h1) and torch.equal(f0, f1)
    h_ref, f_ref = ref.linear_scan(up(x["a"]), up(x["b"]), reverse=reverse, resets=x["resets"])
    assert_close(h0, h_ref, "float32", method=method, length=13)
    assert_close(f0, f_ref, "float32", method=method, length=13)


@pytest.mark.parametrize("method", METHODS)
def test_low_precision_accumulates_in_float32(method: str) -> None:
    # a = b = 1: h_t = t + 1. A bfloat16 state would stall at 256 (256 + 1 rounds to 256).
    a = torch.ones(1, 600, 2, dtype=torch.bfloat16)
    h, final = tb.linear_scan(a, a.clone(), method=method, chunk_size=64)
    expected = np.broadcast_to(np.arange(1, 601, dtype=np.float64)[None, :, None], (1, 600, 2))
    assert_close(h, expected, "bfloat16", method=method, length=600)
    assert_close(final, expected[:, -1], "bfloat16", method=method, length=600)
    if method != "log":  # sums of ones are exact in float32: exactly one rounding, to bfloat16, at the end
        assert torch.equal(h, torch.from_numpy(expected.astype(np.float32)).to(torch.bfloat16))


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
def test_auto_matches_reference_and_never_picks_log(dtype: str) -> None:
    rng = np.random.default_rng(2)
    # (B, T, D) -> the method the measured rule of ``_auto_method`` picks
    for shape, expected in (((2, 65, 4), "associative"), ((1, 5, 8192), "sequential"), ((1, 17000, 64), "chunked")):
        assert tb_scan._auto_method(torch.empty(shape)) == expected
        x = make_inputs(rng, shape, shape, dtype, resets=True)
        h, _ = tb.linear_scan(t(x["a"]), t(x["b"]), initial_state=t(x["initial_state"]), resets=t(x["resets"]))
        h_ref, _ = ref.linear_scan(up(x["a"]), up(x["b"]), initial_state=up(x["initial_state"]), resets=x["resets"])
        assert_close(h, h_ref, dtype, method="auto", length=shape[1])


def test_cu_seqlens_to_resets() -> None:
    resets = tb.cu_seqlens_to_resets(torch.tensor([0, 3, 3, 7, 10]), 10)
    assert resets.dtype == torch.bool and tuple(resets.shape) == (1, 10)
    np.testing.assert_array_equal(resets.numpy(), ref.cu_seqlens_to_resets([0, 3, 3, 7, 10], 10))
    np.testing.assert_array_equal(tb.cu_seqlens_to_resets([0, 10], 10).numpy(), ref.cu_seqlens_to_resets([0, 10], 10))
    for bad in ([0, 5], [1, 10], [0, 6, 4, 10], [[0, 10]]):
        with pytest.raises(ValueError) as ours:
            tb.cu_seqlens_to_resets(torch.tensor(bad), 10)
        with pytest.raises(ValueError) as theirs:
            ref.cu_seqlens_to_resets(np.array(bad), 10)
        assert str(ours.value) == str(theirs.value)
    # packed sequences = each sequence scanned on its own
    rng = np.random.default_rng(3)
    x = make_inputs(rng, (1, 10, 2), (1, 10, 2), "float64", init=False)
    h, _ = tb.linear_scan(t(x["a"]), t(x["b"]), resets=resets, method="associative")
    for lo, hi in ((0, 3), (3, 7), (7, 10)):
        h_seg, _ = ref.linear_scan(x["a"][:, lo:hi], x["b"][:, lo:hi])
        np.testing.assert_allclose(h[:, lo:hi].numpy(), h_seg, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16", "complex64", "complex128", "bool"])
def test_array_adapters_round_trip(dtype: str) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 4)) + (1j * rng.normal(size=(3, 4)) if dtype.startswith("complex") else 0)
    x = (x > 0) if dtype == "bool" else x.astype(np_dtype(dtype))
    tensor = tb.asarray(x)
    assert tb.dtype_name(tensor) == dtype == tb.dtype_name(x)
    back = tb.to_numpy(tensor)
    assert back.dtype == x.dtype
    np.testing.assert_array_equal(back.view(np.uint8), x.view(np.uint8))  # bit-exact
    x_copy = x.copy()
    x[...] = x[0, 0]  # the tensor owns its memory
    np.testing.assert_array_equal(tb.to_numpy(tensor).view(np.uint8), x_copy.view(np.uint8))


# ---------------------------------------------------------------------------------------------------------------
# log_scan


LOG_CASES = {
    "T0": ((2, 0, 3), (2, 0, 3), {}),
    "plain": ((2, 41, 3), (2, 41, 3), {"init": False}),
    "init-broadcast": ((2, 17, 2, 1), (2, 17, 2, 3), {}),
    "reverse-resets": ((3, 33, 4), (3, 33, 4), {"reverse": True, "resets": True}),
    "resets": ((3, 27, 2, 1), (3, 27, 2, 2), {"resets": True, "init": False}),
}


@pytest.mark.parametrize("case", LOG_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("method", ["auto", *tb.LOG_METHODS])
def test_log_scan_matches_reference(method: str, dtype: str, case: str) -> None:
    a_shape, b_shape, opts = LOG_CASES[case]
    rng = np.random.default_rng(seed(method, dtype, case))
    x = make_inputs(rng, a_shape, b_shape, "float64", positive=True, init=opts.get("init", True),
                    resets=opts.get("resets", False))
    la, lb = np.log(x["a"]).astype(np_dtype(dtype)), np.log(x["b"]).astype(np_dtype(dtype))
    lh0 = None if x["initial_state"] is None else np.log(x["initial_state"]).astype(np_dtype(dtype))
    reverse = opts.get("reverse", False)
    if method == "heinsen" and x["resets"] is not None:  # §8: heinsen refuses resets, naming 'sequential'
        with pytest.raises(ValueError, match="method='sequential'"):
            tb.log_scan(t(la), t(lb), resets=t(x["resets"]), method=method)
        return
    out_ref, f_ref = ref.log_scan(up(la), up(lb), log_initial_state=up(lh0), reverse=reverse, resets=x["resets"])
    out, final = tb.log_scan(t(la), t(lb), log_initial_state=t(lh0), reverse=reverse, resets=t(x["resets"]),
                             method=method)
    assert tb.dtype_name(out) == dtype and tb.dtype_name(final) == dtype
    assert_close(out, out_ref, dtype, method=method, length=b_shape[1], what="log_h")
    if b_shape[1] == 0 and lh0 is None:
        assert torch.all(final == -torch.inf)
    else:
        assert_close(final, f_ref, dtype, method=method, length=b_shape[1], what="log_final_state")


@pytest.mark.parametrize("method", tb.LOG_METHODS)
def test_log_scan_domain_and_type_errors(method: str) -> None:
    la, lb = torch.zeros(2, 5, 3), torch.zeros(2, 5, 3)
    for bad, name in ((-torch.inf, "log_a"), (torch.nan, "log_b"), (torch.inf, "log_initial_state")):
        args = {"log_a": la.clone(), "log_b": lb.clone(), "log_initial_state": torch.zeros(2, 3)}
        args[name].view(-1)[3] = bad
        with pytest.raises(ValueError, match=f"^{name} is outside the log-space domain"):
            tb.log_scan(args["log_a"], args["log_b"], log_initial_state=args["log_initial_state"], method=method)
    with pytest.raises(TypeError, match="log_a must be real floating"):
        tb.log_scan(la.to(torch.complex64), lb, method=method)
    with pytest.raises(TypeError, match="log_b has dtype float64"):
        tb.log_scan(la, lb.double(), method=method)
    with pytest.raises(ValueError, match="valid methods: 'auto', 'sequential', 'heinsen'"):
        tb.log_scan(la, lb, method="log")


# ---------------------------------------------------------------------------------------------------------------
# gradients


GRAD_KINDS = {  # name -> (dtype of b, real a?)
    "float64": ("float64", False),
    "complex128": ("complex128", False),
    "complex128-real-a": ("complex128", True),
    "float32": ("float32", False),
    "complex64": ("complex64", False),
    "bfloat16": ("bfloat16", False),
}


@pytest.mark.parametrize(
    ("method", "kind", "layout"),
    _grid(METHODS, tuple(GRAD_KINDS), ("forward-init", "reverse-resets-broadcast-no-init")),
)
def test_linear_scan_vjp_matches_reference(method: str, kind: str, layout: str) -> None:
    dtype, real_a = GRAD_KINDS[kind]
    rng = np.random.default_rng(seed(method, kind, layout))
    if layout == "forward-init":
        a_shape, b_shape, opts = (2, 21, 3), (2, 21, 3), {"init": True, "resets": False, "reverse": False}
    else:
        a_shape, b_shape = (3, 22, 2, 1), (3, 22, 2, 3)
        opts = {"init": False, "resets": method != "log", "reverse": True}  # the log method refuses resets
    reverse = opts.pop("reverse")
    x = make_inputs(rng, a_shape, b_shape, dtype, positive=method == "log", real_a=real_a, **opts)
    complex_ = dtype.startswith("complex")
    ct_h = rng.normal(size=b_shape) + (1j * rng.normal(size=b_shape) if complex_ else 0)
    ct_f = rng.normal(size=(b_shape[0], *b_shape[2:])) + (1j if complex_ else 0)
    ct_h, ct_f = ct_h.astype(np_dtype(dtype)), ct_f.astype(np_dtype(dtype))
    refs = ref.linear_scan_vjp(up(x["a"]), up(x["b"]), up(ct_h), up(ct_f), initial_state=up(x["initial_state"]),
                               reverse=reverse, resets=x["resets"])
    ours = tb.linear_scan_vjp(t(x["a"]), t(x["b"]), t(ct_h), t(ct_f), initial_state=t(x["initial_state"]),
                              reverse=reverse, resets=t(x["resets"]), method=method, chunk_size=4)
    for name, mine, theirs, like in zip(("a_bar", "b_bar", "initial_state_bar"), ours, refs, (x["a"], x["b"], ct_f)):
        assert tb.dtype_name(mine) == np.dtype(like.dtype).name, name
        assert_close(mine, theirs, dtype, method=method, length=b_shape[1], grad=True, what=name)


def test_vjp_agrees_with_autodiff_adapter_and_final_state_only() -> None:
    """``linear_scan_vjp`` == the project's generic torch VJP adapter; a cotangent on final_state alone works."""
    from linrec.backends.torch.autodiff import vjp

    rng = np.random.default_rng(5)
    x = make_inputs(rng, (2, 9, 3, 1), (2, 9, 3, 2), "complex128", resets=True)
    a, b, h0, resets = (t(x[k]) for k in ("a", "b", "initial_state", "resets"))
    ct_h, ct_f = torch.zeros(2, 9, 3, 2, dtype=torch.complex128), torch.randn(2, 3, 2, dtype=torch.complex128)
    ours = tb.linear_scan_vjp(a, b, ct_h, ct_f, initial_state=h0, resets=resets, method="chunked", chunk_size=2)
    theirs = vjp(lambda a, b, h0: tb.linear_scan(a, b, initial_state=h0, resets=resets, method="sequential"),
                 (a, b, h0), (ct_h, ct_f))
    refs = ref.linear_scan_vjp(x["a"], x["b"], ct_h.numpy(), ct_f.numpy(), initial_state=x["initial_state"],
                               resets=x["resets"])
    for mine, other, r in zip(ours, theirs, refs):
        torch.testing.assert_close(mine, other, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mine.numpy(), r, rtol=1e-11, atol=1e-11)


GRADCHECK_KINDS = ("float64", "complex128", "complex128-real-a")


@pytest.mark.parametrize(("method", "kind"), _grid(METHODS, GRADCHECK_KINDS))
def test_gradcheck(method: str, kind: str) -> None:
    """Autograd in torch's own convention (conjugate Wirtinger for complex), every method, through h and final."""
    dtype, real_a = GRAD_KINDS[kind]
    rng = np.random.default_rng(seed(method, kind))
    x = make_inputs(rng, (2, 6, 2, 1), (2, 6, 2, 2), dtype, positive=method == "log", real_a=real_a, resets=True)
    x["resets"][:, 3] = True
    resets = None if method == "log" else t(x["resets"])
    inputs = tuple(t(x[k]).requires_grad_(True) for k in ("a", "b", "initial_state"))
    for reverse in (False, True):
        def fn(a, b, h0, reverse=reverse):
            return tb.linear_scan(a, b, initial_state=h0, reverse=reverse, resets=resets, method=method,
                                  chunk_size=4)

        assert torch.autograd.gradcheck(fn, inputs)
    if real_a:
        h, final = tb.linear_scan(*inputs[:2], method=method)
        (h.abs().sum() + final.abs().sum()).backward()
        assert not inputs[0].grad.is_complex()


@pytest.mark.parametrize("method", tb.LOG_METHODS)
def test_log_scan_gradcheck(method: str) -> None:
    gen = torch.Generator().manual_seed(6)
    inputs = tuple(torch.randn(*s, dtype=torch.float64, generator=gen).requires_grad_(True)
                   for s in ((2, 7, 2, 1), (2, 7, 2, 3), (2, 2, 3)))
    resets = None
    if method == "sequential":  # heinsen refuses resets
        resets = torch.zeros(2, 7, dtype=torch.bool)
        resets[0, 4] = resets[1, 2] = True
    for reverse in (False, True):
        def fn(la, lb, lh0, reverse=reverse):
            return tb.log_scan(la, lb, log_initial_state=lh0, reverse=reverse, resets=resets, method=method)

        assert torch.autograd.gradcheck(fn, inputs)


def test_backward_memory_is_linear() -> None:
    """The autograd graph keeps only a, h (and h0): no per-step or per-level tensors (O(B·T·D) training memory)."""
    a = torch.rand(2, 64, 8, requires_grad=True)
    b = torch.randn(2, 64, 8, requires_grad=True)
    for method in ("sequential", "associative", "chunked"):
        h, _ = tb.linear_scan(a, b, method=method, chunk_size=8)
        assert "LinearScanFn" in h.grad_fn.name()  # float32 in and out: h is the Function's own output
        total = sum(x.numel() for x in h.grad_fn.saved_tensors if x is not None)
        assert total <= 2 * b.numel(), (method, total)


# ---------------------------------------------------------------------------------------------------------------
# torch.compile


def _compile_check(method: str, backend: str) -> None:
    torch._dynamo.reset()
    rng = np.random.default_rng(7)
    x = make_inputs(rng, (2, 7, 3, 1), (2, 7, 3, 2), "float32", positive=True, resets=True)

    def fn(a, b, h0, resets):
        h, final = tb.linear_scan(a, b, initial_state=h0, resets=resets, method=method, chunk_size=3)
        return h, final

    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    grads = []
    for f in (compiled, fn):
        inputs = [t(x[k]).requires_grad_(True) for k in ("a", "b", "initial_state")]
        h, final = f(*inputs, None if method == "log" else t(x["resets"]))
        (h.square().sum() + final.sum()).backward()
        grads.append((h.detach(), final.detach(), *(i.grad for i in inputs)))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# torch-internal deprecation warnings raised while dynamo traces (not from linrec)
_compile_warnings = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@_compile_warnings
@pytest.mark.slow
def test_torch_compile_fullgraph_inductor_associative() -> None:
    _compile_check("associative", "inductor")


@_compile_warnings
@pytest.mark.parametrize("method", ["chunked", "sequential", "log"])
def test_torch_compile_fullgraph_aot_eager(method: str) -> None:
    # aot_eager traces the same fullgraph forward + backward as inductor but skips code generation (fast)
    _compile_check(method, "aot_eager")


@_compile_warnings
def test_torch_compile_log_domain_check_raises_at_run_time() -> None:
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: tb.linear_scan(a, b, method="log"), fullgraph=True, backend="aot_eager")
    a, b = torch.rand(2, 5, 3) + 0.5, torch.rand(2, 5, 3) + 0.1
    compiled(a, b)
    with pytest.raises(RuntimeError, match="a is outside the log-space domain"):
        compiled(-a, b)


# ---------------------------------------------------------------------------------------------------------------
# errors


def _same_error_as_reference(tb_args: dict, np_args: dict, exc: type[Exception]) -> None:
    with pytest.raises(exc) as ours:
        tb.linear_scan(**tb_args)
    with pytest.raises(exc) as theirs:
        ref.linear_scan(**np_args)
    assert str(ours.value) == str(theirs.value)


BAD_INPUTS = {  # name -> (a, b, initial_state, resets) as NumPy arrays, expected exception
    "b-one-axis": ((np.ones(5, np.float32), np.ones(5, np.float32), None, None), ValueError),
    "a-fewer-axes": ((np.ones((2, 5), np.float32), np.ones((2, 5, 3), np.float32), None, None), ValueError),
    "time-mismatch": ((np.ones((2, 5, 3), np.float32), np.ones((2, 6, 3), np.float32), None, None), ValueError),
    "not-broadcastable": ((np.ones((2, 5, 2), np.float32), np.ones((2, 5, 3), np.float32), None, None), ValueError),
    "init-shape": ((np.ones((2, 5, 3), np.float32), np.ones((2, 5, 3), np.float32), np.ones((2, 4), np.float32),
                    None), ValueError),
    "resets-shape": ((np.ones((2, 5, 3), np.float32), np.ones((2, 5, 3), np.float32), None, np.ones((2, 4), bool)),
                     ValueError),
    "resets-dtype": ((np.ones((2, 5, 3), np.float32), np.ones((2, 5, 3), np.float32), None, np.ones((2, 5))),
                     TypeError),
    "a-dtype": ((np.ones((2, 5, 3), np.float64), np.ones((2, 5, 3), np.float32), None, None), TypeError),
    "complex-a-real-b": ((np.ones((2, 5, 3), np.complex64), np.ones((2, 5, 3), np.float32), None, None), TypeError),
    "integer": ((np.ones((2, 5, 3), np.int64), np.ones((2, 5, 3), np.int64), None, None), TypeError),
    "init-dtype": ((np.ones((2, 5, 3), np.float32), np.ones((2, 5, 3), np.float32), np.ones((2, 3), np.float64),
                    None), TypeError),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_inputs_raise_like_reference(name: str) -> None:
    (a, b, h0, resets), exc = BAD_INPUTS[name]
    np_args = {"a": a, "b": b, "initial_state": h0, "resets": resets}
    _same_error_as_reference({k: t(v) for k, v in np_args.items()}, np_args, exc)


def test_method_and_chunk_size_errors() -> None:
    a = torch.rand(2, 5, 3)
    with pytest.raises(ValueError, match="valid methods: 'auto', 'sequential', 'associative', 'chunked', 'log'"):
        tb.linear_scan(a, a, method="parallel")
    with pytest.raises(ValueError, match="unknown method='fused'"):
        tb.linear_scan_vjp(a, a, a, method="fused")
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            tb.linear_scan(a, a, method="chunked", chunk_size=bad)
    with pytest.raises(ValueError, match="cotangent_h must have the shape of h"):
        tb.linear_scan_vjp(a, a, a[:, :4])


def test_log_method_domain_errors() -> None:
    a, b, h0 = torch.rand(2, 5, 3) + 0.5, torch.rand(2, 5, 3) + 0.1, torch.rand(2, 3) + 0.1
    cases = [
        ("a", (a.neg(), b, h0)),
        ("a", (a * 0, b, h0)),  # a = 0 (a reset is fine, an explicit zero decay is not)
        ("b", (a, b.neg(), h0)),
        ("b", (a, b.masked_fill(b > 0.5, torch.nan), h0)),
        ("a", (a.masked_fill(a > 0.7, torch.inf), b, h0)),  # +inf > 0, but Heinsen would give inf - inf
        ("initial_state", (a, b, torch.zeros(2, 3))),
        ("a", (a.to(torch.complex64), b.to(torch.complex64), None)),
        ("b", (a, b.to(torch.complex64), None)),
    ]
    for name, (x, y, z) in cases:
        message = checks.log_domain_message(name, "")[len(name):].split(":")[0]  # " is outside the log-space domain"
        with pytest.raises(ValueError, match=f"^{name}{message}") as info:
            tb.linear_scan(x, y, initial_state=z, method="log")
        assert "method='sequential'" in str(info.value)  # names a method that can serve the input
    resets = torch.zeros(2, 5, dtype=torch.bool)
    resets[:, 2] = True
    with pytest.raises(ValueError, match=r"^resets is outside the log-space domain") as info:
        tb.linear_scan(a, b, resets=resets, method="log")  # a cut is a = 0, log 0 = -inf (§7)
    assert "'chunked'" in str(info.value)


@pytest.mark.parametrize("method", ["associative", "chunked"])
@pytest.mark.parametrize("reverse", [False, True])
def test_none_is_bit_identical_to_explicit_zeros_for_complex_states(method, reverse):
    """Found by ``linrec conformance --thorough`` (shrunk: B=3, T=7, complex64, reverse): with ``initial_state=None``
    the prefix recursion rounded its first pair differently from the explicit-zeros path (1 ulp)."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = (3, int(rng.integers(1, 20)), 1)
        a = (rng.uniform(0.5, 1, shape) * np.exp(1j * rng.uniform(-3, 3, shape))).astype(np.complex64)
        b = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        h_none, f_none = tb.linear_scan(torch.tensor(a), torch.tensor(b), method=method, reverse=reverse)
        zeros = torch.zeros(3, 1, dtype=torch.complex64)
        h_zero, f_zero = tb.linear_scan(torch.tensor(a), torch.tensor(b), initial_state=zeros, method=method,
                                        reverse=reverse)
        assert torch.equal(h_none, h_zero) and torch.equal(f_none, f_zero)
