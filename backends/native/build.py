"""Compile ``linrec_scan.cc`` on first use into a per-user cache, verify it, and load it with ctypes.

The library lands in ``$LINREC_CACHE/native/<key>/`` (default ``~/.cache/linrec``, or ``$XDG_CACHE_HOME/linrec``),
where ``<key>`` hashes the source, the compiler (path and ``--version``), the flags, the CPU, the jaxlib version and
the cache layout, so an edit, a compiler upgrade or a new jaxlib gets a fresh build and never a stale one.

Beside the library, ``liblinrec_scan.json`` (the *stamp*) records the key, the ABI version, the flags, the jaxlib
version, and the size and SHA-256 of the ``.so``. A library is loaded only when its stamp matches byte for byte: a
truncated, overwritten or foreign file is refused with a :class:`NativeBuildError` before ``dlopen`` ever maps it
(mapping a truncated library can kill the process with a bus error). A library without a stamp is an interrupted
build and is rebuilt. The compiler writes to a temporary name that is renamed into place, then the stamp is renamed
into place: a concurrent process sees no stamp (and waits on the lock) or a complete library and its stamp. An
advisory file lock (POSIX) keeps parallel test workers from compiling the same thing twice. A cache that cannot be
written still serves a library that verifies; only building needs write access.

Every failure to build or load (no compiler, a cache path that is a file or read-only, a corrupt library, a missing
symbol) becomes a :class:`NativeBuildError` whose message says what is wrong: the other methods keep working and
``method="native"`` raises naming ``sequential`` (``linrec.backends.native.require_native``).

The XLA FFI handlers (for JAX) need the headers shipped with jaxlib (``jax.ffi.include_dir()``); they are located
without importing jax. Without jaxlib the library is built without them (``-DLINREC_WITH_XLA_FFI`` unset) and the
C functions still serve torch and NumPy.

The compiled objects are kept in ``$LINREC_CACHE/native/objects/``, named by what each is compiled from (the
source's bytes, the command, the compiler, the CPU, the jaxlib headers): a build reuses every object whose source did
not change (an edit of ``linrec_decode.cc`` recompiles that file in seconds, not the scan's minute), and
:func:`copy_objects` seeds another cache with them (the mutation runs and the tests build in temporary caches).
Objects land by atomic rename; a cached object the linker refuses is discarded and everything is compiled afresh.

Building takes about a minute; the first build in a process says so once on stderr, with the cache path.
``python -m linrec.backends.native.build`` (or ``linrec info``) builds ahead of time and prints the path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["ABI_VERSION", "NativeBuildError", "available", "build", "build_error", "cache_root", "copy_objects",
           "library_path", "load", "objects_dir", "stamp_path", "verify"]

#: Must equal ``linrec_abi_version()`` in the C++ source.
ABI_VERSION = 8
#: Bumped when the cache layout changes (here: the stamp beside the library); part of the key.
CACHE_LAYOUT = 2
SOURCE = Path(__file__).with_name("linrec_scan.cc")
#: The dense products of the decoders (its own file: one job each); compiled into the same library.
DENSE_SOURCE = Path(__file__).with_name("linrec_dense.cc")
#: The decode programs (one call per model step, over the dense products); compiled into the same library.
DECODE_SOURCE = Path(__file__).with_name("linrec_decode.cc")
LIBRARY_NAME = "liblinrec_scan.so"
STAMP_NAME = "liblinrec_scan.json"
#: IEEE semantics on purpose: no -ffast-math (it would reassociate the sums and break the tolerances).
#: -fno-trapping-math changes no result (nothing reads floating-point exception flags); it lets GCC turn the
#: selects of the fused gate loops into vector blends instead of branches.
FLAGS = ("-std=c++17", "-O3", "-fno-trapping-math", "-fPIC", "-shared", "-pthread")
#: The objects compiled from ``SOURCE``, in parallel (``LINREC_PARTS`` masks, see the source's header): the plain scan
#: with the fused minGRU and GatedLinearRNN kernels, then the multi-head GateLoop's forward and its backward, whose
#: dtype combinations make them the longest compiles (about 20, 15 and 20 CPU-seconds on the reference machine,
#: against 45 s of wall time for the one translation unit).
SCAN_PARTS = (1 | 2 | 4, 8, 16)
#: The vector width of this CPU (AVX2 where there is one: the fused gate kernels are compute-bound and ran ~2x
#: faster than with the SSE2 baseline), without fused multiply-adds, so results stay those of separate IEEE
#: multiplies and adds on every machine. The CPU is part of the cache key; a compiler that rejects these flags
#: gets a build without them.
CPU_FLAGS = ("-march=native", "-ffp-contract=off")
#: Every C symbol the loader declares: a library missing one is not ours (or not this version).
SYMBOLS = ("linrec_abi_version", "linrec_has_ffi", "linrec_num_threads", "linrec_scan_fwd", "linrec_scan_bwd",
           "linrec_mingru_fwd", "linrec_mingru_bwd", "linrec_glr_fwd", "linrec_glr_bwd", "linrec_gmh_chunk",
           "linrec_gmh_fwd", "linrec_gmh_bwd", "linrec_dense_panel", "linrec_dense_max_rows",
           "linrec_dense_packed_size", "linrec_dense", "linrec_dense_rows", "linrec_decode_run")


class NativeBuildError(RuntimeError):
    """The native kernel could not be built or loaded; the message says what is missing."""


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_announced = False


def cache_root() -> Path:
    """``$LINREC_CACHE``, else ``$XDG_CACHE_HOME/linrec``, else ``~/.cache/linrec`` (it may not exist)."""
    if os.environ.get("LINREC_CACHE"):
        return Path(os.environ["LINREC_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "linrec"


def _compiler() -> str:
    for name in filter(None, (os.environ.get("CXX"), "g++", "c++", "clang++")):
        path = shutil.which(name)
        if path:
            return path
    raise NativeBuildError(
        "no C++ compiler found (looked for $CXX, g++, c++, clang++); install one (e.g. `apt-get install g++`) "
        "to use method='native'. The other methods do not need it."
    )


def _jaxlib_include() -> tuple[str | None, str]:
    """(include dir, jaxlib version) without importing jax; (None, "none") when jaxlib is absent."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return None, "none"
    include = Path(next(iter(spec.submodule_search_locations))) / "include"  # what jax.ffi.include_dir() returns
    if not (include / "xla" / "ffi" / "api" / "ffi.h").is_file():
        return None, "no-headers"
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return str(include), version


