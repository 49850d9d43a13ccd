"""Weight conversion: read any supported checkpoint into canonical parameters, write it in any format.

Python API::

    from linrec.tools.convert import convert, load, save, inspect
    convert("glrnn.msgpack", "glrnn.safetensors", src_format="gated-linear-rnn")   # an original's file
    convert("glrnn.safetensors", "glrnn.pt")                                        # linrec -> torch state_dict
    model = load("glrnn.safetensors", backend="torch")                              # a ready nn.Module
    config, params = load("glrnn.safetensors", backend="numpy")
    save(model, "copy.msgpack")                                                     # NNX state dict (flax)
    info = inspect("glrnn.safetensors")

Command line (wired into ``linrec`` as ``convert`` and ``inspect``)::

    linrec convert SRC DST [--from F] [--to F] [--model M] [--config JSON|FILE] [--dtype D] [--force]
    linrec inspect FILE [--from F] [--model M] [--config JSON|FILE] [--json]

Formats: ``linrec`` (``.safetensors``, canonical names + config metadata), ``torch`` (``.pt``/``.pth``/``.bin``
state_dict of the linrec ``nn.Module``), ``flax`` (``.msgpack``/``.flax``, the NNX state as a nested dict),
``orbax`` (a checkpoint directory holding the NNX state, ``linrec.tools.orbax_io``; an existing directory is
read as one, a new one needs ``format="orbax"``), and,
as sources, the originals by name (``linrec.tools.originals.ORIGINALS``). The renaming between formats is the
declarative table of ``linrec.tools.layout`` (``spec/layout.md``). Files without a config (torch, flax,
originals) need ``model`` (except originals, which know theirs); every config field the tensor shapes
determine is inferred, the others come from ``config`` or take their defaults (listed in the summary's notes).

Safety: ``.pt`` files are read only with ``torch.load(weights_only=True)``; every output is written to a
temporary file (or directory) and renamed on success (no output on any error); an existing output is replaced only
with ``force=True`` (``--force``). Missing, unexpected and misshapen tensors are reported together in one
``CheckpointError``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect as _inspect
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from linrec.tools import formats
from linrec.tools.formats import CONTAINERS, FLOAT_DTYPES, CheckpointError
from linrec.tools.layout import (
    LAYOUTS,
    Layout,
    LayoutError,
    config_from_dict,
    config_to_dict,
    from_names,
    get_layout,
    match,
    model_names,
    to_names,
)

__all__ = [
    "PROGRESS_MIN_BYTES",
    "Checkpoint",
    "CheckpointError",
    "Summary",
    "build_config",
    "check_params",
    "convert",
    "convert_main",
    "inspect",
    "inspect_main",
    "load",
    "module_to_checkpoint",
    "read",
    "save",
    "to_module",
    "write",
]

#: The progress line appears for checkpoints of at least this many bytes.
PROGRESS_MIN_BYTES = 64 * 1024 * 1024


@dataclass
class Checkpoint:
    """Canonical parameters with their model type and config, read from (or to be written to) a file.

    ``notes`` says what the source could not tell (options that took defaults) and what an importer
    assumed; ``source_format`` is where it came from.
    """

    model_type: str
    config: Any
    params: dict[str, np.ndarray]
    source_format: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def layout(self) -> Layout:
        return get_layout(self.model_type)


@dataclass(frozen=True)
class Summary:
    """What :func:`convert` did; ``str(summary)`` is the one-line report of ``linrec convert``."""

    src: str
    dst: str
    src_format: str
    dst_format: str
    model_type: str
    tensors: int
    parameters: int
    bytes: int
    dtypes: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        return (f"{self.src} ({self.src_format}) -> {self.dst} ({self.dst_format}): {self.model_type}, "
                f"{self.tensors} tensors, {self.parameters:,} parameters, {_human(self.bytes)} "
                f"({'/'.join(self.dtypes)})")


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


# --- configs ------------------------------------------------------------------------------------------


def parse_config(value: Any) -> Any:
    """``None``, a config dataclass, a dict, a JSON object string, or a path to a JSON file -> dict/dataclass."""
    if value is None or dataclasses.is_dataclass(value) or isinstance(value, Mapping):
        return value
    if isinstance(value, (str, os.PathLike)):
        text = str(value).strip()
        if not text.startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise CheckpointError(f"--config {text!r} is neither a JSON object nor an existing JSON file")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"--config is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise CheckpointError("--config must be a JSON object of config fields")
        return data
    raise TypeError(f"config must be a config dataclass, a dict, JSON text or a file path, not {type(value).__name__}")


def build_config(layout: Layout, shapes: Mapping[str, tuple[int, ...]], given: Any = None,
                 *, stored: Mapping[str, Any] | None = None) -> tuple[Any, list[str]]:
    """The config for ``layout``: ``stored`` (from the file) else inferred from the canonical ``shapes``, then
    updated with ``given`` (dict) — or ``given`` itself if it is a config dataclass.

    Returns ``(config, notes)``; notes name the fields nobody determined (they took their defaults).
    """
    cls = layout.config_class
    given = parse_config(given)
    if dataclasses.is_dataclass(given) and not isinstance(given, type):
        if not isinstance(given, cls):
            raise CheckpointError(f"{layout.model} needs a {cls.__name__}, got a {type(given).__name__}")
        return given, []
    given = dict(given or {})
    if stored is not None:
        fields = {**stored, **given}
        determined = set(fields)
    else:
        try:
            inferred = layout.infer(shapes, given) if layout.infer else {}
        except (LayoutError, ArithmeticError) as err:  # ArithmeticError: a zero-size dim of a hostile file
            try:  # a complete config from the user needs no inference; the shape check reports the tensors
                config_from_dict(cls, given)
                inferred = {}
            except (LayoutError, ValueError, TypeError):
                raise CheckpointError(f"cannot infer the {layout.model} config from this checkpoint: {err}; "
                                      f"tensors found: {sorted(shapes)[:12]}") from None
        fields = {**inferred, **given}
        determined = set(fields)
    try:
        config = config_from_dict(cls, fields)
    except (LayoutError, ValueError, TypeError) as err:
        raise CheckpointError(f"invalid {layout.model} config {fields}: {err}") from None
    defaults = [f.name for f in dataclasses.fields(cls) if f.name not in determined and getattr(config, f.name)
                is not None]
    notes = []
    if defaults and stored is None:
        values = ", ".join(f"{name}={getattr(config, name)!r}" for name in defaults)
        notes.append(f"not stored in the file, took defaults (override with --config): {values}")
    return config, notes


# --- checking params against a config ---------------------------------------------------------------


def _source_name(model: str, name: str, source: str | None, shape: tuple[int, ...] | None):
    """``(name as the source calls it, shape in the source's orientation)`` for messages."""
    if source not in ("flax", "torch"):
        return name, shape
    hit = match(model, "canonical", name)
    if hit is None:
        return name, shape
    row, groups = hit
    stack = row.stack(source)
    key = getattr(row, source).format(**{k: v for k, v in groups.items() if k != stack})
    if stack:
        key = f"{key}[{groups[stack]}]"
    if shape is not None and source == "torch" and row.torch_transform == "transpose" and len(shape) == 2:
        shape = shape[::-1]
    return key, shape


def check_params(model: str, config: Any, params: Mapping[str, np.ndarray], *, unknown: Sequence[str] = (),
                 source: str | None = None, where: str = "checkpoint") -> None:
    """Raise one ``CheckpointError`` listing every missing, unexpected and misshapen tensor.

    ``unknown`` are source names no table row matched; ``source`` (``"flax"``/``"torch"``) makes the message
    use the source's names and orientation next to the canonical ones.
    """
    layout = get_layout(model)
    expected = layout.spec_module.param_shapes(config)
    missing = [n for n in expected if n not in params]
    extra = [n for n in params if n not in expected]
    wrong = [n for n in expected if n in params and tuple(np.shape(params[n])) != tuple(expected[n])]
    dtypes = [n for n in params if np.asarray(params[n]).dtype.name not in FLOAT_DTYPES]
    if not (missing or extra or wrong or unknown or dtypes):
        return

    def label(name: str, shape=None) -> tuple[str, Any]:
        key, shape = _source_name(model, name, source, shape)
        return (key if key == name else f"{key} (canonical {name})"), shape

    lines = []
    for name in missing:
        text, shape = label(name, tuple(expected[name]))
        lines.append(f"  missing     {text}: expected shape {shape}")
    for name in wrong:
        text, want = label(name, tuple(expected[name]))
        _, found = label(name, tuple(np.shape(params[name])))
        lines.append(f"  misshapen   {text}: expected {want}, found {found}")
    for name in extra:
        text, shape = label(name, tuple(np.shape(params[name])))
        lines.append(f"  unexpected  {text}: shape {shape}")
    for name in unknown:
        lines.append(f"  unexpected  {name}: not a parameter of {model}")
    for name in dtypes:
        text, _ = label(name)
        lines.append(f"  wrong dtype {text}: {np.asarray(params[name]).dtype.name} (parameters are "
                     f"{', '.join(FLOAT_DTYPES)})")
    summary = ", ".join(f"{len(v)} {k}" for k, v in (("missing", missing), ("misshapen", wrong),
                                                      ("unexpected", list(extra) + list(unknown)),
                                                      ("of a wrong dtype", dtypes)) if v)
    raise CheckpointError(f"{where} does not match {model} with config {json.dumps(config_to_dict(config))} "
                          f"({summary}):\n" + "\n".join(lines))


# --- dtypes ------------------------------------------------------------------------------------------------


def _np_dtype(name: str) -> np.dtype:
    if name not in FLOAT_DTYPES:
        raise CheckpointError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, got {name!r}")
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _dtype_name(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).removeprefix("torch.")
    if hasattr(value, "name") and not isinstance(value, str):
        text = value.name
    return {"bf16": "bfloat16", "fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16",
            "fp64": "float64", "f64": "float64"}.get(text, text)


class _Progress:
    """``converting [#####-----] 12/40 tensors, 120.0/400.0 MiB`` on one stderr line, for large checkpoints."""

    def __init__(self, total_bytes: int, count: int, enabled: bool, stream=None):
        self.total, self.count = max(total_bytes, 1), count
        self.enabled = enabled and total_bytes >= PROGRESS_MIN_BYTES and count > 0
        self.stream = stream or sys.stderr
        self.done_bytes = self.done = 0

    def update(self, nbytes: int) -> None:
        self.done += 1
        self.done_bytes += nbytes
        if self.enabled:
            filled = int(20 * self.done_bytes / self.total)
            self.stream.write(f"\rconverting [{'#' * filled}{'-' * (20 - filled)}] {self.done}/{self.count} tensors, "
                              f"{self.done_bytes / 2**20:.1f}/{self.total / 2**20:.1f} MiB")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _cast(params: Mapping[str, np.ndarray], dtype: str | None, progress: _Progress | None = None) -> dict:
    target = None if dtype is None else _np_dtype(dtype)
    out = {}
    for name, value in params.items():
        value = np.asarray(value)
        out[name] = value if target is None or value.dtype == target else value.astype(target)
        if progress is not None:
            progress.update(value.nbytes)
    return out


# --- reading -----------------------------------------------------------------------------------------------


def _resolve_format(path: Any, fmt: str | None, *, reading: bool) -> str:
    if fmt is None:
        return formats.format_from_path(path)
    name = fmt.lower()
    if name in CONTAINERS:
        return name
    from linrec.tools import originals

    original = originals.canonical_name(name)
    if reading:
        if original is not None:
            return original
        known = [*CONTAINERS, *originals.ORIGINALS]
    else:
        if original is not None and original in originals.exportable():
            return original
        known = [*CONTAINERS, *originals.exportable()]
    raise CheckpointError(f"unknown {'source' if reading else 'target'} format {fmt!r}; known: {', '.join(known)}")


def read(path: str | os.PathLike, *, format: str | None = None, model: str | None = None,
         config: Any = None) -> Checkpoint:
    """Read a checkpoint into canonical parameters, checked against the config (one error listing all problems).

    Args:
      format: ``linrec``, ``torch``, ``flax`` or an original's name; default from the extension.
      model: the model type (needed for ``torch``/``flax`` files; overrides an original's default).
      config: config overrides (dict, JSON text, JSON file) or a config dataclass.
    """
    try:
        return _read(path, format, model, config)
    except LayoutError as err:  # e.g. a model_type in the file's metadata that no table knows, or a tensor
        # whose rank the table's transform cannot take: the file is at fault, so it is a CheckpointError
        raise CheckpointError(f"{path}: {err}") from None


def _read(path: str | os.PathLike, format: str | None, model: str | None, config: Any) -> Checkpoint:
    fmt = _resolve_format(path, format, reading=True)
    if fmt == "linrec":
        tensors, info = formats.read_linrec(path)
        model_type = _pick_model(info["model_type"], model, path)
        layout = get_layout(model_type)
        cfg, notes = build_config(layout, _shapes(tensors), config, stored=info["config"])
        check_params(model_type, cfg, tensors, where=str(path))
        return Checkpoint(model_type, cfg, tensors, fmt, notes)
    if fmt == "orbax":
        return _read_orbax(path, model, config)
    if fmt in ("torch", "flax"):
        tensors = formats.read_torch(path) if fmt == "torch" else formats.read_flax(path)
        if model is None:
            raise CheckpointError(f"{path}: a {fmt} checkpoint does not say which model it holds; pass model= "
                                  f"(--model), one of: {', '.join(model_names())}")
        layout = get_layout(model)
        params, unknown = from_names(layout.model, tensors, fmt)
        cfg, notes = build_config(layout, _shapes(params), config)
        check_params(layout.model, cfg, params, unknown=unknown, source=fmt, where=str(path))
        return Checkpoint(layout.model, cfg, params, fmt, notes)
    from linrec.tools import originals

    ckpt = originals.read_original(fmt, path, model=model, config=config)
    check_params(ckpt.model_type, ckpt.config, ckpt.params, where=f"{path} (imported from {fmt})")
    return ckpt


def _read_orbax(path: str | os.PathLike, model: str | None, config: Any) -> Checkpoint:
    """An Orbax checkpoint directory (``linrec.tools.orbax_io``): checked against the model from the metadata
    alone (shapes, dtypes, names), then its arrays are restored and renamed through the flax table."""
    from linrec.tools import orbax_io

    placeholders, info = orbax_io.read_orbax_metadata(path)
    model_type = _pick_model(info["model_type"], model, path, what="Orbax checkpoint")
    layout = get_layout(model_type)
    shaped, unknown = from_names(layout.model, placeholders, "flax")
    cfg, notes = build_config(layout, _shapes(shaped), config, stored=info["config"])
    check_params(layout.model, cfg, shaped, unknown=unknown, source="flax", where=str(path))
    params, unknown = from_names(layout.model, orbax_io.read_orbax(path), "flax")
    check_params(layout.model, cfg, params, unknown=unknown, source="flax", where=str(path))
    return Checkpoint(layout.model, cfg, params, "orbax", notes)


def _pick_model(stored: str | None, given: str | None, path: Any, *, what: str = "safetensors file") -> str:
    if stored is None and given is None:
        raise CheckpointError(f"{path}: the {what} has no linrec 'model_type' metadata; pass model= "
                              f"(--model), one of: {', '.join(model_names())}")
    if stored is None or given is None:
        return get_layout(stored or given).model
    a, b = get_layout(stored), get_layout(given)
    if a.model != b.model and (a.config_class is not b.config_class or a.rows != b.rows):
        raise CheckpointError(f"{path} holds a {a.model}, not a {b.model}")
    return b.model


def _shapes(tensors: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(np.shape(v)) for k, v in tensors.items()}


# --- writing -------------------------------------------------------------------------------------------------


def write(ckpt: Checkpoint, path: str | os.PathLike, *, format: str | None = None, force: bool = False) -> Path:
    """Write ``ckpt`` as ``linrec`` safetensors, a ``torch`` state_dict, a ``flax`` NNX state dict, an ``orbax``
    checkpoint directory (the NNX state), or in an original's own format (``format=`` its name, see
    ``linrec.tools.originals.exportable()``)."""
    fmt = _resolve_format(path, format, reading=False)
    check_params(ckpt.model_type, ckpt.config, ckpt.params, where="the parameters to write")
    if fmt == "linrec":
        return formats.write_linrec(path, ckpt.params, model_type=ckpt.model_type,
                                    config=config_to_dict(ckpt.config), force=force)
    if fmt == "orbax":
        return _write_orbax(ckpt, path, force=force)
    if fmt not in CONTAINERS:  # an original's own format
        from linrec.tools import originals

        return originals.write_original(fmt, ckpt, path, force=force)
    named = to_names(ckpt.model_type, ckpt.params, fmt)
    writer = formats.write_torch if fmt == "torch" else formats.write_flax
    return writer(path, named, force=force)


def _write_orbax(ckpt: Checkpoint, path: str | os.PathLike, *, force: bool) -> Path:
    """The NNX module's full ``nnx.state`` (what ``StandardCheckpointer().save(dir, nnx.state(model))`` writes),
    with the model type and config in Orbax's custom metadata; a directory renamed into place on success."""
    from linrec.tools import orbax_io

    orbax_io._ocp()  # the ImportError naming the extra comes before any module is built
    if (Path(path).exists() or Path(path).is_symlink()) and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    from flax import nnx

    state = nnx.state(to_module(ckpt, "jax"))
    import linrec

    metadata = {"linrec_format": formats.LINREC_FORMAT, "linrec_spec_version": linrec.SPEC_VERSION,
                "linrec_version": linrec.__version__, "model_type": ckpt.model_type,
                "config": json.dumps(config_to_dict(ckpt.config), sort_keys=True)}
    return orbax_io.write_orbax(path, state, custom_metadata=metadata, force=force)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, src_format: str | None = None,
            dst_format: str | None = None, model: str | None = None, config: Any = None, dtype: Any = None,
            force: bool = False, progress: bool = True) -> Summary:
    """Read ``src`` (any format), optionally cast to ``dtype``, and write ``dst``; see the module docstring.

    Refuses to overwrite ``dst`` unless ``force`` (checked before reading). Returns a :class:`Summary`.
    """
    dst_fmt = _resolve_format(dst, dst_format, reading=False)
    if Path(dst).exists() and not force:
        raise FileExistsError(f"{dst} exists; pass force=True (--force) to overwrite it")
    ckpt = read(src, format=src_format, model=model, config=config)
    total = sum(np.asarray(v).nbytes for v in ckpt.params.values())
    bar = _Progress(total, len(ckpt.params), progress)
    try:
        ckpt.params = _cast(ckpt.params, _dtype_name(dtype), bar)
    finally:
        bar.close()
    write(ckpt, dst, format=dst_fmt, force=force)
    params = ckpt.params.values()
    return Summary(
        src=str(src), dst=str(dst), src_format=ckpt.source_format, dst_format=dst_fmt, model_type=ckpt.model_type,
        tensors=len(ckpt.params), parameters=int(sum(np.size(v) for v in params)),
        bytes=int(sum(np.asarray(v).nbytes for v in params)),
        dtypes=tuple(sorted({np.asarray(v).dtype.name for v in params})), notes=tuple(ckpt.notes),
    )


