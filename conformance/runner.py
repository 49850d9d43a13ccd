"""Run the conformance cases on one or more backends, honouring each backend's xfail manifest.

A backend is a module path (``linrec.backends.jax``, ``my_pkg.my_backend``) or a bundled name. Its
xfail manifest is ``{"<case id or fnmatch pattern>": "<reason>"}``: for bundled backends the file
``conformance/xfails/<name>.json``; for your own backend pass ``xfails=`` (or ``--xfails FILE``).

Each case runs inside the backend's optional ``precision_scope(dtypes)`` hook (see ``case.py``), entered with the
case's dtypes and left when the case ends: the JAX backend turns 64-bit mode on only for cases with
float64/complex128, so the others run in JAX's default configuration, and nothing stays changed after a run.
A case is collected only when the backend claims what it asks for (``Case.methods`` in ``METHODS``,
``Case.log_methods`` in ``LOG_METHODS``); a case whose functions the backend lacks is ``unsupported``.
A bundled backend whose framework is not installed is skipped when the backends were not named explicitly.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import import_module, resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

import linrec
from linrec.conformance import scan_properties
from linrec.conformance.case import Case, Outcome
from linrec.conformance.journal import Journal, fingerprint
from linrec.spec.checks import SUPPORTED_DTYPES

__all__ = [
    "CASE_MODULES",
    "THOROUGH_EXAMPLES",
    "BackendReport",
    "CaseResult",
    "applicable",
    "case_dtypes",
    "collect",
    "environment",
    "hypothesis_storage",
    "load_xfails",
    "run",
    "run_backend",
]

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

#: Hypothesis examples per backend under ``--thorough``, spread evenly over its property cases
THOROUGH_EXAMPLES = 100_000


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
    """The results of one backend. ``skipped`` says why it did not run (its framework is not installed);
    ``hypothesis`` holds the profile and the number of examples its property cases ran."""

    backend: str
    module: str
    results: list[CaseResult] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    import_error: str = ""
    skipped: str = ""
    hypothesis: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Skipped, or ran at least one case and none has a bad status (a run of no case is not a pass)."""
        if self.skipped:
            return True
        return not self.import_error and bool(self.results) and all(r.status not in BAD_STATUSES
                                                                     for r in self.results)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_json(self) -> dict:
        return {"backend": self.backend, "module": self.module, "ok": self.ok, "skipped": self.skipped,
                "counts": self.counts(), "info": self.info, "hypothesis": self.hypothesis,
                "import_error": self.import_error, "results": [asdict(r) for r in self.results]}


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def environment() -> dict:
    """What a report must record to be reproduced: versions and platform (each backend records its profile)."""
    return {
        "linrec": linrec.__version__,
        "spec": linrec.SPEC_VERSION,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": {d: _version(d) for d in ("numpy", "ml_dtypes", "hypothesis", "jax", "jaxlib", "flax", "torch")},
    }


@contextlib.contextmanager
def hypothesis_storage(directory: Path | None = None) -> Iterator[Path]:
    """Point Hypothesis' storage (its constants cache; the cases keep no example database) at a user cache
    directory instead of ``./.hypothesis`` in whatever directory the user runs from.

    Default: ``$HYPOTHESIS_STORAGE_DIRECTORY`` if set, else ``$LINREC_CACHE/hypothesis``
    (``~/.cache/linrec/hypothesis``). The previous setting is restored afterwards.
    """
    from hypothesis import configuration

    if directory is None:
        if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
            directory = Path(os.environ["HYPOTHESIS_STORAGE_DIRECTORY"])
        elif os.environ.get("LINREC_CACHE"):
            directory = Path(os.environ["LINREC_CACHE"]).expanduser() / "hypothesis"
        else:
            xdg = os.environ.get("XDG_CACHE_HOME")
            directory = (Path(xdg) if xdg else Path.home() / ".cache") / "linrec" / "hypothesis"
    # Hypothesis keeps the setting in a module global with no getter; None restores its default lookup
    previous = vars(configuration).get("__hypothesis_home_directory")
    configuration.set_hypothesis_home_dir(directory)
    try:
        yield directory
    finally:
        configuration.set_hypothesis_home_dir(previous)


def load_xfails(name: str) -> dict[str, str]:
    """The bundled xfail manifest of backend ``name`` (empty when there is none)."""
    path = resources.files("linrec.conformance") / "xfails" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _matches(case_id: str, pattern: str) -> bool:
    """An exact case id (whose ``[method]`` fnmatch would read as a character class) or an fnmatch pattern."""
    return pattern == case_id or fnmatch.fnmatchcase(case_id, pattern)


def _xfail_reason(case_id: str, xfails: dict[str, str]) -> str | None:
    for pattern, reason in xfails.items():
        if _matches(case_id, pattern):
            return reason
    return None


def applicable(case: Case, backend: ModuleType) -> bool:
    """Whether the backend claims every method the case exercises (``METHODS``, ``LOG_METHODS``)."""
    methods, log_methods = getattr(backend, "METHODS", ()), getattr(backend, "LOG_METHODS", ())
    return all(m in methods for m in case.methods) and all(m in log_methods for m in case.log_methods)


def collect(backend: ModuleType, modules: Sequence[str] = CASE_MODULES) -> list[Case]:
    """Every case of ``modules`` that applies to the backend (see :func:`applicable`), in module order."""
    cases: list[Case] = []
    for name in modules:
        cases.extend(c for c in import_module(name).cases(backend) if applicable(c, backend))
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


