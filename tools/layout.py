"""The canonical parameter layout: one declarative table per layer and model, and the generic transforms.

Every linrec layer and model stores its parameters under *canonical names* (flat, dotted; dense layers as
``<name>.kernel (in, out)`` + ``<name>.bias``). The tables below say, for every canonical name, where the
same numbers live in the Flax NNX module (``nnx.state`` path, joined with ``.``) and in the PyTorch module
(``state_dict`` key), and how they are transformed on the way (``transpose``: ``nn.Linear.weight`` is the
kernel transposed). A row may hold the placeholder ``{l}`` (a layer index); ``shape`` and ``when`` are
Python expressions over the config's fields (``when`` says whether the row exists for that config,
``repeat`` gives the range of ``{l}``).

Nothing here imports a framework: the converters in ``linrec.tools.convert`` use these tables with NumPy
arrays, and the tests check the tables against the modules' real parameter names and against
``param_shapes(config)`` for every option set.

``python -m linrec.tools.layout > spec/layout.md`` regenerates the spec page from the tables.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import import_module
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "LAYOUTS",
    "TRANSFORMS",
    "Layout",
    "LayoutError",
    "Row",
    "config_from_dict",
    "config_to_dict",
    "expand",
    "expected_shapes",
    "from_names",
    "get_layout",
    "markdown",
    "match",
    "model_names",
    "to_names",
]


class LayoutError(ValueError):
    """Parameters that do not fit a layout (unknown names, missing or misshapen tensors, unknown model type)."""


# --- transforms ------------------------------------------------------------------------------------------


def _transpose(a: np.ndarray) -> np.ndarray:
    if np.ndim(a) != 2:
        raise LayoutError(f"transpose needs a 2-D array, got shape {np.shape(a)}")
    return np.ascontiguousarray(np.asarray(a).T)


def _identity(a: np.ndarray) -> np.ndarray:
    return np.asarray(a)


#: name -> (canonical -> target, target -> canonical, description). Every transform only moves numbers
#: (no arithmetic), so round trips are bit-exact in every dtype.
TRANSFORMS: dict[str, tuple[Callable, Callable, str]] = {
    "identity": (_identity, _identity, "same array"),
    "transpose": (_transpose, _transpose, "2-D transpose: torch `nn.Linear.weight (out, in)` = kernelᵀ"),
}


# --- the table types -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One parameter: canonical name, its shape, where it lives in each backend, and the transform.

    ``torch_transform`` maps the canonical array to the torch tensor (and back, all transforms being their own
    inverse here); Flax NNX modules store every parameter in the canonical layout. ``flax_stack`` names a
    placeholder that the Flax module *stacks* on a leading axis instead of naming it (a ``nnx.vmap``-built
    stack of blocks: canonical ``layers.{l}.w`` for every ``l`` is ``layers.w[l]``); ``torch_stack`` the same
    for torch.
    """

    canonical: str
    shape: str
    flax: str
    torch: str
    torch_transform: str = "identity"
    when: str = "True"
    meaning: str = ""
    flax_stack: str = ""
    torch_stack: str = ""

    def __post_init__(self) -> None:
        if self.torch_transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.torch_transform!r}; known: {sorted(TRANSFORMS)}")
        names = set(_PLACEHOLDER.findall(self.canonical))
        for side, stack in (("flax", self.flax_stack), ("torch", self.torch_stack)):
            have = set(_PLACEHOLDER.findall(getattr(self, side))) | ({stack} if stack else set())
            if have != names:
                raise ValueError(f"row {self.canonical!r}: the {side} name {getattr(self, side)!r} (stacking "
                                 f"{stack or 'nothing'}) does not account for the placeholders {sorted(names)}")

    def stack(self, side: str) -> str:
        return {"flax": self.flax_stack, "torch": self.torch_stack}.get(side, "")


def dense(canonical: str, d_in: str, d_out: str, *, bias: str | bool = True, flax: str | None = None,
          torch: str | None = None, when: str = "True", meaning: str = "", flax_stack: str = "",
          torch_stack: str = "") -> tuple[Row, ...]:
    """The rows of one dense layer: ``<name>.kernel (d_in, d_out)`` and, if ``bias``, ``<name>.bias (d_out,)``.

    ``bias`` is ``True``, ``False`` or an expression over the config. Flax keeps the kernel as is
    (``nnx.Linear.kernel``); torch stores its transpose (``nn.Linear.weight``).
    """
    flax = canonical if flax is None else flax
    torch = canonical if torch is None else torch
    stacks = dict(flax_stack=flax_stack, torch_stack=torch_stack)
    rows = [Row(f"{canonical}.kernel", f"({d_in}, {d_out})", f"{flax}.kernel", f"{torch}.weight", "transpose",
                when, meaning, **stacks)]
    if bias is not False:
        cond = when if bias is True else _and(when, bias)
        rows.append(Row(f"{canonical}.bias", f"({d_out},)", f"{flax}.bias", f"{torch}.bias", "identity", cond,
                        f"bias of {canonical}", **stacks))
    return tuple(rows)


def prefixed(rows: Iterable[Row], canonical: str, flax: str | None = None, torch: str | None = None,
             *, shape_of: str = "", when: str = "True", flax_stack: str = "", torch_stack: str = "") -> tuple[Row, ...]:
    """Nest a layer's table in a model: prefix its three names, and evaluate its expressions on ``shape_of``.

    ``shape_of`` is the attribute path of the layer's config inside the model's config (``"layer"`` makes
    ``d_h`` mean ``layer.d_h``); ``when`` is ANDed with each row's own condition (both evaluated on the model);
    ``flax_stack``/``torch_stack`` mark a placeholder of the prefix as stacked on that side (see :class:`Row`).
    """
    flax = canonical if flax is None else flax
    torch = canonical if torch is None else torch
    out = []
    for r in rows:
        out.append(dataclasses.replace(
            r,
            canonical=canonical + r.canonical, flax=flax + r.flax, torch=torch + r.torch,
            shape=_scoped(r.shape, shape_of), when=_and(when, _scoped(r.when, shape_of)),
            flax_stack=r.flax_stack or flax_stack, torch_stack=r.torch_stack or torch_stack,
        ))
    return tuple(out)