# --- modules ---------------------------------------------------------------------------------------------


def to_module(ckpt: Checkpoint, backend: str):
    """A ready Flax NNX module (``"jax"``) or ``nn.Module`` (``"torch"``) holding exactly ``ckpt.params``.

    The module is built with the class's ``from_canonical``, then every parameter is assigned again through
    the layout table (``nnx.update`` / ``load_state_dict(strict=True)``), so a table that disagrees with the
    module fails loudly instead of loading wrong numbers.
    """
    layout = ckpt.layout
    cls = layout.module_class(backend)
    if backend == "jax":
        from flax import nnx

        # Build the module abstractly (no random initialisation to compile and run), then give every
        # parameter its value through the table; RNG streams (dropout) start from key 0, count 0. A module
        # with any other kind of state is built for real.
        module = nnx.eval_shape(lambda: cls.from_canonical(ckpt.config, ckpt.params))
        if not _fill_rng_state(module):
            module = cls.from_canonical(ckpt.config, ckpt.params)
        _assign_flax(module, to_names(layout.model, ckpt.params, "flax"), layout.model)
        return module
    if backend == "torch":
        import torch

        dtypes = {np.asarray(v).dtype for v in ckpt.params.values()}
        low = {np.dtype(ml_dtypes.bfloat16): torch.bfloat16, np.dtype(np.float16): torch.float16}
        target = low.get(next(iter(dtypes))) if len(dtypes) == 1 else None
        # from_canonical takes NumPy arrays; bfloat16 reaches it as float32 (exact) plus the target dtype
        params = {k: np.array(v, np.float32 if np.asarray(v).dtype in low else None)  # writable copies
                  for k, v in ckpt.params.items()}
        kwargs = {"dtype": target} if target is not None and _accepts(cls.from_canonical, "dtype") else {}
        module = cls.from_canonical(ckpt.config, params, **kwargs)
        if target is not None and not kwargs:
            module = module.to(target)
        state = {k: formats.numpy_to_tensor(v) for k, v in to_names(layout.model, ckpt.params, "torch").items()}
        result = module.load_state_dict(state, strict=False)
        ignore = [k for k in result.missing_keys if _ignored(layout.torch_ignore, k)]
        missing = [k for k in result.missing_keys if k not in ignore]
        if missing or result.unexpected_keys:
            raise LayoutError(f"{layout.model}: the torch table disagrees with {cls.__name__}.state_dict(): "
                              f"missing {missing}, unexpected {result.unexpected_keys}")
        return module
    raise ValueError(f"backend must be 'jax', 'torch' or 'numpy', got {backend!r}")


