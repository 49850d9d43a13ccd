"""Checkpoint files: read and write the three container formats as flat ``name -> np.ndarray`` dicts.

- ``linrec``: safetensors (``linrec.tools.safetensors_io``) with canonical names and the metadata
  ``linrec_format``, ``linrec_spec_version``, ``linrec_version``, ``model_type``, ``config`` (JSON).
- ``torch``: a ``state_dict`` saved by ``torch.save``. Read **only** with ``torch.load(weights_only=True)``,
  which refuses any pickled object that is not a tensor, a container or a number; such a file raises
  :class:`CheckpointError` and nothing in it runs.
- ``flax``: a nested dict serialised by ``flax.serialization.msgpack_serialize`` (the NNX state as a pure dict,
  or a linen variables dict; a top-level ``params`` collection is unwrapped on reading). Nested keys are
  joined with ``.``. Read with ``msgpack`` and a validating hook for flax's array records (not
  ``msgpack_restore``, which trusts the dtype and shape fields).

Every reader bounds the nesting (:data:`MAX_DEPTH`) and turns every malformed input into
:class:`CheckpointError` (``tests/test_fuzz_readers.py`` fuzzes all three).

Arrays are NumPy arrays; bfloat16 is ``ml_dtypes.bfloat16`` in every format. Every writer goes through
``atomic_write``: a temporary file renamed on success, so a failed write leaves no output file, and an
existing file is replaced only with ``force=True``.
"""

from __future__ import annotations

import io
import json
import math
import os
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

import linrec
from linrec.tools.safetensors_io import CheckpointError, atomic_write, read_safetensors, write_safetensors

__all__ = [
    "CONTAINERS",
    "EXTENSIONS",
    "FLOAT_DTYPES",
    "MAX_DEPTH",
    "CheckpointError",
    "flatten",
    "format_from_path",
    "read_flax",
    "read_linrec",
    "read_torch",
    "unflatten",
    "write_flax",
    "write_linrec",
    "write_torch",
]

#: The container formats (the originals' importers read one of these too). ``orbax`` is a directory
#: (``linrec.tools.orbax_io``), named like ``flax``.
CONTAINERS = ("linrec", "torch", "flax", "orbax")
#: File extension -> container format.
EXTENSIONS = {".safetensors": "linrec", ".pt": "torch", ".pth": "torch", ".bin": "torch", ".msgpack": "flax",
              ".flax": "flax"}
#: dtypes a parameter may have.
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
#: Value of the ``linrec_format`` metadata key this module writes and reads.
LINREC_FORMAT = "1"
_TORCH_WRAPPERS = ("state_dict", "model_state_dict", "model")
#: Deepest nesting of dicts/lists a checkpoint may have (real ones have fewer than ten levels).
MAX_DEPTH = 64


def format_from_path(path: str | os.PathLike) -> str:
    """The container format implied by the file extension (an existing directory: ``orbax``);
    ``CheckpointError`` for an unknown one."""
    if Path(path).is_dir():
        return "orbax"
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        known = ", ".join(f"{ext} ({fmt})" for ext, fmt in EXTENSIONS.items())
        raise CheckpointError(f"{path}: cannot tell the format from the extension {suffix!r}; known: {known}, "
                              "a directory (orbax); or name it with --from/--to")
    return EXTENSIONS[suffix]


def _require_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")


# --- nested <-> flat -----------------------------------------------------------------------------------------


def flatten(tree: Mapping, *, sep: str = ".", what: str = "checkpoint", max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a.b": x}``; keys become strings (list indices included).

    Keys must be strings or integers; nesting deeper than ``max_depth``, or two entries that flatten to one
    name (``{"a": {"b": x}, "a.b": y}``), raise :class:`CheckpointError` naming ``what``. The walk uses an
    explicit stack, so a hostile file cannot exhaust Python's recursion limit.
    """
    out: dict[str, Any] = {}
    stack: list[tuple[Any, str, int]] = [(tree, "", 0)]
    while stack:
        node, prefix, depth = stack.pop()
        if isinstance(node, (Mapping, list, tuple)):
            if depth >= max_depth:
                raise CheckpointError(f"{what}: nested deeper than {max_depth} levels (at {prefix[:200]!r})")
            if isinstance(node, Mapping):
                if not node and prefix:
                    continue  # empty collections (e.g. an empty NNX sub-state) hold no parameters
                items = list(node.items())
                bad = [k for k, _ in items if not isinstance(k, (str, int)) or isinstance(k, bool)]
                if bad:
                    raise CheckpointError(f"{what}: keys must be strings or integers; found the "
                                          f"{type(bad[0]).__name__} {reprlib.repr(bad[0])} under {prefix!r}")
            else:
                items = list(enumerate(node))
            # reversed, so the stack pops entries in their stored order
            stack.extend((value, f"{prefix}{sep}{key}" if prefix else str(key), depth + 1)
                         for key, value in reversed(items))
        else:
            if not prefix:
                raise CheckpointError(f"{what}: expected a nested dict of arrays, got a {type(node).__name__}")
            if prefix in out:
                raise CheckpointError(f"{what}: two entries have the name {prefix!r} once nested keys are joined "
                                      f"with {sep!r}")
            out[prefix] = node
    return out


def unflatten(flat: Mapping[str, Any], *, sep: str = ".") -> dict[str, Any]:
    """The inverse of :func:`flatten` (all keys strings)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(sep)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"name {key!r} nests under a tensor")
        node[parts[-1]] = value
    return out


