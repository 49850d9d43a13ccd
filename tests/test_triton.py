"""``method="triton"`` of the PyTorch scan, run in Triton's interpreter on CPU tensors.

The conformance suite holds the kernel to the spec (its torch cases enumerate ``METHODS``); these tests pin what the
suite cannot see: agreement with the ``sequential`` method across the kernel's block boundaries (``chunk_size``
is the kernel's time block), the interpreter switch, the errors that name the method that works, the choice of
``auto``, and (slow tier) that the suite kills the kernel's mutants.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import linrec.backends.torch.mingru  # noqa: E402, F401  (registers the module for sys.modules)
from linrec.backends.torch import scan as ts  # noqa: E402
from linrec.backends.torch import triton_scan  # noqa: E402
from linrec.spec.tolerances import max_violation, tolerance_for  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::linrec.backends.torch.triton_scan.InterpretedKernelWarning")

_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.complex64: "complex64",
          torch.complex128: "complex128", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _problem(dtype, *, complex_a=False, broadcast=False, shape=(2, 11, 3, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    a_shape = (*shape[:3], 1) if broadcast else shape
    a = 0.5 + 0.5 * torch.rand(a_shape, generator=g, dtype=real)
    if complex_a:
        a = a * torch.exp(1j * torch.rand(a_shape, generator=g, dtype=real))
    b = torch.randn(shape, generator=g, dtype=real)
    h0 = torch.randn((shape[0], *shape[2:]), generator=g, dtype=real)
    if dtype.is_complex:
        b = torch.complex(b, torch.randn(shape, generator=g, dtype=real))
        h0 = torch.complex(h0, torch.randn(h0.shape, generator=g, dtype=real))
    a = a.to(dtype) if (complex_a or not dtype.is_complex) else a
    resets = torch.rand(shape[:2], generator=g) < 0.2
    return a, b.to(dtype), h0.to(dtype), resets


def _run(method, a, b, h0, resets, reverse, chunk_size):
    leaves = [x.detach().clone().requires_grad_(True) for x in (a, b, h0)]
    h, final = ts.linear_scan(leaves[0], leaves[1], initial_state=leaves[2], resets=resets, reverse=reverse,
                              method=method, chunk_size=chunk_size)
    g = torch.Generator().manual_seed(7)
    ct_h = torch.randn(h.shape, generator=g, dtype=h.dtype)
    ct_f = torch.randn(final.shape, generator=g, dtype=final.dtype)
    grads = torch.autograd.grad([h, final], leaves, [ct_h, ct_f])
    return (h, final, *grads)


def _np(x):
    return x.detach().to(torch.complex128 if x.is_complex() else torch.float64).numpy()


CASES = [
    # (dtype, complex a, broadcast a over the last state axis, reverse, resets, chunk_size)
    (torch.float32, False, False, False, False, 4),
    (torch.float32, False, True, True, True, 4),
    (torch.float32, False, False, True, True, None),
    (torch.float64, False, False, False, True, 2),
    (torch.complex64, True, False, False, True, 4),
    (torch.complex64, False, True, True, False, 8),
    (torch.complex128, True, True, True, True, 4),
    (torch.bfloat16, False, False, False, True, 4),
    (torch.float16, False, True, True, False, 4),
]


@pytest.mark.parametrize(("dtype", "complex_a", "broadcast", "reverse", "resets", "chunk"), CASES)
def test_triton_equals_sequential_values_and_gradients(dtype, complex_a, broadcast, reverse, resets, chunk):
    """Outputs and the gradients w.r.t. a, b, initial_state, across block boundaries (T = 11 > the block)."""
    a, b, h0, cut = _problem(dtype, complex_a=complex_a, broadcast=broadcast)
    cut = cut if resets else None
    got = _run("triton", a, b, h0, cut, reverse, chunk)
    want = _run("sequential", a, b, h0, cut, reverse, chunk)
    for name, x, y, grad in zip(("h", "final", "a_bar", "b_bar", "h0_bar"), got, want, (False, False, True, True,
                                                                                        True)):
        assert x.dtype == y.dtype and x.shape == y.shape, name
        tol = tolerance_for(_NAMES[dtype], length=b.shape[1], grad=grad)
        err, allowed = max_violation(_np(x), _np(y), tol)
        assert err <= allowed, (name, err, allowed)


def test_absent_initial_state_is_exactly_zero_state():
    a, b, h0, _ = _problem(torch.float32)
    h_none, f_none = ts.linear_scan(a, b, method="triton", chunk_size=4)
    h_zero, f_zero = ts.linear_scan(a, b, initial_state=torch.zeros_like(h0), method="triton", chunk_size=4)
    assert torch.equal(h_none, h_zero) and torch.equal(f_none, f_zero)


@pytest.mark.parametrize("length", [0, 1])
def test_short_sequences(length):
    a, b, h0, _ = _problem(torch.float32, shape=(2, length, 3))
    h, final = ts.linear_scan(a, b, initial_state=h0, method="triton")
    want_h, want_final = ts.linear_scan(a, b, initial_state=h0, method="sequential")
    assert torch.allclose(h, want_h) and torch.allclose(final, want_final)


def test_nan_stays_in_its_segment():
    """recurrence.md §11: a reset cuts by selection, not by ``0 * h``: NaN before it does not cross."""
    a = torch.full((1, 9, 2), 0.5)
    b = torch.ones(1, 9, 2)
    b[0, 2] = float("nan")
    resets = torch.zeros(1, 9, dtype=torch.bool)
    resets[0, 5] = True
    h, _ = ts.linear_scan(a, b, resets=resets, method="triton", chunk_size=4)
    assert torch.isnan(h[0, 2:5]).all() and torch.isfinite(h[0, 5:]).all() and torch.isfinite(h[0, :2]).all()


def test_auto_never_picks_triton_on_cpu_but_does_on_cuda():
    _, b, _, _ = _problem(torch.float32)
    assert ts._auto_for_device(b) != "triton"
    assert ts._auto_for_device(b.to("meta")) != "triton"

    class _Cuda:
        device = torch.device("cuda")

    assert ts._auto_for_device(_Cuda()) == "triton"


def test_missing_triton_names_the_method_that_works(monkeypatch):
    monkeypatch.setattr(triton_scan, "available", lambda: False)
    a, b, _, _ = _problem(torch.float32)
    for call in (lambda: ts.linear_scan(a, b, method="triton"),
                 lambda: ts.linear_scan_vjp(a, b, torch.ones_like(b), method="triton")):
        with pytest.raises(ValueError, match=r"triton.*'chunked'"):
            call()


def test_unsupported_dtype_and_device_name_the_method_that_works():
    with pytest.raises(TypeError, match="'chunked'"):
        triton_scan.triton_linear_scan(torch.ones(1, 2, 3, dtype=torch.int32), torch.ones(1, 2, 3, dtype=torch.int32),
                                       None, None, False)
    with pytest.raises(ValueError, match="'chunked'"):
        ts.linear_scan(torch.ones(1, 2, 3, device="meta"), torch.ones(1, 2, 3, device="meta"), method="triton")


def test_kernels_compiled_for_a_gpu_refuse_cpu_tensors(monkeypatch):
    a, b, _, _ = _problem(torch.float32)
    ts.linear_scan(a, b, method="triton")  # defines the kernels (interpreted)
    monkeypatch.setitem(triton_scan._mode, "interpreted", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ts.linear_scan(a, b, method="triton")


def test_interpreted_run_says_so(monkeypatch):
    monkeypatch.setitem(triton_scan._warned, "interpreted", False)
    a, b, _, _ = _problem(torch.float32)
    with pytest.warns(triton_scan.InterpretedKernelWarning, match="interpreter"):
        ts.linear_scan(a, b, method="triton")


def test_importing_the_backend_loads_no_triton():
    code = ("import sys, linrec.backends.torch as t; assert 'triton' in t.METHODS; "
            "print(sorted(m for m in sys.modules if m == 'triton' or m.endswith('triton_scan_kernels')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


_KERNEL_MODULES = ("triton_scan_kernels", "triton_gated_linear_rnn_kernels", "triton_gateloop_mh_kernels")


@pytest.mark.parametrize("module", _KERNEL_MODULES)
def test_kernels_call_no_jitted_triton_language_function(module):
    """``tl.zeros``, ``tl.sum``, ``tl.sigmoid``, ... are ``@triton.jit`` functions of ``triton.language``, defined
    compiled when triton is imported before ``TRITON_INTERPRET=1`` is set (``linrec conformance`` does that: torch
    imports triton on its own); the interpreter cannot call them from a kernel. Only core builtins may be used."""
    import ast
    import importlib

    import triton.language as tl
    from triton.runtime.jit import KernelInterface  # compiled (JITFunction) or interpreted

    jitted = {n for n in dir(tl) if isinstance(getattr(tl, n), KernelInterface)}
    mod = importlib.import_module(f"linrec.backends.torch.{module}")
    tree = ast.parse(open(mod.__file__).read())
    calls = {node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
             and node.func.value.id == "tl"}
    assert "full" in calls or "where" in calls  # the walk sees the kernels' calls
    assert not calls & jitted, f"{module} calls jitted triton.language functions {sorted(calls & jitted)}"


def test_kernels_run_interpreted_when_triton_was_imported_first():
    """The way ``linrec conformance`` runs them: triton imported before the interpreter switch, no
    ``TRITON_INTERPRET`` in the environment; every kernel (scan, fused gates, GateLoop) runs on CPU tensors."""
    code = """