def _accepts(fn, name: str) -> bool:
    try:
        params = _inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _ignored(patterns: Sequence[str], key: str) -> bool:
    import re

    return any(re.fullmatch(p, key) for p in patterns)


def _flax_params(module) -> dict[str, Any]:
    """``nnx.state(module, nnx.Param)`` flattened: dotted path -> array."""
    from flax import nnx

    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    return {".".join(str(p) for p in path): np.array(var.get_value() if hasattr(var, "get_value") else var.value)
            for path, var in flat}


def _fill_rng_state(module) -> bool:
    """Give an abstract module's non-parameter state concrete values if it is only RNG streams."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    rest = nnx.state(module, nnx.Not(nnx.Param))
    flat = list(nnx.to_flat_state(rest))
    if not flat:
        return True
    if not all(isinstance(v, (nnx.RngKey, nnx.RngCount)) for _, v in flat):
        return False
    pure = nnx.to_pure_dict(rest)
    for path, var in flat:
        node = pure
        for part in path[:-1]:
            node = node[part]
        abstract = var.get_value() if hasattr(var, "get_value") else var.value
        node[path[-1]] = (jax.random.key(0) if isinstance(var, nnx.RngKey)
                          else jnp.zeros(abstract.shape, abstract.dtype))
    nnx.replace_by_pure_dict(rest, pure)
    nnx.update(module, rest)
    return True


def _assign_flax(module, values: Mapping[str, np.ndarray], model: str) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from linrec.backends.jax.arrays import require_x64

    state = nnx.state(module, nnx.Param)
    paths = {".".join(str(p) for p in path): path for path, _ in nnx.to_flat_state(state)}
    missing = sorted(set(paths) - set(values))
    extra = sorted(set(values) - set(paths))
    if missing or extra:
        raise LayoutError(f"{model}: the flax table disagrees with {type(module).__name__}'s nnx.state: "
                          f"missing {missing}, unexpected {extra}")
    pure = nnx.to_pure_dict(state)
    for key, path in paths.items():
        node = pure
        for part in path[:-1]:
            node = node[part]
        require_x64(np.asarray(values[key]).dtype, f"parameter {key!r}")  # never truncated to float32
        node[path[-1]] = jnp.asarray(values[key], dtype=np.asarray(values[key]).dtype)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)


def module_to_checkpoint(module: Any, *, model: str | None = None) -> Checkpoint:
    """A Flax NNX module, an ``nn.Module`` or a ``(config, params)`` pair -> :class:`Checkpoint` (via the table)."""
    if isinstance(module, tuple) and len(module) == 2:
        config, params = module
        layout = get_layout(model) if model else _layout_for_config(config)
        return Checkpoint(layout.model, config, {k: np.asarray(v) for k, v in params.items()}, "numpy")
    layout, backend = _layout_for_module(module, model)
    if backend == "jax":
        params, unknown = from_names(layout.model, _flax_params(module), "flax")
    else:
        state = {k: formats.tensor_to_numpy(v) for k, v in module.state_dict().items()}
        params, unknown = from_names(layout.model, state, "torch")
    check_params(layout.model, module.config, params, unknown=unknown, source=backend,
                 where=f"{type(module).__name__} module")
    return Checkpoint(layout.model, module.config, params, backend)


def _layout_for_config(config: Any) -> Layout:
    for layout in LAYOUTS.values():
        try:
            if type(config) is layout.config_class:
                return layout
        except (ImportError, AttributeError):  # a model whose spec is not installed
            continue
    raise CheckpointError(f"no linrec model uses a {type(config).__name__}; pass model=")


def _layout_for_module(module: Any, model: str | None) -> tuple[Layout, str]:
    candidates = [get_layout(model)] if model else list(LAYOUTS.values())
    for layout in candidates:
        for backend in ("jax", "torch"):
            try:
                cls = layout.module_class(backend)
            except (ImportError, AttributeError):
                continue
            if type(module) is cls or (model and isinstance(module, cls)):
                return layout, backend
    raise CheckpointError(f"{type(module).__name__} is not a linrec module with a layout table; pass model=")


# --- the high-level API ----------------------------------------------------------------------------------


def load(path: str | os.PathLike, backend: str = "jax", *, format: str | None = None, model: str | None = None,
         config: Any = None, dtype: Any = None):
    """Read a checkpoint and return a ready model: a Flax NNX module (``"jax"``), an ``nn.Module`` (``"torch"``),
    or for ``"numpy"`` a :class:`~linrec.tools.numpy_model.NumpyModel`: the pair ``(config, params)`` (so
    ``config, params = load(path, "numpy")`` works) that also says what runs it — ``.forward(inputs, **kw)`` /
    ``.step(input_t, state)`` call the NumPy backend's pure functions for its ``.model_type`` (``.function`` names
    them, e.g. ``linrec.backends.numpy.mingru_lm.mingru_lm``). ``dtype`` casts the parameters first.

    Modules come back in evaluation mode (``.eval()``: no dropout), like a model loaded for inference; call
    ``.train()`` to train them.
    """
    ckpt = read(path, format=format, model=model, config=config)
    ckpt.params = _cast(ckpt.params, _dtype_name(dtype))
    if backend == "numpy":
        from linrec.tools.numpy_model import NumpyModel

        return NumpyModel(ckpt.config, ckpt.params, ckpt.model_type)
    module = to_module(ckpt, backend)
    module.eval()  # ready for inference (no dropout); call .train() to train
    return module


def save(model: Any, path: str | os.PathLike, *, force: bool = False, format: str | None = None,
         model_type: str | None = None) -> Path:
    """Write a linrec module (NNX or torch) or a ``(config, params)`` pair; the format follows the extension
    (``format="orbax"`` writes an Orbax checkpoint directory)."""
    return write(module_to_checkpoint(model, model=model_type), path, format=format, force=force)


def inspect(path: str | os.PathLike, *, format: str | None = None, model: str | None = None,
            config: Any = None) -> dict[str, Any]:
    """Describe a checkpoint: format, model type, config, and the tensor table (names as stored in the file).

    Files that carry no model type (torch, flax) are listed as they are unless ``model`` is given.
    """
    fmt = _resolve_format(path, format, reading=True)
    info: dict[str, Any] = {"path": str(path), "format": fmt, "model_type": None, "config": None,
                            "spec_version": None, "linrec_version": None, "notes": []}
    if fmt == "linrec":
        tensors, meta = formats.read_linrec(path)
        info.update(model_type=meta["model_type"], config=meta["config"], spec_version=meta["spec_version"],
                    linrec_version=meta["version"])
    elif fmt == "orbax" and model is None and _orbax_info(path)["model_type"] is None:
        tensors = _orbax_tensors(path)
        info["notes"].append("this Orbax checkpoint does not say which model it holds; pass --model to check it")
    elif fmt in ("torch", "flax") and model is None:
        tensors = formats.read_torch(path) if fmt == "torch" else formats.read_flax(path)
        info["notes"].append(f"a {fmt} file does not say which model it holds; pass --model to check it")
    else:
        ckpt = read(path, format=fmt, model=model, config=config)
        if fmt == "orbax":  # names as stored (the NNX state paths)
            tensors = _orbax_tensors(path)
            stored = _orbax_info(path)
            info.update(spec_version=stored["spec_version"], linrec_version=stored["version"])
        else:
            tensors = ckpt.params if fmt not in ("torch", "flax") else (
                formats.read_torch(path) if fmt == "torch" else formats.read_flax(path))
        info.update(model_type=ckpt.model_type, config=config_to_dict(ckpt.config), notes=list(ckpt.notes))
    rows = [{"name": k, "dtype": np.asarray(v).dtype.name, "shape": list(np.shape(v))} for k, v in tensors.items()]
    info["tensors"] = rows
    info["tensor_count"] = len(rows)
    info["parameters"] = int(sum(np.size(v) for v in tensors.values()))
    info["bytes"] = int(sum(np.asarray(v).nbytes for v in tensors.values()))
    return info


def _orbax_info(path: str | os.PathLike) -> dict[str, Any]:
    """linrec's custom metadata of an Orbax checkpoint (model type, config, versions; ``None`` if absent)."""
    from linrec.tools import orbax_io

    return orbax_io.read_orbax_metadata(path)[1]


