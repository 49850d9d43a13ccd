"""Multi-head outer-product GateLoop in PyTorch: pure functions and an ``nn.Module`` (``spec/gateloop_mh.md``).

Shape legend: ``B`` batch, ``T`` time, ``D`` d_model, ``H`` heads, ``K`` d_key, ``V`` d_value,
``R`` gate rows per head (``K`` or 1), ``C`` chunk size.

Per head ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t``. ``mode="parallel"`` is one ``linear_scan(a:
(B,T,H,R,1), k⊗v: (B,T,H,K,V))``; ``method="triton"`` is the fused Triton kernel (``triton_gateloop_mh``: ``S`` in
registers, ``k⊗v`` never in memory; interpreted on CPU); ``method="chunked"`` scans chunk by chunk carrying only
``S``, each chunk under ``torch.utils.checkpoint`` when gradients are recorded, so the backward pass recomputes one
chunk's states at a time; ``mode="sequential"`` is the step loop. The pure functions take canonical parameters
(kernels ``(in, out)``); the module stores ``nn.Linear`` weights (``(out, in)``) and passes their transposes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from linrec.backends.native import dense as native_dense_kernel
from linrec.backends.native.decode import gateloop_mh_refusal
from linrec.backends.torch import native_decode
from linrec.backends.torch import native_gateloop_mh as _native
from linrec.backends.torch.arrays import cast, dtype_name, to_numpy, torch_dtype
from linrec.backends.torch.dense import dense
from linrec.backends.torch.native_dense import layer_decoder, pack_kernels
from linrec.backends.torch.scan import linear_scan, refuse_sequence_parallel
from linrec.backends.torch.triton_gateloop_mh import triton_gateloop_mh
from linrec.spec import gateloop_mh as spec
from linrec.spec.gateloop_mh import GateLoopMHConfig
from linrec.spec.state import State

__all__ = ["GateLoopMH", "gateloop_mh", "gateloop_mh_initial_state", "gateloop_mh_step"]

#: The most rows ``GateLoopMH.decoder()`` sends to the native program by default when the state is complex (the
#: twin of the JAX backend's, where it is 1: torch hands the program its complex state as it is stored).
COMPLEX_STATE_NATIVE_ROWS = native_dense_kernel.MAX_ROWS


# ---------------------------------------------------------------- pieces shared by every path


def _dense(params: Mapping[str, Tensor], name: str, x: Tensor) -> Tensor:
    return dense(x, params[f"{name}.kernel"], params.get(f"{name}.bias"))


_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def _real_dtype(sdt: torch.dtype) -> torch.dtype:
    return _REAL.get(sdt, sdt)


def _project(params: Mapping[str, Tensor], x: Tensor, config: GateLoopMHConfig, sdt: torch.dtype):
    """``x: (..., D)`` -> ``q, k: (..., H, K)``, ``v: (..., H, V)`` in the state's real dtype, ``a: (..., H, R, 1)``."""
    lead, h, r = x.shape[:-1], config.num_heads, config.gate_rows
    real = _real_dtype(sdt)
    q = cast(_dense(params, "q_proj", x).reshape(*lead, h, config.d_key), real)
    k = cast(_dense(params, "k_proj", x).reshape(*lead, h, config.d_key), real)
    v = cast(_dense(params, "v_proj", x).reshape(*lead, h, config.d_value), real)
    if config.is_complex and config.gate_parametrization == "cartesian":
        a = _cartesian_gate(cast(_dense(params, "a_re_proj", x), real), cast(_dense(params, "a_im_proj", x), real))
    elif config.is_complex:
        mag = torch.sigmoid(cast(_dense(params, "a_mag_proj", x), real))
        phase = cast(_dense(params, "a_phase_proj", x), real)
        if config.phase_activation == "relu":
            phase = torch.relu(phase)
        a = torch.polar(mag, phase)
    else:
        a = torch.sigmoid(cast(_dense(params, "a_proj", x), real))
    return q, k, v, a.reshape(*lead, h, r, 1)


def _cartesian_gate(re: Tensor, im: Tensor) -> Tensor:
    """``σ(|z|) · z/|z|`` (``z/|z| := 1`` at ``z = 0``, gradient 0 there): ``gateloop_mh.md`` §2."""
    sq = re * re + im * im
    nonzero = sq > 0
    r = torch.where(nonzero, torch.sqrt(torch.where(nonzero, sq, torch.ones_like(sq))), torch.zeros_like(sq))
    safe = torch.where(nonzero, r, torch.ones_like(r))
    scale = torch.sigmoid(r) / safe
    return torch.complex(torch.where(nonzero, re * scale, torch.sigmoid(r)), torch.where(nonzero, im * scale, 0.0))


