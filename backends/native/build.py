"""Compile ``linrec_scan.cc`` on first use into a per-user cache, and load it with ctypes.

The library lands in ``$LINREC_CACHE/native/<key>/`` (default ``~/.cache/linrec``, or ``$XDG_CACHE_HOME/linrec``),
where ``<key>`` hashes the source, the compiler (path and ``--version``), the flags and the jaxlib version, so an
edit, a compiler upgrade or a new jaxlib gets a fresh build and never a stale one. The compiler writes to a temporary
file that is then renamed into place: a concurrent process sees either no library or a complete one. An advisory
file lock (POSIX) keeps parallel test workers from compiling the same thing twice.

The XLA FFI handlers (for JAX) need the headers shipped with jaxlib (``jax.ffi.include_dir()``); they are located
without importing jax. Without jaxlib the library is built without them (``-DLINREC_WITH_XLA_FFI`` unset) and the
C functions still serve torch and NumPy.

``python -m linrec.backends.native.build`` builds eagerly and prints the path.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["ABI_VERSION", "NativeBuildError", "available", "build", "build_error", "library_path", "load"]

#: Must equal ``linrec_abi_version()`` in the C++ source.
ABI_VERSION = 3
SOURCE = Path(__file__).with_name("linrec_scan.cc")
LIBRARY_NAME = "liblinrec_scan.so"
#: IEEE semantics on purpose: no -ffast-math (it would reassociate the sums and break the tolerances).
#: -fno-trapping-math changes no result (nothing reads floating-point exception flags); it lets GCC turn the
#: selects of the fused gate loops into vector blends instead of branches.
FLAGS = ("-std=c++17", "-O3", "-fno-trapping-math", "-fPIC", "-shared", "-pthread")
#: The vector width of this CPU (AVX2 where there is one: the fused gate kernels are compute-bound and ran ~2x
#: faster than with the SSE2 baseline), without fused multiply-adds, so results stay those of separate IEEE
#: multiplies and adds on every machine. The CPU is part of the cache key; a compiler that rejects these flags
#: gets a build without them.
CPU_FLAGS = ("-march=native", "-ffp-contract=off")


class NativeBuildError(RuntimeError):
    """The native kernel could not be built or loaded; the message says what is missing."""


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None


def _cache_root() -> Path:
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
    cmd = [cxx, *FLAGS, *(CPU_FLAGS if tuned else ())]
    if include is not None:
        # -isystem: the XLA headers' own warnings are not ours to fix.
        cmd += ["-DLINREC_WITH_XLA_FFI", "-isystem", include]
    return [*cmd, str(SOURCE), "-o", str(output)]


def library_path() -> Path:
    """Where the library for the current source, compiler and jaxlib lives (it may not be built yet)."""
    cxx = _compiler()
    include, jaxlib_version = _jaxlib_include()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise NativeBuildError(f"the C++ compiler {cxx} does not run: {err}") from err
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), cxx.encode(), version.encode(), " ".join(FLAGS + CPU_FLAGS).encode(),
                 _cpu_fingerprint().encode(), f"jaxlib={jaxlib_version} ffi={include is not None}".encode()):
        key.update(part)
        key.update(b"\0")
    return _cache_root() / "native" / key.hexdigest()[:16] / LIBRARY_NAME


def build(force: bool = False) -> Path:
    """Compile the library unless an up-to-date one is cached; return its path. Raises :class:`NativeBuildError`."""
    if not SOURCE.is_file():
        raise NativeBuildError(f"the kernel source {SOURCE} is missing from this installation")
    path = library_path()
    if path.is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.parent / ".lock"):
        if path.is_file() and not force:  # another process built it while we waited
            return path
        cxx = _compiler()
        include, _ = _jaxlib_include()
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            cmd = _command(cxx, include, Path(tmp))
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:  # e.g. a compiler without -march=native: the portable build
                cmd = _command(cxx, include, Path(tmp), tuned=False)
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise NativeBuildError(
                    f"compiling the native kernel failed ({' '.join(cmd)}):\n{result.stderr.strip()[-4000:]}"
                )
            os.replace(tmp, path)  # atomic: readers see no file or a complete one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


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
    lib.linrec_scan_bwd.argtypes = [c_int, c_int, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, c_int, c_int,
                                    ptr, ptr, ptr]
    lib.linrec_scan_bwd.restype = c_int
    lib.linrec_mingru_fwd.argtypes = [c_int, i64, i64, i64, c_int, ptr, ptr, ptr, ptr]
    lib.linrec_mingru_fwd.restype = c_int
    lib.linrec_mingru_bwd.argtypes = [c_int, i64, i64, i64, c_int, ptr, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.linrec_mingru_bwd.restype = c_int
    lib.linrec_glr_fwd.argtypes = [c_int, i64, i64, i64, c_int, ptr, ptr, c_int, ptr, ptr, ptr]
    lib.linrec_glr_fwd.restype = c_int
    lib.linrec_glr_bwd.argtypes = [c_int, i64, i64, i64, c_int, ptr, ptr, ptr, ptr, ptr, c_int, ptr, ptr]
    lib.linrec_glr_bwd.restype = c_int


def load() -> ctypes.CDLL:
    """The loaded library (building it on first use). Raises :class:`NativeBuildError` with the reason."""
    global _lib, _error
    with _lock:
        if _lib is not None:
            return _lib
        if _error is not None:
            raise NativeBuildError(_error)
        try:
            path = build()
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as err:
                raise NativeBuildError(f"cannot load {path}: {err}") from err
            _declare(lib)
            if lib.linrec_abi_version() != ABI_VERSION:
                raise NativeBuildError(f"{path} has ABI {lib.linrec_abi_version()}, expected {ABI_VERSION}")
        except NativeBuildError as err:
            _error = str(err)
            raise
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
