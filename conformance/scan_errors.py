"""Bad input must raise a clear error naming the argument (recurrence.md §11), never return garbage.

A case that passes ``method=`` one of the spec's method names asks only backends that claim that method
(``METHODS`` / ``LOG_METHODS``); the claim is read off the call itself (:func:`_claims`). The words a message
must contain are matched as whole words: ``"a"`` is not found in ``"auto"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType

import numpy as np

from linrec.conformance.case import Case, Outcome

__all__ = ["cases"]

_F32 = np.float32


def _ones(*shape, dtype=_F32):
    return np.ones(shape, dtype)


# (name, doc, expected exception, words the message must contain, call)
_BAD: list[tuple[str, str, type[Exception], tuple[str, ...], Callable[[ModuleType], object]]] = [
    ("unknown-method", "method='fastest' is not a method: ValueError listing the valid ones.",
     ValueError, ("method", "sequential"),
     lambda be: be.linear_scan(be.asarray(_ones(1, 3, 2)), be.asarray(_ones(1, 3, 2)), method="fastest")),
    ("b-too-few-axes", "b must be (B, T, *S): a 1-D b is a ValueError naming b.",
     ValueError, ("b",), lambda be: be.linear_scan(be.asarray(_ones(3)), be.asarray(_ones(3)))),
    ("time-mismatch", "a and b must share (B, T).",
     ValueError, ("a", "b"), lambda be: be.linear_scan(be.asarray(_ones(1, 4, 2)), be.asarray(_ones(1, 3, 2)))),
    ("a-not-broadcastable", "a's state axes must equal b's or be 1.",
     ValueError, ("a",), lambda be: be.linear_scan(be.asarray(_ones(1, 3, 3)), be.asarray(_ones(1, 3, 2)))),
    ("initial-state-shape", "initial_state must be (B, *S).",
     ValueError, ("initial_state",),
     lambda be: be.linear_scan(be.asarray(_ones(2, 3, 2)), be.asarray(_ones(2, 3, 2)),
                               initial_state=be.asarray(_ones(1, 2)))),
    ("resets-shape", "resets must be (B, T).",
     ValueError, ("resets",),
     lambda be: be.linear_scan(be.asarray(_ones(2, 3, 2)), be.asarray(_ones(2, 3, 2)),
                               resets=be.asarray(np.zeros((2, 4), bool)))),
    ("resets-dtype", "resets must be boolean.",
     TypeError, ("resets",),
     lambda be: be.linear_scan(be.asarray(_ones(2, 3, 2)), be.asarray(_ones(2, 3, 2)),
                               resets=be.asarray(np.zeros((2, 3), np.float32)))),
    ("integer-input", "integer b is a TypeError naming the supported dtypes.",
     TypeError, ("b", "float32"),
     lambda be: be.linear_scan(be.asarray(_ones(1, 3, 2, dtype=np.int32)),
                               be.asarray(_ones(1, 3, 2, dtype=np.int32)))),
    ("mixed-precision", "a float64 with b float32 is a TypeError naming a.",
     TypeError, ("a",),
     lambda be: be.linear_scan(be.asarray(_ones(1, 3, 2, dtype=np.float64)), be.asarray(_ones(1, 3, 2)))),
    ("initial-state-dtype", "initial_state must have b's dtype.",
     TypeError, ("initial_state",),
     lambda be: be.linear_scan(be.asarray(_ones(1, 3, 2)), be.asarray(_ones(1, 3, 2)),
                               initial_state=be.asarray(_ones(1, 2, dtype=np.float64)))),
    ("chunk-size", "chunk_size must be a positive int.",
     ValueError, ("chunk_size",),
     lambda be: be.linear_scan(be.asarray(_ones(1, 3, 2)), be.asarray(_ones(1, 3, 2)), method="chunked",
                               chunk_size=0)),
    ("log-negative-b", "method='log' with a negative b: ValueError naming b and the methods that can.",
     ValueError, ("b", "sequential"),
     lambda be: be.linear_scan(be.asarray(_ones(1, 3, 2) * 0.5), be.asarray(-_ones(1, 3, 2)), method="log")),
    ("log-zero-a", "method='log' with a = 0 (log a = -inf): ValueError naming a.",
     ValueError, ("a",),
     lambda be: be.linear_scan(be.asarray(np.zeros((1, 3, 2), _F32)), be.asarray(_ones(1, 3, 2)), method="log")),
    ("log-negative-initial-state", "method='log' with initial_state <= 0: ValueError naming initial_state.",
     ValueError, ("initial_state",),
     lambda be: be.linear_scan(be.asarray(_ones(1, 3, 2) * 0.5), be.asarray(_ones(1, 3, 2)), method="log",
                               initial_state=be.asarray(-_ones(1, 2)))),
    ("log-complex", "method='log' with complex inputs: ValueError (the log domain is real).",
     ValueError, ("log",),
     lambda be: be.linear_scan(be.asarray(_ones(1, 3, 2, dtype=np.complex64) * 0.5),
                               be.asarray(_ones(1, 3, 2, dtype=np.complex64)), method="log")),
    ("log-resets", "method='log' with resets: ValueError naming resets (a cut is log 0 = -inf).",
     ValueError, ("resets",),
     lambda be: be.linear_scan(be.asarray(_ones(1, 3, 2) * 0.5), be.asarray(_ones(1, 3, 2)), method="log",
                               resets=be.asarray(np.array([[False, True, False]])))),
    ("reverse-not-bool", "reverse='no' is truthy: it must be a TypeError naming reverse, not a backward scan.",
     TypeError, ("reverse",),
     lambda be: be.linear_scan(be.asarray(_ones(1, 3, 2)), be.asarray(_ones(1, 3, 2)), reverse="no")),
    ("log-scan-reverse-not-bool", "log_scan(reverse=1): TypeError naming reverse.",
     TypeError, ("reverse",),
     lambda be: be.log_scan(be.asarray(np.zeros((1, 3, 2), _F32)), be.asarray(np.zeros((1, 3, 2), _F32)),
                            reverse=1)),
    ("log-inf-a", "method='log' with a = +inf (passes a > 0, but inf - inf = NaN inside): ValueError naming a.",
     ValueError, ("a", "finite"),
     lambda be: be.linear_scan(be.asarray(np.array([[[0.5], [np.inf], [0.5]]], _F32)), be.asarray(_ones(1, 3, 1)),
                               method="log")),
    ("log-scan-heinsen-resets", "log_scan(method='heinsen') with resets: ValueError naming 'sequential'.",
     ValueError, ("sequential",),
     lambda be: be.log_scan(be.asarray(np.zeros((1, 3, 2), _F32)), be.asarray(np.zeros((1, 3, 2), _F32)),
                            method="heinsen", resets=be.asarray(np.array([[False, True, False]])))),
    ("log-scan-nonfinite", "log_scan with log_b = -inf: ValueError naming log_b.",
     ValueError, ("log_b",),
     lambda be: be.log_scan(be.asarray(np.zeros((1, 3, 2), _F32)), be.asarray(np.full((1, 3, 2), -np.inf, _F32)))),
    ("log-scan-nan", "log_scan with NaN in log_a: ValueError naming log_a.",
     ValueError, ("log_a",),
     lambda be: be.log_scan(be.asarray(np.full((1, 3, 2), np.nan, _F32)), be.asarray(np.zeros((1, 3, 2), _F32)))),
    ("log-scan-complex", "log_scan with complex log_a: TypeError.",
     TypeError, ("log_a",),
     lambda be: be.log_scan(be.asarray(np.zeros((1, 3, 2), np.complex64)),
                            be.asarray(np.zeros((1, 3, 2), np.complex64)))),
    ("log-scan-unknown-method", "log_scan(method='associative') is not a log_scan method: ValueError listing them.",
     ValueError, ("heinsen",),
     lambda be: be.log_scan(be.asarray(np.zeros((1, 3, 2), _F32)), be.asarray(np.zeros((1, 3, 2), _F32)),
                            method="associative")),
]


#: the method names of recurrence.md §7 (linear_scan) and §8 (log_scan); any other name in a case is a wrong one
_SPEC_METHODS = ("sequential", "associative", "chunked", "log", "native")
_SPEC_LOG_METHODS = ("sequential", "heinsen")


class _Recorded(Exception):
    pass


class _Recorder:
    """A stand-in backend that records the ``method=`` of the scan call a case makes, and stops it there."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.log_methods: list[str] = []

    @staticmethod
    def asarray(x):
        return x

    def linear_scan(self, *args, method: str = "auto", **kwargs):
        self.methods.append(method)
        raise _Recorded

    def log_scan(self, *args, method: str = "auto", **kwargs):
        self.log_methods.append(method)
        raise _Recorded


