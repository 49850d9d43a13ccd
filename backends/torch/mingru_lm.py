"""minGRU language model for the PyTorch backend (``spec/mingru_lm.md``): pure functions and an ``nn.Module``.

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary, ``D`` model width, ``H`` minGRU state width,
``L`` layers.

The pure functions take canonical parameters (dense ``(in, out)``); the module keeps idiomatic layers
(``nn.Embedding``, ``nn.Linear``, ``nn.RMSNorm``, the minGRU layer's ``MinGRU``) in an ``nn.ModuleList``
and hands transposed views of them to the same functions. Every layer's minGRU runs through the layer's
own functions (``linrec.backends.torch.mingru``); right padding (``lengths``) turns padded positions into identity
steps of the same scan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from linrec.backends.torch import native_decode
from linrec.backends.torch import scan as _scan
from linrec.backends.torch.arrays import cast, dtype_name, to_numpy, torch_dtype
from linrec.backends.torch.compiled_step import compile_step
from linrec.backends.torch.dense import dense
from linrec.backends.torch.mingru import MinGRU, mingru, mingru_gates, step_core
from linrec.backends.torch.native_dense import pack_kernels
from linrec.spec import mingru as mingru_spec
from linrec.spec import mingru_lm as spec
from linrec.spec.mingru_lm import MinGRULMConfig
from linrec.spec.state import State

__all__ = ["MinGRULM", "mingru_lm", "mingru_lm_generate", "mingru_lm_initial_state",
           "mingru_lm_step"]


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _dense(p: Mapping[str, Tensor], name: str, x: Tensor) -> Tensor:
    bias = p.get(f"{name}.bias")
    return dense(x, cast(p[f"{name}.kernel"], x.dtype), None if bias is None else cast(bias, x.dtype))


def _sub(p: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def _rms_norm(x: Tensor, scale: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * scale.to(x.dtype)


def _block(p: Mapping[str, Tensor], x: Tensor, mixer: Callable, config: MinGRULMConfig):
    """One block on ``x (B, T, D)`` or ``(B, D)``; ``mixer(inp) -> (y, h)`` runs the minGRU."""
    if config.block == "glu":
        y, h = mixer(x)
        value, gate = _dense(p, "glu", y).chunk(2, dim=-1)
        return x + value * torch.sigmoid(gate), h
    y, h = mixer(_rms_norm(x, p["norm.scale"], config.norm_eps))
    x = x + y
    f = F.gelu(_dense(p, "ff.fc1", _rms_norm(x, p["ff_norm.scale"], config.norm_eps)))
    return x + _dense(p, "ff.fc2", f), h


def _head(params: Mapping[str, Tensor], x: Tensor, config: MinGRULMConfig) -> Tensor:
    if config.block == "prenorm":
        x = _rms_norm(x, params["final_norm.scale"], config.norm_eps)
    return _dense(params, "head", x)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch_dtype(mingru_spec.state_dtype(str(dtype).removeprefix("torch.")))


def _default(config: MinGRULMConfig, batch: int, dtype: torch.dtype, device=None) -> tuple[Tensor, ...]:
    return tuple(torch.full((batch, config.d_inner), config.default_state, dtype=_state_dtype(dtype), device=device)
                 for _ in range(config.n_layers))


def _layer_forward(p, x, h_l, lengths, config: MinGRULMConfig, method: str):
    mp = _sub(p, "mingru.")

    def mixer(z):
        # right padding: padded positions are identity steps of the layer's one scan
        y, final = mingru(mp, z, config=config.mingru, initial_state=None if h_l is None else State(h_l),
                          lengths=lengths, method=method)
        return y, final.h

    return _block(p, x, mixer, config)


def _layers(params, config: MinGRULMConfig) -> list[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    """Each layer's ``(block parameters, minGRU parameters)`` under their own names, split out once per call or
    decoder."""
    blocks = [_sub(params, f"layers.{layer}.") for layer in range(config.n_layers)]
    return [(p, _sub(p, "mingru.")) for p in blocks]


def _step_core(params, layers, x_t: Tensor, h: tuple[Tensor, ...], keep: Tensor | None, config: MinGRULMConfig):
    """One step from embedded ``x_t (B, D)`` and checked layer states ``h`` (``L`` tensors ``(B, H)``;
    ``layers = _layers(params, config)``)."""
    mcfg = config.mingru
    hs = []
    for (p, mp), h_old in zip(layers, h):

        def mixer(z, mp=mp, h_old=h_old):
            y, h_new = step_core(mingru_gates, mp, z, h_old, mcfg)
            if keep is None:
                return y, h_new
            return y, torch.where(keep[:, None], h_new, h_old)  # a padded step keeps the state (logits zeroed)

        x_t, h_l = _block(p, x_t, mixer, config)
        hs.append(h_l)
    return _head(params, x_t, config), tuple(hs)


def _zero_pads(logits: Tensor, mask: Tensor | None) -> Tensor:
    return logits if mask is None else torch.where(mask[..., None], logits, torch.zeros_like(logits))


def _run(params, tokens: Tensor, h0: tuple[Tensor, ...] | None, lengths: Tensor | None, config: MinGRULMConfig,
         mode: str, method: str, remat: bool = False):
    emb = params["embed.embedding"]
    x = F.embedding(tokens, emb)
    mask = None
    if lengths is not None:
        lengths = lengths.to(tokens.device)
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
    if mode == "sequential":
        _scan.refuse_sequence_parallel("mingru_lm(mode='sequential'), the step loop,", "use mode='parallel'")
        h = _default(config, tokens.shape[0], x.dtype, x.device) if h0 is None else h0
        logits, layers = [], _layers(params, config)
        for t in range(tokens.shape[1]):
            out, h = _step_core(params, layers, x[:, t], h, None if mask is None else mask[:, t], config)
            logits.append(out)
        return _zero_pads(torch.stack(logits, dim=1) if logits else _head(params, x, config), mask), h
    finals = []
    for layer in range(config.n_layers):
        p = _sub(params, f"layers.{layer}.")
        h_l = None if h0 is None else h0[layer]
        if remat and torch.is_grad_enabled():
            x, h = checkpoint(_layer_forward, p, x, h_l, lengths, config, method, use_reentrant=False)
        else:
            x, h = _layer_forward(p, x, h_l, lengths, config, method)
        finals.append(h)
    return _zero_pads(_head(params, x, config), mask), tuple(finals)


# --- checked entry points (shared by the pure functions and the module) ---------------------------------


def _values(x: Tensor) -> np.ndarray | None:
    """The values of ``x`` for range checks, or ``None`` under ``torch.compile`` (no data-dependent breaks)."""
    return None if torch.compiler.is_compiling() else to_numpy(x)


def _check_state(name: str, state, config: MinGRULMConfig, batch: int,
                 compute_dtype: torch.dtype) -> tuple[Tensor, ...]:
    h = tuple(_as_tensor(a) for a in spec.state_arrays(name, state, config))
    spec.check_state(name, config, batch, [tuple(a.shape) for a in h], [dtype_name(a) for a in h],
                     str(_state_dtype(compute_dtype)).removeprefix("torch."))
    return h


def _call(params, tokens, config: MinGRULMConfig, initial_state, lengths, mode: str, method: str,
          remat: bool = False):
    tokens = _as_tensor(tokens)
    spec.check_tokens("tokens", tuple(tokens.shape), dtype_name(tokens), 2, config, _values(tokens))
    spec.check_mode(mode, method, _scan.METHODS, lengths is not None)
    batch, length = tokens.shape
    emb = params["embed.embedding"]
    h0 = None if initial_state is None else _check_state("initial_state", initial_state, config, batch, emb.dtype)
    if lengths is not None:
        lengths = _as_tensor(lengths)
        spec.check_lengths(tuple(lengths.shape), dtype_name(lengths), batch, length, _values(lengths))
    logits, h = _run(params, tokens, h0, lengths, config, mingru_spec.resolve_mode(mode), method, remat)
    return logits, State(h)


def _step_call(params, token, state, config: MinGRULMConfig, core=None):
    """A checked decode step; ``core(token, h) -> (logits, h)`` replaces :func:`_token_step` (``decoder()``)."""
    token = _as_tensor(token)
    spec.check_tokens("token", tuple(token.shape), dtype_name(token), 1, config, _values(token))
    emb = params["embed.embedding"]
    h = (_default(config, token.shape[0], emb.dtype, emb.device) if state is None
         else _check_state("state", state, config, token.shape[0], emb.dtype))
    logits, h = core(token, h) if core is not None else _token_step(params, _layers(params, config), token, h,
                                                                    config)
    return logits, State(h)


def _token_step(params, layers, token: Tensor, h: tuple[Tensor, ...],
                config: MinGRULMConfig) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The arithmetic of one decode step: ``token (B,)``, ``L`` states ``(B, H)`` → ``(logits, states)``."""
    return _step_core(params, layers, F.embedding(token, params["embed.embedding"]), h, None, config)


