"""A stack of minGRU layers with an ``nn.GRU``-like interface (``mingru_stack.md``): config, parameters, reference.

Shape legend: ``B`` batch, ``T`` time, ``I`` input features (``input_size``), ``H_l`` layer ``l``'s state and
output features (``hidden_sizes[l]``), ``in_l`` layer ``l``'s input features (``I`` for ``l = 0``, else
``H_{l-1}``), ``L`` layers.

Layer ``l`` maps ``x_l (B, T, in_l)`` to ``x_{l+1} (B, T, H_l)``::

    z = LayerNorm_l(x_l)        if norm      else x_l
    y, h_l = minGRU_l(z, h0_l)                            # linrec.spec.mingru, d_model=in_l, d_inner=H_l
    y = y + (x_l W_align_l [+ b_align_l] if has_align(l) else x_l)   if residual
    x_{l+1} = dropout(y)        for l < L - 1, training only

The state of the stack is a ``State`` whose ``h`` is a tuple with one ``(B, H_l)`` array per layer: layer ``l``'s
minGRU state ``h_l`` (before the residual and dropout); ``position`` is ``None``. Everything here is
framework-free; the reference is a loop over layers that reuses the minGRU reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from linrec.spec import checks
from linrec.spec import mingru as mingru_spec
from linrec.spec.mingru import MinGRUConfig
from linrec.spec.state import State

__all__ = [
    "MinGRUStackConfig",
    "State",
    "check_state",
    "forward",
    "init_params",
    "layer_norm",
    "param_shapes",
    "residual_branch",
    "resolve_hidden_sizes",
    "state_arrays",
    "step",
]


def resolve_hidden_sizes(hidden_sizes: int | Sequence[int], num_layers: int | None) -> tuple[int, ...]:
    """``nn.GRU``-style sizes: an int with ``num_layers`` (default 1) repeats it; a list gives one size per layer
    (``num_layers``, if given, must equal its length)."""
    if isinstance(hidden_sizes, (int, np.integer)) and not isinstance(hidden_sizes, bool):
        n = 1 if num_layers is None else num_layers
        checks.check_positive_int("num_layers", n)
        return (int(hidden_sizes),) * int(n)
    if isinstance(hidden_sizes, (str, bytes)) or not isinstance(hidden_sizes, Sequence):
        raise ValueError(f"hidden_sizes must be an int or a list of ints, got {hidden_sizes!r}")
    sizes = tuple(hidden_sizes)
    if num_layers is not None and num_layers != len(sizes):
        raise ValueError(f"num_layers={num_layers!r} contradicts hidden_sizes={list(sizes)} ({len(sizes)} layers); "
                         "give one of them")
    return sizes


#: ``residual_align`` values: v1.4's rule (align where the widths differ) and v1.3's (align layer 0 always)
RESIDUAL_ALIGNS = ("mismatched", "first")


@dataclass(frozen=True)
class MinGRUStackConfig:
    """Options of a minGRU stack (``mingru_stack.md`` §3).

    Attributes:
      input_size: ``I``, features of the input.
      hidden_sizes: ``(H_0, ..., H_{L-1})``, one per layer (use :meth:`create` for the ``int`` + ``num_layers``
        form).
      bias: bias on each minGRU input projection.
      dropout: probability of zeroing an output feature of every layer but the last, in training
        (survivors are scaled by ``1 / (1 - dropout)``); ``0 <= dropout < 1``.
      residual: add the layer input (projected by ``res_align`` when ``in_l != H_l``) to its output.
      norm: LayerNorm (with scale and bias) on each layer's input.
      residual_align: which layers project their input for the residual (``res_align``): ``"mismatched"``
        (default, cheind v1.4) those with ``in_l != H_l``; ``"first"`` (cheind v1.3's ``input_residual_align``)
        layer 0 always, even when ``I == H_0``, and no other layer (later layers then need ``in_l == H_l``).
      residual_align_bias: ``res_align`` has a bias (cheind v1.3: ``Linear(I, H, bias=bias)``).
      candidate: minGRU candidate activation, ``"g"`` (cheind, default) or ``"identity"``.
      default_state: every entry of each layer's state when none is given (cheind: ``g(0) = 0.5``).
      norm_eps: the LayerNorm epsilon.
    """

    input_size: int
    hidden_sizes: tuple[int, ...]
    bias: bool = True
    dropout: float = 0.0
    residual: bool = False
    norm: bool = False
    residual_align: str = "mismatched"
    residual_align_bias: bool = False
    candidate: str = "g"
    default_state: float = 0.5
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        checks.check_positive_int("input_size", self.input_size)
        sizes = resolve_hidden_sizes(self.hidden_sizes, None)
        if not sizes or not all(checks.is_positive_int(h) for h in sizes):
            raise ValueError(f"hidden_sizes must be positive ints, at least one, got {self.hidden_sizes!r}")
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in sizes))
        if not checks.is_real_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        for name in ("bias", "residual", "norm", "residual_align_bias"):
            checks.check_bool(name, getattr(self, name))
        if self.residual_align not in RESIDUAL_ALIGNS:
            raise ValueError(f"residual_align must be one of {', '.join(map(repr, RESIDUAL_ALIGNS))}, "
                             f"got {self.residual_align!r}")
        if self.residual and self.residual_align == "first":
            for layer in range(1, len(self.hidden_sizes)):
                if self.hidden_sizes[layer - 1] != self.hidden_sizes[layer]:
                    raise ValueError(f"residual_align='first' aligns layer 0 only, so every later layer needs "
                                     f"in_l == H_l; hidden_sizes={list(self.hidden_sizes)} changes width at "
                                     f"layer {layer} (use residual_align='mismatched')")
        checks.check_positive_finite("norm_eps", self.norm_eps)
        self.layer_config(0)  # validates candidate and default_state through MinGRUConfig

    @classmethod
    def create(cls, input_size: int, hidden_sizes: int | Sequence[int], num_layers: int | None = None,
               **kwargs: Any) -> MinGRUStackConfig:
        """The ``nn.GRU``-like form: ``hidden_sizes`` an int (repeated ``num_layers`` times) or a list."""
        return cls(input_size=input_size, hidden_sizes=resolve_hidden_sizes(hidden_sizes, num_layers), **kwargs)

    @property
    def num_layers(self) -> int:
        return len(self.hidden_sizes)

    @property
    def output_size(self) -> int:
        return self.hidden_sizes[-1]

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.hidden_sizes[layer - 1]

    def has_align(self, layer: int) -> bool:
        """Whether layer ``layer`` projects its input for the residual (``residual_align``)."""
        if not self.residual:
            return False
        if self.residual_align == "first":
            return layer == 0
        return self.layer_input_size(layer) != self.hidden_sizes[layer]

    def has_align_bias(self, layer: int) -> bool:
        """Whether layer ``layer``'s ``res_align`` has a bias."""
        return self.residual_align_bias and self.has_align(layer)

    def layer_config(self, layer: int) -> MinGRUConfig:
        return MinGRUConfig(d_model=self.layer_input_size(layer), d_inner=self.hidden_sizes[layer], bias=self.bias,
                            candidate=self.candidate, default_state=self.default_state)


# --- parameters -------------------------------------------------------------------------------------


def layer_param_shapes(config: MinGRUStackConfig, layer: int) -> dict[str, tuple[int, ...]]:
    """Layer ``layer``'s parameters, named relative to ``layers.{l}.``."""
    n_in, h = config.layer_input_size(layer), config.hidden_sizes[layer]
    shapes: dict[str, tuple[int, ...]] = {}
    if config.norm:
        shapes.update({"norm.scale": (n_in,), "norm.bias": (n_in,)})
    shapes.update({f"mingru.{k}": v for k, v in mingru_spec.param_shapes(config.layer_config(layer)).items()})
    if config.has_align(layer):
        shapes["res_align.kernel"] = (n_in, h)
    if config.has_align_bias(layer):
        shapes["res_align.bias"] = (h,)
    return shapes


def param_shapes(config: MinGRUStackConfig) -> dict[str, tuple[int, ...]]:
    """The canonical parameter table (``mingru_stack.md`` §4)."""
    return {f"layers.{l}.{k}": v for l in range(config.num_layers) for k, v in layer_param_shapes(config, l).items()}


def init_params(config: MinGRUStackConfig, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Kernels ``U(±1/sqrt(fan_in))``, biases 0, LayerNorm scale 1 and bias 0 (the minGRU spec initialisers)."""
    from linrec.backends.numpy.arrays import np_dtype

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".kernel"):
            bound = 1.0 / math.sqrt(shape[0])
            value = rng.uniform(-bound, bound, shape)
        elif name.endswith("norm.scale"):
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        out[name] = value.astype(np_dtype(dtype))
    return out


def sub_params(params: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``params`` under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


# --- checks -----------------------------------------------------------------------------------------


def check_params(params: Mapping[str, Any], config: MinGRUStackConfig) -> None:
    mingru_spec.check_params("mingru_stack", params, param_shapes(config))


def state_arrays(name: str, state: Any, config: MinGRUStackConfig) -> tuple | None:
    """``state.h`` of a stack ``State`` (a tuple of ``L`` arrays); ``None`` stays ``None``; else a clear error."""
    if state is None:
        return None
    if not isinstance(state, State):
        raise TypeError(f"mingru_stack: {name} must be a linrec State(h=tuple of {config.num_layers} (B, H_l) "
                        f"arrays) or None, got {type(state).__name__}")
    if state.position is not None:
        raise ValueError(f"mingru_stack: {name}.position must be None (the stack has no positional encoding)")
    if not isinstance(state.h, (tuple, list)):
        raise TypeError(f"mingru_stack: {name}.h must be a tuple of {config.num_layers} arrays (one (B, H_l) per "
                        f"layer), got {type(state.h).__name__}")
    if len(state.h) != config.num_layers:
        raise ValueError(f"mingru_stack: {name}.h must hold one array per layer ({config.num_layers}), "
                         f"got {len(state.h)}")
    return tuple(state.h)


def check_state(name: str, config: MinGRUStackConfig, batch: int, shapes: Sequence[tuple[int, ...]],
                dtypes: Sequence[str], want_dtype: str) -> None:
    """The arrays of :func:`state_arrays`: entry ``l`` of shape ``(B, H_l)`` in the state dtype."""
    for layer, (shape, dtype) in enumerate(zip(shapes, dtypes)):
        want = (batch, config.hidden_sizes[layer])
        if tuple(shape) != want:
            raise ValueError(f"mingru_stack: {name}.h[{layer}] must have shape (B, H_{layer}) = {want}, "
                             f"got {tuple(shape)}")
        if dtype != want_dtype:
            raise TypeError(f"mingru_stack: {name}.h[{layer}] has dtype {dtype}; for this input it must be "
                            f"{want_dtype}")


def check_input(name: str, shape: tuple[int, ...], ndim: int, config: MinGRUStackConfig) -> None:
    """``x (B, T, I)`` (``ndim=3``) or ``x_t (B, I)`` (``ndim=2``); a wrong number of axes is never guessed."""
    want = "(B, T, input_size" if ndim == 3 else "(B, input_size"
    if len(shape) != ndim:
        raise ValueError(f"mingru_stack: {name} must have {ndim} axes {want}={config.input_size}), got shape "
                         f"{tuple(shape)} (an unbatched or time-major input is never guessed; see batch_first)")
    if shape[-1] != config.input_size:
        raise ValueError(f"mingru_stack: {name} must have shape {want}={config.input_size}), got {tuple(shape)}")


# --- the reference ----------------------------------------------------------------------------------


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (``var`` centred, biased)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def residual_branch(p: Mapping[str, Any], x: Any, config: MinGRUStackConfig, layer: int) -> Any:
    """What layer ``layer`` adds to its output when ``residual``: ``x`` or ``x @ W_align (+ b_align)``.

    Written with ``@``/``+`` only, so every backend calls it on its own arrays (already in ``x``'s dtype).
    """
    if not config.has_align(layer):
        return x
    y = x @ p["res_align.kernel"]
    return y + p["res_align.bias"] if config.has_align_bias(layer) else y


def _layer(p: Mapping[str, np.ndarray], x: np.ndarray, h0, config: MinGRUStackConfig, layer: int, run):
    z = layer_norm(x, p["norm.scale"], p["norm.bias"], config.norm_eps) if config.norm else x
    y, h = run(sub_params(p, "mingru."), z, h0, config.layer_config(layer))
    if config.residual:
        y = y + residual_branch(p, x, config, layer)
    return y, h


def forward(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    config: MinGRUStackConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, State]:
    """The stack over a sequence in evaluation mode (no dropout).

    Args:
      params: canonical parameters (:func:`param_shapes`).
      x: ``(B, T, I)``.
      initial_state: ``State(h=(h_0 (B, H_0), ..., h_{L-1}))``; ``None``: every layer from its ``default_state``.
      lengths: ``(B,)`` real inputs per row, right padding: every layer keeps its state at a padded position,
        and the output there is zero. ``None``: no padding.

    Returns:
      ``y (B, T, H_{L-1})`` and the final ``State`` (``h`` a tuple of ``L`` arrays ``(B, H_l)``).
    """
    x = np.asarray(x)
    check_input("x", x.shape, 3, config)
    check_params(params, config)
    given = state_arrays("initial_state", initial_state, config)
    states = [None] * config.num_layers if given is None else [State(np.asarray(h)) for h in given]
    finals = []
    for layer in range(config.num_layers):
        x, h = _layer(sub_params(params, f"layers.{layer}."), x, states[layer], config, layer,
                      lambda mp, z, h0, lcfg: mingru_spec.forward(mp, z, lcfg, h0, lengths))
        finals.append(h.h)
    if lengths is not None:  # the residual of a padded position is not zero: zero the stack's output there
        x = np.where(mingru_spec.padding_mask(lengths, *x.shape[:2])[..., None], x, 0).astype(x.dtype)
    return x, State(tuple(finals))


def step(
    params: Mapping[str, np.ndarray], x_t: np.ndarray, state: State | None, config: MinGRUStackConfig
) -> tuple[np.ndarray, State]:
    """One step: ``x_t (B, I)`` and the ``State`` (``None``: default) -> ``(y_t (B, H_{L-1}), State)``."""
    x_t = np.asarray(x_t)
    check_input("x_t", x_t.shape, 2, config)
    y, state = forward(params, x_t[:, None], config, state)
    return y[:, 0], state
