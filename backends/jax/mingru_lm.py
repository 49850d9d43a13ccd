"""minGRU language model for the JAX backend (``spec/mingru_lm.md``): pure functions and a Flax NNX module.

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary, ``D`` model width, ``H`` minGRU state width,
``L`` layers.

The blocks' parameters are stacked on a leading ``L`` axis (the module creates them with
``nnx.split_rngs`` + ``nnx.vmap``; the pure functions stack canonical ``layers.{l}.*`` arrays) and the
forward pass is one ``lax.scan`` over that axis, so the compiled program, and its compile time, do not
grow with depth. Every layer's minGRU runs through the layer's own functions
(``linrec.backends.jax.mingru``); right padding (``lengths``) turns padded positions into identity steps of the
same scan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from linrec.backends.jax import native_decode
from linrec.backends.jax import scan as _scan
from linrec.backends.jax.arrays import as_jax, dtype_name, eager_unless, jnp_dtype, to_jax
from linrec.backends.jax.dense import dense
from linrec.backends.jax.mingru import MinGRU, mingru, mingru_step
from linrec.backends.jax.native_dense import pack_kernels
from linrec.spec import mingru as mingru_spec
from linrec.spec import mingru_lm as spec
from linrec.spec.mingru_lm import MinGRULMConfig
from linrec.spec.state import State

__all__ = [
    "MinGRULM",
    "mingru_lm",
    "mingru_lm_generate",
    "mingru_lm_initial_state",
    "mingru_lm_step",
    "stack_params",
    "unstack_params",
]

Array = jax.Array
Tree = dict[str, Any]  # {"embed.embedding", "head.kernel", ..., "layers": {suffix: (L, ...)}}


# --- parameter layout: canonical (flat, per layer) <-> stacked ----------------------------------------


def stack_params(params: Mapping[str, Any], config: MinGRULMConfig) -> Tree:
    """Canonical ``layers.{l}.<suffix>`` arrays -> ``tree["layers"][<suffix>]`` stacked on axis 0."""
    tree: Tree = {k: to_jax(v, k) for k, v in params.items() if not k.startswith("layers.")}
    tree["layers"] = {
        suffix: jnp.stack([jnp.asarray(params[f"layers.{l}.{suffix}"]) for l in range(config.n_layers)])
        for suffix in spec.layer_param_shapes(config)
    }
    return tree


def unstack_params(tree: Tree, config: MinGRULMConfig) -> dict[str, Any]:
    """The inverse of :func:`stack_params`."""
    out = {k: v for k, v in tree.items() if k != "layers"}
    for suffix, value in tree["layers"].items():
        for l in range(config.n_layers):
            out[f"layers.{l}.{suffix}"] = value[l]
    return out


# --- the computation (traced; no checks) --------------------------------------------------------------


def _dense(p: Mapping[str, Array], name: str, x: Array) -> Array:
    bias = p.get(f"{name}.bias")
    return dense(x, p[f"{name}.kernel"].astype(x.dtype), None if bias is None else bias.astype(x.dtype))


def _sub(p: Mapping[str, Array], prefix: str) -> dict[str, Array]:
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def _rms_norm(x: Array, scale: Array, eps: float) -> Array:
    return x * lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale.astype(x.dtype)


def _block(p: Mapping[str, Array], x: Array, mixer: Callable, config: MinGRULMConfig):
    """One block on ``x (B, T, D)`` or ``(B, D)``; ``mixer(inp) -> (y, h)`` runs the minGRU."""
    if config.block == "glu":
        y, h = mixer(x)
        value, gate = jnp.split(_dense(p, "glu", y), 2, axis=-1)
        return x + value * jax.nn.sigmoid(gate), h
    y, h = mixer(_rms_norm(x, p["norm.scale"], config.norm_eps))
    x = x + y
    f = jax.nn.gelu(_dense(p, "ff.fc1", _rms_norm(x, p["ff_norm.scale"], config.norm_eps)), approximate=False)
    return x + _dense(p, "ff.fc2", f), h


def _head(tree: Tree, x: Array, config: MinGRULMConfig) -> Array:
    if config.block == "prenorm":
        x = _rms_norm(x, tree["final_norm.scale"], config.norm_eps)
    return _dense(tree, "head", x)


def _state_dtype(dtype) -> np.dtype:
    return jnp_dtype(mingru_spec.state_dtype(np.dtype(dtype).name))


def _step_tree(tree: Tree, config: MinGRULMConfig) -> Tree:
    """``tree`` with ``tree["layers"]`` as a list of ``L`` per-layer dicts, each array its own buffer (copied once,
    here, outside any ``jit``): what the decode step reads.

    Why: a step over the stacked ``(L, ...)`` weights slices every layer's weights out of the stack, and XLA:CPU
    materialises each slice before its matrix product, reading and writing every weight once more per token
    (measured: 2.1x the dense-product floor, against 1.2x for per-layer buffers; benchmarks/results/decode.md).
    """
    if isinstance(tree["layers"], list):
        return tree
    layers = [{k: jnp.array(v[l]) for k, v in tree["layers"].items()} for l in range(config.n_layers)]
    return {**{k: v for k, v in tree.items() if k != "layers"}, "layers": layers}


def _step_core(tree: Tree, x_t: Array, h: Array, keep: Array | None, config: MinGRULMConfig):
    """One step from embedded ``x_t (B, D)`` and ``h (L, B, H)``: a ``lax.scan`` over stacked layers, or a loop
    over the per-layer buffers of :func:`_step_tree`."""
    mcfg = config.mingru

    def body(x_t, inp):
        p, h_old = inp
        mp = _sub(p, "mingru.")

        def mixer(z):
            y, new = mingru_step(mp, z, State(h_old), config=mcfg)
            if keep is None:
                return y, new.h
            return y, jnp.where(keep[:, None], new.h, h_old)  # a padded step keeps the state (logits zeroed)

        return _block(p, x_t, mixer, config)

    if isinstance(tree["layers"], list):
        hs = []
        for l, p in enumerate(tree["layers"]):
            x_t, h_l = body(x_t, (p, h[l]))
            hs.append(h_l)
        return _head(tree, x_t, config), jnp.stack(hs)
    x_t, h = lax.scan(body, x_t, (tree["layers"], h))
    return _head(tree, x_t, config), h


def _zero_pads(logits: Array, mask: Array | None) -> Array:
    return logits if mask is None else jnp.where(mask[..., None], logits, jnp.zeros((), logits.dtype))


@partial(jax.jit, static_argnames=("config", "mode", "method", "remat"))
def _run(tree: Tree, tokens: Array, h0: tuple[Array, ...] | None, lengths: Array | None, *, config: MinGRULMConfig,
         mode: str, method: str, remat: bool) -> tuple[Array, tuple[Array, ...]]:
    """``tokens (B, T)``, the layers' states (``None``: default) -> ``(logits (B, T, V), final states)``; inside
    the layers' states are stacked ``(L, B, H)`` for the ``lax.scan`` over layers."""
    x = jnp.take(tree["embed.embedding"], tokens, axis=0)
    h0 = None if h0 is None else jnp.stack(h0)
    mask = None if lengths is None else jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    if mode == "sequential":
        h = _default(config, tokens.shape[0], x.dtype) if h0 is None else h0

        def time_body(h, inp):
            x_t, keep = inp
            logits, h = _step_core(tree, x_t, h, keep, config)
            return h, logits

        xs = (jnp.moveaxis(x, 1, 0), None if mask is None else jnp.moveaxis(mask, 1, 0))
        h, logits = lax.scan(time_body, h, xs)
        return _zero_pads(jnp.moveaxis(logits, 0, 1), mask), _unstack(h, config)

    def layer_body(x, inp):
        p, h_l = inp
        mp = _sub(p, "mingru.")

        def mixer(z):
            # right padding: padded positions are identity steps of the layer's one scan
            y, final = mingru(mp, z, config=config.mingru, initial_state=None if h_l is None else State(h_l),
                              lengths=lengths, method=method)
            return y, final.h

        return _block(p, x, mixer, config)

    if remat:
        layer_body = jax.checkpoint(layer_body)
    x, h = lax.scan(layer_body, x, (tree["layers"], h0))
    return _zero_pads(_head(tree, x, config), mask), _unstack(h, config)


