"""Decode benchmark: per-token decode latency of the language models, linrec against the originals' step paths.

Shape legend: ``B`` batch (always 1), ``V`` vocabulary, ``D`` ``d_model``, ``L`` layers, ``P`` prompt length,
``N`` decoded tokens.

Language models, each on one configuration shared by linrec and the original (``linrec_config`` is what
``linrec.tools.originals`` imports from the original built with ``original_kwargs``; ``tests/test_bench_decode.py``
checks it against the importers):

- GatedLinearRNN LM (``L`` layers, ``d_h = D``, channel mixing ``4·D``, tied gates, LayerNorm eps 1e-6, no positional
  encoding, no dropout): linrec ``GatedLinearRNNLM`` (JAX, PyTorch) vs ``flax-gated-linear-rnn``
  ``GatedLinearRNNLM`` (JAX). No positional encoding on both sides: the original's step path always adds
  positional row 0, so with one its decode would not compute the model linrec computes.
- minGRU LM (``minLM(num_tokens=V, dim=D, depth=L)`` with its defaults: expansion 1.5, feed-forward ``4·D``,
  pre-RMSNorm blocks, final RMSNorm, no biases in the minGRU and head): linrec ``MinGRULM`` (``block="prenorm"``,
  JAX, PyTorch) vs ``mingru-pytorch`` ``minLM`` (PyTorch).
- ``gateloop-transformer``'s ``Transformer`` is not benchmarked: its ``forward`` takes no cache or state (version
  0.2.5 decodes by re-running the whole prefix), and its complex-gated multi-head ``GateLoopedAttention`` blocks
  with swish gating have no linrec language model (``gateloop_mh`` is a layer, not an LM), so there is neither a
  step path to time nor a faithful linrec equivalent.

Method: float32, ``B=1``. Each (model, implementation) builds its model (linrec: ``from_canonical`` of the spec's
``init_params(seed=0)``; the originals: their own initialisers; the timing does not depend on the values), runs
the parallel prefill over a fixed ``P``-token prompt (untimed), then times ``N`` decode steps from the prefilled
state, one call per token, synchronised after every token (JAX: ``jax.block_until_ready`` on the logits). The
tokens fed are a fixed random sequence placed on the device beforehand, so neither sampling nor host transfers
are timed. linrec runs its public decode path, ``decode_step(token (B,), state) -> (logits (B, V), state)``, in a
Python loop: in JAX inside one ``jax.jit`` over the module's flattened state (``nnx.split`` once, ``nnx.merge`` in
the traced function, compiled ahead of time: how ``layers.py`` times the layers' ``step`` and how the original is
timed), in PyTorch through ``module.decoder()`` (the whole step as one call into the native library,
``native_decode``; float32 on the CPU).
A second JAX row, *decoder()*, is the JAX token-loop API: the whole float32 step as one native call through XLA FFI
(``native_decode``), with the parameters copied out of the NNX graph once; the argument and token checks (one host
read of the token) still run on every token, in Python, which the jitted row skips, as a hand-written jitted loop
would. A second PyTorch row (no
target), *decoder(fused=False)*, is the framework step the fused one replaces: ``decode_step`` with the parameters
gathered once, eager, no autograd (its dense products on the native kernel up to 32 rows).
*matmul floor jax/torch* (no target): only the model's dense products at ``B=1`` (every 2-D kernel but the
embedding, ``linrec.tools.dense_floor``), one call per token (JAX: one compiled call; PyTorch: eager, the same
thread count). Every implementation that computes those products with this framework's matrix multiply pays about
that, so the floor's *speedup vs original* is the ceiling of a speedup in that framework; the targets report it
beside the measured ratio.
The originals: the flax ``GatedLinearRNNLM.apply`` on a
``(B, 1)`` token with its carry, wrapped in ``jax.jit`` and compiled ahead of time;
``minLM(token (B, 1), prev_hiddens=..., return_prev_hiddens=True)`` under ``torch.no_grad`` (only the newest
token is passed: its cheapest correct use). ``time_call`` takes the best of up to ``repeat`` runs of all ``N``
tokens after one warm-up run (compilation); µs/token = best / ``N``.

PyTorch runs on one intra-op thread (``TORCH_THREADS``, linrec and the original alike): at ``B=1`` there is nothing
worth splitting, and PyTorch still splits some elementwise kernels. The exact GELU of the minGRU LM's feed-forward
on 1024 values took ~480 µs on 2 threads against ~10 µs on 1 on the 2-core reference VM shared with other work
(its parallel region waits for a descheduled thread), which made both PyTorch minGRU LMs ~30 ms/token: a measure
of the scheduler, not of either implementation. ``run(torch_threads=None)`` keeps PyTorch's default.

Every (model, implementation) runs in its own subprocess, so frameworks do not share threads or memory. The
full run times them in ``rounds`` (2) rounds, every implementation once per round in turn, and each keeps its
fastest round (:func:`faster`): the shared VM's speed drifts over minutes (other tenants' traffic in the shared L3
cache, from which these models' weights are re-read every token), and one pass could catch the original in a fast
stretch and linrec in a slow one, or the reverse.

Run: ``python benchmarks/decode.py [--quick] [--out DIR]`` or ``linrec bench decode``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from linrec.tools import bench

COLUMNS = ["model", "B", "implementation", "µs/token", "tokens/s", "speedup vs original", "/ floor", "note"]
CONFIG_COLUMNS = ["model", "linrec", "original"]
#: ``rounds``: how many times every implementation is timed, round-robin, each keeping its fastest round.
#: ``batches``: the batch sizes ``B`` decoded (issue 17 asks for B=1, bound by reading the weights, and B=16).
FULL = {"V": 256, "D": 256, "L": 4, "prompt": 16, "decode_tokens": 200, "rounds": 2, "batches": (1, 16)}
QUICK = {"V": 64, "D": 32, "L": 2, "prompt": 4, "decode_tokens": 20, "rounds": 1, "batches": (1, 2)}
#: Target (benchmarks/README.md, target 4): decode at least this many times faster per token than the original.
DECODE_TARGET = 5.0
RESULTS = Path(__file__).resolve().parent / "results"
#: PyTorch intra-op threads for the PyTorch implementations, linrec's and the original's alike (module docstring).
TORCH_THREADS = 1

MODELS = {
    "gated_linear_rnn_lm": ("GatedLinearRNN LM", "flax-gated-linear-rnn GatedLinearRNNLM (jax)",
                            "flax_gated_linear_rnn"),
    "mingru_lm": ("minGRU LM", "mingru-pytorch minLM (torch)", "minGRU_pytorch"),
}
#: ``DIRECT`` is a second JAX row (no target): ``module.decoder()``, the checked token-loop API, without an outer jit.
DIRECT = "linrec jax, decoder()"
#: PyTorch ``decoder(fused=False)``: the eager framework step that the default's one native call replaces (no target).
UNFUSED = "linrec torch, decoder(fused=False)"
#: Rows timing only the model's dense products at ``B=1`` (``linrec.tools.dense_floor``), per linrec framework; their
#: *speedup vs original* is the ceiling of any implementation that computes those products (no target).
FLOORS = {"linrec jax": "matmul floor jax", "linrec torch": "matmul floor torch"}
IMPLS = ("linrec jax", DIRECT, "linrec torch", UNFUSED, "original", *FLOORS.values())
#: A computed row after the measured ones: every parameter's bytes over the bandwidth probed in the same run (at
#: ``B=1`` decoding reads every weight per token and does little else; no target).
WEIGHT_FLOOR = "weight-read floor"
TARGET_IMPLS = ("linrec jax", "linrec torch")
#: Issue 17's decode target: every linrec decode path at most this multiple of its framework's matmul floor (the
#: dense products alone, which read every dense weight once: at B=1 the larger of the matmul and weight-read floors),
#: and never slower than the original.
FLOOR_TARGET = 1.3
FLOOR_IMPLS = ("linrec jax", DIRECT, "linrec torch", UNFUSED)
EPS = 1e-6  # the GatedLinearRNN LM's LayerNorm eps (a required argument of the original)


def original_kwargs(model: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """The original's constructor arguments for ``sizes``."""
    V, D, L = sizes["V"], sizes["D"], sizes["L"]
    if model == "gated_linear_rnn_lm":
        return dict(n_layer=L, d_model=D, d_channel_mixing=4 * D, eps=EPS, channel_mixing_dropout=0.0,
                    time_mixing_dropout=0.0, input_vocab_size=V, output_vocab_size=V,
                    max_seq_length=sizes["prompt"] + sizes["decode_tokens"], embedding_dropout=0.0,
                    use_word_embedding=True, positional_encoding_mode="none", use_head=True, d_h=D)
    if model == "mingru_lm":
        return dict(num_tokens=V, dim=D, depth=L)
    raise ValueError(f"unknown model {model!r}")


