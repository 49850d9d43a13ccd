"""Read and write safetensors files with NumPy only (bfloat16 included, via ml_dtypes).

The format: 8 bytes little-endian header length ``n``, ``n`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``), then
the raw little-endian tensor bytes. Written here rather than through ``safetensors.numpy``
because that cannot hold bfloat16 arrays, and because a reader that checks every offset against
the file size turns a lying header into a clear error instead of a crash or garbage.
Writes go to a temporary file that is renamed into place, so a failed write leaves nothing; the file gets
the permissions an ordinary write would (``0o666`` minus the umask), not ``mkstemp``'s ``0o600``.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from linrec.backends.numpy.arrays import np_dtype

__all__ = ["CheckpointError", "atomic_write", "current_umask", "read_safetensors", "write_safetensors"]

_TO_ST = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
          "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
          "complex64": "C64", "complex128": "C128"}
_FROM_ST = {v: k for k, v in _TO_ST.items()}
_MAX_HEADER = 100 * 1024 * 1024
_MAX_DIMS = 64  # NumPy's limit


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt, or does not match what was expected."""


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it, and the umask is process-global: between a set and the
    restore another thread creating a file would get the temporary value. Linux reports the umask in
    ``/proc/self/status`` (``Umask:`` line, kernel 4.7+), which reads it without a window; elsewhere the
    set-and-restore idiom is used, with the value ``0o077`` set meanwhile (the most restrictive common
    umask, so a file created by another thread in that instant is never more open than intended).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data_writer, *, force: bool = False) -> Path:
    """Call ``data_writer(file)`` on a temporary file next to ``path`` and rename it into place.

    Refuses to overwrite an existing ``path`` unless ``force``; on any error the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            data_writer(fh)
            fh.flush()
            # mkstemp makes the file 0o600; give it the mode an ordinary open() would (0o666 minus the umask)
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None, *, force: bool = False) -> Path:
    """Write ``tensors`` (name -> array) and string ``metadata`` atomically."""
    header: dict = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata values must be strings; not: {bad}")
        header["__metadata__"] = dict(metadata)
    offset, blobs = 0, []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        dtype = arr.dtype.name
        if dtype not in _TO_ST:
            raise TypeError(f"tensor {name!r} has dtype {dtype}, which safetensors cannot store")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _TO_ST[dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # align the data section to 8 bytes

    def write(fh):
        fh.write(struct.pack("<Q", len(head)))
        fh.write(head)
        for blob in blobs:
            fh.write(blob)

    return atomic_write(path, write, force=force)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON (safetensors headers hold finite numbers only)")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the key {dup!r} appears twice in one object")
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(head: bytes, path: Path) -> dict:
    """The header JSON as a dict; every way it can be malformed is a ``CheckpointError``."""
    try:
        # UTF-8 only (json.loads would also guess UTF-16/32); no NaN/Infinity; no duplicate keys
        header = json.loads(head.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    except RecursionError:  # the C scanner recurses once per nesting level
        raise CheckpointError(f"{path}: corrupt safetensors header (JSON nested too deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    return header


def _entry(name: str, info: object, path: Path) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """``(dtype, shape, begin, end)`` of one header entry, each field type-checked."""
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {reprlib.repr(info)} ({why})")

    if not isinstance(info, dict):
        raise bad("not a JSON object")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    st_dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(st_dtype, str) or st_dtype not in _FROM_ST:
        raise bad(f"dtype must be one of {', '.join(_FROM_ST)}")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise bad("shape must be a list of non-negative integers")
    if len(shape) > _MAX_DIMS:
        raise bad(f"{len(shape)} dimensions; at most {_MAX_DIMS}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise bad("data_offsets must be two integers [begin, end]")
    return np_dtype(_FROM_ST[st_dtype]), tuple(shape), offsets[0], offsets[1]


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor and the metadata; raise ``CheckpointError`` on any inconsistency.

    As strict as the reference implementation: the tensors must tile the data section exactly (no
    overlapping or aliased offsets, no gaps, no trailing bytes), ``__metadata__`` maps strings to strings,
    and shapes and offsets are non-negative JSON integers.
    """
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {len(raw)} bytes; truncated?)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > min(_MAX_HEADER, len(raw) - 8):
        raise CheckpointError(f"{path}: header claims {n} bytes but the file has {len(raw) - 8} after the length "
                              "field (truncated or not a safetensors file)")
    header = _parse_header(raw[8 : 8 + n], path)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must be a JSON object of strings, got {reprlib.repr(metadata)}")
    data = memoryview(raw)[8 + n :]
    entries = {name: _entry(name, info, path) for name, info in header.items()}
    # Each tensor must start where the previous one ends: overlapping or aliased offsets would hand two
    # names the same (or half the same) bytes, i.e. wrong weights, and the reference library refuses them.
    position, previous = 0, None
    for name, (dtype, shape, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        expected = math.prod(shape) * dtype.itemsize
        if not (0 <= begin <= end <= len(data)) or end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} {_TO_ST[dtype.name]}{list(shape)} needs {expected} bytes but the header "
                f"gives offsets [{begin}, {end}) in a data section of {len(data)} bytes (corrupt or truncated file)")
        if begin != position:
            what = f"tensor {previous!r} ends at byte {position}" if previous else "the data section starts at 0"
            raise CheckpointError(
                f"{path}: tensor {name!r} starts at byte {begin} but {what} (overlapping, aliased or gapped "
                "offsets: the tensors must tile the data section in order)")
        position, previous = end, name
    if position != len(data):
        raise CheckpointError(f"{path}: the tensors end at byte {position} but the data section has {len(data)} "
                              "bytes (trailing bytes; corrupt file)")
    tensors = {name: np.frombuffer(data[begin:end], dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
               for name, (dtype, shape, begin, end) in entries.items()}
    return tensors, dict(metadata)