def _unstack(h: Array, config: MinGRULMConfig) -> tuple[Array, ...]:
    return tuple(h[l] for l in range(config.n_layers))


@partial(jax.jit, static_argnames=("config",))
def _step_run(tree: Tree, token: Array, h: tuple[Array, ...], *, config: MinGRULMConfig):
    x_t = jnp.take(tree["embed.embedding"], token, axis=0)
    logits, h = _step_core(tree, x_t, jnp.stack(h), None, config)
    return logits, _unstack(h, config)


def _default(config: MinGRULMConfig, batch: int, dtype) -> Array:
    return jnp.full((config.n_layers, batch, config.d_inner), config.default_state, _state_dtype(dtype))


# --- checked entry points over a stacked tree (shared by the pure functions and the module) -----------


def _concrete(x) -> np.ndarray | None:
    """The values of ``x``, or ``None`` when traced (value checks then cannot run)."""
    return None if isinstance(x, jax.core.Tracer) else np.asarray(x)


def _check_state(name: str, state, config: MinGRULMConfig, batch: int, compute_dtype) -> tuple[Array, ...]:
    h = tuple(as_jax(a) for a in spec.state_arrays(name, state, config))
    spec.check_state(name, config, batch, [tuple(a.shape) for a in h], [dtype_name(a) for a in h],
                     mingru_spec.state_dtype(np.dtype(compute_dtype).name))
    return h


