"""The native multi-head GateLoop kernel (``linrec.backends.native.gateloop_mh_scan`` and its twins) against a
float64 step loop, gradients included (PyTorch autograd of the loop), in every binding, and the layers' choice of it.
"""

from __future__ import annotations

import numpy as np
import pytest

from linrec.backends import native
from linrec.spec.tolerances import max_violation, tolerance_for

pytestmark = pytest.mark.skipif(not native.available(), reason="the native kernel is not built here")

#: (real dtype, state complex, gate complex, R = "key" or "head")
TYPES = [("float64", False, False, "key"), ("float64", True, False, "head"), ("float64", True, True, "key"),
         ("float32", True, True, "head"), ("float32", False, False, "head")]
#: (N, T, H, K, V): T = 0, 1, a partial last chunk of 32 steps, several chunks; the last one runs threaded
SHAPES = [(2, 0, 2, 3, 4), (1, 1, 1, 2, 8), (2, 33, 3, 3, 8), (2, 70, 2, 4, 5), (3, 200, 16, 8, 8)]


def _close(x, ref, dtype: str, what: str, grad: bool = False) -> None:
    err, allowed = max_violation(np.asarray(x), ref, tolerance_for(dtype, grad=grad))
    assert np.shape(x) == ref.shape and err <= allowed, f"{what}: max error {err:.3g} > allowed {allowed:.3g}"


def _problem(real: str, complex_state: bool, complex_gate: bool, rows: str, shape, seed: int = 0):
    n, t, h, k, v = shape
    rng = np.random.default_rng(seed)
    cdt = {"float32": np.complex64, "float64": np.complex128}[real]
    q, kk = rng.standard_normal((2, n, t, h, k)).astype(real)
    vv = rng.standard_normal((n, t, h, v)).astype(real)
    a = rng.uniform(0.3, 1.0, (n, t, h, k if rows == "key" else 1)).astype(real)
    if complex_gate:
        a = (a * np.exp(1j * rng.uniform(-2, 2, a.shape))).astype(cdt)
    sdt = cdt if complex_state else np.dtype(real)
    s0 = rng.standard_normal((n, h, k, v)).astype(sdt)
    go = rng.standard_normal((n, t, h, v)).astype(sdt)
    gs = rng.standard_normal((n, h, k, v)).astype(sdt)
    if complex_state:
        s0, go, gs = ((x + 1j * rng.standard_normal(x.shape)).astype(sdt) for x in (s0, go, gs))
    return q, kk, vv, a, s0, go, gs


def _reference(q, k, v, a, s0, go, gs):
    """float64 step loop and its gradients (PyTorch autograd; complex ones as ``∂L/∂Re + i ∂L/∂Im``)."""
    torch = pytest.importorskip("torch")
    wide = {np.dtype(np.float32): np.float64, np.dtype(np.complex64): np.complex128}
    tq, tk, tv, ta, ts = (torch.tensor(x.astype(wide.get(x.dtype, x.dtype)), requires_grad=True)
                          for x in (q, k, v, a, s0))
    s, outs = ts, []
    for t in range(q.shape[1]):
        s = ta[:, t, :, :, None] * s + (tk[:, t, :, :, None] * tv[:, t, :, None, :]).to(s.dtype)
        outs.append(torch.einsum("nhkv,nhk->nhv", s, tq[:, t].to(s.dtype)))
    o = torch.stack(outs, 1) if outs else torch.zeros((*q.shape[:3], v.shape[-1]), dtype=s.dtype)
    weights = [torch.tensor(x.astype(wide.get(x.dtype, x.dtype))) for x in (go, gs)]
    loss = sum((y * w.conj()).real.sum() for y, w in zip((o, s), weights))
    grads = torch.autograd.grad(loss, [tq, tk, tv, ta, ts], allow_unused=True)
    grads = [np.zeros(x.shape) if g is None else g.numpy() for g, x in zip(grads, (q, k, v, a, s0))]
    return o.detach().numpy(), s.detach().numpy(), grads


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("types", TYPES, ids=lambda t: "-".join(str(x) for x in t))
def test_kernel_matches_the_step_loop(types, shape):
    real = types[0]
    q, k, v, a, s0, go, gs = _problem(*types, shape)
    o, final, ck = native.gateloop_mh_scan(q, k, v, a, s0)
    assert o.dtype == s0.dtype and ck.shape == native.gmh_checkpoints(*shape)
    o_ref, final_ref, grads_ref = _reference(q, k, v, a, s0, go, gs)
    _close(o, o_ref, real, "o")
    _close(final, final_ref, real, "final")
    grads = native.gateloop_mh_scan_vjp(q, k, v, a, ck, go, gs)
    for name, g, ref in zip(("q", "k", "v", "a", "s0"), grads, grads_ref):
        _close(g, ref, real, f"{name}_bar", grad=True)


