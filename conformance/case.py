"""What a conformance case is, and what running one produces.

A *backend* is any module exposing the spec's functions by name (``linear_scan``, ``log_scan``,
``linear_scan_vjp``, layer classes, ...) plus three array adapters: ``asarray(np.ndarray)``,
``to_numpy(x)`` and ``dtype_name(x)``. A case names the attributes it needs in ``requires``; a
backend without them reports the case as ``unsupported``.

A backend may also expose ``precision_scope(dtypes)``: a context manager under which it can hold every dtype
named in ``dtypes`` (the JAX backend enters ``jax.enable_x64(True)`` there for float64/complex128). The runner
enters it around each case with the case's dtypes (:func:`linrec.conformance.runner.case_dtypes`), so no case
changes a framework's global settings and cases without a 64-bit dtype run in the framework's defaults.
backend without them reports the case as ``unsupported``. A case that exercises a particular method
names it in ``methods`` (``log_methods`` for ``log_scan``): it is collected only for a backend whose
``METHODS`` (``LOG_METHODS``) claims it, so a backend is held to what the spec requires of every
backend plus what it says it implements.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

__all__ = ["Case", "CaseFailure", "Outcome", "log_method_of"]


@dataclass(frozen=True)
class Outcome:
    """The measured result of one case: ``passed`` iff ``error <= allowed`` (or an exact check held)."""

    passed: bool
    error: float = 0.0
    allowed: float = 0.0
    detail: str = ""


class CaseFailure(AssertionError):
    """Raised inside a case to fail it with an explanation (e.g. a missing error)."""


@dataclass(frozen=True)
class Case:
    """One named check of one property on one backend.

    ``id`` is unique and stable (used by xfail manifests), e.g. ``scan/named/decay-half[associative]``;
    ``property`` is the law being checked (``equals-reference``, ``split-invariance``, ...);
    ``doc`` says in one sentence what is checked, so the case list reads as documentation.
    ``dtypes`` names the dtypes the case gives the backend when its id does not (ids such as
    ``...[chunked,float32]`` name them); a case naming none, and an error case, is taken to use every dtype.
    ``doc`` says in one sentence what is checked, so the case list reads as documentation;
    ``requires`` are the backend attributes it calls; ``methods`` / ``log_methods`` the values of
    ``method=`` it passes that are not ``"auto"`` (claimed by the backend's ``METHODS`` / ``LOG_METHODS``);
    ``tags`` mark kinds of case (``"hypothesis"``: a property case whose examples are counted).
    """

    id: str
    property: str
    doc: str
    fn: Callable[[ModuleType], Outcome] = field(repr=False, compare=False)
    requires: tuple[str, ...] = ("linear_scan",)
    tags: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    log_methods: tuple[str, ...] = ()


_LOG_IN_ID = re.compile(r"(^|[-/\[])log([-\],\[]|$)")


def log_method_of(case_id: str) -> tuple[str, ...]:
    """``("log",)`` for a layer or model case whose id says it passes ``method="log"`` (``[log,float32]``,
    ``bad-input/lengths-with-log``, ``bad-input/log-zero-state``), else ``()``: the ``methods`` of such a case,
    so a backend that does not claim ``log`` is not held to its log-space refusals."""
    return ("log",) if _LOG_IN_ID.search(case_id) else ()