def _call(tree: Tree, tokens, config: MinGRULMConfig, initial_state, lengths, mode: str, method: str,
          remat: bool = False):
    tokens = jnp.asarray(tokens)
    spec.check_tokens("tokens", tuple(tokens.shape), dtype_name(tokens), 2, config, _concrete(tokens))
    spec.check_mode(mode, method, _scan.METHODS, lengths is not None)
    batch, length = tokens.shape
    dtype = tree["embed.embedding"].dtype
    h0 = None if initial_state is None else _check_state("initial_state", initial_state, config, batch, dtype)
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        spec.check_lengths(tuple(lengths.shape), dtype_name(lengths), batch, length, _concrete(lengths))
    logits, h = _run(tree, tokens, h0, lengths, config=config, mode=mingru_spec.resolve_mode(mode), method=method,
                     remat=remat)
    return logits, State(h)


def _step_call(tree: Tree, token, state, config: MinGRULMConfig, core=None):
    """A checked decode step; ``core(token, h) -> (logits, h)`` replaces the XLA step (``decoder(fused=...)``)."""
    token = as_jax(token)
    spec.check_tokens("token", tuple(token.shape), dtype_name(token), 1, config, _concrete(token))
    dtype = tree["embed.embedding"].dtype
    h = (_unstack(_default(config, token.shape[0], dtype), config) if state is None
         else _check_state("state", state, config, token.shape[0], dtype))
    logits, h = core(token, h) if core is not None else _step_run(tree, token, h, config=config)
    return logits, State(h)


def _generate(tree: Tree, prompt, config: MinGRULMConfig, max_new_tokens, temperature, top_k, seed, lengths,
              return_logits: bool):
    prompt_np = np.asarray(prompt)
    lengths_np = None if lengths is None else np.asarray(lengths)
    spec.check_generate_args(prompt_np.shape, max_new_tokens, temperature, top_k, config, lengths_np)
    steps = _step_tree(tree, config)
    tokens, logits = spec.generate_loop(
        lambda p, n: _call(tree, p, config, None, n, "auto", "auto"),
        lambda t, s: _step_call(steps, t, s, config),
        lambda x: np.asarray(jax.device_get(x)), prompt_np, lengths_np, max_new_tokens, temperature, top_k, seed,
    )
    tokens = jnp.asarray(tokens)
    return (tokens, jnp.asarray(logits)) if return_logits else tokens


# --- pure functions over canonical parameters ----------------------------------------------------------


