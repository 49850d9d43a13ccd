"""The fused GateLoop Pallas kernel (``backends/jax/pallas_gateloop_mh.py``), run in Pallas's interpreter on CPU.

``gateloop_mh(..., method="pallas")`` against the float64 reference (``linrec.spec.gateloop_mh.forward``/``vjp``)
for real and complex gates, an initial state, right padding and ``T`` that is not a multiple of the kernel's chunk
(8 steps in the interpreter); the kernel itself against ``reference.linear_scan`` of ``k ⊗ v`` with decays of exactly
0; and that the layer's ``pallas`` path is the fused kernel, not the generic scan over ``(H, K, V)``.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from linrec.backends import jax as J
from linrec.backends.jax import pallas_gateloop_mh, pallas_scan
from linrec.conformance.compare import compare, compare_many
from linrec.spec import gateloop_mh as spec
from linrec.spec import reference
from linrec.spec.state import State

# the slow tier (27 s of Pallas's interpreter on the 2-core reference machine; `.ci/run` runs it after the README's
# command); the Pallas scan kernel's tests (tests/test_pallas.py) stay in the main tier
pytestmark = [pytest.mark.filterwarnings("ignore:linrec. method='pallas' runs in Pallas's interpreter"),
              pytest.mark.slow]

T = 11  # crosses the interpreter's 8-step chunk; the last chunk is padded with identity steps

CONFIGS = {
    "real-key": spec.GateLoopMHConfig(d_model=4, num_heads=2),
    "complex-head-cartesian": spec.GateLoopMHConfig(d_model=4, num_heads=2, gate="complex", gate_granularity="head",
                                                    gate_parametrization="cartesian"),
    "complex-key-complex-output": spec.GateLoopMHConfig(d_model=6, num_heads=2, d_key=2, d_value=3, gate="complex",
                                                        complex_output="complex"),
}


def _inputs(config: spec.GateLoopMHConfig, with_state: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = spec.init_params(config, seed, "float32")
    x = rng.standard_normal((2, T, config.d_model)).astype(np.float32)
    h0 = None
    if with_state:
        shape = spec.state_shape(config, 2)
        h0 = rng.standard_normal(shape)
        if config.is_complex:
            h0 = h0 + 1j * rng.standard_normal(shape)
        h0 = h0.astype(spec.state_dtype(config, "float32"))
    return params, x, h0


@pytest.mark.parametrize("with_state", [True, False], ids=["initial-state", "zeros"])
@pytest.mark.parametrize("key", list(CONFIGS))
def test_values_and_gradients_match_reference(key: str, with_state: bool) -> None:
    config = CONFIGS[key]
    params, x, h0 = _inputs(config, with_state)
    state = None if h0 is None else State(h0)
    y, final = J.gateloop_mh(params, x, config=config, initial_state=state, method="pallas")
    p64 = {n: v.astype(np.float64) for n, v in params.items()}
    s64 = None if h0 is None else State(h0.astype(np.complex128 if config.is_complex else np.float64))
    y_ref, final_ref = spec.forward(p64, x.astype(np.float64), config, s64)
    dtype = np.asarray(final.h).dtype.name
    y_dtype = np.asarray(y).dtype.name
    outcomes = [compare("y", np.asarray(y), y_ref, y_dtype, method="pallas", length=T),
                compare("final_state", np.asarray(final.h), final_ref.h, dtype, method="pallas", length=T)]

    rng = np.random.default_rng(7)
    ct_y = rng.standard_normal(y_ref.shape)
    if np.iscomplexobj(y_ref):
        ct_y = ct_y + 1j * rng.standard_normal(y_ref.shape)
    ct_s = rng.standard_normal(final_ref.h.shape) + (1j * rng.standard_normal(final_ref.h.shape)
                                                    if config.is_complex else 0)

    def f(p, xx, s):
        yy, ff = J.gateloop_mh(p, xx, config=config, initial_state=State(s), method="pallas")
        return yy, ff.h

    s_in = h0 if h0 is not None else np.zeros(spec.state_shape(config, 2), spec.state_dtype(config, "float32"))
    _, pull = jax.vjp(f, params, x, s_in)
    gp, gx, gs = pull((ct_y.astype(y_dtype), ct_s.astype(dtype)))
    wp, wx, ws = spec.vjp(p64, x.astype(np.float64), config, ct_y, ct_s, initial_state=s64)
    outcomes.append(compare("x_bar", np.asarray(gx), wx, "float32", method="pallas", length=T, grad=True))
    outcomes.append(compare("initial_state_bar", np.asarray(gs), ws, dtype, method="pallas", length=T, grad=True))
    outcomes += [compare(f"{n}_bar", np.asarray(gp[n]), wp[n], "float32", method="pallas", length=T, grad=True)
                 for n in sorted(wp)]
    outcome = compare_many(outcomes)
    assert outcome.passed, outcome.detail


@pytest.mark.parametrize("key", ["real-key", "complex-head-cartesian"])
def test_lengths_match_reference(key: str) -> None:
    config = CONFIGS[key]
    params, x, h0 = _inputs(config, True, seed=3)
    lengths = np.array([T, 5])  # row 1 stops inside the first chunk: identity steps carry its state through
    y, final = J.gateloop_mh(params, x, config=config, initial_state=State(h0), lengths=lengths, method="pallas")
    p64 = {n: v.astype(np.float64) for n, v in params.items()}
    s64 = State(h0.astype(np.complex128 if config.is_complex else np.float64))
    y_ref, final_ref = spec.forward(p64, x.astype(np.float64), config, s64, lengths=lengths)
    dtype = np.asarray(final.h).dtype.name
    outcome = compare_many([compare("y", np.asarray(y), y_ref, "float32", method="pallas", length=T),
                            compare("final_state", np.asarray(final.h), final_ref.h, dtype, method="pallas",
                                    length=T)])
    assert outcome.passed, outcome.detail
    assert not np.any(np.asarray(y)[1, 5:])

    # gradients with padding: the kernel's VJP against the layer's sequential mode (lax.scan over the step)
    def loss(method: str, mode: str):
        def f(p, s):
            yy, ff = J.gateloop_mh(p, x, config=config, initial_state=State(s), lengths=lengths, mode=mode,
                                   method=method)
            return (yy ** 2).sum() + (abs(ff.h) ** 2).sum()
        return f

    got = jax.grad(loss("pallas", "parallel"), argnums=(0, 1))(params, h0)
    want = jax.grad(loss("auto", "sequential"), argnums=(0, 1))(params, h0)
    outcomes = [compare("initial_state_bar", np.asarray(got[1]), np.asarray(want[1]), dtype, method="pallas",
                        length=T, grad=True)]
    outcomes += [compare(f"{n}_bar", np.asarray(got[0][n]), np.asarray(want[0][n]), "float32", method="pallas",
                         length=T, grad=True) for n in sorted(want[0])]
    outcome = compare_many(outcomes)
    assert outcome.passed, outcome.detail


@pytest.mark.x64
@pytest.mark.parametrize("complex_gate", [False, True], ids=["real", "complex"])
def test_kernel_matches_reference_scan_with_zero_decays(complex_gate: bool) -> None:
    """The kernel alone, float64: ``o = Sᵀ q`` of ``linear_scan(a, k ⊗ v)`` with some decays exactly 0 (a stable
    form never divides by a decay) and chunks of 4 over 10 steps; its VJP in every argument against the reference
    scan's VJP chained through the outer product and the read-out."""
    rng = np.random.default_rng(11)
    b, t, h, k_, v_ = 2, 10, 2, 3, 2
    q, k = rng.standard_normal((2, b, t, h, k_))
    v = rng.standard_normal((b, t, h, v_))
    a = rng.uniform(0.3, 1.0, (b, t, h, k_, 1)) * (rng.uniform(size=(b, t, h, k_, 1)) > 0.2)
    h0 = rng.standard_normal((b, h, k_, v_))
    if complex_gate:
        a = a * np.exp(1j * rng.standard_normal(a.shape))
        h0 = h0 + 1j * rng.standard_normal(h0.shape)
    o, final = pallas_gateloop_mh.pallas_gateloop_mh(*map(jax.numpy.asarray, (q, k, v, a, h0)), block_t=4)
    kv = (k[..., :, None] * v[..., None, :]).astype(h0.dtype)
    states, final_ref = reference.linear_scan(a, kv, initial_state=h0)
    o_ref = np.einsum("bthkv,bthk->bthv", states, q)
    dtype = h0.dtype.name
    outcomes = [compare("o", np.asarray(o), o_ref, dtype, length=t),
                compare("final_state", np.asarray(final), final_ref, dtype, length=t)]
    ct_o = rng.standard_normal(o_ref.shape) + (1j * rng.standard_normal(o_ref.shape) if complex_gate else 0)
    ct_f = rng.standard_normal(h0.shape) + (1j * rng.standard_normal(h0.shape) if complex_gate else 0)
    _, pull = jax.vjp(lambda *z: pallas_gateloop_mh.pallas_gateloop_mh(*z, block_t=4), q, k, v, a, h0)
    qb, kb, vb, ab, h0b = pull((ct_o, ct_f))
    # reference: h̄ = q ⊗ ō (q real), then the reference scan VJP, then k̄ = Re(b̄) v, v̄ = Re(b̄)ᵀ k
    ct_states = q[..., :, None] * ct_o[..., None, :]
    a_bar, b_bar, h0_bar = reference.linear_scan_vjp(a, kv, ct_states, ct_f, initial_state=h0)
    q_bar = np.real(np.einsum("bthkv,bthv->bthk", states, ct_o))  # pairing Re Σ ō·o, no conjugation
    k_bar = np.einsum("bthkv,bthv->bthk", np.real(b_bar), v)
    v_bar = np.einsum("bthkv,bthk->bthv", np.real(b_bar), k)
    outcomes += [compare(n, np.asarray(g), w, dtype, length=t, grad=True) for n, g, w in (
        ("q_bar", qb, q_bar), ("k_bar", kb, k_bar), ("v_bar", vb, v_bar), ("a_bar", ab, a_bar),
        ("initial_state_bar", h0b, h0_bar))]
    outcome = compare_many(outcomes)
    assert outcome.passed, outcome.detail


