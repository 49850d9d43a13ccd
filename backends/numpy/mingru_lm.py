"""minGRU language model for the NumPy backend (``spec/mingru_lm.md``): pure functions over canonical parameters.

Shape legend: ``B`` batch, ``T`` time, ``V`` vocabulary, ``D`` model width, ``H`` minGRU state width,
``L`` layers. Every layer's minGRU runs through the layer's own functions (``linrec.backends.numpy.mingru``);
left padding (``lengths``) turns pad positions into identity steps (``a = 1, b = 0``) of the same scan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from linrec.backends.numpy import scan as _scan
from linrec.backends.numpy.arrays import dtype_name, np_dtype
from linrec.backends.numpy.mingru import mingru, mingru_gates, mingru_step
from linrec.spec import mingru as mingru_spec
from linrec.spec import mingru_lm as spec
from linrec.spec.mingru_lm import MinGRULMConfig, MinGRULMState

__all__ = ["MinGRULMState", "mingru_lm", "mingru_lm_generate", "mingru_lm_initial_state", "mingru_lm_step"]


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


def _masked_mingru(p, x, h0, mask, config: MinGRULMConfig, method: str):
    """The minGRU scan with pad positions as identity steps: ``a = 1, b = 0`` where ``mask`` is False."""
    mcfg = config.mingru
    acc = np_dtype(mingru_spec.state_dtype(dtype_name(x)))
    u = _dense(p, "proj", x).astype(acc)
    a, b = mingru_gates(u, mcfg)
    keep = mask[..., None]
    a, b = np.where(keep, a, np.ones((), acc)), np.where(keep, b, np.zeros((), acc))
    if h0 is None:
        h0 = np.full((x.shape[0], mcfg.d_inner), mcfg.default_state, acc)
    h, final = _scan.linear_scan(a, b, initial_state=h0, method=method)
    y = h.astype(x.dtype)
    return (y @ p["out_proj.kernel"].astype(x.dtype) if mcfg.out_proj else y), final


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
    h0 = None
    if initial_state is not None:
        h = np.asarray(initial_state.h) if isinstance(initial_state, MinGRULMState) else None
        spec.check_state(initial_state, config, batch, None if h is None else h.shape,
                         None if h is None else dtype_name(h), mingru_spec.state_dtype(dtype))
        h0 = h
    return tokens, h0, spec.left_padding_mask(lengths, batch, length)


def mingru_lm(
    params: Mapping[str, np.ndarray],
    tokens: np.ndarray,
    *,
    config: MinGRULMConfig,
    initial_state: MinGRULMState | None = None,
    lengths: np.ndarray | None = None,
    mode: str = "parallel",
    method: str = "auto",
) -> tuple[np.ndarray, MinGRULMState]:
    """The model over a sequence.

    Args:
      params: canonical parameters (``linrec.spec.mingru_lm.param_shapes``); they set the compute dtype.
      tokens: ``(B, T)`` integer ids in ``[0, V)``.
      initial_state: ``MinGRULMState(h (L, B, H))`` in the state dtype; ``None``: ``default_state``.
      lengths: ``(B,)`` real tokens per row, right-aligned (left padding); ``None``: no padding.
      mode: ``"parallel"`` (each layer a scan) or ``"sequential"`` (the step loop).
      method: scan method of ``mode="parallel"`` (as for the minGRU layer).

    Returns:
      ``logits (B, T, V)`` and the final ``MinGRULMState``.
    """
    tokens, h0, mask = _prepare(params, tokens, config, initial_state, lengths, mode, method)
    emb = np.asarray(params["embed.embedding"])
    x = emb[tokens]
    if mode == "sequential":
        state = MinGRULMState(h0 if h0 is not None else _default(config, tokens.shape[0], emb.dtype))
        logits = []
        for t in range(tokens.shape[1]):
            out, state = _step(params, x[:, t], state, None if mask is None else mask[:, t], config)
            logits.append(out)
        out = np.stack(logits, axis=1) if logits else _head(params, x, config)
        return out, state
    finals = []
    for layer in range(config.n_layers):
        p = _sub(params, f"layers.{layer}.")
        mp = _sub(p, "mingru.")
        h_l = None if h0 is None else h0[layer]

        def mixer(inp, mp=mp, h_l=h_l):
            if mask is None:
                return mingru(mp, inp, config=config.mingru, initial_state=h_l, method=method)
            return _masked_mingru(mp, inp, h_l, mask, config, method)

        x, h = _block(p, x, mixer, config)
        finals.append(h)
    return _head(params, x, config), MinGRULMState(np.stack(finals))


def _default(config: MinGRULMConfig, batch: int, dtype) -> np.ndarray:
    acc = np_dtype(mingru_spec.state_dtype(np.dtype(dtype).name))
    return np.full((config.n_layers, batch, config.d_inner), config.default_state, acc)


def _step(params, x_t, state: MinGRULMState, keep, config: MinGRULMConfig):
    """One step from embedded ``x_t (B, D)``; rows where ``keep`` is False leave the state unchanged."""
    hs = []
    for layer in range(config.n_layers):
        p = _sub(params, f"layers.{layer}.")
        h_old = state.h[layer]

        def mixer(inp, p=p, h_old=h_old):
            mp = _sub(p, "mingru.")
            y, h = mingru_step(mp, inp, h_old, config=config.mingru)
            if keep is None:
                return y, h
            h = np.where(keep[:, None], h, h_old)  # a pad step: the state, and so the output, stay put
            y = h.astype(inp.dtype)
            return (y @ mp["out_proj.kernel"].astype(y.dtype) if config.mingru.out_proj else y), h

        x_t, h = _block(p, x_t, mixer, config)
        hs.append(h)
    return _head(params, x_t, config), MinGRULMState(np.stack(hs))


def mingru_lm_step(
    params: Mapping[str, np.ndarray], token: np.ndarray, state: MinGRULMState, *, config: MinGRULMConfig
) -> tuple[np.ndarray, MinGRULMState]:
    """One token: ``token (B,)``, ``state`` -> ``(logits (B, V), state)``."""
    token = np.asarray(token)
    spec.check_tokens("token", token.shape, token.dtype.name, 1, config, token)
    spec.check_params(params, config)
    emb = np.asarray(params["embed.embedding"])
    h = np.asarray(state.h) if isinstance(state, MinGRULMState) else None
    spec.check_state(state, config, token.shape[0], None if h is None else h.shape,
                     None if h is None else dtype_name(h), mingru_spec.state_dtype(dtype_name(emb)))
    return _step(params, emb[token], MinGRULMState(h), None, config)


def mingru_lm_initial_state(config: MinGRULMConfig, batch_size: int, dtype: str = "float32") -> MinGRULMState:
    """The default state: ``h (L, B, H)`` filled with ``default_state`` in the state dtype for ``dtype``."""
    return MinGRULMState(_default(config, batch_size, np_dtype(dtype)))


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
    """Sample ``max_new_tokens`` after a (left-padded) ``prompt (B, T)``; see ``spec.mingru_lm.generate_loop``.

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