def mingru_lm(
    params: Mapping[str, Array],
    tokens: Array,
    *,
    config: MinGRULMConfig,
    initial_state: State | None = None,
    lengths: Array | None = None,
    mode: str = "auto",
    method: str = "auto",
    remat: bool = False,
) -> tuple[Array, State]:
    """The model over a sequence (works under ``jit``/``grad``/``vmap``; value checks need concrete inputs).

    Args:
      params: canonical parameters (``linrec.spec.mingru_lm.param_shapes``); they set the compute dtype.
      tokens: ``(B, T)`` integer ids in ``[0, V)``.
      initial_state: ``State(h=tuple of L (B, H) arrays)`` in the state dtype; ``None``: ``default_state``.
      lengths: ``(B,)`` real tokens per row followed by padding (right padding): padded positions are identity
        steps of each layer's one scan and their logits are zero. ``None``: no padding.
      mode: ``"auto"`` (= ``"parallel"``: each layer a scan), ``"parallel"`` or ``"sequential"`` (the step loop,
        ``lax.scan`` over time).
      method: scan method of ``mode="parallel"`` (as for the minGRU layer; ``"log"`` refuses ``lengths``).
      remat: recompute each block in the backward pass (``jax.checkpoint``) instead of storing it.

    Returns:
      ``logits (B, T, V)`` and the final ``State`` (each row's after its last real token).
    """
    spec.check_params(params, config)
    return _call(stack_params(params, config), tokens, config, initial_state, lengths, mode, method, remat)


def mingru_lm_step(
    params: Mapping[str, Array], token: Array, state: State | None, *, config: MinGRULMConfig
) -> tuple[Array, State]:
    """One token (jit-compiled): ``token (B,)``, ``state`` (``None``: the default) -> ``(logits (B, V), State)``."""
    spec.check_params(params, config)
    return _step_call(stack_params(params, config), token, state, config)


def mingru_lm_initial_state(config: MinGRULMConfig, batch_size: int, dtype: Any = "float32") -> State:
    """The default state: ``State(h=...)``, ``L`` arrays ``(B, H)`` filled with ``default_state`` in the state
    dtype for ``dtype``."""
    return State(_unstack(_default(config, batch_size, dtype), config))


def mingru_lm_generate(
    params: Mapping[str, Array],
    prompt: Array,
    *,
    config: MinGRULMConfig,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | Sequence[int] = 0,
    lengths: Array | None = None,
    return_logits: bool = False,
):
    """Sample ``max_new_tokens`` after a right-padded ``prompt (B, T)`` (``lengths``: real tokens per row, default
    all ``T``; ``spec.mingru_lm.generate_loop``).

    Returns ``tokens (B, N)``, and with ``return_logits`` also ``logits (B, N, V)``.
    """
    spec.check_params(params, config)
    return _generate(stack_params(params, config), prompt, config, max_new_tokens, temperature, top_k, seed,
                     lengths, return_logits)