def test_kernel_refuses_what_it_cannot_serve():
    q, k, v, a, s0, *_ = _problem("float64", True, True, "key", (1, 4, 2, 3, 8))
    with pytest.raises(TypeError, match="native multi-head GateLoop kernel takes"):
        native.gateloop_mh_scan(q, k, v, a, s0.real.copy())  # a complex gate on a real state
    with pytest.raises(TypeError, match="native multi-head GateLoop kernel takes"):
        native.gateloop_mh_scan(q.astype(np.float16), k, v, a, s0)
    with pytest.raises(ValueError, match=r"a \(N, T, H, R\) with R in \(1, K\)"):
        native.gateloop_mh_scan(q, k, v, a[..., :2], s0)


def test_jax_binding_jit_grad_vmap():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from linrec.backends.jax.native_gateloop_mh import native_gateloop_mh

    shape = (2, 40, 2, 3, 8)
    q, k, v, a, s0, go, gs = _problem("float64", True, True, "head", shape, seed=4)
    o_ref, final_ref, grads_ref = _reference(q, k, v, a, s0, go, gs)
    with jax.enable_x64(True):
        args = [jnp.asarray(x) for x in (q, k, v, a[..., None], s0)]

        def loss(*args):
            o, final = native_gateloop_mh(*args)
            return jnp.real(jnp.vdot(jnp.asarray(go), o)) + jnp.real(jnp.vdot(jnp.asarray(gs), final))

        o, final = jax.jit(native_gateloop_mh)(*args)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(*args)
        stacked = jax.vmap(lambda q, s0: native_gateloop_mh(q, args[1], args[2], args[3], s0)[0])(
            jnp.stack([args[0], -args[0]]), jnp.stack([args[4], args[4]]))
    _close(o, o_ref, "float64", "jax o")
    _close(final, final_ref, "float64", "jax final")
    _close(stacked[0], o_ref, "float64", "jax vmap o")
    for name, g, ref in zip(("q", "k", "v", "a", "s0"), grads, grads_ref):
        g = np.asarray(g)[..., 0] if name == "a" else np.asarray(g)
        # JAX's cotangent of a complex input is the conjugate of PyTorch's gradient
        _close(np.conj(g) if np.iscomplexobj(g) else g, ref, "float64", f"jax {name}_bar", grad=True)


def test_torch_binding_autograd_opcheck_compile():
    torch = pytest.importorskip("torch")
    from linrec.backends.torch import native_gateloop_mh as fused

    shape = (2, 40, 2, 3, 8)
    q, k, v, a, s0, go, gs = _problem("float64", True, True, "key", shape, seed=5)
    o_ref, final_ref, grads_ref = _reference(q, k, v, a, s0, go, gs)
    inputs = [torch.from_numpy(x).requires_grad_(True) for x in (q, k, v, a, s0)]
    torch.library.opcheck(fused.gmh_fwd, (*inputs, False))
    torch.library.opcheck(fused.gmh_fwd, (*inputs, True))  # Re(o) only
    compiled = torch.compile(fused.native_gateloop_mh, fullgraph=True)
    o, final = compiled(*inputs[:3], inputs[3][..., None], inputs[4])
    loss = (o * torch.from_numpy(go).conj()).real.sum() + (final * torch.from_numpy(gs).conj()).real.sum()
    grads = torch.autograd.grad(loss, inputs)
    _close(o.detach().numpy(), o_ref, "float64", "torch o")
    _close(final.detach().numpy(), final_ref, "float64", "torch final")
    for name, g, ref in zip(("q", "k", "v", "a", "s0"), grads, grads_ref):
        _close(g.numpy(), ref, "float64", f"torch {name}_bar", grad=True)
    _, _, ck = fused.gmh_fwd(*(x.detach() for x in inputs), False)
    torch.library.opcheck(fused.gmh_bwd, (*(x.detach() for x in inputs[:4]), ck, torch.from_numpy(go),
                                          torch.from_numpy(gs)))
    with pytest.raises(RuntimeError, match=r"double backward|second derivative|create_graph"):
        o, final = fused.native_gateloop_mh(*inputs[:3], inputs[3][..., None], inputs[4])
        (g,) = torch.autograd.grad(o.abs().sum(), inputs[0], create_graph=True)
        torch.autograd.grad(g.sum(), inputs[0])


