"""minGRU stack for the PyTorch backend (``spec/mingru_stack.md``): pure functions and an ``nn.Module``.

Shape legend: ``B`` batch, ``T`` time, ``I`` input features, ``H_l`` layer ``l``'s features, ``L`` layers.
Each layer runs through the minGRU layer's own functions (``linrec.backends.torch.mingru``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from linrec.backends.torch.arrays import dtype_name, to_numpy, torch_dtype
from linrec.backends.torch.mingru import MinGRU, mingru, mingru_step
from linrec.spec import checks
from linrec.spec import mingru as mingru_spec
from linrec.spec import mingru_stack as spec
from linrec.spec.mingru_stack import MinGRUStackConfig
from linrec.spec.state import State

__all__ = ["MinGRUStack", "mingru_stack", "mingru_stack_initial_state", "mingru_stack_step"]


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _layer_norm(x: Tensor, scale: Tensor, bias: Tensor, eps: float) -> Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * scale.to(x.dtype) + bias.to(x.dtype)


def _layer(p, x, h0, config: MinGRUStackConfig, layer: int, run):
    z = _layer_norm(x, p["norm.scale"], p["norm.bias"], config.norm_eps) if config.norm else x
    y, h = run(spec.sub_params(p, "mingru."), z, h0, config.layer_config(layer))
    if config.residual:
        # the spec's residual branch on parameters cast to the compute dtype
        align = {k: v.to(x.dtype) for k, v in p.items() if k.startswith("res_align.")}
        y = y + spec.residual_branch(align, x, config, layer)
    return y, h.h


def _check_state(name: str, state, config: MinGRUStackConfig, batch: int, x_dtype: str) -> list:
    """One ``State`` per layer (``None``: that layer's default) from the stack's ``State``."""
    given = spec.state_arrays(name, state, config)
    if given is None:
        return [None] * config.num_layers
    tensors = [_as_tensor(h) for h in given]
    spec.check_state(name, config, batch, [tuple(t.shape) for t in tensors], [dtype_name(t) for t in tensors],
                     mingru_spec.state_dtype(x_dtype))
    return [State(t) for t in tensors]


def mingru_stack(
    params: Mapping[str, Tensor],
    x: Tensor,
    *,
    config: MinGRUStackConfig,
    initial_state: State | None = None,
    lengths: Tensor | None = None,
    mode: str = "auto",
    method: str = "auto",
    training: bool = False,
    remat: bool = False,
) -> tuple[Tensor, State]:
    """The stack over ``x (B, T, I)`` -> ``(y (B, T, H_{L-1}), State(h=(h_0 (B, H_0), ..., h_{L-1})))``.

    Args:
      params: canonical parameters (``linrec.spec.mingru_stack.param_shapes``), dense ``(in, out)``.
      x: ``(B, T, I)`` real floating (batch first).
      initial_state: a ``State`` whose ``h`` holds ``L`` tensors ``(B, H_l)`` in the state dtype; ``None``: every
        layer's default state.
      lengths: ``(B,)`` real inputs per row (right padding): padded positions keep every layer's state and
        output zeros. ``None``: no padding.
      mode, method: as for the minGRU layer, applied to every layer.
      training: dropout between layers (``F.dropout``, torch's global generator); off when ``False``.
      remat: recompute each layer in the backward pass (``torch.utils.checkpoint``).
    """
    x = _as_tensor(x)
    spec.check_input("x", tuple(x.shape), 3, config)
    spec.check_params(params, config)
    states = _check_state("initial_state", initial_state, config, x.shape[0], dtype_name(x))
    params = {k: _as_tensor(v) for k, v in params.items()}
    lengths = None if lengths is None else _as_tensor(lengths)
    finals = []
    for layer in range(config.num_layers):
        def run_layer(p, x, h0, lengths, layer=layer):
            return _layer(p, x, h0, config, layer,
                          lambda mp, z, h_in, lcfg: mingru(mp, z, config=lcfg, initial_state=h_in, lengths=lengths,
                                                           mode=mode, method=method))

        p = spec.sub_params(params, f"layers.{layer}.")
        if remat and torch.is_grad_enabled():
            x, h = checkpoint(run_layer, p, x, states[layer], lengths, use_reentrant=False)
        else:
            x, h = run_layer(p, x, states[layer], lengths)
        finals.append(h)
        if layer < config.num_layers - 1 and config.dropout > 0:
            x = F.dropout(x, config.dropout, training=training)
    if lengths is not None:  # a residual carries the (nonzero) input through a padded position: zero it
        mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
        x = torch.where(mask[..., None], x, torch.zeros_like(x))
    return x, State(tuple(finals))


def mingru_stack_step(
    params: Mapping[str, Tensor], x_t: Tensor, state: State | None, *, config: MinGRUStackConfig
) -> tuple[Tensor, State]:
    """One step (evaluation mode): ``x_t (B, I)``, the ``State`` (``None``: default) -> ``(y_t, State)``."""
    x_t = _as_tensor(x_t)
    spec.check_input("x_t", tuple(x_t.shape), 2, config)
    spec.check_params(params, config)
    states = _check_state("state", state, config, x_t.shape[0], dtype_name(x_t))
    params = {k: _as_tensor(v) for k, v in params.items()}
    finals = []
    for layer in range(config.num_layers):
        x_t, h = _layer(spec.sub_params(params, f"layers.{layer}."), x_t, states[layer], config, layer,
                        lambda mp, z, h0, lcfg: mingru_step(mp, z, h0, config=lcfg))
        finals.append(h)
    return x_t, State(tuple(finals))


def mingru_stack_initial_state(config: MinGRUStackConfig, batch_size: int, dtype: Any = torch.float32,
                               device: Any = None) -> State:
    """The default state: ``State(h=...)`` with one ``(B, H_l)`` tensor per layer filled with ``default_state``."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    acc = torch_dtype(mingru_spec.state_dtype(name))
    return State(tuple(torch.full((batch_size, h), config.default_state, dtype=acc, device=device)
                       for h in config.hidden_sizes))


# --- the nn.Module -----------------------------------------------------------------------------------------


class _StackLayer(nn.Module):
    def __init__(self, config: MinGRUStackConfig, layer: int, **factory):
        super().__init__()
        n_in = config.layer_input_size(layer)
        lcfg = config.layer_config(layer)
        self.norm = nn.LayerNorm(n_in, eps=config.norm_eps, **factory) if config.norm else None
        self.mingru = MinGRU(n_in, d_inner=lcfg.d_inner, bias=lcfg.bias, candidate=lcfg.candidate,
                             default_state=lcfg.default_state, **factory)
        self.res_align = (nn.Linear(n_in, lcfg.d_inner, bias=config.has_align_bias(layer), **factory)
                          if config.has_align(layer) else None)


def _torch_name(name: str) -> tuple[str, bool]:
    """Canonical name -> (``state_dict`` key, transposed?)."""
    path, leaf = name.rsplit(".", 1)
    if leaf == "kernel":
        return f"{path}.weight", True
    if leaf == "scale":
        return f"{path}.weight", False
    return name, False


class MinGRUStack(nn.Module):
    """A stack of minGRU layers with an ``nn.GRU``-like interface (``spec/mingru_stack.md``).

    ``MinGRUStack(input_size, hidden_sizes, num_layers=None, *, bias=True, dropout=0.0, residual=False,
    norm=False, residual_align="mismatched", residual_align_bias=False, batch_first=True, candidate="g",
    default_state=0.5, norm_eps=1e-5, remat=False, device=None,
    dtype=None)``. ``hidden_sizes`` is an int (repeated ``num_layers`` times, default once) or a list.
    Dropout between layers follows ``self.training``. ``state_dict`` keys: ``layers.{l}.norm.{weight,bias}``,
    ``layers.{l}.mingru.proj.{weight,bias}``, ``layers.{l}.res_align.{weight,bias}`` (kernels transposed).

    Call: ``(x, initial_state=None, *, lengths=None, mode="auto", method="auto") -> (y, final_state)``;
    ``x (B, T, I)`` (``(T, B, I)`` with ``batch_first=False``, and ``y`` likewise), ``final_state`` a ``State``
    whose ``h`` holds one ``(B, H_l)`` tensor per layer.
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: int | Sequence[int],
        num_layers: int | None = None,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        residual: bool = False,
        norm: bool = False,
        residual_align: str = "mismatched",
        residual_align_bias: bool = False,
        batch_first: bool = True,
        candidate: str = "g",
        default_state: float = 0.5,
        norm_eps: float = 1e-5,
        remat: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self._cfg = MinGRUStackConfig.create(input_size, hidden_sizes, num_layers, bias=bias, dropout=dropout,
                                             residual=residual, norm=norm, residual_align=residual_align,
                                             residual_align_bias=residual_align_bias, candidate=candidate,
                                             default_state=default_state, norm_eps=norm_eps)
        checks.check_bool("batch_first", batch_first)
        self.batch_first = batch_first
        self.remat = remat
        self.layers = nn.ModuleList([_StackLayer(self._cfg, l, device=device, dtype=dtype)
                                     for l in range(self._cfg.num_layers)])
        self._names = {name: _torch_name(name) for name in spec.param_shapes(self._cfg)}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kernels ``U(±1/sqrt(fan_in))``, biases 0, LayerNorm scale 1 (``spec.mingru_stack.init_params``)."""
        with torch.no_grad():
            for name, (key, transposed) in self._names.items():
                param = self.get_parameter(key)
                if transposed:
                    bound = 1.0 / math.sqrt(param.shape[1])
                    nn.init.uniform_(param, -bound, bound)
                elif name.endswith("norm.scale"):
                    nn.init.ones_(param)
                else:
                    nn.init.zeros_(param)

    @property
    def config(self) -> MinGRUStackConfig:
        return self._cfg

    def _params(self) -> dict[str, Tensor]:
        out = {}
        for name, (key, transposed) in self._names.items():
            param = self.get_parameter(key)
            out[name] = param.T if transposed else param
        return out

    def forward(self, x: Tensor, initial_state: State | None = None, *, lengths: Tensor | None = None,
                mode: str = "auto", method: str = "auto") -> tuple[Tensor, State]:
        """``x (B, T, I)`` (``(T, B, I)`` with ``batch_first=False``) -> ``(y, final_state)``; see
        :func:`mingru_stack`."""
        x = _as_tensor(x)
        if x.dim() != 3:
            layout = "B, T" if self.batch_first else "T, B"
            raise ValueError(f"mingru_stack: x must have 3 axes ({layout}, input_size), got shape {tuple(x.shape)}")
        if not self.batch_first:
            x = x.transpose(0, 1)
        y, h = mingru_stack(self._params(), x, config=self._cfg, initial_state=initial_state, lengths=lengths,
                            mode=mode, method=method, training=self.training, remat=self.remat)
        return (y if self.batch_first else y.transpose(0, 1)), h

    def step(self, x_t: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``x_t (B, I)``, the ``State`` (``None``: default) -> ``(y_t (B, H_{L-1}), State)``; no dropout."""
        return mingru_stack_step(self._params(), x_t, state, config=self._cfg)

    def initial_state(self, batch_size: int) -> State:
        weight = self.layers[0].mingru.proj.weight
        return mingru_stack_initial_state(self._cfg, batch_size, weight.dtype, weight.device)

    @classmethod
    def from_canonical(cls, config: MinGRUStackConfig, params: Mapping[str, Any], *, batch_first: bool = True,
                       device: Any = None, dtype: torch.dtype | None = None, **kwargs) -> MinGRUStack:
        """Build a module whose parameters are ``params`` (canonical names, dense ``(in, out)`` layout)."""
        if not isinstance(config, MinGRUStackConfig):
            raise TypeError(f"config must be a MinGRUStackConfig, got {type(config).__name__}")
        spec.check_params(params, config)
        tensors = {k: _as_tensor(v) for k, v in params.items()}
        dtype = dtype or tensors["layers.0.mingru.proj.kernel"].dtype
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        module = cls(fields.pop("input_size"), list(fields.pop("hidden_sizes")), **fields, batch_first=batch_first,
                     device=device, dtype=dtype, **kwargs)
        with torch.no_grad():
            for name, (key, transposed) in module._names.items():
                module.get_parameter(key).copy_(tensors[name].T if transposed else tensors[name])
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(to_numpy(value)) for name, value in self._params().items()}
