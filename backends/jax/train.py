"""The JAX training loop for ``linrec train selective-copy`` (twin: ``linrec.backends.torch.train``).

The model is a pure function of canonical parameters (``copy_logits``); one jitted step computes the
loss, its gradient, a global-norm clip and an Adam update (``optax``) with the learning rate passed in,
so the schedule of ``TrainSettings.lr_at`` is applied identically in both backends.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from linrec.backends.jax.mingru_lm import mingru_lm
from linrec.backends.jax.mingru_stack import mingru_stack
from linrec.spec.mingru_stack import sub_params
from linrec.tools.selective_copy import (
    CopyModelConfig,
    Progress,
    SelectiveCopyTask,
    TrainSettings,
    sequence_accuracy,
    token_accuracy,
)

__all__ = ["copy_logits", "fit"]

Array = jax.Array


def copy_logits(params: Mapping[str, Array], tokens: Array, model: CopyModelConfig, *, method: str = "auto",
                dropout_rng: Array | None = None) -> Array:
    """``tokens (B, L + 2M)`` -> logits ``(B, M, A)`` at the ``M`` marker positions."""
    m = model.num_memorize
    if model.kind == "lm":
        logits, _ = mingru_lm(params, tokens, config=model.lm, method=method)
        return logits[:, -m:]
    x = jnp.take(params["embed.embedding"], tokens, axis=0)
    y, _ = mingru_stack(sub_params(params, "rnn."), x, config=model.stack, method=method, dropout_rng=dropout_rng)
    return y[:, -m:] @ params["head.kernel"] + params["head.bias"]


def fit(task: SelectiveCopyTask, model: CopyModelConfig, settings: TrainSettings, params: Mapping[str, np.ndarray],
        *, progress: Progress | None = None) -> dict[str, Any]:
    """Train from ``params`` (canonical NumPy arrays) on ``task``; returns the trained params and figures."""
    params = {k: jnp.asarray(v) for k, v in params.items()}
    tx = optax.chain(optax.clip_by_global_norm(settings.clip_norm) if settings.clip_norm > 0 else optax.identity(),
                     optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8))
    opt_state = tx.init(params)
    use_dropout = model.kind == "stack" and model.stack.dropout > 0
    base_key = jax.random.key(settings.seed)

    def loss_fn(p, x, y, key):
        logits = copy_logits(p, x, model, method=settings.method, dropout_rng=key)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, axis=-1) == y)

    @jax.jit
    def train_step(p, state, x, y, lr, step):
        key = jax.random.fold_in(base_key, step) if use_dropout else None
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, y, key)
        updates, state = tx.update(grads, state, p)
        p = jax.tree.map(lambda w, u: w - lr * u, p, updates)
        return p, state, loss, acc

    @jax.jit
    def eval_logits(p, x):
        return copy_logits(p, x, model, method=settings.method)

    def validate(p) -> tuple[float, float]:
        logits = np.concatenate([np.asarray(eval_logits(p, jnp.asarray(val_x[i:i + 256])))
                                 for i in range(0, len(val_x), 256)])
        return token_accuracy(logits, val_y), sequence_accuracy(logits, val_y)

    val_x, val_y = task.validation_set(settings.seed, settings.val_size)
    batches = task.batches(settings.seed, settings.batch_size)
    history, evaluations = [], []
    eval_seconds = first_step = 0.0
    start = time.perf_counter()
    for step in range(settings.steps):
        x, y = next(batches)
        params, opt_state, loss, acc = train_step(params, opt_state, jnp.asarray(x), jnp.asarray(y),
                                                  jnp.float32(settings.lr_at(step)), step)
        if step == 0:
            loss.block_until_ready()
            first_step = time.perf_counter() - start
        every = progress.every if progress is not None else 50
        if step == 0 or (step + 1) % every == 0 or step + 1 == settings.steps:
            history.append({"step": step + 1, "loss": float(loss), "acc": float(acc)})
            if progress is not None:
                progress.step(step, float(loss), float(acc))
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            t0 = time.perf_counter()
            tok, seq = validate(params)
            eval_seconds += time.perf_counter() - t0
            evaluations.append({"step": step + 1, "val_accuracy": tok, "val_sequence_accuracy": seq})
            if progress is not None:
                progress.validation(step, tok)
    jax.block_until_ready(params)
    total = time.perf_counter() - start
    return {
        "params": {k: np.asarray(v) for k, v in params.items()},
        "history": history,
        "evaluations": evaluations,
        "val_accuracy": evaluations[-1]["val_accuracy"],
        "val_sequence_accuracy": evaluations[-1]["val_sequence_accuracy"],
        "first_step_seconds": first_step,
        "train_seconds": total - eval_seconds - first_step,
        "eval_seconds": eval_seconds,
        "versions": {"jax": jax.__version__, "optax": optax.__version__},
    }