@pytest.mark.parametrize("framework", ["numpy", "jax", "torch"])
@pytest.mark.parametrize("d_value", [2, 8])
def test_layer_takes_the_kernel_for_wide_values(framework, d_value, monkeypatch):
    """``method="auto"``/``"native"`` run the kernel when ``d_value >= native.GMH_MIN_VALUE_WIDTH`` (narrower heads
    run faster as one scan over all heads), with the values of the parallel path."""
    if framework != "numpy":
        pytest.importorskip(framework)
    from importlib import import_module

    from linrec.spec import gateloop_mh as spec

    fused = import_module(f"linrec.backends.{framework}.native_gateloop_mh")
    layer = import_module(f"linrec.backends.{framework}.gateloop_mh")
    arrays = import_module(f"linrec.backends.{framework}.arrays")
    calls = []
    real = fused.native_gateloop_mh
    monkeypatch.setattr(fused, "native_gateloop_mh", lambda *args: calls.append(1) or real(*args))
    config = spec.GateLoopMHConfig(d_model=6, num_heads=2, d_key=3, d_value=d_value, gate="complex")
    params = {k: arrays.asarray(v.astype(np.float32)) for k, v in spec.init_params(config, seed=1).items()}
    x = arrays.asarray(np.random.default_rng(0).standard_normal((2, 37, 6)).astype(np.float32))
    results = {m: layer.gateloop_mh(params, x, config=config, method=m) for m in ("auto", "native", "associative")}
    assert len(calls) == (2 if d_value >= native.GMH_MIN_VALUE_WIDTH else 0)
    for m in ("auto", "native"):
        for got, want in zip((results[m][0], results[m][1].h), (results["associative"][0],
                                                                 results["associative"][1].h)):
            got, want = np.asarray(arrays.to_numpy(got)), np.asarray(arrays.to_numpy(want))
            _close(got, want.astype(np.complex128 if want.dtype.kind == "c" else np.float64), got.dtype.name,
                   f"{framework} {m}")


def test_backward_keeps_one_state_per_chunk_not_every_state():
    """The training step's saved tensors: the layer's inputs and one ``(K, V)`` state per 32 steps, never the
    ``(B, T, H, K, V)`` states (or ``k ⊗ v``) the parallel path keeps."""
    torch = pytest.importorskip("torch")
    from linrec.backends.torch.gateloop_mh import GateLoopMH

    module = GateLoopMH(16, 2, 8, 8)
    x = torch.randn(1, 128, 16)
    all_states = 128 * 2 * 8 * 8

    def biggest(method):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            y, _ = module(x, method=method)
        y.pow(2).sum().backward()
        return max(sizes)

    assert biggest("associative") >= all_states
    assert biggest("auto") <= all_states // 8


@pytest.mark.parametrize("types", [t for t in TYPES if t[1]], ids=lambda t: "-".join(str(x) for x in t))
def test_real_output_is_the_real_part_with_its_gradients(types):
    """``real_output=True`` (the layer's ``complex_output="real"``) writes ``Re(o)``, and its real cotangent gives the
    gradients of the complex output's with a zero imaginary cotangent; in the kernel and both autodiff bindings."""
    real = types[0]
    q, k, v, a, s0, go, gs = _problem(*types, (2, 45, 3, 3, 8), seed=7)
    o, final, ck = native.gateloop_mh_scan(q, k, v, a, s0)
    o_re, final_re, ck_re = native.gateloop_mh_scan(q, k, v, a, s0, real_output=True)
    assert o_re.dtype == np.dtype(real)
    np.testing.assert_array_equal(o_re, o.real)
    np.testing.assert_array_equal(final_re, final)
    np.testing.assert_array_equal(ck_re, ck)
    want = native.gateloop_mh_scan_vjp(q, k, v, a, ck, go.real.astype(go.dtype), gs)
    got = native.gateloop_mh_scan_vjp(q, k, v, a, ck, go.real.copy(), gs)
    for name, g, w in zip(("q", "k", "v", "a", "s0"), got, want):
        np.testing.assert_array_equal(g, w, err_msg=name)
    _, _, grads_ref = _reference(q, k, v, a, s0, go.real.astype(go.dtype), gs)
    torch = pytest.importorskip("torch")
    from linrec.backends.torch.native_gateloop_mh import native_gateloop_mh as torch_fused

    inputs = [torch.from_numpy(x).requires_grad_(True) for x in (q, k, v, a, s0)]
    o_t, final_t = torch_fused(*inputs[:3], inputs[3][..., None], inputs[4], real_output=True)
    assert not o_t.is_complex()
    loss = (o_t * torch.from_numpy(go.real.copy())).sum() + (final_t * torch.from_numpy(gs).conj()).real.sum()
    for name, g, ref in zip(("q", "k", "v", "a", "s0"), torch.autograd.grad(loss, inputs), grads_ref):
        _close(g.numpy(), ref, real, f"torch {name}_bar", grad=True)
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from linrec.backends.jax.native_gateloop_mh import native_gateloop_mh as jax_fused

    with jax.enable_x64(real == "float64"):
        args = [jnp.asarray(x) for x in (q, k, v, a[..., None], s0)]

        def jloss(*args):
            o, final = jax_fused(*args, real_output=True)
            return jnp.vdot(jnp.asarray(go.real), o) + jnp.real(jnp.vdot(jnp.asarray(gs), final))

        grads = jax.grad(jloss, argnums=(0, 1, 2, 3, 4))(*args)
    for name, g, ref in zip(("q", "k", "v", "a", "s0"), grads, grads_ref):
        g = np.asarray(g)[..., 0] if name == "a" else np.asarray(g)
        _close(np.conj(g) if np.iscomplexobj(g) else g, ref, real, f"jax {name}_bar", grad=True)
