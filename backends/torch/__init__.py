"""The PyTorch backend: every method differentiable (the backward is a reverse scan), ``torch.compile``-able,
layer and model functions and ``nn.Module`` s."""

from linrec.backends.torch.arrays import asarray, dtype_name, to_numpy
from linrec.backends.torch.autodiff import vjp
from linrec.backends.torch.gated_linear_rnn import (
    GatedLinearRNN,
    GateLoop,
    gated_linear_rnn,
    gated_linear_rnn_initial_state,
    gated_linear_rnn_step,
)
from linrec.backends.torch.gated_linear_rnn_lm import (
    GatedLinearRNNLM,
    GateLoopLM,
    gated_linear_rnn_lm,
    gated_linear_rnn_lm_initial_state,
    gated_linear_rnn_lm_step,
)
from linrec.backends.torch.gateloop_mh import (
    GateLoopMH,
    gateloop_mh,
    gateloop_mh_initial_state,
    gateloop_mh_step,
)
from linrec.backends.torch.gateloop_mh_lm import (
    GateLoopMHLM,
    gateloop_mh_lm,
    gateloop_mh_lm_initial_state,
    gateloop_mh_lm_step,
)
from linrec.backends.torch.mingru import (
    MinGRU,
    mingru,
    mingru_gates,
    mingru_initial_state,
    mingru_log_gates,
    mingru_step,
)
from linrec.backends.torch.mingru_lm import (
    MinGRULM,
    mingru_lm,
    mingru_lm_generate,
    mingru_lm_initial_state,
    mingru_lm_step,
)
from linrec.backends.torch.mingru_stack import (
    MinGRUStack,
    mingru_stack,
    mingru_stack_initial_state,
    mingru_stack_step,
)
from linrec.backends.torch.minlstm import (
    MinLSTM,
    minlstm,
    minlstm_gates,
    minlstm_initial_state,
    minlstm_log_gates,
    minlstm_step,
)
from linrec.backends.torch.scan import (
    LOG_METHODS,
    METHODS,
    cu_seqlens_to_resets,
    linear_scan,
    linear_scan_vjp,
    log_scan,
)
from linrec.backends.torch.verify import AgreementReport, verify_agreement
from linrec.spec.state import State

NAME = "torch"


def describe() -> dict:
    """What ``linrec info`` and the conformance report show about this backend."""
    from linrec.backends import native

    return {"native_kernel": "built" if native.available() else f"not built ({native.build_error()})"}


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
    "to_numpy",
    "verify_agreement",
    "vjp",
]