def _framework_missing(name: str) -> str:
    """Why a bundled backend cannot run here (its framework is not installed), or ``""``."""
    if name in linrec.BUNDLED_BACKENDS and name != "numpy" and importlib.util.find_spec(name) is None:
        return f"{name} is not installed (pip install 'linrec[{name}]')"
    return ""


def _set_examples(every: Sequence[Case], cases: Sequence[Case]) -> dict:
    """Under the thorough profile, spread ``THOROUGH_EXAMPLES`` over the backend's property cases: all of them
    (``every``), not only those ``--select`` picks (``cases``), so a record built in parts by several ``--select``
    runs that share one journal has the whole run's count per case. Return the settings."""
    properties = sum("hypothesis" in c.tags for c in cases)
    name = scan_properties.profile()[0]
    if name == "thorough" and properties:
        spread = sum("hypothesis" in c.tags for c in every)
        scan_properties.set_profile(name, math.ceil(THOROUGH_EXAMPLES / spread))
    name, per_case, shrink = scan_properties.profile()
    return {"profile": name, "examples_per_case": per_case, "shrink": shrink, "property_cases": properties}


def run_backend(
    name: str,
    *,
    xfails: dict[str, str] | None = None,
    select: str | None = None,
    modules: Sequence[str] = CASE_MODULES,
    progress: Callable[[str, int, int, CaseResult], None] | None = None,
    skip_missing: bool = False,
    exclude: Sequence[str] = (),
    journal: Journal | None = None,
) -> BackendReport:
    """Run every case (or those whose id matches the fnmatch pattern ``select``) on one backend.

    ``exclude``: fnmatch patterns of case ids left out (the test suite runs the interpreted accelerator kernels'
    cases in its slow tier this way).

    ``skip_missing``: a bundled backend whose framework is not installed is reported as skipped rather than
    as unavailable (a failure).

    ``journal``: resume from it (its finished cases are reported as recorded, not run again) and append each case
    that finishes here (see :mod:`linrec.conformance.journal`).
    """
    module_name = f"linrec.backends.{name}" if name in linrec.BUNDLED_BACKENDS else name
    report = BackendReport(backend=name, module=module_name)
    missing = _framework_missing(name)
    if missing and skip_missing:
        report.skipped = missing
        return report
    try:
        backend = linrec.get_backend(name)
    except ImportError as err:
        report.import_error = str(err)
        if isinstance(err, ModuleNotFoundError) and err.name == name and "." not in name:
            report.import_error += (" — the module is looked up on sys.path: run from the directory that holds it, "
                                    "or set PYTHONPATH")
        return report
    report.info = _backend_info(backend)
    if xfails is None:
        # a module may carry its own manifest (the peers' adapters, linrec.conformance.adapters, do)
        xfails = load_xfails(name) if name in linrec.BUNDLED_BACKENDS else dict(getattr(backend, "XFAILS", {}))
    every = collect(backend, modules)
    cases = [c for c in every if (select is None or _matches(c.id, select))
             and not any(_matches(c.id, pattern) for pattern in exclude)]
    report.hypothesis = _set_examples(every, cases)
    before, resumed = scan_properties.examples_run(), {"cases": 0, "examples": 0}
    try:
        expected = fingerprint(backend, report.hypothesis, xfails) if journal is not None else {}
        finished = journal.finished(name, expected) if journal is not None else {}
        for i, case in enumerate(cases):
            if case.id in finished:
                result = CaseResult(**finished[case.id]["result"])
                resumed["cases"] += 1
                resumed["examples"] += finished[case.id]["examples"]
            else:
                start = scan_properties.examples_run()
                result = _run_case(backend, case, xfails)
                if journal is not None:
                    journal.record(name, expected, result, scan_properties.examples_run() - start)
            report.results.append(result)
            if progress is not None:
                progress(name, i + 1, len(cases), result)
    finally:
        report.hypothesis["examples"] = scan_properties.examples_run() - before + resumed["examples"]
        if journal is not None:
            report.hypothesis["resumed"] = resumed
        scan_properties.set_profile(scan_properties.profile()[0])  # drop this backend's per-case count
    return report


def run(
    backends: Iterable[str] | None = None,
    *,
    thorough: bool = False,
    xfails: dict[str, str] | None = None,
    select: str | None = None,
    progress: Callable[[str, int, int, CaseResult], None] | None = None,
    resume: str | os.PathLike | None = None,
) -> list[BackendReport]:
    """Run the suite on each backend; ``thorough`` switches Hypothesis to its deep profile.

    ``resume``: a journal file (:mod:`linrec.conformance.journal`): cases it records as finished for the same run
    are reported from it, and every case that finishes is appended, so an interrupted run can be continued.

    ``backends=None`` means every bundled backend, skipping those whose framework is not installed;
    a backend named explicitly must import, or its report fails.
    """
    skip_missing = backends is None
    names = list(linrec.BUNDLED_BACKENDS if backends is None else backends)
    scan_properties.set_profile("thorough" if thorough else "ci")
    try:
        with hypothesis_storage():
            journal = Journal(resume) if resume is not None else None
            return [run_backend(b, xfails=xfails, select=select, progress=progress, skip_missing=skip_missing,
                                journal=journal) for b in names]
    finally:
        scan_properties.set_profile("ci")
