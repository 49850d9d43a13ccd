"""minGRU for the PyTorch backend (``spec/mingru.md``): pure functions and an ``nn.Module``.

Shape legend: ``B`` batch, ``T`` time, ``D`` input features (``d_model``), ``H`` state features
(``d_inner``), ``D_out`` output features (``d_model`` with ``out_proj``, else ``H``).

The pure functions take canonical parameters (``{"proj.kernel": (D, 2H), ...}``, dense ``(in, out)``);
the module keeps idiomatic ``nn.Linear`` layers (``proj.weight`` is ``proj.kernel`` transposed) and
calls them. The sequence runners and the module base class are shared with ``minlstm``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from linrec.backends.torch import native_decode
from linrec.backends.torch import native_mingru as _fused
from linrec.backends.torch import scan as _scan
from linrec.backends.torch import triton_mingru as _triton_fused
from linrec.backends.torch.arrays import asarray, cast, dtype_name, torch_dtype
from linrec.backends.torch.dense import dense
from linrec.backends.torch.native_dense import layer_decoder, pack_kernels
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

Gates = Callable[[Tensor, Any], tuple[Tensor, Tensor]]


# --- activations (stable, exact in float64, finite gradients) -----------------------------------


def softplus(x: Tensor) -> Tensor:
    """``log(1 + e^x)`` exactly; ``F.softplus`` returns ``x`` above its threshold, off by ~1e-9 in float64."""
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def candidate(u: Tensor, kind: str) -> Tensor:
    """``h̃``: ``u`` (identity) or ``g(u) = u + 0.5`` for ``u >= 0``, else ``σ(u)``.

    ``g`` is computed as ``max(u, 0) + σ(-relu(-u))`` (``σ(0) = 0.5`` exactly; the values equal the ``where``
    form bit for bit, infinities included): six tensor operations and no Python scalar, cheaper in a one-token
    step than ``where(u >= 0, u + 0.5, σ(u))``, whose two scalars cost ~3 µs each to wrap on CPU. The gradient
    is the spec's one-sided one: at ``u = 0`` the ``clamp_min`` passes it and ``relu`` does not, so ``g'(0) = 1``.
    """
    return u if kind == "identity" else u.clamp_min(0) + torch.sigmoid(-torch.relu(-u))


def log_g(u: Tensor) -> Tensor:
    """``log g(u)``; ``clamp`` keeps the untaken branch finite so the ``where`` gradient has no NaN."""
    return torch.where(u >= 0, torch.log(u.clamp(min=0) + 0.5), -softplus(-u))


def mingru_gates(u: Tensor, config: MinGRUConfig) -> tuple[Tensor, Tensor]:
    """``u (..., 2H)`` -> ``(a, b) = (1 - z, z h̃)``; ``1 - z`` as ``σ(-u_z)`` so it keeps its precision near 0."""
    u_z, u_h = u.chunk(2, dim=-1)
    return torch.sigmoid(-u_z), torch.sigmoid(u_z) * candidate(u_h, config.candidate)


def mingru_log_gates(u: Tensor, config: MinGRUConfig) -> tuple[Tensor, Tensor]:
    """``(log(1 - z), log z + log g(u_h)) = (-softplus(u_z), -softplus(-u_z) + log_g(u_h))``."""
    u_z, u_h = u.chunk(2, dim=-1)
    return -softplus(u_z), -softplus(-u_z) + log_g(u_h)


#: Gates the fused minGRU kernel (``native_mingru``) computes itself, by its ``gates`` name: minGRU's, and minLSTM's
#: (registered by ``minlstm.py``: ``f' = σ(-d)``, ``i' = σ(d)``, minGRU's gates of ``d = log(i / f)``).
FUSED_GATES: dict[Gates, str] = {mingru_gates: "mingru"}


# --- shared runners -------------------------------------------------------------------------------


def _state_dtype(x_dtype: torch.dtype) -> torch.dtype:
    return torch_dtype(spec.state_dtype(str(x_dtype).removeprefix("torch.")))


def initial_state(config, batch_size: int, dtype: Any = torch.float32, device: Any = None) -> State:
    """``State(h=(B, H))`` filled with ``config.default_state`` in the state dtype for inputs of ``dtype``."""
    dtype = torch_dtype(dtype) if isinstance(dtype, str) else dtype
    return State(torch.full((batch_size, config.d_inner), config.default_state, dtype=_state_dtype(dtype),
                            device=device))


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else asarray(np.asarray(x))  # a copy; bfloat16 via ml_dtypes


def _project(params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    bias = params.get("proj.bias")
    return dense(x, cast(params["proj.kernel"], x.dtype), None if bias is None else cast(bias, x.dtype))


def _output(params: Mapping[str, Tensor], config, h: Tensor, dtype: torch.dtype) -> Tensor:
    h = cast(h, dtype)
    return dense(h, cast(params["out_proj.kernel"], dtype)) if config.out_proj else h


def _require(ok: Tensor, message: str) -> None:
    """``ValueError`` eagerly; under ``torch.compile`` an in-graph assert (no data-dependent graph break)."""
    if torch.compiler.is_compiling():
        torch._assert_async(ok, message)
    elif not bool(ok):
        raise ValueError(message)


def _log_initial_state(layer: str, config, h0: Tensor | None, like: Tensor) -> Tensor | None:
    """``log h_{-1}`` for the log-space scan, or ``None`` for the empty (zero) state."""
    if h0 is not None:
        _require((h0 > 0).all(), spec.log_method_error(layer, "initial_state"))
        return torch.log(h0)
    if config.default_state < 0:
        raise ValueError(spec.log_method_error(layer, "default_state"))
    if config.default_state == 0:
        return None
    return torch.full((like.shape[0], config.d_inner), math.log(config.default_state), dtype=like.dtype,
                      device=like.device)


def _default(config, batch: int, like: Tensor) -> Tensor:
    return torch.full((batch, config.d_inner), config.default_state, dtype=like.dtype, device=like.device)


def run_sequence(
    layer: str,
    shapes: Mapping[str, tuple[int, ...]],
    gates: Gates,
    log_gates: Gates,
    params: Mapping[str, Tensor],
    x: Tensor,
    config,
    initial_state: State | None,
    lengths: Tensor | None,
    mode: str,
    method: str,
) -> tuple[Tensor, State]:
    """The sequence call shared by the layers: project, gate, scan (or step loop), project out.

    With ``lengths`` (right padding) a padded position is an identity step (``a = 1, b = 0``) of the same scan
    and its output is zero."""
    x = _as_tensor(x)
    h0 = spec.state_array(layer, "initial_state", initial_state)
    h0 = None if h0 is None else _as_tensor(h0)
    spec.check_call(
        layer, config, tuple(x.shape), dtype_name(x), None if h0 is None else tuple(h0.shape),
        None if h0 is None else dtype_name(h0), mode=mode, method=method, methods=_scan.METHODS,
        padded=lengths is not None,
    )
    spec.check_params(layer, params, shapes)
    mask = None
    if lengths is not None:
        lengths = _as_tensor(lengths)
        spec.check_lengths(layer, tuple(lengths.shape), dtype_name(lengths), x.shape[0], x.shape[1],
                           None if torch.compiler.is_compiling() else lengths.detach().cpu().numpy())
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None])[..., None]
    mode = spec.resolve_mode(mode)
    u = _project(params, x).to(_state_dtype(x.dtype))  # projections in x's dtype; gates and state in float32+
    h0 = None if h0 is None else h0.to(u.dtype)
    if mode == "sequential":
        _scan.refuse_sequence_parallel(f"{layer}(mode='sequential'), the step loop,", "use mode='parallel'")
        h = _default(config, x.shape[0], u) if h0 is None else h0
        states = []
        for t in range(x.shape[1]):
            a, b = gates(u[:, t], config)
            h = a * h + b if mask is None else torch.where(mask[:, t], a * h + b, h)
            states.append(h)
        states = torch.stack(states, dim=1) if states else u.new_zeros((x.shape[0], 0, config.d_inner))
        final = h
    elif method == "log":
        log_a, log_b = log_gates(u, config)
        log_h0 = _log_initial_state(layer, config, h0, u)
        log_h, log_final = _scan.log_scan(log_a, log_b, log_initial_state=log_h0)
        states, final = torch.exp(log_h), torch.exp(log_final)
    elif mask is None and gates is mingru_gates and _triton_fused.applies(u, method):  # gates fused into Triton's
        h = _default(config, x.shape[0], u) if h0 is None else h0
        states, final = _triton_fused.triton_mingru(u, h, config.candidate)
    elif mask is None and gates in FUSED_GATES and _fused.applies(u, method):  # gates fused into the native scan
        h = _default(config, x.shape[0], u) if h0 is None else h0
        states, final = _fused.native_mingru(u, h, config.candidate, FUSED_GATES[gates])
    else:
        a, b = gates(u, config)
        if mask is not None:  # padded positions: identity steps of the same scan
            a, b = torch.where(mask, a, torch.ones_like(a)), torch.where(mask, b, torch.zeros_like(b))
        if h0 is None and config.default_state != 0:
            h0 = _default(config, x.shape[0], u)
        states, final = _scan.linear_scan(a, b, initial_state=h0, method=method)
    y = _output(params, config, states, x.dtype)
    if mask is not None:
        y = torch.where(mask, y, torch.zeros_like(y))
    return y, State(final)


def run_step(
    layer: str,
    shapes: Mapping[str, tuple[int, ...]],
    gates: Gates,
    params: Mapping[str, Tensor],
    x_t: Tensor,
    state: State | None,
    config,
) -> tuple[Tensor, State]:
    """One step shared by the layers: ``h = a h + b`` with ``(a, b) = gates(x_t W + bias)``."""
    spec.check_params(layer, params, shapes)
    x_t, h = checked_step_inputs(layer, x_t, state, config)
    y, h = step_core(gates, params, x_t, h, config)
    return y, State(h)


def checked_step_inputs(layer: str, x_t: Any, state: Any, config) -> tuple[Tensor, Tensor]:
    """A step's checked ``x_t (B, D)`` and state ``h (B, H)`` in the state dtype (the default for ``None``)."""
    x_t = _as_tensor(x_t)
    state = spec.state_array(layer, "state", state)
    state = None if state is None else _as_tensor(state)
    spec.check_step(
        layer, config, tuple(x_t.shape), dtype_name(x_t), None if state is None else tuple(state.shape),
        None if state is None else dtype_name(state),
    )
    h = initial_state(config, x_t.shape[0], x_t.dtype, x_t.device).h if state is None else state
    return x_t, cast(h, _state_dtype(x_t.dtype))