def _input_norm(x: Tensor, config: GateLoopMHConfig) -> Tensor:
    """``x̃ = x / max(‖x‖₂, 1e-12) · √D`` (``input_norm="rms"``), in at least float32, returned in x's dtype."""
    if config.input_norm == "none":
        return x
    z = cast(x, torch.promote_types(x.dtype, torch.float32))
    z = torch.nn.functional.normalize(z, dim=-1, eps=spec.RMS_EPS) * config.d_model**0.5
    return cast(z, x.dtype)


def _read_out(params: Mapping[str, Tensor], o: Tensor, x_dtype: torch.dtype, config: GateLoopMHConfig,
              xn: Tensor) -> Tensor:
    """``o: (..., H, V)`` in the state dtype -> ``y: (..., D)`` (§2 output convention, ``sub_norm``, the output gate
    on ``xn: (..., D)``, then ``out_proj``)."""
    width = config.num_heads * config.d_value
    if config.is_complex and config.complex_output == "complex":
        u = o.reshape(*o.shape[:-2], width)
        return u @ cast(params["out_proj.kernel"], u.dtype) + cast(params["out_proj.bias"], u.dtype)
    u = o.real if config.is_complex else o
    u = u.reshape(*u.shape[:-2], width)
    if config.sub_norm == "layernorm":  # in the state's real dtype, before the one rounding to x's dtype
        u = torch.nn.functional.layer_norm(u, (width,), cast(params["sub_norm.scale"], u.dtype),
                                           cast(params["sub_norm.bias"], u.dtype), eps=spec.SUB_NORM_EPS)
    if config.output_gate == "silu":
        u = u * torch.nn.functional.silu(cast(_dense(params, "output_gate_proj", xn), u.dtype))
    return _dense(params, "out_proj", cast(u, x_dtype))  # rounded once to x's dtype


def _outer(k: Tensor, v: Tensor, sdt: torch.dtype) -> Tensor:
    return cast(k.unsqueeze(-1) * v.unsqueeze(-2), sdt)


def _scan_part(q: Tensor, k: Tensor, v: Tensor, a: Tensor, state: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """Scan the time axis of the given slices from ``state``: ``-> (o: (B, t, H, V), final S)``."""
    h, state = linear_scan(a, _outer(k, v, state.dtype), initial_state=state, method=method)
    if h.shape[-2] == 1:  # one key row (SISO heads): o = q h elementwise, not einsum's batch of 1x1 products
        return h.squeeze(-2) * q.to(h.dtype), state
    return torch.einsum("bthkv,bthk->bthv", h, q.to(h.dtype)), state


def _chunked(q: Tensor, k: Tensor, v: Tensor, a: Tensor, state: Tensor, method: str, size: int):
    """The memory-lean path (§6): one chunk's states at a time, recomputed in the backward pass."""
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, a, state))
    outs = []
    for start in range(0, q.shape[1], size):
        part = (q[:, start:start + size], k[:, start:start + size], v[:, start:start + size],
                a[:, start:start + size])
        if recompute:
            o, state = checkpoint(_scan_part, *part, state, method, use_reentrant=False)
        else:
            o, state = _scan_part(*part, state, method)
        outs.append(o)
    o = torch.cat(outs, 1) if outs else q.new_zeros((*q.shape[:2], q.shape[2], v.shape[-1])).to(state.dtype)
    return o, state


def _prepare(params, x: Tensor, state, config: GateLoopMHConfig, *, ndim: int, state_name: str):
    x, state = checked_inputs(x, state, config, ndim=ndim, state_name=state_name, params=params)
    params = {name: cast(p, x.dtype) for name, p in params.items()}
    return params, x, state


