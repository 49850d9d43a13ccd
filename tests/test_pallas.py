"""``method="pallas"`` of the JAX backend (``backends/jax/pallas_scan.py``), run in Pallas's interpreter on CPU.

Every option against the float64 reference (outputs, final state and the VJP), the errors, and that it is never
silent: ``auto`` does not pick it on CPU, and a CPU run says it is interpreted. The conformance suite runs it too
(``tests/test_conformance.py``); the kernel's mutants are in ``tools/mutants.py`` (``PALLAS_MUTANTS``).
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

from linrec.backends import jax as J
from linrec.backends.jax import pallas_scan, scan
from linrec.conformance.compare import compare, compare_many
from linrec.conformance.inputs import make_scan_inputs
from linrec.spec import reference
from linrec.spec.tolerances import max_violation, tolerance_for

pytestmark = pytest.mark.filterwarnings("ignore:linrec. method='pallas' runs in Pallas's interpreter")

# (dtype, state, broadcast a, reverse, resets, initial_state, regime); T = 11 crosses a block boundary (8 steps)
OPTIONS = {
    "float32-resets-broadcast-init": ("float32", (2, 3), (2, 1), False, True, True, "negative"),
    "float32-reverse-resets": ("float32", (5,), None, True, True, False, "uniform"),
    "complex64-reverse-init": ("complex64", (3,), None, True, False, True, "complex"),
    "complex64-real-decay-resets": ("complex64", (2, 2), None, False, True, True, "uniform"),
    "bfloat16-reverse-resets-init": ("bfloat16", (4,), None, True, True, True, "near-one"),
    "float16-forward": ("float16", (3,), None, False, False, True, "uniform"),
}


def _run(key: str, length: int = 11, chunk_size: int | None = None):
    dtype, state, broadcast, reverse, resets, init, regime = OPTIONS[key]
    x = make_scan_inputs(3, batch=2, length=length, state=state, dtype=dtype, regime=regime, broadcast_a=broadcast,
                         with_initial_state=init, reset_rate=0.3 if resets else 0.0)
    a = x.a.real.copy() if key == "complex64-real-decay-resets" else x.a
    kw = {"initial_state": x.initial_state, "reverse": reverse, "resets": x.resets, "method": "pallas",
          "chunk_size": chunk_size}
    h, final = J.linear_scan(a, x.b, **kw)
    ref_kw = {"initial_state": x.ref("initial_state"), "reverse": reverse, "resets": x.resets}
    a_ref = a.astype(np.float64 if np.isrealobj(a) else np.complex128)
    want = reference.linear_scan(a_ref, x.ref("b"), **ref_kw)
    outcomes = [compare(n, np.asarray(J.to_numpy(g)), w, dtype, method="pallas", length=length)
                for n, g, w in zip(("h", "final_state"), (h, final), want)]
    if dtype in ("float32", "complex64"):  # the gradient tolerances are tabled for 32/64-bit
        rng = np.random.default_rng(5)
        ct_h = rng.standard_normal(x.b.shape).astype(x.b.dtype)
        ct_f = rng.standard_normal(final.shape).astype(x.b.dtype)
        if dtype == "complex64":
            ct_h = ct_h + 1j * rng.standard_normal(x.b.shape).astype(x.b.dtype)
        got = J.linear_scan_vjp(a, x.b, ct_h, ct_f, **kw)
        want = reference.linear_scan_vjp(a_ref, x.ref("b"), ct_h.astype(x.ref("b").dtype),
                                         ct_f.astype(x.ref("b").dtype), **ref_kw)
        outcomes += [compare(n, np.asarray(J.to_numpy(g)), w, dtype, method="pallas", length=length, grad=True)
                     for n, g, w in zip(("a_bar", "b_bar", "initial_state_bar"), got, want)]
    return compare_many(outcomes)


def _assert_within(got, want, *, length: int, grad: bool = False) -> None:
    """float32 results within the spec's tolerance (``linrec.spec.tolerances``) of each other."""
    err, allowed = max_violation(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                 tolerance_for("float32", length=length, grad=grad))
    assert err <= allowed, (err, allowed)


@pytest.mark.parametrize("key", list(OPTIONS))
def test_pallas_equals_reference(key):
    outcome = _run(key)
    assert outcome.passed, outcome.detail


def test_pallas_float64_and_chunk_size_as_time_block():
    """float64 runs in the interpreter (64-bit mode); ``chunk_size`` sets the time block (here 3 blocks of 2)."""
    with jax.enable_x64(True):
        OPTIONS["float64-blocks"] = ("float64", (3,), None, True, True, True, "uniform")
        try:
            outcome = _run("float64-blocks", length=5, chunk_size=2)
        finally:
            del OPTIONS["float64-blocks"]
    assert outcome.passed, outcome.detail


