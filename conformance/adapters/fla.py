"""flash-linear-attention's HGRN recurrence (``fla.ops.hgrn``, from PyPI ``fla-core``) under the spec's names.

HGRN computes ``h_t = exp(g_t) * h_{t-1} + x_t`` on ``(B, T, D)`` with a log-space gate ``g``: the adapter passes
``g = log(a)`` (a change of parameterisation; ``a = 0`` gives ``g = -inf``, ``exp(-inf) = 0``). A negative decay
has no log, so ``a < 0`` is refused. Methods: ``"fused_recurrent"`` (``fused_recurrent_hgrn``) and ``"chunk"``
(``chunk_hgrn``), both with ``initial_state`` and ``output_final_state``.

**Why it does not run on CPU** (:data:`CPU_REASON`): every fla kernel is wrapped in ``triton.autotune`` with several
configs (HGRN: ``BD`` x ``num_warps``), and Triton's autotuner times each config through the active GPU driver
(``driver.active.get_benchmarker()``) even under ``TRITON_INTERPRET=1``; a CPU-only machine has no driver, so the
first call raises ``RuntimeError: 0 active drivers``. Running it would mean patching the peer, which would no
longer measure the peer. Importing this module without a CUDA device therefore raises ``ImportError`` with that
reason; on a GPU the suite runs on it.

GLA (``fla.ops.gla.fused_recurrent_gla``) is not adapted: it returns ``o_t = q_t S_t`` with the state
``S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T``, never ``S_t`` itself, and its input is a rank-one ``k v^T``:
the spec's ``linear_scan(a, b)`` with a general ``b`` is not expressible in it without building the scan from
attention (emulation).
"""

from __future__ import annotations

import math

import torch

from linrec.backends.torch.arrays import asarray, dtype_name, to_numpy
from linrec.conformance.adapters._common import Unsupported, load_xfails, refuse_lacking

__all__ = ["CPU_REASON", "LACKS", "METHODS", "XFAILS", "Unsupported", "asarray", "describe", "dtype_name",
           "linear_scan", "linear_scan_vjp", "to_numpy"]

CPU_REASON = ("flash-linear-attention's kernels are wrapped in triton.autotune with several configs, and Triton's "
              "autotuner benchmarks them through the active GPU driver even under TRITON_INTERPRET=1; without a "
              "CUDA device there is no driver ('RuntimeError: 0 active drivers'), so fla's HGRN/GLA ops cannot run "
              "in the interpreter on CPU")

if not torch.cuda.is_available():
    raise ImportError(f"the fla adapter needs a CUDA device: {CPU_REASON}")

try:
    from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn
except ImportError as err:
    raise ImportError(f"the fla adapter needs fla-core and triton ({err}); install them with: "
                      "python -m pip install -c constraints.txt 'linrec[peers]'") from err

PEER = "flash-linear-attention"
METHODS: tuple[str, ...] = ("fused_recurrent", "chunk")
LOG_METHODS: tuple[str, ...] = ()
_OPS = {"fused_recurrent": fused_recurrent_hgrn, "chunk": chunk_hgrn}
_NO_COMPLEX = "HGRN's gate exp(g) is real"
_COMMON = {"reverse": "hgrn ops have no reverse argument", "resets": "no resets (only cu_seqlens, variable-length "
           "packing, which starts every sequence from its own initial state)", "complex64": _NO_COMPLEX,
           "complex128": _NO_COMPLEX}
LACKS: dict[str, dict[str, str]] = {m: dict(_COMMON) for m in METHODS}
XFAILS: dict[str, str] = load_xfails("fla")


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    resets: torch.Tensor | None = None,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_t = a_t * h_{t-1} + b_t`` by fla's HGRN op ``method`` (``"auto"``: ``fused_recurrent``).

    Args: ``a`` ``(B, T, *S)`` (or broadcastable; ``a >= 0``), ``b`` ``(B, T, *S)``, ``initial_state``
    ``(B, *S)``; ``reverse``/``resets`` are refused (:class:`Unsupported`).

    Returns: ``(h (B, T, *S), final_state (B, *S))``.
    """
    method = "fused_recurrent" if method == "auto" else method
    if method not in METHODS:
        raise ValueError(f"method must be one of {('auto', *METHODS)}, got {method!r}")
    refuse_lacking(PEER, method, LACKS[method], dtype=dtype_name(b), reverse=bool(reverse),
                   has_initial_state=False, has_resets=resets is not None and bool(resets[:, 1:].any()),
                   length=b.shape[1])
    if bool((a < 0).any()):
        raise Unsupported(f"{PEER} method={method!r}: a negative decay has no log (HGRN's gate is exp(g) > 0)")
    shape = tuple(b.shape)
    flat = (shape[0], shape[1], math.prod(shape[2:]))
    g = torch.log(a.expand(shape)).reshape(flat).contiguous()
    h0 = None if initial_state is None else initial_state.reshape(flat[0], flat[2]).contiguous()
    h, final = _OPS[method](b.reshape(flat).contiguous(), g, initial_state=h0, output_final_state=True)
    return h.reshape(shape), final.reshape(shape[0], *shape[2:])


def linear_scan_vjp(
    a: torch.Tensor,
    b: torch.Tensor,
    cotangent_h: torch.Tensor,
    cotangent_final_state: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    resets: torch.Tensor | None = None,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VJP of :func:`linear_scan` through torch autograd (fla's backward kernels); ``initial_state=None`` is
    passed as explicit zeros so the gradient w.r.t. it comes from the peer."""
    h0 = torch.zeros((b.shape[0], *b.shape[2:]), dtype=b.dtype) if initial_state is None else initial_state
    leaves = [x.detach().requires_grad_(True) for x in (a, b, h0)]
    with torch.enable_grad():
        h, final = linear_scan(*leaves[:2], initial_state=leaves[2], reverse=reverse, resets=resets, method=method)
        outs, cts = [h], [cotangent_h]
        if cotangent_final_state is not None:
            outs.append(final)
            cts.append(cotangent_final_state)
        grads = torch.autograd.grad(outs, leaves, cts, allow_unused=True)
    a_bar, b_bar, h0_bar = (torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves))
    return a_bar, b_bar, h0_bar


def describe() -> dict:
    """What the report records about this adapter: the peer's version and what it lacks."""
    from importlib.metadata import version

    return {"peer": PEER, "peer_version": version("fla-core"), "lacks": LACKS}
