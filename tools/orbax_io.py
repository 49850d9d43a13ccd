"""Orbax checkpoints: read the NNX state an Orbax checkpoint directory holds, write one atomically.

What Flax NNX users save, and what is read here (names are the NNX state paths joined with ``.``, the
``flax`` names of the layout table):

- ``ocp.StandardCheckpointer().save(dir, nnx.state(model))`` (or the state half of ``nnx.split(model)``, or
  ``nnx.state(model, nnx.Param)``): every leaf path ends in the Variable's ``value``, which is dropped;
  RNG streams (an ``nnx.Rngs`` inside the model: ``<stream>.key`` and ``<stream>.count``, integer/key data)
  are state, not parameters, and are skipped.
- ``nnx.to_pure_dict(state)`` saved as a plain pytree (no ``value`` level), or a Linen-style
  ``{"params": ...}`` tree (the lone ``params`` collection is unwrapped).
- ``ocp.PyTreeCheckpointer`` checkpoints (the same on-disk layout), and a ``CheckpointManager`` step or item
  directory: ``dir`` may be the checkpoint itself, a step directory holding one item (``dir/default``), or a
  manager directory holding one step (with several steps, the error lists them: pass one).

Written: the full ``nnx.state`` of the linrec NNX module (parameters and RNG streams), exactly what
``StandardCheckpointer().save(dir, nnx.state(model))`` writes, so ``checkpointer.restore(dir,
nnx.state(abstract_model))`` restores it; the model type and config go in Orbax's ``custom_metadata``.
The directory is written as a temporary sibling and renamed into place on success (see :func:`write_orbax`).

Orbax (and with it JAX) is imported only when a checkpoint is read or written: ``pip install 'linrec[orbax]'``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from linrec.tools.formats import FLOAT_DTYPES, flatten
from linrec.tools.safetensors_io import CheckpointError

__all__ = ["MAX_ARRAY_ELEMENTS", "MAX_TOTAL_BYTES", "METADATA_FILE", "find_checkpoint", "is_orbax_dir", "read_orbax",
           "read_orbax_metadata", "write_orbax"]

#: The file every Orbax PyTree checkpoint directory holds (the tree structure and array metadata).
METADATA_FILE = "_METADATA"
_VALUE_KEYS = ("value", "raw_value")  # the Variable field an NNX state leaf is saved under (old flax: raw_value)
_RNG_LEAVES = ("key", "count")
_ORBAX_TMP = re.compile(r".*\.orbax-checkpoint-tmp-.*")
#: A checkpoint whose metadata declares an array of more elements than this (2**36: 256 GiB of float32) is
#: refused before any array is read: such sizes come from a corrupt or hostile file, never from a linrec model.
MAX_ARRAY_ELEMENTS = 2**36
#: ... and so is one declaring more bytes than this in all its arrays together (2**40: 1 TiB).
MAX_TOTAL_BYTES = 2**40


def _ocp():
    """``orbax.checkpoint``, imported on first use, with an ImportError naming the extra."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:
        raise ImportError(f"reading/writing Orbax checkpoints needs orbax-checkpoint: pip install "
                          f"'linrec[orbax]' ({err})") from err
    return ocp


def is_orbax_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory that is (or holds, see :func:`find_checkpoint`) an Orbax checkpoint."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        find_checkpoint(path)
    except CheckpointError:
        return False
    return True


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory (the one holding ``_METADATA``) at or under ``path``.

    Looks two levels down at most (manager directory -> step -> item), following a single candidate only;
    several candidates are an error naming them. Orbax's unfinished ``*.orbax-checkpoint-tmp-*`` directories
    are never candidates.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (an Orbax checkpoint is a directory); for a file, "
                              "name its format with --from")
    here = path
    for _ in range(3):
        if (here / METADATA_FILE).is_file():
            return here
        try:
            children = sorted(p for p in here.iterdir() if p.is_dir() and not _ORBAX_TMP.fullmatch(p.name))
        except OSError as err:
            raise CheckpointError(f"{path}: cannot list the directory ({err})") from None
        candidates = [c for c in children if _holds_checkpoint(c)]
        if len(candidates) > 1:
            names = ", ".join(str(c) for c in candidates[:10])
            raise CheckpointError(f"{path}: holds several Orbax checkpoints ({names}); pass one of them")
        if not candidates:
            break
        here = candidates[0]
    raise CheckpointError(f"{path}: not an Orbax checkpoint (no {METADATA_FILE} file in it or in a single "
                          "step/item subdirectory)")


def _holds_checkpoint(path: Path, depth: int = 2) -> bool:
    if (path / METADATA_FILE).is_file():
        return True
    if depth == 0:
        return False
    try:
        return any(_holds_checkpoint(c, depth - 1) for c in path.iterdir()
                   if c.is_dir() and not _ORBAX_TMP.fullmatch(c.name))
    except OSError:
        return False


