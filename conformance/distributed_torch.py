"""The ``distributed`` conformance group of the torch backend: sharded along T == one device.

``run(devices, select=None)`` spawns ``devices`` gloo processes on loopback (``torch.multiprocessing``), runs every
case of :func:`cases` on all of them (each rank holds its chunk of T; ``devices`` must be >= 2) and returns
``[(case_id, ok, message)]``, one row per case (a case passes when it passes on every rank). Judged with the spec's
tolerances (``linrec.spec.tolerances``): the sharded result against the float64 one-device result, on the same
rounded inputs, passing also within ``BASELINE_FACTOR`` x the one-device error in the case dtype.

Case ids: ``scan/...`` (every option of the scan: reverse, resets inside a chunk and exactly at a chunk edge,
initial_state, complex, float64; outputs, final states and gradients w.r.t. ``a``, ``b`` and ``initial_state``),
``layer/...`` and ``lm/...`` (every layer and LM through ``SequenceParallel``: outputs, final states, gradients
w.r.t. the input and every parameter), ``error/...`` (bad setups raise a clear error on every rank) and
``train/...`` (an LM training step: sequence over 2 ranks x DDP over ``devices / 2``; needs an even ``devices >= 4``).
"""

from __future__ import annotations

import fnmatch
import os
import pickle
import socket
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np

__all__ = ["cases", "run"]

_T_LOCAL = 5  # steps per rank

#: scan case id -> options
_SCAN = {
    "scan/float32": {},
    "scan/float64": {"dtype": "float64"},
    "scan/reverse": {"reverse": True},
    "scan/initial_state": {"initial_state": True},
    "scan/initial_state-reverse": {"initial_state": True, "reverse": True},
    "scan/resets-inside": {"resets": "inside", "initial_state": True},
    "scan/resets-inside-reverse": {"resets": "inside", "reverse": True, "initial_state": True},
    "scan/resets-edge": {"resets": "edge", "initial_state": True},
    "scan/resets-edge-reverse": {"resets": "edge", "reverse": True, "initial_state": True},
    "scan/complex64": {"dtype": "complex64", "initial_state": True, "resets": "inside"},
    "scan/complex128-reverse": {"dtype": "complex128", "reverse": True, "initial_state": True, "resets": "edge"},
    "scan/real-a-complex-b": {"dtype": "complex64", "real_a": True, "initial_state": True},
    "scan/broadcast-a": {"broadcast_a": True, "initial_state": True, "resets": "edge"},
    "scan/method-sequential": {"method": "sequential", "resets": "inside", "initial_state": True},
    "scan/method-chunked": {"method": "chunked", "chunk_size": 2, "reverse": True, "resets": "edge"},
    "scan/bfloat16": {"dtype": "bfloat16", "initial_state": True},
}


def cases(devices: int) -> list[str]:
    """The case ids for ``devices`` ranks."""
    ids = list(_SCAN) + list(_MODELS) + list(_ERRORS)
    if devices >= 4 and devices % 2 == 0:
        ids.append("train/lm-sequence2-ddp")
    return ids


# ---------------------------------------------------------------------------------------------------------------
# helpers (run inside the spawned processes)


def _np(x) -> np.ndarray:
    import torch

    x = x.detach()
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    return x.cpu().numpy()


def _judge(name: str, result, reference, dtype: str, length: int, grad: bool = False, baseline=None):
    from linrec.conformance.compare import compare

    return compare(name, _np(result), _np(reference), dtype, length=length, grad=grad,
                   baseline=None if baseline is None else _np(baseline))


def _chunk(x, rank: int, axis: int = 1):
    return x.narrow(axis, rank * _T_LOCAL, _T_LOCAL)


