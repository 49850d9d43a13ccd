"""Packaging: no framework on import, the CLI, the spec's tolerance table, the golden vectors."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources

import numpy as np

import linrec
from linrec.spec import tolerances


def test_import_linrec_loads_no_framework():
    code = (
        "import sys, linrec, linrec.spec.reference, linrec.conformance, linrec.backends, linrec.tools.cli;"
        "linrec.convert, linrec.load, linrec.save, linrec.inspect;"
        "print(sorted(m for m in ('jax', 'jaxlib', 'torch', 'flax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_tolerance_table_in_spec_matches_code():
    text = (resources.files("linrec.spec") / "recurrence.md").read_text()
    rows = dict(re.findall(r"^\| ([a-z0-9, ]+) \| ([0-9.e-]+ \| [0-9.e-]+) \|", text, flags=re.M))
    seen = set()
    for names, values in rows.items():
        rtol, atol = (float(v) for v in values.split("|"))
        for name in (n.strip() for n in names.split(",")):
            assert tolerances.TOLERANCES[name] == tolerances.Tolerance(rtol, atol), name
            seen.add(name)
    assert seen == set(tolerances.TOLERANCES)


def test_golden_vectors_are_what_the_generator_writes():
    from linrec.conformance.golden_cases import load
    from linrec.tools.golden import build

    manifest, arrays = load()
    fresh_arrays, fresh_manifest = build()
    assert manifest == fresh_manifest
    assert arrays.keys() == fresh_arrays.keys()
    for key, value in fresh_arrays.items():
        np.testing.assert_array_equal(arrays[key], value, err_msg=key)


def test_cli_info_and_conformance_exit_codes(tmp_path):
    info = subprocess.run([sys.executable, "-m", "linrec.tools.cli", "info"], capture_output=True, text=True)
    assert info.returncode == 0 and f"linrec {linrec.__version__}" in info.stdout
    out = tmp_path / "report.json"
    ok = subprocess.run(
        [sys.executable, "-m", "linrec.tools.cli", "conformance", "--backend", "numpy", "--select", "scan/named/*",
         "--json", str(out), "--quiet"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "numpy: PASSED" in ok.stdout and out.exists()
    missing = subprocess.run(
        [sys.executable, "-m", "linrec.tools.cli", "conformance", "--backend", "no_such_module_xyz", "--quiet"],
        capture_output=True, text=True)
    assert missing.returncode == 1 and "NOT AVAILABLE" in missing.stdout