import warnings; warnings.simplefilter("ignore")
import torch, triton.language
from linrec.backends.torch import scan, triton_mingru as mingru, triton_gated_linear_rnn as gated_linear_rnn
from linrec.backends.torch.triton_gateloop_mh import triton_gateloop_mh
g = torch.Generator().manual_seed(0)
a, b = torch.rand(1, 5, 3, generator=g), torch.randn(1, 5, 3, generator=g)
h, _ = scan.linear_scan(a, b, method="triton")
ref, _ = scan.linear_scan(a, b, method="sequential")
assert torch.allclose(h, ref, rtol=1e-5, atol=1e-6)
q, k = torch.randn(1, 5, 2, 3, generator=g), torch.randn(1, 5, 2, 3, generator=g)
v, s0 = torch.randn(1, 5, 2, 4, generator=g), torch.zeros(1, 2, 3, 4)
for rows in (3, 1):
    gate = torch.rand(1, 5, 2, rows, 1, generator=g)
    o, s = triton_gateloop_mh(q, k, v, gate, s0)
    state, outs = s0, []
    for t in range(5):  # S_t = a_t S_(t-1) + k_t v_t^T, o_t = q_t S_t
        state = gate[:, t] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    assert torch.allclose(o, torch.stack(outs, 1), rtol=1e-5, atol=1e-5) and torch.allclose(s, state, atol=1e-5)
