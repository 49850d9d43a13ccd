"""Multi-head outer-product GateLoop in PyTorch: pure functions and an ``nn.Module`` (``spec/gateloop_mh.md``).

Shape legend: ``B`` batch, ``T`` time, ``D`` d_model, ``H`` heads, ``K`` d_key, ``V`` d_value,
``R`` gate rows per head (``K`` or 1), ``C`` chunk size.

Per head ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t``. ``mode="parallel"`` is one
``linear_scan(a: (B,T,H,R,1), k⊗v: (B,T,H,K,V))``; ``mode="chunked"`` scans chunk by chunk carrying only ``S``, each
chunk under ``torch.utils.checkpoint`` when gradients are recorded, so the backward pass recomputes one chunk's
states at a time; ``mode="sequential"`` is the step loop. The pure functions take canonical parameters
(kernels ``(in, out)``); the module stores ``nn.Linear`` weights (``(out, in)``) and passes their transposes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from linrec.backends.torch.arrays import cast, dtype_name, torch_dtype
from linrec.backends.torch.dense import dense
from linrec.backends.torch.scan import linear_scan
from linrec.spec import gateloop_mh as spec
from linrec.spec.gateloop_mh import GateLoopMHConfig

__all__ = ["GateLoopMH", "gateloop_mh", "gateloop_mh_initial_state", "gateloop_mh_step"]


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
    if config.is_complex:
        mag = torch.sigmoid(cast(_dense(params, "a_mag_proj", x), real))
        phase = cast(_dense(params, "a_phase_proj", x), real)
        if config.phase_activation == "relu":
            phase = torch.relu(phase)
        a = torch.polar(mag, phase)
    else:
        a = torch.sigmoid(cast(_dense(params, "a_proj", x), real))
    return q, k, v, a.reshape(*lead, h, r, 1)


def _read_out(params: Mapping[str, Tensor], o: Tensor, x_dtype: torch.dtype, config: GateLoopMHConfig) -> Tensor:
    """``o: (..., H, V)`` in the state dtype -> ``y: (..., D)`` (§2 output convention, then ``out_proj``)."""
    width = config.num_heads * config.d_value
    if config.is_complex and config.complex_output == "complex":
        u = o.reshape(*o.shape[:-2], width)
        return u @ cast(params["out_proj.kernel"], u.dtype) + cast(params["out_proj.bias"], u.dtype)
    u = cast(o.real if config.is_complex else o, x_dtype)  # rounded once to x's dtype
    return _dense(params, "out_proj", u.reshape(*u.shape[:-2], width))


def _outer(k: Tensor, v: Tensor, sdt: torch.dtype) -> Tensor:
    return cast(k.unsqueeze(-1) * v.unsqueeze(-2), sdt)


def _scan_part(q: Tensor, k: Tensor, v: Tensor, a: Tensor, state: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """Scan the time axis of the given slices from ``state``: ``-> (o: (B, t, H, V), final S)``."""
    h, state = linear_scan(a, _outer(k, v, state.dtype), initial_state=state, method=method)
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
    spec.check_x(config, tuple(x.shape), dtype_name(x), ndim=ndim, name="x" if ndim == 3 else "x_t")
    spec.check_params(config, {name: tuple(p.shape) for name, p in params.items()})
    sdt = torch_dtype(spec.state_dtype(config, dtype_name(x)))
    if state is None:
        state = torch.zeros(spec.state_shape(config, x.shape[0]), dtype=sdt, device=x.device)
    else:
        spec.check_state(config, x.shape[0], tuple(state.shape), dtype_name(state), dtype_name(x), name=state_name)
        state = cast(state, sdt)
    params = {name: cast(p, x.dtype) for name, p in params.items()}
    return params, x, state


def _step(params, x_t: Tensor, state: Tensor, config: GateLoopMHConfig) -> tuple[Tensor, Tensor]:
    q, k, v, a = _project(params, x_t, config, state.dtype)
    state = torch.addcmul(_outer(k, v, state.dtype), a, state)  # rows of S decayed by a, plus k v^T
    # o = q S as a product and a sum over K: two dispatched operations where einsum's parser costs ~10 µs
    o = (cast(q, state.dtype).unsqueeze(-1) * state).sum(-2)
    return _read_out(params, o, x_t.dtype, config), state


def _core(params, x: Tensor, state: Tensor, config: GateLoopMHConfig, mode: str, method: str, size: int):
    if mode == "sequential":
        ys = []
        for t in range(x.shape[1]):
            y_t, state = _step(params, x[:, t], state, config)
            ys.append(y_t)
        if ys:
            return torch.stack(ys, 1), state
        empty = torch.zeros((x.shape[0], 0, config.num_heads, config.d_value), dtype=state.dtype, device=x.device)
        return _read_out(params, empty, x.dtype, config), state
    q, k, v, a = _project(params, x, config, state.dtype)
    if mode == "chunked":
        o, state = _chunked(q, k, v, a, state, method, size)
    else:
        o, state = _scan_part(q, k, v, a, state, method)
    return _read_out(params, o, x.dtype, config), state


# ---------------------------------------------------------------- pure functions


def gateloop_mh(
    params: Mapping[str, Tensor],
    x: Tensor,
    *,
    config: GateLoopMHConfig,
    initial_state: Tensor | None = None,
    mode: str = "parallel",
    method: str = "auto",
    chunk_size: int | None = None,
    remat: bool = False,
) -> tuple[Tensor, Tensor]:
    """The layer over a sequence.

    Args:
      params: canonical name -> tensor (kernels ``(in, out)``); cast to ``x``'s dtype.
      x: ``(B, T, D)`` real floating.
      initial_state: ``(B, H, K, V)`` or ``None`` (zeros).
      mode: ``"parallel"``, ``"chunked"`` (memory-lean, §6) or ``"sequential"`` (step loop).
      method: scan method for ``"parallel"``/``"chunked"`` (recurrence.md §7).
      chunk_size: steps per chunk for ``mode="chunked"`` (default ``config.chunk_size``).
      remat: recompute the whole layer in the backward pass (``torch.utils.checkpoint``) instead of storing it.

    Returns:
      ``y: (B, T, D)`` and ``final_state: (B, H, K, V)``.
    """
    spec.check_mode(mode, method, chunk_size)
    params, x, state = _prepare(params, x, initial_state, config, ndim=3, state_name="initial_state")
    size = chunk_size or config.chunk_size
    if remat and torch.is_grad_enabled():
        names = list(params)

        def run(x, state, *values):
            return _core(dict(zip(names, values)), x, state, config, mode, method, size)

        return checkpoint(run, x, state, *params.values(), use_reentrant=False)
    return _core(params, x, state, config, mode, method, size)


def gateloop_mh_step(
    params: Mapping[str, Tensor], x_t: Tensor, state: Tensor | None, *, config: GateLoopMHConfig
) -> tuple[Tensor, Tensor]:
    """One step: ``x_t: (B, D)``, ``state: (B, H, K, V)`` (``None``: zeros) -> ``(y_t: (B, D), state)``."""
    params, x_t, state = _prepare(params, x_t, state, config, ndim=2, state_name="state")
    return _step(params, x_t, state, config)


def gateloop_mh_initial_state(
    config: GateLoopMHConfig, batch_size: int, dtype: str | torch.dtype = "float32", device=None
) -> Tensor:
    """Zeros ``(B, H, K, V)`` in the state dtype for inputs of ``dtype`` (``gateloop_mh.md`` §3)."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    return torch.zeros(spec.state_shape(config, batch_size), dtype=torch_dtype(spec.state_dtype(config, name)),
                       device=device)