def _generate(params, prompt, config: MinGRULMConfig, max_new_tokens, temperature, top_k, seed, lengths,
              return_logits: bool):
    prompt_np = to_numpy(_as_tensor(prompt))
    lengths_np = None if lengths is None else to_numpy(_as_tensor(lengths))
    spec.check_generate_args(prompt_np.shape, max_new_tokens, temperature, top_k, config, lengths_np)
    device = params["embed.embedding"].device

    def on(x):
        return None if x is None else torch.as_tensor(x, device=device)

    with torch.no_grad():
        tokens, logits = spec.generate_loop(
            lambda p, n: _call(params, on(p), config, None, on(n), "auto", "auto"),
            lambda t, s: _step_call(params, on(t), s, config),
            to_numpy, prompt_np, lengths_np, max_new_tokens, temperature, top_k, seed,
        )
    tokens = torch.from_numpy(tokens)
    return (tokens, torch.from_numpy(logits)) if return_logits else tokens


def _tensors(params: Mapping[str, Any], config: MinGRULMConfig) -> dict[str, Tensor]:
    spec.check_params(params, config)
    return {k: _as_tensor(v) for k, v in params.items()}


# --- pure functions over canonical parameters ------------------------------------------------------------


def mingru_lm(
    params: Mapping[str, Tensor],
    tokens: Tensor,
    *,
    config: MinGRULMConfig,
    initial_state: State | None = None,
    lengths: Tensor | None = None,
    mode: str = "auto",
    method: str = "auto",
    remat: bool = False,
) -> tuple[Tensor, State]:
    """The model over a sequence.

    Args:
      params: canonical parameters (``linrec.spec.mingru_lm.param_shapes``), dense ``(in, out)``; they set
        the compute dtype.
      tokens: ``(B, T)`` integer ids in ``[0, V)``.
      initial_state: ``State(h=tuple of L (B, H) tensors)`` in the state dtype; ``None``: ``default_state``.
      lengths: ``(B,)`` real tokens per row followed by padding (right padding): padded positions are identity
        steps of each layer's one scan and their logits are zero. ``None``: no padding.
      mode: ``"auto"`` (= ``"parallel"``: each layer a scan), ``"parallel"`` or ``"sequential"`` (the step loop).
      method: scan method of ``mode="parallel"`` (as for the minGRU layer; ``"log"`` refuses ``lengths``).
      remat: recompute each block in the backward pass (``torch.utils.checkpoint``).

    Returns:
      ``logits (B, T, V)`` and the final ``State`` (each row's after its last real token).
    """
    return _call(_tensors(params, config), tokens, config, initial_state, lengths, mode, method, remat)