def _orbax_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The Orbax checkpoint's parameters by stored name, as metadata placeholders (inspect reads no data)."""
    from linrec.tools import orbax_io

    return orbax_io.read_orbax_metadata(path)[0]


# --- command line -------------------------------------------------------------------------------------


def _format_help() -> str:
    from linrec.tools import originals

    return f"{', '.join(CONTAINERS)} or an original: {', '.join(originals.ORIGINALS)}"


def _error(prog: str, err: BaseException) -> int:
    sys.stderr.write(f"{prog}: error: {err}\n")
    return 1


_ERRORS = (CheckpointError, LayoutError, FileExistsError, ValueError, TypeError, ImportError, OSError)


def convert_main(argv: Sequence[str] | None = None) -> int:
    """``linrec convert SRC DST``: returns the exit status (0 on success, 1 on a reported error)."""
    parser = argparse.ArgumentParser(
        prog="linrec convert",
        description="Convert a checkpoint between linrec safetensors, torch state_dicts, flax msgpack and "
                    "Orbax checkpoint directories (formats from the extensions: .safetensors, .pt/.pth/.bin, "
                    ".msgpack/.flax; an existing directory is orbax; a new directory needs --to orbax), import "
                    "an original's checkpoint, or export into an original's format.")
    parser.add_argument("src", help="source file or Orbax checkpoint directory")
    parser.add_argument("dst", help="output file or directory (written beside as a temporary file or "
                                    "directory, renamed on success)")
    parser.add_argument("--from", dest="src_format", metavar="FORMAT", help=f"source format: {_format_help()}")
    parser.add_argument("--to", dest="dst_format", metavar="FORMAT",
                        help=f"output format: {', '.join(CONTAINERS)}, or an original's name (its own format)")
    parser.add_argument("--model", help=f"model type when the source does not say: {', '.join(model_names())}")
    parser.add_argument("--config", help="config fields as a JSON object or a JSON file (what the shapes "
                                         "cannot tell, or overrides)")
    parser.add_argument("--dtype", help=f"cast the parameters: {', '.join(FLOAT_DTYPES)}")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress line, no notes")
    args = parser.parse_args(argv)
    try:
        summary = convert(args.src, args.dst, src_format=args.src_format, dst_format=args.dst_format,
                          model=args.model, config=args.config, dtype=args.dtype, force=args.force,
                          progress=not args.quiet)
    except _ERRORS as err:
        return _error(parser.prog, err)
    print(summary)
    if not args.quiet:
        for note in summary.notes:
            sys.stderr.write(f"note: {note}\n")
    return 0