def _metadata(ckpt_dir: Path) -> tuple[Any, dict]:
    """``(tree of array metadata, custom metadata dict)``; any failure is a ``CheckpointError``."""
    ocp = _ocp()
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            meta = checkpointer.metadata(ckpt_dir)
    except Exception as err:  # orbax raises many types (ValueError, FileNotFoundError, JSON errors, ...)
        raise CheckpointError(f"{ckpt_dir}: not a readable Orbax checkpoint: {type(err).__name__}: "
                              f"{_first_line(err)}") from None
    item = getattr(meta, "item_metadata", meta)
    tree = getattr(item, "tree", item)
    custom = getattr(meta, "custom_metadata", None) or {}
    if not isinstance(tree, Mapping):
        raise CheckpointError(f"{ckpt_dir}: not a readable Orbax checkpoint: its {METADATA_FILE} describes a "
                              f"{type(tree).__name__}, not a tree of arrays")
    return tree, dict(custom) if isinstance(custom, Mapping) else {}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:500] if text else ""


def _leaf_names(tree: Mapping, where: str) -> dict[str, tuple[str, Any]]:
    """Stored leaf path (joined with ``.``) -> ``(parameter name, metadata)``, RNG state dropped.

    The ``value`` level of NNX Variables is dropped when every leaf has it; a lone Linen-style ``params``
    collection is unwrapped.
    """
    flat = flatten(tree, what=where)
    if flat and all(k.rsplit(".", 1)[-1] in _VALUE_KEYS and "." in k for k in flat):
        names = {k: k.rsplit(".", 1)[0] for k in flat}
    else:
        names = {k: k for k in flat}
    tops = {n.split(".", 1)[0] for n in names.values()}
    if tops == {"params"}:
        names = {k: n.split(".", 1)[1] for k, n in names.items()}
    out = {}
    for key, name in names.items():
        meta = flat[key]
        if name.rsplit(".", 1)[-1] in _RNG_LEAVES and _dtype_name(meta) not in FLOAT_DTYPES:
            continue  # an RNG stream's key or counter: state of an nnx.Rngs, not a parameter
        out[key] = (name, meta)
    return out


def _dtype_name(meta: Any) -> str:
    dtype = getattr(meta, "dtype", None)
    try:
        return np.dtype(dtype).name if dtype is not None else type(meta).__name__
    except TypeError:
        return str(dtype)