def _scan_inputs(opts: dict, size: int):
    """Global inputs ``(a, b, h0, resets, ch, cf)`` from a fixed seed (the same on every rank)."""
    import torch

    from linrec.backends.torch.arrays import torch_dtype

    g = torch.Generator().manual_seed(1234)
    n_batch, n_time, state = 2, size * _T_LOCAL, (3,)
    dtype = torch_dtype(opts.get("dtype", "float32"))
    complex_ = dtype.is_complex
    real = torch.float64

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=real)

    a_state = (1,) if opts.get("broadcast_a") else state
    a = uniform((n_batch, n_time, *a_state), 0.5, 1.05)
    b = torch.randn((n_batch, n_time, *state), generator=g, dtype=real)
    h0 = torch.randn((n_batch, *state), generator=g, dtype=real)
    ch = torch.randn((n_batch, n_time, *state), generator=g, dtype=real)
    cf = torch.randn((n_batch, *state), generator=g, dtype=real)
    if complex_:
        if not opts.get("real_a"):
            a = a * torch.exp(1j * uniform(a.shape, -0.5, 0.5))
        b = b + 1j * torch.randn(b.shape, generator=g, dtype=real)
        h0 = h0 + 1j * torch.randn(h0.shape, generator=g, dtype=real)
        ch = ch + 1j * torch.randn(ch.shape, generator=g, dtype=real)
        cf = cf + 1j * torch.randn(cf.shape, generator=g, dtype=real)
    resets = None
    if opts.get("resets") == "inside":
        resets = torch.rand((n_batch, n_time), generator=g) < 0.2
        resets[0, _T_LOCAL + 2] = True
    elif opts.get("resets") == "edge":
        resets = torch.zeros((n_batch, n_time), dtype=torch.bool)
        resets[0, _T_LOCAL::_T_LOCAL] = True  # every chunk edge of row 0
        resets[1, _T_LOCAL] = True
        resets[1, 0] = True  # ignored at the very first step, as on one device
    a_dtype = (torch.float32 if dtype == torch.complex64 else real) if opts.get("real_a") else dtype
    if dtype in (torch.bfloat16, torch.float16):
        a_dtype = dtype
    return (a.to(a_dtype), b.to(dtype), h0.to(dtype) if opts.get("initial_state") else None, resets,
            ch.to(dtype), cf.to(dtype))


def _scan_grads(fn, a, b, h0, ch, cf):
    """``(h, final, ā, b̄, h̄0)`` of ``fn`` under the loss ``Re Σ conj(ch) h + Re Σ conj(cf) final``."""
    import torch

    leaves = [x.detach().clone().requires_grad_(True) for x in (a, b)]
    h0_leaf = None if h0 is None else h0.detach().clone().requires_grad_(True)
    h, final = fn(leaves[0], leaves[1], h0_leaf)
    loss = (h * ch.conj()).real.float().sum() if h.dtype in (torch.bfloat16, torch.float16) else \
        (h * ch.conj()).real.sum()
    if cf is not None:
        loss = loss + (final * cf.conj()).real.sum()
    loss.backward()
    return h, final, leaves[0].grad, leaves[1].grad, None if h0_leaf is None else h0_leaf.grad


