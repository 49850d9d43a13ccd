"""``verify_agreement``: does a model's parallel path agree with its step path on *your* input?

Framework-neutral core shared by ``linrec.backends.{jax,torch}.verify``. The default tolerance is
the spec's table with the gradient factor (recurrence.md §9): a layer output passes through
several matrix products and activations, not one scan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from linrec.spec.tolerances import Tolerance, max_violation, tolerance_for

__all__ = ["AgreementReport", "agreement_report", "run_agreement"]


@dataclass(frozen=True)
class AgreementReport:
    """Parallel vs step-by-step on one input: ``ok`` iff both errors are within ``allowed``."""

    ok: bool
    max_error_output: float
    max_error_state: float
    allowed_output: float
    allowed_state: float
    tolerance: Tolerance
    dtype: str
    length: int

    def __str__(self) -> str:
        verdict = "agree" if self.ok else "DISAGREE"
        return (f"parallel and step paths {verdict} over T={self.length} ({self.dtype}): "
                f"output max error {self.max_error_output:.3g} (allowed {self.allowed_output:.3g}), "
                f"state max error {self.max_error_state:.3g} (allowed {self.allowed_state:.3g})")


def _leaves(tree) -> list[np.ndarray]:
    if tree is None:  # an absent field, e.g. State.position of a model without positions
        return []
    if isinstance(tree, dict):
        return [leaf for k in sorted(tree) for leaf in _leaves(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _leaves(item)]
    if hasattr(tree, "__dataclass_fields__"):
        return _leaves({k: getattr(tree, k) for k in tree.__dataclass_fields__})
    return [np.asarray(tree)]


def agreement_report(
    parallel: tuple, sequential: tuple, *, dtype: str, length: int, to_numpy: Callable,
    rtol: float | None = None, atol: float | None = None,
) -> AgreementReport:
    """Compare ``(y, final_state)`` of the two paths; states may be arrays or nested structures."""
    tol = tolerance_for(dtype, grad=True)
    tol = Tolerance(tol.rtol if rtol is None else rtol, tol.atol if atol is None else atol)
    y_par, y_seq = to_numpy(parallel[0]), to_numpy(sequential[0])
    err_y, allowed_y = max_violation(y_seq, y_par, tol)
    errs_s = [max_violation(s, p, tol) for p, s in zip(_leaves(_map(parallel[1], to_numpy)),
                                                          _leaves(_map(sequential[1], to_numpy)))]
    err_s = max((e for e, _ in errs_s), default=0.0)
    allowed_s = min((a for _, a in errs_s), default=tol.atol)
    ok = err_y <= allowed_y and all(e <= a for e, a in errs_s)
    return AgreementReport(ok, err_y, err_s, allowed_y, allowed_s, tol, dtype, length)


def _map(tree, fn):
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        items = [_map(v, fn) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)  # NamedTuple states
    if hasattr(tree, "__dataclass_fields__"):
        return {k: _map(getattr(tree, k), fn) for k in tree.__dataclass_fields__}
    return fn(tree)


def run_agreement(model, x, *, initial_state, stack: Callable, dtype_name: Callable, to_numpy: Callable,
                  rtol: float | None = None, atol: float | None = None) -> AgreementReport:
    """The framework-neutral body of ``verify_agreement``; ``stack(list, like)`` joins step outputs on axis 1.

    A module with ``batch_first=False`` reads ``x (T, B, ...)`` and returns ``y`` so; its steps still take
    ``x_t (B, ...)``, and its parallel ``y`` is compared in batch-first order."""
    batch_first = getattr(model, "batch_first", True)
    parallel = model(x, initial_state, mode="parallel")
    n_batch, n_time = (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])
    state = model.initial_state(n_batch) if initial_state is None else initial_state
    outputs = []
    for t in range(n_time):
        y_t, state = model.step(x[:, t] if batch_first else x[t], state)
        outputs.append(y_t)
    dtype = dtype_name(parallel[0])
    if not batch_first:  # the step outputs join on axis 1: compare with (B, T, ...)
        parallel = (np.swapaxes(to_numpy(parallel[0]), 0, 1), parallel[1])
    sequential = (stack(outputs, parallel[0]), state)
    return agreement_report(parallel, sequential, dtype=dtype, length=n_time, to_numpy=to_numpy, rtol=rtol,
                            atol=atol)
