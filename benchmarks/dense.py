"""Dense-product benchmark: the native decode product against the frameworks' at the batch sizes a decode step has.

Shape legend: ``M`` rows (the decode batch), ``K`` input width, ``N`` output width.

``y (M, N) = x (M, K) @ W (K, N)``, float32, for the products a D=512 layer multiplies by (512x1536, 1536x512,
512x512) at ``M`` = 1 … 32 (the full run; :data:`ROWS`), each implementation in its own process (frameworks do not
share threads):

- *native*: ``linrec_dense_rows`` (``backends/native/linrec_dense.cc``) on ``W`` packed once, both cores;
- *torch*: ``torch.addmm`` (MKL), PyTorch's default threads;
- *jax*: ``x @ W`` under ``jax.jit`` (XLA:CPU's dot), compiled ahead of time.

Every implementation multiplies by one weight matrix per shape, over and over, as a decode loop does for each layer:
at these sizes the weights stay in the last-level cache. The table gives the mean µs per product over
:data:`REPEAT` back-to-back calls, the best of ``rounds`` rounds (implementations taking turns), GFLOP/s
(``2·M·K·N`` over that time) and *native speedup*: the framework's time over the native kernel's. No targets:
the decoders' choice of ``linrec.backends.native.dense.MAX_ROWS`` rests on this table and on the layer benchmark's
B=16 decode rows.

Run: ``python benchmarks/dense.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from linrec.tools import bench

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
IMPLS = ("native", "torch", "jax")
#: (K, N) of the products timed: a D=512 layer's input projection to three gates, its output projection, a square one.
SHAPES = ((512, 1536), (1536, 512), (512, 512))
ROWS = (1, 2, 4, 8, 16, 32)
#: Calls per timing (the best per-call time of ``rounds`` timings is kept).
REPEAT = 200
COLUMNS = ("K x N", "M", "implementation", "µs/product", "GFLOP/s", "native speedup")


def _product(impl: str, x: np.ndarray, w: np.ndarray):
    """A zero-argument callable computing ``x @ w`` once on ``impl``, synchronised."""
    if impl == "native":
        from linrec.backends import native
        from linrec.backends.native import dense as kernel

        lib = native._builder().load()
        packed, y = kernel.pack(w), np.empty((x.shape[0], w.shape[1]), np.float32)
        args = (x.shape[0], x.shape[1], w.shape[1], x.ctypes.data, packed.ctypes.data, None, y.ctypes.data)
        keep = (packed, y)  # the buffers the pointers point into live as long as the callable
        return lambda: (lib.linrec_dense_rows(*args), keep)
    if impl == "torch":
        import torch

        xt, wt, bias = torch.from_numpy(x), torch.from_numpy(w), torch.zeros(w.shape[1])
        return lambda: torch.addmm(bias, xt, wt)
    import jax

    xj, wj = jax.device_put(x), jax.device_put(w)
    compiled = jax.jit(lambda a, b: a @ b).lower(xj, wj).compile()
    return lambda: compiled(xj, wj).block_until_ready()


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time every (shape, rows) product on one implementation in this process: ``{"K x N/M": µs}``."""
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for k, n in spec["shapes"]:
        w = rng.standard_normal((k, n), dtype=np.float32)
        for m in spec["rows"]:
            call = _product(spec["impl"], rng.standard_normal((m, k), dtype=np.float32), w)
            for _ in range(3):
                call()
            start = time.perf_counter()
            for _ in range(spec["repeat"]):
                call()
            out[f"{k}x{n}/{m}"] = (time.perf_counter() - start) / spec["repeat"] * 1e6
    return out


def _installed(impl: str) -> bool:
    from linrec.backends import native

    if impl == "native":
        return native.available()
    import importlib.util

    return importlib.util.find_spec(impl) is not None


def run(quick: bool = False, *, progress=lambda s: None, rounds: int | None = None) -> dict[str, Any]:
    """Every implementation in its own process, ``rounds`` times in turn; ``{"rows", "meta"}``."""
    shapes = ((64, 96),) if quick else SHAPES
    rows_m = (1, 16) if quick else ROWS
    repeat = 5 if quick else REPEAT
    rounds = rounds or (1 if quick else 3)
    impls = [impl for impl in IMPLS if _installed(impl)]

    def measure(impl: str, first: bool) -> dict[str, Any]:
        spec = {"impl": impl, "shapes": shapes, "rows": rows_m, "repeat": repeat}
        return bench.run_json_subprocess([str(Path(__file__).resolve()), "--worker", json.dumps(spec)])

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "error" in a or "error" in b:
            return a if "error" in b else b
        return {key: min(a[key], b[key]) for key in a}

    times = bench.round_robin(impls, rounds, measure, merge,
                              say=lambda impl, r, res: progress(f"dense {impl} round {r + 1}"))
    table: list[dict[str, Any]] = []
    for k, n in shapes:
        for m in rows_m:
            key = f"{k}x{n}/{m}"
            native_us = times.get("native", {}).get(key)
            for impl in impls:
                if "error" in times[impl]:
                    table.append({"K x N": f"{k}x{n}", "M": m, "implementation": impl, "note": times[impl]["error"]})
                    continue
                us = times[impl][key]
                table.append({"K x N": f"{k}x{n}", "M": m, "implementation": impl, "µs/product": us,
                              "GFLOP/s": 2 * m * k * n / us / 1e3,
                              "native speedup": us / native_us if native_us else None})
    return {"rows": table, "meta": {"machine": bench.machine_info(), "rounds": rounds, "repeat": repeat}}


def report(result: dict[str, Any]) -> str:
    meta = result["meta"]
    cpu, cores = meta["machine"].get("cpu_model", "?"), meta["machine"].get("usable_cores", "?")
    return "\n".join([
        "# Dense products for decoding: native kernel vs torch.addmm vs XLA's dot",
        "",
        f"float32 `x (M, K) @ W (K, N)`, one weight matrix per shape (it stays in the last-level cache), the mean "
        f"time of {meta['repeat']} back-to-back calls, best of {meta['rounds']} rounds, each implementation in its "
        f"own process ({cpu}, {cores} cores). *native speedup*: that "
        "row's time over the native kernel's (above 1: the native kernel is faster).",
        "",
        bench.markdown_table(COLUMNS, result["rows"]),
        "",
    ])


def write(result: dict[str, Any], out: Path) -> list[Path]:
    return bench.write_outputs(out, "dense", report(result), lambda path: False)


def main(argv: list[str] | None = None) -> int:
    return bench.script_main(argv, name="dense", doc=__doc__, quick_help="one tiny shape (a smoke run)", run=run,
                             report=report, write=write, results=RESULTS, worker=worker)


if __name__ == "__main__":
    sys.exit(main())
