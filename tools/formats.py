"""Checkpoint files: read and write the three container formats as flat ``name -> np.ndarray`` dicts.

- ``linrec``: safetensors (``linrec.tools.safetensors_io``) with canonical names and the metadata
  ``linrec_format``, ``linrec_spec_version``, ``linrec_version``, ``model_type``, ``config`` (JSON).
- ``torch``: a ``state_dict`` saved by ``torch.save``. Read **only** with ``torch.load(weights_only=True)``,
  which refuses any pickled object that is not a tensor, a container or a number; such a file raises
  :class:`CheckpointError` and nothing in it runs.
- ``flax``: a nested dict serialised by ``flax.serialization.msgpack_serialize`` (the NNX state as a pure dict,
  or a linen variables dict; a top-level ``params`` collection is unwrapped on reading). Nested keys are
  joined with ``.``.

Arrays are NumPy arrays; bfloat16 is ``ml_dtypes.bfloat16`` in every format. Every writer goes through
``atomic_write``: a temporary file renamed on success, so a failed write leaves no output file, and an
existing file is replaced only with ``force=True``.
"""

from __future__ import annotations

import io
import json
import os
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

#: The container formats (the originals' importers read one of these too).
CONTAINERS = ("linrec", "torch", "flax")
#: File extension -> container format.
EXTENSIONS = {".safetensors": "linrec", ".pt": "torch", ".pth": "torch", ".bin": "torch", ".msgpack": "flax",
              ".flax": "flax"}
#: dtypes a parameter may have.
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
#: Value of the ``linrec_format`` metadata key this module writes and reads.
LINREC_FORMAT = "1"
_TORCH_WRAPPERS = ("state_dict", "model_state_dict", "model")


def format_from_path(path: str | os.PathLike) -> str:
    """The container format implied by the file extension; ``CheckpointError`` for an unknown one."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        known = ", ".join(f"{ext} ({fmt})" for ext, fmt in EXTENSIONS.items())
        raise CheckpointError(f"{path}: cannot tell the format from the extension {suffix!r}; known: {known}; "
                              "or name it with --from/--to")
    return EXTENSIONS[suffix]


def _require_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")


# --- nested <-> flat -----------------------------------------------------------------------------------------


def flatten(tree: Mapping, *, sep: str = ".", what: str = "checkpoint") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a.b": x}``; keys become strings (list indices included)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            if not node and prefix:
                return  # empty collections (e.g. an empty NNX sub-state) hold no parameters
            for key, value in node.items():
                walk(value, f"{prefix}{sep}{key}" if prefix else str(key))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{prefix}{sep}{i}" if prefix else str(i))
        else:
            if not prefix:
                raise CheckpointError(f"{what}: expected a nested dict of arrays, got a {type(node).__name__}")
            out[prefix] = node

    walk(tree, "")
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
        if isinstance(value, torch.Tensor):
            tensors[key] = tensor_to_numpy(value)  # dtypes are checked against the model, where names are known
        else:
            bad.append(f"{key} (a {type(value).__name__}, not a tensor)")
    if bad:
        raise CheckpointError(f"{path}: a state_dict must hold tensors only; found: {', '.join(bad)}")
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


def read_flax(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A msgpack'd nested dict, flattened with ``.``; a lone top-level ``params`` collection is unwrapped."""
    serialization = _serialization()
    path = Path(path)
    _require_file(path)
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # msgpack raises several types for truncated/corrupt input
        raise CheckpointError(f"{path}: not a readable flax msgpack file (truncated or corrupt?): "
                              f"{type(err).__name__}: {err}") from None
    if not isinstance(tree, Mapping):
        raise CheckpointError(f"{path}: expected a nested dict of arrays, got a {type(tree).__name__}")
    if "params" in tree and isinstance(tree["params"], Mapping):
        others = [k for k in tree if k != "params" and flatten({k: tree[k]}, what=str(path))]
        if others:
            raise CheckpointError(f"{path}: besides 'params' the file holds the collections {others}; linrec "
                                  "models have parameters only")
        tree = tree["params"]
    flat = flatten(tree, what=str(path))
    flat = {k: (np.asarray(v) if isinstance(v, np.generic) else v) for k, v in flat.items()}
    return _check_arrays(flat, path)


def write_flax(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], *, force: bool = False) -> Path:
    """Serialise ``tensors`` (dotted names) as a nested dict with ``msgpack_serialize``, atomically."""
    serialization = _serialization()
    data = serialization.msgpack_serialize(unflatten({k: np.asarray(v) for k, v in tensors.items()}))
    return atomic_write(path, lambda fh: fh.write(data), force=force)
