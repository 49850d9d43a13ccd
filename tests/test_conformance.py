"""The full conformance suite on every bundled backend (the same run as ``linrec conformance``)."""

from __future__ import annotations

import importlib.util

import pytest

import linrec
from linrec.conformance import run, to_json, to_text


@pytest.mark.parametrize("name", linrec.BUNDLED_BACKENDS)
def test_backend_conforms(name):
    if name != "numpy" and importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    (report,) = run([name])
    assert report.results, "no cases were collected"
    assert report.ok, to_text([report])
    assert '"ok": true' in to_json([report])
    # every property case ran its examples, each one counted
    h = report.hypothesis
    assert h["profile"] == "ci" and h["property_cases"] == sum(r.id.startswith("scan/property/")
                                                               for r in report.results) > 0
    assert h["examples"] == h["property_cases"] * h["examples_per_case"]


def test_every_xfail_has_a_reason():
    from linrec.conformance import load_xfails

    for name in linrec.BUNDLED_BACKENDS:
        for pattern, reason in load_xfails(name).items():
            assert isinstance(reason, str) and len(reason) > 10, (name, pattern)
