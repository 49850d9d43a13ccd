"""``method="triton"`` of the PyTorch ``gateloop_mh``: the fused outer-product kernel, in Triton's interpreter on CPU.

The conformance suite holds the layer's ``[parallel-triton,*]`` paths to the spec; these tests pin the chunked kernel
(intra-chunk scores, inter-chunk state) across its chunk boundaries (``T`` not a multiple of ``C``, ``C = 1``,
``C > T``, ``C`` not a power of two, tiles padded to 16), against the NumPy reference layer
(values, with ``initial_state`` and ``lengths``) and against the autograd of the step loop (gradients w.r.t.
``q, k, v, a`` and the initial state at the kernel level; w.r.t. every parameter, ``x`` and the initial state at the
layer level), and the errors that name ``method='chunked'``.
"""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from linrec.backends import numpy as lnp  # noqa: E402
from linrec.backends.torch import triton_gateloop_mh as tgk  # noqa: E402
from linrec.backends.torch import triton_scan  # noqa: E402
from linrec.spec import gateloop_mh as spec  # noqa: E402
from linrec.spec.state import State  # noqa: E402
from linrec.spec.tolerances import max_violation, tolerance_for  # noqa: E402

#: the module (the package exports the function under the same name)
tg = importlib.import_module("linrec.backends.torch.gateloop_mh")

# the slow tier (17 s of Triton's interpreter on the 2-core reference machine; `.ci/run` runs it after the README's
# command); the Triton scan kernel's tests (tests/test_triton.py) stay in the main tier
pytestmark = [pytest.mark.filterwarnings("ignore::linrec.backends.torch.triton_scan.InterpretedKernelWarning"),
              pytest.mark.slow]

_BASE = spec.GateLoopMHConfig(d_model=5, num_heads=2, d_key=3, d_value=2)
CONFIGS = {
    "real-key": _BASE,
    "real-head": replace(_BASE, gate_granularity="head"),
    "complex-key": replace(_BASE, gate="complex"),
    "complex-head-out": replace(_BASE, gate="complex", gate_granularity="head", complex_output="complex"),
}


def _np(x):
    return x.detach().to(torch.complex128 if x.is_complex() else torch.float64).numpy()


def _close(name, got, want, dtype, length, grad=False):
    err, allowed = max_violation(np.asarray(got), np.asarray(want), tolerance_for(dtype, length=length, grad=grad))
    assert err <= allowed, (name, err, allowed)


# ---------------------------------------------------------------- the kernel alone


def _loop(q, k, v, a, s0):
    """The defining loop in torch (autograd reference)."""
    s, outs = s0, []
    for t in range(q.shape[1]):
        s = a[:, t] * s + (k[:, t, ..., :, None] * v[:, t, ..., None, :]).to(s.dtype)
        outs.append(torch.einsum("bhkv,bhk->bhv", s, q[:, t].to(s.dtype)))
    return (torch.stack(outs, 1) if outs else s.new_zeros((*q.shape[:3], v.shape[-1]))), s


def _operands(complex_gate, rows, dtype, length=11, seed=0, d_k=3, d_v=5):
    g = torch.Generator().manual_seed(seed)
    batch, heads = 2, 2
    q, k, v = (torch.randn((batch, length, heads, n), generator=g, dtype=dtype) for n in (d_k, d_k, d_v))
    mag = torch.rand((batch, length, heads, rows, 1), generator=g, dtype=dtype)
    s0 = torch.randn((batch, heads, d_k, d_v), generator=g, dtype=dtype)
    if complex_gate:
        a = torch.polar(mag, torch.randn(mag.shape, generator=g, dtype=dtype))
        s0 = torch.complex(s0, torch.randn(s0.shape, generator=g, dtype=dtype))
    else:
        a = mag
    return [x.requires_grad_(True) for x in (q, k, v, a, s0)]


