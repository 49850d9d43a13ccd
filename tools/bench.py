"""Benchmark helpers: a same-run memory-bandwidth probe, timers for JAX and torch, peak memory, tables.

Speed is reported as ratios measured in one run (never as wall-clock thresholds in tests): a scan
over ``B·T·D`` elements moves at least 12 bytes per float32 element (read ``a`` and ``b``, write
``h``), so its *roofline* is ``12·B·T·D / bandwidth`` with the bandwidth measured by
:func:`bandwidth_probe` in the same process.

Used by the scripts in ``benchmarks/`` (``linrec bench``); nothing here imports a framework at module import.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "Timing",
    "bandwidth_probe",
    "benchmarks_dir",
    "best_bandwidth",
    "c_loop_scan",
    "current_rss_bytes",
    "fit_exponent",
    "jax_sync",
    "load_benchmark",
    "machine_info",
    "markdown_table",
    "peak_rss_bytes",
    "pyplot",
    "reset_peak_rss",
    "roofline_seconds",
    "run_json_subprocess",
    "save_figure",
    "set_torch_threads",
    "steady_bandwidth",
    "threaded_bandwidth_probe",
    "time_call",
    "to_bf16_bits",
    "torch_bandwidth_probe",
]


@dataclass(frozen=True)
class Timing:
    median: float
    best: float
    runs: int
    #: minor page faults per timed run, over the whole process (its threads included): each is a first touch of a
    #: freshly mapped page, the cost of outputs that do not reuse freed memory
    faults: float = 0.0


def time_call(fn: Callable[[], object], *, sync: Callable[[object], object] = lambda x: x, repeat: int = 5,
              warmup: int = 1, budget: float = 20.0) -> Timing:
    """Median and best wall time of ``sync(fn())`` over ``repeat`` runs after ``warmup`` (compilation).

    Stops early once the timed runs have taken ``budget`` seconds (at least one run is always timed).
    Compile JAX functions ahead of time (``jax.jit(f).lower(...).compile()``) to keep compilation out of every call.
    """
    for _ in range(warmup):
        sync(fn())
    times: list[float] = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start_all = time.perf_counter()
    for _ in range(repeat):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
        if time.perf_counter() - start_all > budget:
            break
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / len(times)
    return Timing(statistics.median(times), min(times), len(times), faults)


def jax_sync(x: object) -> object:
    """``jax.block_until_ready`` (imported on use): the sync for :func:`time_call` of JAX work."""
    import jax

    return jax.block_until_ready(x)


def bandwidth_probe(n_elements: int = 8 * 4096 * 512, repeat: int = 7) -> float:
    """Bytes per second of a streaming ``out = x * y`` in float32 (12 bytes per element), NumPy, preallocated."""
    x = np.random.default_rng(0).random(n_elements, dtype=np.float32)
    y = np.random.default_rng(1).random(n_elements, dtype=np.float32)
    out = np.empty_like(x)
    timing = time_call(lambda: np.multiply(x, y, out=out), repeat=repeat)
    return 12 * n_elements / timing.best


def torch_bandwidth_probe(n_elements: int = 8 * 4096 * 512, repeat: int = 7) -> float | None:
    """As :func:`bandwidth_probe` with ``torch.mul(out=)`` on all intra-op threads; ``None`` without torch."""
    try:
        import torch
    except ImportError:
        return None
    x = torch.from_numpy(np.random.default_rng(0).random(n_elements, dtype=np.float32))
    y = torch.from_numpy(np.random.default_rng(1).random(n_elements, dtype=np.float32))
    out = torch.empty_like(x)
    timing = time_call(lambda: torch.mul(x, y, out=out), repeat=repeat)
    return 12 * n_elements / timing.best


def threaded_bandwidth_probe(n_elements: int = 8 * 4096 * 512, repeat: int = 7, threads: int | None = None) -> float:
    """As :func:`bandwidth_probe` with the arrays split over ``threads`` Python threads (default: the usable cores;
    NumPy releases the GIL in ``multiply``): the machine's streaming bandwidth without any framework."""
    from concurrent.futures import ThreadPoolExecutor

    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    x = np.random.default_rng(0).random(n_elements, dtype=np.float32)
    y = np.random.default_rng(1).random(n_elements, dtype=np.float32)
    out = np.empty_like(x)
    bounds = np.linspace(0, n_elements, threads + 1).astype(int)
    parts = [(x[lo:hi], y[lo:hi], out[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    with ThreadPoolExecutor(threads) as pool:
        def run() -> None:
            list(pool.map(lambda p: np.multiply(p[0], p[1], out=p[2]), parts))

        timing = time_call(run, repeat=repeat)
    return 12 * n_elements / timing.best


def best_bandwidth(n_elements: int = 8 * 4096 * 512, repeat: int = 7) -> dict[str, float]:
    """Both probes and their maximum (``"best"``, bytes/s): the roofline uses the fastest stream measured,
    so a multi-threaded kernel cannot look better than the machine just because one thread cannot saturate it."""
    found = {"numpy_1thread": bandwidth_probe(n_elements, repeat),
             "numpy_threads": threaded_bandwidth_probe(n_elements, repeat)}
    torch_bw = torch_bandwidth_probe(n_elements, repeat)
    if torch_bw is not None:
        found["torch_threads"] = torch_bw
    found["best"] = max(found.values())
    return found


def steady_bandwidth(n_elements: int = 8 * 4096 * 512, repeat: int = 5, rounds: int = 3) -> float:
    """The median over ``rounds`` of the faster of :func:`bandwidth_probe` and :func:`threaded_bandwidth_probe`
    (bytes/s): one round's best can catch a burst of the shared VM (54-69 GB/s where the rounds around it read
    30-39), and a roofline taken from that burst makes every ratio divided by it look worse than it is."""
    found = [max(bandwidth_probe(n_elements, repeat), threaded_bandwidth_probe(n_elements, repeat))
             for _ in range(rounds)]
    return statistics.median(found)


def roofline_seconds(n_elements: int, bandwidth: float, bytes_per_element: int = 12) -> float:
    return bytes_per_element * n_elements / bandwidth


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of log(y) against log(x): 1.0 means linear growth."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


# --- the plain C loop ---------------------------------------------------------------------------------------


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> the bits of bfloat16 (uint16), round to nearest even; for :func:`c_loop_scan`'s bf16 streams.

    Finite values only (the benchmark's inputs): a NaN's rounding is not handled here.
    """
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def c_loop_scan(a: np.ndarray, b: np.ndarray, h0: np.ndarray, h: np.ndarray, final: np.ndarray) -> None:
    """The native kernel (``linrec.backends.native``) straight through its C ABI, writing into preallocated
    ``h (N, T, D)`` and ``final (N, D)``: the plain C loop baseline, with no allocation and no Python per step.

    ``a (N, T, Da)``, ``b (N, T, D)``, ``h0 (N, D)``: C-contiguous, same float dtype; or ``a``, ``b``, ``h`` uint16
    bfloat16 bits (:func:`to_bf16_bits`) with float32 ``h0``, ``final``. Raises
    ``linrec.backends.native.NativeBuildError`` when the kernel cannot be built.
    """
    from linrec.backends import native

    lib = native._builder().load()
    arrays = (a, b, h0, h, final)
    if not all(x.flags.c_contiguous for x in arrays):
        raise ValueError("c_loop_scan needs C-contiguous arrays")
    # uint16 arrays carry bfloat16 bits (NumPy has no bfloat16): the kernel's bf16 streams, h0/final in float32
    codes = tuple(native.DTYPE_CODES["bfloat16" if x.dtype == np.uint16 else x.dtype.name] for x in (a, b))
    n, t, d = b.shape
    status = lib.linrec_scan_fwd(*codes, n, t, d, a.shape[2], a.ctypes.data, b.ctypes.data, h0.ctypes.data, None,
                                 0, h.ctypes.data, final.ctypes.data)
    if status:
        raise ValueError(f"linrec native kernel failed with status {status}")


# --- memory -------------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: ``VmHWM`` of ``/proc/self/status`` where there is one, else
    ``getrusage().ru_maxrss`` (KiB on Linux, bytes on macOS).

    ``VmHWM`` first because on Linux ``ru_maxrss`` of an ``exec``-ed child starts at its parent's peak (the forked
    address space's high-water mark is carried over at ``exec``), and :func:`reset_peak_rss` does not lower it: a
    subprocess started by a process that once held 4 GB would report a 4 GB peak.
    """
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    """Resident set size now (``/proc/self/statm``; falls back to the peak where there is no ``/proc``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux ``/proc/self/clear_refs``, value 5).

    Returns whether it worked; afterwards :func:`peak_rss_bytes` measures from now on.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


#: Environment for memory-measuring subprocesses: glibc hands every allocation above 64 KiB back to the OS on
#: ``free`` (a fixed threshold disables its adaptive one), so RSS tracks live memory instead of the allocator's cache.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


def set_torch_threads(n: int | None) -> int | None:
    """Set PyTorch's intra-op threads to ``n`` (``None``: leave them, import nothing); returns the previous count,
    to restore with another call."""
    if n is None:
        return None
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    return previous


def run_json_subprocess(args: Sequence[str], *, timeout: float = 600.0, env: Mapping[str, str] | None = None
                        ) -> dict[str, Any]:
    """Run ``sys.executable *args`` and parse the last stdout line as JSON (``{"error": ...}`` on failure)."""
    full_env = {**os.environ, **(env or {})}
    try:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                              env=full_env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": f"unparsable output: {lines[-1][:200]}"}


def round_robin(impls: Sequence[str], rounds: int, measure: Callable[[str, bool], dict[str, Any]],
                merge: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
                say: Callable[[str, int, dict[str, Any]], None] = lambda impl, round_, res: None
                ) -> dict[str, dict[str, Any]]:
    """``measure(impl, first_round)`` for every implementation in turn, ``rounds`` times over, each implementation's
    rounds folded by ``merge`` (keep the faster). Taking turns spreads every implementation over the same stretch
    of time, so a slow minute on the shared machine hits all of them, not one."""
    results: dict[str, dict[str, Any]] = {}
    for round_ in range(max(rounds, 1)):
        for impl in impls:
            res = measure(impl, round_ == 0)
            results[impl] = res if round_ == 0 else merge(results[impl], res)
            say(impl, round_, res)
    return results


# --- reporting ----------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and package versions (imports no framework)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    packages = ("linrec", "numpy", "jax", "jaxlib", "flax", "torch", "matplotlib", "flax-gated-linear-rnn",
                "minGRU-pytorch", "gateloop-transformer")
    try:
        from linrec.backends import native

        native_info = native.describe()
    except Exception as err:  # the report must not fail because the kernel does not build
        native_info = {"built": False, "error": str(err)}
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "memory_bytes": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in packages},
        "native_kernel": native_info,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub Markdown table of ``rows`` (dicts keyed by ``columns``; missing or ``None`` cells print ``–``)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


# --- the benchmark scripts ----------------------------------------------------------------------------------


def benchmarks_dir() -> Path | None:
    """``benchmarks/`` of the source checkout this package runs from (it is not part of the wheel), or ``None``."""
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    return here if (here / "scan.py").is_file() else None


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (``scan``, ``layers``, ``memory``, ``run_all``) by path.

    Raises ``FileNotFoundError`` outside a source checkout (the scripts are not installed with the package).
    """
    import importlib.util

    root = benchmarks_dir()
    if root is None or not (root / f"{name}.py").is_file():
        raise FileNotFoundError(f"benchmarks/{name}.py not found: the benchmark scripts live in linrec's source "
                                "tree (git checkout), not in the installed package")
    key = f"linrec_benchmarks_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, root / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


# --- the scripts' shared command line ------------------------------------------------------------------------


def pyplot() -> ModuleType | None:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or ``None`` when matplotlib is not installed
    (the benchmarks then write their tables without plots)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: Path) -> bool:
    """Lay out ``fig``, write it to ``path`` as PNG and release it; returns ``True`` (a plot was written)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(out: Path, name: str, markdown: str, plot: Callable[[Path], bool]) -> list[Path]:
    """Write ``<name>.md`` and, when ``plot`` can draw it (matplotlib installed), ``<name>.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    md.write_text(markdown)
    written = [md]
    if plot(out / f"{name}.png"):
        written.append(out / f"{name}.png")
    return written


def script_main(argv: Sequence[str] | None, *, name: str, doc: str, quick_help: str,
                run: Callable[..., dict[str, Any]], report: Callable[[dict[str, Any]], str],
                write: Callable[[dict[str, Any], Path], list[Path]], results: Path,
                worker: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> int:
    """``python benchmarks/<name>.py [--quick] [--out DIR]``: run, print the report, write the results.

    A full run writes into ``results`` unless ``--out`` says otherwise; ``--quick`` writes only with ``--out``.
    ``--worker SPEC`` (internal) runs one measurement in this process and prints its JSON (the isolated runs).
    """
    import argparse

    parser = argparse.ArgumentParser(prog=f"linrec bench {name}", description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, help=f"directory for {name}.md/{name}.png (default: benchmarks/results "
                                                 "for a full run, nothing written for --quick)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.worker:
        if worker is None:
            parser.error("this benchmark has no worker processes")
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    result = run(args.quick, progress=say)
    print(report(result))
    out = args.out or (None if args.quick else results)
    if out is not None:
        for path in write(result, out):
            say(f"wrote {path}")
    return 0