def _and(a: str, b: str) -> str:
    """The condition ``a and b`` as an expression (``"True"`` is the neutral element)."""
    if a == "True" or a == b:
        return b
    if b == "True":
        return a
    return f"({a}) and ({b})"


_IDENT = re.compile(r"(?<![.\w])([A-Za-z_]\w*)")
_KEYWORDS = {"and", "or", "not", "True", "False", "None", "if", "else", "in", "is", "int", "len", "max", "min"}


def _scoped(expr: str, scope: str) -> str:
    """Prefix every free name of ``expr`` with ``scope.`` (``"(d_in, d_h)"`` -> ``"(layer.d_in, layer.d_h)"``)."""
    if not scope:
        return expr
    # string literals ('complex') are left alone: only the code between them is scoped
    parts = re.split(r"""('[^']*'|"[^"]*")""", expr)
    return "".join(part if i % 2 else _IDENT.sub(
        lambda m: m.group(1) if m.group(1) in _KEYWORDS else f"{scope}.{m.group(1)}", part)
        for i, part in enumerate(parts))


@dataclass(frozen=True)
class Layout:
    """The table of one layer or model type.

    Attributes:
      model: the model type name (``linrec convert --model``, safetensors metadata ``model_type``).
      title: a one-line description for the spec page.
      spec: the framework-neutral module (``param_shapes``, ``init_params``, the config class).
      config: the config class name in ``spec``.
      jax: ``module:Class`` of the Flax NNX module; ``torch``: the same for the ``nn.Module``.
      rows: the table.
      repeat: placeholder -> expression over the config giving its range (``{"l": "n_layers"}``).
      infer: ``(canonical shapes, config fields the user gave) -> the config fields the shapes determine``
        (the other fields come from the user or the config defaults).
      torch_ignore: regexes of torch ``state_dict`` keys that are not parameters (e.g. non-persistent tables
        recomputed from the config); they are dropped when reading and never written.
    """

    model: str
    title: str
    spec: str
    config: str
    jax: str
    torch: str
    rows: tuple[Row, ...]
    repeat: Mapping[str, str] = field(default_factory=dict)
    infer: Callable[[Mapping[str, tuple[int, ...]], Mapping[str, Any]], dict] | None = None
    torch_ignore: tuple[str, ...] = ()
    flax_ignore: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    @property
    def spec_module(self) -> ModuleType:
        return import_module(self.spec)

    @property
    def config_class(self) -> type:
        return getattr(self.spec_module, self.config)

    def module_class(self, backend: str) -> type:
        path = {"jax": self.jax, "torch": self.torch}[backend]
        mod, _, name = path.partition(":")
        return getattr(import_module(mod), name)


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


# --- expressions over a config -----------------------------------------------------------------------------


class _Namespace(dict):
    """Config fields and properties (``n_blocks``, ``d_out``, ...) as names for ``eval``."""

    def __init__(self, config: Any, extra: Mapping[str, Any] | None = None):
        super().__init__()
        for name in dir(config):
            if not name.startswith("_"):
                self[name] = getattr(config, name)
        self.update(extra or {})
        self.update({"int": int, "len": len, "max": max, "min": min})


def _eval(expr: str, config: Any, extra: Mapping[str, Any] | None = None) -> Any:
    # the expressions are this module's own table entries, never user input
    return eval(expr, {"__builtins__": {}}, _Namespace(config, extra))


# --- tables --------------------------------------------------------------------------------------------------
# Layers. Their NNX modules and nn.Modules name their submodules after the canonical prefixes.

GATED_LINEAR_RNN_ROWS: tuple[Row, ...] = (
    *dense("proj", "d_in", "n_blocks * d_h",
           meaning="fused input projection, column blocks [input | i | o] (tied) or [input | i | f | o] (untied)"),
    *dense("out_proj", "d_h", "d_model", meaning="output projection H -> D"),
    *dense("recurrent_proj", "d_h", "n_blocks * d_h", bias=False, when="use_true_recurrence",
           meaning="true recurrence h_{t-1} -> pre-activations (no bias)"),
)

MINRNN_ROWS = {
    n: (
        *dense("proj", "d_model", f"{n} * d_inner", bias="bias",
               meaning="fused input projection, column blocks " + ("[z | h̃]" if n == 2 else "[f | i | h̃]")),
        *dense("out_proj", "d_inner", "d_model", bias=False, when="out_proj", meaning="output projection H -> D"),
    )
    for n in (2, 3)
}

