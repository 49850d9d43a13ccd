"""Multi-head outer-product GateLoop in JAX: pure functions and a Flax NNX module (``spec/gateloop_mh.md``).

Shape legend: ``B`` batch, ``T`` time, ``D`` d_model, ``H`` heads, ``K`` d_key, ``V`` d_value,
``R`` gate rows per head (``K`` or 1), ``C`` chunk size.

Per head ``S_t = diag(a_t) S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t``. ``mode="parallel"`` is one
``linear_scan(a: (B,T,H,R,1), k⊗v: (B,T,H,K,V))``; ``method="pallas"`` is one Pallas kernel in the chunked form
(intra-chunk attention-like product + inter-chunk state; ``k⊗v`` never written: ``pallas_gateloop_mh.py``);
``method="chunked"`` runs that scan per chunk of ``C`` steps inside ``lax.scan`` with the chunk body under
``jax.checkpoint``, so neither the forward nor the backward pass holds more than one chunk's states;
``mode="sequential"`` is ``lax.scan`` over the step. The pure functions work under ``jit``/``grad``/``vmap``
(config, mode, method and chunk size are static).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from linrec.backends.jax import native_decode
from linrec.backends.jax import native_gateloop_mh as _native
from linrec.backends.jax.arrays import dtype_name, jnp_dtype, to_jax
from linrec.backends.jax.dense import as_kernel, dense
from linrec.backends.jax.native_dense import layer_decoder
from linrec.backends.jax.scan import linear_scan
from linrec.backends.native import dense as native_dense_kernel
from linrec.backends.native.decode import gateloop_mh_refusal
from linrec.spec import gateloop_mh as spec
from linrec.spec.gateloop_mh import GateLoopMHConfig
from linrec.spec.state import State

__all__ = ["GateLoopMH", "gateloop_mh", "gateloop_mh_initial_state", "gateloop_mh_step"]

#: The most rows ``GateLoopMH.decoder()`` sends to the native program by default when the state is complex.
COMPLEX_STATE_NATIVE_ROWS = 1

Array = jax.Array


# ---------------------------------------------------------------- pieces shared by every path


def _dense(params: Mapping[str, Array], name: str, x: Array) -> Array:
    return dense(x, params[f"{name}.kernel"], params.get(f"{name}.bias"))


def _project(params: Mapping[str, Array], x: Array, config: GateLoopMHConfig, sdt) -> tuple[Array, ...]:
    """``x: (..., D)`` -> ``q, k: (..., H, K)``, ``v: (..., H, V)`` in the state's real dtype, ``a: (..., H, R, 1)``."""
    lead, h, r = x.shape[:-1], config.num_heads, config.gate_rows
    real = jnp.real(jnp.zeros((), sdt)).dtype
    q = _dense(params, "q_proj", x).reshape(*lead, h, config.d_key).astype(real)
    k = _dense(params, "k_proj", x).reshape(*lead, h, config.d_key).astype(real)
    v = _dense(params, "v_proj", x).reshape(*lead, h, config.d_value).astype(real)
    if config.is_complex and config.gate_parametrization == "cartesian":
        a = _cartesian_gate(_dense(params, "a_re_proj", x).astype(real),
                            _dense(params, "a_im_proj", x).astype(real)).astype(sdt)
    elif config.is_complex:
        mag = jax.nn.sigmoid(_dense(params, "a_mag_proj", x).astype(real))
        phase = _dense(params, "a_phase_proj", x).astype(real)
        if config.phase_activation == "relu":
            phase = jax.nn.relu(phase)
        a = (mag * jnp.exp(1j * phase)).astype(sdt)
    else:
        a = jax.nn.sigmoid(_dense(params, "a_proj", x).astype(real))
    return q, k, v, a.reshape(*lead, h, r, 1)


def _cartesian_gate(re: Array, im: Array) -> Array:
    """``σ(|z|) · z/|z|`` (``z/|z| := 1`` at ``z = 0``, gradient 0 there): ``gateloop_mh.md`` §2."""
    sq = re * re + im * im
    nonzero = sq > 0
    r = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1)), 0)  # double where: finite gradients at z = 0
    scale = jax.nn.sigmoid(r) / jnp.where(nonzero, r, 1)
    return lax.complex(jnp.where(nonzero, re * scale, jax.nn.sigmoid(r)), jnp.where(nonzero, im * scale, 0))


