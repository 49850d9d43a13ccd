"""``torch.compile`` for the LMs' ``decoder(compile=True)``: one graph per token step, without per-call guards on
the parameters it captured.

Why, measured on a 4-layer LM at B=1 (benchmarks/decode.py; 17 matrix products, ~17 fused elementwise kernels):

- Dynamo checks every guard of a compiled function on every call; a decode step closes over the model's
  parameters (about 70 tensors), and their shape/dtype/stride guards took ~95 µs per token, a quarter of the
  dense-product floor. The decoders own those tensors (built once from the module, rebuilt when the parameters
  change), so their guards can only ever pass; guards on the step's arguments (token, state) and on the code stay,
  so a new batch size, dtype or device still recompiles.
- Inductor's default Python wrapper makes ~120 Python calls per step (kernel launches, allocations, size
  asserts); ``cpp_wrapper=True`` makes them from C++. Whether that pays depends on the graph: in interleaved runs
  (the same process, alternating) the GatedLinearRNN LM step went from 2.36-3.49x to 2.01-2.68x its matmul floor
  with it, while the minGRU LM step went from 1.46-2.00x to 1.98-2.56x; each decoder passes what measured faster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["compile_step"]


def compile_step(fn: Callable, captured: Sequence[str], *, cpp_wrapper: bool = False) -> Callable:
    """``torch.compile(fn, fullgraph=True, dynamic=False)`` with no guards on the closure variables ``captured``
    (names of dicts/lists of parameter tensors ``fn`` closes over, e.g. ``("p", "layers")``); ``cpp_wrapper``: run
    the compiled graph from Inductor's C++ wrapper."""
    prefixes = tuple(f"{name}[" for name in captured)

    def keep(entries) -> list[bool]:
        return [not entry.name.startswith(prefixes) for entry in entries]

    options = {"guard_filter_fn": keep, "cpp_wrapper": cpp_wrapper}
    return torch.compile(fn, fullgraph=True, dynamic=False, options=options)