def checked_inputs(x: Tensor, state, config: GateLoopMHConfig, *, ndim: int, state_name: str,
                   params: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """``x`` (``ndim`` axes) checked, then ``params`` (if given), and the state ``S (B, H, K, V)`` in the state
    dtype (zeros for ``None``)."""
    spec.check_x(config, tuple(x.shape), dtype_name(x), ndim=ndim, name="x" if ndim == 3 else "x_t")
    if params is not None:
        spec.check_params(config, {name: tuple(p.shape) for name, p in params.items()})
    sdt = torch_dtype(spec.state_dtype(config, dtype_name(x)))
    state = spec.state_h(state, name=state_name)
    if state is None:
        state = torch.zeros(spec.state_shape(config, x.shape[0]), dtype=sdt, device=x.device)
    else:
        if not isinstance(state, Tensor):
            raise TypeError(f"gateloop_mh: {state_name}.h must be a torch.Tensor, got {type(state).__name__}")
        spec.check_state(config, x.shape[0], tuple(state.shape), dtype_name(state), dtype_name(x),
                         name=f"{state_name}.h")
        state = cast(state, sdt)
    return x, state


def _step(params, x_t: Tensor, state: Tensor, config: GateLoopMHConfig) -> tuple[Tensor, Tensor]:
    xn = _input_norm(x_t, config)
    q, k, v, a = _project(params, xn, config, state.dtype)
    state = torch.addcmul(_outer(k, v, state.dtype), a, state)  # rows of S decayed by a, plus k v^T
    # o = q S as a product and a sum over K: two dispatched operations where einsum's parser costs ~10 µs; for a
    # real read-out of a complex state Re(Sᵀq) = Re(S)ᵀq (q is real), a real product
    if config.is_complex and config.complex_output == "real":
        o = (q.unsqueeze(-1) * state.real).sum(-2)
    else:
        o = (cast(q, state.dtype).unsqueeze(-1) * state).sum(-2)
    return _read_out(params, o, x_t.dtype, config, xn), state


def _core(params, x: Tensor, state: Tensor, valid: Tensor | None, config: GateLoopMHConfig, mode: str, method: str,
          size: int):
    """``(y, final S)`` on checked inputs; ``valid: (B, T)`` marks real inputs (``None``: all)."""
    y, state = _layer(params, x, state, valid, config, mode, method, size)
    if valid is not None:  # outputs at padded positions are zero
        y = torch.where(valid[..., None], y, 0.0)
    return y, state


def _layer(params, x: Tensor, state: Tensor, valid: Tensor | None, config: GateLoopMHConfig, mode: str,
           method: str, size: int):
    if mode == "sequential":
        refuse_sequence_parallel("gateloop_mh(mode='sequential'), the step loop,", "use mode='parallel'")
        ys = []
        for t in range(x.shape[1]):
            y_t, new = _step(params, x[:, t], state, config)
            state = new if valid is None else torch.where(valid[:, t, None, None, None], new, state)
            ys.append(y_t)
        if ys:
            return torch.stack(ys, 1), state
        empty = torch.zeros((x.shape[0], 0, config.num_heads, config.d_value), dtype=state.dtype, device=x.device)
        return _read_out(params, empty, x.dtype, config, x), state
    xn = _input_norm(x, config)
    q, k, v, a = _project(params, xn, config, state.dtype)
    if valid is not None:  # padding: identity steps (a = 1, k ⊗ v = 0) inside the scan
        a = torch.where(valid[:, :, None, None, None], a, torch.ones((), dtype=a.dtype, device=a.device))
        k = torch.where(valid[:, :, None, None], k, 0.0)
    if method == "chunked":  # the memory-lean path (§6): chunks scanned by the backend's default method
        refuse_sequence_parallel("gateloop_mh(method='chunked'), the memory-lean path,",
                                 "use method='auto' (or 'associative', 'sequential')")
        o, state = _chunked(q, k, v, a, state, "auto", size)
    elif method == "triton":  # the chunked kernel: intra-chunk scores, inter-chunk S; no k ⊗ v or states in memory
        refuse_sequence_parallel("gateloop_mh(method='triton'), the fused Triton kernel,",
                                 "use method='auto' (or 'associative', 'sequential')")
        o, state = triton_gateloop_mh(q, k, v, a, state, size)  # chunks of config.chunk_size: its checkpoints
    elif _native.applies(q, v, method):  # the state kept in the kernel: no k ⊗ v or per-step states in memory
        o, state = _native.native_gateloop_mh(q, k, v, a, state, config.complex_output == "real")
    else:
        o, state = _scan_part(q, k, v, a, state, method)
    return _read_out(params, o, x.dtype, config, xn), state


# ---------------------------------------------------------------- pure functions


def gateloop_mh(
    params: Mapping[str, Tensor],
    x: Tensor,
    *,
    config: GateLoopMHConfig,
    initial_state: State | None = None,
    lengths: Tensor | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
    remat: bool = False,
) -> tuple[Tensor, State]:
    """The layer over a sequence.

    Args:
      params: canonical name -> tensor (kernels ``(in, out)``); cast to ``x``'s dtype.
      x: ``(B, T, D)`` real floating.
      initial_state: ``State(h=(B, H, K, V))`` or ``None`` (zeros).
      lengths: ``(B,)`` right-padded rows (recurrence.md §0): padded positions are identity steps of the scan
        (``a = 1``, ``k ⊗ v = 0``), their outputs zero.
      mode: ``"auto"`` (= ``"parallel"``), ``"parallel"`` or ``"sequential"`` (step loop).
      method: scan method of the parallel mode (recurrence.md §7); ``"chunked"`` is the memory-lean path (§6);
        ``"triton"`` the chunked Triton kernel (intra-chunk attention-like product plus inter-chunk state, chunks
        of ``config.chunk_size`` steps, one state kept per chunk; interpreted on CPU tensors).
      chunk_size: steps per chunk for ``method="chunked"`` (default ``config.chunk_size``).
      remat: recompute the whole layer in the backward pass (``torch.utils.checkpoint``) instead of storing it.

    Returns:
      ``y: (B, T, D)`` and ``final_state``: ``State(h=(B, H, K, V))``.
    """
    mode = spec.check_mode(mode, method, chunk_size)
    if not isinstance(x, Tensor):
        raise TypeError(f"gateloop_mh: x must be a torch.Tensor, got {type(x).__name__}")
    params, x, state = _prepare(params, x, initial_state, config, ndim=3, state_name="initial_state")
    valid = None
    if lengths is not None:
        if not isinstance(lengths, Tensor):
            raise TypeError(f"gateloop_mh: lengths must be a torch.Tensor, got {type(lengths).__name__}")
        values = None if torch.compiler.is_compiling() else to_numpy(lengths)
        spec.check_lengths(tuple(lengths.shape), dtype_name(lengths), x.shape[0], x.shape[1], values, method=method)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
    size = chunk_size or config.chunk_size
    if remat and torch.is_grad_enabled():
        names = list(params)

        def run(x, state, valid, *values):
            return _core(dict(zip(names, values)), x, state, valid, config, mode, method, size)

        y, state = checkpoint(run, x, state, valid, *params.values(), use_reentrant=False)
    else:
        y, state = _core(params, x, state, valid, config, mode, method, size)
    return y, State(state)


def gateloop_mh_step(
    params: Mapping[str, Tensor], x_t: Tensor, state: State | None, *, config: GateLoopMHConfig
) -> tuple[Tensor, State]:
    """One step: ``x_t: (B, D)``, ``state: State(h=(B, H, K, V))`` (``None``: zeros) -> ``(y_t: (B, D), State)``."""
    params, x_t, state = _prepare(params, x_t, state, config, ndim=2, state_name="state")
    y_t, state = _step(params, x_t, state, config)
    return y_t, State(state)


def gateloop_mh_initial_state(
    config: GateLoopMHConfig, batch_size: int, dtype: str | torch.dtype = "float32", device=None
) -> State:
    """``State(h=zeros (B, H, K, V))`` in the state dtype for inputs of ``dtype`` (``gateloop_mh.md`` §3)."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    return State(torch.zeros(spec.state_shape(config, batch_size),
                             dtype=torch_dtype(spec.state_dtype(config, name)), device=device))


# ---------------------------------------------------------------- the module


def _lecun_normal_(weight: Tensor) -> None:
    """Flax ``lecun_normal`` on a torch ``(out, in)`` weight: truncated at ±2σ, variance ``1/in`` after truncation."""
    std = (1.0 / weight.shape[1]) ** 0.5 / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class GateLoopMH(nn.Module):
    """Multi-head outer-product GateLoop layer (PyTorch).

    ``forward(x: (B, T, D), initial_state: State | None, *, lengths=None) -> (y: (B, T, D), final_state: State)``
    (``(T, B, D)`` in and out with ``batch_first=False``); the state is ``State(h=(B, H, K, V))``.
    Submodules ``q_proj``, ``k_proj``, ``v_proj``, ``a_proj`` (real) or ``a_mag_proj``/``a_phase_proj`` (complex;
    ``a_re_proj``/``a_im_proj`` with ``gate_parametrization="cartesian"``), ``output_gate_proj`` (``output_gate``),
    ``out_proj`` are ``nn.Linear``; ``sub_norm`` (``sub_norm="layernorm"``) is an ``nn.LayerNorm``
    (``state_dict`` keys ``q_proj.weight``, ...; ``weight`` is the canonical
    ``kernel`` transposed). ``remat=True`` recomputes the layer in the backward pass.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 1,
        d_key: int | None = None,
        d_value: int | None = None,
        *,
        gate: str = "real",
        gate_granularity: str = "key",
        phase_activation: str = "identity",
        complex_output: str = "real",
        qkv_bias: bool = False,
        chunk_size: int = 64,
        gate_parametrization: str = "mag_phase",
        input_norm: str = "none",
        sub_norm: str = "none",
        output_gate: str = "none",
        batch_first: bool = True,
        remat: bool = False,
        device=None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        cfg = GateLoopMHConfig(
            d_model=d_model, num_heads=num_heads, d_key=d_key, d_value=d_value, gate=gate,
            gate_granularity=gate_granularity, phase_activation=phase_activation, complex_output=complex_output,
            qkv_bias=qkv_bias, chunk_size=chunk_size, gate_parametrization=gate_parametrization,
            input_norm=input_norm, sub_norm=sub_norm, output_gate=output_gate,
        )
        spec.check_batch_first(batch_first)
        self._config = cfg
        self.batch_first = batch_first
        self.remat = remat
        shapes = spec.param_shapes(cfg)
        for name in self._linear_names():
            d_in, d_out = shapes[f"{name}.kernel"]
            setattr(self, name, nn.Linear(d_in, d_out, bias=f"{name}.bias" in shapes, device=device, dtype=dtype))
        if cfg.sub_norm == "layernorm":
            self.sub_norm = nn.LayerNorm(cfg.num_heads * cfg.d_value, eps=spec.SUB_NORM_EPS, device=device,
                                         dtype=dtype)
        self.reset_parameters()

    def _linear_names(self) -> tuple[str, ...]:
        gate = ("output_gate_proj",) if self._config.output_gate != "none" else ()
        return ("q_proj", "k_proj", "v_proj", *self._config.gate_names, *gate, "out_proj")

    def _linears(self) -> dict[str, nn.Linear]:
        return {name: getattr(self, name) for name in self._linear_names()}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The initialisers of ``gateloop_mh.md`` §5 (same distributions as ``spec.init_params``)."""
        decay_bias = torch.as_tensor(spec.gate_bias_init(self._config))
        for name, lin in self._linears().items():
            _lecun_normal_(lin.weight)
            if lin.bias is not None:
                lin.bias.copy_(decay_bias if name in ("a_proj", "a_mag_proj", "a_re_proj")
                               else torch.zeros_like(lin.bias))
        if self._config.sub_norm == "layernorm":
            self.sub_norm.reset_parameters()

    @property
    def config(self) -> GateLoopMHConfig:
        return self._config

    def _params(self) -> dict[str, Tensor]:
        params = {}
        for name, lin in self._linears().items():
            params[f"{name}.kernel"] = lin.weight.t()
            if lin.bias is not None:
                params[f"{name}.bias"] = lin.bias
        if self._config.sub_norm == "layernorm":
            params["sub_norm.scale"], params["sub_norm.bias"] = self.sub_norm.weight, self.sub_norm.bias
        return params

    def forward(
        self, x: Tensor, initial_state: State | None = None, *, lengths: Tensor | None = None, mode: str = "auto",
        method: str = "auto", chunk_size: int | None = None,
    ) -> tuple[Tensor, State]:
        """``x: (B, T, D)`` (``(T, B, D)`` with ``batch_first=False``) -> ``(y: same layout, final_state: State)``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"gateloop_mh: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            layout = "(B, T, d_model)" if self.batch_first else "(T, B, d_model) (batch_first=False)"
            raise ValueError(f"gateloop_mh: x must have shape {layout}, got shape {tuple(x.shape)}")
        x = x if self.batch_first else x.transpose(0, 1)
        y, state = gateloop_mh(self._params(), x, config=self._config, initial_state=initial_state, lengths=lengths,
                               mode=mode, method=method, chunk_size=chunk_size, remat=self.remat)
        return (y if self.batch_first else y.transpose(0, 1)), state

    def step(self, x_t: Tensor, state: State | None) -> tuple[Tensor, State]:
        """``x_t: (B, D)``, ``state: State(h=(B, H, K, V))`` -> ``(y_t: (B, D), State)``."""
        return gateloop_mh_step(self._params(), x_t, state, config=self._config)

    def decoder(self, compile: bool = False, fused: bool | None = None):
        """``decode(x_t (B, D), state) -> (y_t, State)``: :meth:`step` with the parameters gathered once, for token
        loops, without autograd. Build it again after changing the parameters.

        ``fused`` (as the other layers'): float32 steps as one call into the native library (``native_decode``:
        every projection in one product, the heads' state update and read-out, ``sub_norm``, the output gate and
        ``out_proj``; not for ``input_norm="rms"`` or a complex output); ``None``: where it can, up to
        ``native.dense.MAX_ROWS`` rows, ``True``: raise saying why where it cannot, ``False``: never. Otherwise,
        at batch sizes up to ``native.dense.MAX_ROWS`` the float32 dense products run on the native kernel. Both read
        weights copied and packed here once (results within the float32 tolerance of :meth:`step`).
        ``compile=True`` runs that framework step as one ``torch.compile(fullgraph=True)`` graph (the first call
        compiles; the twin of the JAX default)."""
        cfg = self._config
        params = self._params()
        framework = layer_decoder(lambda p, x_t, state: gateloop_mh_step(p, x_t, state, config=cfg), params,
                                  compile)
        native_step = native_decode.decoder_step(native_decode.gateloop_mh_step, pack_kernels(params), cfg, fused,
                                                 gateloop_mh_refusal)

        def checked(x_t: Tensor, state) -> tuple[Tensor, Tensor]:
            return checked_inputs(x_t, state, cfg, ndim=2, state_name="state")

        # up to MAX_ROWS the program beats the framework step for a real and a complex state alike (D=512 at 32 rows:
        # SISO heads 597 against 723 us/token, 64 complex heads of 8x8 654 against 1181)
        rows = COMPLEX_STATE_NATIVE_ROWS if cfg.is_complex else native_dense_kernel.MAX_ROWS
        return native_decode.layer_decoder(framework, native_step, checked, fused, native_rows=rows)

    def initial_state(self, batch_size: int, dtype: torch.dtype | None = None) -> State:
        """``State(h=zeros (B, H, K, V))`` in the state dtype for inputs of ``dtype`` (default: the parameters')."""
        weight = self.q_proj.weight
        return gateloop_mh_initial_state(self._config, batch_size, dtype or weight.dtype, device=weight.device)

    @classmethod
    def from_canonical(
        cls, config: GateLoopMHConfig, params: Mapping[str, np.ndarray], *, dtype: torch.dtype | None = None,
        device=None, remat: bool = False, batch_first: bool = True,
    ) -> GateLoopMH:
        """Build a module holding ``params`` (canonical names, kernels ``(in, out)``; dtype theirs unless given)."""
        spec.check_params(config, {name: tuple(np.shape(p)) for name, p in params.items()})
        values = {name: torch.as_tensor(np.asarray(p)) for name, p in params.items()}
        dtype = dtype or next(iter(values.values())).dtype
        module = cls(
            config.d_model, config.num_heads, config.d_key, config.d_value, gate=config.gate,
            gate_granularity=config.gate_granularity, phase_activation=config.phase_activation,
            complex_output=config.complex_output, qkv_bias=config.qkv_bias, chunk_size=config.chunk_size,
            gate_parametrization=config.gate_parametrization, input_norm=config.input_norm,
            sub_norm=config.sub_norm, output_gate=config.output_gate, batch_first=batch_first,
            remat=remat, device=device, dtype=dtype,
        )
        with torch.no_grad():
            for name, lin in module._linears().items():
                lin.weight.copy_(values[f"{name}.kernel"].t())
                if lin.bias is not None:
                    lin.bias.copy_(values[f"{name}.bias"])
            if config.sub_norm == "layernorm":
                module.sub_norm.weight.copy_(values["sub_norm.scale"])
                module.sub_norm.bias.copy_(values["sub_norm.bias"])
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """Canonical name -> NumPy array (kernels ``(in, out)``)."""
        return {name: p.detach().cpu().numpy().copy() for name, p in self._params().items()}
