"""Read and write safetensors files with NumPy only (bfloat16 included, via ml_dtypes).

The format: 8 bytes little-endian header length ``n``, ``n`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``), then
the raw little-endian tensor bytes. Written here rather than through ``safetensors.numpy``
because that cannot hold bfloat16 arrays, and because a reader that checks every offset against
the file size turns a lying header into a clear error instead of a crash or garbage.
Writes go to a temporary file that is renamed into place, so a failed write leaves nothing.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from linrec.backends.numpy.arrays import np_dtype

__all__ = ["CheckpointError", "atomic_write", "read_safetensors", "write_safetensors"]

_TO_ST = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
          "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
          "complex64": "C64", "complex128": "C128"}
_FROM_ST = {v: k for k, v in _TO_ST.items()}
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt, or does not match what was expected."""


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


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor and the metadata; raise ``CheckpointError`` on any inconsistency."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {len(raw)} bytes; truncated?)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > min(_MAX_HEADER, len(raw) - 8):
        raise CheckpointError(f"{path}: header claims {n} bytes but the file has {len(raw) - 8} after the length "
                              "field (truncated or not a safetensors file)")
    try:
        header = json.loads(raw[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    data = memoryview(raw)[8 + n :]
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = np_dtype(_FROM_ST[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not (0 <= begin <= end <= len(data)) or end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} {info['dtype']}{list(shape)} needs {expected} bytes but the header gives "
                f"offsets [{begin}, {end}) in a data section of {len(data)} bytes (corrupt or truncated file)")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    return tensors, {str(k): str(v) for k, v in metadata.items()}
