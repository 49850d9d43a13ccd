"""The NumPy backend: the reference semantics, vectorised; no autodiff (the scan VJP is analytic)."""

from linrec.backends.numpy.arrays import asarray, dtype_name, to_numpy
from linrec.backends.numpy.gated_linear_rnn import (
    gated_linear_rnn,
    gated_linear_rnn_initial_state,
    gated_linear_rnn_step,
)
from linrec.backends.numpy.gated_linear_rnn_lm import (
    gated_linear_rnn_lm,
    gated_linear_rnn_lm_initial_state,
    gated_linear_rnn_lm_step,
)
from linrec.backends.numpy.gateloop_mh import (
    gateloop_mh,
    gateloop_mh_initial_state,
    gateloop_mh_step,
)
from linrec.backends.numpy.gateloop_mh_lm import (
    gateloop_mh_lm,
    gateloop_mh_lm_initial_state,
    gateloop_mh_lm_step,
)
from linrec.backends.numpy.mingru import (
    mingru,
    mingru_gates,
    mingru_initial_state,
    mingru_log_gates,
    mingru_step,
)
from linrec.backends.numpy.mingru_lm import (
    mingru_lm,
    mingru_lm_generate,
    mingru_lm_initial_state,
    mingru_lm_step,
)
from linrec.backends.numpy.mingru_stack import (
    mingru_stack,
    mingru_stack_initial_state,
    mingru_stack_step,
)
from linrec.backends.numpy.minlstm import (
    minlstm,
    minlstm_gates,
    minlstm_initial_state,
    minlstm_log_gates,
    minlstm_step,
)
from linrec.backends.numpy.scan import (
    LOG_METHODS,
    METHODS,
    cu_seqlens_to_resets,
    linear_scan,
    linear_scan_vjp,
    log_scan,
)
from linrec.spec.state import State

NAME = "numpy"


def describe() -> dict:
    """What ``linrec info`` and the conformance report show about this backend."""
    from linrec.backends import native

    return {"native_kernel": "built" if native.available() else f"not built ({native.build_error()})"}


__all__ = [
    "LOG_METHODS",
    "METHODS",
    "NAME",
    "State",
    "asarray",
    "cu_seqlens_to_resets",
    "describe",
    "dtype_name",
    "gated_linear_rnn",
    "gated_linear_rnn_initial_state",
    "gated_linear_rnn_lm",
    "gated_linear_rnn_lm_initial_state",
    "gated_linear_rnn_lm_step",
    "gated_linear_rnn_step",
    "gateloop_mh",
    "gateloop_mh_initial_state",
    "gateloop_mh_lm",
    "gateloop_mh_lm_initial_state",
    "gateloop_mh_lm_step",
    "gateloop_mh_step",
    "linear_scan",
    "linear_scan_vjp",
    "log_scan",
    "mingru",
    "mingru_gates",
    "mingru_initial_state",
    "mingru_lm",
    "mingru_lm_generate",
    "mingru_lm_initial_state",
    "mingru_lm_step",
    "mingru_log_gates",
    "mingru_stack",
    "mingru_stack_initial_state",
    "mingru_stack_step",
    "mingru_step",
    "minlstm",
    "minlstm_gates",
    "minlstm_initial_state",
    "minlstm_log_gates",
    "minlstm_step",
    "to_numpy",
]
