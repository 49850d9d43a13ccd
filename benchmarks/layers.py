"""Layer benchmark: training-step throughput, peak memory and decode latency, linrec against the originals.

Shape legend: ``B`` batch, ``T`` time, ``D`` ``d_model``.

Layers, each on one configuration shared by linrec and the original (the mapping of ``spec/gateloop_mh.md`` §9 and
``linrec.tools.originals``; ``tests/test_bench.py`` checks it against the importers), at B=8, T=4096, D=512 in the
full run (:data:`LAYERS`):

- GatedLinearRNN ``(d_model=D, d_h=D)``, tied and untied gates: linrec (JAX, PyTorch) vs ``flax-gated-linear-rnn``
  ``GatedLinearRNN`` (JAX).
- minGRU and minLSTM ``(D)`` (``candidate="g"``, no bias, no output projection): linrec vs ``mingru-pytorch``
  ``minGRU`` / ``minLSTM`` (PyTorch).
- GateLoop, one SISO head per channel: linrec ``gateloop_mh`` (``num_heads=D, d_key=d_value=1``) vs
  ``gateloop-transformer`` ``SimpleGateLoopLayer(D, prenorm=False)`` (PyTorch). linrec computes the same function
  through its general multi-head layer, so it also runs a ``v_proj`` and an ``out_proj`` (two extra ``D×D`` products)
  that the original does not have.
- The multi-head GateLoop: ``D/8`` complex heads of ``8×8`` states vs ``GateLoopedAttention(D, heads=D/8)``
  (PyTorch; no step path, so no decode row).

Training step: forward and backward of ``y.sum()`` with respect to every parameter and ``x`` (JAX: ``jax.grad``
jitted, compiled ahead of time; PyTorch: eager ``torch.autograd.grad``, the originals ``.backward()``), linrec on
its default path (``method="auto"``), the originals on their parallel path. Peak memory: the rise of the process's
peak RSS during one step above the RSS before it (``/proc/self/clear_refs`` resets the peak after warm-up and
compilation).
Decode: one token per call at ``B=1`` and ``B=16`` (linrec: the module's ``decoder()``, the token-loop API — one
jitted call in JAX, eager without autograd in PyTorch, the parameters read once and the float32 kernels packed for
the native dense product at up to 32 rows; originals: their ``T=1`` paths with a carried state, the flax one
jitted), synchronised after every token. PyTorch decodes at ``B=1`` on one intra-op thread
(:data:`TORCH_DECODE_THREADS`, every PyTorch implementation alike), as in ``decode.py``.

*matmul floor jax/torch* (no target): the layer's dense products alone (every 2-D kernel of linrec's layer,
``linrec.tools.dense_floor``), forward and backward for fixed output cotangents at ``B·T`` rows, and one call per
token at the decode batch size for decode, in the same framework (JAX: the products chained in order, as a layer runs
them). The decode table adds a *weight-read floor*: every parameter's bytes at the bandwidth probed at the start of
the run; a linrec decode row's ``/ floor`` is over the larger of the two. Every implementation computing those
products with this framework's matrix multiply pays about that (merging products that share an input could shave some
of it), so the floor's *speedup vs original* is the ceiling of a speedup in that framework (Amdahl); the targets
report it.

Every (layer, implementation) runs in its own subprocesses, so frameworks do not share threads or memory: one
times it with the default allocator, another measures peak memory with ``linrec.tools.bench.MEMORY_ENV``. The
timings run in ``rounds`` rounds (2 in the full run), every implementation once per round in turn, and each keeps
its fastest round (:func:`faster`): the shared VM's speed drifts over minutes, and one pass could time the original
in a fast stretch and linrec in a slow one, or the reverse.

Run: ``python benchmarks/layers.py [--quick] [--out DIR]`` or ``linrec bench layers``.
"""

from __future__ import annotations

import gc
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from linrec.tools import bench

COLUMNS = ["layer", "implementation", "T", "step ms", "/ floor", "tokens/s", "peak MB", "speedup vs original",
           "note"]
