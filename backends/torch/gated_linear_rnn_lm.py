"""GatedLinearRNNLM / GateLoopLM in PyTorch: pure functions and ``nn.Module``s (``spec/gated_linear_rnn_lm.md``).

Shape legend: ``B`` batch, ``T`` time, ``L`` layers, ``D`` model width, ``H`` state width, ``V_out`` output
vocabulary (``D`` without head), ``F`` input features (no word embedding).

The pure functions take canonical parameters (dense ``(in, out)``) and compose the torch time-mixing layer
(``linrec.backends.torch.gated_linear_rnn``); the modules keep idiomatic ``nn.Linear`` / ``nn.Embedding`` /
``nn.LayerNorm`` parameters and call the pure functions with transposed views (one implementation).
Value checks (token range, positions) need ``.item()``; they are skipped while ``torch.compile`` traces,
where an out-of-range id still fails inside ``F.embedding``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from linrec.backends.torch import native_decode
from linrec.backends.torch.arrays import asarray, dtype_name, to_numpy, torch_dtype
from linrec.backends.torch.compiled_step import compile_step
from linrec.backends.torch.dense import dense
from linrec.backends.torch.gated_linear_rnn import GatedLinearRNN, GateLoop, gated_linear_rnn, step_core
from linrec.backends.torch.native_dense import pack_kernels
from linrec.spec import gated_linear_rnn_lm as spec
from linrec.spec.gated_linear_rnn_lm import GatedLinearRNNLMConfig
from linrec.spec.state import State

__all__ = [
    "GateLoopLM",
    "GatedLinearRNNLM",
    "gated_linear_rnn_lm",
    "gated_linear_rnn_lm_initial_state",
    "gated_linear_rnn_lm_step",
]

Params = Mapping[str, Tensor]
_TM, _CM = "time_mixing", "channel_mixing"
_FLOATS = ("float64", "float32", "bfloat16", "float16")


def _checking() -> bool:
    """Value checks need host syncs (``.item()``); not while ``torch.compile`` traces."""
    return not torch.compiler.is_compiling()


def _tensor(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _prepare_params(params: Params, config: GatedLinearRNNLMConfig) -> dict[str, Tensor]:
    spec.check_params({k: tuple(v.shape) for k, v in params.items()}, config)
    dtype = next(iter(params.values())).dtype
    for v in params.values():
        dtype = torch.promote_types(dtype, v.dtype)
    if str(dtype).removeprefix("torch.") not in _FLOATS:
        raise TypeError(f"params must be floating tensors, got dtype {dtype}")
    return {k: v.to(dtype) for k, v in params.items()}


def _dtype(p: Params) -> torch.dtype:
    return next(iter(p.values())).dtype


def _state(state, batch: int, p: Params, config: GatedLinearRNNLMConfig, name: str = "initial_state"
           ) -> tuple[tuple[Tensor, ...], Tensor]:
    """``(h: L tensors (B, H), position: (B,) int32)`` of a checked ``State`` (zeros for ``None``)."""
    first = next(iter(p.values()))
    if state is None:
        state = gated_linear_rnn_lm_initial_state(config, batch, first.dtype, first.device)
    h, position = spec.state_parts(state, config, name=name)
    h = tuple(_tensor(h_l, f"{name}.h[{l}]") for l, h_l in enumerate(h))
    position = _tensor(position, f"{name}.position")
    spec.check_state([tuple(h_l.shape) for h_l in h], [dtype_name(h_l) for h_l in h], tuple(position.shape),
                     dtype_name(position), batch, dtype_name(first), config, name=name)
    return h, position.to(torch.int32)


def _layer_norm(x: Tensor, p: Params, prefix: str, eps: float) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` (biased ``var``): one fused kernel, forward and backward."""
    return F.layer_norm(x, x.shape[-1:], p[prefix + "norm.scale"], p[prefix + "norm.bias"], eps)


