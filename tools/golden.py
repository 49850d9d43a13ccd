"""Regenerate the portable golden vectors of the scan: ``python -m linrec.tools.golden`` (or ``linrec golden``).

Writes ``conformance/golden/scan.npz`` (inputs and float64 reference outputs) and ``scan.json``
(a manifest any language can read: case names, dtypes, options, array keys). Without ``--out`` it writes
into the source checkout the package runs from; an installed package's copy (site-packages) is never
overwritten: there ``--out DIR`` is required. Inputs are stored as
float64/complex128 values that are exactly representable in the case dtype; a loader rounds them
to that dtype (a no-op on the values) before calling its backend.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from linrec import SPEC_VERSION
from linrec.conformance.compare import to_reference_precision
from linrec.conformance.inputs import make_scan_inputs
from linrec.spec import reference

__all__ = ["GOLDEN_DIR", "SPECS", "build", "default_out", "write"]

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "conformance" / "golden"

# name -> make_scan_inputs keyword arguments (+ reverse); small, but covering every option of the spec
SPECS: dict[str, dict] = {
    "f64-basic": dict(seed=1, batch=2, length=9, state=(3,), dtype="float64"),
    "f32-long-near-one": dict(seed=2, batch=1, length=300, state=(4,), dtype="float32", regime="near-one"),
    "f32-reverse-resets": dict(seed=3, batch=3, length=17, state=(2,), dtype="float32", reset_rate=0.25,
                               reverse=True),
    "f32-row-decay-matrix-state": dict(seed=4, batch=2, length=11, state=(2, 3, 4), broadcast_a=(2, 3, 1),
                                       dtype="float32"),
    "c64-rotation": dict(seed=5, batch=2, length=13, state=(3,), dtype="complex64", regime="complex"),
    "c128-resets": dict(seed=6, batch=2, length=10, state=(2,), dtype="complex128", regime="complex",
                        reset_rate=0.3),
    "bf16-accumulate-f32": dict(seed=7, batch=2, length=64, state=(8,), dtype="bfloat16", regime="near-one"),
    "f16-negative": dict(seed=8, batch=2, length=20, state=(3,), dtype="float16", regime="negative"),
    "f64-no-initial-state": dict(seed=9, batch=1, length=5, state=(2,), dtype="float64", with_initial_state=False),
    "f32-exact-0-1": dict(seed=10, batch=2, length=12, state=(3,), dtype="float32", regime="exact-0-1"),
}


def build() -> tuple[dict[str, np.ndarray], dict]:
    arrays: dict[str, np.ndarray] = {}
    manifest: dict = {"spec_version": SPEC_VERSION, "generator": "linrec.tools.golden", "cases": []}
    for name, spec in SPECS.items():
        spec = dict(spec)
        reverse = spec.pop("reverse", False)
        x = make_scan_inputs(**spec)
        h, final = reference.linear_scan(x.ref("a"), x.ref("b"), initial_state=x.ref("initial_state"),
                                         reverse=reverse, resets=x.resets)
        entry = {"name": name, "dtype": x.dtype, "reverse": reverse, "arrays": {}}
        for key, value in (("a", x.ref("a")), ("b", x.ref("b")), ("initial_state", x.ref("initial_state")),
                           ("resets", x.resets), ("h", h), ("final_state", final)):
            if value is not None:
                arrays[f"{name}/{key}"] = to_reference_precision(value)
                entry["arrays"][key] = f"{name}/{key}"
        manifest["cases"].append(entry)
    return arrays, manifest


def write(directory: Path = GOLDEN_DIR) -> list[Path]:
    arrays, manifest = build()
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    paths = [directory / "scan.npz", directory / "scan.json"]
    paths[0].write_bytes(buffer.getvalue())
    paths[1].write_text(json.dumps(manifest, indent=1) + "\n")
    return paths


def default_out(golden_dir: Path | None = None) -> Path | None:
    """``conformance/golden`` when it belongs to a source checkout (``pyproject.toml`` beside ``conformance/``,
    not under site-packages), else ``None``: the shipped vectors are data of the installed package."""
    golden_dir = GOLDEN_DIR if golden_dir is None else golden_dir
    root = golden_dir.parent.parent
    installed = any(part in ("site-packages", "dist-packages") for part in golden_dir.parts)
    return golden_dir if (root / "pyproject.toml").is_file() and not installed else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="linrec golden", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output directory (default: conformance/golden of a source checkout)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else default_out()
    if out is None:
        print(f"linrec golden: {GOLDEN_DIR} belongs to the installed package and is not rewritten; "
              "pass --out DIR to write the vectors elsewhere", file=sys.stderr)
        return 2
    for path in write(out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