DECODE_COLUMNS = ["layer", "B", "implementation", "decode µs/token", "/ floor", "speedup vs original", "note"]
#: ``rounds``: how many times every implementation is timed, round-robin, each keeping its fastest round.
#: ``decode_batches``: the batch sizes of the decode timings (issue 17: B=1, bound by reading the weights, and B=16).
FULL = {"B": 8, "D": 512, "T": (4096,), "decode_tokens": 200, "rounds": 2, "decode_batches": (1, 16)}
QUICK = {"B": 2, "D": 32, "T": (64,), "decode_tokens": 20, "rounds": 1, "decode_batches": (1, 2)}
#: Targets (benchmarks/README.md): a training step at T = ``TRAIN_TARGET_T`` within ``FLOOR_TARGET`` times its
#: framework's matmul floor and at least as fast as the original; decode ``DECODE_TARGET`` times the original's.
FLOOR_TARGET, TRAIN_TARGET_T, DECODE_TARGET = 1.3, 4096, 5.0
RESULTS = Path(__file__).resolve().parent / "results"
#: PyTorch intra-op threads while decoding at B=1 (linrec, the originals and the floor alike), as in decode.py: at
#: B=1 there is nothing worth splitting, and an idle OpenMP thread spinning on the second core slowed the native
#: dense product's worker there (minLSTM decode 92 vs 199 us). Training and B=16 keep PyTorch's default.
TORCH_DECODE_THREADS = 1

class Layer(NamedTuple):
    """A benchmarked layer: its table title, linrec module, the original's label and the module that provides it."""

    title: str
    module: str
    original: str
    original_module: str


#: GatedLinearRNN with true recurrence off (its sequential-only option has no parallel training step to compare).
#: The multi-head GateLoop has ``D / 8`` complex heads of ``8 × 8`` states: the original (and linrec's default
#: parallel path) hold every head's state at every step, ``B·T·D·8`` complex numbers (1 GiB at B=8, T=4096,
#: D=512); 8 heads of 64 would need 8 GiB per tensor.
LAYERS = {
    "gated_linear_rnn": Layer("GatedLinearRNN", "gated_linear_rnn", "flax-gated-linear-rnn GatedLinearRNN (jax)",
                              "flax_gated_linear_rnn"),
    "gated_linear_rnn_untied": Layer("GatedLinearRNN (untied gates)", "gated_linear_rnn",
                                     "flax-gated-linear-rnn GatedLinearRNN(use_tied_gates=False) (jax)",
                                     "flax_gated_linear_rnn"),
    "mingru": Layer("minGRU", "mingru", "mingru-pytorch minGRU (torch)", "minGRU_pytorch"),
    "minlstm": Layer("minLSTM", "minlstm", "mingru-pytorch minLSTM (torch)", "minGRU_pytorch"),
    "gateloop_mh": Layer("GateLoop (SISO heads)", "gateloop_mh", "gateloop-transformer SimpleGateLoopLayer (torch)",
                         "gateloop_transformer"),
    "gateloop_mh_heads": Layer("GateLoop (D/8 complex heads)", "gateloop_mh",
                               "gateloop-transformer GateLoopedAttention(heads=D/8) (torch)", "gateloop_transformer"),
}
#: ``FLOORS``: rows timing only the layer's dense products (``linrec.tools.dense_floor``), per linrec framework; their
#: *speedup vs original* is the ceiling any implementation computing those products can reach (no target).
FLOORS = {"linrec jax": "matmul floor jax", "linrec torch": "matmul floor torch"}
IMPLS = ("linrec jax", "linrec torch", "original", *FLOORS.values())
#: A computed decode row: every parameter's bytes over the bandwidth probed in the same run (no target).
WEIGHT_FLOOR = "weight-read floor"
#: width of a key and value per head of the multi-head GateLoop (``gateloop_mh_heads``)
HEAD_WIDTH = 8