def test_layer_pallas_is_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """``method="pallas"`` never materialises ``k ⊗ v`` through the generic scan kernel."""
    def refuse(*args, **kwargs):
        raise AssertionError("the generic Pallas scan was called")

    monkeypatch.setattr(pallas_scan, "pallas_linear_scan", refuse)
    config = spec.GateLoopMHConfig(d_model=4, num_heads=2, chunk_size=5)  # a distinct static config: no jit hit
    params, x, _ = _inputs(config, False)
    y, _ = J.gateloop_mh(params, x, config=config, method="pallas")
    assert np.all(np.isfinite(np.asarray(y)))


def test_chunk_size_is_refused_naming_chunked() -> None:
    config = CONFIGS["real-key"]
    params, x, _ = _inputs(config, False)
    with pytest.raises(ValueError, match="method='chunked'"):
        J.gateloop_mh(params, x, config=config, method="pallas", chunk_size=4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pallas-gateloop-carry-off-by-one", "pallas-gateloop-drop-inter-chunk",
                                  "pallas-gateloop-adjoint-drop-decay"])
def test_gateloop_kernel_mutants_are_killed(name: str) -> None:
    """The kernel's mutants (``tools/mutants.PALLAS_MUTANTS``) fail the layer's ``method="pallas"`` cases."""
    from linrec.tools import mutants

    mutant = next(m for m in mutants.PALLAS_MUTANTS if m.name == name)
    result = mutants.run_mutant(mutant, timeout=1800)
    assert result.status == "killed", result.detail
    assert result.failed and all("pallas" in f for f in result.failed), result.failed
