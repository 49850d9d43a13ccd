"""Cases from the portable golden vectors in ``conformance/golden/`` (regenerate: ``linrec golden``)."""

from __future__ import annotations

import json
from importlib import resources
from types import ModuleType

import numpy as np

from linrec.conformance.case import Case, Outcome
from linrec.conformance.compare import as_backend, as_numpy, compare, compare_many
from linrec.conformance.inputs import rounded

__all__ = ["cases", "load"]


def load() -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and arrays of the scan golden vectors."""
    folder = resources.files("linrec.conformance") / "golden"
    manifest = json.loads((folder / "scan.json").read_text())
    with (folder / "scan.npz").open("rb") as fh, np.load(fh) as data:
        arrays = {k: data[k] for k in data.files}
    return manifest, arrays


def _run(backend: ModuleType, entry: dict, arrays: dict, method: str) -> Outcome:
    get = {k: arrays[v] for k, v in entry["arrays"].items()}
    dtype = entry["dtype"]
    if method == "log":  # golden inputs are not all positive; the log method has its own cases
        return Outcome(True, detail="not in the log domain")
    kwargs = {"reverse": entry["reverse"], "method": method}
    if "initial_state" in get:
        kwargs["initial_state"] = as_backend(backend, rounded(get["initial_state"], dtype))
    if "resets" in get:
        kwargs["resets"] = as_backend(backend, get["resets"].astype(bool))
    h, final = backend.linear_scan(as_backend(backend, rounded(get["a"], dtype)),
                                   as_backend(backend, rounded(get["b"], dtype)), **kwargs)
    length = get["b"].shape[1]
    outcomes = [compare("h", as_numpy(backend, h), get["h"], dtype, method=method, length=length),
                compare("final_state", as_numpy(backend, final), get["final_state"], dtype, method=method,
                        length=length)]
    if not all(o.passed for o in outcomes) and method != "sequential" and "sequential" in backend.METHODS:
        kwargs["method"] = "sequential"
        base = backend.linear_scan(as_backend(backend, rounded(get["a"], dtype)),
                                   as_backend(backend, rounded(get["b"], dtype)), **kwargs)
        outcomes = [compare(n, as_numpy(backend, g), get[n], dtype, method=method, length=length,
                            baseline=as_numpy(backend, b))
                    for n, g, b in zip(("h", "final_state"), (h, final), base)]
    return compare_many(outcomes)


def cases(backend: ModuleType) -> list[Case]:
    manifest, arrays = load()
    out = []
    for entry in manifest["cases"]:
        for method in getattr(backend, "METHODS", ("auto",)):
            if method == "log":
                continue
            out.append(Case(
                id=f"scan/golden/{entry['name']}[{method}]",
                property="golden-vector",
                doc=f"The stored float64 reference output for '{entry['name']}' ({entry['dtype']}).",
                fn=lambda be, e=entry, m=method: _run(be, e, arrays, m),
                dtypes=(entry["dtype"],),
            ))
    return out