u, h0 = torch.randn(1, 5, 6, generator=g), torch.zeros(1, 3)
assert all(torch.isfinite(x).all() for x in mingru.triton_mingru(u, h0, "g"))
u = torch.randn(1, 5, 12, generator=g)  # untied: input, input gate, forget gate, output gate
assert all(torch.isfinite(x).all() for x in gated_linear_rnn.triton_gated_linear_rnn(u, h0, tied=False))
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["triton-chunk-carry-off-by-one", "triton-fwd-drop-reset", "triton-bwd-drop-reset",
                                  "triton-bwd-prev-shift", "triton-scan-stride", "triton-mingru-bwd-drop-abar",
                                  "triton-glr-tied-bwd-drop-abar"])
def test_the_suite_kills_the_kernel_mutants(name):
    from linrec.tools import mutants

    mutant = {m.name: m for m in mutants.TRITON_MUTANTS}[name]
    result = mutants.run_mutant(mutant)
    assert result.status == "killed", (result.status, result.detail)
    assert "timed out" not in result.detail and "crashed" not in result.detail, result.detail


def test_block_sizes_are_powers_of_two():
    for size, block in itertools.chain(((None, triton_scan.DEFAULT_BLOCK_T),), ((1, 1), (3, 4), (16, 16), (17, 32))):
        assert triton_scan._block_t(size) == block
    assert np.all([triton_scan._block_n(n) & (triton_scan._block_n(n) - 1) == 0 for n in range(1, 200)])