def mingru_lm_step(
    params: Mapping[str, Tensor], token: Tensor, state: State | None, *, config: MinGRULMConfig
) -> tuple[Tensor, State]:
    """One token: ``token (B,)``, ``state`` (``None``: the default) -> ``(logits (B, V), State)``."""
    return _step_call(_tensors(params, config), token, state, config)


def mingru_lm_initial_state(config: MinGRULMConfig, batch_size: int, dtype: Any = torch.float32,
                            device: Any = None) -> State:
    """The default state: ``State(h=...)``, ``L`` tensors ``(B, H)`` filled with ``default_state`` in the state
    dtype for ``dtype``."""
    dtype = torch_dtype(dtype) if isinstance(dtype, str) else dtype
    return State(_default(config, batch_size, dtype, device))


def mingru_lm_generate(
    params: Mapping[str, Tensor],
    prompt: Tensor,
    *,
    config: MinGRULMConfig,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | Sequence[int] = 0,
    lengths: Tensor | None = None,
    return_logits: bool = False,
):
    """Sample ``max_new_tokens`` after a right-padded ``prompt (B, T)`` (``lengths``: real tokens per row, default
    all ``T``; ``spec.mingru_lm.generate_loop``).

    Returns ``tokens (B, N)`` (int64), and with ``return_logits`` also ``logits (B, N, V)``.
    """
    return _generate(_tensors(params, config), prompt, config, max_new_tokens, temperature, top_k, seed, lengths,
                     return_logits)


