"""The ``linrec`` command as a user meets it: your own backend, exit codes, reports, pipes, where files go."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import linrec
from linrec.conformance import report as report_module
from linrec.conformance import run, runner, scan_properties, to_json, to_text
from linrec.tools import cli

#: a user's backend: the scan only, one method, no gradient, no log_scan, no chunk_size keyword
TINY_BACKEND = '''
"""A backend that implements only the sequential scan (it delegates the loop to linrec's NumPy backend)."""
import numpy as np

from linrec.backends import numpy as _np_backend
from linrec.spec import checks

METHODS = ("sequential",)


def asarray(x):
    return np.asarray(x)


def to_numpy(x):
    return np.asarray(x)


def dtype_name(x):
    return _np_backend.dtype_name(np.asarray(x))


def linear_scan(a, b, *, initial_state=None, reverse=False, resets=None, method="auto"):
    checks.check_method(method, ("auto", *METHODS))
    return _np_backend.linear_scan(a, b, initial_state=initial_state, reverse=reverse, resets=resets,
                                   method="sequential")
'''

#: how a console script starts: sys.path[0] is the script's folder, not the current directory
ENTRY = "import sys\nfrom linrec.tools.cli import main\nraise SystemExit(main())\n"


def _seed_native(cache: Path) -> None:
    """Copy this process's built native kernel (library and stamp) into the fresh ``cache``: the command imports the
    NumPy backend, which would otherwise compile it again there (~45 s per test on the 2-core CI machine)."""
    from linrec.backends import native
    from linrec.backends.native import build

    if not native.available():
        return
    library = build.library_path()
    target = cache / library.relative_to(build.cache_root())
    target.parent.mkdir(parents=True, exist_ok=True)
    for source in (library, build.stamp_path(library)):
        shutil.copy2(source, target.parent / source.name)


def _console(tmp_path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    entry = tmp_path / "bin" / "linrec_entry.py"
    entry.parent.mkdir(exist_ok=True)
    entry.write_text(ENTRY)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYPOTHESIS_STORAGE_DIRECTORY")}
    env["LINREC_CACHE"] = str(tmp_path / "cache")
    _seed_native(tmp_path / "cache")
    return subprocess.run([sys.executable, str(entry), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_own_backend_from_the_current_directory(tmp_path, monkeypatch):
    """A sequential-only module in the current directory: found without PYTHONPATH, asked only what it claims,
    unsupported cases folded into a line per missing function, no ./.hypothesis left behind."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "tinyscan.py").write_text(TINY_BACKEND)
    first = _console(tmp_path, "conformance", "--backend", "tinyscan", "--select", "scan/*", cwd=work)
    out = first.stdout
    assert first.returncode == 1, out + first.stderr  # unsupported cases are not a pass
    assert "NOT AVAILABLE" not in out
    # no case asks for a method the backend does not claim
    for unclaimed in ("chunk-size", "log-negative-b", "log-zero-a", "[associative]", "[chunked]", "[log]"):
        assert unclaimed not in out, unclaimed
    assert "  fail:" not in first.stderr and "  error:" not in first.stderr, first.stderr
    unsupported = [line for line in out.splitlines() if "UNSUPPORTED" in line]
    # one line for the scan part of the spec, not one per case
    assert unsupported == ["tinyscan: UNSUPPORTED scan: 8 cases need linear_scan_vjp, log_scan"], unsupported
    assert "tinyscan: FAILED" in out and " fail" not in out.split("tinyscan: FAILED")[1]
    assert not (work / ".hypothesis").exists()
    assert (tmp_path / "cache" / "hypothesis").is_dir()


    # with the missing functions listed as known failures, the same backend passes (in-process, to be quick)
    monkeypatch.syspath_prepend(str(work))
    xfails = {"scan/*/gradient-*": "no autodiff in this backend",
              "scan/errors/log-scan-*": "log_scan is not implemented here"}
    (second,) = run(["tinyscan"], select="scan/*", xfails=xfails)
    assert second.ok, to_text([second])
    assert "tinyscan: PASSED" in to_text([second])
    monkeypatch.delitem(sys.modules, "tinyscan")


def test_missing_module_names_the_search_path():
    (rep,) = run(["no_such_backend_xyz"])
    assert not rep.ok and "PYTHONPATH" in rep.import_error
    assert "NOT AVAILABLE" in to_text([rep])


def test_select_matching_nothing_fails(capsys):
    from linrec.tools.cli import main

    code = main(["conformance", "--backend", "numpy", "--select", "no/such/case/*", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "numpy: FAILED (no cases ran)" in captured.out
    assert "--select 'no/such/case/*' matches no case for numpy" in captured.err


def test_select_takes_an_exact_case_id():
    """``[sequential]`` in an id is literal, not an fnmatch character class."""
    (rep,) = run(["numpy"], select="scan/property/equals-reference[sequential]")
    assert [r.id for r in rep.results] == ["scan/property/equals-reference[sequential]"] and rep.ok


def test_uninstalled_framework_is_skipped_not_failed(monkeypatch):
    """A numpy-only install: the default run reports jax and torch as not installed, skipped, and passes."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in ("jax", "torch") else real(name, *a, **k))
    reports = run(select="scan/named/*")
    assert [r.backend for r in reports] == list(linrec.BUNDLED_BACKENDS)
    by_name = {r.backend: r for r in reports}
    assert by_name["numpy"].ok and by_name["numpy"].results
    for name in ("jax", "torch"):
        assert by_name[name].skipped and by_name[name].ok and not by_name[name].results
    text = to_text(reports)
    assert "jax: not installed, skipped" in text and "torch: not installed, skipped" in text
    assert "FAILED" not in text
    # named explicitly, a backend that cannot be imported fails
    monkeypatch.setitem(sys.modules, "linrec.backends.torch", None)  # what a missing torch makes of the import
    (explicit,) = run(["torch"], select="scan/named/*")
    assert not explicit.ok and explicit.import_error


def test_json_report_records_versions_platform_and_examples():
    reports = run(["numpy"], select="scan/property/equals-reference*")
    data = json.loads(to_json(reports))
    env = data["environment"]
    assert env["linrec"] == linrec.__version__ and env["spec"] == linrec.SPEC_VERSION
    assert env["versions"]["numpy"] and env["versions"]["hypothesis"] and env["platform"] and env["python"]
    (backend,) = data["backends"]
    cases = len(backend["results"])
    per_case = scan_properties.PROFILES["ci"][0]
    assert backend["hypothesis"] == {"profile": "ci", "examples_per_case": per_case, "shrink": False,
                                     "property_cases": cases, "examples": cases * per_case}
    assert data["hypothesis"] == {"profile": "ci", "shrink": False, "examples": {"numpy": cases * per_case}}


def _property_cases(backend: str) -> int:
    return sum("hypothesis" in c.tags for c in runner.collect(linrec.get_backend(backend), runner.CASE_MODULES))


def test_thorough_spreads_the_example_budget_and_counts_it(monkeypatch):
    """--thorough runs runner.THOROUGH_EXAMPLES examples per backend (here scaled down), counted call by call; a
    --select run keeps the whole run's count per case, so parts run with one journal add up to the record."""
    everything = _property_cases("numpy")
    monkeypatch.setattr(runner, "THOROUGH_EXAMPLES", 10 * everything)
    (rep,) = run(["numpy"], select="scan/property/equals-reference*", thorough=True)
    cases = len(rep.results)
    assert everything > cases >= 2 and rep.ok
    assert rep.hypothesis["profile"] == "thorough" and rep.hypothesis["shrink"] is True
    assert rep.hypothesis["examples_per_case"] == 10 and rep.hypothesis["property_cases"] == cases
    assert rep.hypothesis["examples"] == 10 * cases
    assert f"numpy: {10 * cases:,} Hypothesis examples (thorough profile: 10 per property case" in to_text([rep])
    assert scan_properties.profile() == ("ci", scan_properties.PROFILES["ci"][0], False)  # restored


def test_thorough_record_in_parts_resumes_as_one_run(tmp_path, monkeypatch):
    """Two --select runs into one journal, then the whole run: it reruns nothing the parts finished."""
    monkeypatch.setattr(runner, "THOROUGH_EXAMPLES", 2 * _property_cases("numpy"))
    journal = tmp_path / "numpy.journal"
    for part in ("scan/property/*[[]sequential]", "scan/property/*[[]associative]"):
        (rep,) = run(["numpy"], select=part, thorough=True, resume=journal)
        assert rep.ok and rep.hypothesis["examples"] == 2 * len(rep.results)
    parts = len(journal.read_text().splitlines())
    (whole,) = run(["numpy"], select="scan/property/*", thorough=True, resume=journal)
    assert whole.ok and whole.hypothesis["resumed"] == {"cases": parts, "examples": 2 * parts}
    assert whole.hypothesis["examples"] == 2 * whole.hypothesis["property_cases"]


def test_thorough_releases_compilations_under_memory_map_pressure(monkeypatch):
    """A long run releases JAX's compiled executables when the process nears the kernel's limit on memory maps
    (each executable maps its own pages; a thorough JAX run hit the limit before memory ran out)."""
    released = []
    monkeypatch.setattr(runner, "THOROUGH_EXAMPLES", 400 * _property_cases("numpy"))
    monkeypatch.setattr(scan_properties, "_maps_pressure", lambda: True)
    monkeypatch.setattr(scan_properties, "_release_compilations", lambda: released.append(1))
    (rep,) = run(["numpy"], select="scan/property/equals-reference[sequential]", thorough=True)
    assert rep.ok and rep.hypothesis["examples"] == 400
    assert len(released) == 400 // scan_properties.MAPS_CHECK_EVERY


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="no /proc (the check is Linux-only)")
def test_memory_map_pressure_reads_this_process():
    """The count is this process's real one: above zero of the limit, far below half of it."""
    assert scan_properties._maps_pressure(fraction=0.0) is True
    assert scan_properties._maps_pressure() is False


#: a backend that dies inside "native code" on its first scan: ``os._exit(0)`` skips every Python handler, as an
#: LLVM "Cannot allocate memory" inside XLA's compiler did (status 0, no report)
DYING_BACKEND = TINY_BACKEND.replace("def linear_scan(", "def _unused(") + '''

def linear_scan(a, b, **kwargs):
    import os
    os._exit(0)
'''


@pytest.mark.slow  # two commands, each a parent and a child process: ~15 s each
@pytest.mark.parametrize("dies", [True, False])
def test_thorough_run_that_dies_without_its_report_exits_non_zero(tmp_path, dies):
    """``--thorough`` runs in a child process; a child that ends before its end (here: exit status 0 from deep
    inside a scan) makes the command fail and say so, while a finished run keeps its own status and report."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "tinyscan.py").write_text(DYING_BACKEND if dies else TINY_BACKEND)
    done = _console(tmp_path, "conformance", "--backend", "tinyscan", "--thorough", "--quiet", "--json", "r.json",
                    "--select", "scan/named/decay-half*", cwd=work)
    if dies:
        assert done.returncode == cli.DIED, done.stdout + done.stderr
        assert "ended before it finished (exit status 0)" in done.stderr
        assert not (work / "r.json").exists()
    else:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "tinyscan: PASSED" in done.stdout and (work / "r.json").exists()
        assert "ended before it finished" not in done.stderr


def test_the_real_thorough_budget_is_at_least_1e5():
    assert runner.THOROUGH_EXAMPLES >= 100_000


def test_unsupported_cases_fold_per_part_of_the_spec():
    result = runner.CaseResult
    rep = runner.BackendReport("mine", "mine", results=[
        result(f"mingru/x{i}/c", "p", "unsupported", 0, 0, f"backend has no mingru{', vjp' * (i % 2)}", 0)
        for i in range(300)
    ] + [result("scan/named/y", "p", "pass", 0, 0, "", 0),
         result("minlstm/z", "p", "unsupported", 0, 0, "backend has no minlstm", 0)])
    text = to_text([rep])
    assert text.count("UNSUPPORTED") == 2
    assert "mine: UNSUPPORTED mingru: 300 cases need mingru, vjp" in text
    assert "mine: UNSUPPORTED minlstm: 1 case need minlstm" in text
    assert report_module._family("scan/property/equals-reference[log]") == "scan"


def test_python_dash_m_linrec():
    result = subprocess.run([sys.executable, "-m", "linrec", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"linrec {linrec.__version__}"


def test_closed_pipe_is_not_a_traceback():
    """``linrec … | head``: the reader goes away before the report is written; no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "linrec", "conformance", "--backend", "numpy", "--select",
                             "scan/named/*", "--verbose", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `head` that has read what it wanted
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode in (0, 141)


def test_golden_never_writes_into_an_installed_package(tmp_path, monkeypatch, capsys):
    from linrec.tools import golden

    default_out = golden.default_out
    installed = tmp_path / "lib" / "site-packages" / "linrec" / "conformance" / "golden"
    installed.mkdir(parents=True)
    (installed.parent.parent / "pyproject.toml").write_text("")  # even beside a pyproject.toml
    assert default_out(installed) is None
    monkeypatch.setattr(golden, "GOLDEN_DIR", installed)
    monkeypatch.setattr(golden, "default_out", lambda golden_dir=None: None)
    assert golden.main([]) == 2
    assert "--out" in capsys.readouterr().err
    assert list(installed.iterdir()) == []
    out = tmp_path / "vectors"
    assert golden.main(["--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["scan.json", "scan.npz"]
    # a source checkout: conformance/golden beside pyproject.toml, outside site-packages
    checkout = tmp_path / "src" / "conformance" / "golden"
    checkout.mkdir(parents=True)
    (tmp_path / "src" / "pyproject.toml").write_text("")
    assert default_out(checkout) == checkout


def test_bench_outside_a_checkout_says_what_it_needs(monkeypatch, capsys):
    from linrec.tools import bench, bench_cli

    monkeypatch.setattr(bench, "benchmarks_dir", lambda: None)
    assert bench_cli.main(["scan", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and "pip install" in err and "Traceback" not in err


@pytest.mark.parametrize("message, word, found", [
    ("method='auto' cannot serve this input", "a", False),
    ("a and b must share (B, T)", "a", True),
    ("log_a must be finite", "a", False),
    ("log_a must be finite", "log_a", True),
    ("unknown method 'fastest'; valid: ('auto', 'sequential')", "sequential", True),
    ("initial_state must be (B, *S)", "initial_state", True),
    ("a bfloat16 b", "b", True),
])
def test_argument_names_match_whole_words(message, word, found):
    from linrec.conformance.scan_errors import _has_word

    assert _has_word(message, word) is found


def test_error_cases_claim_the_methods_they_call():
    from linrec.conformance import scan_errors

    claims = {c.id.rsplit("/", 1)[1]: (c.methods, c.log_methods) for c in scan_errors.cases(None)}
    assert claims["chunk-size"] == (("chunked",), ())
    assert claims["log-negative-b"] == (("log",), ())
    assert claims["log-scan-heinsen-resets"] == ((), ("heinsen",))
    assert claims["unknown-method"] == ((), ())  # 'fastest' is not a spec method: every backend must refuse it
    assert claims["b-too-few-axes"] == ((), ())


def test_help_lists_thorough_budget():
    result = subprocess.run([sys.executable, "-m", "linrec", "conformance", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "100,000 examples per backend" in " ".join(result.stdout.split())

