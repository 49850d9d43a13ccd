"""GateLoop language model for the PyTorch backend (``linrec.spec.gateloop_mh_lm``): pure functions and a module.

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary, ``D`` d_model, ``F`` d_ff, ``L`` layers, ``H`` heads,
``K`` head width. embedding -> ``L`` blocks [:func:`linrec.backends.torch.gateloop_mh.gateloop_mh` time mixing,
GELU feed-forward] -> (final RMSNorm) -> head; twin: ``linrec.backends.jax.gateloop_mh_lm``. The module hands its
weights (canonical layout, transposed views) to the pure function, so both are the same code path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linrec.backends.torch.arrays import dtype_name, to_numpy
from linrec.backends.torch.gateloop_mh import GateLoopMH, gateloop_mh, gateloop_mh_initial_state, gateloop_mh_step
from linrec.spec import gateloop_mh_lm as spec
from linrec.spec.gateloop_mh_lm import GateLoopMHLMConfig
from linrec.spec.state import State, check_lengths

__all__ = ["GateLoopMHLM", "gateloop_mh_lm", "gateloop_mh_lm_initial_state", "gateloop_mh_lm_step"]


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _tokens(tokens: Any, name: str, ndim: int, config: GateLoopMHLMConfig) -> Tensor:
    tokens = _as_tensor(tokens)
    values = None if torch.compiler.is_compiling() else to_numpy(tokens)
    spec.check_tokens(name, tuple(tokens.shape), dtype_name(tokens), ndim, config, values)
    return tokens.long()


def _wide(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _norm(p: Mapping[str, Tensor], name: str, x: Tensor) -> Tensor:
    """RMSNorm (``scale``) or, with a ``bias``, LayerNorm; in at least float32, rounded once to ``x``'s dtype."""
    w = _wide(x)
    scale = _wide(p[f"{name}.scale"])
    if f"{name}.bias" in p:
        y = F.layer_norm(w, (w.shape[-1],), scale, _wide(p[f"{name}.bias"]), eps=spec.LN_EPS)
    else:
        y = F.normalize(w, dim=-1, eps=spec.RMS_EPS) * (w.shape[-1] ** 0.5) * scale
    return y.to(x.dtype)


def _ff(p: Mapping[str, Tensor], x: Tensor) -> Tensor:
    z = F.gelu(_wide(x @ p["ff.fc1.kernel"] + p["ff.fc1.bias"])).to(x.dtype)
    return z @ p["ff.fc2.kernel"] + p["ff.fc2.bias"]


def _run(params: Mapping[str, Tensor], x: Tensor, states, config: GateLoopMHLMConfig, mixer) -> tuple[Tensor, State]:
    """The blocks, final norm and head on embedded ``x`` (``(B, T, D)`` or ``(B, D)``)."""
    hs = []
    for l in range(config.n_layers):
        p = spec.sub_params(params, f"layers.{l}.")
        mix = spec.sub_params(p, "mixer.")
        if config.block == "prenorm":
            y, s = mixer(mix, _norm(p, "norm", x), states[l])
            x = x + y
            x = x + _ff(p, _norm(p, "ff_norm", x))
        else:
            y, s = mixer(mix, x, states[l])
            x = _norm(p, "norm", x + y)
            x = _norm(p, "ff_norm", x + _ff(p, x))
        hs.append(s.h)
    if config.block == "prenorm":
        x = _norm(params, "final_norm", x)
    return x @ params["head.kernel"], State(tuple(hs))


def _params(params: Mapping[str, Any], config: GateLoopMHLMConfig) -> dict[str, Tensor]:
    spec.check_params(params, config)
    return {k: _as_tensor(v) for k, v in params.items()}