def linrec_config(model: str, sizes: dict[str, Any]):
    """The linrec config equal to the original built with :func:`original_kwargs`."""
    V, D, L = sizes["V"], sizes["D"], sizes["L"]
    if model == "gated_linear_rnn_lm":
        from linrec.spec.gated_linear_rnn_lm import GatedLinearRNNLMConfig

        return GatedLinearRNNLMConfig(n_layer=L, d_model=D, d_channel_mixing=4 * D, d_h=D, input_vocab_size=V,
                                      output_vocab_size=V, eps=EPS, dropout_placement="sum")
    if model == "mingru_lm":
        from linrec.spec.mingru_lm import MinGRULMConfig

        return MinGRULMConfig(vocab_size=V, d_model=D, n_layers=L, block="prenorm", expansion=1.5, candidate="g",
                              mingru_bias=False, default_state=0.0, ff_mult=4.0,
                              norm_eps=float(np.finfo(np.float32).eps), head_bias=False)
    raise ValueError(f"unknown model {model!r}")


def _describe(model: str, sizes: dict[str, Any]) -> dict[str, str]:
    """The two constructors as text, for the report (imports no framework)."""
    cfg = linrec_config(model, sizes)
    fields = ", ".join(f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)
                       if f.default is dataclasses.MISSING or getattr(cfg, f.name) != f.default)
    name = {"gated_linear_rnn_lm": "GatedLinearRNNLM", "mingru_lm": "minLM"}[model]
    kwargs = original_kwargs(model, sizes)
    if model == "gated_linear_rnn_lm":  # the zero dropouts and fixed flags are noise here
        kwargs = {k: v for k, v in kwargs.items() if "dropout" not in k and k not in ("use_word_embedding",
                                                                                     "use_head")}
    original = f"`{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})`"
    if model == "mingru_lm":
        original += " (defaults: expansion=1.5, ff_mult=4)"
    return {"model": MODELS[model][0], "linrec": f"`{type(cfg).__name__}({fields})`", "original": original}


