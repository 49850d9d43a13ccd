"""Scaffolding the layer and model case modules share: how a pass is run, backend plumbing, error and gradient checks.

The case modules (``mingru_cases``, ``gated_linear_rnn_cases``, ``gateloop_mh_cases``, the LMs, the stack) each
define their own problems and properties; what they would otherwise each repeat lives here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType

import numpy as np

from linrec.conformance.case import CaseFailure, Outcome

__all__ = [
    "COMPLEX_STEP",
    "Path",
    "assert_raises",
    "backend_params",
    "backend_vjp",
    "case_seed",
    "complex_step_grads",
    "directional_derivative_outcome",
    "expect_error",
    "scan_and_step_paths",
]

#: The complex-step size: ``f'(x) = Im f(x + i h) / h`` has no cancellation, so ``h`` can be this small.
COMPLEX_STEP = 1e-20


@dataclass(frozen=True)
class Path:
    """How the backend computes a full pass: ``mode``, the scan ``method`` and (chunked) ``chunk_size``;
    ``label`` names the path in case ids."""

    label: str
    mode: str
    method: str = "auto"
    chunk_size: int | None = None


def scan_and_step_paths(backend: ModuleType) -> list[tuple[str, str, str]]:
    """``(label, mode, method)`` for every path the backend offers: each scan method, and the step loop."""
    methods = ("auto", *getattr(backend, "METHODS", ()))
    return [(m, "parallel", m) for m in methods] + [("mode=sequential", "sequential", "auto")]


def case_seed(*parts: object) -> int:
    """A stable seed from a case's name parts, so a case draws the same inputs in every run and backend."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def backend_params(backend: ModuleType, params: dict[str, np.ndarray]) -> dict:
    return {k: backend.asarray(v) for k, v in params.items()}


def backend_vjp(backend: ModuleType) -> Callable:
    """The backend's ``vjp``, or its package's ``autodiff.vjp`` until the package re-exports it."""
    vjp = getattr(backend, "vjp", None)
    return vjp if vjp is not None else import_module(f"linrec.backends.{backend.NAME}.autodiff").vjp


def expect_error(fn: Callable[[], object], error: type[Exception], mention: str) -> Outcome:
    """Pass iff ``fn()`` raises ``error`` whose message names ``mention`` (any case); anything else is a failed
    Outcome (a wrong exception type is a failure of the backend, not an error of the suite)."""
    try:
        fn()
    except error as err:
        if mention.lower() not in str(err).lower():
            return Outcome(False, detail=f"{error.__name__} raised but its message does not name {mention!r}: {err}")
        return Outcome(True, detail=f"{error.__name__}: {err}")
    except Exception as err:
        return Outcome(False, detail=f"expected {error.__name__} naming {mention!r}, got {type(err).__name__}: {err}")
    return Outcome(False, detail=f"expected {error.__name__} naming {mention!r}; nothing was raised")


def assert_raises(exc: type[Exception], needle: str, fn: Callable[[], object]) -> Outcome:
    """Pass iff ``fn()`` raises ``exc`` whose message contains ``needle``; else raise :class:`CaseFailure`, and let
    another exception through (the minGRU-family cases report these as errors of the case)."""
    try:
        fn()
    except exc as err:
        if needle not in str(err):
            raise CaseFailure(f"{exc.__name__} raised but does not mention {needle!r}: {err}") from err
        return Outcome(True, detail=f"{exc.__name__}: {err}")
    raise CaseFailure(f"expected {exc.__name__} mentioning {needle!r}, nothing was raised")


def complex_step_grads(loss: Callable[[list[np.ndarray]], complex], base: list[np.ndarray]) -> list[np.ndarray]:
    """``d loss / d base[j]`` for every array ``j``, entry by entry by complex step (``loss`` real-analytic)."""
    grads = []
    for j, a in enumerate(base):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            bumped = a.astype(np.complex128)
            bumped[idx] += 1j * COMPLEX_STEP
            g[idx] = loss([*base[:j], bumped, *base[j + 1 :]]).imag / COMPLEX_STEP
        grads.append(g)
    return grads


def directional_derivative_outcome(derivative: float, loss: Callable[[float], float]) -> Outcome:
    """Judge a VJP contracted with a direction (``derivative``) against the central difference of ``loss(eps)``,
    the float64 reference moved ``eps`` along that direction."""
    eps = 1e-5
    reference = (loss(eps) - loss(-eps)) / (2 * eps)
    err, allowed = abs(derivative - reference), 1e-6 * max(1.0, abs(reference))
    return Outcome(err <= allowed, err, allowed, f"directional derivative {derivative:.10g} vs central difference "
                                                 f"{reference:.10g}")