def _check_arrays(tensors: Mapping[str, Any], path: Path) -> dict[str, np.ndarray]:
    """Every value must be an array (dtypes are checked against the model, where names are known)."""
    bad = [f"{name} (a {type(value).__name__})" for name, value in tensors.items()
           if not isinstance(value, np.ndarray) or value.dtype.kind in "OSUM"]
    if bad:
        raise CheckpointError(f"{path}: expected arrays only; found: {', '.join(bad)}")
    return dict(tensors)


# --- linrec safetensors ---------------------------------------------------------------------------------


def write_linrec(path: str | os.PathLike, params: Mapping[str, np.ndarray], *, model_type: str,
                 config: Mapping[str, Any], force: bool = False) -> Path:
    """Write canonical ``params`` with the linrec metadata (``config`` is the config as a JSON-able dict)."""
    metadata = {
        "linrec_format": LINREC_FORMAT,
        "linrec_spec_version": linrec.SPEC_VERSION,
        "linrec_version": linrec.__version__,
        "model_type": model_type,
        "config": json.dumps(dict(config), sort_keys=True),
    }
    return write_safetensors(path, params, metadata, force=force)


def read_linrec(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Canonical params and ``{"model_type", "config" (dict), "spec_version", "version"}`` (``None`` if absent).

    A plain safetensors file without linrec metadata reads as params with ``model_type``/``config`` ``None``.
    """
    path = Path(path)
    _require_file(path)
    tensors, metadata = read_safetensors(path)
    info: dict[str, Any] = {"model_type": metadata.get("model_type"), "config": None,
                            "spec_version": metadata.get("linrec_spec_version"),
                            "version": metadata.get("linrec_version")}
    if "config" in metadata:
        try:
            info["config"] = json.loads(metadata["config"])
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: the 'config' metadata is not valid JSON ({err})") from None
        if not isinstance(info["config"], dict):
            raise CheckpointError(f"{path}: the 'config' metadata must be a JSON object")
    fmt = metadata.get("linrec_format")
    if fmt is not None and fmt != LINREC_FORMAT:
        raise CheckpointError(f"{path}: linrec_format {fmt!r} is not supported by this version "
                              f"(reads {LINREC_FORMAT!r}); upgrade linrec")
    return _check_arrays(tensors, path), info


# --- torch state_dict --------------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - torch is part of the test environment
        raise ImportError(f"reading/writing .pt files needs torch: pip install 'linrec[torch]' ({err})") from err
    return torch


def tensor_to_numpy(value: Any) -> np.ndarray:
    """A torch tensor as a NumPy array of the same dtype (bfloat16 -> ``ml_dtypes.bfloat16``, exactly)."""
    torch = _torch()
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        return value.to(torch.float32).numpy().astype(ml_dtypes.bfloat16)
    return value.numpy().copy()


def numpy_to_tensor(value: np.ndarray):
    """A NumPy array (bfloat16 included) as a CPU tensor of the same dtype."""
    torch = _torch()
    value = np.asarray(value)
    if value.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(value.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(value, copy=True))


def read_torch(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``state_dict`` as NumPy arrays; only ``torch.load(weights_only=True)`` touches the file.

    Accepts a plain ``state_dict`` or a dict wrapping one under ``state_dict``/``model_state_dict``/``model``.
    """
    torch = _torch()
    path = Path(path)
    _require_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for foreign objects, RuntimeError for a broken zip, ...
        message = str(err)
        if "Weights only load failed" in message:
            lines = [ln.strip() for ln in message.splitlines() if "Unsupported" in ln or "WeightsUnpickler" in ln]
            why = lines[0] if lines else "it is not a plain state_dict"
            raise CheckpointError(
                f"{path}: refused to load: the file holds pickled Python objects that are not tensors, and "
                f"torch.load(weights_only=True) rejected them, so nothing in the file was run ({why}). "
                "linrec reads plain state_dicts only; re-save with torch.save(model.state_dict(), path)"
            ) from None
        first = message.strip().splitlines()[0] if message.strip() else ""
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): "
                              f"{type(err).__name__}: {first}") from None
    state = _state_dict_in(obj, path)
    tensors = {}
    bad = []
    for key, value in flatten(state, what=str(path)).items():
        if not isinstance(value, torch.Tensor):
            bad.append(f"{key} (a {type(value).__name__}, not a tensor)")
            continue
        try:  # dtypes are checked against the model, where names are known
            tensors[key] = tensor_to_numpy(value)
        except (TypeError, RuntimeError, ValueError) as err:  # sparse, quantized, float8, ... tensors
            bad.append(f"{key} (a {value.dtype} {value.layout} tensor NumPy cannot hold: {err})")
    if bad:
        raise CheckpointError(f"{path}: a state_dict must hold dense tensors only; found: {', '.join(bad)}")
    return tensors