# --- implementations: each returns decode(prompt (1, P), tokens (N,)) -> (run, sync) ------------------------


def _linrec_module(model: str, backend: str, sizes: dict[str, Any]):
    from importlib import import_module

    cfg = linrec_config(model, sizes)
    params = import_module(f"linrec.spec.{model}").init_params(cfg, seed=0)
    name = {"gated_linear_rnn_lm": "GatedLinearRNNLM", "mingru_lm": "MinGRULM"}[model]
    return getattr(import_module(f"linrec.backends.{backend}.{model}"), name).from_canonical(cfg, params)


def _linrec_jax(model: str, sizes: dict[str, Any], *, wrap: bool = True):
    """``wrap``: ``decode_step`` inside one ``jax.jit`` over the module's flattened state (how a JAX decode loop is
    written, as ``layers.py`` does for the layers' ``step``); else the module method called as is."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    module = _linrec_module(model, "jax", sizes)
    graphdef, params = nnx.split(module)
    # the module as a flat list of arrays: a jitted call then flattens no nnx.State per token
    leaves, treedef = jax.tree.flatten(params)
    step = jax.jit(lambda leaves, tok, state: nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
                   .decode_step(tok, state))

    def decode(prompt: np.ndarray, tokens: np.ndarray):
        _, state0 = module.prefill(jnp.asarray(prompt))
        jax.block_until_ready(state0)
        toks = [jax.device_put(np.asarray(t, np.int32)) for t in tokens]  # (B,) each
        if wrap:
            compiled = step.lower(leaves, toks[0], state0).compile()

            def call(tok, state):
                return compiled(leaves, tok, state)
        else:
            call = module.decoder()

        def run():
            state = state0
            for tok in toks:
                logits, state = call(tok, state)
                jax.block_until_ready(logits)
            return logits

        return run, bench.jax_sync

    return decode


def _floor(model: str, framework: str, sizes: dict[str, Any]):
    """The model's dense products at ``B=1`` alone, one call per token (``linrec.tools.dense_floor``)."""
    from importlib import import_module

    from linrec.tools import dense_floor

    cfg = linrec_config(model, sizes)
    shapes = dense_floor.dense_shapes(import_module(f"linrec.spec.{model}").init_params(cfg, seed=0))
    sync = bench.jax_sync if framework == "jax" else (lambda r: r)

    def decode(prompt: np.ndarray, tokens: np.ndarray):
        products = dense_floor.jax_dense if framework == "jax" else dense_floor.torch_dense
        one_token = products(shapes, prompt.shape[0], train=False)  # B rows through every kernel

        def run():
            for _ in tokens:
                out = sync(one_token())
            return out[0] if isinstance(out, list) else out

        return run, sync

    return decode


