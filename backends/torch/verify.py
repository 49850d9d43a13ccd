"""``verify_agreement(model, x)``: check a model's parallel path against its step path on your input."""

from __future__ import annotations

import torch

from linrec.backends.torch.arrays import dtype_name, to_numpy
from linrec.conformance.agreement import AgreementReport, run_agreement

__all__ = ["AgreementReport", "verify_agreement"]


def _stack(outputs: list, like):
    return torch.stack(outputs, dim=1) if outputs else like


def verify_agreement(model, x, *, initial_state=None, rtol: float | None = None,
                     atol: float | None = None) -> AgreementReport:
    """Run ``model(x, initial_state, mode="parallel")`` and ``model.step`` over every step of ``x``.

    Args:
      model: a linrec layer or model (``__call__(x, initial_state, mode=)``,
        ``step(x_t, state) -> (y_t, state)`` and ``initial_state(batch_size)``, the states ``State``s).
      x: ``(B, T, ...)`` input (features, or token ids for language models); ``(T, B, ...)`` for a module with
        ``batch_first=False``.
      initial_state: the carried ``State`` to start from (``None``: the model's default).
      rtol, atol: override the spec's tolerance (default: recurrence.md §9 for the output dtype,
        with the gradient factor, because a layer is several operations deep).

    Returns:
      An ``AgreementReport`` (``ok``, max errors of output and state, allowed errors).
    """
    return run_agreement(model, x, initial_state=initial_state, stack=_stack, dtype_name=dtype_name,
                         to_numpy=to_numpy, rtol=rtol, atol=atol)
