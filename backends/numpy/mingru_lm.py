"""minGRU language model for the NumPy backend (``spec/mingru_lm.md``): pure functions over canonical parameters.

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary, ``D`` model width, ``H`` minGRU state width,
``L`` layers. Every layer's minGRU runs through the layer's own functions (``linrec.backends.numpy.mingru``);
right padding (``lengths``) turns padded positions into identity steps (``a = 1, b = 0``) of the same scan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from linrec.backends.numpy import scan as _scan
from linrec.backends.numpy.arrays import dtype_name, np_dtype
from linrec.backends.numpy.mingru import mingru, mingru_step
from linrec.spec import mingru as mingru_spec
from linrec.spec import mingru_lm as spec
from linrec.spec.mingru_lm import MinGRULMConfig
from linrec.spec.state import State

__all__ = ["mingru_lm", "mingru_lm_generate", "mingru_lm_initial_state", "mingru_lm_step"]


def _dense(p: Mapping[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    y = x @ p[f"{name}.kernel"].astype(x.dtype)
    return y + p[f"{name}.bias"].astype(x.dtype) if f"{name}.bias" in p else y


def _sub(p: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def _block(p: Mapping[str, np.ndarray], x: np.ndarray, mixer: Callable, config: MinGRULMConfig):
    """One block on ``x (B, T, D)`` or ``(B, D)``; ``mixer(inp) -> (y, h)`` runs the minGRU."""
    if config.block == "glu":
        y, h = mixer(x)
        value, gate = np.split(_dense(p, "glu", y), 2, axis=-1)
        return x + value * mingru_spec.sigmoid(gate), h
    y, h = mixer(spec.rms_norm(x, p["norm.scale"].astype(x.dtype), config.norm_eps))
    x = x + y
    f = spec.gelu(_dense(p, "ff.fc1", spec.rms_norm(x, p["ff_norm.scale"].astype(x.dtype), config.norm_eps)))
    return x + _dense(p, "ff.fc2", f), h


def _head(params: Mapping[str, np.ndarray], x: np.ndarray, config: MinGRULMConfig) -> np.ndarray:
    if config.block == "prenorm":
        x = spec.rms_norm(x, params["final_norm.scale"].astype(x.dtype), config.norm_eps)
    return _dense(params, "head", x)


def _prepare(params, tokens, config, initial_state, lengths, mode, method):
    tokens = np.asarray(tokens)
    spec.check_tokens("tokens", tokens.shape, tokens.dtype.name, 2, config, tokens)
    spec.check_params(params, config)
    spec.check_mode(mode, method, _scan.METHODS, lengths is not None)
    batch, length = tokens.shape
    dtype = dtype_name(np.asarray(params["embed.embedding"]))
    if lengths is not None:
        lengths = np.asarray(lengths)
        spec.check_lengths(lengths.shape, lengths.dtype.name, batch, length, lengths)
    h0 = None if initial_state is None else _check_state("initial_state", initial_state, config, batch, dtype)
    return tokens, h0, lengths


def _check_state(name: str, state, config: MinGRULMConfig, batch: int, dtype: str) -> list[np.ndarray]:
    h = [np.asarray(a) for a in spec.state_arrays(name, state, config)]
    spec.check_state(name, config, batch, [a.shape for a in h], [dtype_name(a) for a in h],
                     mingru_spec.state_dtype(dtype))
    return h


def mingru_lm(
    params: Mapping[str, np.ndarray],
    tokens: np.ndarray,
    *,
    config: MinGRULMConfig,
    initial_state: State | None = None,
    lengths: np.ndarray | None = None,
    mode: str = "auto",
    method: str = "auto",
) -> tuple[np.ndarray, State]:
    """The model over a sequence.

    Args:
      params: canonical parameters (``linrec.spec.mingru_lm.param_shapes``); they set the compute dtype.
      tokens: ``(B, T)`` integer ids in ``[0, V)``.
      initial_state: ``State(h=tuple of L (B, H) arrays)`` in the state dtype; ``None``: ``default_state``.
      lengths: ``(B,)`` real tokens per row followed by padding (right padding): padded positions keep every
        layer's state, their logits are zero. ``None``: no padding.
      mode: ``"auto"`` (= ``"parallel"``: each layer one scan), ``"parallel"`` or ``"sequential"`` (the step
        loop).
      method: scan method of ``mode="parallel"`` (as for the minGRU layer; ``"log"`` refuses ``lengths``).

    Returns:
      ``logits (B, T, V)`` and the final ``State`` (each row's after its last real token).
    """
    tokens, h0, lengths = _prepare(params, tokens, config, initial_state, lengths, mode, method)
    emb = np.asarray(params["embed.embedding"])
    x = emb[tokens]
    mask = mingru_spec.padding_mask(lengths, *tokens.shape)
    if mingru_spec.resolve_mode(mode) == "sequential":
        h = h0 if h0 is not None else _default(config, tokens.shape[0], emb.dtype)
        logits = []
        for t in range(tokens.shape[1]):
            out, h = _step(params, x[:, t], h, None if mask is None else mask[:, t], config)
            logits.append(out)
        out = np.stack(logits, axis=1) if logits else _head(params, x, config)
        return _zero_pads(out, mask), State(tuple(h))
    finals = []
    for layer in range(config.n_layers):
        p = _sub(params, f"layers.{layer}.")
        mp = _sub(p, "mingru.")
        h_l = None if h0 is None else State(h0[layer])

        def mixer(inp, mp=mp, h_l=h_l):
            y, final = mingru(mp, inp, config=config.mingru, initial_state=h_l, lengths=lengths, method=method)
            return y, final.h

        x, h = _block(p, x, mixer, config)
        finals.append(h)
    return _zero_pads(_head(params, x, config), mask), State(tuple(finals))


def _zero_pads(logits: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return logits if mask is None else np.where(mask[..., None], logits, np.zeros((), logits.dtype))


def _default(config: MinGRULMConfig, batch: int, dtype) -> list[np.ndarray]:
    acc = np_dtype(mingru_spec.state_dtype(np.dtype(dtype).name))
    return [np.full((batch, config.d_inner), config.default_state, acc) for _ in range(config.n_layers)]


def _step(params, x_t, h: list[np.ndarray], keep, config: MinGRULMConfig):
    """One step from embedded ``x_t (B, D)`` and the layers' states ``h``; rows where ``keep`` is False leave
    the state unchanged."""
    hs = []
    for layer in range(config.n_layers):
        p = _sub(params, f"layers.{layer}.")
        h_old = h[layer]

        def mixer(inp, p=p, h_old=h_old):
            mp = _sub(p, "mingru.")
            y, new = mingru_step(mp, inp, State(h_old), config=config.mingru)
            if keep is None:
                return y, new.h
            return y, np.where(keep[:, None], new.h, h_old)  # a padded step keeps the state (its logits are zeroed)

        x_t, h_l = _block(p, x_t, mixer, config)
        hs.append(h_l)
    return _head(params, x_t, config), hs


def mingru_lm_step(
    params: Mapping[str, np.ndarray], token: np.ndarray, state: State | None, *, config: MinGRULMConfig
) -> tuple[np.ndarray, State]:
    """One token: ``token (B,)``, ``state`` (``None``: the default) -> ``(logits (B, V), State)``."""
    token = np.asarray(token)
    spec.check_tokens("token", token.shape, token.dtype.name, 1, config, token)
    spec.check_params(params, config)
    emb = np.asarray(params["embed.embedding"])
    h = (_default(config, token.shape[0], emb.dtype) if state is None
         else _check_state("state", state, config, token.shape[0], dtype_name(emb)))
    logits, h = _step(params, emb[token], h, None, config)
    return logits, State(tuple(h))


def mingru_lm_initial_state(config: MinGRULMConfig, batch_size: int, dtype: str = "float32") -> State:
    """The default state: ``State(h=...)``, ``L`` arrays ``(B, H)`` filled with ``default_state`` in the state
    dtype for ``dtype``."""
    return State(tuple(_default(config, batch_size, np_dtype(dtype))))


def mingru_lm_generate(
    params: Mapping[str, np.ndarray],
    prompt: np.ndarray,
    *,
    config: MinGRULMConfig,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | Sequence[int] = 0,
    lengths: np.ndarray | None = None,
    return_logits: bool = False,
):
    """Sample ``max_new_tokens`` after a (right-padded, ``lengths``) ``prompt (B, T)``; see
    ``spec.mingru_lm.generate_loop``.

    Returns ``tokens (B, N)`` (int64), and with ``return_logits`` also ``logits (B, N, V)``.
    """
    prompt = np.asarray(prompt)
    spec.check_generate_args(prompt.shape, max_new_tokens, temperature, top_k, config, lengths)
    tokens, logits = spec.generate_loop(
        lambda p, n: mingru_lm(params, p, config=config, lengths=n),
        lambda t, s: mingru_lm_step(params, t, s, config=config),
        np.asarray, prompt, lengths, max_new_tokens, temperature, top_k, seed,
    )
    return (tokens, logits) if return_logits else tokens