def _linrec_torch(model: str, sizes: dict[str, Any], *, fused: bool | None = None):
    import torch

    module = _linrec_module(model, "torch", sizes).eval()

    def decode(prompt: np.ndarray, tokens: np.ndarray):
        with torch.no_grad():
            _, state0 = module.prefill(torch.from_numpy(prompt.astype(np.int64)))
        toks = [torch.from_numpy(t.astype(np.int64)) for t in tokens]  # (B,) each

        decode_one = module.decoder(fused=fused)  # the parameters gathered (and packed) once, no autograd

        def run():
            state = state0
            for tok in toks:
                logits, state = decode_one(tok, state)
            return logits

        return run, lambda r: r

    return decode


def _original_glrnn_lm(sizes: dict[str, Any]):
    import jax
    from flax_gated_linear_rnn import GatedLinearRNNLM

    lm = GatedLinearRNNLM(**original_kwargs("gated_linear_rnn_lm", sizes))
    step = jax.jit(lambda v, x_t, carry: lm.apply(v, x_t, training=False, carry=carry))

    def decode(prompt: np.ndarray, tokens: np.ndarray):
        variables = lm.init(jax.random.PRNGKey(0), prompt, training=False)
        carry0, _ = lm.apply(variables, prompt, training=False)  # prefill: its parallel pass, carry (B, L, H)
        carry0 = jax.block_until_ready(carry0)
        toks = [jax.device_put(np.asarray(t, np.int32)[:, None]) for t in tokens]  # (B, 1): its step path
        compiled = step.lower(variables, toks[0], carry0).compile()

        def run():
            carry = carry0
            for tok in toks:
                carry, logits = compiled(variables, tok, carry)
                jax.block_until_ready(logits)
            return logits

        return run, bench.jax_sync

    return decode


def _original_minlm(sizes: dict[str, Any]):
    import torch
    from minGRU_pytorch.minLM import minLM

    torch.manual_seed(0)
    lm = minLM(**original_kwargs("mingru_lm", sizes)).eval()

    def decode(prompt: np.ndarray, tokens: np.ndarray):
        with torch.no_grad():
            _, hiddens0 = lm(torch.from_numpy(prompt.astype(np.int64)), return_prev_hiddens=True)
        toks = [torch.from_numpy(t.astype(np.int64)[:, None]) for t in tokens]  # (B, 1): only the newest token

        def run():
            hiddens = hiddens0
            with torch.no_grad():
                for tok in toks:
                    logits, hiddens = lm(tok, return_prev_hiddens=True, prev_hiddens=hiddens)
            return logits

        return run, lambda r: r

    return decode


