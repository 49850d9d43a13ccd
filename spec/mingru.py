"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): config, canonical parameters and the NumPy reference.

Normative text: ``mingru.md``. Shape legend: ``B`` batch, ``T`` time, ``D`` input features (``d_model``),
``H`` state features (``d_inner``), ``D_out`` output features (``d_model`` with ``out_proj``, else ``H``).

The reference is a plain loop over time that computes in the dtype of its inputs (pass float64 to get
the answer conformance uses). Everything here is framework-free; ``minlstm`` reuses the shared pieces
(activations, option checks, call checks, layout helpers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from linrec.spec import checks, reference
from linrec.spec.state import State, layer_h
from linrec.spec.state import check_lengths as _check_lengths

__all__ = [
    "CANDIDATES",
    "MODES",
    "PROJ_LAYOUTS",
    "MinGRUConfig",
    "State",
    "candidate",
    "candidate_grad",
    "check_call",
    "check_lengths",
    "check_params",
    "check_step",
    "forward",
    "from_layout",
    "g",
    "init_params",
    "lengths_log_error",
    "log_g",
    "log_method_error",
    "mingru_update",
    "padding_mask",
    "param_shapes",
    "resolve_mode",
    "sigmoid",
    "softplus",
    "state_array",
    "state_dtype",
    "step",
    "to_layout",
    "vjp",
]

#: Candidate activations: ``identity`` (``h̃ = u``, any sign) or ``g`` (``h̃ = g(u) > 0``, paper appendix B.3).
CANDIDATES = ("identity", "g")
#: ``parallel`` runs a scan over the whole sequence; ``sequential`` runs the single-step update in a loop;
#: ``auto`` (the default, recurrence.md §0) is ``parallel``, since every layer of this family has a parallel form.
MODES = ("auto", "parallel", "sequential")
#: Column orders of the fused input projection found in the originals (canonical: ``gate_hidden``).
PROJ_LAYOUTS = {
    "gate_hidden": "one fused projection, columns [z | h̃] (canonical; cheind/mingru)",
    "hidden_gate": "one fused projection, columns [h̃ | z] (lucidrains/minGRU-pytorch)",
    "separate": "two projections linear_z and linear_h (jkyl/nnx-gru)",
}
_BLOCKS = ("gate", "hidden")


# --- activations (stable for any finite input) ------------------------------------------------


def softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + e^x)`` without overflow."""
    return np.logaddexp(0, x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + e^{-x})`` without overflow: ``exp(-softplus(-x))``."""
    return np.exp(-softplus(-x))


def g(x: np.ndarray) -> np.ndarray:
    """The positive candidate activation ``g(x) = x + 0.5`` for ``x >= 0``, else ``sigmoid(x)`` (continuous at 0)."""
    return np.where(x >= 0, np.maximum(x, 0) + 0.5, sigmoid(x))


def log_g(x: np.ndarray) -> np.ndarray:
    """``log g(x)``: ``log(x + 0.5)`` for ``x >= 0``, else ``-softplus(-x)``; finite for every finite ``x``."""
    # maximum() keeps the untaken branch finite, so a where() gradient never meets NaN
    return np.where(x >= 0, np.log(np.maximum(x, 0) + 0.5), -softplus(-x))


def candidate(u: np.ndarray, kind: str) -> np.ndarray:
    return u if kind == "identity" else g(u)


def candidate_grad(u: np.ndarray, kind: str) -> np.ndarray:
    """``dh̃/du``: 1 for identity; for ``g``: 1 where ``u >= 0`` else ``sigmoid'(u)`` (one-sided at 0)."""
    if kind == "identity":
        return np.ones_like(u)
    s = sigmoid(u)
    return np.where(u >= 0, 1.0, s * (1 - s)).astype(u.dtype)


# --- config ---------------------------------------------------------------------------------------


