"""The native CPU scan kernel (``linrec_scan.cc``), shared by the NumPy, JAX and PyTorch backends.

Importing this package imports no framework and compiles nothing: the library is built (into a per-user cache,
see :mod:`linrec.backends.native.build`) on the first call that needs it.

Layout the kernel works on (all C-contiguous, compute dtype, time order):

- ``a: (N, T, Da)``, ``b: (N, T, D)``, ``h0: (N, D)``, ``cut: (N, T)`` bool or ``None``;
- ``N`` is every leading axis flattened, ``D = Da * R`` the flattened state, and ``a`` is repeated ``R`` times along
  the contiguous state axis. :func:`decay_layout` maps a ``(B, T, *Sa)`` decay of a ``(B, T, *S)`` state onto it:
  a full decay, a per-row decay ``(H, K, 1)`` of a matrix state and a scalar decay need no copy; any other broadcast
  (a ``1`` before a full axis, e.g. ``(1, K, V)``) is materialised up to the last full axis, which costs one extra
  read and write of that copy and, in the VJP, a sum over the materialised axes.
- ``cut[n, t]``: step ``t`` ignores the carried state (``linrec.spec.reference.cut_mask`` semantics);
- ``reverse``: the steps run from ``T-1`` down to ``0``.

The NumPy-level helpers here (:func:`linear_scan`, :func:`linear_scan_vjp`) are what the NumPy backend calls; the
JAX and PyTorch wrappers live in ``linrec.backends.jax.native`` and ``linrec.backends.torch.native``.

Fused layer kernels in the same library: :func:`mingru_scan` and :func:`glr_scan` (and their VJPs) compute the
minGRU and GatedLinearRNN gates inside the scan from the layers' projections; the layers call them through
``linrec.backends.{numpy,jax,torch}.native_mingru`` / ``native_gated_linear_rnn`` for ``method="auto"/"native"``.

Speed (``benchmarks/results/scan.md``): the kernel carries each row in a per-thread buffer, writes outputs over
8 MiB with streaming stores, prefetches walks down through memory and asks for transparent huge pages on large
outputs. What it cannot avoid is the framework handing it freshly mapped output memory on every call; the opt-in
:func:`retain_freed_memory` (:mod:`linrec.backends.native.malloc`) removes that cost process-wide.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _builder():
    # Imported on use, not at package import: `python -m linrec.backends.native.build` then runs the module once.
    from linrec.backends.native import build

    return build


def __getattr__(name: str):
    if name == "NativeBuildError":
        return _builder().NativeBuildError
    if name == "retain_freed_memory":
        from linrec.backends.native.malloc import retain_freed_memory

        return retain_freed_memory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DTYPE_CODES",
    "KERNEL_PAIRS",
    "NativeBuildError",
    "available",
    "build_error",
    "check_fused_shapes",
    "check_gmh_shapes",
    "decay_layout",
    "describe",
    "fused_double_backward_message",
    "gateloop_mh_scan",
    "gateloop_mh_scan_vjp",
    "glr_scan",
    "glr_scan_vjp",
    "gmh_checkpoints",
    "gmh_codes",
    "gmh_output_dtype",
    "linear_scan",
    "linear_scan_vjp",
    "mingru_scan",
    "mingru_scan_vjp",
    "retain_freed_memory",
    "scan_3d",
    "scan_vjp_3d",
    "state_dtype",
]

#: dtype name -> the kernel's dtype code (``enum Dtype`` in ``linrec_scan.cc``).
DTYPE_CODES = {"float32": 0, "float64": 1, "complex64": 2, "complex128": 3, "bfloat16": 4}
#: Supported ``(a, state)`` dtype pairs of the NumPy helpers: same dtype, or a real decay of a complex state of the
#: same precision. The state (``h0``, ``final``) has the dtype of ``b``.
DTYPE_PAIRS = frozenset(
    [(d, d) for d in ("float32", "float64", "complex64", "complex128")]
    + [("float32", "complex64"), ("float64", "complex128")]
)
#: The pairs the torch and JAX wrappers pass: also bfloat16 ``a``, ``b`` (read and written as bfloat16 by the
#: kernel, recurrence.md §5) with a float32 state: ``h0``/``final`` (and their cotangents) are float32.
KERNEL_PAIRS = DTYPE_PAIRS | {("bfloat16", "bfloat16")}


def state_dtype(stream: str) -> str:
    """The dtype name of the kernel's ``h0``/``final`` for ``b`` of dtype ``stream``: float32 for bfloat16."""
    return "float32" if stream == "bfloat16" else stream