def _claims(call: Callable[[ModuleType], object]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The spec methods (linear_scan, log_scan) a case's call passes: a backend must claim them to be asked."""
    recorder = _Recorder()
    try:
        call(recorder)  # type: ignore[arg-type]
    except _Recorded:
        pass
    return (tuple(m for m in recorder.methods if m in _SPEC_METHODS),
            tuple(m for m in recorder.log_methods if m in _SPEC_LOG_METHODS))


def _has_word(message: str, word: str) -> bool:
    """``word`` occurs in ``message`` as a whole word (not inside ``log_a``, ``auto`` or ``bf16``)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", message) is not None


def _expect_error(backend: ModuleType, exc: type[Exception], words: tuple[str, ...], call) -> Outcome:
    try:
        result = call(backend)
    except exc as err:
        message = str(err)
        missing = [w for w in words if not _has_word(message, w)]
        if missing:
            return Outcome(False, detail=f"{exc.__name__} raised but its message lacks {missing}: {message!r}")
        return Outcome(True, detail=f"{exc.__name__}: {message}")
    except Exception as err:
        return Outcome(False, detail=f"expected {exc.__name__}, got {type(err).__name__}: {err}")
    detail = "no error raised"
    try:
        arrays = result if isinstance(result, tuple) else (result,)
        if any(np.isnan(np.asarray(backend.to_numpy(x), np.complex128)).any() for x in arrays):
            detail = "no error raised; the result contains NaN"
    except Exception:
        pass
    return Outcome(False, detail=f"expected {exc.__name__}: {detail}")


def cases(backend: ModuleType) -> list[Case]:
    out = []
    for name, doc, exc, words, call in _BAD:
        requires = ("log_scan",) if name.startswith("log-scan") else ("linear_scan",)
        methods, log_methods = _claims(call)
        out.append(Case(
            id=f"scan/errors/{name}",
            property="clear-error",
            doc=doc,
            fn=lambda be, exc=exc, words=words, call=call: _expect_error(be, exc, words, call),
            requires=requires,
            methods=methods,
            log_methods=log_methods,
        ))
    return out