def _check_against_loop(leaves, chunk, dtype, length=11):
    got = tgk.triton_gateloop_mh(*leaves, chunk_size=chunk)
    want = _loop(*leaves)
    g = torch.Generator().manual_seed(3)
    cts = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in want]
    grads_got = torch.autograd.grad(got, leaves, cts)
    grads_want = torch.autograd.grad(want, leaves, cts)
    name = "float32" if dtype == torch.float32 else "float64"
    for label, x, y in zip(("o", "S_T"), got, want):
        assert x.dtype == y.dtype and x.shape == y.shape, label
        _close(label, _np(x), _np(y), name, length)
    for label, x, y in zip(("q", "k", "v", "a", "S_0"), grads_got, grads_want):
        assert x.dtype == y.dtype and x.shape == y.shape, label
        _close(label, _np(x), _np(y), name, length, grad=True)


@pytest.mark.parametrize(("complex_gate", "rows", "dtype", "chunk", "d_v"), [
    (False, 3, torch.float32, 4, 5), (False, 1, torch.float64, 1, 20), (True, 3, torch.float64, 4, 20),
    (True, 1, torch.float32, 16, 5), (False, 3, torch.float64, 3, 5), (True, 1, torch.float64, 5, 5),
])
def test_kernel_equals_the_loop_values_and_gradients(complex_gate, rows, dtype, chunk, d_v, monkeypatch):
    """o, S_T and the gradients w.r.t. q, k, v, a, S_0 across chunk boundaries (T = 11: 3, 4, 5 do not divide it;
    chunks of 3 and 5 sit in 16-row tiles with the rows past C masked), per key row (the (C, C, K) decay tile) and
    per head (the (q · kᵀ) ⊙ L dot), with V = 5 in one column tile or V = 20 in tiles of 16 (the last one partial;
    q̄, k̄, ā summed over the tiles)."""
    monkeypatch.setattr(tgk, "_MAX_BLOCK_V", 16)
    _check_against_loop(_operands(complex_gate, rows, dtype, d_v=d_v), chunk, dtype)


@pytest.mark.parametrize("rows", [17, 1])
def test_kernel_pads_key_rows_past_a_tile(rows):
    """K = 17 (a 32-row key tile, 15 rows masked), per key row and per head, chunks of 4 over T = 6."""
    _check_against_loop(_operands(False, rows, torch.float64, length=6, d_k=17), 4, torch.float64, length=6)


def test_real_gate_of_a_complex_state():
    """A real decay of a complex state (real W, P; complex S, o and cotangents; ā real)."""
    q, k, v, a, s0 = _operands(True, 3, torch.float64)
    _check_against_loop([q, k, v, a.detach().abs().requires_grad_(True), s0], 4, torch.float64)


@pytest.mark.parametrize(("complex_gate", "rows"), [(False, 3), (True, 1)])
def test_zero_decay_gradients_are_exact(complex_gate, rows):
    """a = 0 at a chunk's interior step and at a chunk's first step: the running products (no division by a decay)
    keep the values and the gradients, ā included, equal to the loop's."""
    q, k, v, a, s0 = (x.detach() for x in _operands(complex_gate, rows, torch.float64))
    a = a.clone()
    a[:, 5] = 0.0
    a[:, 8] = 0.0
    _check_against_loop([x.requires_grad_(True) for x in (q, k, v, a, s0)], 4, torch.float64)


def test_zero_decay_is_exact_and_empty_sequence_keeps_the_state():
    """a = 0 cuts the state (no division by a decay anywhere); T = 0 returns the initial state."""
    q, k, v, a, s0 = (x.detach() for x in _operands(False, 3, torch.float64))
    a = a.clone()
    a[:, 5] = 0.0
    o, s = tgk.triton_gateloop_mh(q, k, v, a, s0, chunk_size=4)
    o2, s2 = _loop(q, k, v, a, s0)
    assert torch.allclose(o, o2, rtol=1e-12, atol=1e-12) and torch.allclose(s, s2, rtol=1e-12, atol=1e-12)
    o, s = tgk.triton_gateloop_mh(q[:, :0], k[:, :0], v[:, :0], a[:, :0], s0)
    assert o.shape == (2, 0, 2, 5) and torch.equal(s, s0)