GATELOOP_MH_ROWS: tuple[Row, ...] = (
    *dense("q_proj", "d_model", "num_heads * d_key", bias="qkv_bias", meaning="queries, heads-major (H, K)"),
    *dense("k_proj", "d_model", "num_heads * d_key", bias="qkv_bias", meaning="keys, heads-major (H, K)"),
    *dense("v_proj", "d_model", "num_heads * d_value", bias="qkv_bias", meaning="values, heads-major (H, V)"),
    *dense("a_proj", "d_model", "num_heads * gate_rows", when="gate == 'real'", meaning="real decay logits"),
    *dense("a_mag_proj", "d_model", "num_heads * gate_rows",
           when="gate == 'complex' and gate_parametrization == 'mag_phase'", meaning="complex decay: magnitude logits"),
    *dense("a_phase_proj", "d_model", "num_heads * gate_rows",
           when="gate == 'complex' and gate_parametrization == 'mag_phase'", meaning="complex decay: phase"),
    *dense("a_re_proj", "d_model", "num_heads * gate_rows",
           when="gate == 'complex' and gate_parametrization == 'cartesian'",
           meaning="complex decay logit z: real part (a = σ(|z|)·z/|z|)"),
    *dense("a_im_proj", "d_model", "num_heads * gate_rows",
           when="gate == 'complex' and gate_parametrization == 'cartesian'",
           meaning="complex decay logit z: imaginary part"),
    Row("sub_norm.scale", "(num_heads * d_value,)", "sub_norm.scale", "sub_norm.weight", when="sub_norm == 'layernorm'",
        meaning="LayerNorm gain on the read-out"),
    Row("sub_norm.bias", "(num_heads * d_value,)", "sub_norm.bias", "sub_norm.bias", when="sub_norm == 'layernorm'",
        meaning="LayerNorm bias on the read-out"),
    *dense("output_gate_proj", "d_model", "num_heads * d_value", bias=False, when="output_gate != 'none'",
           meaning="output gate u ⊙ silu(x̃ W_g)"),
    *dense("out_proj", "num_heads * d_value", "d_model", meaning="output projection"),
)


def _infer_gated_linear_rnn(shapes: Mapping[str, tuple[int, ...]], given: Mapping[str, Any]) -> dict:
    d_in, width = _shape(shapes, "proj.kernel", 2)
    d_h, d_model = _shape(shapes, "out_proj.kernel", 2)
    if width % d_h or width // d_h not in (3, 4):
        raise LayoutError(f"proj.kernel has {width} columns, which is neither 3 (tied gates) nor 4 (untied) "
                          f"times d_h = {d_h} (from out_proj.kernel)")
    return dict(d_model=d_model, d_h=d_h, d_in=d_in, use_tied_gates=width // d_h == 3,
                use_true_recurrence="recurrent_proj.kernel" in shapes)


def _infer_minrnn(n_blocks: int) -> Callable:
    def infer(shapes: Mapping[str, tuple[int, ...]], given: Mapping[str, Any]) -> dict:
        d_model, width = _shape(shapes, "proj.kernel", 2)
        if width % n_blocks:
            raise LayoutError(f"proj.kernel has {width} columns, not a multiple of {n_blocks} blocks")
        out = dict(d_model=d_model, d_inner=width // n_blocks, bias="proj.bias" in shapes,
                   out_proj="out_proj.kernel" in shapes)
        if "expansion" in given:  # d_inner is determined by the shapes; expansion only ever derives it
            out["expansion"] = given["expansion"]
        return out

    return infer


def _infer_gateloop_mh(shapes: Mapping[str, tuple[int, ...]], given: Mapping[str, Any]) -> dict:
    d_model, hk = _shape(shapes, "q_proj.kernel", 2)
    _, hv = _shape(shapes, "v_proj.kernel", 2)
    cartesian = "a_re_proj.kernel" in shapes
    complex_gate = cartesian or "a_mag_proj.kernel" in shapes
    gate_name = "a_re_proj.kernel" if cartesian else "a_mag_proj.kernel" if complex_gate else "a_proj.kernel"
    _, hr = _shape(shapes, gate_name, 2)
    out = dict(d_model=d_model, gate="complex" if complex_gate else "real", qkv_bias="q_proj.bias" in shapes,
               gate_parametrization="cartesian" if cartesian else "mag_phase",
               sub_norm="layernorm" if "sub_norm.scale" in shapes else "none",
               output_gate="silu" if "output_gate_proj.kernel" in shapes else "none")
    if hr < hk:  # one gate per head (R = 1): the gate width is the number of heads
        heads, granularity = hr, "head"
    else:  # per-key gates: H·K = H·R, so the shapes cannot tell H from K
        heads, granularity = given.get("num_heads"), "key"
        if heads is None:
            raise LayoutError(
                f"gateloop_mh: the shapes give num_heads * d_key = {hk} but not num_heads itself (per-key gates); "
                "pass it in the config, e.g. --config '{\"num_heads\": 4}'")
    if not isinstance(heads, int) or heads < 1 or hk % heads or hv % heads:
        raise LayoutError(f"gateloop_mh: num_heads={heads!r} does not divide the query width {hk} and the value "
                          f"width {hv}")
    out.update(num_heads=heads, gate_granularity=granularity, d_key=hk // heads, d_value=hv // heads)
    return out


def _shape(shapes: Mapping[str, tuple[int, ...]], name: str, ndim: int) -> tuple[int, ...]:
    if name not in shapes:
        raise LayoutError(f"cannot infer the config: tensor {name!r} is missing")
    shape = tuple(shapes[name])
    if len(shape) != ndim:
        raise LayoutError(f"cannot infer the config: {name!r} has shape {shape}, expected {ndim} dimensions")
    return shape


_LAYER_LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "gated_linear_rnn", "GatedLinearRNN layer (Katsch; SISO, tied or untied gates, optional true recurrence)",
        "linrec.spec.gated_linear_rnn", "GatedLinearRNNConfig",
        "linrec.backends.jax.gated_linear_rnn:GatedLinearRNN", "linrec.backends.torch.gated_linear_rnn:GatedLinearRNN",
        GATED_LINEAR_RNN_ROWS, infer=_infer_gated_linear_rnn,
    ),
    Layout(
        "gateloop", "GateLoop layer (Katsch): the GatedLinearRNN layer plus `reversed`",
        "linrec.spec.gated_linear_rnn", "GateLoopConfig",
        "linrec.backends.jax.gated_linear_rnn:GateLoop", "linrec.backends.torch.gated_linear_rnn:GateLoop",
        GATED_LINEAR_RNN_ROWS, infer=_infer_gated_linear_rnn,
    ),
    Layout(
        "mingru", "minGRU layer (Feng et al. 2024)", "linrec.spec.mingru", "MinGRUConfig",
        "linrec.backends.jax.mingru:MinGRU", "linrec.backends.torch.mingru:MinGRU",
        MINRNN_ROWS[2], infer=_infer_minrnn(2),
    ),
    Layout(
        "minlstm", "minLSTM layer (Feng et al. 2024)", "linrec.spec.minlstm", "MinLSTMConfig",
        "linrec.backends.jax.minlstm:MinLSTM", "linrec.backends.torch.minlstm:MinLSTM",
        MINRNN_ROWS[3], infer=_infer_minrnn(3),
    ),
    Layout(
        "gateloop_mh", "multi-head outer-product GateLoop layer (matrix state per head)",
        "linrec.spec.gateloop_mh", "GateLoopMHConfig",
        "linrec.backends.jax.gateloop_mh:GateLoopMH", "linrec.backends.torch.gateloop_mh:GateLoopMH",
        GATELOOP_MH_ROWS, infer=_infer_gateloop_mh,
    ),
)

