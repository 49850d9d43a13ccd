"""minGRU stack for the JAX backend (``spec/mingru_stack.md``): pure functions and a Flax NNX module.

Shape legend: ``B`` batch, ``T`` time, ``I`` input features, ``H_l`` layer ``l``'s features, ``L`` layers.
Each layer runs through the minGRU layer's own functions (``linrec.backends.jax.mingru``). Layers may
differ in width, so they are a Python loop (a stack is a handful of layers), not a scan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linrec.backends.jax.arrays import dtype_name, jnp_dtype, to_jax
from linrec.backends.jax.mingru import MinGRU, mingru, mingru_step
from linrec.spec import checks
from linrec.spec import mingru as mingru_spec
from linrec.spec import mingru_stack as spec
from linrec.spec.mingru_stack import MinGRUStackConfig
from linrec.spec.state import State

__all__ = ["MinGRUStack", "mingru_stack", "mingru_stack_initial_state", "mingru_stack_step"]

Array = jax.Array


def _layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale.astype(x.dtype) + bias.astype(x.dtype)


def _layer(p, x, h0, config: MinGRUStackConfig, layer: int, run):
    z = _layer_norm(x, p["norm.scale"], p["norm.bias"], config.norm_eps) if config.norm else x
    y, h = run(spec.sub_params(p, "mingru."), z, h0, config.layer_config(layer))
    if config.residual:
        # the spec's residual branch on parameters cast to the compute dtype
        align = {k: v.astype(x.dtype) for k, v in p.items() if k.startswith("res_align.")}
        y = y + spec.residual_branch(align, x, config, layer)
    return y, h.h


def _dropout(x: Array, rate: float, key: Array) -> Array:
    """Inverted dropout: zero with probability ``rate``, scale the survivors by ``1 / (1 - rate)``."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)


def _check_state(name: str, state, config: MinGRUStackConfig, batch: int, x_dtype: str) -> list:
    """One ``State`` per layer (``None``: that layer's default) from the stack's ``State``."""
    given = spec.state_arrays(name, state, config)
    if given is None:
        return [None] * config.num_layers
    arrays = [to_jax(h, "initial_state") for h in given]
    spec.check_state(name, config, batch, [tuple(a.shape) for a in arrays], [dtype_name(a) for a in arrays],
                     mingru_spec.state_dtype(x_dtype))
    return [State(a) for a in arrays]


def _forward(params, x, states, lengths, config: MinGRUStackConfig, mode: str, method: str, dropout_rng,
             remat: bool):
    finals = []
    for layer in range(config.num_layers):
        def run_layer(p, x, h0, lengths, layer=layer):
            return _layer(p, x, h0, config, layer,
                          lambda mp, z, h_in, lcfg: mingru(mp, z, config=lcfg, initial_state=h_in, lengths=lengths,
                                                           mode=mode, method=method))

        if remat:
            run_layer = jax.checkpoint(run_layer)
        x, h = run_layer(spec.sub_params(params, f"layers.{layer}."), x, states[layer], lengths)
        finals.append(h)
        if dropout_rng is not None and config.dropout > 0 and layer < config.num_layers - 1:
            x = _dropout(x, config.dropout, jax.random.fold_in(dropout_rng, layer))
    if lengths is not None:  # a residual carries the (nonzero) input through a padded position: zero it
        mask = jnp.arange(x.shape[1])[None, :] < jnp.asarray(lengths)[:, None]
        x = jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))
    return x, State(tuple(finals))


def mingru_stack(
    params: Mapping[str, Array],
    x: Array,
    *,
    config: MinGRUStackConfig,
    initial_state: State | None = None,
    lengths: Array | None = None,
    mode: str = "auto",
    method: str = "auto",
    dropout_rng: Array | None = None,
    remat: bool = False,
) -> tuple[Array, State]:
    """The stack over ``x (B, T, I)`` -> ``(y (B, T, H_{L-1}), State(h=(h_0 (B, H_0), ..., h_{L-1})))``.

    Args:
      params: canonical parameters (``linrec.spec.mingru_stack.param_shapes``).
      x: ``(B, T, I)`` real floating (batch first).
      initial_state: a ``State`` whose ``h`` holds ``L`` arrays ``(B, H_l)`` in the state dtype; ``None``: every
        layer's default state.
      lengths: ``(B,)`` real inputs per row (right padding): padded positions keep every layer's state and
        output zeros. ``None``: no padding.
      mode, method: as for the minGRU layer, applied to every layer.
      dropout_rng: a PRNG key turns on training-mode dropout between layers; ``None``: evaluation (none).
      remat: recompute each layer in the backward pass (``jax.checkpoint``).

    Returns:
      The last layer's output and the final ``State`` (``h``: every layer's final minGRU state).
    """
    x = to_jax(x, "x")
    spec.check_input("x", tuple(x.shape), 3, config)
    spec.check_params(params, config)
    states = _check_state("initial_state", initial_state, config, x.shape[0], dtype_name(x))
    params = {k: to_jax(v, k) for k, v in params.items()}
    return _forward(params, x, states, lengths, config, mode, method, dropout_rng, remat)


