"""``torch.compile`` for the LMs' ``decoder(compile=True)``: one graph per token step, without per-call guards on
the parameters it captured.

Why, measured on a 4-layer LM at B=1 (benchmarks/decode.py; 17 matrix products, ~17 fused elementwise kernels):

- Dynamo checks every guard of a compiled function on every call; a decode step closes over the model's
  parameters (about 70 tensors), and their shape/dtype/stride guards took ~95 µs per token, a quarter of the
  dense-product floor. The decoders own those tensors (built once from the module, rebuilt when the parameters
  change), so their guards can only ever pass; guards on the step's arguments (token, state) and on the code stay,
  so a new batch size, dtype or device still recompiles.
- Inductor's default Python wrapper makes ~120 Python calls per step (kernel launches, allocations, size
  asserts); ``cpp_wrapper=True`` makes them from C++: the step went from 1.86x to 1.42-1.61x the floor, in the
  same runs. It costs a longer first compilation (a few seconds more).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["compile_step"]


def compile_step(fn: Callable, captured: Sequence[str]) -> Callable:
    """``torch.compile(fn, fullgraph=True, dynamic=False)`` with Inductor's C++ wrapper and no guards on the
    closure variables ``captured`` (names of dicts/lists of parameter tensors ``fn`` closes over, e.g.
    ``("p", "layers")``)."""
    prefixes = tuple(f"{name}[" for name in captured)

    def keep(entries) -> list[bool]:
        return [not entry.name.startswith(prefixes) for entry in entries]

    return torch.compile(fn, fullgraph=True, dynamic=False, options={"guard_filter_fn": keep, "cpp_wrapper": True})