def _scan_case(case_id: str, group, rank: int, size: int):
    import torch
    import torch.distributed as dist

    from linrec.backends.torch import linear_scan
    from linrec.backends.torch.distributed import linear_scan_sharded
    from linrec.conformance.compare import compare_many

    opts = _SCAN[case_id]
    dtype = opts.get("dtype", "float32")
    a, b, h0, resets, ch, cf = _scan_inputs(opts, size)
    kw = {"reverse": opts.get("reverse", False), "method": opts.get("method", "auto"),
          "chunk_size": opts.get("chunk_size")}
    length = b.shape[1]

    def wide(x):
        if x is None or x.dtype == torch.bool:
            return x
        return x.to(torch.complex128 if x.is_complex() else torch.float64)

    ref = _scan_grads(lambda a_, b_, h_: linear_scan(a_, b_, initial_state=h_, resets=resets, **kw),
                      wide(a), wide(b), wide(h0), wide(ch), wide(cf))
    base = _scan_grads(lambda a_, b_, h_: linear_scan(a_, b_, initial_state=h_, resets=resets, **kw),
                       a, b, h0, ch, cf)
    local_resets = None if resets is None else _chunk(resets, rank)
    mine = _scan_grads(
        lambda a_, b_, h_: linear_scan_sharded(a_, b_, initial_state=h_, resets=local_resets, group=group, **kw),
        _chunk(a, rank), _chunk(b, rank), h0, _chunk(ch, rank), cf if rank == 0 else torch.zeros_like(cf))
    h, final, ga, gb, gh0 = mine
    if gh0 is not None:
        dist.all_reduce(gh0, group=group)  # the one-device gradient is the sum over the ranks
    outcomes = [
        _judge("h", h, _chunk(ref[0], rank), dtype, length, baseline=_chunk(base[0], rank)),
        _judge("final_state", final, ref[1], dtype, length, baseline=base[1]),
        _judge("grad a", ga, _chunk(ref[2], rank), dtype, length, grad=True, baseline=_chunk(base[2], rank)),
        _judge("grad b", gb, _chunk(ref[3], rank), dtype, length, grad=True, baseline=_chunk(base[3], rank)),
    ]
    if gh0 is not None:
        outcomes.append(_judge("grad initial_state", gh0, ref[4], dtype, length, grad=True, baseline=base[4]))
    return compare_many(outcomes)


# ---------------------------------------------------------------------------------------------------------------
# layers and LMs


def _mods():
    import linrec.backends.torch as lt

    return lt


def _stack_lm(lt, vocab: int):
    from linrec.backends.torch.mingru_stack_lm import MinGRUStackLM  # not exported by the package namespace

    return MinGRUStackLM(vocab, 6, [8, 8])


def _models() -> dict[str, Callable[[], tuple[Any, str, dict]]]:
    """case id -> builder of ``(module, input kind, call options)``; input kinds: ``x`` (B, T, D) or ``tokens``."""
    def build(make, kind="x", **call):
        return lambda: (make(_mods()), kind, call)

    vocab = 11
    return {
        "layer/mingru": build(lambda lt: lt.MinGRU(4, d_inner=6, candidate="g", default_state=0.5, out_proj=True)),
        "layer/mingru-lengths": build(lambda lt: lt.MinGRU(4, d_inner=6), lengths=True),
        "layer/minlstm": build(lambda lt: lt.MinLSTM(4, d_inner=6)),
        "layer/gated_linear_rnn": build(lambda lt: lt.GatedLinearRNN(4, 6)),
        "layer/gated_linear_rnn-reversed-lengths": build(lambda lt: lt.GatedLinearRNN(4, 6, reversed=True),
                                                          lengths=True),
        "layer/gateloop_mh": build(lambda lt: lt.GateLoopMH(4, 2)),
        "layer/gateloop_mh-complex": build(lambda lt: lt.GateLoopMH(4, 2, gate="complex")),
        "layer/mingru_stack": build(lambda lt: lt.MinGRUStack(4, [6, 5], residual=True, norm=True)),
        "lm/mingru_lm": build(lambda lt: lt.MinGRULM(vocab, 8, 2), "tokens"),
        "lm/mingru_lm-prenorm-lengths": build(lambda lt: lt.MinGRULM(vocab, 8, 2, block="prenorm"), "tokens",
                                              lengths=True),
        "lm/mingru_stack_lm": build(lambda lt: _stack_lm(lt, vocab), "tokens"),
        "lm/gated_linear_rnn_lm": build(lambda lt: lt.GatedLinearRNNLM(2, 8, 12, 8, input_vocab_size=vocab,
                                                                       output_vocab_size=vocab), "tokens"),
        "lm/gated_linear_rnn_lm-learned-positions": build(
            lambda lt: lt.GatedLinearRNNLM(2, 8, 12, 8, input_vocab_size=vocab, output_vocab_size=vocab,
                                           positional_encoding_mode="learned", max_seq_length=64), "tokens",
            initial_position=3),
        "lm/gateloop_lm-sinusoidal-lengths": build(
            lambda lt: lt.GateLoopLM(2, 8, 12, 8, input_vocab_size=vocab, output_vocab_size=vocab,
                                     positional_encoding_mode="sinusoidal", max_seq_length=64), "tokens",
            lengths=True),
    }