def step_core(gates: Gates, params: Mapping[str, Tensor], x_t: Tensor, h: Tensor, config) -> tuple[Tensor, Tensor]:
    """:func:`run_step` without its checks, for decode loops that checked once: ``h (B, H)`` in the state dtype."""
    a, b = gates(cast(_project(params, x_t), h.dtype), config)
    h = torch.addcmul(b, a, h)  # a h + b as one operation
    return _output(params, config, h, x_t.dtype), h


# --- pure functions -------------------------------------------------------------------------------


def mingru(
    params: Mapping[str, Tensor],
    x: Tensor,
    *,
    config: MinGRUConfig,
    initial_state: State | None = None,
    lengths: Tensor | None = None,
    mode: str = "auto",
    method: str = "auto",
) -> tuple[Tensor, State]:
    """minGRU over a sequence.

    Args:
      params: canonical parameters (``linrec.spec.mingru.param_shapes``), dense ``(in, out)`` layout.
      x: ``(B, T, D)`` real floating.
      initial_state: ``State(h=(B, H))`` in the state dtype (float32 for bfloat16/float16 ``x``); ``None``:
        every entry ``config.default_state``.
      lengths: ``(B,)`` integers: row ``i`` holds ``lengths[i]`` real inputs followed by padding; padded
        positions keep the state and output zeros. Not with ``method="log"``. ``None``: no padding.
      mode: ``"auto"`` (= ``"parallel"``), ``"parallel"`` (a scan) or ``"sequential"`` (the step loop).
      method: scan method for ``mode="parallel"``: ``"auto"``, ``"sequential"``, ``"associative"``,
        ``"chunked"`` or ``"log"`` (log-space scan; needs ``candidate="g"`` and a positive state).

    Returns:
      ``y (B, T, D_out)`` in the dtype of ``x`` and ``final_state``, a ``State(h=(B, H))`` in the state dtype.
    """
    return run_sequence("mingru", spec.param_shapes(config), mingru_gates, mingru_log_gates, params, x, config,
                        initial_state, lengths, mode, method)