def _build(model: str, impl: str, sizes: dict[str, Any]):
    if impl == "linrec jax":
        return _linrec_jax(model, sizes)
    if impl == DIRECT:
        return _linrec_jax(model, sizes, wrap=False)
    if impl == "linrec torch":
        return _linrec_torch(model, sizes)
    if impl == UNFUSED:
        return _linrec_torch(model, sizes, fused=False)
    if impl in FLOORS.values():
        return _floor(model, impl.split()[-1], sizes)
    if model == "gated_linear_rnn_lm":
        return _original_glrnn_lm(sizes)
    if model == "mingru_lm":
        return _original_minlm(sizes)
    raise ValueError(f"unknown model {model!r}")


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One (model, implementation) in a fresh process: prefill, then the best time of ``N`` decode steps.

    A PyTorch implementation runs on ``spec["torch_threads"]`` intra-op threads (restored afterwards)."""
    torch_based = _framework(spec["model"], spec["impl"]) == "torch"
    previous = bench.set_torch_threads(spec.get("torch_threads") if torch_based else None)
    try:
        return _measure(spec)
    finally:
        bench.set_torch_threads(previous)


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    sizes = spec["sizes"]
    decode = _build(spec["model"], spec["impl"], sizes)
    rng = np.random.default_rng(0)
    n_batch = spec.get("B", 1)
    prompt = rng.integers(0, sizes["V"], (n_batch, sizes["prompt"]), dtype=np.int32)
    tokens = rng.integers(0, sizes["V"], (sizes["decode_tokens"], n_batch), dtype=np.int32)  # (N, B)
    fn, sync = decode(prompt, tokens)
    last: list[Any] = []

    def run():
        out = fn()
        last[:] = [out]
        return out

    timing = bench.time_call(run, sync=sync, repeat=spec.get("repeat", 5), budget=spec.get("budget", 3.0),
                             warmup=1)
    logits = np.asarray(last[0].detach() if hasattr(last[0], "detach") else last[0])
    n = len(tokens)
    return {"s_per_token": timing.best / n, "median_s_per_token": timing.median / n, "runs": timing.runs,
            "logits_shape": list(logits.shape), "finite": bool(np.isfinite(logits).all())}


def _in_process(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return worker(spec)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"[:300]}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _framework(model: str, impl: str) -> str:
    if impl in FLOORS.values():
        return impl.split()[-1]
    if impl.startswith("linrec"):
        return "jax" if impl.startswith("linrec jax") else "torch"
    return "jax" if model == "gated_linear_rnn_lm" else "torch"


def faster(first: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Two rounds of one implementation: the one with the lower per-token time (a failed round leaves the other).
    The shared VM's speed drifts over minutes, so each implementation keeps its fastest round (module doc)."""
    if "s_per_token" not in other:
        return first
    if "s_per_token" not in first:
        return other
    return other if other["s_per_token"] < first["s_per_token"] else first


def weight_bytes(model: str, sizes: dict[str, Any]) -> int:
    """Bytes of every parameter of ``model`` at float32: what one decode step reads at least once."""
    from importlib import import_module

    params = import_module(f"linrec.spec.{model}").init_params(linrec_config(model, sizes), seed=0)
    return sum(4 * int(np.size(v)) for v in params.values())


def _torch_threads_at(n_batch: int, torch_threads: int | None) -> int | None:
    """PyTorch's threads at batch ``n_batch``: ``torch_threads`` at ``B=1`` (nothing worth splitting, module doc),
    PyTorch's default (every core) above, where the products have rows to split."""
    return torch_threads if n_batch == 1 else None


