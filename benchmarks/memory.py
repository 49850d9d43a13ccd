"""Memory benchmark: peak memory of a minGRU training step against T, and its growth exponent.

Shape legend: ``B`` batch, ``T`` time, ``D`` ``d_model``.

Each point (implementation, T) runs in a fresh subprocess: build the layer and ``x (B, T, D)``, run one training
step (forward + backward of ``y.sum()`` w.r.t. parameters and ``x``; compiles in JAX), then reset the peak RSS
(``/proc/self/clear_refs``), run one more step and report the peak RSS (``VmHWM``;
``linrec.tools.bench.peak_rss_bytes`` says why not ``ru_maxrss``) minus the RSS before that step. Allocations above
64 KiB go straight back to the OS (``linrec.tools.bench.MEMORY_ENV``), so RSS follows live memory. The slope of
``log(peak)`` against ``log(T)`` (``linrec.tools.bench.fit_exponent``) is the growth exponent: 1.0 is linear in T.
The original ``mingru-pytorch`` layer is measured the same way for comparison (no target).

Run: ``python benchmarks/memory.py [--quick] [--out DIR]`` or ``linrec bench memory``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from linrec.tools import bench

COLUMNS = ["implementation", "T", "peak MB", "MB per 1k steps", "note"]
FIT_COLUMNS = ["implementation", "points", "exponent", "target", "reached"]
FULL = {"B": 1, "D": 256, "T": (1024, 2048, 4096, 8192, 16384, 32768, 65536)}
QUICK = {"B": 1, "D": 64, "T": (1024, 2048, 4096, 8192)}
IMPLS = ("linrec jax", "linrec torch", "original")
ORIGINAL = "mingru-pytorch minGRU (torch)"
EXPONENT_TARGET = 1.05
RESULTS = Path(__file__).resolve().parent / "results"


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One point: the rise of peak RSS during one training step after a warm-up step."""
    layers = bench.load_benchmark("layers")
    B, T, D = spec["B"], spec["T"], spec["D"]
    train, _ = layers._build("mingru", spec["impl"], D)
    x = np.random.default_rng(0).standard_normal((B, T, D), dtype=np.float32)
    fn, sync = train(x)
    sync(fn())  # warm-up: compilation, first-touch, lazy initialisation
    gc.collect()
    base = bench.current_rss_bytes()
    clean = bench.reset_peak_rss()
    if not clean:
        base = bench.peak_rss_bytes()
    sync(fn())
    return {"peak_bytes": max(0, bench.peak_rss_bytes() - base), "peak_reset": clean}


def _in_process(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return worker(spec)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"[:300]}


def _installed(impl: str) -> str | None:
    import importlib.util

    need = {"linrec jax": ("jax", "flax"), "linrec torch": ("torch",), "original": ("torch", "minGRU_pytorch")}[impl]
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    return f"not installed ({', '.join(missing)})" if missing else None


def run(quick: bool = False, *, sizes: dict[str, Any] | None = None, impls: tuple[str, ...] = IMPLS,
        progress: Callable[[str], None] | None = None, timeout: float = 600.0, isolate: bool = True
        ) -> dict[str, Any]:
    """Every (implementation, T) in its own subprocess; returns ``{"rows", "fits", "meta", "targets"}``.

    ``isolate=False`` measures in this process (a smoke run: the numbers then include whatever this process holds).
    """
    sizes = dict(sizes or (QUICK if quick else FULL))
    say = progress or (lambda s: None)
    rows: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []
    for impl in impls:
        label = ORIGINAL if impl == "original" else impl
        missing = _installed(impl)
        points: list[tuple[int, float]] = []
        for T in sizes["T"]:
            row: dict[str, Any] = {"implementation": label, "T": T, "impl": impl}
            if missing:
                row["note"] = missing
            else:
                spec = {"impl": impl, "B": sizes["B"], "T": T, "D": sizes["D"]}
                res = (bench.run_json_subprocess([__file__, "--worker", json.dumps(spec)], timeout=timeout,
                                                 env=bench.MEMORY_ENV)
                       if isolate else _in_process(spec))
                if "error" in res:
                    row["note"] = res["error"]
                else:
                    mb = res["peak_bytes"] / 2**20
                    row.update({"peak MB": mb, "MB per 1k steps": mb * 1024 / T})
                    if not res["peak_reset"]:
                        row["note"] = "peak includes warm-up (no /proc/self/clear_refs)"
                    if res["peak_bytes"] > 0:
                        points.append((T, res["peak_bytes"]))
            say(f"{label} T={T}: {row.get('peak MB', row.get('note'))}")
            rows.append(row)
        fit: dict[str, Any] = {"implementation": label, "impl": impl, "points": len(points),
                               "target": f"<= {EXPONENT_TARGET}" if impl != "original" else "(comparison)"}
        if len(points) >= 2:
            fit["exponent"] = bench.fit_exponent([p[0] for p in points], [p[1] for p in points])
            if impl != "original":
                fit["reached"] = fit["exponent"] <= EXPONENT_TARGET
        fits.append(fit)
    meta = {**sizes, "T": list(sizes["T"]), "dtype": "float32", "quick": quick}
    return {"rows": rows, "fits": fits, "meta": meta, "targets": targets(fits)}


def targets(fits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"target": f"minGRU {f['impl']} training-step peak memory exponent <= {EXPONENT_TARGET}",
             "measured": f"{f['exponent']:.3f} over {f['points']} points" if "exponent" in f else "–",
             "ratio": f.get("exponent"), "reached": f.get("reached")}
            for f in fits if f["impl"] != "original"]


def report(result: dict[str, Any]) -> str:
    meta = result["meta"]
    return "\n".join([
        "# Memory benchmark\n",
        f"minGRU (d_model={meta['D']}, candidate g, no bias), B={meta['B']}, float32; peak MB = rise of the peak RSS "
        "during one training step (forward + backward of `y.sum()` w.r.t. parameters and input) after a warm-up "
        "step, one subprocess per point.\n",
        bench.markdown_table(COLUMNS, result["rows"]),
        "\n## Growth exponent (slope of log peak against log T)\n",
        bench.markdown_table(FIT_COLUMNS, result["fits"]),
        "\n## Targets\n",
        bench.markdown_table(["target", "measured", "reached"], result["targets"]),
    ])


def plot(result: dict[str, Any], path: Path) -> bool:
    plt = bench.pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    exponents = {f["implementation"]: f.get("exponent") for f in result["fits"]}
    for label in dict.fromkeys(r["implementation"] for r in result["rows"]):
        pts = [(r["T"], r["peak MB"]) for r in result["rows"] if r["implementation"] == label and r.get("peak MB")]
        if pts:
            xs, ys = zip(*pts)
            e = exponents.get(label)
            ax.plot(xs, ys, "-o", markersize=3, label=f"{label} (exponent {e:.2f})" if e is not None else label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("T")
    ax.set_ylabel("peak MB of one training step")
    ax.set_title("minGRU training-step memory")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return bench.save_figure(fig, path)


def write(result: dict[str, Any], out: Path) -> list[Path]:
    return bench.write_outputs(out, "memory", report(result), lambda path: plot(result, path))


def main(argv: list[str] | None = None) -> int:
    return bench.script_main(argv, name="memory", doc=__doc__, quick_help="T = 1k..8k at d_model 64 (a smoke run)",
                             run=run, report=report, write=write, results=RESULTS, worker=worker)


if __name__ == "__main__":
    raise SystemExit(main())
