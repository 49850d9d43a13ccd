"""GatedLinearRNN / GateLoop (SISO) in PyTorch: pure functions and an ``nn.Module`` (``spec/gated_linear_rnn.md``).

Shape legend: ``B`` batch, ``T`` time, ``D_in`` input features, ``H`` state width (``d_h``),
``D`` output features (``d_model``), ``n`` column blocks of ``proj`` (3 tied, 4 untied).

The pure functions take canonical parameters (dense ``(in, out)``: ``y = x @ kernel + bias``); the module
keeps idiomatic ``nn.Linear`` layers (``proj.weight`` is ``proj.kernel`` transposed) and calls the pure
functions with transposed views, so both share one implementation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from linrec.backends.torch import native_decode
from linrec.backends.torch import native_gated_linear_rnn as _fused
from linrec.backends.torch import triton_gated_linear_rnn as _triton_fused
from linrec.backends.torch.arrays import asarray, cast, dtype_name, to_numpy, torch_dtype
from linrec.backends.torch.dense import dense
from linrec.backends.torch.native_dense import layer_decoder, pack_kernels
from linrec.backends.torch.scan import linear_scan, refuse_sequence_parallel
from linrec.spec import gated_linear_rnn as spec
from linrec.spec.gated_linear_rnn import GatedLinearRNNConfig
from linrec.spec.state import State

__all__ = [
    "GateLoop",
    "GatedLinearRNN",
    "gated_linear_rnn",
    "gated_linear_rnn_initial_state",
    "gated_linear_rnn_step",
]

Params = Mapping[str, Tensor]


def _softplus(x: Tensor) -> Tensor:
    # exact log(1 + e^x): F.softplus returns x above its threshold (off by ~1e-9, visible in float64)
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
    "relu": torch.relu,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_exact": F.gelu,
    "silu": F.silu,
    "softplus": _softplus,
}
assert set(_ACTIVATIONS) == set(spec.ACTIVATIONS)


def _check_tensor(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _prepare_params(params: Params, dtype: torch.dtype, config: GatedLinearRNNConfig) -> dict[str, Tensor]:
    spec.check_params({k: tuple(v.shape) for k, v in params.items()}, config)
    return {k: cast(v, dtype) for k, v in params.items()}


def _state(state, x: Tensor, config: GatedLinearRNNConfig, name: str) -> Tensor:
    """``state.h`` checked and in the state dtype (zeros for ``None``)."""
    acc = torch_dtype(spec.state_dtype(dtype_name(x)))
    h = spec.state_h(state, name=name)
    if h is None:
        return x.new_zeros((x.shape[0], config.d_h), dtype=acc)
    h = _check_tensor(h, f"{name}.h")
    spec.check_initial_state(tuple(h.shape), dtype_name(h), x.shape[0], dtype_name(x), config, name=f"{name}.h")
    return cast(h, acc)


def _valid(lengths: Any, x: Tensor, method: str) -> Tensor | None:
    """``(B, T)`` bool, ``True`` at real inputs, from right-padding ``lengths: (B,)`` (``None``: no padding)."""
    if lengths is None:
        return None
    lengths = _check_tensor(lengths, "lengths")
    n_batch, n_time = x.shape[:2]
    values = None if torch.compiler.is_compiling() else to_numpy(lengths)
    spec.check_lengths(tuple(lengths.shape), dtype_name(lengths), n_batch, n_time, values, method=method)
    return torch.arange(n_time, device=x.device)[None, :] < lengths.to(x.device)[:, None]


def _split(u: Tensor, config: GatedLinearRNNConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Activated blocks of ``u: (..., n H)`` → ``(candidate, i, f, o)``, each ``(..., H)``.

    ``split``, not slicing: the backward of a slice zero-fills a tensor as large as ``u`` per slice (17% of the
    layer's backward at T=4096), the backward of ``split`` is one concatenation. ``split_with_sizes`` and
    ``chunk`` are the C-level methods: ``Tensor.split`` adds a Python wrapper (~4 µs per one-token step)."""
    d = config.d_h
    u_in, u_gates = u.split_with_sizes([d, u.shape[-1] - d], dim=-1)
    candidate = _ACTIVATIONS[config.input_activation](u_in)
    gates = _ACTIVATIONS[config.gate_activation](u_gates).chunk(u_gates.shape[-1] // d, dim=-1)
    if config.use_tied_gates:
        i, o = gates
        return candidate, i, 1 - i, o
    i, f, o = gates
    return candidate, i, f, o


def _cell(p: Params, u_t: Tensor, h: Tensor, config: GatedLinearRNNConfig) -> tuple[Tensor, Tensor]:
    """``u_t: (B, n H)``, ``h: (B, H)`` → ``(y_t: (B, H), h_t)`` (before ``out_proj``)."""
    if config.use_true_recurrence:
        u_t = u_t + dense(h, cast(p["recurrent_proj.kernel"], h.dtype))
    candidate, i, f, o = _split(u_t, config)
    h = torch.addcmul(i * candidate, f, h)  # f h + i candidate
    return _ACTIVATIONS[config.hidden_activation](h) * o, h


def gated_linear_rnn(
    params: Params,
    x: Tensor,
    *,
    config: GatedLinearRNNConfig,
    initial_state: State | None = None,
    lengths: Tensor | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
) -> tuple[Tensor, State]:
    """The layer over a sequence: ``x: (B, T, D_in)`` → ``(y: (B, T, D), final_state: State(h=(B, H)))``.

    ``initial_state``: ``State(h=(B, H))`` or ``None`` (zeros). ``lengths: (B,)``: right-padded rows (row ``b``
    holds ``lengths[b]`` real inputs); padded positions are identity steps of the same scan (``a = 1, b = 0``),
    their outputs zero, so ``final_state`` is each row's state after its last real input.
    ``mode``: ``"auto"`` (``"parallel"``, or ``"sequential"`` with ``use_true_recurrence``), ``"parallel"``
    (scan; ``method``/``chunk_size`` go to ``linear_scan``) or ``"sequential"`` (the step loop). Projections run
    in the dtype of ``x``; gates and state in ``state_dtype`` (float32 for bf16/f16), and ``final_state`` is
    returned in that dtype.
    """
    x = _check_tensor(x, "x")
    spec.check_input(tuple(x.shape), dtype_name(x), config)
    mode = spec.resolve_mode(mode, method, config, chunk_size)
    valid = _valid(lengths, x, method)
    p = _prepare_params(params, x.dtype, config)
    h0 = _state(initial_state, x, config, "initial_state")
    u = dense(x, p["proj.kernel"], p["proj.bias"]).to(h0.dtype)
    if mode == "parallel" and valid is None and spec.fusable(config) and _triton_fused.applies(u, method):
        y, final = _triton_fused.triton_gated_linear_rnn(u, h0, config.use_tied_gates, config.reversed, chunk_size)
    elif mode == "parallel" and valid is None and spec.fusable(config) and _fused.applies(u, method):
        y, final = _fused.native_gated_linear_rnn(u, h0, config.use_tied_gates, config.reversed)  # gates fused
    elif mode == "parallel":
        candidate, i, f, o = _split(u, config)
        a, b = f, i * candidate
        if valid is not None:  # padding: identity steps (a = 1, b = 0) inside the one scan
            a, b = torch.where(valid[..., None], a, 1.0), torch.where(valid[..., None], b, 0.0)
        h, final = linear_scan(
            a, b, initial_state=None if initial_state is None else h0, reverse=config.reversed,
            method=method, chunk_size=chunk_size,
        )
        y = _ACTIVATIONS[config.hidden_activation](h) * o
    else:
        refuse_sequence_parallel("gated_linear_rnn's step loop (mode='sequential', or use_true_recurrence=True)",
                                 "use mode='parallel' with use_true_recurrence=False")
        n_time = x.shape[1]
        ys: list[Tensor] = [u.new_empty(0)] * n_time
        final = h0
        for t in range(n_time - 1, -1, -1) if config.reversed else range(n_time):
            ys[t], new = _cell(p, u[:, t], final, config)
            final = new if valid is None else torch.where(valid[:, t, None], new, final)  # padding keeps the state
        y = torch.stack(ys, dim=1) if n_time else u.new_zeros((x.shape[0], 0, config.d_h))
    out = dense(y.to(x.dtype), p["out_proj.kernel"], p["out_proj.bias"])
    if valid is not None:
        out = torch.where(valid[..., None], out, 0.0)
    return out, State(final.to(h0.dtype))


def gated_linear_rnn_step(
    params: Params, x_t: Tensor, state: State | None, *, config: GatedLinearRNNConfig
) -> tuple[Tensor, State]:
    """One step: ``x_t: (B, D_in)``, ``state: State(h=(B, H))`` (``None``: zeros) → ``(y_t: (B, D), State)``."""
    x_t = _check_tensor(x_t, "x_t")
    spec.check_step_input(tuple(x_t.shape), dtype_name(x_t), config)
    y_t, h = step_core(_prepare_params(params, x_t.dtype, config), x_t, _state(state, x_t, config, "state"), config)
    return y_t, State(h)


def step_core(p: Params, x_t: Tensor, h: Tensor, config: GatedLinearRNNConfig) -> tuple[Tensor, Tensor]:
    """:func:`gated_linear_rnn_step` without its checks, for decode loops that checked once: parameters
    already in ``x_t``'s dtype, ``h: (B, H)`` already in the state dtype."""
    u_t = cast(dense(x_t, p["proj.kernel"], p["proj.bias"]), h.dtype)
    y_t, h = _cell(p, u_t, h, config)
    return dense(cast(y_t, x_t.dtype), p["out_proj.kernel"], p["out_proj.bias"]), h


def gated_linear_rnn_initial_state(
    config: GatedLinearRNNConfig, batch_size: int, dtype: torch.dtype | str = torch.float32, device: Any = None
) -> State:
    """``State(h=zeros (B, H))`` in the state dtype for inputs of ``dtype`` (float32 for bf16/f16)."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    return State(torch.zeros((batch_size, config.d_h), dtype=torch_dtype(spec.state_dtype(name)), device=device))


# ---------------------------------------------------------------------------------------------
# nn.Module


def _lecun_normal_(weight: Tensor) -> None:
    """Truncated normal with variance ``1 / fan_in`` (flax ``lecun_normal``); ``weight`` is ``(out, in)``."""
    std = math.sqrt(1.0 / weight.shape[1]) / 0.87962566103423978
    nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)


class GatedLinearRNN(nn.Module):
    """GatedLinearRNN layer (Katsch): ``h_t = f_t ⊙ h_{t-1} + i_t ⊙ input_act(u_in)``, ``y_t = hidden_act(h_t) ⊙ o_t``.

    Constructor: the ``GatedLinearRNNConfig`` fields as keyword arguments, ``remat`` (``torch.utils.checkpoint``
    when gradients are on), ``device``, ``dtype``. Parameters: ``proj`` (``nn.Linear`` D_in → n H, output rows
    ``[input | i | (f) | o]``), ``out_proj`` (H → D) and, with ``use_true_recurrence``, ``recurrent_proj``
    (H → n H, no bias, zero init); ``state_dict`` keys are ``proj.weight``, ``proj.bias``, ``out_proj.weight``,
    ``out_proj.bias``, ``recurrent_proj.weight``.
    """

    def __init__(
        self,
        d_model: int,
        d_h: int,
        d_in: int | None = None,
        *,
        reversed: bool = False,
        input_activation: str = "tanh",
        hidden_activation: str = "tanh",
        gate_activation: str = "sigmoid",
        use_true_recurrence: bool = False,
        use_tied_gates: bool = True,
        batch_first: bool = True,
        remat: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        cfg = GatedLinearRNNConfig(
            d_model=d_model, d_h=d_h, d_in=d_in, reversed=reversed, input_activation=input_activation,
            hidden_activation=hidden_activation, gate_activation=gate_activation,
            use_true_recurrence=use_true_recurrence, use_tied_gates=use_tied_gates,
        )
        spec.check_batch_first(batch_first)
        self._cfg = cfg
        self.batch_first = batch_first
        self.remat = remat
        width = cfg.n_blocks * cfg.d_h
        self.proj = nn.Linear(cfg.d_in, width, device=device, dtype=dtype)
        self.out_proj = nn.Linear(cfg.d_h, cfg.d_model, device=device, dtype=dtype)
        self.recurrent_proj = (
            nn.Linear(cfg.d_h, width, bias=False, device=device, dtype=dtype) if cfg.use_true_recurrence else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Spec initialisers: kernels lecun_normal, biases zero, ``recurrent_proj`` zero."""
        for linear in (self.proj, self.out_proj):
            _lecun_normal_(linear.weight)
            nn.init.zeros_(linear.bias)
        if self.recurrent_proj is not None:
            nn.init.zeros_(self.recurrent_proj.weight)

    @property
    def config(self) -> GatedLinearRNNConfig:
        return self._cfg

    def _params(self) -> dict[str, Tensor]:
        params = {
            "proj.kernel": self.proj.weight.T,
            "proj.bias": self.proj.bias,
            "out_proj.kernel": self.out_proj.weight.T,
            "out_proj.bias": self.out_proj.bias,
        }
        if self.recurrent_proj is not None:
            params["recurrent_proj.kernel"] = self.recurrent_proj.weight.T
        return params

    def forward(
        self,
        x: Tensor,
        initial_state: State | None = None,
        *,
        lengths: Tensor | None = None,
        mode: str = "auto",
        method: str = "auto",
        chunk_size: int | None = None,
    ) -> tuple[Tensor, State]:
        """``x: (B, T, D_in)`` (``(T, B, D_in)`` with ``batch_first=False``), ``initial_state: State(h=(B, H))``
        → ``(y: (B, T, D) or (T, B, D), final_state: State(h=(B, H)))``; ``lengths: (B,)`` right padding."""
        x = _check_tensor(x, "x")
        if x.dim() != 3:
            layout = "(B, T, d_in)" if self.batch_first else "(T, B, d_in) (batch_first=False)"
            raise ValueError(f"x must have shape {layout}, got shape {tuple(x.shape)}")

        def call(x: Tensor, state: State | None, lengths: Tensor | None) -> tuple[Tensor, State]:
            return gated_linear_rnn(self._params(), x, config=self._cfg, initial_state=state, lengths=lengths,
                                    mode=mode, method=method, chunk_size=chunk_size)

        x = x if self.batch_first else x.transpose(0, 1)
        if self.remat and torch.is_grad_enabled():
            y, state = checkpoint(call, x, initial_state, lengths, use_reentrant=False)
        else:
            y, state = call(x, initial_state, lengths)
        return (y if self.batch_first else y.transpose(0, 1)), state

    def step(self, x_t: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``x_t: (B, D_in)``, ``state: State(h=(B, H))`` (``None``: zeros) → ``(y_t: (B, D), State)``."""
        return gated_linear_rnn_step(self._params(), x_t, state, config=self._cfg)

    def decoder(self, compile: bool = False, fused: bool | None = None):
        """``decode(x_t (B, D_in), state) -> (y_t, State)``: :meth:`step` with the parameters gathered once, for token
        loops, without autograd. Build it again after changing the parameters.

        ``fused`` (as the LMs' ``decoder``): float32 steps as one call into the native library (``native_decode``);
        ``None``: where it can, ``True``: raise saying why where it cannot, ``False``: never. Otherwise, at batch
        sizes up to ``native.dense.MAX_ROWS`` the float32 dense products run on the native kernel. Both read kernels
        packed here once (a copy of those weights; results within the float32 tolerance of :meth:`step`).
        ``compile=True`` runs that framework step as one ``torch.compile(fullgraph=True)`` graph (the first call
        compiles; the twin of the JAX default)."""
        cfg = self._cfg
        packed = pack_kernels(self._params())
        framework = layer_decoder(lambda p, x_t, state: gated_linear_rnn_step(p, x_t, state, config=cfg), packed,
                                  compile)

        def checked(x_t: Tensor, state: Any) -> tuple[Tensor, Tensor]:
            x_t = _check_tensor(x_t, "x_t")
            spec.check_step_input(tuple(x_t.shape), dtype_name(x_t), cfg)
            return x_t, _state(state, x_t, cfg, "state")

        native_step = native_decode.decoder_step(native_decode.gated_linear_rnn_step, packed, cfg, fused)
        return native_decode.layer_decoder(framework, native_step, checked, fused)

    def initial_state(self, batch_size: int) -> State:
        """``State(h=zeros (B, H))`` in the state dtype for this module's parameter dtype."""
        weight = self.proj.weight
        return gated_linear_rnn_initial_state(self._cfg, batch_size, weight.dtype, weight.device)

    @classmethod
    def from_canonical(
        cls, config: GatedLinearRNNConfig, params: Mapping[str, Any], *, device: Any = None,
        dtype: torch.dtype | None = None, remat: bool = False, batch_first: bool = True,
    ):
        """A module holding ``params`` (canonical names, dense ``(in, out)`` layout; NumPy arrays or tensors)."""
        if not isinstance(config, GatedLinearRNNConfig):
            raise TypeError(f"config must be a GatedLinearRNNConfig, got {type(config).__name__}")
        tensors = {k: v if isinstance(v, Tensor) else asarray(np.asarray(v)) for k, v in params.items()}
        spec.check_params({k: tuple(v.shape) for k, v in tensors.items()}, config)
        dtype = dtype or tensors["proj.kernel"].dtype
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        module = cls(**fields, batch_first=batch_first, remat=remat, device=device, dtype=dtype)
        with torch.no_grad():
            module.proj.weight.copy_(tensors["proj.kernel"].T)
            module.proj.bias.copy_(tensors["proj.bias"])
            module.out_proj.weight.copy_(tensors["out_proj.kernel"].T)
            module.out_proj.bias.copy_(tensors["out_proj.bias"])
            if module.recurrent_proj is not None:
                module.recurrent_proj.weight.copy_(tensors["recurrent_proj.kernel"].T)
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """Canonical name → NumPy array (``proj.kernel = proj.weight.T``)."""
        return {k: np.ascontiguousarray(to_numpy(v)) for k, v in self._params().items()}


class GateLoop(GatedLinearRNN):
    """GateLoop (Katsch): the same layer under the name of the original that has ``reversed``.

    ``reversed=True`` runs the recurrence from the last step to the first (``linear_scan(reverse=True)``);
    the returned state is then the state after the reversed pass (at ``t = 0``).
    """