def run(quick: bool = False, *, sizes: dict[str, Any] | None = None, models: tuple[str, ...] | None = None,
        repeat: int = 5, budget: float = 3.0, progress: Callable[[str], None] | None = None,
        timeout: float = 600.0, isolate: bool = True, torch_threads: int | None = TORCH_THREADS,
        bandwidth: float | None = None) -> dict[str, Any]:
    """Run every (model, batch size, implementation) in a subprocess; returns ``{"rows", "configs", "meta",
    "targets"}``.

    ``isolate=False`` runs them in this process instead (a fast smoke run: the numbers then share one process).
    ``torch_threads``: PyTorch intra-op threads of the PyTorch implementations at ``B=1`` (``None``: PyTorch's
    default, which larger batches always use). ``bandwidth`` (bytes/s): the memory bandwidth of the weight-read
    floor; by default probed here, at the start of the run (:func:`linrec.tools.bench.best_bandwidth`).
    """
    sizes = dict(sizes or (QUICK if quick else FULL))
    batches = tuple(sizes.pop("batches", (1,)))
    say = progress or (lambda s: None)
    if bandwidth is None:
        bandwidth = bench.best_bandwidth(n_elements=(1 << 20) if quick else 8 * 4096 * 512)["best"]
    rows: list[dict[str, Any]] = []
    configs: list[dict[str, str]] = []
    for model in models or tuple(MODELS):
        title, original_name, original_module = MODELS[model]
        configs.append(_describe(model, sizes))
        read_floor = weight_bytes(model, sizes) / bandwidth
        for n_batch in batches:

            def measure(impl: str, first_round: bool, model: str = model, original_module: str = original_module,
                        n_batch: int = n_batch):
                framework = _framework(model, impl)
                missing = [m for m in ((original_module,) if impl == "original" else ()) + (framework,)
                           if not _installed(m)]
                if missing:
                    return {"error": f"not installed ({', '.join(missing)})"}
                spec = {"model": model, "impl": impl, "sizes": sizes, "B": n_batch, "repeat": repeat,
                        "budget": budget, "torch_threads": _torch_threads_at(n_batch, torch_threads)}
                res = (bench.run_json_subprocess([__file__, "--worker", json.dumps(spec)], timeout=timeout)
                       if isolate else _in_process(spec))
                if "s_per_token" in res and not res.get("finite", True):
                    res["note"] = "non-finite logits"
                return res

            results = bench.round_robin(
                IMPLS, sizes.get("rounds", 1), measure, faster,
                lambda impl, r, res, model=model, name=original_name, n_batch=n_batch: say(
                    f"{model} B={n_batch} {name if impl == 'original' else impl} (round {r + 1}): {res}"))
            base = results["original"].get("s_per_token")
            for impl in IMPLS:
                res = results[impl]
                label = original_name if impl == "original" else impl
                row: dict[str, Any] = {"model": title, "B": n_batch, "implementation": label, "key": model,
                                       "impl": impl}
                if "s_per_token" in res:
                    row.update({"µs/token": 1e6 * res["s_per_token"], "tokens/s": n_batch / res["s_per_token"],
                                "median µs/token": 1e6 * res["median_s_per_token"]})
                    if base:
                        row["speedup vs original"] = base / res["s_per_token"]
                    if "note" in res:
                        row["note"] = res["note"]
                else:
                    row["note"] = res.get("error", "no result")
                rows.append(row)
            rows.append({"model": title, "B": n_batch, "implementation": WEIGHT_FLOOR, "key": model,
                         "impl": WEIGHT_FLOOR, "µs/token": 1e6 * read_floor, "tokens/s": n_batch / read_floor,
                         "speedup vs original": base / read_floor if base else None,
                         "note": f"{weight_bytes(model, sizes) / 1e6:.1f} MB at {bandwidth / 1e9:.1f} GB/s"})
    meta = {**sizes, "batches": list(batches), "dtype": "float32", "quick": quick, "torch_threads": torch_threads,
            "bandwidth_GBps": bandwidth / 1e9,
            "timing": f"best of up to {repeat} runs of all {sizes['decode_tokens']} tokens after 1 warm-up "
                      f"(stopping after {budget} s), in each of {sizes.get('rounds', 1)} round(s) of all "
                      "implementations in turn; the fastest round counts"}
    _floor_ratios(rows)
    return {"rows": rows, "configs": configs, "meta": meta, "targets": targets(rows)}


def _same(row: dict[str, Any], other: dict[str, Any]) -> bool:
    """Rows of one model at one batch size."""
    return other["key"] == row["key"] and other["B"] == row["B"]


def _us(rows: list[dict[str, Any]], row: dict[str, Any], impl: str) -> float | None:
    return next((f.get("µs/token") for f in rows if f["impl"] == impl and _same(row, f)), None)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One target per linrec row and issue; ``ceiling`` is the speedup of the same framework's matmul floor."""
    out = []
    for r in rows:
        if r["impl"] in TARGET_IMPLS:
            ratio = r.get("speedup vs original")
            top = next((f.get("speedup vs original") for f in rows if f["impl"] == FLOORS[r["impl"]]
                        and _same(r, f)), None)
            measured = "–" if ratio is None else f"{ratio:.2f}x" + (
                "" if top is None else f" (matmul ceiling {top:.2f}x)")
            out.append({"target": f"{r['model']} B={r['B']} {r['impl']} decode >= {DECODE_TARGET:g}x faster per "
                                  "token than the original's step path",
                        "measured": measured, "ratio": ratio, "ceiling": top,
                        "reached": None if ratio is None else ratio >= DECODE_TARGET})
    for r in rows:
        if r["impl"] in FLOOR_IMPLS:
            over, speedup = r.get("/ floor"), r.get("speedup vs original")
            measured = "–" if over is None else f"{over:.2f}x its floor ({r['floor']})" + (
                "" if speedup is None else f", {speedup:.2f}x the original's speed")
            out.append({"target": f"{r['model']} B={r['B']} {r['impl']} decode <= {FLOOR_TARGET:g}x the larger of "
                                  "its framework's matmul floor and the weight-read floor, never slower than the "
                                  "original",
                        "measured": measured, "ratio": over,
                        "reached": None if over is None or speedup is None
                        else over <= FLOOR_TARGET and speedup >= 1.0})
    return out