def gateloop_mh_lm(
    params: Mapping[str, Tensor],
    tokens: Tensor,
    *,
    config: GateLoopMHLMConfig,
    initial_state: State | None = None,
    lengths: Tensor | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
    remat: bool = False,
) -> tuple[Tensor, State]:
    """``tokens (B, T)`` -> ``(logits (B, T, V), State(h=(S_0, …, S_{L-1})))``, ``S_l: (B, H, K, K)`` complex.

    ``mode``/``method``/``chunk_size``/``remat`` are every layer's (``gateloop_mh.md`` §4); ``lengths`` right-pads
    rows (padded positions are identity steps of every layer's scan, their logits zero).
    """
    tokens = _tokens(tokens, "tokens", 2, config)
    params = _params(params, config)
    states = spec.layer_states(initial_state, config)
    if lengths is not None:
        if not isinstance(lengths, Tensor):
            raise TypeError(f"gateloop_mh_lm: lengths must be a torch.Tensor, got {type(lengths).__name__}")
        values = None if torch.compiler.is_compiling() else to_numpy(lengths)
        check_lengths(tuple(lengths.shape), dtype_name(lengths), tokens.shape[0], tokens.shape[1], values,
                      where="gateloop_mh_lm", method=method)
    x = params["embed.embedding"][tokens.to(params["embed.embedding"].device)]

    def mixer(p, x, s):
        return gateloop_mh(p, x, config=config.layer, initial_state=s, lengths=lengths, mode=mode, method=method,
                           chunk_size=chunk_size, remat=remat)

    logits, state = _run(params, x, states, config, mixer)
    if lengths is not None:
        valid = torch.arange(tokens.shape[1], device=logits.device)[None, :] < lengths.to(logits.device)[:, None]
        logits = torch.where(valid[..., None], logits, torch.zeros((), dtype=logits.dtype, device=logits.device))
    return logits, state


def gateloop_mh_lm_step(
    params: Mapping[str, Tensor], token: Tensor, state: State | None, *, config: GateLoopMHLMConfig
) -> tuple[Tensor, State]:
    """One step: ``token (B,)``, the ``State`` (``None``: zeros) -> ``(logits (B, V), State)``."""
    token = _tokens(token, "token", 1, config)
    params = _params(params, config)
    states = spec.layer_states(state, config, name="state")

    def mixer(p, x_t, s):
        return gateloop_mh_step(p, x_t, s, config=config.layer)

    return _run(params, params["embed.embedding"][token.to(params["embed.embedding"].device)], states, config, mixer)


def gateloop_mh_lm_initial_state(config: GateLoopMHLMConfig, batch_size: int, dtype: Any = "float32",
                                 device: Any = None) -> State:
    """Zeros: ``State(h=(S_0, …, S_{L-1}))``, ``S_l: (B, H, K, K)`` in the complex state dtype for ``dtype``."""
    return State(tuple(gateloop_mh_initial_state(config.layer, batch_size, dtype, device=device).h
                       for _ in range(config.n_layers)))


# ---------------------------------------------------------------- the module


class _RMSNorm(nn.Module):
    """lucidrains' RMSNorm ``x / max(‖x‖, 1e-12) · √D · weight`` (``state_dict`` key ``weight``)."""

    def __init__(self, d: int, device: Any = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))


class _FeedForward(nn.Module):
    def __init__(self, d: int, d_ff: int, device: Any = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.fc1 = nn.Linear(d, d_ff, device=device, dtype=dtype)
        self.fc2 = nn.Linear(d_ff, d, device=device, dtype=dtype)


class _Block(nn.Module):
    def __init__(self, cfg: GateLoopMHLMConfig, device: Any = None, dtype: torch.dtype | None = None):
        super().__init__()

        def norm() -> nn.Module:
            if cfg.block == "postnorm":
                return nn.LayerNorm(cfg.d_model, eps=spec.LN_EPS, device=device, dtype=dtype)
            return _RMSNorm(cfg.d_model, device, dtype)

        layer = cfg.layer
        self.norm = norm()
        self.mixer = GateLoopMH(**{f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)},
                                device=device, dtype=dtype)
        self.ff_norm = norm()
        self.ff = _FeedForward(cfg.d_model, cfg.d_ff, device, dtype)