def _input_norm(x: Array, config: GateLoopMHConfig) -> Array:
    """``x̃ = x / max(‖x‖₂, 1e-12) · √D`` (``input_norm="rms"``), in at least float32, returned in x's dtype."""
    if config.input_norm == "none":
        return x
    z = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    sq = jnp.sum(z * z, axis=-1, keepdims=True)
    # max(‖x‖, eps) with a finite gradient at x = 0 (sqrt' is infinite there)
    norm = jnp.sqrt(jnp.maximum(sq, spec.RMS_EPS**2))
    return (z / norm * np.sqrt(config.d_model)).astype(x.dtype)


def _read_out(params: Mapping[str, Array], o: Array, x_dtype, config: GateLoopMHConfig, xn: Array) -> Array:
    """``o: (..., H, V)`` in the state dtype -> ``y: (..., D)`` (§2 output convention, ``sub_norm``, the output gate
    on ``xn: (..., D)``, then ``out_proj``)."""
    width = config.num_heads * config.d_value
    if config.is_complex and config.complex_output == "complex":
        real = jnp.real(o).dtype
        u = o.reshape(*o.shape[:-2], width)
        return dense(u, params["out_proj.kernel"].astype(real), params["out_proj.bias"].astype(real))
    u = jnp.real(o) if config.is_complex else o
    u = u.reshape(*u.shape[:-2], width)
    if config.sub_norm == "layernorm":  # in the state's real dtype, before the one rounding to x's dtype
        mean = u.mean(axis=-1, keepdims=True)
        var = jnp.square(u - mean).mean(axis=-1, keepdims=True)
        u = ((u - mean) * lax.rsqrt(var + spec.SUB_NORM_EPS) * params["sub_norm.scale"].astype(u.dtype)
             + params["sub_norm.bias"].astype(u.dtype))
    if config.output_gate == "silu":
        u = u * jax.nn.silu(_dense(params, "output_gate_proj", xn).astype(u.dtype))
    return _dense(params, "out_proj", u.astype(x_dtype))  # rounded once to x's dtype


def _outer(k: Array, v: Array, sdt) -> Array:
    return (k[..., :, None] * v[..., None, :]).astype(sdt)


def _scan_part(q: Array, k: Array, v: Array, a: Array, state: Array, method: str) -> tuple[Array, Array]:
    """Scan the time axis of the given slices from ``state``: ``-> (o: (B, t, H, V), final S)``."""
    h, state = linear_scan(a, _outer(k, v, state.dtype), initial_state=state, method=method)
    return jnp.einsum("bthkv,bthk->bthv", h, q), state


