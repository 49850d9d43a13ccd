"""accelerated-scan (PyPI ``accelerated-scan``) under the spec's names, for the conformance suite.

Methods (the peer's own entry points, each ``scan(gates, tokens)`` on ``(B, C, T)`` contiguous tensors):

- ``"scalar"``: ``accelerated_scan.scalar.scan``, its Triton kernel (forward and backward). Without a CUDA device
  it runs in Triton's interpreter: importing this module sets ``TRITON_INTERPRET=1`` when unset.
- ``"complex"``: ``accelerated_scan.complex.scan``, its Triton kernel for complex gates (same interpreter rule).
- ``"ref"``: ``accelerated_scan.ref.scan``, its PyTorch tree scan (the one variant with ``reverse=``).

``accelerated_scan.warp`` is not offered: it compiles CUDA source with ``torch.utils.cpp_extension.load_inline``
when imported, which needs nvcc and a GPU (see :data:`UNAVAILABLE`).

Layout: ``(B, T, *S)`` is flattened to ``(B, D, T)`` with ``D = prod(S)`` (a broadcast ``a`` is materialised) and
back. ``final_state`` is ``h`` at the last scanned step (t = T-1, or t = 0 with ``reverse``), zeros for T = 0.
Nothing the peer lacks is emulated: see :data:`LACKS`.
"""

from __future__ import annotations

import math
import os

import torch

from linrec.backends.torch.arrays import asarray, dtype_name, to_numpy
from linrec.conformance.adapters._common import Unsupported, load_xfails, refuse_lacking

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    from accelerated_scan import complex as _complex
    from accelerated_scan import ref as _ref
    from accelerated_scan import scalar as _scalar
except ImportError as err:  # the peer or triton is missing
    raise ImportError(f"the accelerated-scan adapter needs accelerated-scan and triton ({err}); "
                      "install them with: python -m pip install -c constraints.txt 'linrec[peers]'") from err

__all__ = ["LACKS", "METHODS", "UNAVAILABLE", "XFAILS", "Unsupported", "asarray", "describe", "dtype_name",
           "linear_scan", "linear_scan_vjp", "to_numpy"]

PEER = "accelerated-scan"
METHODS: tuple[str, ...] = ("scalar", "complex", "ref")
LOG_METHODS: tuple[str, ...] = ()

_NO_H0 = "scan(gates, tokens) starts from zero; it takes no initial state"
_NO_RESETS = "no segment starts (resets) argument"
_REAL_ONLY = "a real kernel; complex gates are accelerated_scan.complex's job"
_COMPLEX_ONLY = "its gates must be complex (a real input would come back complex)"
#: method -> option or dtype -> why the peer does not offer it
LACKS: dict[str, dict[str, str]] = {
    "scalar": {"reverse": "scalar.scan has no reverse argument", "resets": _NO_RESETS, "initial_state": _NO_H0,
               "initial_state_grad": _NO_H0, "complex64": _REAL_ONLY, "complex128": _REAL_ONLY},
    "complex": {"reverse": "complex.scan has no reverse argument", "resets": _NO_RESETS, "initial_state": _NO_H0,
                "initial_state_grad": _NO_H0, "float32": _COMPLEX_ONLY, "float64": _COMPLEX_ONLY,
                "bfloat16": _COMPLEX_ONLY, "float16": _COMPLEX_ONLY},
    "ref": {"resets": _NO_RESETS, "initial_state": _NO_H0, "initial_state_grad": _NO_H0},
}
#: entry points that cannot run here, and why
UNAVAILABLE: dict[str, str] = {
    "warp": "accelerated_scan.warp compiles CUDA C++ (warp.cuh) with torch.utils.cpp_extension.load_inline at "
            "import: it needs nvcc and a CUDA GPU, and has no interpreter",
}
XFAILS: dict[str, str] = load_xfails("accelerated_scan")


def _resolve(method: str, b: torch.Tensor) -> str:
    if method == "auto":
        return "complex" if b.is_complex() else "scalar"
    if method in UNAVAILABLE:
        raise RuntimeError(f"method={method!r}: {UNAVAILABLE[method]}; use one of {METHODS}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {('auto', *METHODS)}, got {method!r}")
    return method


def _to_peer(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, T, *S) (broadcast to ``shape``) -> the peer's contiguous (B, D, T)."""
    x = x.expand(shape)
    return x.reshape(shape[0], shape[1], math.prod(shape[2:])).transpose(1, 2).contiguous()


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    resets: torch.Tensor | None = None,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_t = a_t * h_{t-1} + b_t`` by accelerated-scan's ``method``.

    Args:
      a: decays ``(B, T, *S)`` or broadcastable to ``b``.
      b: inputs ``(B, T, *S)``.
      initial_state: ``(B, *S)``; refused (:class:`Unsupported`): the peer starts from zero.
      reverse: scan from the end; only ``method="ref"`` offers it.
      resets: ``(B, T)`` bool segment starts; refused when a segment starts after t = 0.
      method: ``"scalar"``, ``"complex"``, ``"ref"`` or ``"auto"`` (``complex`` for complex ``b``, else ``scalar``).

    Returns:
      ``(h (B, T, *S), final_state (B, *S))``.
    """
    method = _resolve(method, b)
    refuse_lacking(PEER, method, LACKS[method], dtype=dtype_name(b), reverse=bool(reverse),
                   has_initial_state=initial_state is not None,
                   has_resets=resets is not None and bool(torch.as_tensor(resets)[:, 1:].any()), length=b.shape[1])
    shape = tuple(b.shape)
    gates, tokens = _to_peer(a, shape), _to_peer(b, shape)
    if method == "scalar":
        out = _scalar.scan(gates, tokens)
    elif method == "complex":
        out = _complex.scan(gates, tokens)
    else:
        out = _ref.scan(gates, tokens, reverse=bool(reverse))
    h = out.transpose(1, 2).reshape(shape)
    if shape[1] == 0:
        return h, torch.zeros((shape[0], *shape[2:]), dtype=b.dtype)
    return h, h[:, 0 if reverse else -1]


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The VJP of :func:`linear_scan` through torch autograd (the ``scalar``/``complex`` methods run the peer's
    Triton backward kernel), in the JAX complex convention (cotangents conjugated in and out).

    Returns ``(a_bar, b_bar, None)``: no method offers an initial state, so there is no gradient w.r.t. it
    (``LACKS[method]["initial_state_grad"]``).
    """
    a_leaf, b_leaf = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
    with torch.enable_grad():
        h, final = linear_scan(a_leaf, b_leaf, initial_state=initial_state, reverse=reverse, resets=resets,
                               method=method)
        outs, cts = [h], [cotangent_h.conj().resolve_conj()]  # a physical conjugate: the peer views it as real
        if cotangent_final_state is not None and h.shape[1] > 0:
            outs.append(final)
            cts.append(cotangent_final_state.conj().resolve_conj())
        grads = torch.autograd.grad(outs, [a_leaf, b_leaf], cts, allow_unused=True) if h.requires_grad else (None,
                                                                                                            None)
    a_bar, b_bar = (torch.zeros_like(x) if g is None else g.conj().resolve_conj() for g, x in zip(grads, (a, b)))
    return a_bar, b_bar, None


def describe() -> dict:
    """What the report records about this adapter: the peer's version, the interpreter, what it lacks."""
    from importlib.metadata import version

    return {"peer": PEER, "peer_version": version("accelerated-scan"), "triton_version": version("triton"),
            "triton_interpret": os.environ.get("TRITON_INTERPRET", ""), "lacks": LACKS, "unavailable": UNAVAILABLE}