def _shape(meta: Any, name: str, where: str) -> tuple[int, ...]:
    shape = getattr(meta, "shape", None)
    if not (isinstance(shape, (tuple, list)) and len(shape) <= 64
            and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise CheckpointError(f"{where}: {name!r} is a {type(meta).__name__} without a valid array shape "
                              f"({shape!r}); parameters are arrays")
    return tuple(int(d) for d in shape)


def _check_sizes(tree: Mapping, where: str) -> None:
    """Refuse metadata declaring absurd sizes (:data:`MAX_ARRAY_ELEMENTS` per array, :data:`MAX_TOTAL_BYTES` in
    all) before anything is read. Every leaf counts, RNG state included (it is restored too)."""
    total = 0
    for key, meta in flatten(tree, what=where).items():
        if getattr(meta, "shape", None) is None:
            continue  # not an array (a scalar or string leaf)
        count = math.prod(_shape(meta, key, where))
        if count > MAX_ARRAY_ELEMENTS:
            raise CheckpointError(f"{where}: {key!r} declares shape {_shape(meta, key, where)} ({count} elements), "
                                  f"more than the {MAX_ARRAY_ELEMENTS} (2**36) any array may have; corrupt or "
                                  "hostile metadata, nothing was read")
        try:
            itemsize = np.dtype(meta.dtype).itemsize
        except (TypeError, AttributeError):
            itemsize = 16  # a PRNG key or other non-NumPy dtype: counted generously
        total += count * itemsize
        if total > MAX_TOTAL_BYTES:
            raise CheckpointError(f"{where}: its arrays declare more than {MAX_TOTAL_BYTES} bytes (2**40) in all "
                                  f"(reached at {key!r}); corrupt or hostile metadata, nothing was read")


def read_orbax_metadata(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Parameter name -> a zero-cost placeholder array of the stored shape and dtype, and the linrec info.

    Nothing but metadata is read, so a checkpoint can be checked against a model before its data is
    loaded. The info is ``{"model_type", "config", "spec_version", "version"}`` from linrec's custom metadata
    (each ``None`` if absent).
    """
    ckpt_dir = find_checkpoint(path)
    tree, custom = _metadata(ckpt_dir)
    where = str(ckpt_dir)
    _check_sizes(tree, where)
    placeholders = {}
    for key, (name, meta) in _leaf_names(tree, where).items():
        shape = _shape(meta, key, where)
        try:
            dtype = np.dtype(meta.dtype)
        except (TypeError, AttributeError):
            raise CheckpointError(f"{where}: {key!r} has dtype {getattr(meta, 'dtype', None)!r}, not an array "
                                  "dtype") from None
        if name in placeholders:
            raise CheckpointError(f"{where}: two entries have the name {name!r}")
        placeholders[name] = np.broadcast_to(np.zeros((), dtype), shape)  # no memory for the shape
    return placeholders, _linrec_info(custom, where)


def _linrec_info(custom: Mapping, where: str) -> dict[str, Any]:
    info: dict[str, Any] = {"model_type": None, "config": None, "spec_version": None, "version": None}
    for key, field in (("linrec_spec_version", "spec_version"), ("linrec_version", "version")):
        if isinstance(custom.get(key), str):
            info[field] = custom[key]
    model_type = custom.get("model_type")
    if model_type is not None:
        if not isinstance(model_type, str):
            raise CheckpointError(f"{where}: the custom metadata 'model_type' is not a string")
        info["model_type"] = model_type
    config = custom.get("config")
    if config is not None:
        try:
            config = json.loads(config) if isinstance(config, str) else config
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{where}: the custom metadata 'config' is not valid JSON ({err})") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{where}: the custom metadata 'config' must be a JSON object")
        info["config"] = config
    return info


def read_orbax(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every parameter of the checkpoint as a NumPy array (bfloat16 as ``ml_dtypes.bfloat16``), flax names.

    Restored with ``restore_type=np.ndarray``: no device arrays, exact bytes. RNG state is skipped (it is not
    restored at all). Any failure is a ``CheckpointError``.
    """
    ocp = _ocp()  # first: without orbax the ImportError names the extra
    import jax

    ckpt_dir = find_checkpoint(path)
    tree, _ = _metadata(ckpt_dir)
    where = str(ckpt_dir)
    _check_sizes(tree, where)
    names = _leaf_names(tree, where)
    flat = flatten(tree, what=where)
    for key in names:
        _shape(flat[key], key, where)
    # restore every leaf as NumPy (the RNG leaves too: a partial restore is not in every orbax version;
    # they are small and dropped below)
    try:
        restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(ckpt_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except Exception as err:  # tensorstore/orbax raise many types for missing or corrupt data files
        raise CheckpointError(f"{where}: cannot read the Orbax checkpoint's arrays (truncated or corrupt?): "
                              f"{type(err).__name__}: {_first_line(err)}") from None
    values = flatten(restored, what=where) if isinstance(restored, Mapping) else {}
    out = {}
    for key, (name, meta) in names.items():
        value = values.get(key)
        if not isinstance(value, np.ndarray) and np.isscalar(value):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray) or value.shape != _shape(meta, key, where):
            raise CheckpointError(f"{where}: {key!r} did not restore as an array of shape {_shape(meta, key, where)}")
        out[name] = value
    return out


def write_orbax(path: str | os.PathLike, state: Any, *, custom_metadata: Mapping[str, Any] | None = None,
                force: bool = False) -> Path:
    """Write the pytree ``state`` (an ``nnx.State``) as an Orbax checkpoint directory at ``path``, atomically.

    Orbax writes into a fresh temporary sibling directory (``.NAME.XXXX.tmp``); on success it is renamed to
    ``path``. An existing ``path`` is refused unless ``force``; with ``force`` it is renamed away first, the new
    directory renamed in, then the old one deleted (two renames: no moment with a half-written ``path``, a
    brief one with none). On any error the temporary directory is removed and ``path`` is as it was.
    """
    ocp = _ocp()
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        new = tmp / path.name  # created by orbax, so its mode is the ordinary one (mkdtemp's is 0o700)
        # the synchronous Checkpointer with StandardCheckpointer's handler: the same files as
        # StandardCheckpointer().save, without a background thread outliving this call
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            checkpointer.save(new.absolute(), args=ocp.args.StandardSave(state),
                              custom_metadata=dict(custom_metadata or {}))
        if not (new / METADATA_FILE).is_file():
            raise CheckpointError(f"{path}: orbax finished without writing {METADATA_FILE}")
        if path.exists() or path.is_symlink():
            if not force:  # appeared while writing
                raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
            old = tmp / ".replaced"
            os.replace(path, old)
            try:
                os.replace(new, path)
            except BaseException:
                os.replace(old, path)  # put the old one back
                raise
        else:
            os.replace(new, path)  # fails rather than merge if a directory appeared meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
