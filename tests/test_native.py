"""The native CPU kernel (``linrec.backends.native``) and its JAX / PyTorch wrappers against the NumPy reference.

Skipped as a whole when the kernel cannot be built here (no C++ compiler): the other methods do not need it.
Results are compared with ``linrec.spec.reference`` run in float64/complex128 on the same, already rounded inputs,
with the tolerances of recurrence.md §9 (``linrec.spec.tolerances``; gradients use ``grad=True``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from functools import partial

import numpy as np
import pytest

from linrec.backends import native
from linrec.spec import reference
from linrec.spec.tolerances import max_violation, tolerance_for

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernel unavailable: {native.build_error()}")

# (state dtype, decay dtype): every pair the kernel supports.
DTYPE_PAIRS = [
    ("float32", "float32"),
    ("float64", "float64"),
    ("complex64", "complex64"),
    ("complex128", "complex128"),
    ("complex64", "float32"),
    ("complex128", "float64"),
]
STATE = (2, 3, 4)
# a full decay, per-row (trailing broadcast: no copy), scalar, and one that must be materialised (leading 1).
DECAY_SHAPES = [(2, 3, 4), (2, 3, 1), (1, 1, 1), (1, 3, 4)]


def _wide(dtype: str) -> np.dtype:
    return np.dtype(np.complex128 if dtype.startswith("complex") else np.float64)


def _random(rng: np.random.Generator, shape, dtype: str, low: float = -1.0) -> np.ndarray:
    x = rng.uniform(low, 1.0, shape)
    if dtype.startswith("complex"):
        x = x + 1j * rng.uniform(low, 1.0, shape)
    return x.astype(dtype)


def _inputs(seed: int, dtype: str, a_dtype: str, n_time: int, a_state=STATE, with_resets=True, batch=3):
    rng = np.random.default_rng(seed)
    a = _random(rng, (batch, n_time, *a_state), a_dtype, low=-0.2) * 0.95  # |a| < 1: a stable state
    b = _random(rng, (batch, n_time, *STATE), dtype)
    h0 = _random(rng, (batch, *STATE), dtype)
    resets = rng.random((batch, n_time)) < 0.25 if with_resets else None
    ct_h = _random(rng, (batch, n_time, *STATE), dtype)
    ct_f = _random(rng, (batch, *STATE), dtype)
    return a, b, h0, resets, ct_h, ct_f


def _assert_close(x, ref, dtype: str, *, grad: bool = False, what: str = "") -> None:
    x = np.asarray(x)
    assert x.shape == ref.shape, f"{what}: shape {x.shape} != {ref.shape}"
    err, allowed = max_violation(x, ref, tolerance_for(dtype, grad=grad))
    assert err <= allowed, f"{what}: max error {err:.3g} > allowed {allowed:.3g} ({dtype})"


def _reference(a, b, h0, resets, reverse, ct_h=None, ct_f=None):
    dt, adt = _wide(b.dtype.name), _wide(a.dtype.name)
    args = dict(initial_state=h0.astype(dt), reverse=reverse, resets=resets)
    h, f = reference.linear_scan(a.astype(adt), b.astype(dt), **args)
    if ct_h is None:
        return h, f
    return (h, f), reference.linear_scan_vjp(a.astype(adt), b.astype(dt), ct_h.astype(dt), ct_f.astype(dt), **args)


# ---------------------------------------------------------------------------------------------------------------------
# The kernel through its NumPy helpers (the C ABI the torch wrapper uses too).


@pytest.mark.parametrize(("dtype", "a_dtype"), DTYPE_PAIRS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("a_state", DECAY_SHAPES)
def test_numpy_kernel_and_vjp_match_reference(dtype, a_dtype, reverse, a_state):
    for n_time, with_resets in ((0, False), (1, True), (7, False), (7, True)):
        a, b, h0, resets, ct_h, ct_f = _inputs(n_time, dtype, a_dtype, n_time, a_state, with_resets)
        cut = reference.cut_mask(resets, reverse)
        h, f = native.linear_scan(a, b, h0, cut, reverse)
        assert h.dtype == b.dtype and f.dtype == b.dtype
        (h_ref, f_ref), (a_bar_ref, b_bar_ref, h0_bar_ref) = _reference(a, b, h0, resets, reverse, ct_h, ct_f)
        case = f"T={n_time} resets={with_resets}"
        _assert_close(h, h_ref, dtype, what=f"h {case}")
        _assert_close(f, f_ref, dtype, what=f"final {case}")
        a_bar, b_bar, h0_bar = native.linear_scan_vjp(a, h, h0, ct_h, ct_f, cut, reverse)
        assert a_bar.dtype == a.dtype and a_bar.shape == a.shape
        _assert_close(a_bar, a_bar_ref, a_dtype if a_dtype == dtype else dtype, grad=True, what=f"a_bar {case}")
        _assert_close(b_bar, b_bar_ref, dtype, grad=True, what=f"b_bar {case}")
        _assert_close(h0_bar, h0_bar_ref, dtype, grad=True, what=f"h0_bar {case}")


def _check_large_scan(a_state, n: int, t: int, state: tuple[int, ...], reverse: bool = False) -> None:
    """Forward and VJP of a float32 scan against the NumPy backend's float64 loop (vectorised over the batch)."""
    from linrec.backends.numpy import linear_scan as numpy_scan

    rng = np.random.default_rng(5)
    a_shape = tuple(s if k == s else 1 for k, s in zip(a_state, state))
    a = rng.uniform(0.5, 1.0, (n, t, *a_shape)).astype(np.float32)
    b = rng.standard_normal((n, t, *state)).astype(np.float32)
    h0 = rng.standard_normal((n, *state)).astype(np.float32)
    resets = rng.random((n, t)) < 0.05
    cut = reference.cut_mask(resets, reverse)
    h, f = native.linear_scan(a, b, h0, cut, reverse)
    h_ref, f_ref = numpy_scan(a.astype(np.float64), b.astype(np.float64), initial_state=h0.astype(np.float64),
                              resets=resets, reverse=reverse, method="sequential")
    _assert_close(h, h_ref, "float32", what="h")
    _assert_close(f, f_ref, "float32", what="final")
    ct = rng.standard_normal(h.shape).astype(np.float32)
    a_bar, b_bar, h0_bar = native.linear_scan_vjp(a, h, h0, ct, np.zeros_like(f), cut, reverse)
    # §10 in the scan's own step order: g is the reverse scan of ct whose decay is a shifted by one step (0 across
    # a cut). Flipping time turns reverse=True into the forward case.
    flip = (lambda x: x[:, ::-1]) if reverse else (lambda x: x)
    mask = flip(cut)[(...,) + (None,) * len(state)]
    a_cut = np.where(mask, 0, flip(a)).astype(np.float64)
    a_next = np.concatenate([a_cut[:, 1:], np.ones_like(a_cut[:, :1])], 1)
    g, _ = numpy_scan(a_next, flip(ct).astype(np.float64), reverse=True, method="sequential")
    h_prev = np.concatenate([h0[:, None], flip(h_ref)[:, :-1]], 1)
    axes = tuple(i for i in range(2, a.ndim) if a.shape[i] == 1)
    a_bar_ref = np.where(mask, 0, g * h_prev).sum(axis=axes, keepdims=True)
    _assert_close(flip(b_bar), g, "float32", grad=True, what="b_bar")
    _assert_close(flip(a_bar), a_bar_ref, "float32", grad=True, what="a_bar")
    _assert_close(h0_bar, a_cut[:, 0] * g[:, 0], "float32", grad=True, what="h0_bar")


@pytest.mark.parametrize("a_state", [(2, 3, 4), (2, 3, 1), (1, 1, 1)])
def test_multithreaded_blocks_match_reference(a_state):
    # Large enough (N*T*D >= 2**16) to take the threaded path with several blocks per row.
    _check_large_scan(a_state, 2, 96, (8, 16, 32))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("a_state", [(3, 331), (3, 1)])
