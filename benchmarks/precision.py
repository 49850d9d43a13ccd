"""Precision benchmark: float32 (and bfloat16-input) error of every ``linear_scan`` method over long sequences.

Shape legend: ``B`` batch, ``T`` time, ``D`` state width; ``a`` and ``b`` of shape ``(B, T, D)``.

Every method of every backend (``log`` separately: its domain is positive values) runs on the same inputs, rounded
once to the case dtype, and is compared with the float64 (complex128) loop run on those rounded inputs
(``linrec.backends.numpy``'s ``sequential`` method, which is the loop of recurrence.md §2). The error is
``max|h - ref| / max|ref|`` over the whole output, the measure of recurrence.md §9. Inputs:

- *real*: ``a = 1 - U(0, 1e-4)`` (memory of ~2·10^4 steps), ``b ~ N(0, 1)``; float32.
- *complex*: ``a = (1 - U(0, 1e-4)) · exp(i·U(-0.1, 0.1))`` (``|a|`` near 1, slowly rotating), ``b ~ CN(0, 1)``;
  complex64.
- *bf16*: the *real* inputs rounded to bfloat16 (state accumulated in float32, §5; the decays round to 1 there,
  so the state is a running sum). The output is bfloat16, whose own rounding (2^-9 of each element) would hide
  the state's error, so this column compares with the reference *rounded to bfloat16*: 0 means every output is
  the correctly rounded state; one bfloat16 ulp of an element near max|ref| is 2^-8 to 2^-7 of it (3.9e-3 to
  7.8e-3).
- *log*: ``a = 1 - U(0, 1e-4)``, ``b ~ U(0.5, 1.5)`` (positive, the domain of ``method="log"``), float32, with
  ``|Σ log a|`` over the sequence, the quantity its error grows with.

The table prints the error and, for the parallel methods, its ratio to the same backend's ``sequential`` error.
Run: ``python benchmarks/precision.py [--quick] [--out FILE]`` (the full run, T = 1e5 and 1e6 with B = 1, D = 8,
takes a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np

from linrec.backends.numpy.arrays import np_dtype

RESULTS = Path(__file__).resolve().parent / "results"
FULL = {"B": 1, "D": 8, "T": (100_000, 1_000_000)}
QUICK = {"B": 1, "D": 4, "T": (2048,)}
BACKENDS = ("numpy", "jax", "torch")
KINDS = ("real", "complex", "bf16")


def make_inputs(kind: str, batch: int, length: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` of shape ``(B, T, D)`` for ``kind`` (``real``, ``complex``, ``bf16``, ``log``), already rounded."""
    rng = np.random.default_rng(seed)
    shape = (batch, length, width)
    a = 1 - rng.uniform(0, 1e-4, shape)
    if kind == "complex":
        a = a * np.exp(1j * rng.uniform(-0.1, 0.1, shape))
        b = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        return a.astype(np.complex64), b.astype(np.complex64)
    b = rng.uniform(0.5, 1.5, shape) if kind == "log" else rng.standard_normal(shape)
    dtype = np_dtype("bfloat16") if kind == "bf16" else np.float32
    return a.astype(dtype), b.astype(dtype)


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The float64/complex128 loop of recurrence.md §2 on the (already rounded) inputs."""
    from linrec.backends import numpy as backend

    wide = np.complex128 if np.iscomplexobj(b) else np.float64
    return backend.linear_scan(a.astype(wide), b.astype(wide), method="sequential")[0]


def relative_error(h: np.ndarray, ref: np.ndarray) -> float:
    """``max|h - ref| / max|ref|`` (recurrence.md §9's scale); NaN anywhere is an infinite error."""
    h = np.asarray(h).astype(ref.dtype)
    err = np.abs(h - ref)
    return float("inf") if np.isnan(err).any() else float(err.max() / np.abs(ref).max())


def run_backend(name: str, kinds: tuple[str, ...], lengths: tuple[int, ...], batch: int, width: int,
                refs: dict) -> list[dict]:
    """Errors of every method of backend ``name``; ``refs[(kind, T)] = (a, b, ref)``."""
    backend = importlib.import_module(f"linrec.backends.{name}")
    rows = []
    for kind in kinds:
        for length in lengths:
            a, b, ref = refs[(kind, length)]
            methods = ("log",) if kind == "log" else tuple(m for m in backend.METHODS if m != "log")
            for method in methods:
                start = time.perf_counter()
                h, _ = backend.linear_scan(backend.asarray(a), backend.asarray(b), method=method)
                h = np.asarray(backend.to_numpy(h))
                if kind == "bf16":  # the error beyond the output's own rounding (module docstring)
                    ref = ref.astype(np_dtype("bfloat16")).astype(np.float64)
                rows.append({"backend": name, "method": method, "kind": kind, "T": length,
                             "error": relative_error(h, ref), "seconds": time.perf_counter() - start})
                print(f"  {name:6s} {method:12s} {kind:8s} T={length:>8d} {rows[-1]['error']:.2e}",
                      file=sys.stderr, flush=True)
    return rows


def _fmt(x: float) -> str:
    return f"{x:.1e}"


def markdown(rows: list[dict], lengths: tuple[int, ...], refs: dict) -> str:
    """The linear methods' table (error, ratio to ``sequential``), then the log method's."""
    err = {(r["backend"], r["method"], r["kind"], r["T"]): r["error"] for r in rows}
    cols = [(k, t) for t in lengths for k in KINDS]
    head = "| backend | method | " + " | ".join(f"{k} T={t:.0e}".replace("+0", "") for k, t in cols) + " |"
    out = [head, "|" + "---|" * (len(cols) + 2)]
    for backend in dict.fromkeys(r["backend"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["backend"] == backend and r["method"] != "log"):
            cells = []
            for k, t in cols:
                e = err.get((backend, method, k, t))
                base = err.get((backend, "sequential", k, t))
                if e is None:
                    cells.append("–")
                elif method in ("sequential", "native") or not base:
                    cells.append(_fmt(e))
                else:
                    cells.append(f"{_fmt(e)} ({e / base:.2f}×)")
            out.append(f"| {backend} | {method} | " + " | ".join(cells) + " |")
    log_rows = [r for r in rows if r["method"] == "log"]
    if log_rows:
        out += ["", "`method=\"log\"` (positive inputs; float32):", "",
                "| backend | method | " + " | ".join(f"T={t:.0e}".replace("+0", "") for t in lengths) + " |",
                "|" + "---|" * (len(lengths) + 2)]
        for backend in dict.fromkeys(r["backend"] for r in log_rows):
            out.append(f"| {backend} | log | " + " | ".join(_fmt(err[(backend, "log", "log", t)]) for t in lengths)
                       + " |")
        sums = []
        for t in lengths:
            a = refs[("log", t)][0].astype(np.float64)
            sums.append(f"T={t:.0e}".replace("+0", "") + f": max |Σ log a| = {np.abs(np.log(a).sum(axis=1)).max():.3g}")
        out += ["", "; ".join(sums) + "."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; prints the table, writes nothing")
    parser.add_argument("--out", type=Path, help="write the markdown table here (default with a full run: "
                        "benchmarks/results/precision.md)")
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable (default: all)")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    lengths, batch, width = size["T"], size["B"], size["D"]
    kinds = (*KINDS, "log")
    refs = {}
    for kind in kinds:
        for length in lengths:
            a, b = make_inputs(kind, batch, length, width)
            refs[(kind, length)] = (a, b, reference(a, b))
    rows = []
    for name in args.backend or BACKENDS:
        rows += run_backend(name, kinds, lengths, batch, width, refs)
    table = markdown(rows, lengths, refs)
    header = (f"# Precision of `linear_scan` (B={batch}, D={width}; error = max|h − ref| / max|ref| against the "
              "float64 loop on the same rounded inputs)\n\nGenerated by `benchmarks/precision.py`; inputs as in its "
              "docstring. In parentheses: the ratio to the same backend's `sequential` error.\n\n")
    print(header + table)
    out = args.out or (None if args.quick else RESULTS / "precision.md")
    if out is not None:
        out.write_text(header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
