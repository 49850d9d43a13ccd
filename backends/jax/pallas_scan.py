"""``method="pallas"`` for the JAX backend: the diagonal scan as a Pallas kernel (recurrence.md §2–§11).

Shape legend: ``B`` batch, ``T`` time, ``*S`` state shape, ``*Sa`` the per-step shape of ``a``; inside the kernel
``N = B``, ``D = prod(S)`` the flattened state, ``Tb`` the time block, ``Dt`` the state tile.

The grid is ``(N, D / Dt, T / Tb)``: each program scans a ``(Tb, Dt)`` tile, step by step, carrying the state in
the resident ``(1, Dt)`` block of a carry output whose block index does not move along the time axis (the
accumulator pattern), so block ``j + 1`` starts from the state block ``j`` ended with. ``reverse`` walks the time
blocks and the steps within them backwards; no flip is ever materialised. Resets arrive as the cut mask
(``linrec.spec.reference.cut_mask``), a select in the kernel, so a NaN or inf never crosses into the next segment.

Inputs are read in their own dtype (bfloat16/float16 included) and the state is carried in the compute dtype
(float32 for 16-bit inputs, ``linrec.spec.checks.compute_dtype``). A complex state is carried as a real/imaginary
pair of real planes (a real decay of a complex state needs one plane for ``a``).

Differentiation: a ``jax.custom_vjp`` whose backward is the same kernel in *adjoint* mode, run in the opposite
direction: ``g_t = ct_t + s``, ``s = conj(a_t) g_t`` (``0`` across a cut), which yields ``b_bar = g`` and
``initial_state_bar`` (the carry after the last step); ``a_bar = conj(h_{t-1}) g_t`` is one fused elementwise pass.
The VJP is written on the real planes, so JAX's complex convention follows from the transposes of
``real``/``imag``/``complex`` around it.

On a CPU (JAX's default device) ``pallas_call`` runs with ``interpret=True``: the same kernel, executed by JAX's
Pallas interpreter, which is how the conformance suite holds it to the spec without an accelerator. It is slow —
use ``method="native"``/``"sequential"`` for speed on CPU; ``auto`` never picks ``pallas`` there.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from linrec.spec import checks

__all__ = [
    "DEVICE_BLOCK_T",
    "INTERPRET_BLOCK_T",
    "MAX_TILE_D",
    "check_pallas_dtype",
    "describe_pallas",
    "interpreted",
    "notice_interpreted",
    "pallas_linear_scan",
]

Array = jax.Array

#: Time steps per grid block on a GPU/TPU: one (Tb, Dt) tile of every input in fast memory per program.
DEVICE_BLOCK_T = 128
#: Time steps per grid block in the interpreter: the small shapes the interpreter can afford (T <= 33 in the
#: conformance suite) still cross several blocks, so the carry between blocks is exercised on CPU.
INTERPRET_BLOCK_T = 8
#: Widest state tile; wider states are padded up to a multiple of it (TPU lanes: a multiple of 128).
MAX_TILE_D = 512
#: dtypes the kernel takes on a GPU/TPU (float64/complex128 only in the interpreter).
DEVICE_DTYPES = ("float32", "bfloat16", "float16", "complex64")

_noticed: set[str] = set()


def interpreted() -> bool:
    """Whether ``method="pallas"`` runs in Pallas's interpreter: JAX's default device is a CPU."""
    return jax.default_backend() == "cpu"


def describe_pallas() -> str:
    """How ``method="pallas"`` runs here, for ``describe()`` / ``linrec info``."""
    if interpreted():
        return "interpreted (JAX's default device is a CPU: Pallas's interpreter; correct, slow; auto never picks it)"
    return f"compiled for {jax.default_backend()} (auto picks it for {', '.join(DEVICE_DTYPES)})"


def notice_interpreted() -> None:
    """Say once per process that the Pallas kernels are interpreted (a ``UserWarning``), so a CPU run of
    ``method="pallas"`` is never mistaken for the accelerated path."""
    if interpreted() and "scan" not in _noticed:
        _noticed.add("scan")
        warnings.warn("linrec: method='pallas' runs in Pallas's interpreter on CPU (correct but slow; no GPU/TPU is "
                      "JAX's default device); use method='native' or 'sequential' for speed on CPU", stacklevel=3)


def check_pallas_dtype(name: str, dtype: str, *, interpret: bool | None = None) -> None:
    """``TypeError`` for a dtype the compiled kernel cannot take on this device, naming the method that can."""
    interpret = interpreted() if interpret is None else interpret
    if not interpret and dtype not in DEVICE_DTYPES:
        raise TypeError(f"{name}: method='pallas' computes in 32-bit on {jax.default_backend()} and does not take "
                        f"{dtype}; use method='chunked' (or 'sequential') for {dtype}, or cast to one of "
                        f"{DEVICE_DTYPES}")


# ---------------------------------------------------------------------------------------------------------------------
# Complex arithmetic on planes: a value is a tuple of one (real) or two (real, imaginary) arrays.


def _mul(a: tuple[Array, ...], x: tuple[Array, ...]) -> tuple[Array, ...]:
    if len(a) == 1:
        return tuple(a[0] * p for p in x)
    (ar, ai), (xr, xi) = a, x
    return ar * xr - ai * xi, ar * xi + ai * xr


def _conj(a: tuple[Array, ...]) -> tuple[Array, ...]:
    return a if len(a) == 1 else (a[0], -a[1])


def _add(x: tuple[Array, ...], y: tuple[Array, ...]) -> tuple[Array, ...]:
    return tuple(p + q for p, q in zip(x, y, strict=True))


def _select(cut: Array, x: tuple[Array, ...], y: tuple[Array, ...]) -> tuple[Array, ...]:
    """``x`` where ``cut`` else ``y`` (``where``, not arithmetic: NaN in ``y`` stays out)."""
    return tuple(jnp.where(cut, p, q) for p, q in zip(x, y, strict=True))


# ---------------------------------------------------------------------------------------------------------------------
# The kernel.


def split_gates(xs: tuple[Array, ...], n_a: int) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """The plain scan's "gates": the step's inputs are the ``a`` planes, then the ``b`` planes."""
    return xs[:n_a], xs[n_a:]


def _scan_kernel(*refs, n_in: int, n_s: int, block_t: int, reverse: bool, adjoint: bool, has_cut: bool,
                 gates, n_valid: int | None = None) -> None:
    """One ``(Tb, Dt)`` tile. Refs: ``n_in`` input tiles ``(Tb, Dt)``, ``h0`` planes ``(1, Dt)``, [cut ``(Tb, 1)``
    int32], then outputs: ``h`` planes ``(Tb, Dt)`` and the carry planes ``(1, Dt)``. ``gates`` maps one step's
    input rows (in the compute dtype) to the ``(a, b)`` planes: :func:`split_gates` for the plain scan, the layer's
    gate math for the fused minGRU / GatedLinearRNN kernels.

    Forward: ``h_t = cut_t ? b_t : a_t h_{t-1} + b_t``. Adjoint: ``g_t = b_t + s``, then ``s = cut_t ? 0 : conj(a_t)
    g_t`` (``b`` is the cotangent of ``h``; the carry ends as the cotangent of the initial state). With
    ``n_valid``, steps at or after that global index keep the state (the fused kernels' time padding).
    """
    in_refs, h0_refs = refs[:n_in], refs[n_in:n_in + n_s]
    rest = refs[n_in + n_s:]
    cut_ref, rest = (rest[0], rest[1:]) if has_cut else (None, rest)
    out_refs, carry_refs = rest[:n_s], rest[n_s:]
    acc = carry_refs[0].dtype
    j = pl.program_id(2)
    n_blocks = pl.num_programs(2)

    @pl.when(j == 0)
    def _start() -> None:
        for carry, h0 in zip(carry_refs, h0_refs, strict=True):
            carry[...] = h0[...].astype(acc)

    def step(i, state: tuple[Array, ...]) -> tuple[Array, ...]:
        previous = state
        t = block_t - 1 - i if reverse else i
        a, b = gates(tuple(r[pl.ds(t, 1), :].astype(acc) for r in in_refs))
        cut = None if cut_ref is None else cut_ref[pl.ds(t, 1), :] != 0
        if adjoint:
            out = _add(b, state)
            flow = _mul(_conj(a), out)
            state = flow if cut is None else _select(cut, tuple(jnp.zeros_like(f) for f in flow), flow)
        else:
            h = _add(_mul(a, state), b)
            state = out = h if cut is None else _select(cut, b, h)
        if n_valid is not None:  # a padded step keeps the state and writes it (the shifted h of the VJP reads it)
            valid = (n_blocks - 1 - j if reverse else j) * block_t + t < n_valid
            state, out = _select(valid, state, previous), _select(valid, out, previous)
        for r, o in zip(out_refs, out, strict=True):
            r[pl.ds(t, 1), :] = o.astype(r.dtype)
        return state

    state = lax.fori_loop(0, block_t, step, tuple(c[...] for c in carry_refs))
    for carry, s in zip(carry_refs, state, strict=True):
        carry[...] = s


def run_kernel(inputs: tuple[tuple[Array, int | None], ...], h0: tuple[Array, ...], cut: Array | None, *, gates,
               reverse: bool, adjoint: bool, block_t: int, out_dtype, n_valid: int | None = None,
               name: str = "linrec_pallas_scan") -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """Run the kernel. ``inputs``: ``(array, part)`` pairs, ``(N, T, D)`` with ``part=None`` or ``(N, T, P, D)``
    read at ``[:, :, part]`` (a slice of a layer's projection, never copied); T a multiple of ``block_t``, D of the
    tile. ``h0``: planes ``(N, 1, D)`` in the compute dtype; ``cut``: ``(N, T, 1)`` int32 or None.
    Returns ``(out planes (N, T, D) in out_dtype, carry planes (N, 1, D))``."""
    n, n_time, *_, d = inputs[0][0].shape
    tile = min(d, MAX_TILE_D)
    n_blocks = n_time // block_t
    grid = (n, d // tile, n_blocks)

    def tb(j):
        return n_blocks - 1 - j if reverse else j

    def spec(part: int | None) -> pl.BlockSpec:
        if part is None:
            return pl.BlockSpec((None, block_t, tile), lambda i, k, j: (i, tb(j), k))
        return pl.BlockSpec((None, block_t, None, tile), lambda i, k, j, p=part: (i, tb(j), p, k))

    seq = spec(None)
    one = pl.BlockSpec((None, 1, tile), lambda i, k, j: (i, 0, k))
    in_specs = [spec(part) for _, part in inputs] + [one] * len(h0)
    args = [x for x, _ in inputs] + list(h0)
    if cut is not None:
        in_specs.append(pl.BlockSpec((None, block_t, 1), lambda i, k, j: (i, tb(j), 0)))
        args.append(cut)
    n_s = len(h0)
    out_shape = ([jax.ShapeDtypeStruct((n, n_time, d), out_dtype)] * n_s
                 + [jax.ShapeDtypeStruct((n, 1, d), h0[0].dtype)] * n_s)
    kernel = partial(_scan_kernel, n_in=len(inputs), n_s=n_s, block_t=block_t, reverse=reverse, adjoint=adjoint,
                     has_cut=cut is not None, gates=gates, n_valid=n_valid)
    outs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=grid, in_specs=in_specs, out_specs=[seq] * n_s + [one] * n_s,
        interpret=interpreted(), name=f"{name}_adjoint" if adjoint else name,
    )(*args)
    return tuple(outs[:n_s]), tuple(outs[n_s:])


def _call(a: tuple[Array, ...], b: tuple[Array, ...], h0: tuple[Array, ...], cut: Array | None, *,
          reverse: bool, adjoint: bool, block_t: int, out_dtype) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """The plain scan: planes ``a``/``b`` ``(N, T, D)`` (see :func:`run_kernel`)."""
    return run_kernel(tuple((x, None) for x in (*a, *b)), h0, cut, gates=partial(split_gates, n_a=len(a)),
                      reverse=reverse, adjoint=adjoint, block_t=block_t, out_dtype=out_dtype)


# ---------------------------------------------------------------------------------------------------------------------
# The custom VJP on planes, already padded: a (N, Tp, Dp) planes, b (N, Tp, Dp) planes, h0 (N, 1, Dp), cut or None.


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _planes_scan(a, b, h0, cut, reverse: bool, block_t: int):
    out, _ = _call(a, b, h0, cut, reverse=reverse, adjoint=False, block_t=block_t, out_dtype=b[0].dtype)
    return out


def _planes_fwd(a, b, h0, cut, reverse, block_t):
    h = _planes_scan(a, b, h0, cut, reverse, block_t)
    return h, (a, h0, h, cut)


def _planes_bwd(reverse, block_t, residuals, ct_h):
    a, h0, h, cut = residuals
    zeros = tuple(jnp.zeros_like(p) for p in h0)  # the cotangent recurrence starts from nothing
    g, h0_bar = _call(a, ct_h, zeros, cut, reverse=not reverse, adjoint=True, block_t=block_t,
                      out_dtype=ct_h[0].dtype)
    # h_{t-1} in processing order (h0 at the first step), then a_bar = conj(h_prev) g, zero where the link is cut
    if reverse:
        prev = tuple(jnp.concatenate([p[:, 1:], q.astype(p.dtype)], axis=1) for p, q in zip(h, h0, strict=True))
    else:
        prev = tuple(jnp.concatenate([q.astype(p.dtype), p[:, :-1]], axis=1) for p, q in zip(h, h0, strict=True))
    acc = h0[0].dtype
    prev, g_acc = tuple(p.astype(acc) for p in prev), tuple(x.astype(acc) for x in g)
    if len(a) == 1 and len(g) == 2:  # a real decay of a complex state: Re(conj(h_prev) g)
        a_bar = (prev[0] * g_acc[0] + prev[1] * g_acc[1],)
    else:
        a_bar = _mul(_conj(prev), g_acc)
    if cut is not None:
        a_bar = tuple(jnp.where(cut != 0, jnp.zeros((), acc), x) for x in a_bar)
    return (tuple(x.astype(p.dtype) for x, p in zip(a_bar, a, strict=True)), g,
            tuple(x.astype(p.dtype) for x, p in zip(h0_bar, h0, strict=True)), None)


_planes_scan.defvjp(_planes_fwd, _planes_bwd)


# ---------------------------------------------------------------------------------------------------------------------
# Public entry point.


def _planes(x: Array) -> tuple[Array, ...]:
    return (jnp.real(x), jnp.imag(x)) if jnp.iscomplexobj(x) else (x,)


def _pad(x: Array, n_time: int, d: int, fill: float) -> Array:
    pads = ((0, 0), (0, n_time - x.shape[1]), (0, d - x.shape[2]))
    return x if not any(p[1] for p in pads) else jnp.pad(x, pads, constant_values=fill)


def pallas_linear_scan(a: Array, b: Array, h0: Array, cut: Array | None, reverse: bool, *,
                       block_t: int | None = None, acc_dtype=None) -> Array:
    """``h`` of ``h_t = a_t h_{t-1} + b_t`` through the Pallas kernel; differentiable (custom VJP).

    Args:
      a: ``(B, T, *Sa)`` (broadcastable to ``b``; real, or complex with a complex ``b``).
      b: ``(B, T, *S)`` (any float/complex dtype the device takes; 16-bit is read as is, carried in float32).
      h0: ``(B, *S)`` in the compute dtype.
      cut: ``(B, T)`` bool (``reference.cut_mask``) or None. ``a`` need not be zeroed at the cuts.
      reverse: scan from ``T - 1`` down to ``0``.
      block_t: time steps per grid block (default :data:`INTERPRET_BLOCK_T` / :data:`DEVICE_BLOCK_T`).
      acc_dtype: the real dtype the state is carried in (default: the real dtype of ``h0``).

    Returns:
      ``h``: ``(B, T, *S)`` in the dtype of ``b``.
    """
    n, n_time, *state = b.shape
    block_t = block_t or (INTERPRET_BLOCK_T if interpreted() else DEVICE_BLOCK_T)
    block_t = min(block_t, max(n_time, 1)) if interpreted() else block_t
    d = math.prod(state)
    tile = min(d, MAX_TILE_D)
    d_pad = -(-d // tile) * tile
    t_pad = -(-n_time // block_t) * block_t
    acc = jnp.dtype(acc_dtype or jnp.real(h0).dtype)

    a_full = jnp.broadcast_to(a, b.shape).reshape(n, n_time, d)  # autodiff sums the broadcast back
    a_planes = tuple(_pad(p, t_pad, d_pad, fill) for p, fill in zip(_planes(a_full), (1.0, 0.0)))  # a = 1 + 0i
    b_planes = tuple(_pad(p, t_pad, d_pad, 0.0) for p in _planes(b.reshape(n, n_time, d)))
    h0_planes = tuple(_pad(p.astype(acc), 1, d_pad, 0.0) for p in _planes(h0.reshape(n, 1, d)))
    cut3 = None if cut is None else _pad(cut.astype(jnp.int32)[:, :, None], t_pad, 1, 0)
    h = _planes_scan(a_planes, b_planes, h0_planes, cut3, bool(reverse), block_t)
    h = tuple(p[:, :n_time, :d] for p in h)
    out = lax.complex(*h) if len(h) == 2 else h[0]
    return out.reshape(b.shape)



# ---------------------------------------------------------------------------------------------------------------------
# Fused layer kernels: the gates computed inside the scan from the layer's projection (pallas_mingru.py,
# pallas_gated_linear_rnn.py).


def _fused_gates(xs: tuple[Array, ...], gate_fn) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    a, b = gate_fn(*xs)
    return (a,), (b,)


def _fused_adjoint_gates(xs: tuple[Array, ...], gate_fn, n_parts: int) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    a, _ = gate_fn(*xs[:n_parts])  # the decay recomputed from u in the kernel: never written to memory
    return (a,), xs[n_parts:]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _fused(u4: Array, h0: Array, parts: tuple[int, ...], gate_fn, reverse: bool, block_t: int, n_valid: int):
    (h,), _ = run_kernel(tuple((u4, p) for p in parts), (h0,), None, gates=partial(_fused_gates, gate_fn=gate_fn),
                         reverse=reverse, adjoint=False, block_t=block_t, out_dtype=u4.dtype, n_valid=n_valid,
                         name="linrec_pallas_fused")
    return h


def _fused_fwd(u4, h0, parts, gate_fn, reverse, block_t, n_valid):
    h = _fused(u4, h0, parts, gate_fn, reverse, block_t, n_valid)
    return h, (u4, h0, h)


def _fused_bwd(parts, gate_fn, reverse, block_t, n_valid, residuals, ct_h):
    u4, h0, h = residuals
    (g,), (h0_bar,) = run_kernel(
        (*((u4, p) for p in parts), (ct_h, None)), (jnp.zeros_like(h0),), None,
        gates=partial(_fused_adjoint_gates, gate_fn=gate_fn, n_parts=len(parts)), reverse=not reverse, adjoint=True,
        block_t=block_t, out_dtype=h0.dtype, n_valid=n_valid, name="linrec_pallas_fused")
    h = h.astype(h0.dtype)
    prev = jnp.concatenate([h[:, 1:], h0], axis=1) if reverse else jnp.concatenate([h0, h[:, :-1]], axis=1)
    (u_bar,) = jax.vjp(lambda u: gate_fn(*(u[:, :, p] for p in parts)), u4)[1](
        ((g * prev).astype(u4.dtype), g.astype(u4.dtype)))
    return u_bar, h0_bar


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_layer_scan(u: Array, n_parts: int, parts: tuple[int, ...], gate_fn, h0: Array, reverse: bool, *,
                     block_t: int | None = None) -> tuple[Array, Array]:
    """``(h (B, T, H), final (B, H))`` of ``h_t = a_t h_{t-1} + b_t`` with ``(a_t, b_t) = gate_fn(*u_t parts)``
    computed inside the kernel; differentiable in ``u`` and ``h0`` (custom VJP: the adjoint kernel recomputes
    ``a`` from ``u``; ``u_bar`` is the gates' elementwise VJP).

    Args:
      u: ``(B, T, n_parts * H)`` projections in the compute dtype, ``[part 0 | part 1 | ...]``.
      parts: the indices of the parts ``gate_fn`` takes (each ``(.., H)``), read in place.
      gate_fn: elementwise, module-level ``(*parts) -> (a, b)``.
      h0: ``(B, H)``; the state is carried in the compute dtype (float32 for 16-bit ``u``).
      reverse: scan from the last step to the first.

    Returns ``h`` and ``final`` in ``u``'s dtype.
    """
    n, n_time, width = u.shape
    d = width // n_parts
    block_t = block_t or (INTERPRET_BLOCK_T if interpreted() else DEVICE_BLOCK_T)
    block_t = min(block_t, max(n_time, 1)) if interpreted() else block_t
    tile = min(d, MAX_TILE_D)
    d_pad, t_pad = -(-d // tile) * tile, -(-n_time // block_t) * block_t
    u4 = u.reshape(n, n_time, n_parts, d)
    if (d_pad, t_pad) != (d, n_time):  # padded steps are skipped by the kernel (n_valid), padded lanes dropped
        u4 = jnp.pad(u4, ((0, 0), (0, t_pad - n_time), (0, 0), (0, d_pad - d)))
    acc = jnp.dtype(checks.compute_dtype(jnp.dtype(u.dtype).name))
    h0p = _pad(h0.astype(acc).reshape(n, 1, d), 1, d_pad, 0.0)
    h = _fused(u4, h0p, tuple(parts), gate_fn, bool(reverse), block_t, n_time)[:, :n_time, :d]
    return h, (h[:, 0] if reverse else h[:, -1])