def _chunked(q: Array, k: Array, v: Array, a: Array, state: Array, method: str, size: int) -> tuple[Array, Array]:
    """The memory-lean path (§6): ``lax.scan`` over chunks, each chunk body recomputed in the backward pass."""
    n_batch, n_time = q.shape[:2]
    n_chunks = -(-n_time // size)
    pad = n_chunks * size - n_time

    def chunks(z: Array, fill: float) -> Array:
        if pad:  # identity steps (a = 1, k = v = q = 0) leave S unchanged; their outputs are dropped
            z = jnp.concatenate([z, jnp.full((n_batch, pad, *z.shape[2:]), fill, z.dtype)], axis=1)
        return jnp.moveaxis(z.reshape(n_batch, n_chunks, size, *z.shape[2:]), 1, 0)

    @partial(jax.checkpoint, prevent_cse=False)
    def body(s: Array, part: tuple[Array, ...]) -> tuple[Array, Array]:
        o, s = _scan_part(*part, s, method)
        return s, o

    state, o = lax.scan(body, state, (chunks(q, 0), chunks(k, 0), chunks(v, 0), chunks(a, 1)))
    o = jnp.moveaxis(o, 0, 1).reshape(n_batch, n_chunks * size, *o.shape[3:])
    return o[:, :n_time], state


def _prepare(params, x, state, config: GateLoopMHConfig, *, ndim: int, state_name: str):
    params = {name: as_kernel(p) for name, p in params.items()}  # (a decoder's packed kernels stay packed)
    x, state = checked_inputs(x, state, config, ndim=ndim, state_name=state_name, params=params)
    params = {name: p.astype(x.dtype) for name, p in params.items()}
    return params, x, state


def checked_inputs(x, state, config: GateLoopMHConfig, *, ndim: int, state_name: str,
                   params: Mapping[str, Array] | None = None) -> tuple[Array, Array]:
    """``x`` (``ndim`` axes) checked, then ``params`` (if given), and the state ``S (B, H, K, V)`` in the state
    dtype (zeros for ``None``)."""
    x = to_jax(x, "x")
    spec.check_x(config, tuple(x.shape), dtype_name(x), ndim=ndim, name="x" if ndim == 3 else "x_t")
    if params is not None:
        spec.check_params(config, {name: tuple(p.shape) for name, p in params.items()})
    sdt = jnp_dtype(spec.state_dtype(config, dtype_name(x)))
    state = spec.state_h(state, name=state_name)
    if state is None:
        state = jnp.zeros(spec.state_shape(config, x.shape[0]), sdt)
    else:
        state = to_jax(state, "state")
        spec.check_state(config, x.shape[0], tuple(state.shape), dtype_name(state), dtype_name(x),
                         name=f"{state_name}.h")
        state = state.astype(sdt)
    return x, state


def _step(params, x_t: Array, state: Array, config: GateLoopMHConfig) -> tuple[Array, Array]:
    xn = _input_norm(x_t, config)
    q, k, v, a = _project(params, xn, config, state.dtype)
    state = a * state + _outer(k, v, state.dtype)  # rows of S decayed by a
    if config.is_complex and config.complex_output == "real":  # Re(Sᵀq) = Re(S)ᵀq (q is real): a real product
        return _read_out(params, jnp.einsum("bhkv,bhk->bhv", state.real, q), x_t.dtype, config, xn), state
    return _read_out(params, jnp.einsum("bhkv,bhk->bhv", state, q), x_t.dtype, config, xn), state


_step_jit = jax.jit(_step, static_argnames=("config",))


# ---------------------------------------------------------------- pure functions


def gateloop_mh(
    params: Mapping[str, Array],
    x: Array,
    *,
    config: GateLoopMHConfig,
    initial_state: State | None = None,
    lengths: Array | None = None,
    mode: str = "auto",
    method: str = "auto",
    chunk_size: int | None = None,
    remat: bool = False,
) -> tuple[Array, State]:
    """The layer over a sequence.

    Args:
      params: canonical name -> array (``linrec.spec.gateloop_mh.param_shapes``); cast to ``x``'s dtype.
      x: ``(B, T, D)`` real floating.
      initial_state: ``State(h=(B, H, K, V))`` or ``None`` (zeros).
      lengths: ``(B,)`` right-padded rows (recurrence.md §0): padded positions are identity steps of the scan
        (``a = 1``, ``k ⊗ v = 0``), their outputs zero; works under ``jit`` (values checked when concrete).
      mode: ``"auto"`` (= ``"parallel"``), ``"parallel"`` or ``"sequential"`` (``lax.scan`` of the step).
      method: scan method of the parallel mode (recurrence.md §7); ``"chunked"`` is the memory-lean path (§6);
        ``"pallas"`` the fused GateLoop kernel (``pallas_gateloop_mh.py``; interpreted on CPU).
      chunk_size: steps per chunk for ``method="chunked"`` (default ``config.chunk_size``).
      remat: recompute the scan and read-out in the backward pass (``jax.checkpoint``) instead of storing them.

    Returns:
      ``y: (B, T, D)`` and ``final_state``: ``State(h=(B, H, K, V))``.
    """
    mode = spec.check_mode(mode, method, chunk_size)
    params, x, state = _prepare(params, x, initial_state, config, ndim=3, state_name="initial_state")
    if mode == "parallel" and method == "pallas":
        from linrec.backends.jax import pallas_scan

        pallas_scan.check_pallas_dtype("initial_state", dtype_name(state))
        pallas_scan.notice_interpreted()
    valid = None
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        values = None if isinstance(lengths, jax.core.Tracer) else np.asarray(lengths)
        spec.check_lengths(tuple(lengths.shape), dtype_name(lengths), x.shape[0], x.shape[1], values, method=method)
        valid = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
    y, state = _forward(params, x, state, valid, config=config, mode=mode, method=method,
                        size=chunk_size or config.chunk_size, remat=remat)
    return y, State(state)


@partial(jax.jit, static_argnames=("config", "mode", "method", "size", "remat"))
def _forward(params, x: Array, state: Array, valid: Array | None, *, config: GateLoopMHConfig, mode: str,
             method: str, size: int, remat: bool) -> tuple[Array, Array]:
    # jit-cached on (shapes, dtypes, config, mode, method, size); inlined when called under an outer jit
    def core(params, x, state, valid):
        if mode == "sequential":
            keep = jnp.ones(x.shape[:2], bool) if valid is None else valid

            def one(s, inputs):
                x_t, keep_t = inputs
                y_t, new = _step(params, x_t, s, config)
                return jnp.where(keep_t[:, None, None, None], new, s), y_t  # padding keeps the state

            state, y = lax.scan(one, state, (jnp.moveaxis(x, 1, 0), jnp.moveaxis(keep, 1, 0)))
            y = jnp.moveaxis(y, 0, 1)
        else:
            xn = _input_norm(x, config)
            q, k, v, a = _project(params, xn, config, state.dtype)
            if valid is not None:  # padding: identity steps (a = 1, k ⊗ v = 0) inside the scan
                a = jnp.where(valid[:, :, None, None, None], a, jnp.ones((), a.dtype))
                k = jnp.where(valid[:, :, None, None], k, jnp.zeros((), k.dtype))
            if method == "chunked":  # the memory-lean path (§6): chunks scanned by the backend's default method
                o, state = _chunked(q, k, v, a, state, "auto", size)
            elif method == "pallas" and x.shape[1]:  # the chunked kernel: k ⊗ v and the states stay in the kernel
                from linrec.backends.jax.pallas_gateloop_mh import pallas_gateloop_mh

                o, state = pallas_gateloop_mh(q, k, v, a, state)
            elif _native.applies(q, v, method):  # the state kept in the kernel: no k ⊗ v or per-step states in memory
                o, state = _native.native_gateloop_mh(q, k, v, a, state, config.complex_output == "real")
            else:
                o, state = _scan_part(q, k, v, a, state, method)
            y = _read_out(params, o, x.dtype, config, xn)
        if valid is not None:  # outputs at padded positions are zero
            y = jnp.where(valid[..., None], y, jnp.zeros((), y.dtype))
        return y, state

    return (jax.checkpoint(core) if remat else core)(params, x, state, valid)


def gateloop_mh_step(
    params: Mapping[str, Array], x_t: Array, state: State | None, *, config: GateLoopMHConfig
) -> tuple[Array, State]:
    """One step: ``x_t: (B, D)``, ``state: State(h=(B, H, K, V))`` (``None``: zeros) -> ``(y_t: (B, D), State)``."""
    params, x_t, state = _prepare(params, x_t, state, config, ndim=2, state_name="state")
    y_t, state = _step_jit(params, x_t, state, config=config)
    return y_t, State(state)


def gateloop_mh_initial_state(config: GateLoopMHConfig, batch_size: int, dtype="float32") -> State:
    """``State(h=zeros (B, H, K, V))`` in the state dtype for inputs of ``dtype`` (``gateloop_mh.md`` §3)."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return State(jnp.zeros(spec.state_shape(config, batch_size), jnp_dtype(spec.state_dtype(config, name))))


# ---------------------------------------------------------------- the NNX module


def _constant_init(value: np.ndarray):
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.asarray(value, dtype).reshape(shape)

    return init


class GateLoopMH(nnx.Module):
    """Multi-head outer-product GateLoop layer (Flax NNX).

    ``__call__(x: (B, T, D), initial_state: State | None, *, lengths=None) -> (y: (B, T, D), final_state: State)``
    (``(T, B, D)`` in and out with ``batch_first=False``); the state is ``State(h=(B, H, K, V))``.
    Submodules ``q_proj``, ``k_proj``, ``v_proj``, ``a_proj`` (real) or ``a_mag_proj``/``a_phase_proj`` (complex;
    ``a_re_proj``/``a_im_proj`` with ``gate_parametrization="cartesian"``), ``output_gate_proj`` (``output_gate``),
    ``out_proj`` are ``nnx.Linear``, ``sub_norm`` (``sub_norm="layernorm"``) an ``nnx.LayerNorm``: their state paths
    are the canonical names (``q_proj.kernel``, ...).
    ``dtype`` is the compute dtype (``None``: the input's), ``param_dtype`` the storage dtype; ``remat=True``
    recomputes the scan in the backward pass.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 1,
        d_key: int | None = None,
        d_value: int | None = None,
        *,
        gate: str = "real",
        gate_granularity: str = "key",
        phase_activation: str = "identity",
        complex_output: str = "real",
        qkv_bias: bool = False,
        chunk_size: int = 64,
        gate_parametrization: str = "mag_phase",
        input_norm: str = "none",
        sub_norm: str = "none",
        output_gate: str = "none",
        batch_first: bool = True,
        rngs: nnx.Rngs,
        dtype=None,
        param_dtype=jnp.float32,
        remat: bool = False,
    ):
        cfg = GateLoopMHConfig(
            d_model=d_model, num_heads=num_heads, d_key=d_key, d_value=d_value, gate=gate,
            gate_granularity=gate_granularity, phase_activation=phase_activation, complex_output=complex_output,
            qkv_bias=qkv_bias, chunk_size=chunk_size, gate_parametrization=gate_parametrization,
            input_norm=input_norm, sub_norm=sub_norm, output_gate=output_gate,
        )
        spec.check_batch_first(batch_first)
        self._config = cfg
        self.batch_first = batch_first
        self.dtype = dtype
        self.remat = remat
        shapes = spec.param_shapes(cfg)
        lecun, zeros = nnx.initializers.lecun_normal(), nnx.initializers.zeros_init()

        def linear(name: str, bias_init=zeros) -> nnx.Linear:
            d_in, d_out = shapes[f"{name}.kernel"]
            return nnx.Linear(d_in, d_out, use_bias=f"{name}.bias" in shapes, kernel_init=lecun,
                              bias_init=bias_init, param_dtype=param_dtype, rngs=rngs)

        self.q_proj = linear("q_proj")
        self.k_proj = linear("k_proj")
        self.v_proj = linear("v_proj")
        decay_bias = _constant_init(spec.gate_bias_init(cfg))
        if cfg.is_complex and cfg.gate_parametrization == "cartesian":
            self.a_re_proj = linear("a_re_proj", decay_bias)
            self.a_im_proj = linear("a_im_proj")
        elif cfg.is_complex:
            self.a_mag_proj = linear("a_mag_proj", decay_bias)
            self.a_phase_proj = linear("a_phase_proj")
        else:
            self.a_proj = linear("a_proj", decay_bias)
        if cfg.output_gate != "none":
            self.output_gate_proj = linear("output_gate_proj")
        if cfg.sub_norm == "layernorm":
            self.sub_norm = nnx.LayerNorm(cfg.num_heads * cfg.d_value, epsilon=spec.SUB_NORM_EPS,
                                          param_dtype=param_dtype, rngs=rngs)
        self.out_proj = linear("out_proj")

    @property
    def config(self) -> GateLoopMHConfig:
        return self._config

    def _linears(self) -> dict[str, nnx.Linear]:
        gate = ("output_gate_proj",) if self._config.output_gate != "none" else ()
        names = ("q_proj", "k_proj", "v_proj", *self._config.gate_names, *gate, "out_proj")
        return {name: getattr(self, name) for name in names}

    def _params(self) -> dict[str, Array]:
        params = {}
        for name, lin in self._linears().items():
            params[f"{name}.kernel"] = lin.kernel[...]
            if lin.bias is not None:
                params[f"{name}.bias"] = lin.bias[...]
        if self._config.sub_norm == "layernorm":
            params["sub_norm.scale"], params["sub_norm.bias"] = self.sub_norm.scale[...], self.sub_norm.bias[...]
        return params

    def _cast(self, x: Array) -> Array:
        return x if self.dtype is None else jnp.asarray(x).astype(self.dtype)

    def __call__(
        self, x: Array, initial_state: State | None = None, *, lengths: Array | None = None, mode: str = "auto",
        method: str = "auto", chunk_size: int | None = None,
    ) -> tuple[Array, State]:
        """``x: (B, T, D)`` (``(T, B, D)`` with ``batch_first=False``) -> ``(y: same layout, final_state: State)``."""
        x = to_jax(x, "x")
        if x.ndim != 3:
            layout = "(B, T, d_model)" if self.batch_first else "(T, B, d_model) (batch_first=False)"
            raise ValueError(f"gateloop_mh: x must have shape {layout}, got shape {tuple(x.shape)}")
        x = x if self.batch_first else jnp.swapaxes(x, 0, 1)
        y, state = gateloop_mh(self._params(), self._cast(x), config=self._config, initial_state=initial_state,
                               lengths=lengths, mode=mode, method=method, chunk_size=chunk_size, remat=self.remat)
        return (y if self.batch_first else jnp.swapaxes(y, 0, 1)), state

    def step(self, x_t: Array, state: State | None) -> tuple[Array, State]:
        """``x_t: (B, D)``, ``state: State(h=(B, H, K, V))`` -> ``(y_t: (B, D), State)``."""
        return gateloop_mh_step(self._params(), self._cast(x_t), state, config=self._config)

    def decoder(self, compile: bool = True, fused: bool | None = None):
        """``decode(x_t (B, D), state) -> (y_t, State)``: :meth:`step` with the parameters read once, for token loops,
        as one ``jax.jit``-compiled call (``compile=False``: op by op). Build it again after changing the
        parameters.

        ``fused`` (as the other layers'): float32 steps as one native call through XLA FFI (``native_decode``:
        every projection in one product, the heads' state update and read-out, ``sub_norm``, the output gate and
        ``out_proj``; not for ``input_norm="rms"`` or a complex output); ``None``: where it can (up to
        ``native.dense.MAX_ROWS`` rows for a real state, one row for a complex state:
        :data:`COMPLEX_STATE_NATIVE_ROWS`), ``True``: raise saying why where it cannot, ``False``: never.
        Otherwise, at batch sizes up to ``native.dense.MAX_ROWS`` its float32 dense products run on the native
        kernel, from kernels packed here once (a copy of those weights; results within the float32 tolerance of
        :meth:`step`)."""
        cfg = self._config
        params = self._params()
        framework = layer_decoder(lambda p, x_t, state: gateloop_mh_step(p, self._cast(x_t), state, config=cfg),
                                  params, compile)
        native_step = native_decode.decoder_step(native_decode.gateloop_mh_step, params, cfg, fused,
                                                 gateloop_mh_refusal)

        def checked(x_t, state) -> tuple[Array, Array]:
            return checked_inputs(self._cast(x_t), state, cfg, ndim=2, state_name="state")

        # a complex state: above one row XLA's step (its products on the native kernel) is as fast or faster (the
        # program gets that state restacked as rows of floats inside the jit; D=512, 64 heads of 8x8: 91-109 against
        # 115-118 us/token at 1 row, level at 2, 271-299 against 323-348 at 8); a real one: the program wins up to
        # MAX_ROWS (SISO heads at 32 rows: 579 against 612)
        rows = COMPLEX_STATE_NATIVE_ROWS if cfg.is_complex else native_dense_kernel.MAX_ROWS
        return native_decode.layer_decoder(framework, native_step, checked, fused, native_rows=rows)

    def cell(self, carry: State, x_t: Array) -> tuple[State, Array]:
        """flax.nnx cell convention: ``(carry, x_t) -> (carry, y_t)``; the carry is a ``State``."""
        y_t, carry = self.step(x_t, carry)
        return carry, y_t

    def initial_state(self, batch_size: int, dtype=None) -> State:
        """``State(h=zeros (B, H, K, V))`` in the state dtype for this module's compute dtype (float32 by default)."""
        dtype = dtype or self.dtype or self.q_proj.kernel[...].dtype
        return gateloop_mh_initial_state(self._config, batch_size, np.dtype(dtype).name)

    @classmethod
    def from_canonical(
        cls, config: GateLoopMHConfig, params: Mapping[str, np.ndarray], *, rngs: nnx.Rngs | None = None,
        dtype=None, param_dtype=None, remat: bool = False, batch_first: bool = True,
    ) -> GateLoopMH:
        """Build a module holding ``params`` (canonical names and layout; stored in ``param_dtype`` or theirs)."""
        spec.check_params(config, {name: np.shape(p) for name, p in params.items()})
        if param_dtype is None:
            param_dtype = np.asarray(next(iter(params.values()))).dtype
        module = cls(
            config.d_model, config.num_heads, config.d_key, config.d_value, gate=config.gate,
            gate_granularity=config.gate_granularity, phase_activation=config.phase_activation,
            complex_output=config.complex_output, qkv_bias=config.qkv_bias, chunk_size=config.chunk_size,
            gate_parametrization=config.gate_parametrization, input_norm=config.input_norm,
            sub_norm=config.sub_norm, output_gate=config.output_gate, rngs=rngs or nnx.Rngs(0),
            dtype=dtype, param_dtype=param_dtype, remat=remat, batch_first=batch_first,
        )
        for name, lin in module._linears().items():
            lin.kernel[...] = jnp.asarray(params[f"{name}.kernel"], param_dtype)
            if lin.bias is not None:
                lin.bias[...] = jnp.asarray(params[f"{name}.bias"], param_dtype)
        if config.sub_norm == "layernorm":
            module.sub_norm.scale[...] = jnp.asarray(params["sub_norm.scale"], param_dtype)
            module.sub_norm.bias[...] = jnp.asarray(params["sub_norm.bias"], param_dtype)
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """Canonical name -> NumPy array (kernels ``(in, out)``)."""
        return {name: np.asarray(value) for name, value in self._params().items()}
