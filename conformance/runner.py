"""Run the conformance cases on one or more backends, honouring each backend's xfail manifest.

A backend is a module path (``linrec.backends.jax``, ``my_pkg.my_backend``) or a bundled name. Its
xfail manifest is ``{"<case id or fnmatch pattern>": "<reason>"}``: for bundled backends the file
``conformance/xfails/<name>.json``; for your own backend pass ``xfails=`` (or ``--xfails FILE``).

Each case runs inside the backend's optional ``precision_scope(dtypes)`` hook (see ``case.py``), entered with the
case's dtypes and left when the case ends: the JAX backend turns 64-bit mode on only for cases with
float64/complex128, so the others run in JAX's default configuration, and nothing stays changed after a run.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import import_module, resources
from types import ModuleType

import linrec
from linrec.conformance import scan_properties
from linrec.conformance.case import Case, Outcome
from linrec.spec.checks import SUPPORTED_DTYPES

__all__ = ["CASE_MODULES", "BackendReport", "CaseResult", "case_dtypes", "collect", "load_xfails", "run",
           "run_backend"]

#: Modules contributing ``cases(backend) -> list[Case]``; layer and model modules join this list.
CASE_MODULES: tuple[str, ...] = (
    "linrec.conformance.scan_named",
    "linrec.conformance.scan_errors",
    "linrec.conformance.golden_cases",
    "linrec.conformance.scan_properties",
    "linrec.conformance.scan_mutant_cases",
    "linrec.conformance.mingru_cases",
    "linrec.conformance.minlstm_cases",
    "linrec.conformance.gated_linear_rnn_cases",
    "linrec.conformance.gateloop_mh_cases",
    "linrec.conformance.gated_linear_rnn_lm_cases",
    "linrec.conformance.mingru_lm_cases",
    "linrec.conformance.mingru_stack_cases",
    "linrec.conformance.conversion_cases",
)

PASS, FAIL, XFAIL, XPASS, UNSUPPORTED, ERROR = "pass", "fail", "xfail", "xpass", "unsupported", "error"
#: statuses that make a run unsuccessful
BAD_STATUSES = (FAIL, XPASS, UNSUPPORTED, ERROR)


@dataclass
class CaseResult:
    id: str
    property: str
    status: str
    error: float
    allowed: float
    detail: str
    seconds: float
    reason: str = ""


@dataclass
class BackendReport:
    backend: str
    module: str
    results: list[CaseResult] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    import_error: str = ""

    @property
    def ok(self) -> bool:
        return not self.import_error and all(r.status not in BAD_STATUSES for r in self.results)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_json(self) -> dict:
        return {"backend": self.backend, "module": self.module, "ok": self.ok, "counts": self.counts(),
                "info": self.info, "import_error": self.import_error, "results": [asdict(r) for r in self.results]}


def load_xfails(name: str) -> dict[str, str]:
    """The bundled xfail manifest of backend ``name`` (empty when there is none)."""
    path = resources.files("linrec.conformance") / "xfails" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _xfail_reason(case_id: str, xfails: dict[str, str]) -> str | None:
    for pattern, reason in xfails.items():
        if pattern == case_id or fnmatch.fnmatchcase(case_id, pattern):
            return reason
    return None


def collect(backend: ModuleType, modules: Sequence[str] = CASE_MODULES) -> list[Case]:
    cases: list[Case] = []
    for name in modules:
        cases.extend(import_module(name).cases(backend))
    seen: set[str] = set()
    for c in cases:
        if c.id in seen:
            raise RuntimeError(f"duplicate case id {c.id!r}")
        seen.add(c.id)
    return cases


_ID_PARAMETERS = re.compile(r"\[([^\[\]]*)\]$")
#: Error cases hand the backend deliberately wrong dtypes (a float64 state for float32 ``x``, ...) beside the one
#: their id names, so they are taken to use every dtype.
_ERROR_PROPERTIES = ("bad-input", "clear-error")


def case_dtypes(case: Case) -> tuple[str, ...]:
    """The dtypes ``case`` gives the backend: ``case.dtypes``, else those its id's parameters name
    (``mingru/gradient/g-half[auto,float64]`` -> ``("float64",)``), else every dtype of the spec (unknown, drawn
    by Hypothesis, or an error case)."""
    if case.dtypes:
        return case.dtypes
    if case.property in _ERROR_PROPERTIES:
        return SUPPORTED_DTYPES
    match = _ID_PARAMETERS.search(case.id)
    named = tuple(p for p in match.group(1).split(",") if p in SUPPORTED_DTYPES) if match else ()
    return named or SUPPORTED_DTYPES


def _precision_scope(backend: ModuleType, case: Case) -> contextlib.AbstractContextManager:
    """The backend's ``precision_scope`` for this case's dtypes, or a no-op when it has none."""
    scope = getattr(backend, "precision_scope", None)
    return scope(case_dtypes(case)) if callable(scope) else contextlib.nullcontext()


def _run_case(backend: ModuleType, case: Case, xfails: dict[str, str]) -> CaseResult:
    reason = _xfail_reason(case.id, xfails)
    missing = [r for r in case.requires if not hasattr(backend, r)]
    start = time.perf_counter()
    if missing:
        outcome, status = Outcome(False, detail=f"backend has no {', '.join(missing)}"), UNSUPPORTED
    else:
        try:
            with _precision_scope(backend, case):
                outcome = case.fn(backend)
            status = PASS if outcome.passed else FAIL
        except Exception as err:
            outcome, status = Outcome(False, detail=f"{type(err).__name__}: {err}"), ERROR
    seconds = time.perf_counter() - start
    if reason is not None:
        status = XPASS if status == PASS else XFAIL
    return CaseResult(case.id, case.property, status, outcome.error, outcome.allowed, outcome.detail, seconds,
                      reason or "")


def _backend_info(backend: ModuleType) -> dict:
    info = {"methods": list(getattr(backend, "METHODS", ())), "log_methods": list(getattr(backend, "LOG_METHODS", ()))}
    describe = getattr(backend, "describe", None)
    if callable(describe):
        info.update(describe())
    return info


def run_backend(
    name: str,
    *,
    xfails: dict[str, str] | None = None,
    select: str | None = None,
    modules: Sequence[str] = CASE_MODULES,
    progress: Callable[[str, int, int, CaseResult], None] | None = None,
) -> BackendReport:
    """Run every case (or those whose id matches the fnmatch pattern ``select``) on one backend."""
    module_name = f"linrec.backends.{name}" if name in linrec.BUNDLED_BACKENDS else name
    report = BackendReport(backend=name, module=module_name)
    try:
        backend = linrec.get_backend(name)
    except ImportError as err:
        report.import_error = str(err)
        return report
    report.info = _backend_info(backend)
    if xfails is None:
        xfails = load_xfails(name) if name in linrec.BUNDLED_BACKENDS else {}
    cases = [c for c in collect(backend, modules) if select is None or fnmatch.fnmatchcase(c.id, select)]
    for i, case in enumerate(cases):
        result = _run_case(backend, case, xfails)
        report.results.append(result)
        if progress is not None:
            progress(name, i + 1, len(cases), result)
    return report


def run(
    backends: Iterable[str] = linrec.BUNDLED_BACKENDS,
    *,
    thorough: bool = False,
    xfails: dict[str, str] | None = None,
    select: str | None = None,
    progress: Callable[[str, int, int, CaseResult], None] | None = None,
) -> list[BackendReport]:
    """Run the suite on each backend; ``thorough`` switches Hypothesis to its deep profile."""
    scan_properties.set_profile("thorough" if thorough else "ci")
    try:
        return [run_backend(b, xfails=xfails, select=select, progress=progress) for b in backends]
    finally:
        scan_properties.set_profile("ci")