def linrec_config(layer: str, d: int):
    """The linrec config equal to the original's configuration at ``d_model = d`` (its defaults, except the
    options the layer's title names)."""
    if layer in ("gated_linear_rnn", "gated_linear_rnn_untied"):
        from linrec.spec.gated_linear_rnn import GatedLinearRNNConfig

        return GatedLinearRNNConfig(d_model=d, d_h=d, use_tied_gates=layer == "gated_linear_rnn")
    if layer == "mingru":
        from linrec.spec.mingru import MinGRUConfig

        return MinGRUConfig(d_model=d, candidate="g", bias=False, default_state=0.0, out_proj=False)
    if layer == "minlstm":
        from linrec.spec.minlstm import MinLSTMConfig

        return MinLSTMConfig(d_model=d, candidate="g", bias=False, default_state=0.0, out_proj=False)
    if layer == "gateloop_mh":
        from linrec.spec.gateloop_mh import GateLoopMHConfig

        return GateLoopMHConfig(d_model=d, num_heads=d, d_key=1, d_value=1, qkv_bias=True, gate="real",
                                gate_granularity="key")
    if layer == "gateloop_mh_heads":  # GateLoopedAttention(dim=d, heads=d // 8), as the importer reads it
        from linrec.spec.gateloop_mh import GateLoopMHConfig

        return GateLoopMHConfig(d_model=d, num_heads=d // HEAD_WIDTH, d_key=HEAD_WIDTH, d_value=HEAD_WIDTH,
                                qkv_bias=False, gate="complex", gate_parametrization="cartesian",
                                gate_granularity="head", complex_output="real", input_norm="none", sub_norm="none",
                                output_gate="silu")
    raise ValueError(f"unknown layer {layer!r}")


def _linrec_params(layer: str, cfg) -> dict[str, np.ndarray]:
    from importlib import import_module

    return import_module(f"linrec.spec.{LAYERS[layer].module}").init_params(cfg, seed=0)


# --- implementations: each returns (train(x) -> (fn, sync), decode() -> (step_fn, sync)) --------------------


def _module_class(layer: str, backend: str):
    from importlib import import_module

    module = LAYERS[layer].module
    name = {"gated_linear_rnn": "GatedLinearRNN", "mingru": "MinGRU", "minlstm": "MinLSTM",
            "gateloop_mh": "GateLoopMH"}[module]
    return getattr(import_module(f"linrec.backends.{backend}.{module}"), name)


def _linrec_jax(layer: str, D: int):
    import jax
    from flax import nnx

    cfg = linrec_config(layer, D)
    module = _module_class(layer, "jax").from_canonical(cfg, _linrec_params(layer, cfg))
    graphdef, state = nnx.split(module)

    def loss(state, x):
        return nnx.merge(graphdef, state)(x)[0].sum()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))

    def train(x_np):
        x = jax.device_put(x_np)
        compiled = grad.lower(state, x).compile()
        return (lambda: compiled(state, x)), bench.jax_sync

    def decode(xs):
        h0 = module.initial_state(xs[0].shape[0])
        xs = [jax.device_put(x) for x in xs]
        step = module.decoder()  # one jitted call per token, the parameters read (and packed) once

        def run():
            h = h0
            for x_t in xs:
                y, h = step(x_t, h)
                jax.block_until_ready(y)
            return h

        return run, bench.jax_sync

    return train, decode


def _linrec_torch(layer: str, D: int):
    import torch

    cfg = linrec_config(layer, D)
    module = _module_class(layer, "torch").from_canonical(cfg, _linrec_params(layer, cfg))
    params = list(module.parameters())

    def train(x_np):
        x = torch.from_numpy(x_np).requires_grad_(True)

        def run():
            y, _ = module(x)
            return torch.autograd.grad(y.sum(), [*params, x])

        return run, lambda r: r

    def decode(xs):
        xs = [torch.from_numpy(x) for x in xs]
        h0 = module.initial_state(xs[0].shape[0])
        step = module.decoder()  # the parameters gathered (and packed) once, no autograd

        def run():
            h = h0
            for x_t in xs:
                _, h = step(x_t, h)
            return h

        return run, lambda r: r

    return train, decode