# Models. Layer tables nest under the model's prefixes (``prefixed``), so a layer's rows are written once.


def _embedding(canonical: str, shape: str, *, when: str = "True", meaning: str = "", flax_stack: str = "",
               flax: str | None = None) -> Row:
    """``nnx.Embed.embedding`` / ``nn.Embedding.weight``: the same ``(count, D)`` array."""
    return Row(f"{canonical}.embedding", shape, f"{flax or canonical}.embedding", f"{canonical}.weight",
               when=when, meaning=meaning, flax_stack=flax_stack)


def _norm(canonical: str, shape: str, *, bias: bool, when: str = "True", flax: str | None = None,
          flax_stack: str = "") -> tuple[Row, ...]:
    """Norm gain (+ bias): ``nnx.LayerNorm``/``nnx.RMSNorm`` ``scale``, ``nn.LayerNorm``/``nn.RMSNorm`` ``weight``."""
    flax = canonical if flax is None else flax
    rows = [Row(f"{canonical}.scale", shape, f"{flax}.scale", f"{canonical}.weight", when=when,
                meaning="norm gain", flax_stack=flax_stack)]
    if bias:
        rows.append(Row(f"{canonical}.bias", shape, f"{flax}.bias", f"{canonical}.bias", when=when,
                        meaning="norm bias", flax_stack=flax_stack))
    return tuple(rows)


_TM, _CM = "layers.{l}.time_mixing", "layers.{l}.channel_mixing"
GATED_LINEAR_RNN_LM_ROWS: tuple[Row, ...] = (
    _embedding("embed", "(input_vocab_size, d_model)", when="use_word_embedding", meaning="token embedding"),
    *dense("input_proj", "d_input", "d_model", when="not use_word_embedding", meaning="float input features -> D"),
    _embedding("pos_embed", "(max_seq_length, d_model)", when="positional_encoding_mode == 'learned'",
               meaning="learned positions"),
    *_norm(f"{_TM}.norm", "(d_model,)", bias=True),
    *prefixed(GATED_LINEAR_RNN_ROWS, f"{_TM}.rnn.", shape_of="layer_config"),
    *_norm(f"{_CM}.norm", "(d_model,)", bias=True),
    *dense(f"{_CM}.fc1", "d_model", "d_channel_mixing", meaning="channel mixing D -> C (then GELU)"),
    *dense(f"{_CM}.fc2", "d_channel_mixing", "d_model", meaning="channel mixing C -> D"),
    *dense("head", "d_model", "output_vocab_size", when="use_head", meaning="output head"),
)

_L = "layers.{l}"
MINGRU_LM_ROWS: tuple[Row, ...] = (
    _embedding("embed", "(vocab_size, d_model)", meaning="token embedding"),
    *prefixed(MINRNN_ROWS[2], f"{_L}.mingru.", "layers.mingru.", shape_of="mingru", flax_stack="l"),
    *dense(f"{_L}.glu", "d_inner", "2 * d_model", flax="layers.glu", flax_stack="l", when="block == 'glu'",
           meaning="GLU projection H -> 2D, columns [value | gate]"),
    *_norm(f"{_L}.norm", "(d_model,)", bias=False, flax="layers.norm", flax_stack="l", when="block == 'prenorm'"),
    *_norm(f"{_L}.ff_norm", "(d_model,)", bias=False, flax="layers.ff_norm", flax_stack="l",
           when="block == 'prenorm'"),
    *dense(f"{_L}.ff.fc1", "d_model", "d_ff", flax="layers.ff.fc1", flax_stack="l", when="block == 'prenorm'",
           meaning="feed-forward D -> F (then exact GELU)"),
    *dense(f"{_L}.ff.fc2", "d_ff", "d_model", flax="layers.ff.fc2", flax_stack="l", when="block == 'prenorm'",
           meaning="feed-forward F -> D"),
    *_norm("final_norm", "(d_model,)", bias=False, when="block == 'prenorm'"),
    *dense("head", "d_model", "vocab_size", bias="head_bias", meaning="output head"),
)

MINGRU_STACK_ROWS: tuple[Row, ...] = (
    *_norm(f"{_L}.norm", "(layer_input_size(l),)", bias=True, when="norm"),
    *prefixed(MINRNN_ROWS[2], f"{_L}.mingru.", shape_of="layer_config(l)"),
    *dense(f"{_L}.res_align", "layer_input_size(l)", "hidden_sizes[l]", bias="residual_align_bias",
           when="has_align(l)", meaning="residual projection in_l -> H_l (`residual_align`: where they differ, "
           "or layer 0 only)"),
)