def test_streamed_outputs_match_reference(a_state, reverse):
    # Outputs over 8 MiB take the streaming-store path (non-temporal stores, prefetch on walks down through memory);
    # a state width of 993 floats puts row blocks at addresses that are not 16-byte aligned.
    _check_large_scan(a_state, 2, 1100, (3, 331), reverse)


def test_unsupported_dtypes_and_sizes_raise():
    a = np.ones((1, 2, 3), np.float16)
    with pytest.raises(TypeError, match="unsupported dtypes"):
        native.scan_3d(a, a, np.ones((1, 3), np.float16))
    with pytest.raises(TypeError, match="unsupported dtypes"):  # complex decay of a real state
        native.scan_3d(np.ones((1, 2, 3), np.complex64), np.ones((1, 2, 3), np.float32), np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="sizes"):  # Da must divide D
        native.scan_3d(np.ones((1, 2, 2), np.float32), np.ones((1, 2, 3), np.float32), np.ones((1, 3), np.float32))


def test_decay_layout():
    assert native.decay_layout((2, 3, 4), (2, 3, 4)) == ((2, 3, 4), 24, 1)
    assert native.decay_layout((2, 3, 1), (2, 3, 4)) == ((2, 3, 1), 6, 4)
    assert native.decay_layout((1, 1, 1), (2, 3, 4)) == ((1, 1, 1), 1, 24)
    assert native.decay_layout((1, 3, 1), (2, 3, 4)) == ((2, 3, 1), 6, 4)  # materialised over the leading axis
    assert native.decay_layout((), ()) == ((), 1, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Build and packaging.


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_importing_native_loads_no_framework():
    result = _run("""
        import sys
        import linrec.backends.native as native
        assert native.describe()["built"], native.describe()
        loaded = sorted(m for m in ("jax", "jaxlib", "torch", "flax") if m in sys.modules)
        assert not loaded, loaded
    """)
    assert result.returncode == 0, result.stderr


def test_missing_compiler_is_a_clear_error(tmp_path):
    result = _run("""
        import linrec.backends.native as native
        assert not native.available()
        print(native.build_error())
        print(native.describe())
    """, CXX="", PATH="", LINREC_CACHE=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "no C++ compiler found" in result.stdout and "'built': False" in result.stdout


def test_describe_and_build_entry_point():
    info = native.describe()
    assert info["built"] and info["error"] is None and os.path.isfile(info["path"]) and info["threads"] >= 1
    result = subprocess.run([sys.executable, "-m", "linrec.backends.native.build"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == info["path"]


# What every process sees when the kernel cannot be had (recurrence.md §7, README "The native CPU kernel"): every
# backend imports, `linrec info` reports why, `auto` serves the input with another method, and explicit
# method="native" raises naming `sequential` and the reason.
_FALLBACK_CHECK = """
    import numpy as np
    from linrec.backends import native
    from linrec.tools.cli import main

    reason = native.build_error()
    assert reason and EXPECT in reason, reason
    # float32: a fresh process has JAX's default 32-bit configuration; these values are exact in it
    a, b = np.full((1, 5, 2), 0.5, np.float32), np.ones((1, 5, 2), np.float32)
    want = np.cumsum(0.5 ** np.arange(5))[None, :, None] * np.ones((1, 1, 2))
    for name in BACKENDS:
        import importlib

        backend = importlib.import_module("linrec.backends." + name)
        assert "native" not in backend.METHODS, (name, backend.METHODS)
        to = getattr(backend, "asarray", np.asarray)
        h, _ = backend.linear_scan(to(a), to(b))  # auto serves the input with another method
        np.testing.assert_array_equal(np.asarray(h), want.astype(np.float32))
        try:
            backend.linear_scan(to(a), to(b), method="native")
        except ValueError as err:
            assert "sequential" in str(err) and reason in str(err), err
        else:
            raise AssertionError(name + ": method='native' did not raise")
    print(native.describe())
    if INFO:
        assert main(["info"]) == 0
"""


def _foreign_library() -> str | None:
    """A real shared library that is not ours: the C math library this Python process has mapped."""
    try:
        maps = open("/proc/self/maps").read().split("\n")
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps if "/libm.so" in line or "/libm-" in line}
    return min(paths) if paths else None


def _plant(cache: str, content: bytes, stamp_matches: bool, monkeypatch) -> None:
    """Put ``content`` where the library for ``LINREC_CACHE=cache`` belongs, with the good library's stamp
    (``stamp_matches=False``: a truncated or overwritten file) or a stamp rewritten to vouch for ``content``."""
    import hashlib
    import json
    import shutil
    from pathlib import Path

    from linrec.backends.native import build

    good = native.describe()["path"]
    monkeypatch.setenv("LINREC_CACHE", cache)
    target = build.library_path()
    target.parent.mkdir(parents=True)
    shutil.copy(build.stamp_path(Path(good)), build.stamp_path(target))
    target.write_bytes(content)
    if stamp_matches:
        stamp = json.loads(build.stamp_path(target).read_text())
        stamp.update(size=len(content), sha256=hashlib.sha256(content).hexdigest())
        build.stamp_path(target).write_text(json.dumps(stamp))


def _unusable_cache(case: str, tmp_path, monkeypatch) -> tuple[str, str]:
    """``(LINREC_CACHE, what the error says)`` for a cache that cannot serve the kernel in the way ``case`` names."""
    cache = str(tmp_path / "cache")
    good = open(native.describe()["path"], "rb").read()
    if case == "truncated":  # a stamp for the real library, a file cut in half: refused before dlopen (SIGBUS)
        _plant(cache, good[: len(good) // 2], False, monkeypatch)
        return cache, "truncated or replaced"
    if case == "random-bytes":  # a stamp that vouches for garbage: dlopen itself fails
        _plant(cache, np.random.default_rng(0).bytes(4096), True, monkeypatch)
        return cache, "cannot load"
    if case == "foreign":  # a valid shared library that is not ours: no linrec symbols
        foreign = _foreign_library()
        if foreign is None:
            pytest.skip("no libm mapped in this process")
        _plant(cache, open(foreign, "rb").read(), True, monkeypatch)
        return cache, "not a linrec kernel library"
    if case == "unwritable":
        if os.geteuid() == 0:  # root writes through file modes; /sys refuses new entries even to root
            return "/sys/linrec-test-cache", "cannot write the native kernel cache"
        os.makedirs(cache)
        os.chmod(cache, 0o555)
        return cache, "cannot write the native kernel cache"
    open(cache, "w").close()  # a file where the directory should be
    return cache, "cannot write the native kernel cache"


def _check_fallback(cache: str, expect: str, backends: tuple[str, ...], info: bool) -> None:
    code = f"EXPECT, BACKENDS, INFO = {expect!r}, {backends!r}, {info!r}\n" + textwrap.dedent(_FALLBACK_CHECK)
    result = _run(code, LINREC_CACHE=cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'built': False" in result.stdout and f"'cache': '{cache}'" in result.stdout, result.stdout
    if info:
        assert "native kernel: not available: " in result.stdout and expect in result.stdout, result.stdout
        assert f"cache: {cache}" in result.stdout and "frameworks: numpy " in result.stdout, result.stdout


CACHE_CASES = ["truncated", "random-bytes", "foreign", "unwritable", "not-a-directory"]


@pytest.mark.parametrize("case", CACHE_CASES)
def test_unusable_cache_falls_back_with_a_reason(case, tmp_path, monkeypatch):
    # NumPy only (a fresh process each, ~1 s); the JAX and torch imports are checked below
    _check_fallback(*_unusable_cache(case, tmp_path, monkeypatch), ("numpy",), info=False)


def test_unusable_cache_every_backend_and_info(tmp_path, monkeypatch):
    # the report: a file where LINREC_CACHE should be made every backend and `linrec info` fail
    _check_fallback(*_unusable_cache("not-a-directory", tmp_path, monkeypatch), ("numpy", "jax", "torch"), True)


@pytest.mark.slow
@pytest.mark.parametrize("case", CACHE_CASES[:-1])
def test_unusable_cache_every_backend_and_info_slow(case, tmp_path, monkeypatch):
    _check_fallback(*_unusable_cache(case, tmp_path, monkeypatch), ("numpy", "jax", "torch"), True)


def test_cached_library_verifies_against_its_stamp():
    import json
    from pathlib import Path

    from linrec.backends.native import build

    path = Path(native.describe()["path"])
    assert build.verify(path) is None
    stamp = json.loads(build.stamp_path(path).read_text())
    assert stamp["abi"] == build.ABI_VERSION and stamp["size"] == path.stat().st_size and len(stamp["sha256"]) == 64
    assert {"source_sha256", "flags", "jaxlib", "xla_ffi", "key"} <= set(stamp)


def test_read_only_cache_serves_a_verified_library(tmp_path, monkeypatch):
    # only building needs write access: a cache nobody may write to still serves the library its stamp vouches for
    from pathlib import Path

    from linrec.backends.native import build

    good = open(native.describe()["path"], "rb").read()
    _plant(str(tmp_path), good, False, monkeypatch)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only cache")

    monkeypatch.setattr(Path, "mkdir", refuse)
    monkeypatch.setattr(build, "_file_lock", refuse)
    assert build.build() == build.library_path() and build.verify(build.library_path()) is None
    assert build._open(build.build()).linrec_abi_version() == build.ABI_VERSION


@pytest.mark.slow
def test_first_build_says_so_once_and_the_entry_point_builds_ahead(tmp_path):
    # the first build of a cache announces itself with the cache path, a cached one is silent. The cache is seeded
    # with the default cache's compiled objects (when it has them, as after the README's tests): this test is about
    # the announcement and the entry point; test_objects_are_reused_by_what_they_are_built_from tests the reuse
    from linrec.backends.native import build

    build.copy_objects(tmp_path)
    env = {**os.environ, "LINREC_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "linrec.backends.native.build"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().startswith(str(tmp_path))
    assert first.stderr.count("compiling the native CPU kernel into " + str(tmp_path)) == 1, first.stderr
    second = _run("import linrec.backends.numpy as nb; assert 'native' in nb.METHODS", LINREC_CACHE=str(tmp_path))
    assert second.returncode == 0 and "compiling" not in second.stderr, second.stderr


def test_objects_are_reused_by_what_they_are_built_from(tmp_path, monkeypatch):
    """Three tiny sources stand in for the kernel's (``build()`` compiles, links and stamps; it loads nothing): an
    edit recompiles only the edited file's objects, a seeded cache compiles nothing, a damaged cached object is
    dropped and everything is compiled afresh."""
    from linrec.backends.native import build

    log = tmp_path / "compiles.log"
    cxx = tmp_path / "cxx"
    real = build._compiler()
    cxx.write_text(f'#!/bin/sh\ncase " $* " in *" -c "*) echo "$@" >> {log} ;; esac\nexec {real} "$@"\n')
    cxx.chmod(0o755)
    sources = {name: tmp_path / f"{name.lower()}.cc" for name in ("SOURCE", "DENSE_SOURCE", "DECODE_SOURCE")}
    # the scan source is compiled once per SCAN_PARTS mask: one symbol per mask
    sources["SOURCE"].write_text('#define NAME(p) CAT(p)\n#define CAT(p) linrec_part_##p\n'
                                 'extern "C" int NAME(LINREC_PARTS)() { return 0; }\n')
    sources["DENSE_SOURCE"].write_text('extern "C" int linrec_dense_stub() { return 1; }\n')
    sources["DECODE_SOURCE"].write_text('extern "C" int linrec_decode_stub() { return 2; }\n')
    for name, path in sources.items():
        monkeypatch.setattr(build, name, path)
    monkeypatch.setenv("CXX", str(cxx))

    def compiles(cache) -> int:
        log.unlink(missing_ok=True)
        monkeypatch.setenv("LINREC_CACHE", str(cache))
        library = build.build()
        assert build.verify(library) is None
        return len(log.read_text().splitlines()) if log.exists() else 0

    units = len(build.SCAN_PARTS) + 2
    first = tmp_path / "first"
    assert compiles(first) == units
    sources["DECODE_SOURCE"].write_text('extern "C" int linrec_decode_stub() { return 3; }\n')
    assert compiles(first) == 1  # a new library (the key hashes the sources), one object compiled
    assert build.copy_objects(tmp_path / "seeded", root=first) == units + 1
    assert compiles(tmp_path / "seeded") == 0

    damaged = tmp_path / "damaged"
    build.copy_objects(damaged, root=first)
    for obj in build.objects_dir(damaged).glob("*.o"):
        obj.unlink()  # a hard link into the first cache: replace it, never write through
        obj.write_bytes(b"not an object")
    assert compiles(damaged) == units  # the linker refuses them: dropped, everything compiled afresh
    garbage = [obj for obj in build.objects_dir(damaged).glob("*.o") if obj.read_bytes() == b"not an object"]
    assert len(garbage) == 1  # only the object of the decode source before its edit, which no build uses


# ---------------------------------------------------------------------------------------------------------------------
# JAX: FFI under jit, vmap and grad.


@pytest.fixture(scope="module")
def jnative():
    pytest.importorskip("jax")
    import linrec.backends.jax.arrays  # noqa: F401  (enables float64)
    from linrec.backends.jax import native as jnative

    return jnative


@pytest.mark.parametrize(("dtype", "a_dtype"), DTYPE_PAIRS)
@pytest.mark.parametrize("reverse", [False, True])
def test_jax_jit_and_grad_match_reference(jnative, dtype, a_dtype, reverse):
    import jax

    for n_time, a_state in ((7, STATE), (1, (2, 3, 1)), (0, (1, 3, 4))):
        a, b, h0, resets, ct_h, ct_f = _inputs(10 + n_time, dtype, a_dtype, n_time, a_state)
        cut = reference.cut_mask(resets, reverse)
        fn = jax.jit(lambda a, b, h0, cut: jnative.native_linear_scan(a, b, h0, cut, reverse))
        (h, f), pullback = jax.vjp(partial(fn, cut=cut), a, b, h0)
        a_bar, b_bar, h0_bar = pullback((ct_h, ct_f))
        (h_ref, f_ref), (a_bar_ref, b_bar_ref, h0_bar_ref) = _reference(a, b, h0, resets, reverse, ct_h, ct_f)
        assert h.dtype == b.dtype and a_bar.dtype == a.dtype
        _assert_close(h, h_ref, dtype, what="h")
        _assert_close(f, f_ref, dtype, what="final")
        _assert_close(a_bar, a_bar_ref, dtype, grad=True, what="a_bar")
        _assert_close(b_bar, b_bar_ref, dtype, grad=True, what="b_bar")
        _assert_close(h0_bar, h0_bar_ref, dtype, grad=True, what="h0_bar")


def test_jax_vmap_and_grad_of_kernel_signature(jnative):
    import jax
    import jax.numpy as jnp

    a, b, h0, _, ct_h, _ = _inputs(3, "float64", "float64", 6, (2, 3, 1), with_resets=False)
    stack = lambda x: np.stack([x, 2 * x, -x])  # noqa: E731
    # vmap over b only (a, h0 broadcast by the FFI call) and over everything, composed with grad
    h = jax.jit(jax.vmap(lambda b: jnative.native_scan(a, b, h0, True)))(stack(b))
    for k, scale in enumerate((1, 2, -1)):
        _assert_close(h[k], _reference(a, scale * b, h0, None, True)[0], "float64", what=f"vmap {k}")

    def loss(a, b, h0):
        return jnp.sum(jnative.native_scan(a, b, h0, False) * ct_h)

    grads = jax.vmap(jax.grad(loss, argnums=(0, 1, 2)))(stack(a), stack(b), stack(h0))
    for k, scale in enumerate((1, 2, -1)):
        _, ref_bars = _reference(scale * a, scale * b, scale * h0, None, False, ct_h, np.zeros_like(h0))
        for got, want, name in zip(grads, ref_bars, ("a", "b", "h0")):
            _assert_close(got[k], want, "float64", grad=True, what=f"grad {name} {k}")


def test_wrappers_refuse_unsupported_dtypes(jnative, tnative):
    import jax.numpy as jnp
    import torch

    x = np.ones((1, 2, 3), np.float16)
    with pytest.raises(TypeError, match="dtype pairs"):
        jnative.native_linear_scan(jnp.asarray(x), jnp.asarray(x), jnp.ones((1, 3), jnp.float16))
    with pytest.raises(TypeError, match="dtype pairs"):
        tnative.native_linear_scan(torch.from_numpy(x), torch.from_numpy(x), None)


def test_jax_include_dir_matches_build(jnative):
    import jax

    from linrec.backends.native import build

    assert os.path.samefile(build._jaxlib_include()[0], jax.ffi.include_dir())


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch: custom ops, opcheck, torch.compile.


@pytest.fixture(scope="module")
def tnative():
    pytest.importorskip("torch")
    from linrec.backends.torch import native as tnative

    return tnative


@pytest.mark.parametrize(("dtype", "a_dtype"), DTYPE_PAIRS)
@pytest.mark.parametrize("reverse", [False, True])
def test_torch_autograd_matches_reference(tnative, dtype, a_dtype, reverse):
    import torch

    from linrec.backends.torch.autodiff import vjp  # torch's conj convention -> the JAX numbers of the reference

    for n_time, a_state in ((7, STATE), (1, (2, 3, 1)), (0, (1, 3, 4))):
        a, b, h0, resets, ct_h, ct_f = _inputs(20 + n_time, dtype, a_dtype, n_time, a_state)
        cut = torch.from_numpy(reference.cut_mask(resets, reverse))
        fn = lambda a, b, h0: tnative.native_linear_scan(a, b, h0, cut, reverse)  # noqa: E731, B023
        h, f = fn(*(torch.from_numpy(x) for x in (a, b, h0)))
        bars = vjp(fn, [torch.from_numpy(x) for x in (a, b, h0)], (torch.from_numpy(ct_h), torch.from_numpy(ct_f)))
        (h_ref, f_ref), ref_bars = _reference(a, b, h0, resets, reverse, ct_h, ct_f)
        _assert_close(h.numpy(), h_ref, dtype, what="h")
        _assert_close(f.numpy(), f_ref, dtype, what="final")
        assert bars[0].dtype == getattr(torch, a_dtype)
        for got, want, name in zip(bars, ref_bars, ("a", "b", "h0")):
            _assert_close(got.numpy(), want, dtype, grad=True, what=f"{name}_bar")


def test_torch_opcheck(tnative):
    import torch

    rng = np.random.default_rng(7)
    cases = []
    for dtype, a_dtype, reverse, with_cut in (("float64", "float64", False, False),
                                              ("complex64", "float32", True, True)):
        a, b, h0, _, ct_h, ct_f = _inputs(7, dtype, a_dtype, 5, (2, 3, 1))
        a3, b3 = torch.from_numpy(a.reshape(3, 5, 6)), torch.from_numpy(b.reshape(3, 5, 24))
        h03 = torch.from_numpy(h0.reshape(3, 24))
        cut = torch.from_numpy(rng.random((3, 5)) < 0.3) if with_cut else None
        grad_in = [x.clone().requires_grad_(True) for x in (a3, b3, h03)]
        cases.append((tnative.scan_fwd, (*grad_in, cut, reverse)))
        h, _ = tnative.scan_fwd(a3, b3, h03, cut, reverse)
        g_h, g_f = torch.from_numpy(ct_h.reshape(3, 5, 24)), torch.from_numpy(ct_f.reshape(3, 24))
        cases.append((tnative.scan_bwd, (a3, h, h03, g_h, g_f, cut, reverse)))
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.slow  # ~10-20 s of compilation on a 2-core machine
def test_torch_compile_fullgraph(tnative):
    # through the public linear_scan: its availability check must not take the loader's lock under dynamo
    import torch

    from linrec.backends.torch import linear_scan

    a, b, h0, resets, ct_h, _ = _inputs(8, "float32", "float32", 9, (2, 3, 1))
    ct, resets_t = torch.from_numpy(ct_h), torch.from_numpy(resets)
    a_t, b_t, h0_t = (torch.from_numpy(x).requires_grad_(True) for x in (a, b, h0))

    @torch.compile(fullgraph=True)
    def loss(a, b, h0):
        h, f = linear_scan(a, b, initial_state=h0, resets=resets_t, reverse=True, method="native")
        return (h * ct).sum() + f.sum()

    loss(a_t, b_t, h0_t).backward()
    _, ref_bars = _reference(a, b, h0, resets, True, ct_h, np.ones_like(h0))
    for got, want, name in zip((a_t.grad, b_t.grad, h0_t.grad), ref_bars, ("a", "b", "h0")):
        _assert_close(got.numpy(), want, "float32", grad=True, what=f"compiled {name}_bar")


# --- second derivatives: the backward, differentiated, is again native scans ------------------------------------

# (state dtype, decay dtype, reverse): real, a real decay of a complex state, complex; per-row decay (R = 4).
DOUBLE_BACKWARD_CASES = [("float64", "float64", False), ("complex128", "float64", True),
                         ("complex128", "complex128", False)]


def _loop_scan(xp, a, b, h0, cut, reverse):
    """The recurrence as a plain differentiable loop (``xp.where`` at cuts): a second-derivative reference."""
    steps = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    state, hs = h0, {}
    for t in steps:
        c = cut[:, t].reshape(-1, *([1] * (b.ndim - 2)))
        state = xp.where(c, b[:, t], a[:, t] * state + b[:, t])
        hs[t] = state
    return xp.stack([hs[t] for t in range(b.shape[1])], 1), state


@pytest.mark.parametrize(("dtype", "a_dtype", "reverse"), DOUBLE_BACKWARD_CASES)
def test_torch_double_backward(dtype, a_dtype, reverse):
    import torch

    from linrec.backends.torch import linear_scan

    a, b, h0, resets, _, _ = _inputs(30, dtype, a_dtype, 6, (2, 3, 1))
    cut = torch.from_numpy(reference.cut_mask(resets, reverse))
    results = {}
    for how in ("native", "loop"):
        x = [torch.from_numpy(v).requires_grad_(True) for v in (a, b, h0)]
        if how == "native":
            h, f = linear_scan(*x[:2], initial_state=x[2], resets=torch.from_numpy(resets), reverse=reverse,
                               method="native")
        else:
            h, f = _loop_scan(torch, *x, cut, reverse)
        first = torch.autograd.grad((h.abs() ** 2).sum() + (f.abs() ** 2).sum(), x, create_graph=True)
        second = torch.autograd.grad(sum((g.abs() ** 2).sum() for g in first), x)
        results[how] = [g.detach().numpy() for g in (*first, *second)]
    for k, (got, want) in enumerate(zip(results["native"], results["loop"])):
        _assert_close(got, want, dtype, grad=True, what=f"{'first' if k < 3 else 'second'} {'abh'[k % 3]}")


@pytest.mark.parametrize(("dtype", "a_dtype", "reverse"), DOUBLE_BACKWARD_CASES)
def test_jax_double_backward(jnative, dtype, a_dtype, reverse):
    # reference: the lax.scan method (an eager Python loop under grad of grad takes seconds in JAX)
    import jax
    import jax.numpy as jnp

    from linrec.backends.jax import linear_scan

    a, b, h0, resets, _, _ = _inputs(31, dtype, a_dtype, 6, (2, 3, 1))

    def first(x, method):
        def loss(a, b, h0):
            h, f = linear_scan(a, b, initial_state=h0, resets=resets, reverse=reverse, method=method)
            return jnp.sum(jnp.abs(h) ** 2) + jnp.sum(jnp.abs(f) ** 2)

        return jax.grad(loss, argnums=(0, 1, 2))(*x)

    def second(*x, method):
        return sum(jnp.sum(jnp.abs(g) ** 2) for g in first(x, method))

    x = tuple(jnp.asarray(v) for v in (a, b, h0))
    results = {}
    for method in ("sequential", "native"):
        results[method] = (*first(x, method), *jax.grad(partial(second, method=method), argnums=(0, 1, 2))(*x))
    for k, (got, want) in enumerate(zip(results["native"], results["sequential"])):
        _assert_close(got, np.asarray(want), dtype, grad=True, what=f"{'first' if k < 3 else 'second'} {'abh'[k % 3]}")


# --- segments are independent: a NaN before a reset stays in its segment -------------------------------------------


@pytest.mark.parametrize("framework", ["numpy", "jax", "torch"])
@pytest.mark.parametrize("reverse", [False, True])
def test_nan_before_a_reset_stays_in_its_segment(framework, reverse):
    import importlib

    backend = importlib.import_module(f"linrec.backends.{framework}")
    to = getattr(backend, "asarray", np.asarray)
    rng = np.random.default_rng(4)
    a = rng.uniform(0.2, 0.9, (2, 8, 3))
    b = rng.standard_normal((2, 8, 3))
    resets = np.zeros((2, 8), bool)
    resets[:, 4] = True  # segments [0, 4) and [4, 8)
    first, second = (slice(0, 4), slice(4, 8)) if not reverse else (slice(4, 8), slice(0, 4))
    b[:, first.start + 1] = np.nan  # inside the segment scanned first
    h, final = backend.linear_scan(to(a), to(b), resets=to(resets), reverse=reverse, method="native")
    h = np.asarray(h)
    # the other segment alone, from a zero state, through the same kernel: bit for bit the same
    alone, alone_final = backend.linear_scan(to(a[:, second]), to(b[:, second]), reverse=reverse, method="native")
    np.testing.assert_array_equal(h[:, second], np.asarray(alone))
    np.testing.assert_array_equal(np.asarray(final), np.asarray(alone_final))
    assert np.isnan(h[:, first.start + 1]).all()  # and IEEE propagation inside the first segment
    if framework == "numpy":
        return
    # the VJP: cotangents on the clean segment give finite, exact gradients for its inputs
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        def loss(a, b):
            return jnp.sum(backend.linear_scan(a, b, resets=resets, reverse=reverse, method="native")[0][:, second])

        def loss_alone(a, b):
            return jnp.sum(backend.linear_scan(a, b, reverse=reverse, method="native")[0])

        grads = jax.grad(loss, argnums=(0, 1))(jnp.asarray(a), jnp.asarray(b))
        grads_alone = jax.grad(loss_alone, argnums=(0, 1))(jnp.asarray(a[:, second]), jnp.asarray(b[:, second]))
    else:
        import torch

        x = [torch.from_numpy(v).requires_grad_(True) for v in (a, b)]
        backend.linear_scan(*x, resets=torch.from_numpy(resets), reverse=reverse, method="native")[0][:, second] \
            .sum().backward()
        y = [torch.from_numpy(np.ascontiguousarray(v[:, second])).requires_grad_(True) for v in (a, b)]
        backend.linear_scan(*y, reverse=reverse, method="native")[0].sum().backward()
        grads, grads_alone = [v.grad for v in x], [v.grad for v in y]
    for got, want in zip(grads, grads_alone):
        np.testing.assert_array_equal(np.asarray(got)[:, second], np.asarray(want))


# --- minGRU with fused gates -------------------------------------------------------------------------------------


def _mingru_reference(u, h0, ct_h, ct_f, kind):
    """float64: gates of spec/mingru.md, the reference scan and its VJP, chained back to ``u``."""
    from linrec.spec import mingru as spec

    u = u.astype(np.float64)
    u_z, u_h = np.split(u, 2, axis=-1)
    z, c = spec.sigmoid(u_z), spec.candidate(u_h, kind)
    a, b = 1 - z, z * c
    (h, final) = reference.linear_scan(a, b, initial_state=h0.astype(np.float64))
    a_bar, b_bar, h0_bar = reference.linear_scan_vjp(a, b, ct_h, ct_f, initial_state=h0.astype(np.float64))
    z_bar = b_bar * c - a_bar
    u_bar = np.concatenate([z_bar * z * (1 - z), b_bar * z * spec.candidate_grad(u_h, kind)], axis=-1)
    return h, final, u_bar, h0_bar


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["identity", "g"])
@pytest.mark.parametrize("gates", ["mingru", "minlstm"])
@pytest.mark.parametrize(("n", "t", "hidden"), [(2, 0, 3), (2, 1, 3), (3, 9, 5), (2, 64, 600), (2, 1100, 1000)])
def test_fused_mingru_matches_reference(dtype, kind, gates, n, t, hidden):
    # the last sizes take the threaded path and (over 8 MiB of du) streaming stores with unaligned rows
    rng = np.random.default_rng(t + hidden)
    blocks = 2 if gates == "mingru" else 3
    u = (3 * rng.standard_normal((n, t, blocks * hidden))).astype(dtype)
    h0 = rng.standard_normal((n, hidden)).astype(dtype)
    ct_h = rng.standard_normal((n, t, hidden)).astype(dtype)
    ct_f = rng.standard_normal((n, hidden)).astype(dtype)
    h, final = native.mingru_scan(u, h0, kind, gates=gates)
    assert h.dtype == u.dtype and h.shape == (n, t, hidden) and final.shape == (n, hidden)
    reference_of = _mingru_reference if gates == "mingru" else _minlstm_reference
    h_ref, f_ref, u_bar_ref, h0_bar_ref = reference_of(u, h0, ct_h, ct_f, kind)
    _assert_close(h, h_ref, dtype, what="h")
    _assert_close(final, f_ref, dtype, what="final")
    u_bar, h0_bar = native.mingru_scan_vjp(u, h, h0, ct_h, ct_f, kind, gates=gates)
    _assert_close(u_bar, u_bar_ref, dtype, grad=True, what="u_bar")
    _assert_close(h0_bar, h0_bar_ref, dtype, grad=True, what="h0_bar")


def _fused_inputs(dtype: str, seed: int = 3, n: int = 2, t: int = 9, hidden: int = 5):
    rng = np.random.default_rng(seed)
    draw = lambda *shape: rng.standard_normal(shape).astype(dtype)  # noqa: E731
    return 3 * draw(n, t, 2 * hidden), draw(n, hidden), draw(n, t, hidden), draw(n, hidden)


@pytest.mark.parametrize("kind", ["identity", "g"])
def test_fused_mingru_jax_jit_grad_vmap(jnative, kind):
    import jax
    import jax.numpy as jnp

    from linrec.backends.jax.native_mingru import native_mingru

    u, h0, ct_h, ct_f = _fused_inputs("float64")
    h_ref, f_ref, u_bar_ref, h0_bar_ref = _mingru_reference(u, h0, ct_h, ct_f, kind)

    def loss(u, h0):
        h, f = native_mingru(u, h0, kind)
        return (h * ct_h).sum() + (f * ct_f).sum()

    h, f = jax.jit(lambda u, h0: native_mingru(u, h0, kind))(jnp.asarray(u), jnp.asarray(h0))
    _assert_close(np.asarray(h), h_ref, "float64", what="h")
    _assert_close(np.asarray(f), f_ref, "float64", what="final")
    u_bar, h0_bar = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(u), jnp.asarray(h0))
    _assert_close(np.asarray(u_bar), u_bar_ref, "float64", grad=True, what="u_bar")
    _assert_close(np.asarray(h0_bar), h0_bar_ref, "float64", grad=True, what="h0_bar")
    stacked = jax.vmap(lambda u, h0: native_mingru(u, h0, kind)[0])(jnp.stack([u, -u]), jnp.stack([h0, h0]))
    _assert_close(np.asarray(stacked[0]), h_ref, "float64", what="vmap h")


@pytest.mark.parametrize("kind", ["identity", "g"])
def test_fused_mingru_torch_autograd_opcheck_compile(tnative, kind):
    import torch

    from linrec.backends.torch import native_mingru as fused

    u, h0, ct_h, ct_f = _fused_inputs("float64")
    h_ref, f_ref, u_bar_ref, h0_bar_ref = _mingru_reference(u, h0, ct_h, ct_f, kind)
    u_t, h0_t = (torch.from_numpy(x).requires_grad_(True) for x in (u, h0))
    h, f = fused.native_mingru(u_t, h0_t, kind)
    _assert_close(h.detach().numpy(), h_ref, "float64", what="h")
    _assert_close(f.detach().numpy(), f_ref, "float64", what="final")
    u_bar, h0_bar = torch.autograd.grad((h * torch.from_numpy(ct_h)).sum() + (f * torch.from_numpy(ct_f)).sum(),
                                        (u_t, h0_t))
    _assert_close(u_bar.numpy(), u_bar_ref, "float64", grad=True, what="u_bar")
    _assert_close(h0_bar.numpy(), h0_bar_ref, "float64", grad=True, what="h0_bar")
    code = native.CANDIDATE_CODES[kind]
    torch.library.opcheck(fused.mingru_fwd, (u_t, h0_t, code))
    torch.library.opcheck(fused.mingru_bwd, (u_t.detach(), h.detach(), h0_t.detach(), torch.from_numpy(ct_h),
                                             torch.from_numpy(ct_f), code))

    @torch.compile(fullgraph=True)
    def loss(u, h0):
        h, f = fused.native_mingru(u, h0, kind)
        return h.sum() + f.sum()

    loss(u_t, h0_t).backward()
    _, _, u_bar_ones, _ = _mingru_reference(u, h0, np.ones_like(ct_h), np.ones_like(ct_f), kind)
    _assert_close(u_t.grad.numpy(), u_bar_ones, "float64", grad=True, what="compiled u_bar")



# --- minLSTM through the fused minGRU kernel (gates="minlstm") ------------------------------------------------------


def _minlstm_reference(u, h0, ct_h, ct_f, kind):
    """float64: minLSTM's gates (spec/minlstm.md: ``f' = σ(-d)``, ``i' = σ(d)``, ``d = softplus(-u_f) -
    softplus(-u_i)``), the reference scan and its VJP, chained back to ``u = [u_f | u_i | u_h]``."""
    from linrec.spec import minlstm as spec

    u = u.astype(np.float64)
    u_f, u_i, u_h = np.split(u, 3, axis=-1)
    d = spec.softplus(-u_f) - spec.softplus(-u_i)
    z, c = spec.sigmoid(d), spec.candidate(u_h, kind)
    a, b = spec.sigmoid(-d), z * c
    h, final = reference.linear_scan(a, b, initial_state=h0.astype(np.float64))
    a_bar, b_bar, h0_bar = reference.linear_scan_vjp(a, b, ct_h, ct_f, initial_state=h0.astype(np.float64))
    d_bar = (b_bar * c - a_bar) * z * a  # da/dd = -z a, dz/dd = z a
    u_bar = np.concatenate([-d_bar * spec.sigmoid(-u_f), d_bar * spec.sigmoid(-u_i),
                            b_bar * z * spec.candidate_grad(u_h, kind)], axis=-1)
    return h, final, u_bar, h0_bar


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_minlstm_gates_at_extreme_inputs(dtype):
    """Saturated and opposite gates (f, i both ~0, one ~1, ±inf) give the spec's values, never 0/0 or inf - inf;
    a NaN stays NaN."""
    big = 60.0 if dtype == "float32" else 600.0
    pairs = [(-big, -big), (-big, big), (big, -big), (big, big), (-2 * big, -big), (0.0, -np.inf), (-np.inf, 0.0),
             (np.inf, np.inf), (np.inf, -np.inf), (3.0, -4.0),
             # both logits below twice exp's range: their difference still decides (f' = σ(-20) here)
             (-4 * big, -4 * big + 20), (-4 * big + 20, -4 * big), (-1e30, -1e29)]
    u_f, u_i = (np.array([[p[k] for p in pairs]], dtype) for k in (0, 1))
    u_h = np.full_like(u_f, 2.0)
    u = np.concatenate([u_f, u_i, u_h], axis=-1)[:, None, :]  # (1, 1, 3H)
    h0 = np.ones((1, len(pairs)), dtype)
    h, _ = native.mingru_scan(u, h0, "identity", gates="minlstm")
    with np.errstate(over="ignore", invalid="ignore"):
        h_ref, *_ = _minlstm_reference(u, h0, np.zeros((1, 1, len(pairs))), np.zeros_like(h0), "identity")
    assert np.all(np.isfinite(h)), h
    _assert_close(h, h_ref, dtype, what="h")
    u[0, 0, 0] = np.nan
    h, _ = native.mingru_scan(u, h0, "identity", gates="minlstm")
    assert np.isnan(h[0, 0, 0]) and np.all(np.isfinite(h[0, 0, 1:]))


def test_fused_minlstm_jax_and_torch_gradients(jnative, tnative):
    """The JAX custom VJP and the torch custom op (opcheck, compiled) carry minLSTM's gates (3H columns)."""
    import jax
    import jax.numpy as jnp
    import torch

    from linrec.backends.jax.native_mingru import native_mingru as jax_fused
    from linrec.backends.torch import native_mingru as torch_fused

    rng = np.random.default_rng(5)
    u, h0, ct_h, ct_f = 3 * rng.standard_normal((2, 9, 15)), *(rng.standard_normal(s) for s in ((2, 5), (2, 9, 5),
                                                                                                  (2, 5)))
    h_ref, f_ref, u_bar_ref, h0_bar_ref = _minlstm_reference(u, h0, ct_h, ct_f, "g")

    def loss(u, h0):
        h, f = jax_fused(u, h0, "g", gates="minlstm")
        return (h * ct_h).sum() + (f * ct_f).sum()

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(u), jnp.asarray(h0))
    h = jax.vmap(lambda u, h0: jax_fused(u, h0, "g", gates="minlstm")[0])(jnp.stack([u, u]), jnp.stack([h0, h0]))
    _assert_close(np.asarray(h[1]), h_ref, "float64", what="jax vmap h")
    for got, want in zip(grads, (u_bar_ref, h0_bar_ref)):
        _assert_close(np.asarray(got), want, "float64", grad=True, what="jax grad")

    u_t, h0_t = (torch.from_numpy(x).requires_grad_(True) for x in (u, h0))
    code = native.fused_code("g", "minlstm")
    torch.library.opcheck(torch_fused.mingru_fwd, (u_t, h0_t, code))
    h, f = torch_fused.native_mingru(u_t, h0_t, "g", gates="minlstm")
    torch.library.opcheck(torch_fused.mingru_bwd, (u_t.detach(), h.detach(), h0_t.detach(), torch.from_numpy(ct_h),
                                                   torch.from_numpy(ct_f), code))
    compiled = torch.compile(lambda u, h0: torch_fused.native_mingru(u, h0, "g", gates="minlstm"), fullgraph=True)
    h, f = compiled(u_t, h0_t)
    grads = torch.autograd.grad((h * torch.from_numpy(ct_h)).sum() + (f * torch.from_numpy(ct_f)).sum(), (u_t, h0_t))
    _assert_close(h.detach().numpy(), h_ref, "float64", what="torch h")
    _assert_close(f.detach().numpy(), f_ref, "float64", what="torch final")
    for got, want in zip(grads, (u_bar_ref, h0_bar_ref)):
        _assert_close(got.numpy(), want, "float64", grad=True, what="torch grad")
    with pytest.raises(ValueError, match=r"u must be \(N, T, 3\*H\)"):
        native.mingru_scan(u[..., :10], h0, "g", gates="minlstm")
    with pytest.raises(ValueError, match="gates must be one of"):
        native.mingru_scan(u, h0, "g", gates="lstm")


@pytest.mark.parametrize("framework", ["numpy", "jax", "torch"])
def test_mingru_layer_takes_the_fused_path_on_auto_and_native(framework, monkeypatch):
    """method="auto"/"native" on CPU runs the fused kernel; other methods do not."""
    if framework != "numpy":
        pytest.importorskip(framework)
    from importlib import import_module

    fused = import_module(f"linrec.backends.{framework}.native_mingru")
    layer = import_module(f"linrec.backends.{framework}.mingru")
    arrays = import_module(f"linrec.backends.{framework}.arrays")
    from linrec.spec import mingru as spec

    calls = []
    real = fused.native_mingru
    monkeypatch.setattr(fused, "native_mingru", lambda *args: calls.append(1) or real(*args))
    cfg = spec.MinGRUConfig(4, candidate="g")
    params = {k: arrays.asarray(v) for k, v in spec.init_params(cfg, seed=1).items()}
    x = arrays.asarray(np.random.default_rng(0).standard_normal((2, 6, 4)).astype(np.float32))
    results = {m: layer.mingru(params, x, config=cfg, method=m) for m in ("auto", "native", "sequential")}
    assert len(calls) == 2
    for m in ("auto", "native"):
        (y, final), (y_want, final_want) = results[m], results["sequential"]
        for got, want in ((y, y_want), (final.h, final_want.h)):
            _assert_close(arrays.to_numpy(got), arrays.to_numpy(want), "float32", what=f"{framework} {m}")


def _minlstm_grads(framework: str, layer, params: dict, x: np.ndarray, cfg, method: str, ct: np.ndarray):
    """``(y, final, grads of <y, ct> w.r.t. every parameter and x)`` as NumPy, in ``framework``."""
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        def loss(p, x):
            y, final = layer.minlstm(p, x, config=cfg, method=method)
            return jnp.vdot(y, ct), (y, final.h)

        grads, (y, final) = jax.grad(loss, argnums=(0, 1), has_aux=True)(
            {k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x))
        return np.asarray(y), np.asarray(final), [np.asarray(grads[0][k]) for k in params] + [np.asarray(grads[1])]
    import torch

    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    xt = torch.tensor(x, requires_grad=True)
    y, final = layer.minlstm(p, xt, config=cfg, method=method)
    grads = torch.autograd.grad((y * torch.from_numpy(ct)).sum(), [*p.values(), xt])
    return y.detach().numpy(), final.h.detach().numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("framework", ["numpy", "jax", "torch"])
@pytest.mark.parametrize("candidate", ["g", "identity"])
def test_minlstm_layer_runs_the_fused_mingru_kernel(framework, candidate, monkeypatch):
    """minLSTM's gates are minGRU's of ``d = log(i/f)``: method="auto"/"native" run the fused minGRU kernel on
    ``[d | u_h]``, with the values and (JAX, PyTorch) gradients of the unfused step loop."""
    if framework != "numpy":
        pytest.importorskip(framework)
    from importlib import import_module

    fused = import_module(f"linrec.backends.{framework}.native_mingru")
    layer = import_module(f"linrec.backends.{framework}.minlstm")
    from linrec.spec import minlstm as spec

    calls = []
    real = fused.native_mingru
    monkeypatch.setattr(fused, "native_mingru", lambda *args: calls.append(1) or real(*args))
    cfg = spec.MinLSTMConfig(4, candidate=candidate, out_proj=True)
    params = spec.init_params(cfg, seed=1, dtype="float64")
    rng = np.random.default_rng(0)
    x = 2 * rng.standard_normal((2, 7, 4))
    ct = rng.standard_normal((2, 7, 4))
    if framework == "numpy":
        results = {m: layer.minlstm(params, x, config=cfg, method=m) for m in ("auto", "native", "sequential")}
        results = {m: (y, final.h, []) for m, (y, final) in results.items()}
    else:
        results = {m: _minlstm_grads(framework, layer, params, x, cfg, m, ct) for m in ("auto", "native",
                                                                                        "sequential")}
    assert len(calls) == 2
    for m in ("auto", "native"):
        for k, (got, want) in enumerate(zip((*results[m][:2], *results[m][2]), (*results["sequential"][:2],
                                                                                   *results["sequential"][2]))):
            _assert_close(got, want, "float64", grad=k >= 2, what=f"{framework} {m} output {k}")


# --- GatedLinearRNN with fused gates -------------------------------------------------------------------------------


def _glr_reference(u, h0, ct_y, ct_f, tied, reverse):
    """float64: the gates of spec/gated_linear_rnn.md (default activations), the reference scan and its VJP."""
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    u, h0 = u.astype(np.float64), h0.astype(np.float64)
    blocks = np.split(u, 3 if tied else 4, axis=-1)
    u_in, u_i, u_o = blocks[0], blocks[1], blocks[-1]
    c, i, o = np.tanh(u_in), sig(u_i), sig(u_o)
    f = 1 - i if tied else sig(blocks[2])
    h, final = reference.linear_scan(f, i * c, initial_state=h0, reverse=reverse)
    y = np.tanh(h) * o
    ct_h = ct_y * o * (1 - np.tanh(h) ** 2)
    a_bar, b_bar, h0_bar = reference.linear_scan_vjp(f, i * c, ct_h, ct_f, initial_state=h0, reverse=reverse)
    du_in, du_i, du_o = b_bar * i * (1 - c**2), b_bar * c * i * (1 - i), ct_y * np.tanh(h) * o * (1 - o)
    if tied:
        u_bar = np.concatenate([du_in, du_i - a_bar * i * (1 - i), du_o], axis=-1)
    else:
        u_bar = np.concatenate([du_in, du_i, a_bar * f * (1 - f), du_o], axis=-1)
    return y, h, final, u_bar, h0_bar


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("n", "t", "hidden"), [(2, 0, 3), (2, 1, 3), (3, 9, 5), (2, 64, 600), (2, 700, 1000)])
def test_fused_glr_matches_reference(dtype, tied, reverse, n, t, hidden):
    # the last sizes take the threaded path and (over 8 MiB of y/h/du) streaming stores with unaligned rows
    rng = np.random.default_rng(t + hidden)
    u = (2 * rng.standard_normal((n, t, (3 if tied else 4) * hidden))).astype(dtype)
    h0, ct_f = (rng.standard_normal((n, hidden)).astype(dtype) for _ in range(2))
    ct_y = rng.standard_normal((n, t, hidden)).astype(dtype)
    y, h, final = native.glr_scan(u, h0, tied, reverse)
    y_ref, h_ref, f_ref, u_bar_ref, h0_bar_ref = _glr_reference(u, h0, ct_y, ct_f, tied, reverse)
    for got, want, what in ((y, y_ref, "y"), (h, h_ref, "h"), (final, f_ref, "final")):
        _assert_close(got, want, dtype, what=what)
    u_bar, h0_bar = native.glr_scan_vjp(u, h, h0, ct_y, ct_f, tied, reverse)
    _assert_close(u_bar, u_bar_ref, dtype, grad=True, what="u_bar")
    _assert_close(h0_bar, h0_bar_ref, dtype, grad=True, what="h0_bar")


@pytest.mark.parametrize(("tied", "reverse"), [(True, False), (False, True)])
def test_fused_glr_jax_jit_grad_vmap(jnative, tied, reverse):
    import jax
    import jax.numpy as jnp

    from linrec.backends.jax.native_gated_linear_rnn import native_gated_linear_rnn as fused

    rng = np.random.default_rng(11)
    u = 2 * rng.standard_normal((2, 7, (3 if tied else 4) * 5))
    h0, ct_f, ct_y = rng.standard_normal((2, 5)), rng.standard_normal((2, 5)), rng.standard_normal((2, 7, 5))
    y_ref, _, f_ref, u_bar_ref, h0_bar_ref = _glr_reference(u, h0, ct_y, ct_f, tied, reverse)

    def loss(u, h0):
        y, f = fused(u, h0, tied, reverse)
        return (y * ct_y).sum() + (f * ct_f).sum()

    y, f = jax.jit(lambda u, h0: fused(u, h0, tied, reverse))(jnp.asarray(u), jnp.asarray(h0))
    _assert_close(np.asarray(y), y_ref, "float64", what="y")
    _assert_close(np.asarray(f), f_ref, "float64", what="final")
    u_bar, h0_bar = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(u), jnp.asarray(h0))
    _assert_close(np.asarray(u_bar), u_bar_ref, "float64", grad=True, what="u_bar")
    _assert_close(np.asarray(h0_bar), h0_bar_ref, "float64", grad=True, what="h0_bar")
    stacked = jax.vmap(lambda u, h0: fused(u, h0, tied, reverse)[0])(jnp.stack([u, u]), jnp.stack([h0, h0]))
    _assert_close(np.asarray(stacked[1]), y_ref, "float64", what="vmap y")


@pytest.mark.parametrize(("tied", "reverse"), [(True, True), (False, False)])
def test_fused_glr_torch_autograd_opcheck_compile(tnative, tied, reverse):
    import torch

    from linrec.backends.torch import native_gated_linear_rnn as fused

    rng = np.random.default_rng(12)
    u = 2 * rng.standard_normal((2, 7, (3 if tied else 4) * 5))
    h0, ct_f, ct_y = rng.standard_normal((2, 5)), rng.standard_normal((2, 5)), rng.standard_normal((2, 7, 5))
    y_ref, h_ref, f_ref, u_bar_ref, h0_bar_ref = _glr_reference(u, h0, ct_y, ct_f, tied, reverse)
    u_t, h0_t = (torch.from_numpy(x).requires_grad_(True) for x in (u, h0))
    y, f = fused.native_gated_linear_rnn(u_t, h0_t, tied, reverse)
    _assert_close(y.detach().numpy(), y_ref, "float64", what="y")
    _assert_close(f.detach().numpy(), f_ref, "float64", what="final")
    u_bar, h0_bar = torch.autograd.grad((y * torch.from_numpy(ct_y)).sum() + (f * torch.from_numpy(ct_f)).sum(),
                                        (u_t, h0_t))
    _assert_close(u_bar.numpy(), u_bar_ref, "float64", grad=True, what="u_bar")
    _assert_close(h0_bar.numpy(), h0_bar_ref, "float64", grad=True, what="h0_bar")
    torch.library.opcheck(fused.glr_fwd, (u_t, h0_t, tied, reverse))
    torch.library.opcheck(fused.glr_bwd, (u_t.detach(), torch.from_numpy(h_ref), h0_t.detach(),
                                          torch.from_numpy(ct_y), torch.from_numpy(ct_f), tied, reverse))
    with pytest.raises(ValueError, match="fused kernel"):
        fused.native_gated_linear_rnn(u_t[..., :-1], h0_t, tied, reverse)  # a misshapen u never reaches the C code

    @torch.compile(fullgraph=True)
    def loss(u, h0):
        y, f = fused.native_gated_linear_rnn(u, h0, tied, reverse)
        return y.sum() + f.sum()

    u_t.grad = None
    loss(u_t, h0_t).backward()
    _, _, _, u_bar_ones, _ = _glr_reference(u, h0, np.ones_like(ct_y), np.ones_like(ct_f), tied, reverse)
    _assert_close(u_t.grad.numpy(), u_bar_ones, "float64", grad=True, what="compiled u_bar")


@pytest.mark.parametrize("framework", ["numpy", "jax", "torch"])
def test_glr_layer_takes_the_fused_path_only_where_it_computes_the_layer(framework, monkeypatch):
    """method auto/native with the default activations runs the fused kernel; other activations and methods,
    and the true recurrence, do not."""
    if framework != "numpy":
        pytest.importorskip(framework)
    from dataclasses import replace
    from importlib import import_module

    from linrec.spec import gated_linear_rnn as spec

    fused = import_module(f"linrec.backends.{framework}.native_gated_linear_rnn")
    layer = import_module(f"linrec.backends.{framework}.gated_linear_rnn")
    arrays = import_module(f"linrec.backends.{framework}.arrays")
    calls = []
    real = fused.native_gated_linear_rnn
    monkeypatch.setattr(fused, "native_gated_linear_rnn", lambda *args: calls.append(1) or real(*args))
    x = arrays.asarray(np.random.default_rng(0).standard_normal((2, 6, 4)).astype(np.float32))
    base = spec.GatedLinearRNNConfig(d_model=4, d_h=3, reversed=True)
    for cfg, fused_methods in ((base, 2), (replace(base, hidden_activation="identity"), 0)):
        calls.clear()
        params = {k: arrays.asarray(v) for k, v in spec.init_params(cfg, seed=1).items()}
        results = {m: layer.gated_linear_rnn(params, x, config=cfg, method=m) for m in ("auto", "native")}
        want = spec.forward({k: arrays.to_numpy(v) for k, v in params.items()}, arrays.to_numpy(x), cfg)
        assert len(calls) == fused_methods
        for got in results.values():  # (y, State(h)) each
            for g, w in ((got[0], want[0]), (got[1].h, want[1].h)):
                _assert_close(arrays.to_numpy(g), w, "float32", what=f"{framework} {cfg.hidden_activation}")


def test_fused_layer_kernels_refuse_a_second_derivative_naming_the_methods_that_serve_it():
    """The fused minGRU/GatedLinearRNN kernels' backward has no derivative: double backward raises naming
    ``chunked`` (which serves it), in torch and JAX, instead of failing inside the framework."""
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    from linrec.backends.jax.native_gated_linear_rnn import native_gated_linear_rnn as jax_glr
    from linrec.backends.jax.native_mingru import native_mingru as jax_mingru
    from linrec.backends.torch.native_gated_linear_rnn import native_gated_linear_rnn as torch_glr
    from linrec.backends.torch.native_mingru import native_mingru as torch_mingru

    rng = np.random.default_rng(0)
    u2, u3, h0 = (rng.standard_normal(s).astype(np.float32) for s in ((2, 5, 6), (2, 5, 9), (2, 3)))
    for fn, u, extra in ((torch_mingru, u2, ("g",)), (torch_glr, u3, (True,))):
        ut = torch.tensor(u, requires_grad=True)
        y, _ = fn(ut, torch.tensor(h0), *extra)
        (g,) = torch.autograd.grad(y.square().sum(), ut)  # first order is served
        assert torch.isfinite(g).all()
        with pytest.raises(RuntimeError, match="method='chunked'"):  # a differentiable backward is refused
            torch.autograd.grad(fn(ut, torch.tensor(h0), *extra)[0].square().sum(), ut, create_graph=True)
    for fn, u, extra in ((jax_mingru, u2, ("g",)), (jax_glr, u3, (True,))):
        def loss(u, fn=fn, extra=extra):
            return (fn(u, jax.numpy.asarray(h0), *extra)[0] ** 2).sum()

        assert np.isfinite(np.asarray(jax.grad(loss)(u))).all()
        with pytest.raises(ValueError, match="method='chunked'"):
            jax.grad(lambda u: jax.grad(loss)(u).sum())(u)


@pytest.mark.slow
def test_sources_compile_without_the_cpu_flags(tmp_path):
    """The loader's portable build compiles: the fallback it uses when the compiler rejects ``CPU_FLAGS`` (no AVX2,
    so none of the intrinsics headers AVX2 code pulls in). Every other test runs the tuned build. Syntax only."""
    from linrec.backends.native import build

    include, _ = build._jaxlib_include()
    cmd = build._command(build._compiler(), include, tmp_path / "lib.so", tuned=False)
    cmd = [*cmd[: cmd.index("-o")], "-fsyntax-only"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