# ---------------------------------------------------------------- the module


def _lecun_normal_(weight: Tensor) -> None:
    """Flax ``lecun_normal`` on a torch ``(out, in)`` weight: truncated at ±2σ, variance ``1/in`` after truncation."""
    std = (1.0 / weight.shape[1]) ** 0.5 / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class GateLoopMH(nn.Module):
    """Multi-head outer-product GateLoop layer (PyTorch).

    ``forward(x: (B, T, D), initial_state: (B, H, K, V) | None) -> (y: (B, T, D), final_state)``.
    Submodules ``q_proj``, ``k_proj``, ``v_proj``, ``a_proj`` (real) or ``a_mag_proj``/``a_phase_proj`` (complex),
    ``out_proj`` are ``nn.Linear`` (``state_dict`` keys ``q_proj.weight``, ...; ``weight`` is the canonical
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
        remat: bool = False,
        device=None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        cfg = GateLoopMHConfig(
            d_model=d_model, num_heads=num_heads, d_key=d_key, d_value=d_value, gate=gate,
            gate_granularity=gate_granularity, phase_activation=phase_activation, complex_output=complex_output,
            qkv_bias=qkv_bias, chunk_size=chunk_size,
        )
        self._config = cfg
        self.remat = remat
        shapes = spec.param_shapes(cfg)
        for name in ("q_proj", "k_proj", "v_proj", *cfg.gate_names, "out_proj"):
            d_in, d_out = shapes[f"{name}.kernel"]
            setattr(self, name, nn.Linear(d_in, d_out, bias=f"{name}.bias" in shapes, device=device, dtype=dtype))
        self.reset_parameters()

    def _linears(self) -> dict[str, nn.Linear]:
        return {name: getattr(self, name) for name in ("q_proj", "k_proj", "v_proj", *self._config.gate_names,
                                                        "out_proj")}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The initialisers of ``gateloop_mh.md`` §5 (same distributions as ``spec.init_params``)."""
        decay_bias = torch.as_tensor(spec.gate_bias_init(self._config))
        for name, lin in self._linears().items():
            _lecun_normal_(lin.weight)
            if lin.bias is not None:
                lin.bias.copy_(decay_bias if name in ("a_proj", "a_mag_proj") else torch.zeros_like(lin.bias))

    @property
    def config(self) -> GateLoopMHConfig:
        return self._config

    def _params(self) -> dict[str, Tensor]:
        params = {}
        for name, lin in self._linears().items():
            params[f"{name}.kernel"] = lin.weight.t()
            if lin.bias is not None:
                params[f"{name}.bias"] = lin.bias
        return params

    def forward(
        self, x: Tensor, initial_state: Tensor | None = None, *, mode: str = "parallel", method: str = "auto",
        chunk_size: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``x: (B, T, D)`` -> ``(y: (B, T, D), final_state: (B, H, K, V))``."""
        return gateloop_mh(self._params(), x, config=self._config, initial_state=initial_state, mode=mode,
                           method=method, chunk_size=chunk_size, remat=self.remat)

    def step(self, x_t: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """``x_t: (B, D)``, ``state: (B, H, K, V)`` -> ``(y_t: (B, D), state)``."""
        return gateloop_mh_step(self._params(), x_t, state, config=self._config)

    def initial_state(self, batch_size: int, dtype: torch.dtype | None = None) -> Tensor:
        """Zeros ``(B, H, K, V)`` in the state dtype for inputs of ``dtype`` (default: the parameters' dtype)."""
        weight = self.q_proj.weight
        return gateloop_mh_initial_state(self._config, batch_size, dtype or weight.dtype, device=weight.device)

    @classmethod
    def from_canonical(
        cls, config: GateLoopMHConfig, params: Mapping[str, np.ndarray], *, dtype: torch.dtype | None = None,
        device=None, remat: bool = False,
    ) -> GateLoopMH:
        """Build a module holding ``params`` (canonical names, kernels ``(in, out)``; dtype theirs unless given)."""
        spec.check_params(config, {name: tuple(np.shape(p)) for name, p in params.items()})
        values = {name: torch.as_tensor(np.asarray(p)) for name, p in params.items()}
        dtype = dtype or next(iter(values.values())).dtype
        module = cls(
            config.d_model, config.num_heads, config.d_key, config.d_value, gate=config.gate,
            gate_granularity=config.gate_granularity, phase_activation=config.phase_activation,
            complex_output=config.complex_output, qkv_bias=config.qkv_bias, chunk_size=config.chunk_size,
            remat=remat, device=device, dtype=dtype,
        )
        with torch.no_grad():
            for name, lin in module._linears().items():
                lin.weight.copy_(values[f"{name}.kernel"].t())
                if lin.bias is not None:
                    lin.bias.copy_(values[f"{name}.bias"])
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """Canonical name -> NumPy array (kernels ``(in, out)``)."""
        return {name: p.detach().cpu().numpy().copy() for name, p in self._params().items()}
