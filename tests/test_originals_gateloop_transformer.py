"""lucidrains gateloop-transformer against linrec's ``gateloop_mh``: import, export back, round trips, refusals.

The original package (PyPI ``gateloop-transformer``) builds the layers with several option combinations; their
``state_dict`` is saved with ``torch.save`` the way its users save it, imported through ``linrec convert``, and the
outputs (and ``SimpleGateLoopLayer``'s carried state, the one cache the original exposes) are compared in numpy,
jax and torch within the spec tolerance (``gateloop_mh.md`` §8: ``tolerance_for(dtype, grad=True)``).
"""

from __future__ import annotations

import numpy as np
import pytest

from linrec.spec.tolerances import tolerance_for
from linrec.tools import convert, originals
from linrec.tools.convert import CheckpointError, convert_main

gtl = pytest.importorskip("gateloop_transformer.gateloop_transformer")
sgl = pytest.importorskip("gateloop_transformer.simplified_gate_loop")
torch = pytest.importorskip("torch")

TOL = tolerance_for("float32", grad=True)


def _close(got, want, what: str) -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=TOL.rtol, atol=TOL.atol, err_msg=what)


def _perturb(module, seed: int) -> None:
    """Move every parameter off its initial value (norm gains and biases too), so each one is tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def _run_linrec(path, x: np.ndarray, state=None):
    """``{backend: (y, final state h)}`` for the checkpoint at ``path`` in numpy, jax and torch."""
    from linrec.backends.numpy.gateloop_mh import gateloop_mh
    from linrec.spec.state import State

    out = {}
    config, params = convert.load(path, "numpy")
    y, s = gateloop_mh(params, x, config=config, initial_state=None if state is None else State(state))
    out["numpy"] = (y, s.h)
    module = convert.load(path, "jax")
    y, s = module(x, None if state is None else State(state))
    out["jax"] = (np.asarray(y), np.asarray(s.h))
    module = convert.load(path, "torch")
    with torch.no_grad():
        y, s = module(torch.as_tensor(x), None if state is None else State(torch.as_tensor(state)))
    out["torch"] = (y.numpy(), s.h.numpy())
    return out


# --- GateLoopedAttention ---------------------------------------------------------------------------------------

ATTENTION_OPTIONS = [
    dict(dim=6),  # per-channel heads (heads = dim_inner = dim), swish gating, to_out
    dict(dim=6, heads=2, sub_ln=True),  # 3×3 state per head, sub-LayerNorm
    dict(dim=6, heads=3, dim_inner=9, add_swish_gating=False),  # to_out from dim_inner != dim
    dict(dim=4, add_swish_gating=False),  # no gating, no to_out (identity)
    dict(dim=4, heads=2, dim_inner=8, sub_ln=True, add_swish_gating=True),
]


@pytest.mark.parametrize("options", ATTENTION_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_gatelooped_attention_import_export(options, tmp_path):
    torch.manual_seed(0)
    layer = gtl.GateLoopedAttention(**options).eval()
    _perturb(layer, 1)
    torch.save(layer.state_dict(), tmp_path / "gla.pt")
    x = torch.randn(2, 11, options["dim"])
    with torch.no_grad():
        want = layer(x).numpy()
    dst = tmp_path / "gla.safetensors"
    assert convert_main([str(tmp_path / "gla.pt"), str(dst), "--from", "gateloop-transformer"]) == 0
    ckpt = convert.read(dst)
    cfg = ckpt.config
    heads = options.get("heads") or options.get("dim_inner", options["dim"])
    assert (ckpt.model_type, cfg.gate, cfg.gate_parametrization, cfg.num_heads) == (
        "gateloop_mh", "complex", "cartesian", heads)
    assert cfg.sub_norm == ("layernorm" if options.get("sub_ln") else "none")
    assert cfg.output_gate == ("silu" if options.get("add_swish_gating", True) else "none")
    for backend, (y, _) in _run_linrec(dst, x.numpy()).items():
        _close(y, want, backend)

    # export back: loads into the original (strict) and gives the same outputs; numbers bit-exact
    out = tmp_path / "back.pt"
    assert convert_main([str(dst), str(out), "--to", "gateloop-transformer"]) == 0
    state = torch.load(out)
    fresh = gtl.GateLoopedAttention(**options).eval()
    fresh.load_state_dict(state, strict=True)
    for name, value in layer.state_dict().items():
        assert torch.equal(state[name], value), name
    with torch.no_grad():
        np.testing.assert_array_equal(fresh(x).numpy(), want)


def test_gatelooped_attention_state_matches_the_original_operator(tmp_path):
    """The carried state ``S_T`` equals the original's scanned ``kv`` at the last step (its operator's internals,
    the layer exposes no cache)."""
    torch.manual_seed(1)
    layer = gtl.GateLoopedAttention(6, heads=2, sub_ln=True).eval()
    _perturb(layer, 2)
    torch.save(layer.state_dict(), tmp_path / "gla.pt")
    x = torch.randn(2, 7, 6)
    with torch.no_grad():  # the original's forward up to the scan, spelled out from its source
        _, k, v = layer.to_qkv(x).chunk(3, dim=-1)
        k, v = layer.split_heads(k), layer.split_heads(v)
        a = torch.view_as_complex(layer.to_a(x).contiguous())
        a = torch.polar(a.abs().sigmoid(), a.angle())
        kv = torch.einsum("bnd,bne->bnde", k, v) + 0j
        s = torch.zeros_like(kv[:, 0])
        for t in range(kv.shape[1]):
            s = a[:, t] * s + kv[:, t]
        want = s.reshape(2, 2, 3, 3).numpy()
    ckpt = convert.read(tmp_path / "gla.pt", format="gateloop-transformer")
    convert.write(ckpt, tmp_path / "gla.safetensors")
    for backend, (_, h) in _run_linrec(tmp_path / "gla.safetensors", x.numpy()).items():
        _close(h, want, backend)


# --- SimpleGateLoopLayer ---------------------------------------------------------------------------------------

SIMPLE_OPTIONS = [dict(prenorm=True), dict(prenorm=False), dict(prenorm=True, post_ln=True),
                  dict(prenorm=False, post_ln=True)]


@pytest.mark.parametrize("options", SIMPLE_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_simple_gateloop_import_export_with_states(options, tmp_path):
    dim = 5
    torch.manual_seed(2)
    layer = sgl.SimpleGateLoopLayer(dim, **options).eval()
    _perturb(layer, 3)
    torch.save(layer.state_dict(), tmp_path / "sgl.pt")
    x = torch.randn(2, 9, dim)
    with torch.no_grad():
        want, (_, cache_kv) = layer(x, return_cache=True)
    ckpt = convert.read(tmp_path / "sgl.pt", format="gateloop-transformer")
    assert ckpt.config.input_norm == ("rms" if options["prenorm"] else "none")
    assert ckpt.config.sub_norm == ("layernorm" if options.get("post_ln") else "none")
    assert not any("must be applied" in n for n in ckpt.notes)  # no manual step
    dst = tmp_path / "sgl.safetensors"
    convert.write(ckpt, dst)
    want_state = cache_kv.reshape(2, dim, 1, 1).numpy()  # its cache: ((b d), 1) -> (B, H=dim, 1, 1)
    for backend, (y, h) in _run_linrec(dst, x.numpy()).items():
        _close(y, want.numpy(), backend)
        _close(h, want_state, f"{backend} state")

    # carried state in: continue from the original's cache (split invariance across the two implementations)
    x2 = torch.randn(2, 4, dim)
    with torch.no_grad():
        want2 = layer(x2, cache=(torch.ones_like(cache_kv), cache_kv))
    for backend, (y, _) in _run_linrec(dst, x2.numpy(), state=want_state).items():
        _close(y, want2.numpy(), f"{backend} continued")

    # export back: γ = 1 and the folded kernels; strict load, equal outputs
    back = originals.export_tensors("gateloop-transformer", ckpt)
    fresh = sgl.SimpleGateLoopLayer(dim, **options).eval()
    fresh.load_state_dict({k: torch.as_tensor(v) for k, v in back.items()}, strict=True)
    if options["prenorm"]:
        assert np.array_equal(back["norm.gamma"], np.ones(dim, np.float32))
    else:
        assert np.array_equal(back["to_qkva.0.weight"], layer.state_dict()["to_qkva.0.weight"].numpy())
    with torch.no_grad():
        _close(fresh(x).numpy(), want.numpy(), "exported")
    # and the exported file imports to the same linrec parameters, bit for bit
    again = originals.import_tensors("gateloop-transformer", back)
    for name, value in ckpt.params.items():
        assert np.array_equal(again.params[name], value), name


# --- refusals ---------------------------------------------------------------------------------------------------


def _mh(**fields):
    from linrec.spec.gateloop_mh import GateLoopMHConfig, init_params
    from linrec.tools.convert import Checkpoint

    cfg = GateLoopMHConfig(**fields)
    return Checkpoint("gateloop_mh", cfg, init_params(cfg, 0))


@pytest.mark.parametrize("fields, option", [
    (dict(d_model=4, gate="complex"), "gate_parametrization='mag_phase'"),
    (dict(d_model=4, num_heads=2, gate="complex", gate_parametrization="cartesian"), "gate_granularity='key'"),
    (dict(d_model=4, num_heads=2, gate="complex", gate_parametrization="cartesian", gate_granularity="head",
          complex_output="complex"), "complex_output='complex'"),
    (dict(d_model=4, num_heads=2, gate="complex", gate_parametrization="cartesian", gate_granularity="head",
          qkv_bias=True), "qkv_bias=True"),
    (dict(d_model=4, num_heads=2, gate="complex", gate_parametrization="cartesian", gate_granularity="head",
          input_norm="rms"), "input_norm='rms'"),
    (dict(d_model=4, num_heads=2, d_key=3, gate="complex", gate_parametrization="cartesian", gate_granularity="head"),
     "d_key/d_value"),
    (dict(d_model=4, num_heads=2), "num_heads/d_key/d_value"),
    (dict(d_model=4, num_heads=4, qkv_bias=False), "qkv_bias=False"),
    (dict(d_model=4, num_heads=4, qkv_bias=True, output_gate="silu"), "output_gate='silu'"),
    (dict(d_model=4, num_heads=4, qkv_bias=True), "v_proj.kernel"),  # a general linrec v projection
])
def test_export_refuses_options_the_original_lacks(fields, option, tmp_path):
    ckpt = _mh(**fields)
    with pytest.raises(CheckpointError, match=option.replace("(", r"\(").replace(")", r"\)")):
        originals.export_tensors("gateloop-transformer", ckpt)
    with pytest.raises(CheckpointError, match="gateloop-transformer export"):
        convert.write(ckpt, tmp_path / "x.pt", format="gateloop-transformer")
    assert not (tmp_path / "x.pt").exists()


def test_export_refuses_nonzero_out_bias_and_non_identity_out():
    ckpt = _mh(d_model=4, num_heads=2, gate="complex", gate_parametrization="cartesian", gate_granularity="head",
               output_gate="silu")
    ckpt.params["out_proj.bias"] = ckpt.params["out_proj.bias"] + 1
    with pytest.raises(CheckpointError, match=r"out_proj\.bias"):
        originals.export_tensors("gateloop-transformer", ckpt)
    ckpt = _mh(d_model=4, num_heads=2, gate="complex", gate_parametrization="cartesian", gate_granularity="head")
    with pytest.raises(CheckpointError, match=r"out_proj\.kernel.*identity"):  # dim_inner == dim, no gating: no to_out
        originals.export_tensors("gateloop-transformer", ckpt)


def test_import_refusals(tmp_path):
    layer = sgl.SimpleGateLoopLayer(4)
    with pytest.raises(CheckpointError, match="reverse=True"):
        originals.import_tensors("gateloop-transformer", {k: v.numpy() for k, v in layer.state_dict().items()},
                                 config={"reverse": True})
    lm = gtl.Transformer(8, num_tokens=11, depth=1)  # the whole LM imports as gateloop_mh_lm, not as a layer
    with pytest.raises(CheckpointError, match="gateloop_mh_lm"):
        originals.import_tensors("gateloop-transformer", {k: v.numpy() for k, v in lm.state_dict().items()},
                                 model="gateloop_mh")
    with pytest.raises(CheckpointError, match="neither a SimpleGateLoopLayer"):
        originals.import_tensors("gateloop-transformer", {"w": np.zeros((2, 2), np.float32)})
    attn = {k: v.numpy() for k, v in gtl.GateLoopedAttention(4, heads=2).state_dict().items()}
    with pytest.raises(CheckpointError, match=r"to_a\.0\.weight"):
        originals.import_tensors("gateloop-transformer", {**attn, "to_a.0.weight": attn["to_a.0.weight"][:3]})
    with pytest.raises(CheckpointError, match="to_out"):
        originals.import_tensors("gateloop-transformer", {k: v for k, v in attn.items() if k != "to_out.weight"})


def test_config_accepts_the_originals_constructor_arguments():
    attn = {k: v.numpy() for k, v in gtl.GateLoopedAttention(4, heads=2, sub_ln=True).state_dict().items()}
    given = dict(dim=4, heads=2, dim_inner=4, sub_ln=True, add_swish_gating=True, frac_gradient_state_transition=0.5,
                 checkpoint_gate_looped_attn=False, chunk_size=8)
    ckpt = originals.import_tensors("gateloop-transformer", attn, config=given)
    assert (ckpt.config.num_heads, ckpt.config.chunk_size) == (2, 8)  # linrec fields pass through
    with pytest.raises(CheckpointError, match="heads=3 contradicts"):
        originals.import_tensors("gateloop-transformer", attn, config={"heads": 3})
    simple = {k: v.numpy() for k, v in sgl.SimpleGateLoopLayer(4, post_ln=True).state_dict().items()}
    ckpt = originals.import_tensors("gateloop-transformer", simple,
                                    config=dict(dim=4, prenorm=True, post_ln=True, use_heinsen=True, reverse=False))
    assert (ckpt.config.input_norm, ckpt.config.sub_norm) == ("rms", "layernorm")
    with pytest.raises(CheckpointError, match="prenorm=False contradicts"):
        originals.import_tensors("gateloop-transformer", simple, config={"prenorm": False})


def test_registry_entry():
    assert "gateloop-transformer" in originals.exportable()
    md = originals.markdown()
    assert "GateLoopedAttention" in md and "to_a.0.weight" in md