def mingru_step(
    params: Mapping[str, Tensor], x_t: Tensor, state: State | None, *, config: MinGRUConfig
) -> tuple[Tensor, State]:
    """One step: ``x_t (B, D)``, ``state`` a ``State(h=(B, H))`` (``None``: the default state) ->
    ``(y_t (B, D_out), State)``."""
    return run_step("mingru", spec.param_shapes(config), mingru_gates, params, x_t, state, config)


def mingru_initial_state(config: MinGRUConfig, batch_size: int, dtype: Any = torch.float32) -> State:
    """The default state ``State(h=(B, H))`` for inputs of ``dtype``."""
    return initial_state(config, batch_size, dtype)


# --- the nn.Module --------------------------------------------------------------------------------


class MinRNNBase(nn.Module):
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
        remat: bool = False,
        batch_first: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self._cfg = self._config_cls(
            d_model=d_model, d_inner=d_inner, expansion=expansion, out_proj=out_proj, bias=bias,
            candidate=candidate, default_state=default_state,
        )
        checks.check_bool("batch_first", batch_first)
        self.batch_first = batch_first
        h = self._cfg.d_inner
        self.remat = remat
        self.proj = nn.Linear(d_model, self._n_blocks * h, bias=bias, device=device, dtype=dtype)
        self.out_proj = nn.Linear(h, d_model, bias=False, device=device, dtype=dtype) if out_proj else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Spec initialisers: weights ``U(±1/sqrt(fan_in))`` (torch's default too), biases zero."""
        for linear in (self.proj, self.out_proj):
            if linear is None:
                continue
            bound = 1.0 / math.sqrt(linear.in_features)
            nn.init.uniform_(linear.weight, -bound, bound)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    @property
    def config(self):
        """The framework-neutral config (``MinGRUConfig`` / ``MinLSTMConfig``)."""
        return self._cfg

    def _params(self) -> dict[str, Tensor]:
        params = {"proj.kernel": self.proj.weight.T}
        if self.proj.bias is not None:
            params["proj.bias"] = self.proj.bias
        if self.out_proj is not None:
            params["out_proj.kernel"] = self.out_proj.weight.T
        return params

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return spec._dense_shapes(self._cfg, self._n_blocks)

    def forward(
        self, x: Tensor, initial_state: State | None = None, *, lengths: Tensor | None = None, mode: str = "auto",
        method: str = "auto",
    ) -> tuple[Tensor, State]:
        """``x (B, T, D)`` (``(T, B, D)`` with ``batch_first=False``) -> ``(y, final_state)``, ``y`` in the layout
        of ``x`` and ``final_state`` a ``State(h=(B, H))``; see the pure function."""
        cls = type(self)
        x = _as_tensor(x)
        if x.dim() != 3:
            layout = "B, T" if self.batch_first else "T, B"
            raise ValueError(f"{cls._layer}: x must have 3 axes ({layout}, d_model), got shape {tuple(x.shape)}")
        if not self.batch_first:
            x = x.transpose(0, 1)

        def call(x: Tensor, h0: State | None, lengths: Tensor | None) -> tuple[Tensor, State]:
            return run_sequence(cls._layer, self._shapes(), cls._gates, cls._log_gates, self._params(), x,
                                self._cfg, h0, lengths, mode, method)

        if self.remat and torch.is_grad_enabled():
            y, final = checkpoint(call, x, initial_state, lengths, use_reentrant=False)
        else:
            y, final = call(x, initial_state, lengths)
        return (y if self.batch_first else y.transpose(0, 1)), final

    def step(self, x_t: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``x_t (B, D)``, ``state`` a ``State(h=(B, H))`` (``None``: default) -> ``(y_t (B, D_out), State)``."""
        cls = type(self)
        return run_step(cls._layer, self._shapes(), cls._gates, self._params(), x_t, state, self._cfg)

    def decoder(self, compile: bool = False, fused: bool | None = None):
        """``decode(x_t (B, D), state) -> (y_t, State)``: :meth:`step` with the parameters gathered once, for token
        loops, without autograd. Build it again after changing the parameters.

        ``fused`` (as the LMs' ``decoder``): float32 steps as one call into the native library
        (``native_decode``); ``None``: where it can, ``True``: raise saying why where it cannot, ``False``: never.
        Otherwise, at batch sizes up to ``native.dense.MAX_ROWS`` the float32 dense products run on the native
        kernel. Both read kernels packed here once (a copy of those weights; results within the float32 tolerance
        of :meth:`step`). ``compile=True`` runs that framework step as one
        ``torch.compile(fullgraph=True)`` graph (the first call compiles; the twin of the JAX default)."""
        cls, shapes, cfg = type(self), self._shapes(), self._cfg
        packed = pack_kernels(self._params())
        framework = layer_decoder(lambda p, x_t, state: run_step(cls._layer, shapes, cls._gates, p, x_t, state, cfg),
                                  packed, compile)
        native_step = native_decode.decoder_step(cls._native_step, packed, cfg, fused)
        return native_decode.layer_decoder(framework, native_step,
                                           lambda x_t, state: checked_step_inputs(cls._layer, x_t, state, cfg), fused)

    def initial_state(self, batch_size: int) -> State:
        """The default state ``State(h=(B, H))`` in the state dtype for this module's parameter dtype."""
        weight = self.proj.weight
        return initial_state(self._cfg, batch_size, weight.dtype, weight.device)

    @classmethod
    def from_canonical(cls, config, params: Mapping[str, Any], *, batch_first: bool = True, device: Any = None,
                       dtype: torch.dtype | None = None, **kwargs):
        """Build a module whose parameters are ``params`` (canonical names, dense ``(in, out)`` layout)."""
        if not isinstance(config, cls._config_cls):
            raise TypeError(f"config must be a {cls._config_cls.__name__}, got {type(config).__name__}")
        spec.check_params(cls._layer, params, spec._dense_shapes(config, cls._n_blocks))
        tensors = {k: _as_tensor(v) for k, v in params.items()}
        dtype = dtype or tensors["proj.kernel"].dtype
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        module = cls(fields.pop("d_model"), **fields, batch_first=batch_first, device=device, dtype=dtype, **kwargs)
        with torch.no_grad():
            module.proj.weight.copy_(tensors["proj.kernel"].T)
            if config.bias:
                module.proj.bias.copy_(tensors["proj.bias"])
            if config.out_proj:
                module.out_proj.weight.copy_(tensors["out_proj.kernel"].T)
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """The parameters as NumPy arrays under their canonical names (``proj.kernel = proj.weight.T``)."""
        from linrec.backends.torch.arrays import to_numpy

        return {name: np.ascontiguousarray(to_numpy(value)) for name, value in self._params().items()}


class MinGRU(MinRNNBase):
    """minGRU (``spec/mingru.md``): ``h_t = (1 - z_t) h_{t-1} + z_t h̃_t``, ``y_t = h_t`` (or ``h_t W_out``).

    Constructor: the ``MinGRUConfig`` fields as keyword arguments, ``remat`` (``torch.utils.checkpoint``
    when gradients are on), ``batch_first`` (``False``: the call reads and returns ``(T, B, D)``, as
    ``torch.nn.GRU``), ``device``, ``dtype``. Parameters: ``proj`` (``nn.Linear`` D -> 2H, output rows
    ``[z | h̃]``) and ``out_proj`` (H -> D, no bias), so ``state_dict`` keys are ``proj.weight``, ``proj.bias``,
    ``out_proj.weight``.
    """

    _layer = "mingru"
    _config_cls = MinGRUConfig
    _n_blocks = 2
    _gates = staticmethod(mingru_gates)
    _log_gates = staticmethod(mingru_log_gates)
    _native_step = staticmethod(native_decode.mingru_step)  # the native decode program's step