_STATUS = {1: "unsupported dtype pair (a, b)", 2: "inconsistent sizes"}


def fused_double_backward_message(layer: str) -> str:
    """Why a second derivative through a fused layer kernel raises, and which methods serve it."""
    return (f"the fused native {layer} kernel (method='auto'/'native' on CPU) has no second derivative; for "
            "higher-order gradients run the layer with method='chunked', 'associative' or 'sequential'")


def available() -> bool:
    """Whether the kernel is built (building it now if needed) and loads."""
    return _builder().available()


def build_error() -> str | None:
    """Why the kernel is unavailable (what is missing), or ``None``."""
    return _builder().build_error()


def describe() -> dict[str, Any]:
    """The kernel's state, building it if needed (what ``linrec info`` prints).

    ``{"built": bool, "path": str | None, "cache": str, "error": str | None, "xla_ffi": bool, "threads": int | None}``:
    ``path`` is the library (or where it would be built; ``None`` when even that is unknown, e.g. no compiler),
    ``cache`` the cache root (``$LINREC_CACHE``), ``error`` why the kernel is unavailable.
    """
    builder = _builder()
    path: str | None = None
    cache = "unknown"
    try:
        cache = str(builder.cache_root())
        path = str(builder.library_path())
    except Exception:  # no compiler, no home directory: `error` below says which
        pass
    info: dict[str, Any] = {"built": False, "path": path, "cache": cache, "error": None,
                            "xla_ffi": False, "threads": None}
    try:
        lib = builder.load()
    except builder.NativeBuildError as err:
        return {**info, "error": str(err)}
    return {**info, "built": True, "path": str(lib._name), "xla_ffi": bool(lib.linrec_has_ffi()),
            "threads": int(lib.linrec_num_threads())}


def decay_layout(a_state: tuple[int, ...], state: tuple[int, ...]) -> tuple[tuple[int, ...], int, int]:
    """Map a decay of per-step shape ``a_state`` (``*Sa``) onto a state of shape ``state`` (``*S``).

    Returns ``(target, Da, R)``: broadcast ``a`` to ``(B, T, *target)`` (a no-op unless some axis before the last
    full one is 1) and reshape it to ``(B, T, Da)``; the state is ``(B, T, Da * R)``.
    """
    k = len(state)
    while k > 0 and a_state[k - 1] == 1:  # the trailing run of broadcast axes becomes the repeat R
        k -= 1
    target = tuple(state[:k]) + (1,) * (len(state) - k)
    return target, math.prod(state[:k]), math.prod(state[k:])


def _check(status: int) -> None:
    if status:
        raise ValueError(f"linrec native kernel: {_STATUS.get(status, f'error {status}')}")


def _ptr(x: np.ndarray | None) -> int | None:
    return None if x is None else x.ctypes.data


def _codes(a: np.ndarray, s: np.ndarray) -> tuple[int, int]:
    pair = (a.dtype.name, s.dtype.name)
    if pair not in DTYPE_PAIRS:
        raise TypeError(f"linrec native kernel: unsupported dtypes (a={pair[0]}, state={pair[1]}); "
                        f"supported pairs: {sorted(DTYPE_PAIRS)}")
    return DTYPE_CODES[pair[0]], DTYPE_CODES[pair[1]]


