"""The full conformance suite on every bundled backend (the same cases as ``linrec conformance``).

The numpy backend runs through ``run`` as the CLI does (report, JSON, Hypothesis counts); jax and torch run one
case module per test, so that pytest-xdist spreads the suite's longest part (JAX compiles every new shape) over
the workers.
"""

from __future__ import annotations

import importlib.util

import pytest

import linrec
from linrec.conformance import run, to_json, to_text
from linrec.conformance.runner import CASE_MODULES, run_backend


def test_numpy_conforms_through_the_cli_entry_point():
    (report,) = run(["numpy"])
    assert report.results, "no cases were collected"
    assert report.ok, to_text([report])
    assert '"ok": true' in to_json([report])
    # every property case ran its examples, each one counted
    h = report.hypothesis
    assert h["profile"] == "ci" and h["property_cases"] == sum(r.id.startswith("scan/property/")
                                                               for r in report.results) > 0
    assert h["examples"] == h["property_cases"] * h["examples_per_case"]


#: The accelerator kernels' methods, run in their interpreters on CPU: their cases (every group's) are the slow tier's
#: (``test_accelerator_kernels_conform``); ``linrec conformance`` runs them with the rest.
INTERPRETED = {"jax": "*pallas*", "torch": "*triton*"}


#: (backend, case module) groups in the slow tier, which `.ci/run` runs after the README's command (so every group
#: still runs in CI, and `linrec conformance` runs them all). JAX compiles each case's programs (about 0.12 s per
#: program with XLA:CPU): its layer, stack, LM and conversion groups take 25-75 s each on the 2-core reference
#: machine and put the README's command over its 8 minutes on a fresh machine (8:01 of pytest with the native
#: kernel's first build). The scan's groups stay in the main tier, as do the torch groups (a few seconds each); each
#: layer module keeps fast JAX tests of its own there (tests/test_gated_linear_rnn.py, test_mingru.py, ...).
SLOW_GROUPS = {("jax", f"linrec.conformance.{group}") for group in (
    "gated_linear_rnn_lm_cases", "mingru_lm_cases", "mingru_stack_cases", "gateloop_mh_cases", "minlstm_cases",
    "conversion_cases", "gated_linear_rnn_cases", "mingru_cases")}


@pytest.mark.parametrize("name,module", [
    pytest.param(name, module, id=f"{name}-{module.rsplit('.', 1)[-1]}",
                 marks=[pytest.mark.slow] if (name, module) in SLOW_GROUPS else [])
    for name in linrec.BUNDLED_BACKENDS if name != "numpy" for module in CASE_MODULES])
def test_backend_conforms(name, module):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    report = run_backend(name, modules=[module], exclude=[INTERPRETED[name]])
    assert report.results, f"no cases were collected from {module}"
    assert report.ok, to_text([report])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(INTERPRETED))
def test_accelerator_kernels_conform(name):
    """Every case of ``method="pallas"`` (jax) / ``method="triton"`` (torch), kernels in their interpreters."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    backend = linrec.get_backend(name)
    kernel = INTERPRETED[name].strip("*")
    if kernel not in backend.METHODS:
        pytest.skip(f"{name} has no method={kernel!r} here ({kernel} is not installed)")
    report = run_backend(name, select=INTERPRETED[name])
    assert len(report.results) > 20, f"only {len(report.results)} {kernel} cases were collected"
    assert report.ok, to_text([report])


def test_every_xfail_has_a_reason():
    from linrec.conformance import load_xfails

    for name in linrec.BUNDLED_BACKENDS:
        for pattern, reason in load_xfails(name).items():
            assert isinstance(reason, str) and len(reason) > 10, (name, pattern)