# --- the nn.Module ---------------------------------------------------------------------------------------


class _FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, **factory):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff, **factory)
        self.fc2 = nn.Linear(d_ff, d_model, **factory)


class _Block(nn.Module):
    def __init__(self, config: MinGRULMConfig, **factory):
        super().__init__()
        m = config.mingru
        self.mingru = MinGRU(m.d_model, d_inner=m.d_inner, out_proj=m.out_proj, bias=m.bias, candidate=m.candidate,
                             default_state=m.default_state, **factory)
        d = config.d_model
        if config.block == "glu":
            self.glu = nn.Linear(config.d_inner, 2 * d, **factory)
        else:
            self.norm = nn.RMSNorm(d, eps=config.norm_eps, **factory)
            self.ff_norm = nn.RMSNorm(d, eps=config.norm_eps, **factory)
            self.ff = _FeedForward(d, config.d_ff, **factory)


#: canonical suffix -> (attribute path in the torch module, transpose?) for one block
def _torch_names(config: MinGRULMConfig) -> dict[str, tuple[str, bool]]:
    names = {}
    for name in spec.param_shapes(config):
        module_path, leaf = name.rsplit(".", 1)
        if leaf == "kernel":
            names[name] = (f"{module_path}.weight", True)
        elif leaf in ("scale", "embedding"):
            names[name] = (f"{module_path}.weight", False)
        else:
            names[name] = (name, False)
    return names


