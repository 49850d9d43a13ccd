"""The one carried-state type of every layer, stack and model (``recurrence.md`` §0, *Conventions*).

``State`` is a ``NamedTuple``: JAX treats it as a pytree (it passes through ``jit``, ``vmap``, ``grad`` and
``lax.scan``), PyTorch as a plain tuple (``torch.compile``-friendly), NumPy code as a record. Every backend
exports this same class, so ``state.h`` means the same thing everywhere.

Shape legend: ``B`` batch, ``L`` layers, ``*S`` one layer's state shape (``(H,)``, or ``(H, K, V)`` for the
multi-head GateLoop).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["State", "check_lengths", "layer_h"]


class State(NamedTuple):
    """What a layer, stack or model carries from one call to the next.

    Attributes:
      h: a single layer's state ``(B, *S)``; for a model of ``L`` layers a tuple of ``L`` such arrays,
        ``h[l]`` being layer ``l``'s state (the widths of the layers may differ).
      position: ``(B,)`` int32, tokens consumed so far (the position of the next one), for models with a
        positional encoding; ``None`` for every other model.
    """

    h: Any
    position: Any = None


def layer_h(state: object, *, name: str = "initial_state", where: str = "") -> Any:
    """The array ``h`` of a *single layer's* ``State`` (``None`` stays ``None``).

    Anything but a ``State`` raises ``TypeError`` naming ``name``; a ``position`` raises ``ValueError`` (a single
    layer has no positional encoding). ``where`` (e.g. ``"mingru"``) prefixes the message.
    """
    prefix = f"{where}: " if where else ""
    if state is None:
        return None
    if not isinstance(state, State):
        raise TypeError(f"{prefix}{name} must be a linrec State(h=...) (recurrence.md §0) or None, "
                        f"got {type(state).__name__}")
    if state.position is not None:
        raise ValueError(f"{prefix}{name}.position must be None for a single layer (it has no positional encoding)")
    return state.h


def check_lengths(shape: tuple[int, ...], dtype: str, batch: int, length: int, values: Any = None, *,
                  where: str = "", minimum: int = 0, method: str = "auto") -> None:
    """``lengths``: ``(B,)`` integers in ``[minimum, T]``, row ``i`` holding ``lengths[i]`` real inputs followed
    by padding (right padding, recurrence.md §0).

    ``values`` (a NumPy array) is range-checked when known (``None`` when traced). ``method="log"`` is refused: a
    padded position is an identity step (``b = 0``), outside the log method's domain. ``where`` prefixes messages.
    """
    prefix = f"{where}: " if where else ""
    if not str(dtype).startswith(("int", "uint")):
        raise TypeError(f"{prefix}lengths must be integers (real inputs per row), got dtype {dtype}")
    if tuple(shape) != (batch,):
        raise ValueError(f"{prefix}lengths must have shape (B,) = ({batch},), got {tuple(shape)}")
    if values is not None and batch and (values.min() < minimum or values.max() > length):
        raise ValueError(f"{prefix}lengths must lie in [{minimum}, T={length}], got {values.tolist()}")
    if method == "log":
        raise ValueError(f"{prefix}lengths (right padding) makes padded positions identity steps (b = 0), outside "
                         "the domain of method='log'; use method='chunked' (or 'associative', 'sequential')")
