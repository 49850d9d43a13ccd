"""Shared test configuration: JAX's 64-bit mode, entered per test and never left on.

linrec changes no framework setting (recurrence.md §5), so a test that gives the JAX backend float64 or complex128
runs inside ``jax.enable_x64(True)`` (thread-local, restored when the test ends). A test runs there when

- it is marked ``@pytest.mark.x64``, or
- its parameters name float64/complex128 (``test_scan[float64-chunked]``), or
- its parameters name no dtype and its module is in :data:`X64_MODULES` (modules whose unparametrised tests use
  float64 with JAX throughout).

Every other test, e.g. one parametrised with float32 only, runs in JAX's default 32-bit configuration — the one a
user has — so a float32 path that silently depends on 64-bit mode fails here.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

# Triton reads TRITON_INTERPRET once, when triton.language is first imported (torch._dynamo may import it before any
# kernel is defined). The kernels under test (linrec's and the peers' in linrec.conformance.adapters) run on CPU
# tensors only in the interpreter, so it is set before any test can import triton; an explicit value is kept.
os.environ.setdefault("TRITON_INTERPRET", "1")

#: Modules (file names) whose tests give JAX float64 without naming it in their parameters.
X64_MODULES = frozenset({
    "test_backend_jax.py",
    "test_dense.py",
    "test_gated_linear_rnn.py",
    "test_gated_linear_rnn_lm.py",
    "test_gateloop_mh.py",
    "test_mingru.py",
    "test_mingru_lm.py",
    "test_mingru_stack.py",
    "test_minlstm.py",
    "test_native.py",
    "test_originals.py",
    "test_convert.py",
})
WIDE = frozenset({"float64", "complex128"})
NARROW = frozenset({"float32", "complex64", "bfloat16", "float16"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "x64: run the test inside jax.enable_x64(True) (see tests/conftest.py)")


def _dtype_names(value: object) -> set[str]:
    """The dtype names a parameter value carries: a name, a NumPy dtype or scalar type, or a tuple of them."""
    if isinstance(value, (tuple, list)):
        return set().union(*(_dtype_names(v) for v in value)) if value else set()
    if isinstance(value, str):
        return {value} & (WIDE | NARROW)
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {np.dtype(value).name} & (WIDE | NARROW)
    return set()


def _needs_x64(item: pytest.Item) -> bool:
    if item.get_closest_marker("x64") is not None:
        return True
    callspec = getattr(item, "callspec", None)
    named: set[str] = set()
    if callspec is not None:
        for value in callspec.params.values():
            named |= _dtype_names(value)
        named |= {part for part in callspec.id.split("-") if part in WIDE | NARROW}
    if named:
        return bool(named & WIDE)
    return item.path.name in X64_MODULES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_x64(item) and item.get_closest_marker("x64") is None:
            item.add_marker(pytest.mark.x64)


@pytest.fixture(autouse=True)
def _jax_x64_scope(request: pytest.FixtureRequest):
    """Enter ``jax.enable_x64(True)`` around an ``x64`` test; JAX is not imported for any other test (nor where it
    is not installed: the test's other frameworks still run)."""
    jax = None
    if request.node.get_closest_marker("x64") is not None:
        try:
            import jax
        except ImportError:
            pass
    if jax is None:
        yield
        return
    with jax.enable_x64(True):
        yield