def _original_glrnn(D: int, tied: bool):
    import jax
    from flax_gated_linear_rnn import GatedLinearRNN

    layer = GatedLinearRNN(d_model=D, d_h=D, use_tied_gates=tied)
    variables = layer.init(jax.random.PRNGKey(0), np.zeros((1, 4, D), np.float32))
    grad = jax.jit(jax.grad(lambda v, x: layer.apply(v, x)[1].sum(), argnums=(0, 1)))

    def train(x_np):
        x = jax.device_put(x_np)
        compiled = grad.lower(variables, x).compile()
        return (lambda: compiled(variables, x)), bench.jax_sync

    step = jax.jit(lambda v, x_t, carry: layer.apply(v, x_t, carry=carry))

    def decode(xs):
        xs = [jax.device_put(x[:, None]) for x in xs]  # (1, 1, D): its T=1 path with a carry
        h0 = jax.numpy.zeros((xs[0].shape[0], D), np.float32)
        compiled = step.lower(variables, xs[0], h0).compile()

        def run():
            h = h0
            for x_t in xs:
                h, y = compiled(variables, x_t, h)
                jax.block_until_ready(y)
            return h

        return run, bench.jax_sync

    return train, decode


def _original_torch(make: Callable[[], Any], decode_call: Callable | None, state0: Callable[[int], Any]):
    """``decode_call=None``: the original has no step path (``decode`` then returns ``None``); ``state0(B)``: its
    empty state."""
    import torch

    torch.manual_seed(0)
    layer = make()
    params = list(layer.parameters())

    def train(x_np):
        x = torch.from_numpy(x_np).requires_grad_(True)

        def run():
            # .backward() as training runs it (GateLoopedAttention's reentrant checkpoint refuses autograd.grad)
            for leaf in (*params, x):
                leaf.grad = None
            layer(x).sum().backward()
            return [leaf.grad for leaf in (*params, x)]

        return run, lambda r: r

    def decode(xs):
        if decode_call is None:
            return None
        xs = [torch.from_numpy(x[:, None]) for x in xs]

        def run():
            state = state0(xs[0].shape[0])
            with torch.no_grad():
                for x_t in xs:
                    state = decode_call(layer, x_t, state)
            return state

        return run, lambda r: r

    return train, decode