def scan_3d(a: np.ndarray, b: np.ndarray, h0: np.ndarray, cut: np.ndarray | None = None,
            reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The kernel on ``a (N, T, Da)``, ``b (N, T, D)``, ``h0 (N, D)``, ``cut (N, T)``: returns ``(h, final)``."""
    lib = _builder().load()
    a, b, h0 = (np.ascontiguousarray(x) for x in (a, b, h0))
    cut = None if cut is None else np.ascontiguousarray(cut, dtype=np.bool_)
    n, t, d = b.shape
    h, final = np.empty_like(b), np.empty_like(h0)
    _check(lib.linrec_scan_fwd(*_codes(a, b), n, t, d, a.shape[2], _ptr(a), _ptr(b), _ptr(h0), _ptr(cut),
                               int(reverse), _ptr(h), _ptr(final)))
    return h, final


def shares_one_row(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether an ``(N, T, D)`` cotangent is one row of ``D`` repeated over every ``N`` and ``T`` (zero strides
    there): the expanded cotangent of ``h.sum()`` in PyTorch, or a ``np.broadcast_to`` row. The backward kernels
    then read that row at every step (``ct_row_stride = 0``) instead of a materialised copy the size of ``h``."""
    n, t, d = shape
    return n * t > 1 and d > 0 and strides[0] == 0 and strides[1] == 0


def _cotangent_rows(ct: np.ndarray) -> tuple[np.ndarray, int]:
    """``ct (N, T, D)`` as the backward kernels read it: ``(buffer, row stride)``, see :func:`shares_one_row`."""
    if shares_one_row(ct.shape, ct.strides):
        return np.ascontiguousarray(ct[0, 0]), 0
    return np.ascontiguousarray(ct), ct.shape[2]


def scan_vjp_3d(a: np.ndarray, h: np.ndarray, h0: np.ndarray, ct_h: np.ndarray, ct_final: np.ndarray,
                cut: np.ndarray | None = None, reverse: bool = False,
                conjugate: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The VJP of :func:`scan_3d` given its output ``h``: ``(a_bar (N, T, Da), b_bar (N, T, D), h0_bar (N, D))``.

    ``conjugate=False`` is the JAX convention of recurrence.md §10; ``True`` is PyTorch's (conjugated Jacobian).
    """
    lib = _builder().load()
    ct_h, ct_rs = _cotangent_rows(ct_h)
    a, h, h0, ct_final = (np.ascontiguousarray(x) for x in (a, h, h0, ct_final))
    cut = None if cut is None else np.ascontiguousarray(cut, dtype=np.bool_)
    n, t, d = h.shape
    a_bar, b_bar, h0_bar = np.empty_like(a), np.empty_like(h), np.empty_like(h0)
    _check(lib.linrec_scan_bwd(*_codes(a, h), n, t, d, a.shape[2], _ptr(a), _ptr(h), _ptr(h0), _ptr(ct_h), ct_rs,
                               _ptr(ct_final), _ptr(cut), int(reverse), int(conjugate), _ptr(a_bar), _ptr(b_bar),
                               _ptr(h0_bar)))
    return a_bar, b_bar, h0_bar


#: minGRU candidate activation -> the kernel's code (``enum Candidate`` in ``linrec_scan.cc``).
CANDIDATE_CODES = {"identity": 0, "g": 1}
#: the gates of the fused minGRU kernel: minGRU's (``u = [u_z | u_h]``, 2H) or minLSTM's (``[u_f | u_i | u_h]``, 3H;
#: ``f' = f/(f+i)``, ``i' = i/(f+i)``, spec/minlstm.md), a flag added to the candidate code
GATE_FLAGS = {"mingru": 0, "minlstm": 2}


def fused_code(candidate: str, gates: str = "mingru") -> int:
    """The fused minGRU kernel's ``candidate`` argument: the candidate's code plus the gates' flag."""
    if gates not in GATE_FLAGS:
        raise ValueError(f"gates must be one of {sorted(GATE_FLAGS)}, got {gates!r}")
    return CANDIDATE_CODES[candidate] + GATE_FLAGS[gates]


def gate_blocks(code: int) -> int:
    """Blocks of ``H`` columns in ``u`` for a fused minGRU ``code``: 2 (minGRU) or 3 (minLSTM)."""
    return 3 if code & GATE_FLAGS["minlstm"] else 2


#: dtypes of the fused layer kernels (minGRU/minLSTM, GatedLinearRNN; real only; the multi-head GateLoop's q, k, v).
FUSED_DTYPES = ("float32", "float64")


def check_fused_shapes(u_shape, h0_shape, blocks: int, h_shape=None, ct_h_shape=None, ct_final_shape=None) -> None:
    """``ValueError`` unless ``u (N, T, blocks·H)``, ``h0 (N, H)`` and, for a VJP, ``h``/``ct_h (N, T, H)`` and
    ``ct_final (N, H)`` agree: the fused kernels index by these sizes and must never read past a buffer."""
    u_shape, h0_shape = tuple(u_shape), tuple(h0_shape)
    ok = len(u_shape) == 3 and len(h0_shape) == 2 and u_shape[0] == h0_shape[0] and u_shape[2] == blocks * h0_shape[1]
    state = (*u_shape[:2], h0_shape[-1]) if ok else None
    ok = ok and all(s is None or tuple(s) == state for s in (h_shape, ct_h_shape))
    ok = ok and (ct_final_shape is None or tuple(ct_final_shape) == h0_shape)
    if not ok:
        raise ValueError(f"fused kernel: u must be (N, T, {blocks}*H) with h0 (N, H) (and h, ct_h (N, T, H), "
                         f"ct_final (N, H)); got u {u_shape}, h0 {h0_shape}, h {h_shape}, ct_h {ct_h_shape}, "
                         f"ct_final {ct_final_shape}")


def mingru_scan(u: np.ndarray, h0: np.ndarray, candidate: str, gates: str = "mingru"
                ) -> tuple[np.ndarray, np.ndarray]:
    """minGRU with its gates fused into the scan: ``u (N, T, 2H) = [u_z | u_h]``, ``h0 (N, H)`` -> ``(h, final)``.

    ``h_t = σ(-u_z) h_{t-1} + σ(u_z) c(u_h)`` (spec/mingru.md) in one pass over ``u``; float32/float64.
    ``gates="minlstm"``: ``u (N, T, 3H) = [u_f | u_i | u_h]`` and ``h_t = f' h_{t-1} + i' c(u_h)`` with
    ``f' = f/(f+i)``, ``i' = i/(f+i)`` (spec/minlstm.md: minGRU's gates of ``d = log(i/f)``).
    """
    code = fused_code(candidate, gates)
    blocks = gate_blocks(code)
    check_fused_shapes(u.shape, h0.shape, blocks)
    lib = _builder().load()
    u, h0 = np.ascontiguousarray(u), np.ascontiguousarray(h0)
    n, t, width = u.shape
    h, final = np.empty((n, t, width // blocks), u.dtype), np.empty_like(h0)
    _check(lib.linrec_mingru_fwd(DTYPE_CODES[u.dtype.name], n, t, width // blocks, code, _ptr(u), _ptr(h0), _ptr(h),
                                 _ptr(final)))
    return h, final


def mingru_scan_vjp(u: np.ndarray, h: np.ndarray, h0: np.ndarray, ct_h: np.ndarray, ct_final: np.ndarray,
                    candidate: str, gates: str = "mingru") -> tuple[np.ndarray, np.ndarray]:
    """The VJP of :func:`mingru_scan` given its output ``h``: ``(u_bar (N, T, 2H or 3H), h0_bar (N, H))``."""
    code = fused_code(candidate, gates)
    blocks = gate_blocks(code)
    check_fused_shapes(u.shape, h0.shape, blocks, h.shape, ct_h.shape, ct_final.shape)
    lib = _builder().load()
    ct_h, ct_rs = _cotangent_rows(ct_h)
    u, h, h0, ct_final = (np.ascontiguousarray(x) for x in (u, h, h0, ct_final))
    n, t, width = u.shape
    u_bar, h0_bar = np.empty_like(u), np.empty_like(h0)
    _check(lib.linrec_mingru_bwd(DTYPE_CODES[u.dtype.name], n, t, width // blocks, code, _ptr(u), _ptr(h), _ptr(h0),
                                 _ptr(ct_h), ct_rs, _ptr(ct_final), _ptr(u_bar), _ptr(h0_bar)))
    return u_bar, h0_bar


#: the narrowest value width (``d_value``) the multi-head GateLoop kernel serves: its inner loops run over ``V``, and
#: narrower heads (one SISO head per channel, ``V = 1``) run faster as one vectorised scan over all heads (measured:
#: 2.1 s vs 1.5 s for a training step at B=8, T=4096, 512 heads of 1x1)
GMH_MIN_VALUE_WIDTH = 8
#: complex dtype of each real precision (the multi-head GateLoop's complex state)
_COMPLEX_OF = {"float32": "complex64", "float64": "complex128"}


def gmh_codes(real: str, gate: str, state: str) -> tuple[int, int, int]:
    """The multi-head GateLoop kernel's ``(dtype, complex_state, complex_gate)`` for ``q``/``k``/``v`` of dtype
    ``real``, a gate of dtype ``gate`` and a state of dtype ``state``; ``TypeError`` for any other combination:
    float32/float64 ``q``, ``k``, ``v``; a state of that dtype or its complex one; a real gate, or a complex gate of
    a complex state."""
    if real not in FUSED_DTYPES or state not in (real, _COMPLEX_OF[real]) or gate not in (real, state):
        raise TypeError(f"the native multi-head GateLoop kernel takes float32/float64 q, k, v, a state of that dtype "
                        f"or its complex one and a gate of either; got q/k/v {real}, a {gate}, state {state}")
    return DTYPE_CODES[real], int(state != real), int(gate != real)


def check_gmh_shapes(q, k, v, a, s0) -> tuple[int, int, int, int, int, int]:
    """``(N, T, H, K, V, R)`` of ``q, k (N, T, H, K)``, ``v (N, T, H, V)``, ``a (N, T, H, R)`` (``R`` = ``K`` or 1) and
    ``s0 (N, H, K, V)``; ``ValueError`` when they disagree (the kernel indexes by these sizes)."""
    q, k, v, a, s0 = (tuple(x) for x in (q, k, v, a, s0))
    ok = len(q) == 4 and k == q and len(v) == 4 and v[:3] == q[:3] and len(a) == 4 and a[:3] == q[:3]
    ok = ok and a[3] in (1, q[3]) and s0 == (q[0], q[2], q[3], v[3] if len(v) == 4 else -1)
    if not ok:
        raise ValueError(f"multi-head GateLoop kernel: q, k must be (N, T, H, K), v (N, T, H, V), a (N, T, H, R) "
                         f"with R in (1, K), initial state (N, H, K, V); got q {q}, k {k}, v {v}, a {a}, state {s0}")
    return (*q, v[3], a[3])


def gmh_checkpoints(n: int, t: int, h: int, k: int, v: int) -> tuple[int, ...]:
    """Shape of the forward's saved states: one ``(K, V)`` state per chunk of ``linrec_gmh_chunk()`` steps."""
    chunk = _builder().load().linrec_gmh_chunk()
    return (n, h, -(-t // chunk), k, v)


def gmh_output_dtype(state: np.dtype, real_output: bool) -> np.dtype:
    """The dtype of ``o``: the state's, or its real part's with ``real_output`` (``Re(o)`` only)."""
    state = np.dtype(state)
    return np.real(np.zeros((), state)).dtype if real_output else state


def gateloop_mh_scan(q: np.ndarray, k: np.ndarray, v: np.ndarray, a: np.ndarray, s0: np.ndarray,
                     real_output: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multi-head GateLoop's recurrence with the state kept local (spec/gateloop_mh.md §2): per head
    ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t``, from ``q, k (N, T, H, K)``, ``v (N, T, H, V)``,
    ``a (N, T, H, R)`` and ``s0 (N, H, K, V)``. Returns ``(o (N, T, H, V), S_T (N, H, K, V), checkpoints)`` in the
    state dtype (``o`` real, ``Re(o)``, with ``real_output``); the checkpoints are what
    :func:`gateloop_mh_scan_vjp` recomputes the states from."""
    n, t, h, kk, vv, r = check_gmh_shapes(q.shape, k.shape, v.shape, a.shape, s0.shape)
    codes = gmh_codes(q.dtype.name, a.dtype.name, s0.dtype.name)
    lib = _builder().load()
    q, k, v, a, s0 = (np.ascontiguousarray(x) for x in (q, k, v, a, s0))
    o, s_final = np.empty((n, t, h, vv), gmh_output_dtype(s0.dtype, real_output)), np.empty_like(s0)
    ck = np.empty(gmh_checkpoints(n, t, h, kk, vv), s0.dtype)
    _check(lib.linrec_gmh_fwd(*codes, int(real_output), n, t, h, kk, vv, r,
                              *(_ptr(x) for x in (q, k, v, a, s0, o, s_final, ck))))
    return o, s_final, ck


def gateloop_mh_scan_vjp(q: np.ndarray, k: np.ndarray, v: np.ndarray, a: np.ndarray, ck: np.ndarray,
                         grad_o: np.ndarray, grad_final: np.ndarray) -> tuple[np.ndarray, ...]:
    """The VJP of :func:`gateloop_mh_scan` given its checkpoints: ``(q̄, k̄, v̄, ā, s̄0)``, complex ones in PyTorch's
    convention (``∂L/∂Re + i ∂L/∂Im``; JAX's cotangents are their conjugates). A real ``grad_o`` with a complex state
    is the cotangent of ``real_output=True``'s ``Re(o)``."""
    n, t, h, kk, vv, r = check_gmh_shapes(q.shape, k.shape, v.shape, a.shape, grad_final.shape)
    codes = gmh_codes(q.dtype.name, a.dtype.name, grad_final.dtype.name)
    real_output = codes[1] and grad_o.dtype.kind != "c"
    if tuple(grad_o.shape) != (n, t, h, vv) or tuple(ck.shape) != gmh_checkpoints(n, t, h, kk, vv):
        raise ValueError(f"multi-head GateLoop VJP: grad_o must be {(n, t, h, vv)} and the checkpoints "
                         f"{gmh_checkpoints(n, t, h, kk, vv)}; got {grad_o.shape}, {ck.shape}")
    lib = _builder().load()
    grad_o = grad_o.astype(gmh_output_dtype(grad_final.dtype, real_output), copy=False)
    q, k, v, a, ck, grad_o, grad_final = (np.ascontiguousarray(x) for x in (q, k, v, a, ck, grad_o, grad_final))
    gq, gk, gv, ga, gs0 = (np.empty_like(x) for x in (q, k, v, a, grad_final))
    buffers = (q, k, v, a, ck, grad_o, grad_final, gq, gk, gv, ga, gs0)
    _check(lib.linrec_gmh_bwd(*codes, int(real_output), n, t, h, kk, vv, r, *(_ptr(x) for x in buffers)))
    return gq, gk, gv, ga, gs0


def glr_scan(u: np.ndarray, h0: np.ndarray, tied: bool, reverse: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GatedLinearRNN with its gates fused into the scan (tanh input, sigmoid gates, tanh output):
    ``u (N, T, nH)`` (``[u_in | u_i | u_o]`` tied, ``[u_in | u_i | u_f | u_o]`` untied), ``h0 (N, H)`` ->
    ``(y, h, final)``: ``y = tanh(h) o`` and ``h`` ``(N, T, H)``, ``final (N, H)``; float32/float64."""
    check_fused_shapes(u.shape, h0.shape, 3 if tied else 4)
    lib = _builder().load()
    u, h0 = np.ascontiguousarray(u), np.ascontiguousarray(h0)
    n, t, _ = u.shape
    hidden = h0.shape[-1]
    y, h, final = np.empty((n, t, hidden), u.dtype), np.empty((n, t, hidden), u.dtype), np.empty_like(h0)
    _check(lib.linrec_glr_fwd(DTYPE_CODES[u.dtype.name], n, t, hidden, int(tied), _ptr(u), _ptr(h0), int(reverse),
                              _ptr(y), _ptr(h), _ptr(final)))
    return y, h, final


def glr_scan_vjp(u: np.ndarray, h: np.ndarray, h0: np.ndarray, ct_y: np.ndarray, ct_final: np.ndarray, tied: bool,
                 reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The VJP of :func:`glr_scan` (cotangents of ``y`` and ``final``) given its ``h``: ``(u_bar, h0_bar)``."""
    check_fused_shapes(u.shape, h0.shape, 3 if tied else 4, h.shape, ct_y.shape, ct_final.shape)
    lib = _builder().load()
    ct_y, ct_rs = _cotangent_rows(ct_y)
    u, h, h0, ct_final = (np.ascontiguousarray(x) for x in (u, h, h0, ct_final))
    n, t, _ = u.shape
    u_bar, h0_bar = np.empty_like(u), np.empty_like(h0)
    _check(lib.linrec_glr_bwd(DTYPE_CODES[u.dtype.name], n, t, h0.shape[-1], int(tied), _ptr(u), _ptr(h), _ptr(h0),
                              _ptr(ct_y), ct_rs, _ptr(ct_final), int(reverse), _ptr(u_bar), _ptr(h0_bar)))
    return u_bar, h0_bar


def linear_scan(a: np.ndarray, b: np.ndarray, h0: np.ndarray, cut: np.ndarray | None = None,
                reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(h, final)`` for ``a (B, T, *Sa)``, ``b (B, T, *S)``, ``h0 (B, *S)`` in the compute dtype, time order.

    Arguments are assumed validated (``linrec.spec.checks``); ``cut`` is ``cut_mask(resets, reverse)``.
    """
    n, t, state = b.shape[0], b.shape[1], b.shape[2:]
    target, da, _ = decay_layout(a.shape[2:], state)
    a3 = np.broadcast_to(a, (n, t, *target)).reshape(n, t, da)
    d = math.prod(state)
    h, final = scan_3d(a3, b.reshape(n, t, d), h0.reshape(n, d), cut, reverse)
    return h.reshape(b.shape), final.reshape(h0.shape)


def linear_scan_vjp(a: np.ndarray, h: np.ndarray, h0: np.ndarray, ct_h: np.ndarray, ct_final: np.ndarray,
                    cut: np.ndarray | None = None, reverse: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """JAX-convention VJP of :func:`linear_scan` given its output ``h``: ``(a_bar, b_bar, h0_bar)``."""
    n, t, state = h.shape[0], h.shape[1], h.shape[2:]
    target, da, _ = decay_layout(a.shape[2:], state)
    a3 = np.broadcast_to(a, (n, t, *target)).reshape(n, t, da)
    d = math.prod(state)
    a_bar, b_bar, h0_bar = scan_vjp_3d(a3, h.reshape(n, t, d), h0.reshape(n, d), ct_h.reshape(n, t, d),
                                       ct_final.reshape(n, d), cut, reverse)
    a_bar = a_bar.reshape(n, t, *target)
    axes = tuple(i + 2 for i, (x, y) in enumerate(zip(a.shape[2:], target)) if x != y)
    if axes:
        a_bar = a_bar.sum(axis=axes, keepdims=True)
    return a_bar, b_bar.reshape(h.shape), h0_bar.reshape(h0.shape)


def with_native(methods: tuple[str, ...]) -> tuple[str, ...]:
    """``methods`` plus ``"native"`` when the kernel is built (building it on first use, cached per machine)."""
    return (*methods, "native") if available() else methods


def require_native(method: str) -> None:
    """Raise ``ValueError`` for ``method="native"`` when the kernel is not built, naming what to use instead."""
    if method == "native" and not available():
        raise ValueError(
            f"method='native' is not available: the CPU kernel could not be built or loaded ({build_error()}); "
            "use method='sequential' (or 'auto'), which computes the same function"
        )