_MODELS = _models()


def _state_tensors(state) -> list:
    h = state.h if isinstance(state.h, (tuple, list)) else (state.h,)
    return list(h)


def _model_case(case_id: str, group, rank: int, size: int):
    import torch

    from linrec.backends.torch.distributed import SequenceParallel, reduce_gradients
    from linrec.conformance.compare import compare_many

    torch.manual_seed(0)
    module, kind, call = _MODELS[case_id]()
    module = module.double().eval()
    n_batch, length = 2, size * _T_LOCAL
    g = torch.Generator().manual_seed(99)
    if kind == "tokens":
        x = torch.randint(0, 11, (n_batch, length), generator=g)
    else:
        x = torch.randn((n_batch, length, 4), generator=g, dtype=torch.float64)
    kwargs = {}
    if call.get("lengths"):
        kwargs["lengths"] = torch.tensor([length - _T_LOCAL - 2, length], dtype=torch.int64)[:n_batch]
    initial = None
    if call.get("initial_position"):
        state = module.initial_state(n_batch)
        initial = type(state)(state.h, torch.full((n_batch,), call["initial_position"], dtype=torch.int32))

    def run(mod, inputs, weight_rank: bool):
        leaf = inputs if kind == "tokens" else inputs.detach().clone().requires_grad_(True)
        mod.zero_grad()
        y, final = mod(leaf, initial, **kwargs)
        gy = torch.randn(y.shape if not weight_rank else (n_batch, length, *y.shape[2:]), generator=
                         torch.Generator().manual_seed(5), dtype=torch.float64)
        if weight_rank:
            gy = _chunk(gy, rank)
        loss = (y * gy).sum()
        gf = torch.Generator().manual_seed(6)
        for h in _state_tensors(final):
            w = torch.randn(h.shape, generator=gf, dtype=torch.float64)
            term = (h * w).real.sum()
            loss = loss + (term if (rank == 0 or not weight_rank) else 0 * term)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in mod.named_parameters() if p.grad is not None}
        return y.detach(), final, None if kind == "tokens" else leaf.grad, grads

    y_ref, final_ref, gx_ref, grads_ref = run(module, x, False)
    sp = SequenceParallel(module, group)
    y, final, gx, _ = run(sp, _chunk(x, rank), True)
    reduce_gradients(module, group)
    grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    outcomes = [_judge("y", y, _chunk(y_ref, rank), "float64", length)]
    for i, (h, h_ref) in enumerate(zip(_state_tensors(final), _state_tensors(final_ref))):
        outcomes.append(_judge(f"final_state.h[{i}]", h, h_ref, "float64", length))
    if final_ref.position is not None:
        same = torch.equal(torch.as_tensor(final.position), torch.as_tensor(final_ref.position))
        outcomes.append(_judge("final_state.position", torch.as_tensor(final.position).double(),
                               torch.as_tensor(final_ref.position).double(), "float64", length)
                        if same else _fail(f"final_state.position {final.position} != {final_ref.position}"))
    if gx is not None:
        outcomes.append(_judge("grad x", gx, _chunk(gx_ref, rank), "float64", length, grad=True))
    if set(grads) != set(grads_ref):
        return _fail(f"parameters with gradients differ: {sorted(set(grads) ^ set(grads_ref))}")
    for name in grads_ref:
        outcomes.append(_judge(f"grad {name}", grads[name], grads_ref[name], "float64", length, grad=True))
    return compare_many(outcomes)


def _fail(message: str):
    from linrec.conformance.case import Outcome

    return Outcome(False, float("inf"), 0.0, message)