def _residual(x: Tensor, branch: Tensor, mask: Tensor | None, placement: str) -> Tensor:
    if mask is None:
        return x + branch
    return x + branch * mask if placement == "branch" else (x + branch) * mask


def _sinusoidal(positions: Tensor, config: GatedLinearRNNLMConfig, dtype: torch.dtype) -> Tensor:
    """Rows ``positions`` of the spec's sinusoidal table, computed in float64 and rounded once."""
    d = config.d_model
    k = torch.arange(d, device=positions.device) // 2
    omega = torch.exp(k.to(torch.float64) * (-2.0 * math.log(10000.0) / d))
    angle = positions.to(torch.float64)[..., None] * omega
    even = (torch.arange(d, device=positions.device) % 2) == 0
    return torch.where(even, torch.sin(angle), torch.cos(angle)).to(dtype)


def _embed(p: Params, inputs: Tensor, positions: Tensor, config: GatedLinearRNNLMConfig) -> Tensor:
    """``inputs: (B, T)`` ids or ``(B, T, F)``, ``positions: (B, T)`` → ``(B, T, D)``."""
    dtype = _dtype(p)
    if config.use_word_embedding:
        x = F.embedding(inputs, p["embed.embedding"])
    else:
        x = dense(inputs.to(dtype), p["input_proj.kernel"], p["input_proj.bias"])
    if config.positional_encoding_mode == "learned":
        x = x + F.embedding(positions, p["pos_embed.embedding"])
    elif config.positional_encoding_mode == "sinusoidal":
        x = x + _sinusoidal(positions, config, dtype)
    return x


def _channel_mixing(p: Params, prefix: str, x: Tensor, config: GatedLinearRNNLMConfig) -> Tensor:
    z = _layer_norm(x, p, prefix, config.eps)
    z = F.gelu(dense(z, p[prefix + "fc1.kernel"], p[prefix + "fc1.bias"]),
               approximate="tanh" if config.gelu_approximate else "none")
    return dense(z, p[prefix + "fc2.kernel"], p[prefix + "fc2.bias"])


def _head(p: Params, x: Tensor, config: GatedLinearRNNLMConfig) -> Tensor:
    return dense(x, p["head.kernel"], p["head.bias"]) if config.use_head else x


def _forward(p, inputs, h0, position, masks, config: GatedLinearRNNLMConfig, mode, method, chunk_size,
             remat: bool = False, lengths: Tensor | None = None):
    """One pass over all ``T`` inputs; with ``lengths`` each layer's scan treats the padding as identity steps
    (recurrence.md §0). Returns ``(out, h: L tensors, position)``."""
    n_time = inputs.shape[1]
    offset = torch.zeros_like(position) if config.compat_step_position_zero else position
    positions = offset[:, None] + torch.arange(n_time, dtype=torch.int32, device=inputs.device)
    valid = None
    if lengths is not None:
        valid = torch.arange(n_time, device=inputs.device)[None, :] < lengths[:, None]
        positions = torch.where(valid, positions, 0)  # a padded position may lie beyond the table: use a valid row
    x = _embed(p, inputs, positions, config)
    if "embedding" in masks:
        x = x * masks["embedding"]
    hs = []
    for l in range(config.n_layer):
        prefix = f"layers.{l}."

        def block(x: Tensor, h_l: Tensor, prefix: str = prefix, l: int = l) -> tuple[Tensor, Tensor]:
            z = _layer_norm(x, p, prefix + f"{_TM}.", config.eps)
            y, h = gated_linear_rnn(spec.layer_params(p, l), z, config=config.layer_config,
                                    initial_state=State(h_l), lengths=lengths, mode=mode, method=method,
                                    chunk_size=chunk_size)
            x = _residual(x, y, masks.get(prefix + _TM), config.dropout_placement)
            x = _residual(x, _channel_mixing(p, prefix + f"{_CM}.", x, config), masks.get(prefix + _CM),
                          config.dropout_placement)
            return x, h.h

        if remat and torch.is_grad_enabled():  # recompute each block in the backward pass
            x, h = checkpoint(block, x, h0[l], use_reentrant=False)
        else:
            x, h = block(x, h0[l])
        hs.append(h)
    out = _head(p, x, config)
    if valid is None:
        return out, tuple(hs), position + n_time
    return torch.where(valid[..., None], out, 0.0), tuple(hs), position + lengths.to(position.dtype)