def inspect_main(argv: Sequence[str] | None = None) -> int:
    """``linrec inspect FILE``: prints the model, the config and the tensor table."""
    parser = argparse.ArgumentParser(prog="linrec inspect", description="Show a checkpoint's model, config and "
                                                                          "tensors.")
    parser.add_argument("file", help="checkpoint file or Orbax checkpoint directory")
    parser.add_argument("--from", dest="src_format", metavar="FORMAT", help=f"format: {_format_help()}")
    parser.add_argument("--model", help="model type, for torch/flax files and Orbax checkpoints")
    parser.add_argument("--config", help="config fields as a JSON object or a JSON file")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")
    args = parser.parse_args(argv)
    try:
        info = inspect(args.file, format=args.src_format, model=args.model, config=args.config)
    except _ERRORS as err:
        return _error(parser.prog, err)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    version = f", spec {info['spec_version']}" if info["spec_version"] else ""
    print(f"file:   {info['path']} ({info['format']}{version})")
    print(f"model:  {info['model_type'] or 'unknown'}")
    print(f"config: {json.dumps(info['config'], sort_keys=True) if info['config'] is not None else 'none stored'}")
    print(f"tensors: {info['tensor_count']}, parameters: {info['parameters']:,}, bytes: {info['bytes']:,}")
    width = max([len(r["name"]) for r in info["tensors"]] + [4])
    print(f"  {'name':<{width}}  {'dtype':<9} shape")
    for r in info["tensors"]:
        print(f"  {r['name']:<{width}}  {r['dtype']:<9} {tuple(r['shape'])}")
    for note in info["notes"]:
        print(f"note: {note}")
    return 0