def test_bench_scan_device_dry_run_and_model(capsys):
    """``linrec bench scan --device cuda --dry-run``: the GPU benchmark's code on CPU (interpreted, tiny shapes)."""
    from linrec.tools import bench_cli, bench_device

    assert bench_cli.main(["scan", "--device", "cuda", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "| linrec triton | 32 |" in out and "| linrec chunked | 32 |" in out
    assert bench_cli.main(["scan", "--model"]) == 0
    out = capsys.readouterr().out
    assert "| scan fwd | 8×16384×512 |" in out and "H200 ms" in out
    if not torch.cuda.is_available():
        assert bench_cli.main(["scan", "--device", "cuda"]) == 2
        assert "--dry-run" in capsys.readouterr().err
    # the model: memory-bound (FLOP/byte far below the H100 ridge point), 12 B/element forward
    fwd, bwd, both = bench_device.kernel_costs(8, 1024, 512)
    assert fwd.bytes == 12 * 8 * 1024 * 512 and bwd.bytes == 20 * 8 * 1024 * 512 and both.bytes == fwd.bytes + bwd.bytes
    h100 = bench_device.DEVICES["H100"]
    assert fwd.flops / fwd.bytes < h100.fp32_flops / h100.bandwidth
    assert fwd.seconds(h100) == fwd.bytes / h100.bandwidth


@pytest.mark.parametrize(("candidate", "dtype"), [("identity", torch.float32), ("g", torch.float64)])
def test_fused_mingru_equals_the_unfused_scan(candidate, dtype):
    """``triton_mingru``: gates made in the kernel, backward writes ``ū`` and ``h̄0`` directly."""
    from linrec.backends.torch.triton_mingru import triton_mingru

    mingru_module = sys.modules["linrec.backends.torch.mingru"]
    g = torch.Generator().manual_seed(3)
    u = (2 * torch.randn(2, 11, 10, generator=g, dtype=dtype)).requires_grad_(True)
    h0 = torch.randn(2, 5, generator=g, dtype=dtype).requires_grad_(True)
    config = type("Config", (), {"candidate": candidate})()
    h, final = triton_mingru(u, h0, candidate, chunk_size=4)
    a, b = mingru_module.mingru_gates(u, config)
    want_h, want_final = ts.linear_scan(a, b, initial_state=h0, method="sequential")
    ct_h, ct_f = torch.randn(h.shape, generator=g, dtype=dtype), torch.randn(final.shape, generator=g, dtype=dtype)
    got = (h, final, *torch.autograd.grad([h, final], [u, h0], [ct_h, ct_f]))
    want = (want_h, want_final, *torch.autograd.grad([want_h, want_final], [u, h0], [ct_h, ct_f]))
    for name, x, y, grad in zip(("h", "final", "u_bar", "h0_bar"), got, want, (False, False, True, True)):
        err, allowed = max_violation(_np(x), _np(y), tolerance_for(_NAMES[dtype], length=11, grad=grad))
        assert err <= allowed, (name, err, allowed)


@pytest.mark.parametrize(("tied", "reverse", "dtype"), [(True, False, torch.float32), (False, True, torch.float64)])
def test_fused_gated_linear_rnn_equals_the_unfused_scan(tied, reverse, dtype):
    """``triton_gated_linear_rnn``: gates and the ``tanh(h) o`` read-out in the kernel, one-pass backward."""
    from linrec.backends.torch.triton_gated_linear_rnn import triton_gated_linear_rnn

    g = torch.Generator().manual_seed(4)
    hidden, parts = 5, 3 if tied else 4
    u = (1.5 * torch.randn(2, 11, parts * hidden, generator=g, dtype=dtype)).requires_grad_(True)
    h0 = torch.randn(2, hidden, generator=g, dtype=dtype).requires_grad_(True)
    y, final = triton_gated_linear_rnn(u, h0, tied, reverse, chunk_size=4)
    blocks = u.split(hidden, -1)
    i = torch.sigmoid(blocks[1])
    f, o = (1 - i, torch.sigmoid(blocks[2])) if tied else (torch.sigmoid(blocks[2]), torch.sigmoid(blocks[3]))
    h, want_final = ts.linear_scan(f, i * torch.tanh(blocks[0]), initial_state=h0, reverse=reverse,
                                   method="sequential")
    want_y = torch.tanh(h) * o
    ct_y, ct_f = torch.randn(y.shape, generator=g, dtype=dtype), torch.randn(final.shape, generator=g, dtype=dtype)
    got = (y, final, *torch.autograd.grad([y, final], [u, h0], [ct_y, ct_f]))
    want = (want_y, want_final, *torch.autograd.grad([want_y, want_final], [u, h0], [ct_y, ct_f]))
    for name, x, w, grad in zip(("y", "final", "u_bar", "h0_bar"), got, want, (False, False, True, True)):
        err, allowed = max_violation(_np(x), _np(w), tolerance_for(_NAMES[dtype], length=11, grad=grad))
        assert err <= allowed, (name, err, allowed)
