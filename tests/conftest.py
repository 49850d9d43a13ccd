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


def _share_jax_compilations() -> None:
    """One JAX persistent compilation cache for the whole run: the xdist workers and the subprocesses tests start
    (``linrec conformance``, the benchmarks' workers) inherit it, so a program several tests compile (the same scan
    at the same shape) is compiled once. XLA:CPU compiles are most of the JAX tests' time (about 0.12 s each; one
    conformance group recompiled 29 of its 152 programs). Its share of the CI speed-up was not measured apart from
    the other changes of that commit (the machine's noise is larger). The cache is keyed by the program,
    the JAX version and the flags, so it changes no result. A fresh directory per run, removed at exit, unless
    ``JAX_COMPILATION_CACHE_DIR`` is set (a directory that persists makes reruns faster)."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        import atexit
        import shutil
        import tempfile

        directory = tempfile.mkdtemp(prefix="linrec-tests-jax-cache-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)  # only in the process that made it
        os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
    # every compile is worth keeping here, however small or quick (JAX's defaults skip those under 1 s)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


_share_jax_compilations()

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


#: The longest tests of either tier (node-id fragments, longest first; seconds under `.ci/run` on the 2-core
#: reference machine). :func:`_spread_longest` starts them first, spread over the workers: a long test that starts
#: last runs alone at the end while the other workers idle. A stale entry only costs that ordering.
LONGEST = (
    "test_docs_site.py::test_every_page_renders_offline",  # 78
    "[jax-gateloop_mh_cases]",  # 75
    "[jax-minlstm_cases]",  # 71
    "[jax-gated_linear_rnn_lm_cases]",  # 69
    "[jax-mingru_lm_cases]",  # 66
    "test_accelerator_kernels_conform[jax]",  # 58
    "test_every_case_on_8_devices",  # 54
    "[jax-scan_properties]",  # 51
    "test_kernel_mutant_is_killed",  # 50
    "[jax-mingru_stack_cases]",  # 48
    "[jax-mingru_cases]",  # 32
    "[jax-gated_linear_rnn_cases]",  # 31
    "[jax-scan_named]",  # 24
    "test_distributed_torch.py::test_sharded_equals_one_device",  # 18
    "test_docs_build.py::test_strict_build_writes_every_page",  # 15
    "[jax-scan_mutant_cases]",  # 15
    "test_bench.py::test_scan_table",  # 14
    "test_bench.py::test_layers_tables",  # 13
)


def _rank(item: pytest.Item) -> int | None:
    return next((i for i, fragment in enumerate(LONGEST) if fragment in item.nodeid), None)


def _spread_longest(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Reorder ``items`` (in place) for xdist's ``worksteal``: it gives each of the ``n`` workers one contiguous
    chunk (worker ``i`` of ``n`` gets ``len(rest) // (n - i)`` of the rest) and steals from a chunk's tail, so the
    head of each chunk is what that worker surely runs first. The tests of :data:`LONGEST` go to the heads, dealt
    round-robin, longest first. Every worker computes the same order (xdist requires identical collections)."""
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    long = sorted((item for item in items if _rank(item) is not None), key=_rank)
    rest = [item for item in items if _rank(item) is None]
    if not long or workers < 2:
        items[:] = long + rest
        return
    heads = [long[i::workers] for i in range(workers)]
    ordered, remaining = [], len(items)
    for i, head in enumerate(heads):
        size = remaining // (workers - i)
        fill = max(0, size - len(head))
        ordered += head + rest[:fill]
        rest = rest[fill:]
        remaining -= len(head) + fill
    items[:] = ordered + rest


@pytest.hookimpl(trylast=True)  # after `-m`/`-k` have deselected: the chunks are of what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_x64(item) and item.get_closest_marker("x64") is None:
            item.add_marker(pytest.mark.x64)
    _spread_longest(config, items)


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