def _pe_position(position: Tensor, config: GatedLinearRNNLMConfig) -> Tensor:
    """Table row of a decode step: the true position, or 0 with ``compat_step_position_zero`` (the original)."""
    return torch.zeros_like(position) if config.compat_step_position_zero else position


def _layers(p: Params, config: GatedLinearRNNLMConfig) -> list[dict[str, Tensor]]:
    """Each layer's time-mixing parameters under the layer's names, split out once per call or decoder."""
    return [spec.layer_params(p, l) for l in range(config.n_layer)]


def _step(p: Params, layers: list[dict[str, Tensor]], input_t: Tensor, h: tuple[Tensor, ...], position: Tensor,
          pe_position: Tensor, config: GatedLinearRNNLMConfig) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
    """One input per row at table row ``pe_position`` on prepared parameters (``layers = _layers(p, config)``)
    and a checked state. Returns ``(out_t, h: L tensors, position + 1)``."""
    x = _embed(p, input_t[:, None], pe_position[:, None], config)[:, 0]
    hs, layer_config = [], config.layer_config  # a property that builds (and validates) a config
    for l, layer_p in enumerate(layers):
        prefix = f"layers.{l}."
        z = _layer_norm(x, p, prefix + f"{_TM}.", config.eps)
        y, h_l = step_core(layer_p, z, h[l], layer_config)
        hs.append(h_l)
        x = x + y
        x = x + _channel_mixing(p, prefix + f"{_CM}.", x, config)
    return _head(p, x, config), tuple(hs), position + 1


def _check_positions(position: Tensor, counts: np.ndarray, config: GatedLinearRNNLMConfig) -> None:
    if config.positional_encoding_mode == "none" or not _checking():
        return
    offset = np.zeros(counts.shape, np.int64) if config.compat_step_position_zero else to_numpy(position)
    used = counts > 0
    if used.any():
        spec.check_positions(int((offset + counts - 1)[used].max()), config)


def gated_linear_rnn_lm(
    params: Params,
    inputs: Tensor,
    *,
    config: GatedLinearRNNLMConfig,
    initial_state: State | None = None,
    lengths: Tensor | None = None,
    dropout_masks: Mapping[str, Tensor] | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
    remat: bool = False,
) -> tuple[Tensor, State]:
    """The model over a sequence: ``inputs: (B, T)`` ids (or ``(B, T, F)``) → ``(out: (B, T, V_out),
    final_state)``; ``initial_state``/``final_state`` are ``State(h=L tensors (B, H), position=(B,) int32)``.

    ``lengths: (B,)`` marks right-padded rows (row ``b`` ends after ``lengths[b]`` inputs): one pass in which every
    layer's scan treats the padding as identity steps; outputs there are zero, the state is the state after each
    row's last real input and ``position`` advances by ``lengths``. ``dropout_masks``: site → ``(B, T, D)``
    multiplier (training). ``mode``/``method``/``chunk_size`` go to the time-mixing layer; ``remat=True``
    recomputes each block in the backward pass (``torch.utils.checkpoint``).
    """
    inputs = _tensor(inputs, "inputs")
    spec.check_input(tuple(inputs.shape), dtype_name(inputs), config)
    p = _prepare_params(params, config)
    n_batch, n_time = inputs.shape[:2]
    h0, position = _state(initial_state, n_batch, p, config)
    masks = dict(dropout_masks or {})
    spec.check_dropout_masks({k: tuple(v.shape) for k, v in masks.items()}, n_batch, n_time, config)
    masks = {k: v.to(_dtype(p)) for k, v in masks.items()}
    if lengths is None:
        if config.use_word_embedding and _checking():
            spec.check_token_values(to_numpy(inputs), config)
        _check_positions(position, np.full(n_batch, n_time), config)
        out, h, position = _forward(p, inputs, h0, position, masks, config, mode, method, chunk_size, remat)
        return out, State(h, position)
    if masks:
        raise ValueError("lengths (right-padded rows) cannot be combined with dropout_masks: for training, "
                         "padding after a sequence never changes the outputs before it, so pass no lengths")
    lengths = _tensor(lengths, "lengths")
    spec.layer_spec.check_lengths(tuple(lengths.shape), dtype_name(lengths), n_batch, n_time, method=method)
    lengths = lengths.to(inputs.device)
    valid = torch.arange(n_time, device=inputs.device)[None, :] < lengths[:, None]
    if _checking():
        lengths_np = to_numpy(lengths)
        spec.check_lengths(lengths_np, n_batch, n_time)
        if config.use_word_embedding:
            spec.check_token_values(to_numpy(inputs)[to_numpy(valid)], config)
        _check_positions(position, lengths_np, config)
    if config.use_word_embedding:
        inputs = torch.where(valid, inputs, 0)  # padding may hold any id
    out, h, position = _forward(p, inputs, h0, position, {}, config, mode, method, chunk_size, remat, lengths)
    return out, State(h, position)