# --- the NNX module -------------------------------------------------------------------------------------

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): the spec initialiser (torch's nn.Linear default too)
_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_ZEROS = nnx.initializers.zeros_init()


class _FeedForward(nnx.Module):
    def __init__(self, d_model: int, d_ff: int, *, param_dtype: Any, rngs: nnx.Rngs):
        common = dict(kernel_init=_KERNEL_INIT, bias_init=_ZEROS, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = nnx.Linear(d_model, d_ff, **common)
        self.fc2 = nnx.Linear(d_ff, d_model, **common)


class _Block(nnx.Module):
    """One block's parameters (the model stacks ``L`` of them); the computation lives in ``_run``."""

    def __init__(self, config: MinGRULMConfig, *, param_dtype: Any, rngs: nnx.Rngs):
        m = config.mingru
        self.mingru = MinGRU(m.d_model, d_inner=m.d_inner, out_proj=m.out_proj, bias=m.bias, candidate=m.candidate,
                             default_state=m.default_state, param_dtype=param_dtype, rngs=rngs)
        d = config.d_model
        if config.block == "glu":
            self.glu = nnx.Linear(config.d_inner, 2 * d, kernel_init=_KERNEL_INIT, bias_init=_ZEROS,
                                  param_dtype=param_dtype, rngs=rngs)
        else:
            norm = dict(epsilon=config.norm_eps, param_dtype=param_dtype, rngs=rngs)
            self.norm = nnx.RMSNorm(d, **norm)
            self.ff_norm = nnx.RMSNorm(d, **norm)
            self.ff = _FeedForward(d, config.d_ff, param_dtype=param_dtype, rngs=rngs)


def _check_concrete(module: nnx.Module) -> None:
    """After ``from_canonical``: every variable holds an array (none left abstract by ``nnx.eval_shape``)."""
    abstract = [leaf for leaf in jax.tree.leaves(nnx.state(module)) if isinstance(leaf, jax.ShapeDtypeStruct)]
    if abstract:
        raise RuntimeError(f"from_canonical left {len(abstract)} variables unset (a non-parameter variable?)")


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        node = out
        *path, leaf = name.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


class MinGRULM(nnx.Module):
    """The minGRU language model (``spec/mingru_lm.md``) as a Flax NNX module.

    Constructor: the ``MinGRULMConfig`` fields (``vocab_size, d_model, n_layers`` positional, the rest
    keyword-only), ``rngs``, ``dtype`` (compute dtype; ``None``: the parameters'), ``param_dtype`` and
    ``remat``. State paths: ``embed.embedding``, ``layers.<suffix>`` stacked ``(L, ...)`` (e.g.
    ``layers.mingru.proj.kernel (L, D, 2H)``), ``final_norm.scale``, ``head.kernel``/``head.bias``;
    :meth:`canonical_params` unstacks them to the canonical ``layers.{l}.<suffix>``.

    Generation: :meth:`prefill` (parallel), :meth:`decode_step` (one token, jit-compiled) and
    :meth:`generate`.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        *,
        block: str = "glu",
        expansion: float = 1.0,
        candidate: str = "identity",
        mingru_bias: bool = True,
        default_state: float = 0.0,
        ff_mult: float = 4.0,
        norm_eps: float = 1e-6,
        head_bias: bool = True,
        rngs: nnx.Rngs,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        remat: bool = False,
    ):
        config = MinGRULMConfig(
            vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, block=block, expansion=expansion,
            candidate=candidate, mingru_bias=mingru_bias, default_state=default_state, ff_mult=ff_mult,
            norm_eps=norm_eps, head_bias=head_bias,
        )
        self._cfg = config
        self.dtype = dtype
        self.remat = remat
        self.embed = nnx.Embed(vocab_size, d_model, embedding_init=nnx.initializers.normal(1.0),
                               param_dtype=param_dtype, rngs=rngs)

        @nnx.split_rngs(splits=n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs: nnx.Rngs) -> _Block:
            return _Block(config, param_dtype=param_dtype, rngs=rngs)

        self.layers = make_blocks(rngs)
        self.final_norm = (nnx.RMSNorm(d_model, epsilon=norm_eps, param_dtype=param_dtype, rngs=rngs)
                           if block == "prenorm" else None)
        self.head = nnx.Linear(d_model, vocab_size, use_bias=head_bias, kernel_init=_KERNEL_INIT, bias_init=_ZEROS,
                               param_dtype=param_dtype, rngs=rngs)

    @property
    def config(self) -> MinGRULMConfig:
        return self._cfg

    def _tree(self) -> Tree:
        flat = _flatten(nnx.to_pure_dict(nnx.state(self, nnx.Param)))
        if self.dtype is not None:
            flat = {k: jnp.asarray(v).astype(self.dtype) for k, v in flat.items()}
        tree: Tree = {k: v for k, v in flat.items() if not k.startswith("layers.")}
        tree["layers"] = {k[len("layers."):]: v for k, v in flat.items() if k.startswith("layers.")}
        return tree

    def __call__(self, tokens: Array, initial_state: State | None = None, *, lengths: Array | None = None,
                 mode: str = "auto", method: str = "auto") -> tuple[Array, State]:
        """``tokens (B, T)`` -> ``(logits (B, T, V), final_state)``; see :func:`mingru_lm`."""
        return _call(self._tree(), tokens, self._cfg, initial_state, lengths, mode, method, self.remat)

    def step(self, token: Array, state: State | None = None) -> tuple[Array, State]:
        """``token (B,)``, ``state`` (``None``: the default) -> ``(logits (B, V), State)``."""
        return _step_call(self._tree(), token, state, self._cfg)

    def initial_state(self, batch_size: int) -> State:
        """The default ``State`` (``L`` arrays ``(B, H)``) in the state dtype of this module's compute dtype."""
        dtype = self.dtype if self.dtype is not None else self.embed.embedding[...].dtype
        return mingru_lm_initial_state(self._cfg, batch_size, dtype)

    def prefill(self, tokens: Array, initial_state: State | None = None,
                lengths: Array | None = None) -> tuple[Array, State]:
        """The parallel pass over a right-padded prompt (``lengths``: real tokens per row) from ``initial_state``
        (``None``: the default): ``(logits (B, T, V), State)``, one scan per layer."""
        return self(tokens, initial_state, lengths=lengths)

    def decode_step(self, token: Array, state: State) -> tuple[Array, State]:
        """One token on the step path (jit-compiled): ``(logits (B, V), state)``.

        Reads the parameters out of the module on every call; in a token loop use :meth:`decoder`."""
        return _step_call(self._tree(), token, state, self._cfg)

    def decoder(self, compile: bool = True, fused: bool | None = None):
        """``decode(token (B,), state) -> (logits (B, V), State)``: :meth:`decode_step` with the parameters read
        once, for token loops (reading them out of the NNX graph costs more than the compiled step itself).
        It keeps the parameters it was built with: build it again after changing them.

        ``fused``: the whole float32 step as one native call through XLA FFI (``native_decode``), as the
        GatedLinearRNN LM's ``decoder``: ``None`` (default) where it can, ``True`` raises saying why where it
        cannot, ``False`` keeps the XLA step, whose dense products at batch sizes up to ``native.dense.MAX_ROWS``
        run on the native kernel (``native_dense``, float32 kernels packed here once, a copy of those weights).

        ``compile=True`` (the default here) runs the step's arithmetic as one ``jax.jit``-compiled call;
        ``compile=False`` runs it op by op under ``jax.disable_jit()``, for debugging. The argument is the twin of
        the PyTorch ``decoder(compile=...)``, whose default is eager.
        """
        tree, cfg = self._tree(), self._cfg
        native_step = native_decode.decoder_step(native_decode.mingru_lm_step, unstack_params(tree, cfg), cfg, fused)
        if native_step is not None:
            run = jax.jit(native_step.__call__) if compile else native_step
            return lambda token, state: _step_call(tree, token, state, cfg, run)
        tree = _step_tree(tree, cfg)
        tree = {**pack_kernels(tree), "layers": [pack_kernels(layer) for layer in tree["layers"]]}
        return eager_unless(compile, lambda token, state: _step_call(tree, token, state, cfg))

    def generate(self, prompt: Array, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | Sequence[int] = 0, *, lengths: Array | None = None, return_logits: bool = False):
        """Sample ``max_new_tokens`` after ``prompt (B, T)``; see :func:`mingru_lm_generate`."""
        return _generate(self._tree(), prompt, self._cfg, max_new_tokens, temperature, top_k, seed, lengths,
                         return_logits)

    @classmethod
    def from_canonical(cls, config: MinGRULMConfig, params: Mapping[str, Any], *, rngs: nnx.Rngs | None = None,
                       **kwargs) -> MinGRULM:
        """Build a module whose parameters are ``params`` (canonical names, dense ``(in, out)`` layout)."""
        if not isinstance(config, MinGRULMConfig):
            raise TypeError(f"config must be a MinGRULMConfig, got {type(config).__name__}")
        spec.check_params(params, config)
        kwargs.setdefault("param_dtype", jnp.asarray(params["embed.embedding"]).dtype)
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        positional = [fields.pop(k) for k in ("vocab_size", "d_model", "n_layers")]
        # build the module abstractly (no random init to run and compile), then give it the real parameters
        module = nnx.eval_shape(lambda: cls(*positional, **fields, rngs=rngs or nnx.Rngs(0), **kwargs))
        tree = stack_params({k: jnp.asarray(v, kwargs["param_dtype"]) for k, v in params.items()}, config)
        flat = {k: v for k, v in tree.items() if k != "layers"}
        flat.update({f"layers.{k}": v for k, v in tree["layers"].items()})
        state = nnx.state(module, nnx.Param)
        nnx.replace_by_pure_dict(state, _unflatten(flat))
        nnx.update(module, state)
        _check_concrete(module)
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        """The parameters as NumPy arrays under their canonical names (``layers.{l}.<suffix>``)."""
        flat = _flatten(nnx.to_pure_dict(nnx.state(self, nnx.Param)))
        tree: Tree = {k: v for k, v in flat.items() if not k.startswith("layers.")}
        tree["layers"] = {k[len("layers."):]: v for k, v in flat.items() if k.startswith("layers.")}
        return {k: np.asarray(v) for k, v in unstack_params(tree, self._cfg).items()}