def _state_dict_in(obj: Any, path: Path) -> Mapping:
    torch = _torch()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors), got a {type(obj).__name__}")
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    wrapped = [k for k in _TORCH_WRAPPERS if isinstance(obj.get(k), Mapping)]
    if len(wrapped) == 1:
        return obj[wrapped[0]]
    return obj  # the entry checks name whatever is not a floating tensor


def write_torch(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], *, force: bool = False) -> Path:
    """``torch.save`` a ``state_dict`` (an ``OrderedDict`` of tensors) atomically."""
    torch = _torch()
    from collections import OrderedDict

    state = OrderedDict((k, numpy_to_tensor(v)) for k, v in tensors.items())

    def write(fh):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        fh.write(buffer.getbuffer())

    return atomic_write(path, write, force=force)


# --- flax msgpack --------------------------------------------------------------------------------------


def _serialization():
    try:
        from flax import serialization
    except ImportError as err:  # pragma: no cover - flax is part of the test environment
        raise ImportError(f"reading/writing .msgpack files needs flax: pip install 'linrec[jax]' ({err})") from err
    return serialization


def _msgpack():
    try:
        import msgpack
    except ImportError as err:  # pragma: no cover - msgpack comes with flax
        raise ImportError(f"reading .msgpack files needs msgpack: pip install 'linrec[jax]' ({err})") from err
    return msgpack


#: msgpack extension codes of ``flax.serialization``.
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3
#: dtype names a flax array may carry (what ``msgpack_serialize`` writes for numeric arrays).
_FLAX_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint64",
                "uint32", "uint16", "uint8", "bool", "complex64", "complex128")
_CHUNKED = "__msgpack_chunked_array__"