def _original(layer: str, D: int):
    if layer in ("gated_linear_rnn", "gated_linear_rnn_untied"):
        return _original_glrnn(D, tied=layer == "gated_linear_rnn")
    if layer in ("mingru", "minlstm"):
        import torch
        from minGRU_pytorch import minGRU
        from minGRU_pytorch.minLSTM import minLSTM

        return _original_torch(lambda: (minGRU if layer == "mingru" else minLSTM)(D),
                               lambda m, x, h: m(x, prev_hidden=h, return_next_prev_hidden=True)[1],
                               lambda n: torch.zeros(n, 1, D))
    if layer == "gateloop_mh":
        from gateloop_transformer.simplified_gate_loop import SimpleGateLoopLayer

        return _original_torch(lambda: SimpleGateLoopLayer(D, prenorm=False),
                               lambda m, x, cache: m(x, cache=cache, return_cache=True)[1],
                               lambda n: None)
    if layer == "gateloop_mh_heads":
        from gateloop_transformer.gateloop_transformer import GateLoopedAttention

        return _original_torch(lambda: GateLoopedAttention(D, heads=D // HEAD_WIDTH), None, lambda n: None)
    raise ValueError(f"unknown layer {layer!r}")


def _floor(layer: str, framework: str, D: int):
    """The layer's dense products alone (``linrec.tools.dense_floor``), in the ``(train, decode)`` interface."""
    from linrec.tools import dense_floor

    shapes = dense_floor.dense_shapes(_linrec_params(layer, linrec_config(layer, D)))
    products = dense_floor.jax_dense if framework == "jax" else dense_floor.torch_dense
    sync = bench.jax_sync if framework == "jax" else (lambda r: r)

    def train(x_np):
        return products(shapes, x_np.shape[0] * x_np.shape[1], train=True), sync

    def decode(xs):
        one_token = products(shapes, xs[0].shape[0], train=False)  # B rows through every kernel

        def run():
            for _ in xs:
                out = sync(one_token())
            return out

        return run, sync

    return train, decode


def _build(layer: str, impl: str, D: int):
    if impl in FLOORS.values():
        return _floor(layer, impl.split()[-1], D)
    if impl == "linrec jax":
        return _linrec_jax(layer, D)
    if impl == "linrec torch":
        return _linrec_torch(layer, D)
    return _original(layer, D)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One (layer, implementation) in a fresh process: ``spec["measure"]`` is ``"time"`` (training step at every
    T, then decode) or ``"memory"`` (peak RSS rise of one training step at every T); both when absent."""
    layer, impl, B, D = spec["layer"], spec["impl"], spec["B"], spec["D"]
    repeat, budget = spec.get("repeat", 5), spec.get("budget", 3.0)
    measure = spec.get("measure", "both")
    train, decode = _build(layer, impl, D)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"train": []}
    for T in spec["T"]:
        x = rng.standard_normal((B, T, D), dtype=np.float32)
        fn, sync = train(x)
        point: dict[str, Any] = {"T": T}
        if measure in ("time", "both"):
            point["step_s"] = bench.time_call(fn, sync=sync, repeat=repeat, budget=budget, warmup=1).best
        else:
            sync(fn())  # warm-up: compilation and one-time allocations stay out of the peak
        if measure in ("memory", "both"):
            if spec.get("gc", True):  # (slow in a process holding both frameworks: the in-process run skips it)
                gc.collect()
            base = bench.current_rss_bytes()
            clean = bench.reset_peak_rss()
            if not clean:
                base = bench.peak_rss_bytes()  # without a reset the peak includes warm-up; report the rise over it
            sync(fn())
            point.update({"peak_bytes": max(0, bench.peak_rss_bytes() - base), "peak_reset": clean})
        out["train"].append(point)
        del fn, x
    if measure in ("time", "both"):
        out["decode"] = []
        for n_batch in spec.get("decode_batches", (1,)):
            xs = [rng.standard_normal((n_batch, D), dtype=np.float32) for _ in range(spec["decode_tokens"])]
            made = decode(xs)
            if made is None:
                out["decode_error"] = "no step path (it has no state to carry between calls)"
                break
            fn, sync = made
            one_thread = n_batch == 1 and _framework(layer, impl) == "torch"
            previous = bench.set_torch_threads(TORCH_DECODE_THREADS if one_thread else None)
            try:
                timing = bench.time_call(fn, sync=sync, repeat=repeat, budget=budget, warmup=1)
            finally:
                bench.set_torch_threads(previous)
            out["decode"].append({"B": n_batch, "s_per_token": timing.best / len(xs)})
    return out


def _isolated(spec: dict[str, Any], timeout: float, memory: bool = True) -> dict[str, Any]:
    """Times in a process with the default allocator, peak memory in another with :data:`bench.MEMORY_ENV` (which
    unmaps freed memory at once, so RSS tracks live memory, but page-faults every allocation: no place to time)."""
    timed = bench.run_json_subprocess([__file__, "--worker", json.dumps({**spec, "measure": "time"})],
                                      timeout=timeout)
    if "error" in timed or not memory or spec["impl"] in FLOORS.values():  # a floor's memory is not a layer's
        return timed
    memory = bench.run_json_subprocess([__file__, "--worker", json.dumps({**spec, "measure": "memory"})],
                                       timeout=timeout, env=bench.MEMORY_ENV)
    for point in timed["train"]:
        mem = next((m for m in memory.get("train", []) if m["T"] == point["T"]), {})
        point.update({k: mem[k] for k in ("peak_bytes", "peak_reset") if k in mem})
    return timed


def faster(first: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Two rounds of one implementation merged: per training ``T`` and for decode, the faster time (a round that
    failed leaves the other). The shared VM's speed drifts over minutes (other tenants' cache and memory
    traffic), so an implementation timed once could land in a slow stretch that its rival missed."""
    if "error" in first:
        return other
    if "error" in other:
        return first
    merged = {**first, "train": [dict(p) for p in first.get("train", [])]}
    for point in merged["train"]:
        again = next((p for p in other.get("train", []) if p["T"] == point["T"]), None)
        if again is not None:
            point["step_s"] = min(point["step_s"], again["step_s"])
    merged["decode"] = [dict(p) for p in first.get("decode", [])]
    for point in merged["decode"]:
        again = next((p for p in other.get("decode", []) if p["B"] == point["B"]), None)
        if again is not None:
            point["s_per_token"] = min(point["s_per_token"], again["s_per_token"])
    return merged


def _in_process(fn: Callable[[dict[str, Any]], dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return fn(spec)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"[:300]}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _framework(layer: str, impl: str) -> str:
    if impl.startswith("linrec"):
        return impl.split()[1]
    if impl in FLOORS.values():
        return impl.split()[-1]
    return "jax" if LAYERS[layer].module == "gated_linear_rnn" else "torch"


def run(quick: bool = False, *, sizes: dict[str, Any] | None = None, layers: tuple[str, ...] | None = None,
        repeat: int = 5, budget: float = 3.0, progress: Callable[[str], None] | None = None,
        timeout: float = 600.0, isolate: bool = True, bandwidth: float | None = None) -> dict[str, Any]:
    """Run every (layer, implementation) in a subprocess; returns ``{"rows", "decode", "meta", "targets"}``.

    ``isolate=False`` runs them in this process instead (a fast smoke run: the numbers then share one process).
    ``bandwidth`` (bytes/s): the memory bandwidth of the decode weight-read floor; by default probed here, at the
    start of the run (:func:`linrec.tools.bench.best_bandwidth`).
    """
    sizes = dict(sizes or (QUICK if quick else FULL))
    sizes["decode_batches"] = list(sizes.get("decode_batches", (1,)))
    say = progress or (lambda s: None)
    if bandwidth is None:
        bandwidth = bench.best_bandwidth(n_elements=(1 << 20) if quick else 8 * 4096 * 512)["best"]
    rows: list[dict[str, Any]] = []
    decode: list[dict[str, Any]] = []
    for layer in layers or tuple(LAYERS):
        title, _, original_name, original_module = LAYERS[layer]

        def measure(impl: str, first_round: bool, layer: str = layer, original_module: str = original_module):
            framework = _framework(layer, impl)
            missing = [m for m in ((original_module,) if impl == "original" else ()) + (framework,)
                       if not _installed(m)]
            if missing:
                return {"error": f"not installed ({', '.join(missing)})"}
            spec = {"layer": layer, "impl": impl, "B": sizes["B"], "D": sizes["D"], "T": list(sizes["T"]),
                    "decode_tokens": sizes["decode_tokens"], "decode_batches": sizes["decode_batches"],
                    "repeat": repeat, "budget": budget, "gc": isolate}
            # peak memory: first round only
            return _isolated(spec, timeout, memory=first_round) if isolate else _in_process(worker, spec)

        results = bench.round_robin(
            IMPLS, sizes.get("rounds", 1), measure, faster,
            lambda impl, r, res, layer=layer, name=original_name: say(
                f"{layer} {name if impl == 'original' else impl} (round {r + 1}): {res}"))
        original = results["original"]
        for T in sizes["T"]:
            base = next((p for p in original.get("train", []) if p["T"] == T), None)
            for impl in IMPLS:
                res = results[impl]
                label = original_name if impl == "original" else impl
                row: dict[str, Any] = {"layer": title, "implementation": label, "T": T, "key": layer, "impl": impl}
                point = next((p for p in res.get("train", []) if p["T"] == T), None)
                if point is None:
                    row["note"] = res.get("error", "no result")
                else:
                    row.update({"step ms": 1e3 * point["step_s"], "tokens/s": sizes["B"] * T / point["step_s"],
                                "peak MB": point["peak_bytes"] / 2**20 if "peak_bytes" in point else None})
                    if base is not None:
                        row["speedup vs original"] = base["step_s"] / point["step_s"]
                    elif impl != "original":
                        row["note"] = f"original: {original.get('error', 'no result')}"
                    if not point.get("peak_reset", True):
                        row["note"] = (row.get("note", "") + " peak includes warm-up").strip()
                rows.append(row)
        for row in rows:  # each linrec row over its framework's matmul floor at the same T
            floor = _floor_row(rows, row)
            if row["key"] == layer and row.get("step ms") and floor.get("step ms"):
                row["/ floor"] = row["step ms"] / floor["step ms"]
        decode += _decode_rows(layer, results, sizes, bandwidth)
    meta = {**sizes, "T": list(sizes["T"]), "dtype": "float32", "quick": quick, "bandwidth_GBps": bandwidth / 1e9,
            "timing": f"best of up to {repeat} runs after 1 warm-up (stopping after {budget} s), in each of "
                      f"{sizes.get('rounds', 1)} round(s) of all implementations in turn; the fastest round counts"}
    return {"rows": rows, "decode": decode, "meta": meta, "targets": targets(rows, decode)}


def weight_bytes(layer: str, D: int) -> int:
    """Bytes of every parameter of linrec's ``layer`` at float32: what one decode step reads at least once."""
    return sum(4 * int(np.size(v)) for v in _linrec_params(layer, linrec_config(layer, D)).values())


def _decode_rows(layer: str, results: dict[str, dict[str, Any]], sizes: dict[str, Any], bandwidth: float
                 ) -> list[dict[str, Any]]:
    """The decode table's rows of ``layer``: every implementation at every batch size, then the weight-read floor
    (every parameter's bytes at ``bandwidth``); linrec rows get ``/ floor`` over the larger of their framework's
    matmul floor and the weight-read floor."""
    title, _, original_name, _ = LAYERS[layer]
    read_floor = weight_bytes(layer, sizes["D"]) / bandwidth
    out: list[dict[str, Any]] = []
    for n_batch in sizes["decode_batches"]:
        def per_token(impl: str, n_batch: int = n_batch) -> float | None:
            return next((p["s_per_token"] for p in results[impl].get("decode", []) if p["B"] == n_batch), None)

        base = per_token("original")
        for impl in IMPLS:
            res, seconds = results[impl], per_token(impl)
            row = {"layer": title, "B": n_batch, "key": layer, "impl": impl,
                   "implementation": original_name if impl == "original" else impl}
            if seconds is None:
                row["note"] = res.get("error") or res.get("decode_error", "no result")
            else:
                row["decode µs/token"] = 1e6 * seconds
                if base:
                    row["speedup vs original"] = base / seconds
                matmul = per_token(FLOORS[impl]) if impl in FLOORS else None
                if matmul:
                    row["/ floor"] = seconds / max(matmul, read_floor)
                    row["floor"] = "matmul" if matmul >= read_floor else "weight read"
            out.append(row)
        out.append({"layer": title, "B": n_batch, "key": layer, "impl": WEIGHT_FLOOR, "implementation": WEIGHT_FLOOR,
                    "decode µs/token": 1e6 * read_floor, "speedup vs original": base / read_floor if base else None,
                    "note": f"{weight_bytes(layer, sizes['D']) / 1e6:.2f} MB at {bandwidth / 1e9:.1f} GB/s"})
    return out


def _floor_row(table: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any]:
    """The matmul-floor row of ``r``'s framework, layer, ``T`` and decode batch (empty when it did not run)."""
    return next((f for f in table if f["impl"] == FLOORS.get(r["impl"]) and f["key"] == r["key"]
                 and f.get("T") == r.get("T") and f.get("B") == r.get("B")), {})


def targets(rows: list[dict[str, Any]], decode: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per linrec row: the training step at ``TRAIN_TARGET_T`` within ``FLOOR_TARGET`` of its framework's matmul
    floor and never slower than the original; decode ``DECODE_TARGET`` times the original's. ``ceiling`` is the
    speedup of the same framework's matmul floor (module doc)."""
    def entry(name, r, table, goal):
        ratio, top = r.get("speedup vs original"), _floor_row(table, r).get("speedup vs original")
        measured = "–" if ratio is None else f"{ratio:.2f}x" + ("" if top is None else f" (matmul ceiling {top:.2f}x)")
        return {"target": name, "measured": measured, "ratio": ratio, "ceiling": top,
                "reached": None if ratio is None else ratio >= goal}

    out = []
    for r in rows:
        if r["impl"] not in FLOORS or r["T"] != TRAIN_TARGET_T:
            continue
        over = r.get("/ floor")
        out.append({"target": f"{r['layer']} {r['impl']} training step <= {FLOOR_TARGET:g}x its matmul floor "
                              f"(T={r['T']})",
                    "measured": "–" if over is None else f"{over:.2f}x", "ratio": over,
                    "reached": None if over is None else over <= FLOOR_TARGET})
        out.append(entry(f"{r['layer']} {r['impl']} training step >= 1x original (T={r['T']})", r, rows, 1.0))
    out += [entry(f"{r['layer']} B={r['B']} {r['impl']} decode >= {DECODE_TARGET:g}x faster per token", r, decode,
                  DECODE_TARGET) for r in decode if r["impl"] in FLOORS]
    for r in decode:
        if r["impl"] not in FLOORS:
            continue
        over, speedup = r.get("/ floor"), r.get("speedup vs original")
        measured = "–" if over is None else f"{over:.2f}x its floor ({r['floor']})" + (
            "" if speedup is None else f", {speedup:.2f}x the original's speed")
        out.append({"target": f"{r['layer']} B={r['B']} {r['impl']} decode <= {FLOOR_TARGET:g}x the larger of its "
                              "matmul and weight-read floors, never slower than the original",
                    "measured": measured, "ratio": over,
                    "reached": None if over is None or speedup is None else over <= FLOOR_TARGET and speedup >= 1.0})
    return out


def report(result: dict[str, Any]) -> str:
    meta = result["meta"]
    return "\n".join([
        "# Layer benchmark\n",
        f"float32, B={meta['B']}, d_model={meta['D']}, T in {meta['T']}; training step = forward + backward of "
        "`y.sum()` w.r.t. parameters and input (JAX jitted, PyTorch eager); peak MB = rise of the peak RSS during "
        "one step; speedup = original's step time / this step time. Each implementation ran in its own process. "
        f"Timing: {meta['timing']}.\n",
        bench.markdown_table(COLUMNS, result["rows"]),
        f"\n## Decode (B={' and '.join(str(b) for b in meta.get('decode_batches', [1]))}, "
        f"{meta['decode_tokens']} tokens, synchronised per token)\n",
        "*/ floor*: µs/token over the larger of the framework's matmul floor (the layer's dense products alone, "
        "one call per token) and the weight-read floor (every parameter's bytes at the bandwidth probed in this "
        f"run, {meta.get('bandwidth_GBps', float('nan')):.1f} GB/s).\n",
        bench.markdown_table(DECODE_COLUMNS, result["decode"]),
        "\n## Targets\n",
        bench.markdown_table(["target", "measured", "reached"], result["targets"]),
    ])


def plot(result: dict[str, Any], path: Path) -> bool:
    plt = bench.pyplot()
    if plt is None:
        return False
    layers = list(dict.fromkeys(r["layer"] for r in result["rows"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(IMPLS)
    T = max(result["meta"]["T"])
    for k, impl in enumerate(IMPLS):
        tps = [next((r.get("tokens/s") or 0 for r in result["rows"]
                     if r["layer"] == layer and r["impl"] == impl and r["T"] == T), 0) for layer in layers]
        dec = [next((r.get("decode µs/token") or 0 for r in result["decode"]
                     if r["layer"] == layer and r["impl"] == impl and r.get("B", 1) == 1), 0) for layer in layers]
        xs = np.arange(len(layers)) + (k - (len(IMPLS) - 1) / 2) * width  # bars centred on the tick
        axes[0].bar(xs, tps, width, label=impl)
        axes[1].bar(xs, dec, width, label=impl)
    for ax, title in ((axes[0], f"training tokens/s (T={T}, higher is better)"),
                      (axes[1], "decode µs/token (B=1, lower is better)")):
        ax.set_xticks(np.arange(len(layers)))
        ax.set_xticklabels(layers, fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    return bench.save_figure(fig, path)


def write(result: dict[str, Any], out: Path) -> list[Path]:
    return bench.write_outputs(out, "layers", report(result), lambda path: plot(result, path))


def main(argv: list[str] | None = None) -> int:
    return bench.script_main(argv, name="layers", doc=__doc__, quick_help="tiny sizes (a smoke run)", run=run,
                             report=report, write=write, results=RESULTS, worker=worker)


if __name__ == "__main__":
    raise SystemExit(main())
