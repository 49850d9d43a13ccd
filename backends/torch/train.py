"""The PyTorch training loop for ``linrec train selective-copy`` (twin: ``linrec.backends.jax.train``).

The model is built from the same canonical NumPy parameters as the JAX run (``CopyNet``); each step
computes the loss, clips the global gradient norm and takes an Adam step with the learning rate of
``TrainSettings.lr_at``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linrec.backends.torch.arrays import to_numpy
from linrec.backends.torch.mingru_lm import MinGRULM
from linrec.backends.torch.mingru_stack import MinGRUStack
from linrec.spec.mingru_stack import sub_params
from linrec.tools.selective_copy import (
    CopyModelConfig,
    Progress,
    SelectiveCopyTask,
    TrainSettings,
    sequence_accuracy,
    token_accuracy,
)

__all__ = ["CopyNet", "fit"]


class CopyNet(nn.Module):
    """``tokens (B, L + 2M)`` -> logits ``(B, M, A)`` at the marker positions (canonical names as in
    ``linrec.tools.selective_copy.param_shapes``)."""

    def __init__(self, model: CopyModelConfig, params: Mapping[str, Any], *, method: str = "auto"):
        super().__init__()
        self.model_config = model
        self.method = method
        if model.kind == "lm":
            self.lm = MinGRULM.from_canonical(model.lm, params)
            return
        self.embed = nn.Embedding(model.vocab_size, model.emb_dims)
        self.rnn = MinGRUStack.from_canonical(model.stack, sub_params(params, "rnn."))
        self.head = nn.Linear(model.stack.output_size, model.vocab_size)
        with torch.no_grad():
            self.embed.weight.copy_(torch.as_tensor(np.asarray(params["embed.embedding"])))
            self.head.weight.copy_(torch.as_tensor(np.asarray(params["head.kernel"])).T)
            self.head.bias.copy_(torch.as_tensor(np.asarray(params["head.bias"])))

    def forward(self, tokens: Tensor) -> Tensor:
        m = self.model_config.num_memorize
        if self.model_config.kind == "lm":
            return self.lm(tokens, method=self.method)[0][:, -m:]
        y, _ = self.rnn(self.embed(tokens), method=self.method)
        return self.head(y[:, -m:])

    def canonical_params(self) -> dict[str, np.ndarray]:
        if self.model_config.kind == "lm":
            return self.lm.canonical_params()
        out = {f"rnn.{k}": v for k, v in self.rnn.canonical_params().items()}
        out["embed.embedding"] = to_numpy(self.embed.weight).copy()
        out["head.kernel"] = np.ascontiguousarray(to_numpy(self.head.weight.T))
        out["head.bias"] = to_numpy(self.head.bias).copy()
        return out


def fit(task: SelectiveCopyTask, model: CopyModelConfig, settings: TrainSettings, params: Mapping[str, np.ndarray],
        *, progress: Progress | None = None) -> dict[str, Any]:
    """Train from ``params`` (canonical NumPy arrays) on ``task``; returns the trained params and figures.

    The thread count and the seeded RNG are the run's own: torch's settings are restored when it returns."""
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            return _fit(task, model, settings, params, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _fit(task: SelectiveCopyTask, model: CopyModelConfig, settings: TrainSettings, params: Mapping[str, np.ndarray],
         *, progress: Progress | None = None) -> dict[str, Any]:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)  # dropout masks
    net = CopyNet(model, params, method=settings.method)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr, betas=(0.9, 0.999), eps=1e-8)
    val_x, val_y = task.validation_set(settings.seed, settings.val_size)
    batches = task.batches(settings.seed, settings.batch_size)

    def validate() -> tuple[float, float]:
        net.eval()
        with torch.no_grad():
            logits = np.concatenate([to_numpy(net(torch.from_numpy(val_x[i:i + 256])))
                                     for i in range(0, len(val_x), 256)])
        net.train()
        return token_accuracy(logits, val_y), sequence_accuracy(logits, val_y)

    history, evaluations = [], []
    eval_seconds = first_step = 0.0
    net.train()
    start = time.perf_counter()
    for step in range(settings.steps):
        x, y = next(batches)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr_at(step)
        logits = net(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.clip_norm > 0:
            nn.utils.clip_grad_norm_(net.parameters(), settings.clip_norm)
        optimizer.step()
        if step == 0:
            first_step = time.perf_counter() - start
        every = progress.every if progress is not None else 50
        if step == 0 or (step + 1) % every == 0 or step + 1 == settings.steps:
            acc = float((logits.argmax(-1) == y).float().mean())
            history.append({"step": step + 1, "loss": loss.item(), "acc": acc})
            if progress is not None:
                progress.step(step, loss.item(), acc)
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            t0 = time.perf_counter()
            tok, seq = validate()
            eval_seconds += time.perf_counter() - t0
            evaluations.append({"step": step + 1, "val_accuracy": tok, "val_sequence_accuracy": seq})
            if progress is not None:
                progress.validation(step, tok)
    total = time.perf_counter() - start
    return {
        "params": net.canonical_params(),
        "history": history,
        "evaluations": evaluations,
        "val_accuracy": evaluations[-1]["val_accuracy"],
        "val_sequence_accuracy": evaluations[-1]["val_sequence_accuracy"],
        "first_step_seconds": first_step,
        "train_seconds": total - eval_seconds - first_step,
        "eval_seconds": eval_seconds,
        "versions": {"torch": torch.__version__, "threads": torch.get_num_threads()},
    }
