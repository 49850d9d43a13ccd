"""Import every module of the source tree from an installed wheel (run from outside the repo).

A subpackage missing from pyproject's package list is silently dropped from the wheel while an
editable install still finds it; this catches that, and missing package data.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import resources
from pathlib import Path

ROOTS = {"linrec": "linrec", "spec": "linrec.spec", "backends": "linrec.backends",
         "conformance": "linrec.conformance", "tools": "linrec.tools"}
DATA = [("linrec.spec", "recurrence.md"), ("linrec.conformance", "golden/scan.json"),
        ("linrec.conformance", "golden/scan.npz"), ("linrec.conformance", "xfails/numpy.json"), ("linrec", "py.typed"),
        ("linrec.backends.native", "linrec_scan.cc"), ("linrec.conformance.adapters", "xfails/recurrentgemma.json"),
        ("linrec.conformance.adapters", "xfails/accelerated_scan.json")]
#: modules that need an optional peer package (the `peers` extra), which the wheel check does not install
OPTIONAL_PEERS = ("linrec.conformance.adapters.",)


def main(repo: Path) -> int:
    names = []
    for folder, package in ROOTS.items():
        for path in sorted((repo / folder).rglob("*.py")):
            rel = path.relative_to(repo / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            names.append(".".join([package, *parts]))
    failures = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            # a peer adapter whose peer is not installed (or cannot run here) says so on import; the file must still
            # be in the wheel
            spec = importlib.util.find_spec(name) if name.startswith(OPTIONAL_PEERS) else None
            if spec is None or "site-packages" not in Path(spec.origin or "").parts:
                failures.append(f"{name}: {type(err).__name__}: {err}")
            continue
        except Exception as err:
            failures.append(f"{name}: {type(err).__name__}: {err}")
            continue
        origin = Path(getattr(module, "__file__", "") or "")
        if "site-packages" not in origin.parts:
            failures.append(f"{name}: imported from {origin}, not from the installed wheel")
    for package, name in DATA:
        if not (resources.files(package) / name).is_file():
            failures.append(f"package data missing: {package}/{name}")
    print(f"imported {len(names) - len(failures)} of {len(names)} modules from the wheel")
    for line in failures:
        print("  FAIL", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