def _ok(message: str):
    from linrec.conformance.case import Outcome

    return Outcome(True, 0.0, 0.0, message)


# ---------------------------------------------------------------------------------------------------------------
# bad setups


def _expect_error(fn, kinds, words: tuple[str, ...]):
    try:
        fn()
    except kinds as e:
        text = str(e)
        missing = [w for w in words if w not in text]
        return _fail(f"message lacks {missing}: {text}") if missing else _ok(text)
    return _fail("no error raised")


def _error_unequal_t(group, rank, size):
    import torch

    from linrec.backends.torch.distributed import linear_scan_sharded

    t = _T_LOCAL + (1 if rank == size - 1 else 0)
    a, b = torch.full((2, t, 3), 0.9), torch.ones((2, t, 3))
    return _expect_error(lambda: linear_scan_sharded(a, b, group=group), ValueError, ("same chunk length", "T"))


def _error_log(group, rank, size):
    import torch

    from linrec.backends.torch.distributed import linear_scan_sharded

    a, b = torch.full((2, 4, 3), 0.9), torch.ones((2, 4, 3))
    return _expect_error(lambda: linear_scan_sharded(a, b, group=group, method="log"), ValueError,
                         ("method='log'", "'chunked'"))


def _error_group_of_one(group, rank, size):
    import torch
    import torch.distributed as dist

    from linrec.backends.torch.distributed import linear_scan_sharded

    singles = [dist.new_group([r]) for r in range(size)]  # every rank creates every group
    a, b = torch.full((2, 4, 3), 0.9), torch.ones((2, 4, 3))
    return _expect_error(lambda: linear_scan_sharded(a, b, group=singles[rank]), ValueError,
                         ("one process", "linear_scan"))


def _error_layer_sequential(group, rank, size):
    import torch

    from linrec.backends.torch import MinGRU
    from linrec.backends.torch.distributed import SequenceParallel

    layer = SequenceParallel(MinGRU(4), group)
    return _expect_error(lambda: layer(torch.ones(2, 4, 4), mode="sequential"), ValueError,
                         ("sequence-parallel", "mode='parallel'"))


def _error_layer_log(group, rank, size):
    import torch

    from linrec.backends.torch import MinGRU
    from linrec.backends.torch.distributed import SequenceParallel

    layer = SequenceParallel(MinGRU(4, candidate="g"), group)
    return _expect_error(lambda: layer(torch.ones(2, 4, 4), method="log"), ValueError,
                         ("sequence-parallel", "'chunked'"))


def _error_remat(group, rank, size):
    import torch

    from linrec.backends.torch import MinGRU
    from linrec.backends.torch.distributed import SequenceParallel

    layer = SequenceParallel(MinGRU(4, remat=True), group)
    return _expect_error(lambda: layer(torch.ones(2, 4, 4)), ValueError, ("remat=True", "remat=False"))


_ERRORS = {
    "error/unequal-T": _error_unequal_t,
    "error/method-log": _error_log,
    "error/group-of-one": _error_group_of_one,
    "error/layer-sequential-mode": _error_layer_sequential,
    "error/layer-method-log": _error_layer_log,
    "error/remat": _error_remat,
}


# ---------------------------------------------------------------------------------------------------------------
# training: sequence over 2 ranks x DDP over the others


