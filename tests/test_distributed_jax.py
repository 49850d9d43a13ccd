"""Sequence parallelism on jax.sharding (recurrence.md §12): sharded == one device, on 8 CPU host devices.

The pytest process may already hold JAX with one device, so the checks run in one subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (``linrec.conformance.distributed_cases``): the default
tier runs the quick cases (a forward and a reverse scan with resets at chunk edges, outputs and gradients; the
errors; the (data, seq) LM training step), the slow tier every scan option, layer and language model.
"""

from __future__ import annotations

import pytest

pytest.importorskip("jax")

from linrec.conformance.distributed_cases import QUICK, jax_cases, run_jax, selected

DEVICES = 8


def _check(report, select) -> None:
    expected = {c.id for c in jax_cases() if selected(c.id, select)}
    assert not report.import_error, report.import_error
    assert {r.id for r in report.results} == expected
    bad = [f"{r.id}: {r.status} {r.error:.1e}/{r.allowed:.1e} {r.detail}" for r in report.results
           if r.status != "pass"]
    assert not bad, "\n".join(bad)


def test_quick_cases_on_8_devices():
    _check(run_jax(DEVICES, QUICK), QUICK)


@pytest.mark.slow
def test_every_case_on_8_devices():
    _check(run_jax(DEVICES, None), None)


@pytest.mark.slow
def test_scan_cases_on_4_devices():
    _check(run_jax(4, "scan/*"), "scan/*")


@pytest.mark.slow
def test_readme_example_runs_on_8_devices():
    import subprocess
    import sys
    from pathlib import Path

    from linrec.conformance.distributed_cases import _device_env

    script = Path(__file__).resolve().parent.parent / "examples" / "jax_sequence_parallel.py"
    proc = subprocess.run([sys.executable, str(script)], env=_device_env(DEVICES), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "one device" in proc.stdout