def test_errors_name_the_chunked_method(monkeypatch):
    q, k, v, a, s0 = (x.detach() for x in _operands(True, 3, torch.float64))
    with pytest.raises(TypeError, match="'chunked'"):
        tgk.triton_gateloop_mh(q, k, v, a, s0.real)  # complex gate, real state
    with pytest.raises(TypeError, match="'chunked'"):
        tgk.triton_gateloop_mh(q.float(), k, v, a, s0)  # q not in the state's real dtype
    monkeypatch.setattr(triton_scan, "available", lambda: False)
    with pytest.raises(ValueError, match=r"triton.*'chunked'"):
        tgk.triton_gateloop_mh(q, k, v, a, s0)


# ---------------------------------------------------------------- the layer


def _layer_problem(config, seed=0, length=11):
    rng = np.random.default_rng(seed)
    params = spec.init_params(config, seed, dtype="float64")
    x = rng.standard_normal((2, length, config.d_model))
    s0 = spec.initial_state(config, 2, "float64").h
    s0 = s0 + rng.standard_normal(s0.shape)
    if config.is_complex:
        s0 = s0 + 1j * rng.standard_normal(s0.shape)
    return params, x, s0


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_layer_equals_the_numpy_reference(variant):
    """Values with initial_state and lengths (identity steps inside the kernel), chunks of config.chunk_size = 4
    over T = 11."""
    config = replace(CONFIGS[variant], chunk_size=4)
    params, x, s0 = _layer_problem(config)
    lengths = np.array([11, 6])
    tp = {n: torch.as_tensor(p) for n, p in params.items()}
    for lens in (None, lengths):
        y, state = tg.gateloop_mh(tp, torch.as_tensor(x), config=config, initial_state=State(torch.as_tensor(s0)),
                                  lengths=None if lens is None else torch.as_tensor(lens), method="triton")
        y_ref, state_ref = lnp.gateloop_mh(params, x, config=config, initial_state=State(s0), lengths=lens)
        _close("y", _np(y), y_ref, "float64", 11)
        _close("final_state", _np(state.h), state_ref.h, "float64", 11)


@pytest.mark.parametrize("variant", ["real-key", "complex-head-out"])
def test_layer_gradients_equal_the_step_loop(variant):
    """Gradients w.r.t. every parameter, x and initial_state (float32 inputs, with lengths) equal the step loop's."""
    config = replace(CONFIGS[variant], chunk_size=3)
    params, x, s0 = _layer_problem(config, seed=1, length=7)
    sdt = torch.complex64 if config.is_complex else torch.float32
    lengths = torch.tensor([7, 4])

    def run(method):
        leaves = {n: torch.tensor(p, dtype=torch.float32, requires_grad=True) for n, p in params.items()}
        xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
        st = torch.tensor(s0, dtype=sdt, requires_grad=True)
        y, state = tg.gateloop_mh(leaves, xt, config=config, initial_state=State(st), lengths=lengths,
                                  mode="sequential" if method == "sequential" else "parallel",
                                  method="auto" if method == "sequential" else method)
        g = torch.Generator().manual_seed(5)
        cts = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (y, state.h)]
        inputs = [*leaves.values(), xt, st]
        return [y, state.h, *torch.autograd.grad([y, state.h], inputs, cts)], ["y", "S", *leaves, "x", "s0"]

    got, labels = run("triton")
    want, _ = run("sequential")
    for i, (label, a, b) in enumerate(zip(labels, got, want)):
        _close(label, _np(a), _np(b), "float32", 7, grad=i >= 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "triton-gateloop-drop-chunk-carry", "triton-gateloop-carry-off-by-one", "triton-gateloop-drop-inter-chunk",
    "triton-gateloop-bwd-stale-checkpoint", "triton-gateloop-bwd-unconjugated-decay",
    "triton-gateloop-bwd-abar-drop-decay",
])
def test_the_suite_kills_the_kernel_mutants(name):
    """The gateloop_mh conformance cases of method='triton' fail on each mutant of the chunked kernel (a dropped or
    off-by-one chunk carry, a dropped inter-chunk read-out, a stale checkpoint or a wrong adjoint decay in the
    backward kernel)."""
    from linrec.tools import mutants

    mutant = {m.name: m for m in mutants.TRITON_MUTANTS}[name]
    result = mutants.run_mutant(mutant)
    assert result.status == "killed", (result.status, result.detail)
    assert "timed out" not in result.detail and "crashed" not in result.detail, result.detail