def validate_common(cfg) -> None:
    """Field checks shared by :class:`MinGRUConfig` and ``MinLSTMConfig``; resolves ``d_inner``."""
    checks.check_positive_int("d_model", cfg.d_model)
    if not checks.is_real_number(cfg.expansion) or not cfg.expansion > 0:
        raise ValueError(f"expansion must be a positive number, got {cfg.expansion!r}")
    from_expansion = int(cfg.d_model * cfg.expansion)  # lucidrains: int(dim * expansion_factor)
    if cfg.d_inner is None:
        if from_expansion < 1:
            raise ValueError(
                f"expansion={cfg.expansion} gives d_inner = int(d_model * expansion) = {from_expansion} < 1"
            )
        object.__setattr__(cfg, "d_inner", from_expansion)
    else:
        checks.check_positive_int("d_inner", cfg.d_inner)
        if cfg.expansion != 1.0 and cfg.d_inner != from_expansion:
            raise ValueError(
                f"d_inner={cfg.d_inner} contradicts expansion={cfg.expansion} (int(d_model * expansion) = "
                f"{from_expansion}); give one of them"
            )
    for name in ("out_proj", "bias"):
        checks.check_bool(name, getattr(cfg, name))
    checks.check_choice("candidate", cfg.candidate, CANDIDATES)
    if not checks.is_real_number(cfg.default_state) or not math.isfinite(cfg.default_state):
        raise ValueError(f"default_state must be a finite number, got {cfg.default_state!r}")


@dataclass(frozen=True)
class MinGRUConfig:
    """Options of a minGRU layer (``mingru.md`` §3).

    Attributes:
      d_model: ``D``, input features (and output features with ``out_proj``).
      d_inner: ``H``, state features; ``None`` means ``int(d_model * expansion)``.
      expansion: lucidrains' ``expansion_factor``; only used to derive ``d_inner``.
      out_proj: project the state ``(H -> D)`` without bias (lucidrains ``to_out``); else ``y = h``.
      bias: bias on the input projection.
      candidate: ``"identity"`` (``h̃ = u``) or ``"g"`` (``h̃ = g(u) > 0``, needed by ``method="log"``).
      default_state: the value of every entry of ``h_{-1}`` when no ``initial_state`` is given
        (``0``; cheind uses ``g(0) = 0.5``).
    """

    d_model: int
    d_inner: int | None = None
    expansion: float = 1.0
    out_proj: bool = False
    bias: bool = True
    candidate: str = "identity"
    default_state: float = 0.0

    def __post_init__(self) -> None:
        validate_common(self)

    @property
    def d_out(self) -> int:
        """Output features: ``d_model`` with ``out_proj``, else ``d_inner``."""
        return self.d_model if self.out_proj else self.d_inner


def _dense_shapes(config, n_blocks: int) -> dict[str, tuple[int, ...]]:
    shapes = {"proj.kernel": (config.d_model, n_blocks * config.d_inner)}
    if config.bias:
        shapes["proj.bias"] = (n_blocks * config.d_inner,)
    if config.out_proj:
        shapes["out_proj.kernel"] = (config.d_inner, config.d_model)
    return shapes


def param_shapes(config: MinGRUConfig) -> dict[str, tuple[int, ...]]:
    """Canonical parameters: ``proj.kernel (D, 2H)`` columns ``[z | h̃]``, ``proj.bias (2H,)``,
    ``out_proj.kernel (H, D)`` (each only when its option is on)."""
    return _dense_shapes(config, 2)


def init_dense(shapes: Mapping[str, tuple[int, ...]], seed: int, dtype: str) -> dict[str, np.ndarray]:
    """Kernels ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (fan_in = rows), biases zero (``mingru.md`` §4)."""
    from linrec.backends.numpy.arrays import np_dtype

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith(".kernel"):
            bound = 1.0 / math.sqrt(shape[0])
            value = rng.uniform(-bound, bound, shape)
        else:
            value = np.zeros(shape)
        out[name] = value.astype(np_dtype(dtype))
    return out


