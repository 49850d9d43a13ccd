"""Packaging: no framework on import, the CLI, the spec's tolerance table, the golden vectors."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

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


ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_declared_jax_minimum_is_the_one_the_import_guard_enforces():
    """pyproject's `jax>=` is what linrec.backends.MINIMUM_VERSIONS says (jax 0.8.0: the first with jax.enable_x64)."""
    from linrec.backends import MINIMUM_VERSIONS

    (declared,) = [r for r in _pyproject()["project"]["optional-dependencies"]["jax"] if r.startswith("jax>=")]
    assert declared == f"jax>={MINIMUM_VERSIONS['jax']}" == "jax>=0.8.0"


def test_an_older_jax_is_refused_on_import_naming_the_minimum(monkeypatch):
    jax = pytest.importorskip("jax")
    from linrec.backends import _minimum_jax, require_version, version_tuple

    assert version_tuple("0.10.2") > version_tuple("0.8.0") > version_tuple("0.7.2") > version_tuple("0.4.38")
    assert version_tuple("2.13.0+cpu") == (2, 13, 0) and version_tuple("0.5.0rc1") == (0, 5)
    require_version("jax", "0.8.0")
    monkeypatch.setattr(jax, "__version__", "0.7.2")
    with pytest.raises(ImportError, match=r"jax>=0\.8\.0, found jax 0\.7\.2"):
        importlib.reload(_minimum_jax)
    # the guard is the first thing linrec.backends.jax imports, before anything touches jax.ffi
    init = (ROOT / "backends" / "jax" / "__init__.py").read_text()
    first_import = next(line for line in init.splitlines() if line.startswith(("import ", "from ")))
    assert first_import.startswith("from linrec.backends import _minimum_jax")


def test_license_file_matches_the_declared_license():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert any(c.startswith("Programming Language :: Python :: 3") for c in project["classifiers"])
    assert (ROOT / "CHANGELOG.md").is_file()