def _cpu_fingerprint() -> str:
    """The CPU's model and instruction-set flags (Linux ``/proc/cpuinfo``), or what ``platform`` knows elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _command(cxx: str, include: str | None, output: Path, tuned: bool = True) -> list[str]:
    """The library as one compiler call (every source one translation unit): what :func:`_jobs` splits up."""
    cmd = [cxx, *FLAGS, *(CPU_FLAGS if tuned else ())]
    if include is not None:
        # -isystem: the XLA headers' own warnings are not ours to fix.
        cmd += ["-DLINREC_WITH_XLA_FFI", "-isystem", include]
    return [*cmd, *(str(source) for source in _sources()), "-o", str(output)]


def _jobs(cxx: str, include: str | None, output: Path, objects: Path, tuned: bool = True
          ) -> tuple[list[list[str]], list[str]]:
    """``(compile commands, link command)``: one object per :data:`SCAN_PARTS` entry and per other source, written
    into the directory ``objects``, compiled in parallel, then linked into ``output``."""
    base = _command(cxx, include, output, tuned)[:-len(_sources()) - 2]
    base.remove("-shared")
    scan, *others = _sources()
    units = [(scan, [f"-DLINREC_PARTS={mask}"]) for mask in SCAN_PARTS] + [(source, []) for source in others]
    compiles, names = [], []
    for i, (source, defines) in enumerate(units):
        names.append(str(objects / f"{i}-{source.stem}.o"))
        compiles.append([*base, *defines, "-c", str(source), "-o", names[-1]])
    return compiles, [cxx, "-shared", "-pthread", *names, "-o", str(output)]


def _run_parallel(commands: list[list[str]], timeout: float) -> subprocess.CompletedProcess:
    """Run ``commands`` at once; the first failure's result (else the last command's). Kills the rest on timeout."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in commands]
    results = []
    try:
        for cmd, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return next((r for r in results if r.returncode != 0), results[-1])


