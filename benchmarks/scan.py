"""Scan benchmark: ``linear_scan`` per backend and method against the roofline and a plain C loop.

Shape legend: ``B`` batch, ``T`` time, ``D`` state width; float32, ``a`` and ``b`` of shape ``(B, T, D)``.

For every backend (NumPy forward only; JAX jitted; PyTorch eager) and method, the forward pass, the forward
plus backward pass (the VJP of ``h`` for a fixed cotangent: ``jax.vjp`` / ``torch.autograd.grad``) and a *training
step* of the scan are timed and divided by the *roofline* measured in the same run: ``12·B·T·D`` bytes (read ``a``
and ``b``, write ``h``) over the streaming bandwidth probed just before that row's timings
(``linrec.tools.bench.steady_bandwidth``). All three are
divided by the same forward roofline. The training step is the scan the way training runs it: the gradient of the
loss ``h.sum()`` with respect to ``a`` and ``b`` (JAX: ``jax.jit(jax.grad(...))``; PyTorch: ``loss.backward()``
into leaf tensors whose ``.grad`` is set to ``None`` before each step, as ``optimizer.zero_grad()`` does). The loss
itself (read ``h``) and its cotangent (write the ones) add 8 bytes/element, so a backward that reads ``a``, ``h``
and the cotangent once and writes both gradients puts this step's floor at ``(12 + 8 + 20) / 12 = 3.33`` forward
rooflines; its target is the forward+backward target plus the loss's 8 bytes: ``3 + 8/12 = 3.67``. (The loss
cannot be timed alone and subtracted: alone, its gradient lands in fresh memory that the step's never touches.)
The *C loop* row is the native kernel called through its C ABI with a preallocated output
(``linrec.tools.bench.c_loop_scan``): what a plain loop costs without any framework around it.

The *bf16* rows (``method="native"`` on bfloat16 ``a``, ``b``, cotangent) time the kernel reading and writing
bfloat16 around a float32 state: their roofline is ``6·B·T·D`` bytes (bf16 ``a``, ``b``, ``h``: half of float32's),
and *bf16/fp32 fwd* is their forward time over the float32 ``native`` forward of the same backend and ``T``.

Run: ``python benchmarks/scan.py [--quick] [--out DIR]`` or ``linrec bench scan``.
"""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from linrec.tools import bench

COLUMNS = ["backend", "method", "T", "probe GB/s", "fwd ms", "fwd/roofline", "fwd+bwd ms", "(fwd+bwd)/roofline",
           "train ms", "train/roofline", "train faults/call", "fwd/C loop", "bf16/fp32 fwd", "note"]
#: Method labels of the bfloat16 rows (``method="native"`` on bf16 inputs; roofline: 6 bytes per element).
BF16 = "native, bf16"
BF16_BYTES, FP32_BYTES = 6, 12
FULL = {"B": 8, "D": 512, "T": (1024, 4096, 16384)}
QUICK = {"B": 2, "D": 64, "T": (128, 512)}
#: Targets (benchmarks/README.md), for T >= TARGET_MIN_T, in jax and torch, best method.
FWD_TARGET, FWD_BWD_TARGET, TARGET_MIN_T = 1.5, 3.0, 1024
#: The training step's target: the scan's forward+backward target plus its loss's own traffic, ``h.sum()`` reading
#: ``h`` and its gradient writing the ones cotangent (8 of the roofline's 12 bytes per element).
LOSS_BYTES = 8
TRAIN_TARGET = FWD_BWD_TARGET + LOSS_BYTES / FP32_BYTES
#: Issue 17 states the training-step target at T >= 4096 (at 1024 the arrays partly fit the last-level cache and a
#: step is ~10 ms, where fixed per-call costs weigh in).
TRAIN_MIN_T = 4096
RESULTS = Path(__file__).resolve().parent / "results"


