"""``torch.compile`` for the LMs' ``decoder(compile=True)``: one graph per token step, without per-call guards on
the parameters it captured.

Why: Dynamo checks every guard of a compiled function on every call; a decode step closes over the model's
parameters (about 70 tensors for a 4-layer LM), and their shape/dtype/stride guards took ~95 µs per token,
a quarter of the dense-product floor at B=1 (benchmarks/decode.py). The decoders own those tensors (built once
from the module, rebuilt when the parameters change), so their guards can only ever pass; guards on the step's
arguments (token, state) and on the code stay, so a new batch size, dtype or device still recompiles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["compile_step"]


def compile_step(fn: Callable, captured: Sequence[str]) -> Callable:
    """``torch.compile(fn, fullgraph=True, dynamic=False)`` with no guards on the closure variables ``captured``
    (names of dicts/lists of parameter tensors ``fn`` closes over, e.g. ``("p", "layers")``)."""
    prefixes = tuple(f"{name}[" for name in captured)

    def keep(entries) -> list[bool]:
        return [not entry.name.startswith(prefixes) for entry in entries]

    return torch.compile(fn, fullgraph=True, dynamic=False, options={"guard_filter_fn": keep})