def _floor_ratios(rows: list[dict[str, Any]]) -> None:
    """Fill each linrec row's ``/ floor``: its µs/token over the larger of its framework's matmul floor and the
    weight-read floor at the same batch size (``floor`` names which one)."""
    for r in rows:
        if r["impl"] not in FLOOR_IMPLS or not r.get("µs/token"):
            continue
        matmul = _us(rows, r, FLOORS["linrec jax" if "jax" in r["impl"] else "linrec torch"])
        if not matmul:
            continue
        read = _us(rows, r, WEIGHT_FLOOR) or 0.0
        r["/ floor"] = r["µs/token"] / max(matmul, read)
        r["floor"] = "matmul" if matmul >= read else "weight read"


def report(result: dict[str, Any]) -> str:
    meta = result["meta"]
    return "\n".join([
        "# Decode benchmark (language models)\n",
        f"float32, B={' and '.join(str(b) for b in meta.get('batches', [1]))}, vocab V={meta['V']}, "
        f"d_model={meta['D']}, {meta['L']} layers; prefill of a "
        f"{meta['prompt']}-token prompt (untimed), then {meta['decode_tokens']} decode steps, one call per token, "
        "synchronised after every token (fixed tokens, no sampling). linrec: `decode_step` (JAX: inside one "
        "`jax.jit` over the module's state; *decoder()*: the token-loop API, one jitted call per token; PyTorch: "
        "`decoder()`, one native call per token, and `decoder(fused=False)`, the eager step; "
        f"{meta.get('torch_threads') or 'default'} intra-op thread(s) at B=1, PyTorch's default above, for "
        "linrec and the original alike); originals: their one-token step paths with a carried state (flax `apply` "
        "jitted). speedup = original's µs/token / this µs/token; tokens/s counts every row of the batch. "
        "*/ floor*: µs/token over the larger of the framework's matmul floor (its dense products alone) and the "
        "weight-read floor (every parameter's bytes at the bandwidth probed in this run, "
        f"{meta.get('bandwidth_GBps', float('nan')):.1f} GB/s). Each implementation ran in its own process. "
        f"Timing: {meta['timing']}.\n",
        bench.markdown_table(COLUMNS, result["rows"]),
        "\n## Configurations\n",
        bench.markdown_table(CONFIG_COLUMNS, result["configs"]),
        "\n## Targets\n",
        bench.markdown_table(["target", "measured", "reached"], result["targets"]),
    ])


def plot(result: dict[str, Any], path: Path) -> bool:
    plt = bench.pyplot()
    if plt is None:
        return False
    groups = list(dict.fromkeys((r["model"], r.get("B", 1)) for r in result["rows"]))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(IMPLS)
    measured = False
    for k, impl in enumerate(IMPLS):
        us = [next((r.get("µs/token") or 0 for r in result["rows"]
                    if (r["model"], r.get("B", 1)) == g and r["impl"] == impl), 0) for g in groups]
        measured = measured or any(us)
        ax.bar(np.arange(len(groups)) + (k - (len(IMPLS) - 1) / 2) * width, us, width, label=impl)
    meta = result["meta"]
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([f"{m}, B={n}" for m, n in groups], fontsize=9)
    if measured:  # (a run where nothing was installed has nothing to put on a log scale)
        ax.set_yscale("log")
    ax.set_ylabel("µs/token")
    ax.set_title(f"LM decode latency (D={meta['D']}, L={meta['L']}, lower is better)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return bench.save_figure(fig, path)


def write(result: dict[str, Any], out: Path) -> list[Path]:
    return bench.write_outputs(out, "decode", report(result), lambda path: plot(result, path))


def main(argv: list[str] | None = None) -> int:
    return bench.script_main(argv, name="decode", doc=__doc__, quick_help="tiny sizes (a smoke run)", run=run,
                             report=report, write=write, results=RESULTS, worker=worker)


if __name__ == "__main__":
    raise SystemExit(main())