def _inputs(B: int, T: int, D: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a`` in (0.9, 1), ``b`` in (0.01, 1): positive, so every method (``log`` included) accepts them."""
    rng = np.random.default_rng(T)
    a = rng.uniform(0.9, 1.0, (B, T, D)).astype(np.float32)
    b = rng.uniform(0.01, 1.0, (B, T, D)).astype(np.float32)
    ct = rng.standard_normal((B, T, D), dtype=np.float32)
    return a, b, ct


class Timed(NamedTuple):
    """What is timed for one method: the forward, the VJP for a fixed cotangent, a training step of the loss
    ``h.sum()`` (``None``: not timed for this backend), and the backend's synchronisation of a result."""

    fwd: Callable
    fwd_bwd: Callable | None
    train: Callable | None
    sync: Callable


def _numpy_cases(a, b, ct) -> dict[str, Timed]:
    from linrec.backends import numpy as backend

    return {m: Timed(lambda m=m: backend.linear_scan(a, b, method=m)[0], None, None, lambda x: x)
            for m in backend.METHODS}


def _jax_cases(a, b, ct) -> dict[str, Timed]:
    import jax

    from linrec.backends import jax as backend

    aj, bj, ctj = jax.device_put(a), jax.device_put(b), jax.device_put(ct)
    cases = {}
    for m in backend.METHODS:
        def h_of(a, b, m=m):
            return backend.linear_scan(a, b, method=m)[0]

        fwd = _Compiled(jax.jit(h_of), aj, bj)
        fwd_bwd = _Compiled(jax.jit(lambda a, b, ct, h_of=h_of: jax.vjp(h_of, a, b)[1](ct)), aj, bj, ctj)
        train = _Compiled(jax.jit(jax.grad(lambda a, b, h_of=h_of: h_of(a, b).sum(), argnums=(0, 1))), aj, bj)
        cases[m] = Timed(fwd, fwd_bwd, train, bench.jax_sync)
        if m == "native":  # the same calls on bfloat16 inputs: the kernel reads and writes bf16
            a16, b16, ct16 = (x.astype(jax.numpy.bfloat16) for x in (aj, bj, ctj))
            cases[BF16] = Timed(_Compiled(fwd.fn, a16, b16), _Compiled(fwd_bwd.fn, a16, b16, ct16),
                                _Compiled(train.fn, a16, b16), bench.jax_sync)
    return cases


class _Compiled:
    """A jitted function on fixed arguments, compiled by :meth:`prepare` (untimed) rather than by the first call."""

    def __init__(self, fn, *args):
        self.fn, self.args, self.compiled = fn, args, None

    def prepare(self) -> None:
        if self.compiled is None:
            self.compiled = self.fn.lower(*self.args).compile()

    def __call__(self):
        self.prepare()
        return self.compiled(*self.args)


def _torch_cases(a, b, ct) -> dict[str, Timed]:
    import torch

    from linrec.backends import torch as backend

    at, bt, ctt = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(ct)
    ag, bg = at.clone().requires_grad_(True), bt.clone().requires_grad_(True)

    def fwd(m, a=at, b=bt):
        with torch.no_grad():
            return backend.linear_scan(a, b, method=m)[0]

    def fwd_bwd(m, a=ag, b=bg, ct=ctt):
        return torch.autograd.grad(backend.linear_scan(a, b, method=m)[0], (a, b), ct)

    def train(m, a=ag, b=bg):
        a.grad = b.grad = None  # optimizer.zero_grad(): the step's gradients land in fresh .grad tensors
        backend.linear_scan(a, b, method=m)[0].sum().backward()
        return a.grad

    def timed(m, a=ag, b=bg, f=at, ct=ctt):
        return Timed(lambda: fwd(m, f, b.detach()), lambda: fwd_bwd(m, a, b, ct), lambda: train(m, a, b), lambda x: x)

    # "triton" would run in Triton's interpreter here: it is timed on a GPU by `linrec bench scan --device cuda`
    cases = {m: timed(m) for m in backend.METHODS if m != "triton"}
    if "native" in cases:  # the same calls on bfloat16 inputs: the kernel reads and writes bf16
        a16, b16, ct16 = (x.to(torch.bfloat16) for x in (at, bt, ctt))
        ag16, bg16 = a16.clone().requires_grad_(True), b16.clone().requires_grad_(True)
        cases[BF16] = timed("native", ag16, bg16, a16, ct16)
    return cases


def native_available() -> bool:
    try:
        from linrec.backends import native

        return native.available()
    except Exception:
        return False


BACKENDS: dict[str, Callable] = {"numpy": _numpy_cases, "jax": _jax_cases, "torch": _torch_cases}


def _warm_up(name: str) -> None:
    """Call every method once, forward and backward, on a tiny input."""
    for timed in BACKENDS[name](*_inputs(1, 8, 8)).values():
        for fn in (timed.fwd, timed.fwd_bwd, timed.train):
            sync = timed.sync
            if fn is not None:
                try:
                    sync(fn())
                except Exception:  # reported by the timed call
                    pass


def _available(name: str) -> bool:
    import importlib.util

    return name == "numpy" or importlib.util.find_spec(name) is not None


#: Method labels of the rows timed after ``linrec.backends.native.malloc.retain_freed_memory()``.
RETAINED = "native, malloc retained"
RETAINED_BF16 = "native, bf16, malloc retained"


def _bytes_per_element(method: str) -> int:
    """The roofline's bytes per state element: bf16 rows move half of float32's."""
    return BF16_BYTES if "bf16" in method else FP32_BYTES


_RATIO = {"fwd+bwd": "(fwd+bwd)/roofline", "train": "train/roofline"}


def _probe(spec: dict[str, Any], elements: int) -> tuple[float, float, float]:
    """``(bandwidth, fp32 roofline, bf16 roofline)`` (bytes/s, seconds) of ``elements`` state elements, probed right
    here, just before the timings they divide: the shared machine's bandwidth drifts by tens of percent over a suite
    run (and within one backend's process), so a probe from a minute earlier is not the limit the timings ran
    under. NumPy only (1 thread and all cores), so no framework is loaded for it; the median of three rounds, so
    one burst of the shared machine does not set the roofline."""
    bandwidth = bench.steady_bandwidth(spec.get("probe_elements") or 8 * 4096 * 512, 5)
    return (bandwidth, bench.roofline_seconds(elements, bandwidth),
            bench.roofline_seconds(elements, bandwidth, BF16_BYTES))


def worker(spec: dict[str, Any], progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time one backend's methods over ``spec["T"]`` (in a fresh process for the full run); returns ``{"rows"}``.

    ``spec``: backend, B, D, T, bandwidth (bytes/s, for the ratios), repeat, budget, skip_after, malloc
    (``"default"``, or ``"retain"``: call ``retain_freed_memory()`` first and time ``method="native"`` only),
    c_loop (also time the C loop row).
    """
    say = progress or (lambda s: None)
    name, B, D = spec["backend"], spec["B"], spec["D"]
    repeat, budget, skip_after = spec["repeat"], spec["budget"], spec["skip_after"]
    retained = spec.get("malloc") == "retain"
    # The retained heap grows to the working set over the first few calls (each growth page-faults): time it
    # in the steady state it is for, after 3 warm-up calls instead of 1.
    warmup = 3 if retained else 1
    if retained:
        from linrec.backends.native.malloc import retain_freed_memory

        retain_freed_memory()
    if name != "jax":  # one-time costs (a custom op's first dispatch: ~1 s in torch) off the clock; JAX
        _warm_up(name)  # compiles per shape ahead of time anyway
    rows: list[dict[str, Any]] = []
    too_slow: dict[str, str] = {}  # method -> why larger T are not run
    for T in sorted(spec["T"]):
        a, b, ct = _inputs(B, T, D)
        bandwidth, roof, roof16 = _probe(spec, B * T * D)
        c_loop = spec.get("c_loop_s", {}).get(str(T))
        if spec.get("c_loop") and native_available():
            h, final, h0 = np.empty_like(b), np.empty((B, D), np.float32), np.zeros((B, D), np.float32)
            t = bench.time_call(lambda a=a, b=b, h=h, final=final, h0=h0: bench.c_loop_scan(a, b, h0, h, final),
                                repeat=repeat, budget=budget)
            c_loop = t.best
            rows.append({"backend": "C loop", "method": "native kernel, preallocated", "T": T,
                         "probe GB/s": bandwidth / 1e9, "fwd ms": 1e3 * t.best, "fwd/roofline": t.best / roof,
                         "fwd/C loop": 1.0})
            say(f"T={T} C loop: {1e3 * t.best:.2f} ms ({t.best / roof:.2f}x roofline)")
            # the same call on bf16 a, b, h (uint16 bits; float32 state): its own 6-byte roofline
            a16, b16 = (bench.to_bf16_bits(x) for x in (a, b))
            h16 = np.empty_like(b16)
            t16 = bench.time_call(lambda a=a16, b=b16, h=h16, final=final, h0=h0: bench.c_loop_scan(a, b, h0, h, final),
                                  repeat=repeat, budget=budget)
            rows.append({"backend": "C loop", "method": "native kernel, preallocated, bf16", "T": T,
                         "probe GB/s": bandwidth / 1e9, "fwd ms": 1e3 * t16.best, "fwd/roofline": t16.best / roof16,
                         "bf16/fp32 fwd": t16.best / t.best})
            say(f"T={T} C loop bf16: {1e3 * t16.best:.2f} ms ({t16.best / roof16:.2f}x bf16 roofline)")
            del h, final, a16, b16, h16
        cases = BACKENDS[name](a, b, ct)
        if retained:
            cases = {RETAINED: cases["native"], RETAINED_BF16: cases[BF16]} if "native" in cases else {}
        fp32_fwd = None  # the float32 native forward of this T, for the bf16 rows' ratio
        for method, timed in cases.items():
            if method in too_slow:
                rows.append({"backend": name, "method": method, "T": T, "note": too_slow[method]})
                say(f"T={T} {name} {method}: skipped ({too_slow[method]})")
                continue
            bandwidth, roof, roof16 = _probe(spec, B * T * D)
            roof_m = roof16 if "bf16" in method else roof
            row: dict[str, Any] = {"backend": name, "method": method, "T": T, "probe GB/s": bandwidth / 1e9}
            try:
                getattr(timed.fwd, "prepare", lambda: None)()
                t = bench.time_call(timed.fwd, sync=timed.sync, repeat=repeat, budget=budget, warmup=warmup)
                row.update({"fwd ms": 1e3 * t.best, "fwd/roofline": t.best / roof_m,
                            "fwd/C loop": None if c_loop is None else t.best / c_loop})
                if method in ("native", RETAINED):
                    fp32_fwd = t.best
                elif "bf16" in method and fp32_fwd is not None:
                    row["bf16/fp32 fwd"] = t.best / fp32_fwd
                slowest = t.best
                for fn, key in ((timed.fwd_bwd, "fwd+bwd"), (timed.train, "train")):
                    if fn is None:
                        continue
                    getattr(fn, "prepare", lambda: None)()
                    t = bench.time_call(fn, sync=timed.sync, repeat=repeat, budget=budget, warmup=warmup)
                    row.update({f"{key} ms": 1e3 * t.best, _RATIO[key]: t.best / roof_m})
                    if key == "train":
                        row["train faults/call"] = round(t.faults)
                    slowest = max(slowest, t.best)
                if slowest > skip_after:
                    too_slow[method] = f"not run: {slowest:.1f} s per call at T={T}"
            except Exception as err:  # one failing method must not hide the others
                row["error"] = f"{type(err).__name__}: {err}"[:200]
                row["note"] = "failed (see below)"
            rows.append(row)
            say(f"T={T} {name} {method}: fwd {row.get('fwd ms', float('nan')):.2f} ms, "
                f"fwd+bwd {row.get('fwd+bwd ms', float('nan')):.2f} ms, "
                f"train {row.get('train ms', float('nan')):.2f} ms {row.get('error', '')}")
            del timed
        del cases
        gc.collect()
    return {"rows": rows}


def run(quick: bool = False, *, sizes: dict[str, Any] | None = None, backends: tuple[str, ...] | None = None,
        repeat: int = 9, budget: float = 1.0, skip_after: float = 3.0, probe_elements: int | None = None,
        progress: Callable[[str], None] | None = None, isolate: bool = True,
        timeout: float = 1800.0, rounds: int | None = None) -> dict[str, Any]:
    """Time every (backend, method, T); returns ``{"rows", "meta", "targets"}`` (rows keyed by :data:`COLUMNS`).

    Every call is timed after one warm-up call; calls slower than ``budget`` seconds get one timed run. A method
    whose call took more than ``skip_after`` seconds at one ``T`` is not run at the larger ones (its row says so):
    it is far off the roofline already. Each backend runs in its own process (``isolate``): PyTorch's OpenMP workers
    spin for a while after every parallel op and would take cores from the JAX timings in a shared process. JAX and
    PyTorch then run once more with ``retain_freed_memory()`` (``method="native"`` only, rows "native, malloc
    retained"): the difference is the cost of page-faulting freshly mapped outputs on every call.

    The processes take turns ``rounds`` times over (default 3, 1 with ``quick``): a slow minute on the shared machine
    then hits every backend instead of one, and each row keeps its round that ran closest to its rooflines
    (:func:`merge_rounds`). One pass (a single round) measured the torch training step at 2.8-4.9 rooflines from one
    run to the next.
    """
    sizes = dict(sizes or (QUICK if quick else FULL))
    B, D, Ts = sizes["B"], sizes["D"], tuple(sizes["T"])
    say = progress or (lambda s: None)
    backends = tuple(b for b in (backends or tuple(BACKENDS)) if _available(b))
    probe = (probe_elements, 3) if probe_elements else (4 * 1024 * 1024, 3) if quick else (8 * 4096 * 512, 7)
    bandwidth = bench.best_bandwidth(*probe)
    probes = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in bandwidth.items() if k != "best")
    say(f"bandwidth: {bandwidth['best'] / 1e9:.1f} GB/s ({probes})")
    base = {"B": B, "D": D, "T": list(Ts), "probe_elements": probe[0], "repeat": repeat, "budget": budget,
            "skip_after": skip_after}
    runs = [{**base, "backend": name, "malloc": "default", "c_loop": name == backends[0]} for name in backends]
    if native_available() and isolate:  # never change the allocator of the calling process
        runs += [{**base, "backend": name, "malloc": "retain"} for name in backends if name in ("jax", "torch")]
    c_loop_s: dict[str, float] = {}
    rounds = rounds or (1 if quick else 3)

    def measure(index: int, first: bool) -> dict[str, Any]:
        spec = {**runs[index], "c_loop_s": c_loop_s}
        if isolate:
            say(f"{spec['backend']} (malloc {spec['malloc']}): running in a fresh process")
            result = bench.run_json_subprocess([__file__, "--worker", json.dumps(spec)], timeout=timeout)
        else:
            result = worker(spec, say)
        if "error" in result:
            result = {"rows": [{"backend": spec["backend"], "method": "all", "T": min(Ts),
                                "error": result["error"], "note": "failed (see below)"}]}
        for row in result["rows"]:
            if row["backend"] == "C loop":
                c_loop_s[str(row["T"])] = min(row["fwd ms"] / 1e3, c_loop_s.get(str(row["T"]), float("inf")))
        return result

    results = bench.round_robin(range(len(runs)), rounds, measure, merge_rounds)
    rows = [row for index in range(len(runs)) for row in results[index]["rows"]]
    rows.sort(key=lambda r: (r["T"], r["backend"] != "C loop"))  # stable: backends in run order within a T
    meta = {"B": B, "D": D, "T": list(Ts), "dtype": "float32", "bf16 rows": "bfloat16 a, b, h (float32 state)",
            "bandwidth_GBps": {k: v / 1e9 for k, v in bandwidth.items()},
            "timing": f"best of up to {repeat} runs after 1 warm-up call (stopping once the runs took {budget} s, "
                      f"so a slow call is timed once), in {rounds} round(s) of every process in turn, each row "
                      "keeping its round closest to its rooflines; JAX compiled ahead of time, untimed; each "
                      "backend in its own "
                      "process", "quick": quick}
    return {"rows": rows, "meta": meta, "targets": targets(rows)}


def _closeness(row: dict[str, Any]) -> float:
    """The sum of a row's time-over-roofline ratios (lower: closer to its rooflines); a failed row is never kept."""
    if "error" in row:
        return float("inf")
    ratios = [row[key] for key in ("fwd/roofline", *_RATIO.values()) if row.get(key) is not None]
    return sum(ratios) if ratios else float("inf")


def merge_rounds(kept: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Two rounds of one process's rows: per (backend, method, T) the row (its probe and its timings, which were
    measured together) whose ratios sum lowest. A row with a ratio beats a skipped or failed one."""
    index = {(r["backend"], r["method"], r["T"]): r for r in kept["rows"]}
    for row in new["rows"]:
        key = (row["backend"], row["method"], row["T"])
        if key not in index or _closeness(row) < _closeness(index[key]):
            index[key] = row
    return {"rows": list(index.values())}


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per framework (jax, torch) and allocator: the best method's worst ratio over ``T >= 1024`` (the training step:
    ``T >= 4096``) vs the targets."""
    out = []
    for name in ("jax", "torch"):
        for retained in (False, True):
            mine = [r for r in rows if r["backend"] == name and r["T"] >= TARGET_MIN_T and "error" not in r
                    and (r["method"] == RETAINED) == retained and "bf16" not in r["method"]]
            if not mine:
                continue
            setting = "retain_freed_memory()" if retained else "default allocator"
            for key, goal, label, min_t in (("fwd/roofline", FWD_TARGET, "fwd", TARGET_MIN_T),
                                            ("(fwd+bwd)/roofline", FWD_BWD_TARGET, "fwd+bwd", TARGET_MIN_T),
                                            ("train/roofline", TRAIN_TARGET, "training step (loss h.sum())",
                                             TRAIN_MIN_T)):
                by_method: dict[str, float] = {}
                for r in mine:
                    if r.get(key) is not None and r["T"] >= min_t:
                        by_method[r["method"]] = max(by_method.get(r["method"], 0.0), r[key])
                if not by_method:
                    continue
                method = min(by_method, key=by_method.get)
                worst = by_method[method]
                out.append({"target": f"scan {label} {name} <= {goal:.3g}x roofline (T >= {min_t}), {setting}",
                            "measured": f"{worst:.2f}x (method {method}, worst T)", "ratio": worst,
                            "reached": worst <= goal})
    return out


def report(result: dict[str, Any]) -> str:
    meta = result["meta"]
    bw = ", ".join(f"{k} {v:.1f} GB/s" for k, v in meta["bandwidth_GBps"].items())
    lines = [
        "# Scan benchmark\n",
        f"`linear_scan` float32, B={meta['B']}, D={meta['D']}, T in {meta['T']}. Bandwidth probe at the start "
        f"({bw}); the roofline of each row is 12 bytes/element at the bandwidth probed (NumPy, 1 thread and all "
        "cores, the median of three rounds) in the same process just before that row's timings (column *probe "
        "GB/s*). NumPy: forward only; JAX: jitted; PyTorch: eager. "
        "fwd+bwd is the VJP of `h` for a fixed cotangent, divided by the same (forward) roofline. *train* is the "
        "scan the way training runs it: the gradient of the loss `h.sum()` w.r.t. `a` and `b` (JAX: `jax.jit` of "
        "`jax.grad`; PyTorch: `loss.backward()` into leaf tensors whose `.grad` is reset to `None` each step); "
        "the loss reads `h` and its gradient writes the ones cotangent, 8 more bytes per element than the scan's own "
        "(12 + 20), so the step's floor is 40 / 12 = 3.33 rooflines and its target 3 + 8/12 = 3.67 (PyTorch's "
        "native backward reads the expanded ones as one row, so it does 4 bytes less). *train faults/call* counts "
        "the process's minor page faults per training step: first touches of freshly mapped output pages, what the "
        "default allocator costs (4 KiB pages unless the writer asked for huge pages). "
        "The *bf16* rows run `method=\"native\"` on bfloat16 `a`, `b` (and cotangent): the kernel reads and writes "
        "bf16 around a float32 state, so their roofline is 6 bytes/element (half of float32's); *bf16/fp32 fwd* is "
        "their forward time over the float32 native forward of the same backend, allocator and T. The targets are "
        "float32's. "
        f"Timing: {meta['timing']}.\n",
        bench.markdown_table(COLUMNS, result["rows"]),
    ]
    errors = [r for r in result["rows"] if "error" in r]
    if errors:
        lines.append("\nFailures:\n\n" + "".join(f"- {r['backend']} {r['method']} T={r['T']}: {r['error']}\n"
                                                 for r in errors))
    lines.append("\n## Targets\n\n" + bench.markdown_table(["target", "measured", "reached"], result["targets"]))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> bool:
    plt = bench.pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    colors = dict(zip(("sequential", "associative", "chunked", "log", "native", RETAINED, BF16, RETAINED_BF16),
                      plt.get_cmap("tab10").colors))
    styles = {"numpy": (":", "s"), "jax": ("-", "o"), "torch": ("--", "^")}
    for ax, key, goal, title in ((axes[0], "fwd/roofline", FWD_TARGET, "forward"),
                                 (axes[1], "(fwd+bwd)/roofline", FWD_BWD_TARGET, "forward + backward")):
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for r in result["rows"]:
            if r.get(key) is not None:
                series.setdefault((r["backend"], r["method"]), []).append((r["T"], r[key]))
        for (backend, method), pts in sorted(series.items()):
            xs, ys = zip(*sorted(pts))
            if backend == "C loop":
                bf16 = "bf16" in method
                ax.plot(xs, ys, color="dimgrey" if bf16 else "black", linestyle=":" if bf16 else "-", linewidth=2.5,
                        label=f"C loop (preallocated{', bf16' if bf16 else ''})")
                continue
            line, marker = styles.get(backend, ("-", "o"))
            ax.plot(xs, ys, color=colors.get(method, "grey"), linestyle=line, marker=marker, markersize=4,
                    label=f"{backend} {method}")
        ax.axhline(goal, color="red", linewidth=1, linestyle="-.", label=f"target, {title}: {goal}x")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_title(f"{title} / roofline (B={result['meta']['B']}, D={result['meta']['D']})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time / roofline (log)")
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[1].legend(handles.values(), handles.keys(), fontsize=7, ncol=1, loc="upper left",
                   bbox_to_anchor=(1.01, 1.0))
    return bench.save_figure(fig, path)


def write(result: dict[str, Any], out: Path) -> list[Path]:
    return bench.write_outputs(out, "scan", report(result), lambda path: plot(result, path))


def _worker_with_progress(spec: dict[str, Any]) -> dict[str, Any]:
    return worker(spec, lambda s: print(s, file=sys.stderr, flush=True))


def main(argv: list[str] | None = None) -> int:
    return bench.script_main(argv, name="scan", doc=__doc__, quick_help="tiny sizes (a smoke run, seconds)", run=run,
                             report=report, write=write, results=RESULTS, worker=_worker_with_progress)


if __name__ == "__main__":
    raise SystemExit(main())