def gated_linear_rnn_lm_step(
    params: Params, input_t: Tensor, state: State | None, *, config: GatedLinearRNNLMConfig
) -> tuple[Tensor, State]:
    """One token per row: ``input_t: (B,)`` ids (or ``(B, F)``), ``state`` a ``State`` (``None``: zeros) →
    ``(out_t: (B, V_out), State)`` (no dropout)."""
    p = _prepare_params(params, config)
    input_t, h, position = _checked_step_inputs(p, input_t, state, config)
    out, h, position = _step(p, _layers(p, config), input_t, h, position, _pe_position(position, config), config)
    return out, State(h, position)


def _checked_step_inputs(p: Params, input_t: Any, state: State | None, config: GatedLinearRNNLMConfig
                         ) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
    """The checks of a decode step on prepared parameters → ``(input_t, h, position)``."""
    input_t = _tensor(input_t, "input_t")
    spec.check_step_input(tuple(input_t.shape), dtype_name(input_t), config)
    h, position = _state(state, input_t.shape[0], p, config, name="state")
    if config.use_word_embedding and _checking():
        spec.check_token_values(to_numpy(input_t), config, name="token")
    _check_positions(position, np.ones(input_t.shape[0], np.int64), config)
    return input_t, h, position


def gated_linear_rnn_lm_initial_state(
    config: GatedLinearRNNLMConfig, batch_size: int, dtype: torch.dtype | str = torch.float32, device: Any = None
) -> State:
    """``State(h=L zeros (B, H) in the state dtype, position=zeros (B,) int32)``."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    h = tuple(torch.zeros((batch_size, config.d_h), dtype=torch_dtype(spec.state_dtype(name)), device=device)
              for _ in range(config.n_layer))
    return State(h, torch.zeros((batch_size,), dtype=torch.int32, device=device))


# ---------------------------------------------------------------------------------------------
# nn.Module


def _lecun_normal_(weight: Tensor) -> None:
    std = math.sqrt(1.0 / weight.shape[1]) / 0.87962566103423978
    nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)


class _TimeMixing(nn.Module):
    def __init__(self, config: GatedLinearRNNLMConfig, layer_cls: type, **factory: Any):
        super().__init__()
        lc = config.layer_config
        self.norm = nn.LayerNorm(config.d_model, eps=config.eps, **factory)
        self.rnn = layer_cls(lc.d_model, lc.d_h, lc.d_in, input_activation=lc.input_activation,
                             hidden_activation=lc.hidden_activation, gate_activation=lc.gate_activation,
                             use_true_recurrence=lc.use_true_recurrence, use_tied_gates=lc.use_tied_gates, **factory)


class _ChannelMixing(nn.Module):
    def __init__(self, config: GatedLinearRNNLMConfig, **factory: Any):
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model, eps=config.eps, **factory)
        self.fc1 = nn.Linear(config.d_model, config.d_channel_mixing, **factory)
        self.fc2 = nn.Linear(config.d_channel_mixing, config.d_model, **factory)


class _Block(nn.Module):
    def __init__(self, config: GatedLinearRNNLMConfig, layer_cls: type, **factory: Any):
        super().__init__()
        self.time_mixing = _TimeMixing(config, layer_cls, **factory)
        self.channel_mixing = _ChannelMixing(config, **factory)


class GatedLinearRNNLM(nn.Module):
    """The GatedLinearRNN language model (Katsch): embedding (+ positions) → ``n_layer`` × [pre-LN time mixing,
    pre-LN GELU MLP, both residual] → head.

    Constructor: the ``GatedLinearRNNLMConfig`` fields as keyword arguments, ``remat`` (checkpoint each block
    when gradients are on), ``device``, ``dtype``. ``state_dict`` keys: canonical names with ``kernel`` →
    ``weight`` (transposed), ``embedding`` → ``weight``, ``norm.scale`` → ``norm.weight`` (``spec.torch_param``).
    Dropout follows ``self.training``; ``prefill``, ``decode_step`` and ``generate`` never apply it.
    """

    _layer_cls: type = GatedLinearRNN

    def __init__(self, n_layer: int, d_model: int, d_channel_mixing: int, d_h: int, *, remat: bool = False,
                 device: Any = None, dtype: torch.dtype | None = None, **fields: Any) -> None:
        super().__init__()
        cfg = GatedLinearRNNLMConfig(n_layer=n_layer, d_model=d_model, d_channel_mixing=d_channel_mixing, d_h=d_h,
                                     **fields)
        self._cfg = cfg
        self.remat = remat
        factory = {"device": device, "dtype": dtype}
        if cfg.use_word_embedding:
            self.embed = nn.Embedding(cfg.input_vocab_size, cfg.d_model, **factory)
        else:
            self.input_proj = nn.Linear(cfg.d_input, cfg.d_model, **factory)
        if cfg.positional_encoding_mode == "learned":
            self.pos_embed = nn.Embedding(cfg.max_seq_length, cfg.d_model, **factory)
        self.layers = nn.ModuleList([_Block(cfg, self._layer_cls, **factory) for _ in range(cfg.n_layer)])
        if cfg.use_head:
            self.head = nn.Linear(cfg.d_model, cfg.output_vocab_size, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Spec initialisers (§5): embeddings N(0, 1/D), dense kernels lecun_normal, biases 0, norms 1/0."""
        d = self._cfg.d_model
        for name in ("embed", "pos_embed"):
            if hasattr(self, name):
                nn.init.normal_(getattr(self, name).weight, 0.0, 1.0 / math.sqrt(d))
        linears = [getattr(self, n) for n in ("input_proj", "head") if hasattr(self, n)]
        for block in self.layers:
            block.time_mixing.rnn.reset_parameters()
            linears += [block.channel_mixing.fc1, block.channel_mixing.fc2]
            for norm in (block.time_mixing.norm, block.channel_mixing.norm):
                nn.init.ones_(norm.weight)
                nn.init.zeros_(norm.bias)
        for linear in linears:
            _lecun_normal_(linear.weight)
            nn.init.zeros_(linear.bias)

    @classmethod
    def from_config(cls, config: GatedLinearRNNLMConfig, **kwargs: Any):
        return cls(**config.to_dict(), **kwargs)

    @property
    def config(self) -> GatedLinearRNNLMConfig:
        return self._cfg

    def _params(self) -> dict[str, Tensor]:
        """Canonical name → tensor (transposed views of ``nn.Linear`` weights, so gradients reach them)."""
        tensors = dict(self.named_parameters())
        out = {}
        for name in spec.param_shapes(self._cfg):
            key, transposed = spec.torch_param(name)
            out[name] = tensors[key].T if transposed else tensors[key]
        return out

    def _masks(self, batch: int, length: int, like: Tensor) -> dict[str, Tensor]:
        masks = {}
        for site, rate in spec.dropout_sites(self._cfg).items():
            if rate > 0:
                keep = torch.empty((batch, length, self._cfg.d_model), dtype=like.dtype, device=like.device)
                masks[site] = keep.bernoulli_(1.0 - rate) / (1.0 - rate)
        return masks

    def forward(self, inputs: Tensor, initial_state: State | None = None, *, lengths: Tensor | None = None,
                mode: str = "auto", method: str = "auto", chunk_size: int | None = None,
                training: bool | None = None) -> tuple[Tensor, State]:
        """``inputs: (B, T)`` ids (or ``(B, T, F)``) → ``(out: (B, T, V_out), final_state: State)``; dropout iff
        training (default: ``self.training``)."""
        params = self._params()
        training = self.training if training is None else training
        masks = None
        if training and lengths is None and _tensor(inputs, "inputs").dim() >= 2:
            masks = self._masks(*inputs.shape[:2], next(iter(params.values())))
        return gated_linear_rnn_lm(params, inputs, config=self._cfg, initial_state=initial_state, lengths=lengths,
                                   dropout_masks=masks, mode=mode, method=method, chunk_size=chunk_size,
                                   remat=self.remat)

    def step(self, input_t: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """One input per row: ``(B,)`` ids (or ``(B, F)``) → ``(out_t: (B, V_out), State)``."""
        return gated_linear_rnn_lm_step(self._params(), input_t, state, config=self._cfg)

    def initial_state(self, batch_size: int) -> State:
        """``State(h=L zeros (B, H), position=zeros (B,) int32)`` in this module's state dtype and device."""
        w = next(self.parameters())
        return gated_linear_rnn_lm_initial_state(self._cfg, batch_size, w.dtype, w.device)

    # --- generation ---------------------------------------------------------------------------------

    def prefill(self, tokens: Tensor, initial_state: State | None = None, lengths: Tensor | None = None
                ) -> tuple[Tensor, State]:
        """One parallel pass over right-padded prompts ``(B, T)`` (``lengths``: real tokens per row) →
        ``(logits (B, T, V), State)``; no dropout."""
        return self(tokens, initial_state, lengths=lengths, training=False)

    def decode_step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """One token per row ``(B,)`` → ``(logits (B, V), state)``."""
        return self.step(token, state)

    def decoder(self, compile: bool = False, fused: bool | None = None):
        """``decode(token (B,), state) -> (logits (B, V), state)``: :meth:`decode_step` with the parameters
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
        p, cfg = _prepare_params(self._params(), self._cfg), self._cfg
        packed, layers = pack_kernels(p), [pack_kernels(layer) for layer in _layers(p, cfg)]
        native_step = native_decode.decoder_step(native_decode.gated_linear_rnn_lm_step, packed, cfg, fused)

        def core(token: Tensor, h: tuple[Tensor, ...], position: Tensor
                 ) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
            return _step(packed, layers, token, h, position, _pe_position(position, cfg), cfg)

        step = compile_step(core, ("packed", "layers"), cpp_wrapper=True) if compile else core

        @torch.no_grad()
        def decode(token: Tensor, state: State) -> tuple[Tensor, State]:
            token, h, position = _checked_step_inputs(p, token, state, cfg)
            if native_step is not None:
                out, h = native_step(token, h, _pe_position(position, cfg))
                return out, State(h, position + 1)
            out, h, position = step(token, h, position)
            return out, State(h, position)

        return decode

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: Any = 0, *, lengths: Any = None, initial_state: State | None = None,
                 return_logits: bool = False):
        """Sample ``max_new_tokens`` after each prompt row → new tokens ``(B, max_new_tokens)`` int32.

        ``prompt: (B, T)`` right-padded with ``lengths`` (default: all ``T``, ≥ 1 each). ``temperature=0`` is
        greedy; ``top_k`` keeps the ``k`` largest logits; sampling is ``spec.sample_tokens`` with NumPy
        generators ``spec.row_generators(seed, B)`` (row ``b``: ``seed + b``, or ``seed[b]`` for a sequence), so
        JAX and torch draw the same tokens and a row's tokens do not depend on the rest of the batch. With
        ``return_logits`` also returns the logits each token was drawn from, ``(B, max_new_tokens, V)``.
        """
        cfg = self._cfg
        spec.check_generation(cfg, max_new_tokens, temperature, top_k)
        prompt = _tensor(prompt, "prompt")
        spec.check_input(tuple(prompt.shape), dtype_name(prompt), cfg, name="prompt")
        n_batch, n_time = prompt.shape
        lengths_np = np.full(n_batch, n_time) if lengths is None else (
            to_numpy(lengths) if isinstance(lengths, Tensor) else np.asarray(lengths))
        spec.check_lengths(lengths_np, n_batch, n_time, minimum=1)
        if initial_state is None:  # the whole generation must fit the position table: fail before computing anything
            _check_positions(torch.zeros(n_batch, dtype=torch.int32), lengths_np + max(max_new_tokens - 1, 0), cfg)
        generators = spec.row_generators(seed, n_batch)
        prompt_lengths = None if lengths is None else torch.as_tensor(lengths_np, device=prompt.device)
        logits, state = self.prefill(prompt, initial_state, prompt_lengths)
        last = logits[torch.arange(n_batch), torch.as_tensor(lengths_np - 1)]
        p = self._params()
        layers = _layers(p, cfg)
        tokens, all_logits = [], []
        for i in range(max_new_tokens):
            token = torch.from_numpy(spec.sample_tokens(to_numpy(last.float()), generators, float(temperature),
                                                        top_k)).to(last.device)
            tokens.append(token)
            all_logits.append(last)
            if i + 1 < max_new_tokens:
                _check_positions(state.position, np.ones(n_batch, np.int64), cfg)
                position = state.position
                last, h, position = _step(p, layers, token, state.h, position, _pe_position(position, cfg), cfg)
                state = State(h, position)
        new = torch.stack(tokens, dim=1) if tokens else torch.zeros((n_batch, 0), dtype=torch.int32)
        if not return_logits:
            return new
        return new, (torch.stack(all_logits, dim=1) if all_logits else torch.zeros((n_batch, 0, cfg.d_output)))

    # --- canonical parameters -----------------------------------------------------------------------

    @classmethod
    def from_canonical(cls, config: GatedLinearRNNLMConfig, params: Mapping[str, Any], *, device: Any = None,
                       dtype: torch.dtype | None = None, remat: bool = False):
        """A module holding ``params`` (canonical names, dense ``(in, out)`` layout; NumPy arrays or tensors)."""
        if not isinstance(config, GatedLinearRNNLMConfig):
            raise TypeError(f"config must be a GatedLinearRNNLMConfig, got {type(config).__name__}")
        tensors = {k: v if isinstance(v, Tensor) else asarray(np.asarray(v)) for k, v in params.items()}
        spec.check_params({k: tuple(v.shape) for k, v in tensors.items()}, config)
        dtype = dtype or tensors[next(iter(spec.param_shapes(config)))].dtype
        module = cls.from_config(config, remat=remat, device=device, dtype=dtype)
        own = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                key, transposed = spec.torch_param(name)
                own[key].copy_(value.T if transposed else value)
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """Canonical name → NumPy array (``fc1.kernel = fc1.weight.T``)."""
        return {k: np.ascontiguousarray(to_numpy(v)) for k, v in self._params().items()}


class GateLoopLM(GatedLinearRNNLM):
    """GateLoopLM (Katsch): the same model on the GateLoop layer (a causal LM never uses ``reversed``)."""

    _layer_cls = GateLoop
