"""Framework-neutral argument checks shared by every backend (``recurrence.md`` §1, §5, §11).

Backends pass shapes as tuples and dtypes as canonical names (``"float32"``, ``"bfloat16"``, ...),
so every backend raises the same message for the same mistake. The config-field and parameter-table
checks at the end serve the layer and model specs, so every config words a mistake the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "COMPLEX_DTYPES",
    "LOW_PRECISION",
    "REAL_DTYPES",
    "SUPPORTED_DTYPES",
    "check_bool",
    "check_choice",
    "check_chunk_size",
    "check_log_scan_args",
    "check_method",
    "check_mode",
    "check_param_shapes",
    "check_positive_finite",
    "check_positive_int",
    "check_reverse",
    "check_scan_args",
    "compute_dtype",
    "is_positive_int",
    "is_real_number",
    "log_domain_message",
    "missing_and_unexpected",
    "state_dtypes_for",
]

REAL_DTYPES = ("float64", "float32", "bfloat16", "float16")
COMPLEX_DTYPES = ("complex128", "complex64")
LOW_PRECISION = ("bfloat16", "float16")
SUPPORTED_DTYPES = REAL_DTYPES + COMPLEX_DTYPES
_REAL_OF = {"complex128": "float64", "complex64": "float32"}


def compute_dtype(dtype: str) -> str:
    """The dtype the state is accumulated in for inputs of ``dtype`` (§5)."""
    return "float32" if dtype in LOW_PRECISION else dtype


def state_dtypes_for(dtype: str) -> tuple[str, ...]:
    """The dtypes a carried state may have for inputs of ``dtype``: ``dtype``, and float32 for bfloat16/float16 (§5)."""
    return (dtype, "float32") if dtype in LOW_PRECISION else (dtype,)


def check_method(method: str, available: Sequence[str], *, function: str = "linear_scan") -> None:
    if method != "auto" and method not in available:
        valid = ", ".join(repr(m) for m in ("auto", *available))
        raise ValueError(f"{function}: unknown method={method!r}; valid methods: {valid}")


def check_mode(mode: str, modes: Sequence[str], *, function: str = "") -> None:
    """``ValueError`` unless ``mode`` is one of ``modes``, worded as :func:`check_method` (``function:`` first)."""
    if mode not in modes:
        prefix = f"{function}: " if function else ""
        raise ValueError(f"{prefix}unknown mode={mode!r}; valid modes: {', '.join(map(repr, modes))}")


def check_reverse(reverse: object) -> None:
    """``TypeError`` unless ``reverse`` is a ``bool`` (NumPy's ``bool_`` too): ``reverse="no"`` is truthy and
    would silently scan backwards (recurrence.md §0)."""
    if not isinstance(reverse, (bool, np.bool_)):
        raise TypeError(f"reverse must be a bool (True or False), got {reverse!r} of type {type(reverse).__name__}")


def check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def _check_shapes(
    names: tuple[str, str],
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    init_shape: tuple[int, ...] | None,
    resets_shape: tuple[int, ...] | None,
    init_name: str,
) -> None:
    na, nb = names
    if len(b_shape) < 2:
        raise ValueError(f"{nb} must have shape (B, T, *S) with at least 2 axes, got shape {b_shape}")
    if len(a_shape) != len(b_shape):
        raise ValueError(
            f"{na} must have the same number of axes as {nb} (B, T, *S) with state axes equal or 1; "
            f"got {na}.shape={a_shape}, {nb}.shape={b_shape}"
        )
    if a_shape[:2] != b_shape[:2]:
        raise ValueError(
            f"{na} and {nb} must share batch and time axes (B, T); got {na}.shape={a_shape}, {nb}.shape={b_shape}"
        )
    for i, (sa, sb) in enumerate(zip(a_shape[2:], b_shape[2:]), start=2):
        if sa not in (1, sb):
            raise ValueError(
                f"{na} must broadcast to {nb} over the state axes (each axis equal or 1); axis {i}: "
                f"{na}.shape={a_shape}, {nb}.shape={b_shape}"
            )
    expected_init = (b_shape[0], *b_shape[2:])
    if init_shape is not None and tuple(init_shape) != expected_init:
        raise ValueError(f"{init_name} must have shape (B, *S) = {expected_init}, got {tuple(init_shape)}")
    if resets_shape is not None and tuple(resets_shape) != b_shape[:2]:
        raise ValueError(f"resets must have shape (B, T) = {b_shape[:2]}, got {tuple(resets_shape)}")


def check_scan_args(
    a_shape: tuple[int, ...],
    a_dtype: str,
    b_shape: tuple[int, ...],
    b_dtype: str,
    init_shape: tuple[int, ...] | None = None,
    init_dtype: str | None = None,
    resets_shape: tuple[int, ...] | None = None,
    resets_dtype: str | None = None,
) -> None:
    """Validate ``linear_scan`` arguments; raise ``ValueError``/``TypeError`` naming the argument."""
    if b_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"b has dtype {b_dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")
    allowed_a = (b_dtype, _REAL_OF[b_dtype]) if b_dtype in _REAL_OF else (b_dtype,)
    if a_dtype not in allowed_a:
        raise TypeError(
            f"a has dtype {a_dtype} but b has dtype {b_dtype}; a must be {' or '.join(allowed_a)}"
        )
    if init_dtype is not None:
        allowed_init = state_dtypes_for(b_dtype)
        if init_dtype not in allowed_init:
            raise TypeError(
                f"initial_state has dtype {init_dtype}; for b of dtype {b_dtype} it must be "
                f"{' or '.join(allowed_init)}"
            )
    if resets_dtype is not None and resets_dtype != "bool":
        raise TypeError(f"resets must be a boolean array of shape (B, T), got dtype {resets_dtype}")
    _check_shapes(("a", "b"), a_shape, b_shape, init_shape, resets_shape, "initial_state")


def check_log_scan_args(
    log_a_shape: tuple[int, ...],
    log_a_dtype: str,
    log_b_shape: tuple[int, ...],
    log_b_dtype: str,
    init_shape: tuple[int, ...] | None = None,
    init_dtype: str | None = None,
    resets_shape: tuple[int, ...] | None = None,
    resets_dtype: str | None = None,
) -> None:
    """Validate ``log_scan`` arguments (§8): real floating, same dtype, shapes as ``linear_scan``."""
    for name, dt in (("log_a", log_a_dtype), ("log_b", log_b_dtype), ("log_initial_state", init_dtype)):
        if dt is not None and dt not in REAL_DTYPES:
            raise TypeError(f"{name} must be real floating ({', '.join(REAL_DTYPES)}), got dtype {dt}")
    if log_a_dtype != log_b_dtype:
        raise TypeError(f"log_a has dtype {log_a_dtype} but log_b has dtype {log_b_dtype}; they must match")
    if init_dtype is not None and init_dtype not in (log_b_dtype, "float32"):
        raise TypeError(f"log_initial_state has dtype {init_dtype}; it must be {log_b_dtype}")
    if resets_dtype is not None and resets_dtype != "bool":
        raise TypeError(f"resets must be a boolean array of shape (B, T), got dtype {resets_dtype}")
    _check_shapes(("log_a", "log_b"), log_a_shape, log_b_shape, init_shape, resets_shape, "log_initial_state")


def log_domain_message(name: str, condition: str) -> str:
    """The error text for a value outside the log-space domain (§8)."""
    return (
        f"{name} is outside the log-space domain: {condition}. "
        "Use method='sequential', 'associative' or 'chunked', which accept any real or complex values."
    )


# --- config fields and parameter tables of the layer and model specs ------------------------------
# ``name`` is the field as the message should show it (``"d_model"`` or ``"GateLoopMHConfig.d_model"``).


def is_positive_int(value: object) -> bool:
    """An int (NumPy integers too, ``bool`` not) of at least 1."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def is_real_number(value: object) -> bool:
    """A Python int or float, ``bool`` not (a config option given as a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive_int(name: str, value: object) -> None:
    if not is_positive_int(value):
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_positive_finite(name: str, value: object) -> None:
    if not (is_real_number(value) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def check_choice(name: str, value: object, options: Sequence[str]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def missing_and_unexpected(names: Iterable[str], expected: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(missing, unexpected)``: the ``expected`` names absent from ``names``, and the reverse, in given order."""
    names, expected = list(names), list(expected)
    have, want = set(names), set(expected)
    return [k for k in expected if k not in have], [k for k in names if k not in want]


def check_param_shapes(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> None:
    """``ValueError`` at the first of ``expected``'s parameters whose shape in ``shapes`` differs (names match)."""
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got {tuple(shapes[name])}")