def _train_case(group, rank: int, size: int):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from linrec.backends.torch import GatedLinearRNNLM
    from linrec.backends.torch.distributed import SequenceParallel, reduce_gradients
    from linrec.conformance.compare import compare_many

    n_seq, n_data = 2, size // 2
    # rank = data_rank * n_seq + seq_rank; every rank creates every group, in the same order
    seq_groups = [dist.new_group([d * n_seq + s for s in range(n_seq)]) for d in range(n_data)]
    data_groups = [dist.new_group([d * n_seq + s for d in range(n_data)]) for s in range(n_seq)]
    data_rank, seq_rank = divmod(rank, n_seq)
    seq_group, data_group = seq_groups[data_rank], data_groups[seq_rank]
    vocab, n_batch, length = 13, 2 * n_data, n_seq * _T_LOCAL
    torch.manual_seed(0)
    lm = GatedLinearRNNLM(2, 8, 16, 8, input_vocab_size=vocab, output_vocab_size=vocab,
                          positional_encoding_mode="learned", max_seq_length=32, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, vocab, (n_batch, length + 1), generator=g)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    # one device
    logits, _ = lm(inputs)
    loss_ref = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
    grads_ref = torch.autograd.grad(loss_ref, list(lm.parameters()))
    # sequence-parallel x data-parallel
    model = DDP(SequenceParallel(lm, seq_group), process_group=data_group)
    rows = slice(data_rank * (n_batch // n_data), (data_rank + 1) * (n_batch // n_data))
    cols = slice(seq_rank * _T_LOCAL, (seq_rank + 1) * _T_LOCAL)
    logits, _ = model(inputs[rows, cols])
    local_tokens = logits.shape[0] * length  # this data shard's tokens over the whole sequence
    loss = F.cross_entropy(logits.reshape(-1, vocab), targets[rows, cols].reshape(-1), reduction="sum") / local_tokens
    lm.zero_grad()
    loss.backward()  # DDP averages over the data group
    reduce_gradients(lm, seq_group)  # the sequence group sums
    total = loss.detach().clone()
    dist.all_reduce(total, group=seq_group)
    dist.all_reduce(total, group=data_group)
    total /= n_data
    outcomes = [_judge("loss", total, loss_ref.detach(), "float64", length)]
    for (name, p), g_ref in zip(lm.named_parameters(), grads_ref):
        outcomes.append(_judge(f"grad {name}", p.grad, g_ref, "float64", length, grad=True))
    return compare_many(outcomes)


# ---------------------------------------------------------------------------------------------------------------
# the runner


def _run_case(case_id: str, group, rank: int, size: int):
    if case_id in _SCAN:
        return _scan_case(case_id, group, rank, size)
    if case_id in _MODELS:
        return _model_case(case_id, group, rank, size)
    if case_id in _ERRORS:
        return _ERRORS[case_id](group, rank, size)
    if case_id == "train/lm-sequence2-ddp":
        return _train_case(group, rank, size)
    raise KeyError(case_id)


def _worker(rank: int, size: int, port: int, ids: list[str], out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=120))
    try:
        rows = []
        for case_id in ids:
            try:
                outcome = _run_case(case_id, None, rank, size)
                row = (bool(outcome.passed), outcome.detail)
            except Exception as e:  # a failing case must not stop the others
                row = (False, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
            everyone = [None] * size
            dist.all_gather_object(everyone, row)
            ok = all(r[0] for r in everyone)
            message = everyone[0][1] if ok else "; ".join(f"rank {i}: {r[1]}" for i, r in enumerate(everyone)
                                                          if not r[0])
            rows.append((case_id, ok, message))
        if rank == 0:
            with open(out, "wb") as f:
                pickle.dump(rows, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(devices: int = 4, select: str | None = None) -> list[tuple[str, bool, str]]:
    """Run the distributed cases on ``devices`` spawned gloo processes; ``select`` (an fnmatch pattern, as
    ``linrec conformance --select``) keeps the ids it matches.

    Returns ``[(case_id, ok, message)]``. ``devices < 2`` raises ``ValueError`` (a group of one shards nothing).
    """
    import torch.multiprocessing as mp

    if devices < 2:
        raise ValueError(f"--devices must be >= 2 for the distributed group (got {devices}): one device has "
                         "nothing to shard")
    ids = [c for c in cases(devices) if select is None or fnmatch.fnmatchcase(c, select)]
    if not ids:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.pkl")
        mp.spawn(_worker, args=(devices, _free_port(), ids, out), nprocs=devices, join=True)
        with open(out, "rb") as f:
            return pickle.load(f)
