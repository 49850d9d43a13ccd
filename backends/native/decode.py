"""Native decode programs (``linrec_decode.cc``): a model's whole decode step as one call into the native library.

A :class:`Program` is a list of operations over float32 row buffers, built once by a decoder from its parameters
and run once per token (:meth:`Program.run`). Operations name their buffers by *slot*: the index of a pointer in
the array the caller passes at each call (tokens, positions, states and outputs change from call to call; the
scratch buffers and the weights do not). Every float buffer holds ``m`` rows (the batch); the dense products are
:mod:`linrec.backends.native.dense`'s, every row in one pass over the weights (the kernel works through the rows
six at a time per panel, whatever their number).

Why: a framework's eager step issues dozens of small operations per layer, and at batch 1 their dispatch costs as
much as reading the weights (benchmarks/results/decode.md). The arithmetic is the spec's, in float32, with the
products summed in ``k`` order as :mod:`~linrec.backends.native.dense` does: results equal the framework step's
within the spec's float32 tolerance, and do not depend on the thread count.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ACTIVATIONS", "DecodeError", "Op", "Program", "check_fused", "choose"]

#: Activation name (``linrec.spec.gated_linear_rnn.ACTIVATIONS``) → the kernel's code.
ACTIVATIONS = {"identity": 0, "tanh": 1, "sigmoid": 2, "relu": 3, "gelu": 4, "gelu_exact": 5, "silu": 6,
               "softplus": 7}

# operation codes (``enum Code`` in linrec_decode.cc)
(GATHER, SINUSOID, DENSE, ADD, LAYER_NORM, ACT, GLRNN_CELL, COPY, RMS_NORM, MINGRU_CELL, GLU_ADD,
 MINLSTM_CELL, GMH_CELL, ACT_MUL) = range(1, 15)
#: ``GATHER`` flags: the index slot holds int32 (else int64); add the row instead of storing it
INDEX_INT32, GATHER_ADD = 1, 2


class DecodeError(ValueError):
    """A native decode program refused its input (an index outside a table, or sizes it cannot take)."""


class _COp(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int32), ("dst", ctypes.c_int32), ("src", ctypes.c_int32),
                ("aux", ctypes.c_int32), ("extra", ctypes.c_int32), ("kind", ctypes.c_int32),
                ("flag", ctypes.c_int32), ("pad", ctypes.c_int32), ("width", ctypes.c_int64),
                ("n", ctypes.c_int64), ("eps", ctypes.c_double), ("w", ctypes.c_void_p), ("b", ctypes.c_void_p)]


@dataclass(frozen=True)
class Op:
    """One operation (``LinrecOp``): buffers by slot (``-1``: unused), widths, and the weight ``w``/bias ``b`` as
    addresses (``0``: none). The program keeps no reference to the weights: the caller must keep them alive."""

    code: int
    dst: int
    src: int = -1
    aux: int = -1
    extra: int = -1
    kind: int = 0
    flag: int = 0
    width: int = 0
    n: int = 0
    eps: float = 0.0
    w: int = 0
    b: int = 0


def cell_kind(input_activation: str, hidden_activation: str, gate_activation: str) -> int:
    """The ``kind`` of a ``GLRNN_CELL``: the three activations' codes, one byte each."""
    return (ACTIVATIONS[input_activation] | ACTIVATIONS[hidden_activation] << 8
            | ACTIVATIONS[gate_activation] << 16)