class MinGRULM(nn.Module):
    """The minGRU language model (``spec/mingru_lm.md``) as an ``nn.Module``.

    Constructor: the ``MinGRULMConfig`` fields (``vocab_size, d_model, n_layers`` positional, the rest
    keyword-only), ``remat``, ``device``, ``dtype``. ``state_dict`` keys: ``embed.weight``,
    ``layers.{l}.mingru.proj.weight`` (``proj.kernel`` transposed), ``layers.{l}.glu.weight``,
    ``layers.{l}.norm.weight`` (canonical ``norm.scale``), ``layers.{l}.ff.fc1.weight``, ...,
    ``final_norm.weight``, ``head.weight``/``head.bias`` (table in ``mingru_lm.md`` §4).

    Generation: :meth:`prefill` (parallel), :meth:`decode_step` (one token) and :meth:`generate`.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        *,
        block: str = "glu",
        expansion: float = 1.0,
        candidate: str = "identity",
        mingru_bias: bool = True,
        default_state: float = 0.0,
        ff_mult: float = 4.0,
        norm_eps: float = 1e-6,
        head_bias: bool = True,
        remat: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        config = MinGRULMConfig(
            vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, block=block, expansion=expansion,
            candidate=candidate, mingru_bias=mingru_bias, default_state=default_state, ff_mult=ff_mult,
            norm_eps=norm_eps, head_bias=head_bias,
        )
        self._cfg = config
        self.remat = remat
        factory = dict(device=device, dtype=dtype)
        self.embed = nn.Embedding(vocab_size, d_model, **factory)
        self.layers = nn.ModuleList([_Block(config, **factory) for _ in range(n_layers)])
        self.final_norm = nn.RMSNorm(d_model, eps=norm_eps, **factory) if block == "prenorm" else None
        self.head = nn.Linear(d_model, vocab_size, bias=head_bias, **factory)
        self._names = _torch_names(config)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Spec initialisers: embedding ``N(0, 1)``, kernels ``U(±1/sqrt(fan_in))``, biases 0, norm scales 1."""
        with torch.no_grad():
            for name, (path, transposed) in self._names.items():
                param = self.get_parameter(path)
                if name == "embed.embedding":
                    nn.init.normal_(param)
                elif transposed:
                    bound = 1.0 / math.sqrt(param.shape[1])
                    nn.init.uniform_(param, -bound, bound)
                elif name.endswith(".scale"):
                    nn.init.ones_(param)
                else:
                    nn.init.zeros_(param)

    @property
    def config(self) -> MinGRULMConfig:
        return self._cfg

    def _params(self) -> dict[str, Tensor]:
        out = {}
        for name, (path, transposed) in self._names.items():
            param = self.get_parameter(path)
            out[name] = param.T if transposed else param
        return out

    def forward(self, tokens: Tensor, initial_state: State | None = None, *, lengths: Tensor | None = None,
                mode: str = "auto", method: str = "auto") -> tuple[Tensor, State]:
        """``tokens (B, T)`` -> ``(logits (B, T, V), final_state)``; see :func:`mingru_lm`."""
        return _call(self._params(), tokens, self._cfg, initial_state, lengths, mode, method, self.remat)

    def step(self, token: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``token (B,)``, ``state`` (``None``: the default) -> ``(logits (B, V), State)``."""
        return _step_call(self._params(), token, state, self._cfg)

    def initial_state(self, batch_size: int) -> State:
        """The default ``State`` (``L`` tensors ``(B, H)``) in the state dtype for this module's parameter dtype."""
        weight = self.embed.weight
        return State(_default(self._cfg, batch_size, weight.dtype, weight.device))

    def prefill(self, tokens: Tensor, initial_state: State | None = None,
                lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """The parallel pass over a right-padded prompt (``lengths``: real tokens per row) from ``initial_state``
        (``None``: the default): ``(logits (B, T, V), State)``, one scan per layer."""
        return self(tokens, initial_state, lengths=lengths)

    def decode_step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """One token on the step path: ``(logits (B, V), State)``."""
        return _step_call(self._params(), token, state, self._cfg)

    def decoder(self, compile: bool = False, fused: bool | None = None):
        """``decode(token (B,), state) -> (logits (B, V), State)``: :meth:`decode_step` with the parameters
        gathered once, for token loops, without autograd. The twin of the JAX method: build it again after
        changing the parameters.

        ``fused``: run the whole step as one call into the native library (``native_decode``: no per-operation
        dispatch; float32 parameters on the CPU with the native kernel built). ``None`` (default): when it can,
        else the step below; ``True``: raise ``ValueError`` saying why when it cannot; ``False``: never. The step
        below runs its dense products on the native kernel (``native_dense``) at batch sizes up to
        ``native.dense.MAX_ROWS``. Both read float32 kernels packed here once (a copy of those weights).

        ``compile=True`` runs that step (where the fused one does not) as one ``torch.compile(fullgraph=True)``
        graph (the argument, state and token checks still run first, eagerly): no per-operation Python overhead,
        elementwise work fused. The first call compiles (seconds to tens of seconds; Inductor needs a C++ compiler
        on CPU), and each new batch size, dtype or device compiles once more. Measured in
        ``benchmarks/decode.py``.
        """
        p, cfg = self._params(), self._cfg
        packed = pack_kernels(p)
        layers = [(pack_kernels(block), pack_kernels(mixer)) for block, mixer in _layers(p, cfg)]
        native_step = native_decode.decoder_step(native_decode.mingru_lm_step, packed, cfg, fused)

        def core(token: Tensor, h: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
            return _token_step(packed, layers, token, h, cfg)

        step = native_step or (compile_step(core, ("packed", "layers")) if compile else core)

        @torch.no_grad()
        def decode(token: Tensor, state: State) -> tuple[Tensor, State]:
            return _step_call(p, token, state, cfg, step)

        return decode

    def generate(self, prompt: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | Sequence[int] = 0, *, lengths: Tensor | None = None, return_logits: bool = False):
        """Sample ``max_new_tokens`` after ``prompt (B, T)``; see :func:`mingru_lm_generate`."""
        return _generate(self._params(), prompt, self._cfg, max_new_tokens, temperature, top_k, seed, lengths,
                         return_logits)

    @classmethod
    def from_canonical(cls, config: MinGRULMConfig, params: Mapping[str, Any], *, device: Any = None,
                       dtype: torch.dtype | None = None, **kwargs) -> MinGRULM:
        """Build a module whose parameters are ``params`` (canonical names, dense ``(in, out)`` layout)."""
        if not isinstance(config, MinGRULMConfig):
            raise TypeError(f"config must be a MinGRULMConfig, got {type(config).__name__}")
        tensors = _tensors(params, config)
        dtype = dtype or tensors["embed.embedding"].dtype
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        positional = [fields.pop(k) for k in ("vocab_size", "d_model", "n_layers")]
        module = cls(*positional, **fields, device=device, dtype=dtype, **kwargs)
        with torch.no_grad():
            for name, (path, transposed) in module._names.items():
                value = tensors[name]
                module.get_parameter(path).copy_(value.T if transposed else value)
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """The parameters as NumPy arrays under their canonical names (kernels = ``weight.T``)."""
        return {name: np.ascontiguousarray(to_numpy(value)) for name, value in self._params().items()}