def objects_dir(root: Path | None = None) -> Path:
    """Where the compiled objects of the cache ``root`` (default :func:`cache_root`) are kept."""
    return (cache_root() if root is None else root) / "native" / "objects"


def _object_name(command: list[str], key: dict[str, Any]) -> str:
    """An object's name in :func:`objects_dir`: the hash of its compile command (the source by its bytes, not its
    path, and without the output path) and of what the command depends on besides (compiler, CPU, jaxlib)."""
    source = Path(command[command.index("-c") + 1])
    parts = {
        "command": [*command[:command.index("-c")], *command[command.index("-c") + 2:-2]],
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        **{field: key[field] for field in ("layout", "abi", "compiler", "compiler_version", "cpu_sha256", "jaxlib")},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24] + ".o"


def _keep_object(built: Path, store: Path, name: str) -> None:
    """Copy a freshly compiled object into the store (atomically); a store that cannot be written is skipped."""
    try:
        store.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".object-", dir=store)
        os.close(fd)
        try:
            shutil.copyfile(built, tmp)
            os.replace(tmp, store / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # the objects only save time; the library is complete without them


def copy_objects(into: Path, root: Path | None = None) -> int:
    """Seed the cache ``into`` with the objects of the cache ``root`` (default :func:`cache_root`); how many.

    Hard links where the file system allows (objects are never written in place), copies elsewhere."""
    source, target = objects_dir(root), objects_dir(into)
    if not source.is_dir():
        return 0
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for obj in source.glob("*.o"):
        if (target / obj.name).exists():
            continue
        try:
            os.link(obj, target / obj.name)
        except OSError:
            shutil.copyfile(obj, target / obj.name)
        count += 1
    return count


def _compile_and_link(cxx: str, include: str | None, output: Path, tuned: bool, key: dict[str, Any],
                      reuse: bool = True) -> tuple[list[str], subprocess.CompletedProcess]:
    """Compile the objects that are not cached (in parallel) and link them; ``(the failing or last command, its
    result)``. When the link fails with cached objects in it, they are dropped and everything is compiled."""
    objects = Path(tempfile.mkdtemp(prefix=".objects-", dir=output.parent))
    store = objects_dir()
    try:
        compiles, link = _jobs(cxx, include, output, objects, tuned)
        names = [_object_name(cmd, key) for cmd in compiles]
        reused = []
        for cmd, name in zip(compiles, names) if reuse else ():
            try:
                shutil.copyfile(store / name, cmd[-1])
                reused.append(name)
            except OSError:
                pass  # not cached (or unreadable): compiled below
        todo = [cmd for cmd, name in zip(compiles, names) if name not in reused]
        if todo:
            result = _run_parallel(todo, timeout=600)
            if result.returncode != 0:
                return result.args, result
            for cmd, name in zip(compiles, names):
                if name not in reused:
                    _keep_object(Path(cmd[-1]), store, name)
        result = subprocess.run(link, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 and reused:  # e.g. a damaged cached object: never trust it again
            for name in reused:
                (store / name).unlink(missing_ok=True)
            return _compile_and_link(cxx, include, output, tuned, key, reuse=False)
        return link, result
    finally:
        shutil.rmtree(objects, ignore_errors=True)


def _sources() -> tuple[Path, ...]:
    """The C++ sources of the library (read at call time: ``tools/mutants.py`` points ``SOURCE`` elsewhere)."""
    return (SOURCE, DENSE_SOURCE, DECODE_SOURCE)


@functools.cache
def _compiler_version(cxx: str) -> str:
    """``cxx --version`` (asked once per process: every backend import computes the cache key)."""
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise NativeBuildError(f"the C++ compiler {cxx} does not run: {err}") from err


def _key() -> dict[str, Any]:
    """What the library depends on: the stamp records it and the cache directory is named by its hash."""
    cxx = _compiler()
    include, jaxlib_version = _jaxlib_include()
    version = _compiler_version(cxx)
    digest = hashlib.sha256()
    for path in _sources():
        try:
            digest.update(path.read_bytes())
        except OSError as err:
            raise NativeBuildError(f"the kernel source {path} cannot be read ({err}); reinstall linrec") from err
    parts = {
        "layout": CACHE_LAYOUT,
        "abi": ABI_VERSION,
        "source_sha256": digest.hexdigest(),
        "compiler": cxx,
        "compiler_version": version.strip(),
        "flags": " ".join(FLAGS + CPU_FLAGS),
        "cpu_sha256": hashlib.sha256(_cpu_fingerprint().encode()).hexdigest(),
        "jaxlib": jaxlib_version,
        "xla_ffi": include is not None,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"key": digest[:16], **parts}


def library_path() -> Path:
    """Where the library for the current source, compiler and jaxlib lives (it may not be built yet)."""
    return cache_root() / "native" / _key()["key"] / LIBRARY_NAME


def stamp_path(library: Path) -> Path:
    """The stamp (JSON) that vouches for ``library``: its key, ABI, flags, jaxlib, size and SHA-256."""
    return library.with_name(STAMP_NAME)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(library: Path, key: dict[str, Any] | None = None) -> str | None:
    """``None`` when ``library`` and its stamp match (key, ABI, size, SHA-256), else why not.

    Reads the whole file, so a library that verifies is exactly the one the stamp describes; only then may it be
    mapped (``dlopen`` of a truncated file can raise SIGBUS in the loader, which no Python code can catch).
    """
    key = _key() if key is None else key
    stamp_file = stamp_path(library)
    try:
        stamp = json.loads(stamp_file.read_text())
        size, sha = library.stat().st_size, _sha256(library)
    except (OSError, ValueError) as err:
        return f"cannot read {library} or its stamp {stamp_file.name}: {err}"
    if not isinstance(stamp, dict):
        return f"{stamp_file} is not a linrec stamp"
    for field in ("key", "abi", "source_sha256", "flags", "jaxlib", "xla_ffi"):
        if stamp.get(field) != key[field]:
            return f"{stamp_file} was written for {field}={stamp.get(field)!r}, this installation has {key[field]!r}"
    if stamp.get("size") != size or stamp.get("sha256") != sha:
        return (f"{library} is not the library its stamp records (size {size} bytes, sha256 {sha[:12]}…; "
                f"stamp: {stamp.get('size')} bytes, {str(stamp.get('sha256'))[:12]}…): it was truncated or replaced")
    return None


def _announce(directory: Path) -> None:
    """Say once per process that a build starts: it takes about a minute and would otherwise look like a hang."""
    global _announced
    if not _announced:
        _announced = True
        print(f"linrec: compiling the native CPU kernel into {directory} (once per machine and version, up to "
              f"a minute); `python -m linrec.backends.native.build` does this ahead of time", file=sys.stderr,
              flush=True)


def build(force: bool = False) -> Path:
    """Compile the library unless a verified one is cached; return its path. Raises :class:`NativeBuildError`."""
    try:
        return _build(force)
    except NativeBuildError:
        raise
    except Exception as err:  # e.g. no home directory for the default cache: say what and why
        raise NativeBuildError(f"building the native kernel failed: {type(err).__name__}: {err}") from err


def _build(force: bool) -> Path:
    for source in _sources():
        if not source.is_file():
            raise NativeBuildError(f"the kernel source {source} is missing from this installation")
    key = _key()
    path = cache_root() / "native" / key["key"] / LIBRARY_NAME

    def cached() -> bool:
        if force or not stamp_path(path).exists():
            return False  # no stamp: never built, or a build was interrupted before its stamp; build it
        problem = verify(path, key)
        if problem is not None:
            raise NativeBuildError(f"the cached native kernel is corrupt: {problem}. Delete {path.parent} or "
                                   f"rebuild with `python -m linrec.backends.native.build --force`")
        return True

    if cached():  # a read-only cache still serves a library that verifies
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path.parent / ".lock"):
            if cached():  # another process built it while we waited
                return path
            _compile(key, path)
    except OSError as err:
        raise NativeBuildError(
            f"cannot write the native kernel cache {path.parent} ({type(err).__name__}: {err}); set LINREC_CACHE "
            "to a writable directory"
        ) from err
    return path


def _compile(key: dict[str, Any], path: Path) -> None:
    """Compile into a temporary name, then rename the library and its stamp into place (the caller holds the lock)."""
    cxx = _compiler()
    include, _ = _jaxlib_include()
    _announce(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=path.parent)
    os.close(fd)
    tmp_stamp = Path(tmp).with_suffix(".json")
    try:
        tuned = True
        try:
            cmd, result = _compile_and_link(cxx, include, Path(tmp), tuned, key)
            if result.returncode != 0:  # e.g. a compiler without -march=native: the portable build
                tuned = False
                cmd, result = _compile_and_link(cxx, include, Path(tmp), tuned, key)
        except subprocess.SubprocessError as err:
            raise NativeBuildError(f"compiling the native kernel failed: {err}") from err
        if result.returncode != 0:
            raise NativeBuildError(
                f"compiling the native kernel failed ({' '.join(cmd)}):\n{result.stderr.strip()[-4000:]}"
            )
        flags = _command(cxx, include, Path(tmp), tuned)[:-len(_sources()) - 2]
        stamp = {**key, "tuned": tuned, "command": flags, "size": os.path.getsize(tmp), "sha256": _sha256(Path(tmp))}
        tmp_stamp.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
        stamp_path(path).unlink(missing_ok=True)  # (force) no moment where an old stamp vouches for a new library
        os.replace(tmp, path)  # atomic: readers see no file or a complete one
        os.replace(tmp_stamp, stamp_path(path))  # last: a stamp means the library beside it is complete
    finally:
        for leftover in (tmp, tmp_stamp):
            if os.path.exists(leftover):
                os.unlink(leftover)


class _file_lock:
    """An exclusive advisory lock on ``path`` (a no-op where ``fcntl`` does not exist)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for name in ("linrec_abi_version", "linrec_has_ffi", "linrec_num_threads"):
        getattr(lib, name).argtypes = []
        getattr(lib, name).restype = c_int
    lib.linrec_scan_fwd.argtypes = [c_int, c_int, i64, i64, i64, i64, ptr, ptr, ptr, ptr, c_int, ptr, ptr]
    lib.linrec_scan_fwd.restype = c_int
    lib.linrec_scan_bwd.argtypes = [c_int, c_int, i64, i64, i64, i64, ptr, ptr, ptr, ptr, i64, ptr, ptr, c_int,
                                    c_int, ptr, ptr, ptr]
    lib.linrec_scan_bwd.restype = c_int
    lib.linrec_mingru_fwd.argtypes = [c_int, i64, i64, i64, c_int, ptr, ptr, ptr, ptr]
    lib.linrec_mingru_fwd.restype = c_int
    lib.linrec_mingru_bwd.argtypes = [c_int, i64, i64, i64, c_int, ptr, ptr, ptr, ptr, i64, ptr, ptr, ptr]
    lib.linrec_mingru_bwd.restype = c_int
    lib.linrec_glr_fwd.argtypes = [c_int, i64, i64, i64, c_int, ptr, ptr, c_int, ptr, ptr, ptr]
    lib.linrec_glr_fwd.restype = c_int
    lib.linrec_glr_bwd.argtypes = [c_int, i64, i64, i64, c_int, ptr, ptr, ptr, ptr, i64, ptr, c_int, ptr, ptr]
    lib.linrec_glr_bwd.restype = c_int
    lib.linrec_gmh_chunk.argtypes = []
    lib.linrec_gmh_chunk.restype = c_int
    lib.linrec_gmh_fwd.argtypes = [c_int, c_int, c_int, c_int, i64, i64, i64, i64, i64, i64, *[ptr] * 8]
    lib.linrec_gmh_fwd.restype = c_int
    lib.linrec_gmh_bwd.argtypes = [c_int, c_int, c_int, c_int, i64, i64, i64, i64, i64, i64, *[ptr] * 12]
    lib.linrec_gmh_bwd.restype = c_int
    for name in ("linrec_dense_panel", "linrec_dense_max_rows"):
        getattr(lib, name).argtypes = []
        getattr(lib, name).restype = c_int
    lib.linrec_dense_packed_size.argtypes = [i64, i64]
    lib.linrec_dense_packed_size.restype = i64
    lib.linrec_dense.argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr]
    lib.linrec_dense.restype = c_int
    lib.linrec_dense_rows.argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr]
    lib.linrec_dense_rows.restype = c_int
    lib.linrec_decode_run.argtypes = [ptr, i64, ptr, i64]
    lib.linrec_decode_run.restype = c_int


def _open(path: Path) -> ctypes.CDLL:
    """``dlopen`` a verified library and check that it is ours: every symbol present, the expected ABI."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        raise NativeBuildError(f"cannot load {path}: {err}") from err
    missing = [name for name in SYMBOLS if not hasattr(lib, name)]
    if missing:
        raise NativeBuildError(f"{path} is not a linrec kernel library (missing {', '.join(missing)})")
    _declare(lib)
    if lib.linrec_abi_version() != ABI_VERSION:
        raise NativeBuildError(f"{path} has ABI {lib.linrec_abi_version()}, expected {ABI_VERSION}")
    return lib


def load() -> ctypes.CDLL:
    """The loaded library (building it on first use). Raises :class:`NativeBuildError` with the reason.

    Once loaded (or failed), the answer is read without the lock, so tracers that cannot enter a lock
    (``torch.compile``'s dynamo) can call this on the hot path.
    """
    global _lib, _error
    if _lib is not None:
        return _lib
    if _error is not None:
        raise NativeBuildError(_error)
    with _lock:
        if _lib is not None:
            return _lib
        if _error is not None:
            raise NativeBuildError(_error)
        try:
            lib = _open(build())
        except NativeBuildError as err:
            _error = str(err)
            raise
        except Exception as err:  # any failure here is the documented fallback, with its reason
            _error = f"{type(err).__name__}: {err}"
            raise NativeBuildError(_error) from err
        _lib = lib
        return lib


def available() -> bool:
    """Whether the kernel is (or can now be) built and loaded."""
    try:
        load()
    except NativeBuildError:
        return False
    return True


def build_error() -> str | None:
    """Why the kernel is unavailable, or ``None`` when it loads."""
    try:
        load()
    except NativeBuildError as err:
        return str(err)
    return None


def main() -> int:
    try:
        path = build(force="--force" in sys.argv[1:])
        lib = load()
    except NativeBuildError as err:
        print(f"linrec native kernel unavailable: {err}", file=sys.stderr)
        return 1
    print(path)
    print(f"xla_ffi={bool(lib.linrec_has_ffi())} threads={lib.linrec_num_threads()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