def init_params(config: MinGRUConfig, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Draw canonical parameters following the spec initialisers."""
    return init_dense(param_shapes(config), seed, dtype)


# --- checks shared by every backend (same message for the same mistake) -------------------------


def state_dtype(x_dtype: str) -> str:
    """The dtype of the carried state for inputs of ``x_dtype``: float32 for bfloat16/float16, else ``x_dtype``."""
    return checks.compute_dtype(x_dtype)


def check_call(
    layer: str,
    config,
    x_shape: tuple[int, ...],
    x_dtype: str,
    init_shape: tuple[int, ...] | None,
    init_dtype: str | None,
    *,
    mode: str,
    method: str,
    methods: Sequence[str],
    padded: bool = False,
) -> None:
    """Validate a sequence call; ``methods`` are the scan methods the backend offers (``"log"`` included);
    ``padded``: ``lengths`` was given (right padding, recurrence.md §0)."""
    checks.check_mode(mode, MODES, function=layer)
    if mode == "sequential" and method not in ("auto", "sequential"):
        raise ValueError(
            f"{layer}: method={method!r} selects a scan of mode='parallel'; mode='sequential' runs the step "
            "loop and takes method='auto'"
        )
    checks.check_method(method, methods, function=layer)
    _check_x(layer, config, "x", x_shape, x_dtype, ndim=3)
    _check_state(layer, config, x_shape[0], x_dtype, init_shape, init_dtype, "initial_state")
    if method == "log" and padded:
        raise ValueError(lengths_log_error(layer))
    if method == "log" and config.candidate != "g":
        raise ValueError(log_method_error(layer, "candidate"))


def resolve_mode(mode: str) -> str:
    """``"auto"`` -> ``"parallel"`` (the family's parallel form); other modes unchanged."""
    return "parallel" if mode == "auto" else mode


def lengths_log_error(layer: str) -> str:
    """The message for ``lengths`` with ``method="log"`` (recurrence.md §0: it names ``chunked``)."""
    return (f"{layer}: lengths cannot be combined with method='log': a padded position is an identity step "
            "(a = 1, b = 0) and b = 0 is outside the log domain; use method='chunked', 'associative' or "
            "'sequential'")


_INT_KINDS = ("i", "u")


def check_lengths(layer: str, shape: tuple[int, ...], dtype: str, batch: int, length: int,
                  values: np.ndarray | None) -> None:
    """``lengths (B,)`` of ``layer`` (right padding); see ``linrec.spec.state.check_lengths``."""
    _check_lengths(shape, dtype, batch, length, values, where=layer)


def padding_mask(lengths: np.ndarray | None, batch: int, length: int) -> np.ndarray | None:
    """``(B, T)`` bool, ``True`` at real positions: the first ``lengths[i]`` of row ``i`` (``None``: no padding)."""
    if lengths is None:
        return None
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


def state_array(layer: str, name: str, state):
    """The array ``h`` of a single layer's :class:`State`; see ``linrec.spec.state.layer_h``."""
    return layer_h(state, name=name, where=layer)


def check_step(
    layer: str,
    config,
    x_shape: tuple[int, ...],
    x_dtype: str,
    state_shape: tuple[int, ...] | None,
    state_dtype_: str | None,
) -> None:
    """Validate a single step: ``x_t (B, d_model)``, ``state (B, d_inner)``."""
    _check_x(layer, config, "x_t", x_shape, x_dtype, ndim=2)
    _check_state(layer, config, x_shape[0], x_dtype, state_shape, state_dtype_, "state")


def _check_x(layer: str, config, name: str, shape: tuple[int, ...], dtype: str, ndim: int) -> None:
    """``x (B, T, D)`` of a call (``ndim=3``) or ``x_t (B, D)`` of a step (``ndim=2``), real floating."""
    if dtype not in checks.REAL_DTYPES:
        raise TypeError(f"{layer}: {name} must be real floating ({', '.join(checks.REAL_DTYPES)}), got dtype {dtype}")
    axes = "B, T" if ndim == 3 else "B"
    if len(shape) != ndim:
        raise ValueError(f"{layer}: {name} must have {ndim} axes ({axes}, d_model={config.d_model}), got shape "
                         f"{tuple(shape)} (an unbatched or time-major input is never guessed; see batch_first)")
    if shape[-1] != config.d_model:
        raise ValueError(f"{layer}: {name} must have shape ({axes}, d_model={config.d_model}), got {tuple(shape)}")


def _check_state(layer, config, batch, x_dtype, shape, dtype, name) -> None:
    if shape is None:
        return
    expected = (batch, config.d_inner)
    if tuple(shape) != expected:
        raise ValueError(f"{layer}: {name} must have shape (B, d_inner) = {expected}, got {tuple(shape)}")
    allowed = tuple(dict.fromkeys((state_dtype(x_dtype), x_dtype)))  # float32 (or x's dtype) for bfloat16 x
    if dtype not in allowed:
        raise TypeError(
            f"{layer}: {name} has dtype {dtype}; for x of dtype {x_dtype} it must be {' or '.join(allowed)}"
        )


def log_method_error(layer: str, what: str) -> str:
    """The message for ``method="log"`` outside its domain; ``what`` is the offending option."""
    others = "method='associative', 'chunked' or 'sequential' (any sign)"
    if what == "candidate":
        return (
            f"{layer}: method='log' needs a positive candidate: set candidate='g' in the config, or use {others}"
        )
    if what == "default_state":
        return (
            f"{layer}: method='log' needs default_state >= 0 (0 is the empty state, log h = -inf), "
            f"or an explicit positive initial_state; or use {others}"
        )
    return (
        f"{layer}: method='log' needs initial_state > 0 everywhere (it takes log h_0); pass a positive state "
        f"(e.g. g(0) = 0.5), pass None for the default state, or use {others}"
    )


# --- the reference ----------------------------------------------------------------------------


def _default_state(config, batch: int, dtype) -> np.ndarray:
    return np.full((batch, config.d_inner), config.default_state, dtype)


def _project(params: Mapping[str, np.ndarray], x: np.ndarray, dtype) -> np.ndarray:
    u = x @ np.asarray(params["proj.kernel"], dtype)
    if "proj.bias" in params:
        u = u + np.asarray(params["proj.bias"], dtype)
    return u


def _output(params, config, h: np.ndarray, dtype) -> np.ndarray:
    return h @ np.asarray(params["out_proj.kernel"], dtype) if config.out_proj else h


def _reference_dtype(x: np.ndarray) -> np.dtype:
    return np.dtype(checks.compute_dtype(reference.dtype_name(x)))


def _shape(x) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def check_params(layer: str, params: Mapping, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise ``ValueError`` unless ``params`` holds exactly the canonical names with their shapes."""
    for name, shape in shapes.items():
        if name not in params:
            raise ValueError(f"{layer}: params is missing {name!r}; expected {sorted(shapes)}")
        if _shape(params[name]) != shape:
            raise ValueError(f"{layer}: params[{name!r}] must have shape {shape}, got {_shape(params[name])}")
    extra = sorted(set(params) - set(shapes))
    if extra:
        raise ValueError(f"{layer}: params has unexpected entries {extra} for this config; expected {sorted(shapes)}")


def mingru_update(h: np.ndarray, u_t: np.ndarray, config) -> np.ndarray:
    """One step of ``mingru.md`` §2: ``h_t = (1 - z_t) h_{t-1} + z_t h̃_t`` from the projection ``u_t (B, 2H)``."""
    u_z, u_h = np.split(u_t, 2, axis=-1)
    z = sigmoid(u_z)
    return (1 - z) * h + z * candidate(u_h, config.candidate)


def forward(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    config: MinGRUConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, State]:
    """The definition of minGRU over a sequence, as a loop.

    Args:
      params: canonical parameters (:func:`param_shapes`).
      x: ``(B, T, D)``.
      initial_state: ``State(h=(B, H))``; ``None`` means every entry equals ``config.default_state``.
      lengths: ``(B,)``: row ``i`` holds ``lengths[i]`` real inputs followed by padding (right padding); a
        padded position leaves the state unchanged and its output is zero. ``None``: no padding.

    Returns:
      ``y (B, T, D_out)`` and ``final_state``, a ``State(h=(B, H))`` (each row's state after its last real
      input, before ``out_proj``).
    """
    return _sequence(params, x, config, initial_state, lengths, "mingru", param_shapes(config), mingru_update)


def step(
    params: Mapping[str, np.ndarray], x_t: np.ndarray, state: State | None, config: MinGRUConfig
) -> tuple[np.ndarray, State]:
    """One step: ``x_t (B, D)``, ``state`` a ``State(h=(B, H))`` (``None``: the default state) ->
    ``(y_t (B, D_out), State)``."""
    return _step(params, x_t, state, config, "mingru", param_shapes(config), mingru_update)


def _sequence(params, x, config, initial_state, lengths, layer, shapes, update):
    x = np.asarray(x)
    h0 = state_array(layer, "initial_state", initial_state)
    check_call(
        layer, config, x.shape, reference.dtype_name(x),
        None if h0 is None else np.shape(h0),
        None if h0 is None else reference.dtype_name(np.asarray(h0)),
        mode="sequential", method="auto", methods=(),
    )
    check_params(layer, params, shapes)
    mask = None
    if lengths is not None:
        lengths = np.asarray(lengths)
        check_lengths(layer, lengths.shape, lengths.dtype.name, x.shape[0], x.shape[1], lengths)
        mask = padding_mask(lengths, *x.shape[:2])
    dtype = _reference_dtype(x)
    u = _project(params, x.astype(dtype), dtype)
    h = _default_state(config, x.shape[0], dtype) if h0 is None else np.asarray(h0, dtype)
    states = np.zeros((x.shape[0], x.shape[1], config.d_inner), dtype)
    for t in range(x.shape[1]):
        new = update(h, u[:, t], config)
        h = new if mask is None else np.where(mask[:, t, None], new, h)  # a padded position keeps the state
        states[:, t] = h
    y = _output(params, config, states, dtype)
    if mask is not None:
        y = np.where(mask[..., None], y, 0)
    return y.astype(x.dtype), State(h)


def _step(params, x_t, state, config, layer, shapes, update):
    x_t = np.asarray(x_t)
    h0 = state_array(layer, "state", state)
    check_step(
        layer, config, x_t.shape, reference.dtype_name(x_t),
        None if h0 is None else np.shape(h0),
        None if h0 is None else reference.dtype_name(np.asarray(h0)),
    )
    check_params(layer, params, shapes)
    dtype = _reference_dtype(x_t)
    h = _default_state(config, x_t.shape[0], dtype) if h0 is None else np.asarray(h0, dtype)
    h = update(h, _project(params, x_t.astype(dtype), dtype), config)
    return _output(params, config, h, dtype).astype(x_t.dtype), State(h)


# --- the reference VJP ----------------------------------------------------------------------------


def vjp(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    config: MinGRUConfig,
    cotangent_y: np.ndarray,
    cotangent_state: np.ndarray | None = None,
    initial_state: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Analytic VJP of :func:`forward` (float64): returns ``(params_bar, x_bar, initial_state_bar)``.

    The states here are the bare arrays ``h`` of the ``State`` (``cotangent_state (B, H)``, ``initial_state
    (B, H)``, the returned ``initial_state_bar (B, H)``): this is a derivative of the array maths.
    ``initial_state_bar`` is the cotangent of ``h_{-1}`` (also when it came from ``default_state``).
    Chain: ``a = 1 - z``, ``b = z h̃``; ``z̄ = h̃ b̄ - ā``, ``h̃̄ = z b̄``; ``ū_z = z̄ z (1 - z)``, ``ū_h = h̃̄ h̃'(u_h)``.
    """

    def gates_bar(u, a_bar, b_bar):
        u_z, u_h = np.split(u, 2, axis=-1)
        z, c = sigmoid(u_z), candidate(u_h, config.candidate)
        z_bar = b_bar * c - a_bar
        return np.concatenate([z_bar * z * (1 - z), b_bar * z * candidate_grad(u_h, config.candidate)], axis=-1)

    def gates(u):
        u_z, u_h = np.split(u, 2, axis=-1)
        z = sigmoid(u_z)
        return 1 - z, z * candidate(u_h, config.candidate)

    return layer_vjp(params, x, config, cotangent_y, cotangent_state, initial_state, gates, gates_bar)


def layer_vjp(params, x, config, cotangent_y, cotangent_state, initial_state, gates, gates_bar):
    """VJP of ``y = out(scan(gates(x @ K + b)))`` given the layer's ``gates`` and their pullback ``gates_bar``."""
    f64 = np.float64
    x = np.asarray(x, f64)
    u = _project(params, x, f64)
    h0 = _default_state(config, x.shape[0], f64) if initial_state is None else np.asarray(initial_state, f64)
    a, b = gates(u)
    h, _ = reference.linear_scan(a, b, initial_state=h0)
    ct_y = np.asarray(cotangent_y, f64)
    params_bar: dict[str, np.ndarray] = {}
    if config.out_proj:
        params_bar["out_proj.kernel"] = np.einsum("bth,btd->hd", h, ct_y)
        ct_h = ct_y @ np.asarray(params["out_proj.kernel"], f64).T
    else:
        ct_h = ct_y
    ct_f = None if cotangent_state is None else np.asarray(cotangent_state, f64)
    a_bar, b_bar, h0_bar = reference.linear_scan_vjp(a, b, ct_h, ct_f, initial_state=h0)
    u_bar = gates_bar(u, a_bar, b_bar)
    params_bar["proj.kernel"] = np.einsum("btd,btk->dk", x, u_bar)
    if config.bias:
        params_bar["proj.bias"] = u_bar.sum(axis=(0, 1))
    x_bar = u_bar @ np.asarray(params["proj.kernel"], f64).T
    return params_bar, x_bar, h0_bar


# --- projection layouts of the originals (for converters) ------------------------------------


def permute_blocks(params: Mapping[str, np.ndarray], order_from: Sequence[str], order_to: Sequence[str]) -> dict:
    """Reorder the column blocks of ``proj.kernel``/``proj.bias`` from ``order_from`` to ``order_to``."""
    out = dict(params)
    for name in ("proj.kernel", "proj.bias"):
        if name in params:
            blocks = dict(zip(order_from, np.split(np.asarray(params[name]), len(order_from), axis=-1)))
            out[name] = np.concatenate([blocks[k] for k in order_to], axis=-1)
    return out


def to_layout(params: Mapping[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """Canonical params -> the projection layout of an original (:data:`PROJ_LAYOUTS`), dense ``(in, out)``.

    ``separate`` yields ``linear_z.{kernel,bias}`` and ``linear_h.{kernel,bias}``; ``out_proj`` is unchanged.
    """
    return _to_layout(params, layout, PROJ_LAYOUTS, _BLOCKS, {"hidden_gate": ("hidden", "gate")},
                      {"gate": "linear_z", "hidden": "linear_h"})


def from_layout(params: Mapping[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """The inverse of :func:`to_layout`."""
    return _from_layout(params, layout, PROJ_LAYOUTS, _BLOCKS, {"hidden_gate": ("hidden", "gate")},
                        {"gate": "linear_z", "hidden": "linear_h"})


def _to_layout(params, layout, layouts, blocks, fused_orders, separate_names):
    if layout not in layouts:
        raise ValueError(f"unknown layout {layout!r}; known: {sorted(layouts)}")
    if layout in fused_orders:
        return permute_blocks(params, blocks, fused_orders[layout])
    if layout != "separate":
        return dict(params)
    out = {k: v for k, v in params.items() if not k.startswith("proj.")}
    for suffix in ("kernel", "bias"):
        name = f"proj.{suffix}"
        if name in params:
            for block, part in zip(blocks, np.split(np.asarray(params[name]), len(blocks), axis=-1)):
                out[f"{separate_names[block]}.{suffix}"] = part
    return out


def _from_layout(params, layout, layouts, blocks, fused_orders, separate_names):
    if layout not in layouts:
        raise ValueError(f"unknown layout {layout!r}; known: {sorted(layouts)}")
    if layout in fused_orders:
        return permute_blocks(params, fused_orders[layout], blocks)
    if layout != "separate":
        return dict(params)
    names = set(separate_names.values())
    out = {k: v for k, v in params.items() if k.split(".")[0] not in names}
    for suffix in ("kernel", "bias"):
        parts = [params.get(f"{separate_names[b]}.{suffix}") for b in blocks]
        if all(p is not None for p in parts):
            out[f"proj.{suffix}"] = np.concatenate([np.asarray(p) for p in parts], axis=-1)
        elif any(p is not None for p in parts):
            raise ValueError(f"layout 'separate': every block needs .{suffix} or none does")
    return out
