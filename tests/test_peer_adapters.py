"""The peers' adapters (linrec.conformance.adapters): each peer held to the spec, skipped cleanly when absent."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest

from linrec.conformance import runner, scan_properties
from linrec.conformance.adapters import ADAPTERS, Unsupported, load_xfails

ACCEL = "linrec.conformance.adapters.accelerated_scan"
RG = "linrec.conformance.adapters.recurrentgemma"


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_accel = pytest.mark.skipif(not _has("accelerated_scan", "triton", "torch"),
                                 reason="accelerated-scan not installed (pip install 'linrec[peers]')")
needs_rg = pytest.mark.skipif(not _has("recurrentgemma", "jax"),
                              reason="recurrentgemma not installed (pip install --no-deps recurrentgemma)")


def _statuses(report: runner.BackendReport) -> dict[str, str]:
    return {r.id: r.status for r in report.results}


def test_package_imports_no_framework():
    code = ("import sys, linrec.conformance.adapters as a; "
            "print([m for m in ('jax', 'torch', 'flax', 'triton') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_manifests_are_bundled_and_give_reasons():
    for name in ("accelerated_scan", "recurrentgemma"):
        manifest = load_xfails(name)
        assert manifest, name
        assert all(reason.startswith(("unsupported:", "fails:")) for reason in manifest.values()), name
    assert load_xfails("no-such-adapter") == {}
    assert set(ADAPTERS) == {"accelerated_scan", "recurrentgemma", "fla"}


class _Declares:
    LACKS: ClassVar[dict] = {"m": {"reverse": "r", "resets": "s", "initial_state": "i", "empty": "e", "complex64": "c",
                   "complex128": "c"}}


def test_lacks_narrow_the_property_draws_only_for_the_declaring_method():
    assert scan_properties.lacks(_Declares, "other") == {}
    kw = scan_properties._narrowed({}, scan_properties.lacks(_Declares, "m"))
    assert kw["direction"] is False and kw["resets"] is False and kw["initial_state"] is False
    assert kw["min_length"] == 1 and "complex64" not in kw["dtypes"] and "float32" in kw["dtypes"]
    # a method lacking every dtype keeps its draws: the case runs and reports the refusal
    every = {d: "x" for d in scan_properties.DTYPES}
    assert "dtypes" not in scan_properties._narrowed({}, every)
    assert scan_properties._narrowed({"resets": False}, {}) == {"resets": False}


def test_fla_says_why_it_cannot_run_without_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the fla adapter runs")
    report = runner.run_backend("linrec.conformance.adapters.fla", select="scan/named/decay-half*")
    assert not report.ok
    assert "CUDA device" in report.import_error and "autotune" in report.import_error


@needs_accel
def test_accelerated_scan_refuses_what_it_lacks():
    adapter = pytest.importorskip(ACCEL)
    a = adapter.asarray(np.full((1, 3, 2), 0.5, np.float32))
    b = adapter.asarray(np.ones((1, 3, 2), np.float32))
    with pytest.raises(Unsupported, match="reverse"):
        adapter.linear_scan(a, b, reverse=True, method="scalar")
    with pytest.raises(Unsupported, match="initial_state"):
        adapter.linear_scan(a, b, initial_state=b[:, 0], method="ref")
    with pytest.raises(RuntimeError, match="nvcc"):
        adapter.linear_scan(a, b, method="warp")
    h, final = adapter.linear_scan(a, b, reverse=True, method="ref")  # the peer's own reverse
    np.testing.assert_allclose(adapter.to_numpy(h)[0, :, 0], [1.75, 1.5, 1.0])
    np.testing.assert_allclose(adapter.to_numpy(final)[0], [1.75, 1.75])


@needs_accel
def test_accelerated_scan_suite_named_cases():
    got, details, reports = {}, {}, []
    for name in ("decay-half", "reverse", "initial-state"):  # one interpreted Triton call in all (the rest refuse)
        report = runner.run_backend(ACCEL, select=f"scan/named/{name}[[]*,float32]",
                                    modules=("linrec.conformance.scan_named",))
        reports.append(report)
        got.update(_statuses(report))
        details.update({r.id: r.detail for r in report.results})
    assert all(r.ok for r in reports), [(r.id, r.status, r.detail) for rep in reports for r in rep.results
                                        if r.status in runner.BAD_STATUSES]
    assert got["scan/named/decay-half[scalar,float32]"] == runner.PASS  # the Triton kernel, interpreted
    assert got["scan/named/decay-half[ref,float32]"] == runner.PASS
    assert got["scan/named/reverse[ref,float32]"] == runner.PASS
    assert got["scan/named/reverse[scalar,float32]"] == runner.XFAIL
    assert got["scan/named/initial-state[scalar,float32]"] == runner.XFAIL
    assert details["scan/named/reverse[scalar,float32]"].startswith("Unsupported:")


@needs_rg
def test_recurrentgemma_suite_named_cases():
    report = runner.run_backend(RG, select="scan/named/*[[]linear_native,float32]",
                                modules=("linrec.conformance.scan_named",))
    got = _statuses(report)
    assert report.ok, [(r.id, r.status, r.detail) for r in report.results if r.status in runner.BAD_STATUSES]
    for name in ("decay-half", "initial-state", "reverse", "decay-one", "negative-decay"):
        assert got[f"scan/named/{name}[linear_native,float32]"] == runner.PASS, name
    assert got["scan/named/reset[linear_native,float32]"] == runner.XFAIL


def test_matrix_script_classifies_and_renders():
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import peers
    finally:
        sys.path.pop(0)
    rep = runner.BackendReport(backend="x", module="x", info={"methods": ["m"], "peer": "p"})
    rep.results = [
        runner.CaseResult("scan/named/reverse[m,float32]", "named-example", runner.XFAIL, 0, 0,
                          "Unsupported: p method='m' does not offer reverse", 0.0, "unsupported: no reverse"),
        runner.CaseResult("scan/named/decay-half[m,float32]", "named-example", runner.PASS, 0, 1, "", 0.0),
        runner.CaseResult("scan/property/equals-reference[m]", "equals-reference", runner.XFAIL, 1, 0,
                          "h: max error 1 > allowed 0", 0.0, "fails: x"),
    ]
    assert peers.matrix(rep) == {"m": {"named-example": "unsupported", "equals-reference": "fails"}}
    assert peers.named_matrix(rep) == {"m": {"reverse": "unsupported", "decay-half": "pass"}}
    page = peers.render({"x": rep, "fla": "ImportError: needs CUDA"}, "scan/*")
    assert "| p:m |" in page and "**fla**: ImportError: needs CUDA" in page