def mingru_stack_step(
    params: Mapping[str, Array], x_t: Array, state: State | None, *, config: MinGRUStackConfig
) -> tuple[Array, State]:
    """One step (evaluation mode): ``x_t (B, I)``, the ``State`` (``None``: default) -> ``(y_t, State)``."""
    x_t = to_jax(x_t, "x_t")
    spec.check_input("x_t", tuple(x_t.shape), 2, config)
    spec.check_params(params, config)
    states = _check_state("state", state, config, x_t.shape[0], dtype_name(x_t))
    finals = []
    for layer in range(config.num_layers):
        x_t, h = _layer(spec.sub_params(params, f"layers.{layer}."), x_t, states[layer], config, layer,
                        lambda mp, z, h0, lcfg: mingru_step(mp, z, h0, config=lcfg))
        finals.append(h)
    return x_t, State(tuple(finals))


def mingru_stack_initial_state(config: MinGRUStackConfig, batch_size: int, dtype: Any = "float32") -> State:
    """The default state: ``State(h=...)`` with one ``(B, H_l)`` array per layer filled with ``default_state``."""
    acc = jnp_dtype(mingru_spec.state_dtype(np.dtype(dtype).name))
    return State(tuple(jnp.full((batch_size, h), config.default_state, acc) for h in config.hidden_sizes))


# --- the NNX module ---------------------------------------------------------------------------------------

_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class _StackLayer(nnx.Module):
    def __init__(self, config: MinGRUStackConfig, layer: int, *, param_dtype: Any, rngs: nnx.Rngs):
        n_in = config.layer_input_size(layer)
        lcfg = config.layer_config(layer)
        self.norm = (nnx.LayerNorm(n_in, epsilon=config.norm_eps, param_dtype=param_dtype, rngs=rngs)
                     if config.norm else None)
        self.mingru = MinGRU(n_in, d_inner=lcfg.d_inner, bias=lcfg.bias, candidate=lcfg.candidate,
                             default_state=lcfg.default_state, param_dtype=param_dtype, rngs=rngs)
        self.res_align = (nnx.Linear(n_in, lcfg.d_inner, use_bias=config.has_align_bias(layer),
                                     kernel_init=_KERNEL_INIT,
                                     param_dtype=param_dtype, rngs=rngs) if config.has_align(layer) else None)


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
    """Dotted names -> the nested pure dict of ``nnx.state`` (list indices as ints)."""
    out: dict = {}
    for name, value in flat.items():
        node = out
        *path, leaf = (int(k) if k.isdigit() else k for k in name.split("."))
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