class Program:
    """Operations to run in one call, over ``n_slots`` buffers; ``keep``: objects that own the weights."""

    def __init__(self, ops: Sequence[Op], n_slots: int, keep: Any = None) -> None:
        from linrec.backends import native

        self._lib = native._builder().load()
        self._ops = (_COp * len(ops))(*(_COp(o.code, o.dst, o.src, o.aux, o.extra, o.kind, o.flag, 0, o.width,
                                             o.n, o.eps, o.w or None, o.b or None) for o in ops))
        for o in ops:
            if not all(-1 <= s < n_slots for s in (o.dst, o.src, o.aux, o.extra)):
                raise ValueError(f"operation {o} names a slot outside 0..{n_slots - 1}")
        self.n_slots = n_slots
        self._keep = keep

    @property
    def address(self) -> int:
        """Where the operations live (``linrec_decode_ffi``'s ``ops``), valid while this program is alive."""
        return ctypes.addressof(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def run(self, slots: Sequence[int], m: int) -> None:
        """Run every operation for ``m`` rows; ``slots``: one address per slot. Raises :class:`DecodeError`
        for an index outside its table (a token or position) or sizes the kernel cannot take."""
        if len(slots) != self.n_slots:
            raise ValueError(f"the program takes {self.n_slots} slots, got {len(slots)}")
        status = self._lib.linrec_decode_run(self._ops, len(self._ops), (ctypes.c_void_p * self.n_slots)(*slots), m)
        if status == 3:
            raise DecodeError("a token or position is outside its embedding table")
        if status != 0:
            raise DecodeError(f"the native decode program refused {m} rows (status {status})")


# ---------------------------------------------------------------------------------------------------------------------
# The decoders' ``fused=`` argument (both frameworks' ``native_decode`` modules)


def check_fused(fused: bool | None) -> bool | None:
    """``fused`` itself, once it is one of ``None``, ``True``, ``False`` (else ``TypeError``)."""
    if not (fused is None or fused is True or fused is False):  # identity: 1 == True
        raise TypeError(f"fused must be None, True or False, got {fused!r}")
    return fused


def choose(fused: bool | None, refusal: Callable[[], str | None], build: Callable[[], Any]) -> Any:
    """What a ``decoder(fused=...)`` runs: ``build()`` when ``fused`` is ``None`` and ``refusal()`` finds nothing
    against it, or when ``fused`` is ``True`` (else ``ValueError`` with the refusal); ``None`` for the framework
    step."""
    if check_fused(fused) is False:
        return None
    why = refusal()
    if why is None:
        return build()
    if fused:
        raise ValueError(f"decoder(fused=True) cannot run this model natively: {why}; use fused=None or False")
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Programs of the models


#: Slots of a language model's step program: inputs, outputs, then ``L`` states in and ``L`` out, then scratch.
TOKENS, POSITIONS, OUT, STATES = 0, 1, 2, 3


@dataclass(frozen=True)
class Layout:
    """Where a step program's buffers live: ``n_layer`` states in at ``STATES + l`` and out at
    ``STATES + n_layer + l``; ``scratch`` widths (floats per row) of the slots after them, in order."""

    n_layer: int
    scratch: tuple[int, ...]

    @property
    def n_slots(self) -> int:
        return STATES + 2 * self.n_layer + len(self.scratch)

    def state_in(self, l: int) -> int:
        return STATES + l

    def state_out(self, l: int) -> int:
        return STATES + self.n_layer + l

    def scratch_slot(self, i: int) -> int:
        return STATES + 2 * self.n_layer + i


def gated_linear_rnn_lm_program(config: Any, weights: dict[str, int], keep: Any = None, tokens32: bool = False
                                ) -> tuple[Program, Layout]:
    """The GatedLinearRNN LM's decode step (``gated_linear_rnn_lm.md`` §10) as one program.

    ``config``: a ``GatedLinearRNNLMConfig``; ``weights``: canonical name → address of the float32 parameter,
    contiguous, where every ``*.kernel`` is its packed form (:func:`linrec.backends.native.dense.pack`). Slots:
    ``TOKENS`` (``(m,)`` int64 ids, int32 with ``tokens32``, or ``(m, d_input)`` float32 inputs), ``POSITIONS``
    (``(m,)`` int32 table rows),
    ``OUT`` (``(m, d_output)``), the layers' states ``(m, d_h)`` in and out (:class:`Layout`), then scratch.
    """
    d, h, c, n_layer = config.d_model, config.d_h, config.d_channel_mixing, config.n_layer
    layer = config.layer_config
    width = layer.n_blocks * h
    layout = Layout(n_layer, (d, d, width, h, c, d) + ((width,) if layer.use_true_recurrence else ()))
    x, z, u, y, t, s = (layout.scratch_slot(i) for i in range(6))
    ops = []
    if config.use_word_embedding:
        ops.append(Op(GATHER, x, TOKENS, flag=INDEX_INT32 * tokens32, width=d, n=config.input_vocab_size,
                      w=weights["embed.embedding"]))
    else:
        ops.append(Op(DENSE, x, TOKENS, width=config.d_input, n=d, w=weights["input_proj.kernel"],
                      b=weights["input_proj.bias"]))
    if config.positional_encoding_mode == "learned":
        ops.append(Op(GATHER, x, POSITIONS, flag=INDEX_INT32 | GATHER_ADD, width=d, n=config.max_seq_length,
                      w=weights["pos_embed.embedding"]))
    elif config.positional_encoding_mode == "sinusoidal":
        ops.append(Op(SINUSOID, x, POSITIONS, width=d))
    kind = cell_kind(layer.input_activation, layer.hidden_activation, layer.gate_activation)

    def dense(dst: int, src: int, name: str, k: int, n: int) -> Op:
        return Op(DENSE, dst, src, width=k, n=n, w=weights[name + ".kernel"], b=weights.get(name + ".bias", 0))

    def layer_norm(prefix: str, dst: int) -> Op:
        return Op(LAYER_NORM, dst, x, width=d, eps=config.eps, w=weights[prefix + "norm.scale"],
                  b=weights[prefix + "norm.bias"])

    gelu = ACTIVATIONS["gelu" if config.gelu_approximate else "gelu_exact"]
    for l in range(n_layer):
        tm, cm = f"layers.{l}.time_mixing.", f"layers.{l}.channel_mixing."
        ops += [layer_norm(tm, z), dense(u, z, tm + "rnn.proj", d, width)]
        if layer.use_true_recurrence:
            rec = layout.scratch_slot(6)
            ops += [Op(DENSE, rec, layout.state_in(l), width=h, n=width, w=weights[tm + "rnn.recurrent_proj.kernel"]),
                    Op(ADD, u, rec, width=width)]
        ops += [Op(GLRNN_CELL, layout.state_out(l), u, aux=layout.state_in(l), extra=y, kind=kind,
                   flag=int(layer.use_tied_gates), width=h),
                dense(s, y, tm + "rnn.out_proj", h, d),
                Op(ADD, x, s, width=d),
                layer_norm(cm, z),
                dense(t, z, cm + "fc1", d, c),
                Op(ACT, t, t, kind=gelu, width=c),
                dense(s, t, cm + "fc2", c, d),
                Op(ADD, x, s, width=d)]
    if config.use_head:
        ops.append(Op(DENSE, OUT, x, width=d, n=config.output_vocab_size, w=weights["head.kernel"],
                      b=weights["head.bias"]))
    else:
        ops.append(Op(COPY, OUT, x, width=d))
    return Program(ops, layout.n_slots, keep), layout


def mingru_lm_program(config: Any, weights: dict[str, int], keep: Any = None, tokens32: bool = False
                      ) -> tuple[Program, Layout]:
    """The minGRU LM's decode step (``mingru_lm.md`` §5) as one program: ``config`` a ``MinGRULMConfig``,
    ``weights`` and slots as :func:`gated_linear_rnn_lm_program` (``TOKENS``: ``(m,)`` int64 ids; ``POSITIONS``
    unused)."""
    d, h, n_layer = config.d_model, config.d_inner, config.n_layers
    mixer = config.mingru
    prenorm = config.block == "prenorm"
    layout = Layout(n_layer, (d, d, 2 * h, d, max(config.d_ff if prenorm else 0, 2 * d)))
    x, z, u, s, t = (layout.scratch_slot(i) for i in range(5))
    ops = [Op(GATHER, x, TOKENS, flag=INDEX_INT32 * tokens32, width=d, n=config.vocab_size,
              w=weights["embed.embedding"])]
    for l in range(n_layer):
        p = f"layers.{l}."
        state = layout.state_out(l)
        cell = [Op(DENSE, u, z if prenorm else x, width=d, n=2 * h, w=weights[p + "mingru.proj.kernel"],
                   b=weights.get(p + "mingru.proj.bias", 0)),
                Op(MINGRU_CELL, state, u, aux=layout.state_in(l), width=h, flag=int(mixer.candidate == "g"))]
        if not prenorm:
            ops += [*cell, Op(DENSE, t, state, width=h, n=2 * d, w=weights[p + "glu.kernel"],
                              b=weights[p + "glu.bias"]), Op(GLU_ADD, x, t, width=d)]
            continue
        ops += [Op(RMS_NORM, z, x, width=d, eps=config.norm_eps, w=weights[p + "norm.scale"]), *cell]
        if mixer.out_proj:
            ops += [Op(DENSE, s, state, width=h, n=d, w=weights[p + "mingru.out_proj.kernel"]), Op(ADD, x, s, width=d)]
        else:
            ops.append(Op(ADD, x, state, width=d))
        f = config.d_ff
        ops += [Op(RMS_NORM, z, x, width=d, eps=config.norm_eps, w=weights[p + "ff_norm.scale"]),
                Op(DENSE, t, z, width=d, n=f, w=weights[p + "ff.fc1.kernel"], b=weights[p + "ff.fc1.bias"]),
                Op(ACT, t, t, kind=ACTIVATIONS["gelu_exact"], width=f),
                Op(DENSE, s, t, width=f, n=d, w=weights[p + "ff.fc2.kernel"], b=weights[p + "ff.fc2.bias"]),
                Op(ADD, x, s, width=d)]
    if prenorm:
        ops.append(Op(RMS_NORM, z, x, width=d, eps=config.norm_eps, w=weights["final_norm.scale"]))
    ops.append(Op(DENSE, OUT, z if prenorm else x, width=d, n=config.vocab_size, w=weights["head.kernel"],
                  b=weights.get("head.bias", 0)))
    return Program(ops, layout.n_slots, keep), layout


def gated_linear_rnn_program(config: Any, weights: dict[str, int], keep: Any = None, tokens32: bool = False
                             ) -> tuple[Program, Layout]:
    """The GatedLinearRNN layer's step (``gated_linear_rnn.md``) as one program: ``config`` a
    ``GatedLinearRNNConfig``; ``TOKENS`` holds ``x_t (m, d_in)`` float32, ``OUT`` ``y_t (m, d_model)``, one state."""
    h, width = config.d_h, config.n_blocks * config.d_h
    layout = Layout(1, (width, h) + ((width,) if config.use_true_recurrence else ()))
    u, y = layout.scratch_slot(0), layout.scratch_slot(1)
    ops = [Op(DENSE, u, TOKENS, width=config.d_in, n=width, w=weights["proj.kernel"], b=weights["proj.bias"])]
    if config.use_true_recurrence:
        rec = layout.scratch_slot(2)
        ops += [Op(DENSE, rec, layout.state_in(0), width=h, n=width, w=weights["recurrent_proj.kernel"]),
                Op(ADD, u, rec, width=width)]
    kind = cell_kind(config.input_activation, config.hidden_activation, config.gate_activation)
    ops += [Op(GLRNN_CELL, layout.state_out(0), u, aux=layout.state_in(0), extra=y, kind=kind,
               flag=int(config.use_tied_gates), width=h),
            Op(DENSE, OUT, y, width=h, n=config.d_model, w=weights["out_proj.kernel"], b=weights["out_proj.bias"])]
    return Program(ops, layout.n_slots, keep), layout


def mingru_program(config: Any, weights: dict[str, int], keep: Any = None, tokens32: bool = False
                   ) -> tuple[Program, Layout]:
    """The minGRU layer's step (``mingru.md``) as one program: ``config`` a ``MinGRUConfig``; ``TOKENS`` holds
    ``x_t (m, d_model)`` float32, ``OUT`` ``y_t (m, D_out)``, one state."""
    return _min_rnn_program(MINGRU_CELL, 2, config, weights, keep)


def minlstm_program(config: Any, weights: dict[str, int], keep: Any = None, tokens32: bool = False
                    ) -> tuple[Program, Layout]:
    """The minLSTM layer's step (``minlstm.md``), as :func:`mingru_program`: ``config`` a ``MinLSTMConfig``."""
    return _min_rnn_program(MINLSTM_CELL, 3, config, weights, keep)


def _min_rnn_program(cell: int, blocks: int, config: Any, weights: dict[str, int], keep: Any
                     ) -> tuple[Program, Layout]:
    """One product into ``blocks`` gate blocks of ``H``, the ``cell``, then ``out_proj`` (or a copy)."""
    h = config.d_inner
    layout = Layout(1, (blocks * h,))
    u, state = layout.scratch_slot(0), layout.state_out(0)
    ops = [Op(DENSE, u, TOKENS, width=config.d_model, n=blocks * h, w=weights["proj.kernel"],
              b=weights.get("proj.bias", 0)),
           Op(cell, state, u, aux=layout.state_in(0), width=h, flag=int(config.candidate == "g"))]
    if config.out_proj:
        ops.append(Op(DENSE, OUT, state, width=h, n=config.d_model, w=weights["out_proj.kernel"]))
    else:
        ops.append(Op(COPY, OUT, state, width=h))
    return Program(ops, layout.n_slots, keep), layout


# ---------------------------------------------------------------------------------------------------------------------
# The multi-head GateLoop layer (``gateloop_mh.md``)

#: the projections ``GMH_CELL`` reads, in the order of its ``u`` row, before the gate's (``config.gate_names``)
GMH_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
#: ``GMH_CELL`` reads K, V and R from 20-bit fields of its ``n`` (``K | V << 20 | R << 40``)
_GMH_FIELD = 1 << 20


def gateloop_mh_refusal(config: Any) -> str | None:
    """Why :func:`gateloop_mh_program` cannot run this ``GateLoopMHConfig``, or ``None`` when it can."""
    if config.input_norm != "none":
        return f"input_norm={config.input_norm!r} is not in the native program (it has input_norm='none')"
    if config.is_complex and config.complex_output == "complex":
        return "complex_output='complex' gives complex outputs; the native program reads out Re(o)"
    if max(config.d_key, config.d_value, config.gate_rows) >= _GMH_FIELD:  # the cell's packed size fields
        return f"d_key={config.d_key}, d_value={config.d_value}: the native program takes sizes below {_GMH_FIELD}"
    return None


def gateloop_mh_fused_params(config: Any, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float32 host arrays :func:`gateloop_mh_program` reads: ``fused_proj`` (``q | k | v | gates``, one
    ``(D, 2HK + HV + G·HR)`` kernel and its bias, zeros where the layer has none) and the rest by their names."""
    names = (*GMH_PROJECTIONS, *config.gate_names)
    kernels = [np.asarray(params[f"{n}.kernel"], np.float32) for n in names]
    biases = [np.asarray(params[f"{n}.bias"], np.float32) if f"{n}.bias" in params
              else np.zeros(k.shape[1], np.float32) for n, k in zip(names, kernels, strict=True)]
    fused = {"fused_proj.kernel": np.concatenate(kernels, axis=1), "fused_proj.bias": np.concatenate(biases)}
    rest = {k: np.asarray(v, np.float32) for k, v in params.items()
            if not any(k.startswith(f"{n}.") for n in names)}
    return {**fused, **rest}


def gateloop_mh_state_width(config: Any) -> int:
    """Floats per row of the program's state: ``H·K·V``, twice that for a complex state (``(re, im)`` pairs)."""
    return config.num_heads * config.d_key * config.d_value * (2 if config.is_complex else 1)


def host_weights(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    """What a program reads by address: float32 C-contiguous copies the caller owns (a framework's buffer may move
    or be donated), every ``*.kernel`` in packed form (:func:`linrec.backends.native.dense.pack`)."""
    from linrec.backends.native import dense

    return {k: dense.pack(np.asarray(v, np.float32)) if k.endswith("kernel") else np.array(v, np.float32, copy=True)
            for k, v in arrays.items()}


def gateloop_mh_build(config: Any, params: dict[str, Any]) -> tuple[Program, Layout]:
    """:func:`gateloop_mh_program` over host copies of ``params`` (canonical names, NumPy-convertible, float32)."""
    hosts = host_weights(gateloop_mh_fused_params(config, params))
    return gateloop_mh_program(config, {k: v.ctypes.data for k, v in hosts.items()}, keep=hosts)


def gateloop_mh_program(config: Any, weights: dict[str, int], keep: Any = None, tokens32: bool = False
                        ) -> tuple[Program, Layout]:
    """The multi-head GateLoop layer's step (``gateloop_mh.md`` §2) as one program, for what
    :func:`gateloop_mh_refusal` accepts: ``weights`` the addresses of :func:`gateloop_mh_fused_params`' arrays
    (kernels packed). ``TOKENS`` holds ``x_t (m, D)`` float32, ``OUT`` ``y_t (m, D)``, one state of
    :func:`gateloop_mh_state_width` floats per row."""
    why = gateloop_mh_refusal(config)
    if why is not None:
        raise ValueError(why)
    d, h, k, v, r = config.d_model, config.num_heads, config.d_key, config.d_value, config.gate_rows
    width = (2 * k + v + len(config.gate_names) * r) * h
    gate = ("real" if not config.is_complex else "cartesian" if config.gate_parametrization == "cartesian"
            else f"mag_phase_{config.phase_activation}")
    kind = {"real": 0, "mag_phase_identity": 1, "mag_phase_relu": 2, "cartesian": 3}[gate]
    gated = config.output_gate != "none"
    layout = Layout(1, (width, h * v) + ((h * v,) if gated else ()))
    u, o = layout.scratch_slot(0), layout.scratch_slot(1)
    ops = [Op(DENSE, u, TOKENS, width=d, n=width, w=weights["fused_proj.kernel"], b=weights["fused_proj.bias"]),
           Op(GMH_CELL, layout.state_out(0), u, aux=layout.state_in(0), extra=o, kind=kind, width=h,
              n=k | v << 20 | r << 40)]
    if config.sub_norm == "layernorm":
        from linrec.spec.gateloop_mh import SUB_NORM_EPS

        ops.append(Op(LAYER_NORM, o, o, width=h * v, eps=SUB_NORM_EPS, w=weights["sub_norm.scale"],
                      b=weights["sub_norm.bias"]))
    if gated:
        g = layout.scratch_slot(2)
        ops += [Op(DENSE, g, TOKENS, width=d, n=h * v, w=weights["output_gate_proj.kernel"]),
                Op(ACT_MUL, o, g, kind=ACTIVATIONS[config.output_gate], width=h * v)]
    ops.append(Op(DENSE, OUT, o, width=h * v, n=d, w=weights["out_proj.kernel"], b=weights["out_proj.bias"]))
    return Program(ops, layout.n_slots, keep), layout