def _flax_array(data: bytes) -> np.ndarray:
    """One ``(shape, dtype name, bytes)`` msgpack ext payload as an array, every field checked.

    ``flax.serialization.msgpack_restore`` trusts these fields (any NumPy dtype string, a shape that
    need not match the bytes); here they are validated and anything else is a ``CheckpointError``.
    """
    try:
        fields = _msgpack().unpackb(data, raw=True)
    except Exception as err:  # msgpack raises several types for corrupt input
        raise CheckpointError(f"corrupt array record ({type(err).__name__}: {err})") from None
    if not (isinstance(fields, (list, tuple)) and len(fields) == 3):
        raise CheckpointError("corrupt array record (not a (shape, dtype, bytes) triple)")
    shape, name, buffer = fields
    if not (isinstance(shape, (list, tuple)) and len(shape) <= 64
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise CheckpointError(f"corrupt array record (shape {reprlib.repr(shape)} is not a list of at most 64 "
                              "non-negative integers)")
    name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    if name not in _FLAX_DTYPES:
        raise CheckpointError(f"array of dtype {reprlib.repr(name)}; supported: {', '.join(_FLAX_DTYPES)}")
    dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    if not isinstance(buffer, bytes) or len(buffer) != math.prod(shape) * dtype.itemsize:
        size = len(buffer) if isinstance(buffer, bytes) else type(buffer).__name__
        raise CheckpointError(f"corrupt array record: a {name}{list(shape)} array needs "
                              f"{math.prod(shape) * dtype.itemsize} bytes, the record holds {size}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape).copy()


def _flax_ext(code: int, data: bytes) -> Any:
    if code == _EXT_NDARRAY:
        return _flax_array(data)
    if code == _EXT_NPSCALAR:
        return _flax_array(data)  # a 0-d array: read_flax wants arrays, not NumPy scalars
    what = "a complex Python scalar" if code == _EXT_COMPLEX else f"an unknown msgpack extension type {code}"
    raise CheckpointError(f"holds {what}, not an array")


def _unchunk(node: Mapping, where: str) -> np.ndarray:
    """flax splits arrays over 1 GiB into ``{"__msgpack_chunked_array__", "shape", "chunks"}``; join them."""
    shape, chunks = node.get("shape"), node.get("chunks")
    if not (isinstance(shape, Mapping) and isinstance(chunks, Mapping) and len(node) == 3):
        raise CheckpointError(f"{where}: corrupt chunked array record")
    try:
        dims = [shape[str(i)] for i in range(len(shape))]
        parts = [chunks[str(i)] for i in range(len(chunks))]
    except KeyError:
        raise CheckpointError(f"{where}: corrupt chunked array record (keys are not 0..n-1)") from None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims) or len(dims) > 64:
        raise CheckpointError(f"{where}: corrupt chunked array record (bad shape {reprlib.repr(dims)})")
    if not parts or not all(isinstance(p, np.ndarray) and p.ndim == 1 and p.dtype == parts[0].dtype
                            for p in parts):
        raise CheckpointError(f"{where}: corrupt chunked array record (chunks are not 1-D arrays of one dtype)")
    flat = np.concatenate(parts)
    if flat.size != math.prod(dims):
        raise CheckpointError(f"{where}: chunked array of shape {tuple(dims)} holds {flat.size} elements")
    return flat.reshape(dims)


def _join_chunks(tree: Any, where: str) -> Any:
    """Replace chunked-array records by arrays (iteratively; ``flatten`` bounds the depth afterwards)."""
    if isinstance(tree, Mapping) and tree.get(_CHUNKED) is True:
        return _unchunk(tree, where)
    stack = [tree]
    seen = 0
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        seen += 1
        if seen > 10_000_000:  # msgpack already bounds the depth; this bounds the total work
            raise CheckpointError(f"{where}: more than ten million nested records")
        for key, value in node.items():
            if isinstance(value, dict) and value.get(_CHUNKED) is True:
                node[key] = _unchunk(value, where)
            elif isinstance(value, dict):
                stack.append(value)
    return tree


def read_flax(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A msgpack'd nested dict, flattened with ``.``; a lone top-level ``params`` collection is unwrapped.

    Decoded with ``msgpack`` and a validating extension hook rather than ``flax.serialization.msgpack_restore``
    (same format, including flax's chunked arrays): array records are type- and size-checked, nesting is
    bounded, and every failure is a ``CheckpointError``.
    """
    msgpack = _msgpack()
    path = Path(path)
    _require_file(path)
    try:
        tree = msgpack.unpackb(path.read_bytes(), ext_hook=_flax_ext, raw=False, strict_map_key=False,
                               use_list=True)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: not a readable flax msgpack file: {err}") from None
    except Exception as err:  # msgpack raises several types for truncated/corrupt input, StackError if too deep
        raise CheckpointError(f"{path}: not a readable flax msgpack file (truncated or corrupt?): "
                              f"{type(err).__name__}: {err}") from None
    if not isinstance(tree, Mapping):
        raise CheckpointError(f"{path}: expected a nested dict of arrays, got a {type(tree).__name__}")
    tree = _join_chunks(tree, str(path))
    if "params" in tree and isinstance(tree["params"], Mapping):
        others = [k for k in tree if k != "params" and flatten({k: tree[k]}, what=str(path))]
        if others:
            raise CheckpointError(f"{path}: besides 'params' the file holds the collections {others}; linrec "
                                  "models have parameters only")
        tree = tree["params"]
    return _check_arrays(flatten(tree, what=str(path)), path)


def write_flax(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], *, force: bool = False) -> Path:
    """Serialise ``tensors`` (dotted names) as a nested dict with ``msgpack_serialize``, atomically."""
    serialization = _serialization()
    data = serialization.msgpack_serialize(unflatten({k: np.asarray(v) for k, v in tensors.items()}))
    return atomic_write(path, lambda fh: fh.write(data), force=force)