class MinGRUStack(nnx.Module):
    """A stack of minGRU layers with an ``nn.GRU``-like interface (``spec/mingru_stack.md``), Flax NNX.

    ``MinGRUStack(input_size, hidden_sizes, num_layers=None, *, bias=True, dropout=0.0, residual=False,
    norm=False, residual_align="mismatched", residual_align_bias=False, batch_first=True, candidate="g",
    default_state=0.5, norm_eps=1e-5, rngs, dtype=None,
    param_dtype=float32, remat=False)``. ``hidden_sizes`` is an int (repeated ``num_layers`` times, default
    once) or a list. Dropout between layers is on in training mode (the default, as ``nnx.Dropout``) and off
    after ``.eval()``. State paths ``layers.{l}.norm.{scale,bias}``, ``layers.{l}.mingru.proj.{kernel,bias}``,
    ``layers.{l}.res_align.{kernel,bias}`` equal the canonical names.

    Call: ``(x, initial_state=None, *, lengths=None, mode="auto", method="auto") -> (y, final_state)``;
    ``x (B, T, I)`` (``(T, B, I)`` with ``batch_first=False``, and ``y`` likewise), ``final_state`` a ``State``
    whose ``h`` holds one ``(B, H_l)`` array per layer.
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: int | Sequence[int],
        num_layers: int | None = None,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        residual: bool = False,
        norm: bool = False,
        residual_align: str = "mismatched",
        residual_align_bias: bool = False,
        batch_first: bool = True,
        candidate: str = "g",
        default_state: float = 0.5,
        norm_eps: float = 1e-5,
        rngs: nnx.Rngs,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        remat: bool = False,
    ):
        config = MinGRUStackConfig.create(input_size, hidden_sizes, num_layers, bias=bias, dropout=dropout,
                                          residual=residual, norm=norm, residual_align=residual_align,
                                          residual_align_bias=residual_align_bias, candidate=candidate,
                                          default_state=default_state, norm_eps=norm_eps)
        checks.check_bool("batch_first", batch_first)
        self._cfg = config
        self.batch_first = batch_first
        self.dtype = dtype
        self.remat = remat
        self.deterministic = False  # nnx convention: .eval() sets it True, .train() False
        self.layers = nnx.List([_StackLayer(config, l, param_dtype=param_dtype, rngs=rngs)
                                for l in range(config.num_layers)])
        self.dropout_rngs = nnx.data(rngs["dropout"].fork() if config.dropout > 0 else None)

    @property
    def config(self) -> MinGRUStackConfig:
        return self._cfg

    def _params(self) -> dict[str, Array]:
        flat = _flatten(nnx.to_pure_dict(nnx.state(self.layers, nnx.Param)))
        return {f"layers.{k}": (v if self.dtype is None else v.astype(self.dtype)) for k, v in flat.items()}

    def _cast(self, x) -> Array:
        x = to_jax(x, "x")
        return x if self.dtype is None else x.astype(self.dtype)

    def __call__(self, x: Array, initial_state: State | None = None, *, lengths: Array | None = None,
                 mode: str = "auto", method: str = "auto") -> tuple[Array, State]:
        """``x (B, T, I)`` (``(T, B, I)`` with ``batch_first=False``) -> ``(y, final_state)``; see
        :func:`mingru_stack`."""
        x = self._cast(x)
        if x.ndim != 3:
            layout = "B, T" if self.batch_first else "T, B"
            raise ValueError(f"mingru_stack: x must have 3 axes ({layout}, input_size), got shape {tuple(x.shape)}")
        if not self.batch_first:
            x = jnp.swapaxes(x, 0, 1)
        key = self.dropout_rngs() if self.dropout_rngs is not None and not self.deterministic else None
        y, h = mingru_stack(self._params(), x, config=self._cfg, initial_state=initial_state, lengths=lengths,
                            mode=mode, method=method, dropout_rng=key, remat=self.remat)
        return (y if self.batch_first else jnp.swapaxes(y, 0, 1)), h

    def step(self, x_t: Array, state: State | None = None) -> tuple[Array, State]:
        """``x_t (B, I)``, the ``State`` (``None``: default) -> ``(y_t (B, H_{L-1}), State)``; no dropout."""
        return mingru_stack_step(self._params(), self._cast(x_t), state, config=self._cfg)

    def initial_state(self, batch_size: int) -> State:
        dtype = self.dtype if self.dtype is not None else self.layers[0].mingru.proj.kernel[...].dtype
        return mingru_stack_initial_state(self._cfg, batch_size, dtype)

    @classmethod
    def from_canonical(cls, config: MinGRUStackConfig, params: Mapping[str, Any], *,
                       rngs: nnx.Rngs | None = None, batch_first: bool = True, **kwargs) -> MinGRUStack:
        """Build a module whose parameters are ``params`` (canonical names, dense ``(in, out)`` layout)."""
        if not isinstance(config, MinGRUStackConfig):
            raise TypeError(f"config must be a MinGRUStackConfig, got {type(config).__name__}")
        spec.check_params(params, config)
        kwargs.setdefault("param_dtype", jnp.asarray(params["layers.0.mingru.proj.kernel"]).dtype)
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        rngs = rngs or nnx.Rngs(0)
        dropout = fields.pop("dropout")
        # build abstractly (no random init to run and compile), then give it the real parameters
        module = nnx.eval_shape(lambda: cls(fields.pop("input_size"), list(fields.pop("hidden_sizes")), **fields,
                                            batch_first=batch_first, rngs=nnx.Rngs(0), **kwargs))
        state = nnx.state(module.layers, nnx.Param)
        flat = {k[len("layers."):]: jnp.asarray(v, kwargs["param_dtype"]) for k, v in params.items()}
        nnx.replace_by_pure_dict(state, _unflatten(flat))
        nnx.update(module.layers, state)
        module._cfg = config
        module.dropout_rngs = nnx.data(rngs["dropout"].fork() if dropout > 0 else None)
        abstract = [x for x in jax.tree.leaves(nnx.state(module)) if isinstance(x, jax.ShapeDtypeStruct)]
        if abstract:
            raise RuntimeError(f"from_canonical left {len(abstract)} variables unset")
        return module

    def canonical_params(self) -> dict[str, np.ndarray]:
        flat = _flatten(nnx.to_pure_dict(nnx.state(self.layers, nnx.Param)))
        return {f"layers.{k}": np.asarray(v) for k, v in flat.items()}