class GateLoopMHLM(nn.Module):
    """``embed`` (``nn.Embedding``) -> ``layers`` (``nn.ModuleList`` of blocks ``norm``, ``mixer``
    (:class:`GateLoopMH`), ``ff_norm``, ``ff.fc1``/``ff.fc2``) -> ``final_norm`` (``block="prenorm"``) -> ``head``
    (``nn.Linear``, no bias).

    ``GateLoopMHLM(vocab_size, d_model, n_layers, *, num_heads=None, d_inner=None, ff_mult=4, block="prenorm",
    output_gate="silu", sub_norm="none", chunk_size=64, device=None, dtype=None)``. Call: ``(tokens (B, T),
    initial_state=None, *, lengths=None, mode, method, chunk_size) -> (logits, State)``; ``step``, ``prefill``,
    ``decode_step``, ``initial_state``.
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, *, num_heads: int | None = None,
                 d_inner: int | None = None, ff_mult: int = 4, block: str = "prenorm", output_gate: str = "silu",
                 sub_norm: str = "none", chunk_size: int = 64, device: Any = None, dtype: torch.dtype | None = None):
        super().__init__()
        cfg = GateLoopMHLMConfig(vocab_size, d_model, n_layers, num_heads=num_heads, d_inner=d_inner,
                                 ff_mult=ff_mult, block=block, output_gate=output_gate, sub_norm=sub_norm,
                                 chunk_size=chunk_size)
        self._cfg = cfg
        self.embed = nn.Embedding(vocab_size, d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList([_Block(cfg, device, dtype) for _ in range(n_layers)])
        if cfg.block == "prenorm":
            self.final_norm = _RMSNorm(d_model, device, dtype)
        self.head = nn.Linear(d_model, vocab_size, bias=False, device=device, dtype=dtype)

    @property
    def config(self) -> GateLoopMHLMConfig:
        return self._cfg

    def _params(self) -> dict[str, Tensor]:
        """Canonical name -> tensor (kernels as transposed views of the weights)."""
        out = {"embed.embedding": self.embed.weight}

        def norm(prefix: str, module: nn.Module) -> None:
            out[f"{prefix}.scale"] = module.weight
            if isinstance(module, nn.LayerNorm):
                out[f"{prefix}.bias"] = module.bias

        for l, block in enumerate(self.layers):
            p = f"layers.{l}."
            norm(p + "norm", block.norm)
            out.update({p + "mixer." + k: v for k, v in block.mixer._params().items()})
            norm(p + "ff_norm", block.ff_norm)
            for name in ("fc1", "fc2"):
                lin = getattr(block.ff, name)
                out[f"{p}ff.{name}.kernel"], out[f"{p}ff.{name}.bias"] = lin.weight.t(), lin.bias
        if self._cfg.block == "prenorm":
            out["final_norm.scale"] = self.final_norm.weight
        out["head.kernel"] = self.head.weight.t()
        return out

    def forward(self, tokens: Tensor, initial_state: State | None = None, *, lengths: Tensor | None = None,
                mode: str = "auto", method: str = "auto", chunk_size: int | None = None) -> tuple[Tensor, State]:
        """``tokens (B, T)`` -> ``(logits (B, T, V), final_state)``; see :func:`gateloop_mh_lm`."""
        return gateloop_mh_lm(self._params(), tokens, config=self._cfg, initial_state=initial_state,
                              lengths=lengths, mode=mode, method=method, chunk_size=chunk_size)

    def step(self, token: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``token (B,)``, the ``State`` (``None``: zeros) -> ``(logits (B, V), State)``."""
        return gateloop_mh_lm_step(self._params(), token, state, config=self._cfg)

    def prefill(self, tokens: Tensor, initial_state: State | None = None, lengths: Tensor | None = None
                ) -> tuple[Tensor, State]:
        """The parallel path over a prompt: ``(logits (B, T, V), state)`` to continue with :meth:`decode_step`."""
        return self.forward(tokens, initial_state, lengths=lengths)

    def decode_step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """One token after :meth:`prefill`: ``(logits (B, V), state)``."""
        return self.step(token, state)

    def initial_state(self, batch_size: int, dtype: torch.dtype | None = None) -> State:
        weight = self.head.weight
        return gateloop_mh_lm_initial_state(self._cfg, batch_size, dtype or weight.dtype, device=weight.device)

    @classmethod
    def from_canonical(cls, config: GateLoopMHLMConfig, params: Mapping[str, Any], *, device: Any = None,
                       dtype: torch.dtype | None = None) -> GateLoopMHLM:
        """Build a module whose parameters are ``params`` (canonical names, dense ``(in, out)`` layout)."""
        if not isinstance(config, GateLoopMHLMConfig):
            raise TypeError(f"config must be a GateLoopMHLMConfig, got {type(config).__name__}")
        spec.check_params(params, config)
        values = {k: _as_tensor(v) for k, v in params.items()}
        dtype = dtype or values["head.kernel"].dtype
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        module = cls(fields.pop("vocab_size"), fields.pop("d_model"), fields.pop("n_layers"), **fields,
                     device=device, dtype=dtype)
        with torch.no_grad():
            for name, target in module._params().items():  # kernels are transposed views of the weights
                target.copy_(values[name])
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """Canonical name -> NumPy array (kernels ``(in, out)``)."""
        return {name: np.ascontiguousarray(to_numpy(p.detach())) for name, p in self._params().items()}
