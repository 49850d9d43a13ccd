"""minGRU for the JAX backend (``spec/mingru.md``): pure functions and a Flax NNX module.

Shape legend: ``B`` batch, ``T`` time, ``D`` input features (``d_model``), ``H`` state features
(``d_inner``), ``D_out`` output features (``d_model`` with ``out_proj``, else ``H``).

The pure functions take canonical parameters (``{"proj.kernel": (D, 2H), ...}``) and work under
``jit`` (with ``config``, ``mode`` and ``method`` static), ``grad`` and ``vmap``. The sequence runners
and the module base class are shared with ``minlstm``: a layer is its parameter table plus
``gates(u) -> (a, b)`` and ``log_gates(u) -> (log a, log b)`` of the input projection ``u``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from linrec.backends.jax import native_decode
from linrec.backends.jax import native_mingru as _fused
from linrec.backends.jax import pallas_mingru as _pallas
from linrec.backends.jax import scan as _scan
from linrec.backends.jax.arrays import dtype_name, jnp_dtype, to_jax
from linrec.backends.jax.dense import as_kernel, dense
from linrec.backends.jax.native_dense import PackedKernel, layer_decoder
from linrec.spec import checks
from linrec.spec import mingru as spec
from linrec.spec.mingru import MinGRUConfig
from linrec.spec.state import State

__all__ = [
    "MinGRU",
    "mingru",
    "mingru_gates",
    "mingru_initial_state",
    "mingru_log_gates",
    "mingru_step",
]

Array = jax.Array
Gates = Callable[[Array, Any], tuple[Array, Array]]


# --- activations (stable, with finite gradients everywhere) -------------------------------------


def candidate(u: Array, kind: str) -> Array:
    """``h̃``: ``u`` (identity) or ``g(u) = u + 0.5`` for ``u >= 0``, else ``σ(u)``."""
    return u if kind == "identity" else jnp.where(u >= 0, u + 0.5, jax.nn.sigmoid(u))


def log_g(u: Array) -> Array:
    """``log g(u)``; ``maximum`` keeps the untaken branch finite so the ``where`` gradient has no NaN."""
    return jnp.where(u >= 0, jnp.log(jnp.maximum(u, 0) + 0.5), -jax.nn.softplus(-u))


def mingru_gates(u: Array, config: MinGRUConfig) -> tuple[Array, Array]:
    """``u (..., 2H)`` -> ``(a, b) = (1 - z, z h̃)``; ``1 - z`` as ``σ(-u_z)`` so it keeps its precision near 0."""
    u_z, u_h = jnp.split(u, 2, axis=-1)
    return jax.nn.sigmoid(-u_z), jax.nn.sigmoid(u_z) * candidate(u_h, config.candidate)


def mingru_log_gates(u: Array, config: MinGRUConfig) -> tuple[Array, Array]:
    """``(log(1 - z), log z + log g(u_h)) = (-softplus(u_z), -softplus(-u_z) + log_g(u_h))``."""
    u_z, u_h = jnp.split(u, 2, axis=-1)
    return -jax.nn.softplus(u_z), -jax.nn.softplus(-u_z) + log_g(u_h)


#: Gates the fused minGRU kernel (``native_mingru``) computes itself, by its ``gates`` name: minGRU's, and minLSTM's
#: (registered by ``minlstm.py``: ``f' = σ(-d)``, ``i' = σ(d)``, minGRU's gates of ``d = log(i / f)``).
FUSED_GATES: dict[Gates, str] = {mingru_gates: "mingru"}


# --- shared runners -------------------------------------------------------------------------------


def initial_state(config, batch_size: int, dtype: Any = "float32") -> State:
    """``State(h=(B, H))`` filled with ``config.default_state`` in the state dtype for inputs of ``dtype``."""
    acc = jnp_dtype(spec.state_dtype(np.dtype(dtype).name))
    return State(jnp.full((batch_size, config.d_inner), config.default_state, acc))


def _project(params: Mapping[str, Array], x: Array) -> Array:
    bias = params.get("proj.bias")
    return dense(x, as_kernel(params["proj.kernel"]).astype(x.dtype),
                 None if bias is None else jnp.asarray(bias).astype(x.dtype))


def _output(params: Mapping[str, Array], config, h: Array, dtype) -> Array:
    h = h.astype(dtype)
    return dense(h, as_kernel(params["out_proj.kernel"]).astype(dtype)) if config.out_proj else h


def _log_initial_state(layer: str, config, h0: Array | None, batch: int, acc) -> Array | None:
    """``log h_{-1}`` for the log-space scan, or ``None`` for the empty (zero) state.

    A concrete non-positive state raises here; a traced one becomes NaN, which ``log_scan`` refuses
    at run time (a ``ValueError`` naming ``log_initial_state``), never a silent NaN result.
    """
    if h0 is not None:
        if not isinstance(h0, jax.core.Tracer) and not bool(jnp.all(h0 > 0)):
            raise ValueError(spec.log_method_error(layer, "initial_state"))
        return jnp.log(h0)
    if config.default_state < 0:
        raise ValueError(spec.log_method_error(layer, "default_state"))
    if config.default_state == 0:
        return None
    return jnp.full((batch, config.d_inner), np.log(config.default_state), acc)


def _step_loop(gates: Gates, config, u: Array, h: Array, mask: Array | None) -> tuple[Array, Array]:
    def body(state: Array, inp) -> tuple[Array, Array]:
        u_t, keep = inp
        a, b = gates(u_t, config)
        state = a * state + b if keep is None else jnp.where(keep, a * state + b, state)
        return state, state

    final, states = lax.scan(body, h, (jnp.moveaxis(u, 1, 0), None if mask is None else jnp.moveaxis(mask, 1, 0)))
    return jnp.moveaxis(states, 0, 1), final


# One compiled program per (shapes, config, mode, method): eager dispatch would compile every small op
# (and re-trace the step loop) per call.
@partial(jax.jit, static_argnames=("gates", "log_gates", "config", "mode", "method"))
def _sequence(params, x, h0, log_h0, lengths, *, gates: Gates, log_gates: Gates, config, mode: str, method: str):
    acc = jnp_dtype(spec.state_dtype(dtype_name(x)))
    u = _project(params, x).astype(acc)  # projections run in x's dtype; gates and state in `acc`
    n_batch = x.shape[0]
    # right padding: (B, T, 1), True at real positions; a padded position is an identity step of the same scan
    mask = None if lengths is None else (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
    if mode == "sequential":
        h = jnp.full((n_batch, config.d_inner), config.default_state, acc) if h0 is None else h0
        states, final = _step_loop(gates, config, u, h, mask)
    elif method == "log":
        log_a, log_b = log_gates(u, config)
        log_h, log_final = _scan.log_scan(log_a, log_b, log_initial_state=log_h0)
        states, final = jnp.exp(log_h), jnp.exp(log_final)
    elif mask is None and gates in FUSED_GATES and _fused.applies(u, method):  # gates fused into the native scan
        h = jnp.full((n_batch, config.d_inner), config.default_state, acc) if h0 is None else h0
        states, final = _fused.native_mingru(u, h, config.candidate, FUSED_GATES[gates])
    elif mask is None and gates is mingru_gates and _pallas.applies(method):  # gates fused into the Pallas scan
        h = jnp.full((n_batch, config.d_inner), config.default_state, acc) if h0 is None else h0
        states, final = _pallas.pallas_mingru(u, h, config.candidate)
    else:
        a, b = gates(u, config)
        if mask is not None:
            a, b = jnp.where(mask, a, jnp.ones((), acc)), jnp.where(mask, b, jnp.zeros((), acc))
        if h0 is None and config.default_state != 0:
            h0 = jnp.full((n_batch, config.d_inner), config.default_state, acc)
        states, final = _scan.linear_scan(a, b, initial_state=h0, method=method)
    y = _output(params, config, states, x.dtype)
    if mask is not None:
        y = jnp.where(mask, y, jnp.zeros((), y.dtype))
    return y, State(final)


@partial(jax.jit, static_argnames=("gates", "config"))
def _step(params, x_t, state, *, gates: Gates, config):
    acc = jnp_dtype(spec.state_dtype(dtype_name(x_t)))
    h = jnp.full((x_t.shape[0], config.d_inner), config.default_state, acc) if state is None else state
    a, b = gates(_project(params, x_t).astype(acc), config)
    h = a * h + b
    return _output(params, config, h, x_t.dtype), State(h)


def run_sequence(
    layer: str,
    shapes: Mapping[str, tuple[int, ...]],
    gates: Gates,
    log_gates: Gates,
    params: Mapping[str, Array],
    x: Array,
    config,
    initial_state: State | None,
    lengths: Array | None,
    mode: str,
    method: str,
) -> tuple[Array, State]:
    """The sequence call shared by the layers: project, gate, scan (or step loop), project out.

    With ``lengths`` (right padding) a padded position is an identity step (``a = 1, b = 0``) of the same scan
    and its output is zero."""
    x = to_jax(x, "x")
    h0 = spec.state_array(layer, "initial_state", initial_state)
    h0 = None if h0 is None else to_jax(h0, "initial_state")
    spec.check_call(
        layer, config, tuple(x.shape), dtype_name(x), None if h0 is None else tuple(h0.shape),
        None if h0 is None else dtype_name(h0), mode=mode, method=method, methods=_scan.METHODS,
        padded=lengths is not None,
    )
    spec.check_params(layer, params, shapes)
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        spec.check_lengths(layer, tuple(lengths.shape), dtype_name(lengths), x.shape[0], x.shape[1],
                           None if isinstance(lengths, jax.core.Tracer) else np.asarray(lengths))
    mode = spec.resolve_mode(mode)
    acc = jnp_dtype(spec.state_dtype(dtype_name(x)))
    h0 = None if h0 is None else h0.astype(acc)
    log_h0 = None
    if mode == "parallel" and method == "log":
        log_h0 = _log_initial_state(layer, config, h0, x.shape[0], acc)
    params = {k: to_jax(v, k) for k, v in params.items()}
    return _sequence(params, x, h0, log_h0, lengths, gates=gates, log_gates=log_gates, config=config, mode=mode,
                     method=method)


def run_step(
    layer: str,
    shapes: Mapping[str, tuple[int, ...]],
    gates: Gates,
    params: Mapping[str, Array],
    x_t: Array,
    state: State | None,
    config,
) -> tuple[Array, State]:
    """One step shared by the layers: ``h = a h + b`` with ``(a, b) = gates(x_t W + bias)``."""
    x_t = to_jax(x_t, "x_t")
    state = spec.state_array(layer, "state", state)
    state = None if state is None else to_jax(state, "state")
    spec.check_step(
        layer, config, tuple(x_t.shape), dtype_name(x_t), None if state is None else tuple(state.shape),
        None if state is None else dtype_name(state),
    )
    spec.check_params(layer, params, shapes)
    params = {k: v if isinstance(v, PackedKernel) else to_jax(v, k) for k, v in params.items()}  # (a decoder's)
    state = None if state is None else state.astype(jnp_dtype(spec.state_dtype(dtype_name(x_t))))
    return _step(params, x_t, state, gates=gates, config=config)


# --- pure functions -------------------------------------------------------------------------------


def mingru(
    params: Mapping[str, Array],
    x: Array,
    *,
    config: MinGRUConfig,
    initial_state: State | None = None,
    lengths: Array | None = None,
    mode: str = "auto",
    method: str = "auto",
) -> tuple[Array, State]:
    """minGRU over a sequence.

    Args:
      params: canonical parameters (``linrec.spec.mingru.param_shapes``).
      x: ``(B, T, D)`` real floating.
      initial_state: ``State(h=(B, H))`` in the state dtype (float32 for bfloat16/float16 ``x``); ``None``:
        every entry ``config.default_state``.
      lengths: ``(B,)`` integers: row ``i`` holds ``lengths[i]`` real inputs followed by padding; padded
        positions keep the state and output zeros. Not with ``method="log"``. ``None``: no padding.
      mode: ``"auto"`` (= ``"parallel"``), ``"parallel"`` (a scan) or ``"sequential"`` (the step loop,
        ``lax.scan``).
      method: scan method for ``mode="parallel"``: ``"auto"``, ``"sequential"``, ``"associative"``,
        ``"chunked"`` or ``"log"`` (log-space scan; needs ``candidate="g"`` and a positive state).

    Returns:
      ``y (B, T, D_out)`` in the dtype of ``x`` and ``final_state``, a ``State(h=(B, H))`` in the state dtype.
    """
    return run_sequence("mingru", spec.param_shapes(config), mingru_gates, mingru_log_gates, params, x, config,
                        initial_state, lengths, mode, method)


def mingru_step(
    params: Mapping[str, Array], x_t: Array, state: State | None, *, config: MinGRUConfig
) -> tuple[Array, State]:
    """One step: ``x_t (B, D)``, ``state`` a ``State(h=(B, H))`` (``None``: the default state) ->
    ``(y_t (B, D_out), State)``."""
    return run_step("mingru", spec.param_shapes(config), mingru_gates, params, x_t, state, config)


def mingru_initial_state(config: MinGRUConfig, batch_size: int, dtype: Any = "float32") -> State:
    """The default state ``State(h=(B, H))`` for inputs of ``dtype``."""
    return initial_state(config, batch_size, dtype)


# --- the NNX module -------------------------------------------------------------------------------

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): the spec initialiser (also torch's nn.Linear default)
_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class MinRNNBase(nnx.Module):
    """Shared body of the minGRU/minLSTM modules: ``proj`` (D -> n·H) and optional ``out_proj`` (H -> D)."""

    _layer: ClassVar[str]
    _config_cls: ClassVar[type]
    _n_blocks: ClassVar[int]
    _gates: ClassVar[Gates]
    _log_gates: ClassVar[Gates]

    def __init__(
        self,
        d_model: int,
        *,
        d_inner: int | None = None,
        expansion: float = 1.0,
        out_proj: bool = False,
        bias: bool = True,
        candidate: str = "identity",
        default_state: float = 0.0,
        rngs: nnx.Rngs,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        remat: bool = False,
        batch_first: bool = True,
    ):
        config = self._config_cls(
            d_model=d_model, d_inner=d_inner, expansion=expansion, out_proj=out_proj, bias=bias,
            candidate=candidate, default_state=default_state,
        )
        checks.check_bool("batch_first", batch_first)
        self._cfg = config
        self.batch_first = batch_first
        self.dtype = dtype
        self.remat = remat
        common = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=_KERNEL_INIT, rngs=rngs)
        self.proj = nnx.Linear(d_model, self._n_blocks * config.d_inner, use_bias=bias,
                               bias_init=nnx.initializers.zeros_init(), **common)
        self.out_proj = nnx.Linear(config.d_inner, d_model, use_bias=False, **common) if out_proj else None

    @property
    def config(self):
        """The framework-neutral config (``MinGRUConfig`` / ``MinLSTMConfig``)."""
        return self._cfg

    def _params(self) -> dict[str, Array]:
        params = {"proj.kernel": self.proj.kernel[...]}
        if self.proj.bias is not None:
            params["proj.bias"] = self.proj.bias[...]
        if self.out_proj is not None:
            params["out_proj.kernel"] = self.out_proj.kernel[...]
        return params

    def _cast(self, x: Array) -> Array:
        return jnp.asarray(x) if self.dtype is None else jnp.asarray(x).astype(self.dtype)

    def __call__(
        self, x: Array, initial_state: State | None = None, *, lengths: Array | None = None, mode: str = "auto",
        method: str = "auto",
    ) -> tuple[Array, State]:
        """``x (B, T, D)`` (``(T, B, D)`` with ``batch_first=False``) -> ``(y, final_state)``, ``y`` in the layout
        of ``x`` and ``final_state`` a ``State(h=(B, H))``; see the pure function."""
        cls = type(self)
        x = self._cast(x)
        if x.ndim != 3:
            raise ValueError(f"{cls._layer}: x must have 3 axes ({self._layout()}, d_model), got shape "
                             f"{tuple(x.shape)}")
        if not self.batch_first:
            x = jnp.swapaxes(x, 0, 1)
        fn = partial(run_sequence, cls._layer, _shapes(self._cfg, cls._n_blocks), cls._gates, cls._log_gates,
                     config=self._cfg, mode=mode, method=method)

        def call(params, x, h0, lengths):
            return fn(params, x, initial_state=h0, lengths=lengths)

        if self.remat:
            call = jax.checkpoint(call)
        y, final = call(self._params(), x, initial_state, lengths)
        return (y if self.batch_first else jnp.swapaxes(y, 0, 1)), final

    def _layout(self) -> str:
        return "B, T" if self.batch_first else "T, B"

    def step(self, x_t: Array, state: State | None = None) -> tuple[Array, State]:
        """``x_t (B, D)``, ``state`` a ``State(h=(B, H))`` (``None``: default) -> ``(y_t (B, D_out), State)``."""
        cls = type(self)
        return run_step(cls._layer, _shapes(self._cfg, cls._n_blocks), cls._gates, self._params(),
                        self._cast(x_t), state, self._cfg)

    def decoder(self, compile: bool = True, fused: bool | None = None):
        """``decode(x_t (B, D), state) -> (y_t, State)``: :meth:`step` with the parameters read once, for token loops,
        as one ``jax.jit``-compiled call (``compile=False``: op by op). Build it again after changing the
        parameters.

        ``fused`` (as the LMs' ``decoder``): float32 steps as one native call through XLA FFI
        (``native_decode``); ``None``: where it can, ``True``: raise saying why where it cannot, ``False``: never.
        Otherwise, at batch sizes up to ``native.dense.MAX_ROWS`` its float32 dense products run on the native
        kernel, from kernels packed here once (a copy of those weights; results within the float32 tolerance of
        :meth:`step`)."""
        cls, shapes, cfg = type(self), _shapes(self._cfg, type(self)._n_blocks), self._cfg
        params = self._params()
        framework = layer_decoder(lambda p, x_t, state: run_step(cls._layer, shapes, cls._gates, p, self._cast(x_t),
                                                                 state, cfg), params, compile)

        def checked(x_t, state) -> tuple[Array, Array]:
            x_t = to_jax(self._cast(x_t), "x_t")
            h = spec.state_array(cls._layer, "state", state)
            h = None if h is None else to_jax(h, "state")
            spec.check_step(cls._layer, cfg, tuple(x_t.shape), dtype_name(x_t),
                            None if h is None else tuple(h.shape), None if h is None else dtype_name(h))
            h = initial_state(cfg, x_t.shape[0], x_t.dtype).h if h is None else h
            return x_t, h.astype(jnp_dtype(spec.state_dtype(dtype_name(x_t))))

        native_step = native_decode.decoder_step(cls._native_step, params, cfg, fused)
        return native_decode.layer_decoder(framework, native_step, checked, fused)

    def cell(self, carry: State, x_t: Array) -> tuple[State, Array]:
        """Flax-style cell: ``(carry (a State), x_t (B, D)) -> (carry, y_t)``, for ``nnx.scan``/``nnx.RNN`` users."""
        y_t, carry = self.step(x_t, carry)
        return carry, y_t

    def initial_state(self, batch_size: int) -> State:
        """The default state ``State(h=(B, H))`` in the state dtype of this module's compute dtype."""
        dtype = self.dtype if self.dtype is not None else self.proj.kernel[...].dtype
        return initial_state(self._cfg, batch_size, dtype)

    @classmethod
    def from_canonical(cls, config, params: Mapping[str, Any], *, rngs: nnx.Rngs | None = None,
                       batch_first: bool = True, **kwargs):
        """Build a module whose parameters are ``params`` (canonical names, dense ``(in, out)`` layout)."""
        if not isinstance(config, cls._config_cls):
            raise TypeError(f"config must be a {cls._config_cls.__name__}, got {type(config).__name__}")
        spec.check_params(cls._layer, params, _shapes(config, cls._n_blocks))
        kwargs.setdefault("param_dtype", jnp.asarray(params["proj.kernel"]).dtype)
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        d_model = fields.pop("d_model")
        module = cls(d_model, **fields, rngs=rngs or nnx.Rngs(0), batch_first=batch_first, **kwargs)
        module.proj.kernel[...] = jnp.asarray(params["proj.kernel"], kwargs["param_dtype"])
        if config.bias:
            module.proj.bias[...] = jnp.asarray(params["proj.bias"], kwargs["param_dtype"])
        if config.out_proj:
            module.out_proj.kernel[...] = jnp.asarray(params["out_proj.kernel"], kwargs["param_dtype"])
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """The parameters as NumPy arrays under their canonical names."""
        return {name: np.asarray(value) for name, value in self._params().items()}


def _shapes(config, n_blocks: int) -> dict[str, tuple[int, ...]]:
    return spec._dense_shapes(config, n_blocks)


class MinGRU(MinRNNBase):
    """minGRU (``spec/mingru.md``): ``h_t = (1 - z_t) h_{t-1} + z_t h̃_t``, ``y_t = h_t`` (or ``h_t W_out``).

    Constructor: the ``MinGRUConfig`` fields as keyword arguments, keyword-only ``rngs``, ``dtype``
    (compute dtype; ``None`` keeps the input's), ``param_dtype``, ``remat`` (``jax.checkpoint`` the call) and
    ``batch_first`` (``False``: the call reads and returns ``(T, B, D)``, as ``torch.nn.GRU``).
    Parameters: ``proj`` (``nnx.Linear`` D -> 2H, columns ``[z | h̃]``) and ``out_proj`` (H -> D, no bias).
    """

    _layer = "mingru"
    _config_cls = MinGRUConfig
    _n_blocks = 2
    _gates = staticmethod(mingru_gates)
    _log_gates = staticmethod(mingru_log_gates)
    _native_step = staticmethod(native_decode.mingru_step)  # the native decode program's step
