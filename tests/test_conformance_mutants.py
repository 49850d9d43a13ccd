"""The suite must catch broken backends: each mutant breaks one law and must fail the case naming it."""

from __future__ import annotations

import types

import numpy as np
import pytest

from linrec.backends import numpy as good
from linrec.conformance import runner, to_text


def _mutant(name: str, **overrides) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr in good.__all__:
        setattr(module, attr, getattr(good, attr))
    for attr, value in overrides.items():
        setattr(module, attr, value)
    return module


def _drop_initial_state(a, b, *, initial_state=None, **kw):
    return good.linear_scan(a, b, **kw)


def _ignore_resets(a, b, *, resets=None, **kw):
    return good.linear_scan(a, b, **kw)


def _undecayed_carry(a, b, *, initial_state=None, **kw):
    """The bug of one original: h_t += h_{-1} at every step instead of decaying it."""
    h, final = good.linear_scan(a, b, **kw)
    if initial_state is None:
        return h, final
    return h + np.asarray(initial_state)[:, None], final + initial_state


def _ignore_reverse(a, b, *, reverse=False, **kw):
    return good.linear_scan(a, b, **kw)


def _mix_batch(a, b, **kw):
    h, final = good.linear_scan(a, b, **kw)
    return h + 1e-3 * h.mean(axis=0, keepdims=True), final + 1e-3 * final.mean(axis=0, keepdims=True)


def _no_initial_state_grad(*args, **kw):
    a_bar, b_bar, init_bar = good.linear_scan_vjp(*args, **kw)
    return a_bar, b_bar, np.zeros_like(init_bar)


def _log_returns_nan(a, b, *, method="auto", **kw):
    if method == "log":
        with np.errstate(all="ignore"):
            h = np.exp(np.log(np.asarray(b)))  # NaN for negative b instead of an error
        return h, h[:, -1]
    return good.linear_scan(a, b, method=method, **kw)


def _stale_final_state(a, b, **kw):
    h, final = good.linear_scan(a, b, **kw)
    return h, final * 0.5 if np.asarray(b).shape[1] > 1 else final


MUTANTS = [
    ("drop-initial-state", dict(linear_scan=_drop_initial_state), "scan/named/initial-state*", "named-example"),
    ("undecayed-carry", dict(linear_scan=_undecayed_carry), "scan/named/initial-state*", "named-example"),
    ("ignore-resets", dict(linear_scan=_ignore_resets), "scan/property/segments-equal-loop*", "segments-equal-loop"),
    ("ignore-resets-named", dict(linear_scan=_ignore_resets), "scan/named/reset[[]*", "named-example"),
    ("ignore-reverse", dict(linear_scan=_ignore_reverse), "scan/property/reverse-is-flip*", "reverse-is-flip"),
    ("mix-batch", dict(linear_scan=_mix_batch), "scan/property/batch-isolation*", "batch-isolation"),
    ("no-initial-state-grad", dict(linear_scan_vjp=_no_initial_state_grad), "scan/property/gradient*",
     "gradient-equals-reference"),
    ("log-nan", dict(linear_scan=_log_returns_nan), "scan/errors/log-negative-b", "clear-error"),
    ("stale-final-state", dict(linear_scan=_stale_final_state), "scan/property/split-invariance*",
     "split-invariance"),
]


@pytest.mark.parametrize(("name", "overrides", "select", "prop"), MUTANTS, ids=[m[0] for m in MUTANTS])
def test_mutant_fails_the_property(name, overrides, select, prop, monkeypatch):
    mutant = _mutant(f"mutant_{name}".replace("-", "_"), **overrides)
    monkeypatch.setattr(runner.linrec, "get_backend", lambda _name: mutant)
    report = runner.run_backend(f"mutant-{name}", select=select)
    assert report.results, f"no case matched {select}"
    failed = [r for r in report.results if r.status in ("fail", "error")]
    assert failed, to_text([report], verbose=True)
    assert all(r.property == prop for r in failed)
    assert not report.ok
    assert prop in to_text([report])


def test_good_backend_passes_the_same_selection(monkeypatch):
    for _, _, select, _ in MUTANTS:
        report = runner.run_backend("numpy", select=select)
        assert report.ok, to_text([report])


# --- the source-level mutation check (linrec.tools.mutants) -------------------------------------------------


def test_every_source_mutant_applies_once_where_it_says():
    """Each edit matches exactly once in its scope, so no mutant silently tests the unmutated code."""
    from linrec.tools import mutants

    names = [m.name for m in mutants.MUTANTS]
    assert len(names) == len(set(names))
    for m in mutants.MUTANTS:
        source = (mutants.ROOT / m.file).read_text()
        mutated = mutants.apply(m, source)
        assert mutated != source and len(mutated) - len(source) == len(m.new) - len(m.old), m.name
    assert set(mutants.EXPECTED_SURVIVORS) <= set(names)


def test_a_stale_mutant_is_refused_not_run():
    from linrec.tools import mutants

    stale = mutants.Mutant("stale", "spec/reference.py", "linear_scan", "no such code", "x", "operator")
    with pytest.raises(ValueError, match="occurs 0 times in linear_scan"):
        mutants.apply(stale, (mutants.ROOT / stale.file).read_text())
    assert mutants.run_mutant(stale).status == "invalid"


@pytest.mark.parametrize(("name", "select", "killer"), [
    ("ref-drop-b", "scan/property/equals-reference*", "scan/property/equals-reference[sequential]"),
    ("np-seq-shift-b", "scan/named/decay-zero*", "scan/named/decay-zero[sequential,float32]"),
    ("ref-combine-swap", "scan/mutant/*", "scan/mutant/combine-fold-equals-scan[sequential]"),
])
def test_source_mutants_are_killed(name, select, killer):
    """Three mutants end to end: the edited module replaces the original in a fresh interpreter."""
    from linrec.tools import mutants

    mutant = next(m for m in mutants.MUTANTS if m.name == name)
    result = mutants.run_mutant(mutant, runs=[("numpy", select)], timeout=300)
    assert result.status == "killed", result.detail
    assert any(f.startswith(f"numpy:{killer} (fail") for f in result.failed), result.failed


@pytest.mark.slow
def test_kernel_mutant_is_killed():
    """The C++ path: the edited kernel is compiled into a temporary cache and must fail a named example."""
    from linrec.backends import native
    from linrec.tools import mutants

    if not native.available():
        pytest.skip(f"native kernel not built: {native.build_error()}")
    mutant = next(m for m in mutants.MUTANTS if m.name == "cc-fwd-minus-b")
    result = mutants.run_mutant(mutant, runs=[("numpy", "scan/named/decay-half*")], timeout=900)
    assert result.status == "killed", result.detail
    assert any(f.startswith("numpy:scan/named/decay-half[native,") for f in result.failed), result.failed