def test_auto_never_picks_pallas_on_cpu(monkeypatch):
    assert jax.default_backend() == "cpu"
    assert pallas_scan.interpreted()
    for dtype in ("float32", "bfloat16", "complex64", "float64"):
        assert scan._pick_method("auto", dtype) != "pallas"
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert scan._pick_method("auto", "float32") == "pallas"
    assert scan._pick_method("auto", "float64") == "chunked"  # the compiled kernel is 32-bit


def test_unsupported_dtype_on_a_device_names_the_method_that_works(monkeypatch):
    monkeypatch.setattr(pallas_scan, "interpreted", lambda: False)
    with jax.enable_x64(True), pytest.raises(TypeError, match=r"a: method='pallas'.*float64; use method='chunked'"):
        J.linear_scan(np.ones((1, 3, 2)), np.ones((1, 3, 2)), method="pallas")
    with pytest.raises(TypeError, match="method='chunked'"):
        pallas_scan.check_pallas_dtype("b", "complex128", interpret=False)
    pallas_scan.check_pallas_dtype("b", "complex128", interpret=True)  # the interpreter takes it


def test_cpu_run_says_it_is_interpreted(monkeypatch):
    monkeypatch.setattr(pallas_scan, "_noticed", set())
    with pytest.warns(UserWarning, match="interpreter on CPU"):
        J.linear_scan(np.ones((1, 2, 1), np.float32), np.ones((1, 2, 1), np.float32), method="pallas")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        J.linear_scan(np.ones((1, 2, 1), np.float32), np.ones((1, 2, 1), np.float32), method="pallas")
    assert J.describe()["pallas"].startswith("interpreted")
    assert J.METHODS[-1] == "pallas"


def test_pallas_under_jit_vmap_and_grad():
    x = make_scan_inputs(1, batch=2, length=9, state=(2,), dtype="float32", reset_rate=0.3)

    def loss(a, b):
        return J.linear_scan(a, b, resets=x.resets, method="pallas")[0].sum()

    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(x.a, x.b)
    want = jax.grad(lambda a, b: J.linear_scan(a, b, resets=x.resets, method="sequential")[0].sum(),
                    argnums=(0, 1))(x.a, x.b)
    for g, w in zip(got, want):
        _assert_within(g, w, length=9, grad=True)
    batched = jax.vmap(lambda b: J.linear_scan(x.a, b, method="pallas")[0])(np.stack([x.b, 2 * x.b]))
    _assert_within(batched[1], 2 * np.asarray(batched[0]), length=9)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pallas-carry-off-by-one", "pallas-drop-reset"])
def test_pallas_kernel_mutants_are_killed(name):
    """The kernel's mutants (``tools/mutants.PALLAS_MUTANTS``) fail the JAX ``method="pallas"`` conformance cases."""
    from linrec.tools import mutants

    mutant = next(m for m in mutants.PALLAS_MUTANTS if m.name == name)
    result = mutants.run_mutant(mutant, timeout=1800)
    assert result.status == "killed", result.detail
    assert result.failed and all("[pallas" in f for f in result.failed), result.failed


@pytest.mark.parametrize("layer", ["mingru-g", "glr-untied-reversed"])
def test_fused_layer_kernels_equal_the_step_loop(layer):
    """minGRU / GatedLinearRNN with ``method="pallas"`` take the fused kernels (gates inside the scan); outputs,
    final state and the gradients w.r.t. parameters, input and initial state equal ``mode="sequential"``."""
    from linrec.spec import gated_linear_rnn as glr_spec
    from linrec.spec import mingru as mingru_spec

    if layer == "mingru-g":
        config = mingru_spec.MinGRUConfig(d_model=3, d_inner=4, candidate="g", default_state=0.5)
        params, fn = mingru_spec.init_params(config, seed=1), J.mingru
    else:
        config = glr_spec.GatedLinearRNNConfig(d_model=3, d_h=4, reversed=True, use_tied_gates=False)
        params, fn = glr_spec.init_params(config, seed=1), J.gated_linear_rnn
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 10, 3)).astype(np.float32)
    h0 = rng.standard_normal((2, 4)).astype(np.float32)

    def loss(params, x, h0, mode, method):
        y, state = fn(params, x, config=config, initial_state=J.State(h0), mode=mode, method=method)
        return (y * np.arange(y.size).reshape(y.shape) / y.size).sum() + (state.h ** 2).sum()

    got = jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, h0, "parallel", "pallas")
    want = jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, h0, "sequential", "auto")
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        _assert_within(g, w, length=10, grad=True)
