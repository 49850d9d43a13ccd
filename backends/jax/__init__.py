"""The JAX backend: scans with a scan-shaped custom VJP, layer and model functions, Flax NNX modules.

Importing or using it changes no JAX setting: float64/complex128 inputs need JAX's 64-bit mode, which the caller
enables where needed (``with jax.enable_x64(True):``; see ``arrays.py``).
"""

from linrec.backends import _minimum_jax  # noqa: F401  (first: refuses a jax older than linrec supports)
from linrec.backends.jax.arrays import asarray, dtype_name, precision_scope, to_numpy
from linrec.backends.jax.autodiff import vjp
from linrec.backends.jax.gated_linear_rnn import (
    GatedLinearRNN,
    GateLoop,
    gated_linear_rnn,
    gated_linear_rnn_initial_state,
    gated_linear_rnn_step,
)
from linrec.backends.jax.gated_linear_rnn_lm import (
    GatedLinearRNNLM,
    GateLoopLM,
    gated_linear_rnn_lm,
    gated_linear_rnn_lm_initial_state,
    gated_linear_rnn_lm_step,
)
from linrec.backends.jax.gateloop_mh import (
    GateLoopMH,
    gateloop_mh,
    gateloop_mh_initial_state,
    gateloop_mh_step,
)
from linrec.backends.jax.gateloop_mh_lm import (
    GateLoopMHLM,
    gateloop_mh_lm,
    gateloop_mh_lm_initial_state,
    gateloop_mh_lm_step,
)
from linrec.backends.jax.mingru import (
    MinGRU,
    mingru,
    mingru_gates,
    mingru_initial_state,
    mingru_log_gates,
    mingru_step,
)
from linrec.backends.jax.mingru_lm import (
    MinGRULM,
    mingru_lm,
    mingru_lm_generate,
    mingru_lm_initial_state,
    mingru_lm_step,
)
from linrec.backends.jax.mingru_stack import (
    MinGRUStack,
    mingru_stack,
    mingru_stack_initial_state,
    mingru_stack_step,
)
from linrec.backends.jax.minlstm import (
    MinLSTM,
    minlstm,
    minlstm_gates,
    minlstm_initial_state,
    minlstm_log_gates,
    minlstm_step,
)
from linrec.backends.jax.scan import (
    LOG_METHODS,
    METHODS,
    cu_seqlens_to_resets,
    linear_scan,
    linear_scan_vjp,
    log_scan,
)
from linrec.backends.jax.verify import AgreementReport, verify_agreement
from linrec.spec.state import State

NAME = "jax"


def describe() -> dict:
    """What ``linrec info`` and the conformance report show about this backend."""
    from linrec.backends import native
    from linrec.backends.jax.pallas_scan import describe_pallas

    return {"native_kernel": "built" if native.available() else f"not built ({native.build_error()})",
            "pallas": describe_pallas()}


__all__ = [
    "LOG_METHODS",
    "METHODS",
    "NAME",
    "AgreementReport",
    "GateLoop",
    "GateLoopLM",
    "GateLoopMH",
    "GateLoopMHLM",
    "GatedLinearRNN",
    "GatedLinearRNNLM",
    "MinGRU",
    "MinGRULM",
    "MinGRUStack",
    "MinLSTM",
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
    "precision_scope",
    "to_numpy",
    "verify_agreement",
    "vjp",
]
