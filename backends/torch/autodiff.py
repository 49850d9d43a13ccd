"""A framework-neutral VJP adapter, so conformance can check gradients in any backend.

``vjp(fn, primals, cotangents)`` returns the cotangents of ``primals`` in the JAX convention
(for complex holomorphic functions: no conjugation; recurrence.md §10). PyTorch's autograd
computes ``conj(J)^T v``; conjugating the cotangent going in and the result coming out
gives ``J^T v``, the JAX number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["vjp"]


def _conj(x: torch.Tensor) -> torch.Tensor:
    return x.conj().resolve_conj() if x.is_complex() else x


def vjp(fn: Callable[..., Any], primals: Sequence[torch.Tensor], cotangents: Any) -> tuple[torch.Tensor, ...]:
    """Pull ``cotangents`` (a tensor or tuple matching ``fn(*primals)``) back to ``primals``."""
    leaves = [p.detach().clone().requires_grad_(True) for p in primals]
    with torch.enable_grad():
        out = fn(*leaves)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    cts = cotangents if isinstance(cotangents, (tuple, list)) else (cotangents,)
    pairs = [(o, c) for o, c in zip(outs, cts) if c is not None and o.requires_grad]
    grads = torch.autograd.grad(
        [o for o, _ in pairs], leaves, grad_outputs=[_conj(c) for _, c in pairs], allow_unused=True
    )
    return tuple(torch.zeros_like(p) if g is None else _conj(g) for p, g in zip(leaves, grads))
