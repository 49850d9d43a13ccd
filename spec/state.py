"""The one carried-state type of every layer, stack and model (``recurrence.md`` §0, *Conventions*).

``State`` is a ``NamedTuple``: JAX treats it as a pytree (it passes through ``jit``, ``vmap``, ``grad`` and
``lax.scan``), PyTorch as a plain tuple (``torch.compile``-friendly), NumPy code as a record. Every backend
exports this same class, so ``state.h`` means the same thing everywhere.

Shape legend: ``B`` batch, ``L`` layers, ``*S`` one layer's state shape (``(H,)``, or ``(H, K, V)`` for the
multi-head GateLoop).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["State"]


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