def _count(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> int:
    found = [int(m.group(1)) for k in shapes if (m := re.fullmatch(pattern, k))]
    return max(found) + 1 if found else 0


def _sub(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    return {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}


def _ratio(whole: int, part: int) -> float:
    """A float ``e`` with ``int(part * e) == whole`` (widths stored as an expansion factor)."""
    import math

    e = whole / part
    while int(part * e) < whole:
        e = math.nextafter(e, math.inf)
    return e


def _infer_gated_linear_rnn_lm(shapes: Mapping[str, tuple[int, ...]], given: Mapping[str, Any]) -> dict:
    n_layer = _count(shapes, r"layers\.(\d+)\.time_mixing\.norm\.scale")
    if n_layer == 0:
        raise LayoutError("no 'layers.0.time_mixing.norm.scale': not a GatedLinearRNN LM")
    (d_model,) = _shape(shapes, "layers.0.time_mixing.norm.scale", 1)
    layer = _infer_gated_linear_rnn(_sub(shapes, "layers.0.time_mixing.rnn."), given)
    out = dict(n_layer=n_layer, d_model=d_model, d_h=layer["d_h"], use_tied_gates=layer["use_tied_gates"],
               use_true_recurrence=layer["use_true_recurrence"],
               d_channel_mixing=_shape(shapes, "layers.0.channel_mixing.fc1.kernel", 2)[1])
    if "embed.embedding" in shapes:
        out.update(use_word_embedding=True, input_vocab_size=_shape(shapes, "embed.embedding", 2)[0])
    else:
        out.update(use_word_embedding=False, d_input=_shape(shapes, "input_proj.kernel", 2)[0])
    if "pos_embed.embedding" in shapes:
        out.update(positional_encoding_mode="learned", max_seq_length=shapes["pos_embed.embedding"][0])
    if "head.kernel" in shapes:
        out.update(use_head=True, output_vocab_size=_shape(shapes, "head.kernel", 2)[1])
    else:
        out.update(use_head=False)
    return out


def _infer_mingru_lm(shapes: Mapping[str, tuple[int, ...]], given: Mapping[str, Any]) -> dict:
    vocab, d_model = _shape(shapes, "embed.embedding", 2)
    n_layers = _count(shapes, r"layers\.(\d+)\.mingru\.proj\.kernel")
    if n_layers == 0:
        raise LayoutError("no 'layers.0.mingru.proj.kernel': not a minGRU LM")
    d_inner = _shape(shapes, "layers.0.mingru.proj.kernel", 2)[1] // 2
    prenorm = "final_norm.scale" in shapes or "layers.0.norm.scale" in shapes
    out = dict(vocab_size=vocab, d_model=d_model, n_layers=n_layers, block="prenorm" if prenorm else "glu",
               expansion=_ratio(d_inner, d_model), mingru_bias="layers.0.mingru.proj.bias" in shapes,
               head_bias="head.bias" in shapes)
    if prenorm and "layers.0.ff.fc1.kernel" in shapes:
        out["ff_mult"] = _ratio(shapes["layers.0.ff.fc1.kernel"][1], d_model)
    return out


def _infer_mingru_stack(shapes: Mapping[str, tuple[int, ...]], given: Mapping[str, Any]) -> dict:
    n = _count(shapes, r"layers\.(\d+)\.mingru\.proj\.kernel")
    if n == 0:
        raise LayoutError("no 'layers.0.mingru.proj.kernel': not a minGRU stack")
    sizes = [_shape(shapes, f"layers.{l}.mingru.proj.kernel", 2) for l in range(n)]
    out = dict(input_size=sizes[0][0], hidden_sizes=tuple(w // 2 for _, w in sizes),
               bias="layers.0.mingru.proj.bias" in shapes, norm="layers.0.norm.scale" in shapes)
    if any(k.endswith(".res_align.kernel") for k in shapes):
        out["residual"] = True
        # an alignment where the widths match is v1.3's layer-0-only rule (the v1.4 rule never makes one)
        if "layers.0.res_align.kernel" in shapes and sizes[0][0] == sizes[0][1] // 2:
            out["residual_align"] = "first"
    if any(k.endswith(".res_align.bias") for k in shapes):
        out["residual_align_bias"] = True
    return out


_MODEL_LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "gated_linear_rnn_lm", "GatedLinearRNNLM (Katsch): embedding, pre-LayerNorm GatedLinearRNN time mixing and "
        "MLP channel mixing blocks, head", "linrec.spec.gated_linear_rnn_lm", "GatedLinearRNNLMConfig",
        "linrec.backends.jax.gated_linear_rnn_lm:GatedLinearRNNLM",
        "linrec.backends.torch.gated_linear_rnn_lm:GatedLinearRNNLM",
        GATED_LINEAR_RNN_LM_ROWS, repeat={"l": "n_layer"}, infer=_infer_gated_linear_rnn_lm,
        flax_ignore=(r"dropout_rngs\..*",),
    ),
    Layout(
        "gateloop_lm", "GateLoopLM (Katsch): the same model on the GateLoop layer",
        "linrec.spec.gated_linear_rnn_lm", "GateLoopLMConfig",
        "linrec.backends.jax.gated_linear_rnn_lm:GateLoopLM", "linrec.backends.torch.gated_linear_rnn_lm:GateLoopLM",
        GATED_LINEAR_RNN_LM_ROWS, repeat={"l": "n_layer"}, infer=_infer_gated_linear_rnn_lm,
        flax_ignore=(r"dropout_rngs\..*",),
    ),
    Layout(
        "mingru_lm", "minGRU language model: `glu` blocks (jkyl/nnx-gru) or `prenorm` blocks (lucidrains' minLM); "
        "the Flax module stacks the blocks (`nnx.vmap`), the torch module keeps an `nn.ModuleList`",
        "linrec.spec.mingru_lm", "MinGRULMConfig",
        "linrec.backends.jax.mingru_lm:MinGRULM", "linrec.backends.torch.mingru_lm:MinGRULM",
        MINGRU_LM_ROWS, repeat={"l": "n_layers"}, infer=_infer_mingru_lm,
    ),
    Layout(
        "mingru_stack", "a stack of minGRU layers with an `nn.GRU`-like interface (cheind/mingru)",
        "linrec.spec.mingru_stack", "MinGRUStackConfig",
        "linrec.backends.jax.mingru_stack:MinGRUStack", "linrec.backends.torch.mingru_stack:MinGRUStack",
        MINGRU_STACK_ROWS, repeat={"l": "num_layers"}, infer=_infer_mingru_stack,
    ),
)

# --- mingru_stack_lm: embedding -> minGRU stack -> head (the selective-copy model) ------------------------------
# Its config has the stack's fields and derived names, so the stack's rows apply unchanged under ``rnn.``.

MINGRU_STACK_LM_ROWS: tuple[Row, ...] = (
    _embedding("embed", "(vocab_size, input_size)", meaning="token embedding"),
    *prefixed(MINGRU_STACK_ROWS, "rnn."),
    *dense("head", "output_size", "vocab_size", meaning="output head H_{L-1} -> V"),
)


def _infer_mingru_stack_lm(shapes: Mapping[str, tuple[int, ...]], given: Mapping[str, Any]) -> dict:
    vocab, _ = _shape(shapes, "embed.embedding", 2)
    return dict(vocab_size=vocab, **_infer_mingru_stack(_sub(shapes, "rnn."), given))


_MODEL_LAYOUTS += (
    Layout(
        "mingru_stack_lm", "token model: embedding, a minGRU stack, a dense head (`linrec train selective-copy`'s "
        "`stack` model, cheind/mingru's selective-copy example)",
        "linrec.spec.mingru_stack_lm", "MinGRUStackLMConfig",
        "linrec.backends.jax.mingru_stack_lm:MinGRUStackLM", "linrec.backends.torch.mingru_stack_lm:MinGRUStackLM",
        MINGRU_STACK_LM_ROWS, repeat={"l": "num_layers"}, infer=_infer_mingru_stack_lm,
    ),
)

# --- gateloop_mh_lm: embedding -> [GateLoop, feed-forward] blocks -> head (gateloop-transformer's Transformer) ----

GATELOOP_MH_LM_ROWS: tuple[Row, ...] = (
    _embedding("embed", "(vocab_size, d_model)", meaning="token embedding"),
    Row(f"{_L}.norm.scale", "(d_model,)", f"{_L}.norm.scale", f"{_L}.norm.weight",
        meaning="time-mixing norm gain (RMSNorm γ, or LayerNorm with block='postnorm')"),
    Row(f"{_L}.norm.bias", "(d_model,)", f"{_L}.norm.bias", f"{_L}.norm.bias", when="block == 'postnorm'",
        meaning="time-mixing LayerNorm bias"),
    *prefixed(GATELOOP_MH_ROWS, f"{_L}.mixer.", shape_of="layer"),
    Row(f"{_L}.ff_norm.scale", "(d_model,)", f"{_L}.ff_norm.scale", f"{_L}.ff_norm.weight",
        meaning="feed-forward norm gain"),
    Row(f"{_L}.ff_norm.bias", "(d_model,)", f"{_L}.ff_norm.bias", f"{_L}.ff_norm.bias", when="block == 'postnorm'",
        meaning="feed-forward LayerNorm bias"),
    *dense(f"{_L}.ff.fc1", "d_model", "d_ff", meaning="feed-forward D -> F (then exact GELU)"),
    *dense(f"{_L}.ff.fc2", "d_ff", "d_model", meaning="feed-forward F -> D"),
    Row("final_norm.scale", "(d_model,)", "final_norm.scale", "final_norm.weight", when="block == 'prenorm'",
        meaning="final RMSNorm gain"),
    *dense("head", "d_model", "vocab_size", bias=False, meaning="output head D -> V (no bias)"),
)


def _infer_gateloop_mh_lm(shapes: Mapping[str, tuple[int, ...]], given: Mapping[str, Any]) -> dict:
    vocab, d_model = _shape(shapes, "embed.embedding", 2)
    n_layers = _count(shapes, r"layers\.(\d+)\.mixer\.q_proj\.kernel")
    if n_layers == 0:
        raise LayoutError("no 'layers.0.mixer.q_proj.kernel': not a GateLoop LM")
    _, d_inner = _shape(shapes, "layers.0.mixer.q_proj.kernel", 2)
    _, heads = _shape(shapes, "layers.0.mixer.a_re_proj.kernel", 2)  # one complex gate per head
    d_ff = _shape(shapes, "layers.0.ff.fc1.kernel", 2)[1]
    if d_ff % d_model:
        raise LayoutError(f"layers.0.ff.fc1.kernel has {d_ff} columns, not a multiple of d_model={d_model} (ff_mult)")
    return dict(vocab_size=vocab, d_model=d_model, n_layers=n_layers, num_heads=heads, d_inner=d_inner,
                ff_mult=d_ff // d_model, block="postnorm" if "layers.0.norm.bias" in shapes else "prenorm",
                output_gate="silu" if "layers.0.mixer.output_gate_proj.kernel" in shapes else "none",
                sub_norm="layernorm" if "layers.0.mixer.sub_norm.scale" in shapes else "none")


_MODEL_LAYOUTS += (
    Layout(
        "gateloop_mh_lm", "GateLoop language model (lucidrains' gateloop-transformer `Transformer`): embedding, "
        "pre-RMSNorm or post-LayerNorm blocks of multi-head GateLoop (complex cartesian gate per head) and a GELU "
        "feed-forward, final RMSNorm, head without bias",
        "linrec.spec.gateloop_mh_lm", "GateLoopMHLMConfig",
        "linrec.backends.jax.gateloop_mh_lm:GateLoopMHLM", "linrec.backends.torch.gateloop_mh_lm:GateLoopMHLM",
        GATELOOP_MH_LM_ROWS, repeat={"l": "n_layers"}, infer=_infer_gateloop_mh_lm,
    ),
)

#: Every table by model type, layers first.
LAYOUTS: dict[str, Layout] = {layout.model: layout for layout in (*_LAYER_LAYOUTS, *_MODEL_LAYOUTS)}


def model_names() -> list[str]:
    """Every model type the converters know, layers first."""
    return list(LAYOUTS)


def get_layout(model: str) -> Layout:
    """The table of ``model`` (also accepts ``-`` for ``_`` and the aliases)."""
    key = model.replace("-", "_")
    if key in LAYOUTS:
        return LAYOUTS[key]
    for layout in LAYOUTS.values():
        if key in layout.aliases:
            return layout
    raise LayoutError(f"unknown model type {model!r}; known: {', '.join(LAYOUTS)}")


# --- expanding a table for one config ------------------------------------------------------------------------


@dataclass(frozen=True)
class Concrete:
    """A row of a table for one config: every placeholder filled in, the shape evaluated."""

    canonical: str
    shape: tuple[int, ...]
    flax: str
    torch: str
    torch_transform: str


def _ranges(layout: Layout, config: Any) -> dict[str, range]:
    return {name: range(int(_eval(expr, config))) for name, expr in layout.repeat.items()}


def expand(layout: Layout, config: Any) -> list[Concrete]:
    """The rows of ``layout`` that exist for ``config``, with placeholders filled and shapes evaluated."""
    ranges = _ranges(layout, config)
    out = []
    for row in layout.rows:
        names = sorted(set(_PLACEHOLDER.findall(row.canonical)))
        combos: list[dict[str, int]] = [{}]
        for name in names:
            combos = [{**c, name: i} for c in combos for i in ranges[name]]
        for values in combos:
            if not _eval(row.when, config, values):
                continue
            shape = _eval(row.shape, config, values)
            out.append(Concrete(row.canonical.format(**values), tuple(int(s) for s in shape),
                                row.flax.format(**values), row.torch.format(**values), row.torch_transform))
    return out


def expected_shapes(layout: Layout, config: Any) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for ``config`` according to the table (tests check it equals ``param_shapes``)."""
    return {c.canonical: c.shape for c in expand(layout, config)}


# --- renaming between canonical names and backend names -------------------------------------------------


@cache
def _matchers(model: str, side: str) -> list[tuple[re.Pattern, Row]]:
    layout = get_layout(model)
    out = []
    for row in layout.rows:
        pattern = getattr(row, side)
        regex = re.escape(pattern)
        for name in set(_PLACEHOLDER.findall(pattern)):
            regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>0|[1-9][0-9]*)", 1)
        out.append((re.compile(regex + r"\Z"), row))
    return out


def match(model: str, side: str, name: str) -> tuple[Row, dict[str, str]] | None:
    """The row of ``model``'s table whose ``side`` name pattern matches ``name``, and the placeholder values."""
    for regex, row in _matchers(model, side):
        m = regex.match(name)
        if m:
            return row, m.groupdict()
    return None


def to_names(model: str, params: Mapping[str, np.ndarray], target: str) -> dict[str, np.ndarray]:
    """Canonical params -> ``target`` (``"flax"``: NNX state paths, ``"torch"``: ``state_dict`` keys).

    Stacked rows (``flax_stack``/``torch_stack``) gather the arrays of every index into one array; the
    indices must be ``0 .. n-1``. Raises ``LayoutError`` listing every name the table does not know.
    """
    if target not in ("flax", "torch"):
        raise ValueError(f"target must be 'flax' or 'torch', got {target!r}")
    out: dict[str, np.ndarray] = {}
    stacks: dict[str, dict[int, np.ndarray]] = {}
    unknown = []
    for name, value in params.items():
        hit = match(model, "canonical", name)
        if hit is None:
            unknown.append(name)
            continue
        row, groups = hit
        value = TRANSFORMS[row.torch_transform][0](value) if target == "torch" else np.asarray(value)
        stack = row.stack(target)
        if stack:
            index = int(groups.pop(stack))
            stacks.setdefault(getattr(row, target).format(**groups), {})[index] = value
        else:
            out[getattr(row, target).format(**groups)] = value
    if unknown:
        raise LayoutError(f"{model}: parameter(s) {sorted(unknown)} are not in the canonical table")
    for key, items in stacks.items():
        if sorted(items) != list(range(len(items))):
            raise LayoutError(f"{model}: {key} stacks layers {sorted(items)}; expected 0 .. {len(items) - 1}")
        shapes = {np.shape(v) for v in items.values()}
        if len(shapes) > 1:
            raise LayoutError(f"{model}: {key} cannot stack arrays of different shapes {sorted(shapes)}")
        out[key] = np.stack([items[i] for i in range(len(items))])
    return out


def from_names(model: str, tensors: Mapping[str, np.ndarray], source: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """``source`` names (``"flax"`` or ``"torch"``) -> canonical params, and the list of unknown names.

    Stacked entries are split along their leading axis. Keys the layout declares as non-parameters
    (``torch_ignore``/``flax_ignore``) are dropped silently.
    """
    if source not in ("flax", "torch"):
        raise ValueError(f"source must be 'flax' or 'torch', got {source!r}")
    layout = get_layout(model)
    ignore = [re.compile(p + r"\Z") for p in (layout.torch_ignore if source == "torch" else layout.flax_ignore)]
    out: dict[str, np.ndarray] = {}
    unknown = []
    for key, value in tensors.items():
        if any(p.match(key) for p in ignore):
            continue
        hit = match(model, source, key)
        if hit is None:
            unknown.append(key)
            continue
        row, groups = hit
        value = np.asarray(value)
        stack = row.stack(source)
        items = {None: value} if not stack else {i: value[i] for i in range(value.shape[0] if value.ndim else 0)}
        for index, item in items.items():
            names = groups if index is None else {**groups, stack: index}
            if source == "torch" and row.torch_transform == "transpose" and item.ndim != 2:
                out[row.canonical.format(**names)] = item  # left misshapen: the shape check reports it
            elif source == "torch":
                out[row.canonical.format(**names)] = TRANSFORMS[row.torch_transform][1](item)
            else:
                out[row.canonical.format(**names)] = item
    return out, unknown


# --- configs as JSON ----------------------------------------------------------------------------------------


def config_to_dict(config: Any) -> dict:
    """A config dataclass as a JSON-able dict (nested configs become nested dicts, tuples lists)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    return plain(config)


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Build ``cls`` from a dict made by :func:`config_to_dict` (nested config fields rebuilt by type hint).

    Raises ``LayoutError`` naming unknown fields; the config's own ``__post_init__`` checks the values.
    """
    if not isinstance(data, Mapping):
        raise LayoutError(f"a {cls.__name__} must be given as a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LayoutError(f"{cls.__name__} has no field(s) {unknown}; its fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]))
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_in(hints.get(name))
        if sub is not None and isinstance(value, Mapping):
            value = config_from_dict(sub, value)
        elif sub is not None and isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            value = tuple(config_from_dict(sub, v) for v in value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise LayoutError(f"cannot build {cls.__name__} from {dict(data)}: {err}") from None


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass inside a type hint (``X``, ``X | None``, ``tuple[X, ...]``), or ``None``."""
    if hint is None:
        return None
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    for arg in typing.get_args(hint):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


# --- the spec page --------------------------------------------------------------------------------------------

_HEADER = """# Canonical parameter layout (generated)

Status: normative. Generated by `python -m linrec.tools.layout > spec/layout.md` from the tables in
[`tools/layout.py`](../tools/layout.py) (`linrec.tools.layout`); `tests/test_convert.py` fails when this page
is out of date, when a table disagrees with `param_shapes(config)`, or when it disagrees with the parameter
names of the Flax NNX or PyTorch modules. Argument names, the carried `State` and padding follow the
Conventions of [recurrence.md §0](recurrence.md#0-conventions-every-layer-stack-and-model).

Every linrec layer and model has **canonical parameters**: a flat dict of dotted names. Dense layers are
`<name>.kernel` with shape `(in, out)` (so `y = x @ kernel + bias`) and `<name>.bias` with shape `(out,)`.
The Flax NNX modules store every parameter exactly as in the canonical dict (`nnx.state(module, nnx.Param)`
paths, joined with `.`, are the flax names below). The PyTorch modules use `nn.Linear`, whose `weight` is the
kernel transposed (`transpose`); `identity` means the same array. Transforms only move numbers, so every
conversion canonical ↔ flax ↔ torch is bit-exact in every dtype.

Columns: **canonical** name; **shape** as an expression over the config's fields; **flax** NNX state path;
**torch** `state_dict` key; **torch transform**; **exists when** (condition on the config). `{l}` is a layer
index, `0 ≤ l <` the range given under the table.

Files (`linrec convert`, `linrec.tools.convert`): `.safetensors` holds the canonical names and the metadata
`linrec_format` (`"1"`), `linrec_spec_version`, `linrec_version`, `model_type` and `config` (JSON of the config
dataclass); `.pt`/`.pth`/`.bin` a torch `state_dict` (read with `torch.load(weights_only=True)` only);
`.msgpack`/`.flax` the NNX state as a nested dict (`flax.serialization.msgpack_serialize`; a top-level
`params` key is accepted on reading).
"""


def _md_row(row: Row) -> str:
    when = "always" if row.when == "True" else f"`{row.when}`"
    flax = f"`{row.flax}`" + (f" (stacked over `{{{row.flax_stack}}}` on axis 0)" if row.flax_stack else "")
    torch = f"`{row.torch}`" + (f" (stacked over `{{{row.torch_stack}}}` on axis 0)" if row.torch_stack else "")
    return f"| `{row.canonical}` | `{row.shape}` | {flax} | {torch} | {row.torch_transform} | {when} |"


def markdown() -> str:
    """The spec page ``spec/layout.md`` (deterministic)."""
    parts = [_HEADER]
    seen: dict[tuple[Row, ...], str] = {}
    for layout in LAYOUTS.values():
        parts.append(f"## `{layout.model}`\n")
        parts.append(f"{layout.title}. Config `{layout.spec}.{layout.config}`; Flax NNX `{layout.jax}`; "
                     f"PyTorch `{layout.torch}`.\n")
        if layout.rows in seen:
            parts.append(f"Same table as [`{seen[layout.rows]}`](#{seen[layout.rows]}).\n")
            continue
        seen[layout.rows] = layout.model
        parts.append("| canonical | shape | flax | torch | torch transform | exists when |")
        parts.append("|---|---|---|---|---|---|")
        parts.extend(_md_row(row) for row in layout.rows)
        notes = []
        for name, expr in layout.repeat.items():
            notes.append(f"`{{{name}}}` ranges over `0 ≤ {name} < {expr}`.")
        if layout.torch_ignore:
            notes.append("torch `state_dict` keys that are not parameters (dropped on reading, never written): "
                         + ", ".join(f"`{p}`" for p in layout.torch_ignore) + ".")
        if layout.flax_ignore:
            notes.append("NNX state entries that are not parameters: "
                         + ", ".join(f"`{p}`" for p in layout.flax_ignore) + ".")
        if layout.aliases:
            notes.append("Also accepted as: " + ", ".join(f"`{a}`" for a in layout.aliases) + ".")
        parts.append("\n" + " ".join(notes) + "\n" if notes else "")
    from linrec.tools import originals

    parts.append(originals.markdown())
    parts.append("## Transforms\n")
    parts.append("| name | meaning |")
    parts.append("|---|---|")
    parts.extend(f"| {name} | {desc} |" for name, (_, _, desc) in TRANSFORMS.items())
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(markdown())
