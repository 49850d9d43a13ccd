"""The selective-copying task (Gu & Dao 2023, "Mamba", §4.1.1) and ``linrec train selective-copy``.

Task (the S4 ``copying.py`` generator, ``variable=True``, as cheind/mingru's example uses it): ``M`` data
tokens drawn from ``1 .. A-2`` are scattered, in order, over ``L + M`` positions that are otherwise the
noise token ``0``; then come ``M`` marker tokens ``A-1``. The model reads the ``L + 2M`` tokens and, at
the ``M`` marker positions, must output the data tokens in their order. Defaults are cheind's: ``L = 64``,
``M = 4``, ``A = 6`` (noise, four data tokens, marker). Accuracy is per target token.

Everything here is framework-neutral (NumPy): the data, the two model definitions (linrec model types
``mingru_stack_lm`` and ``mingru_lm``, see :meth:`CopyModelConfig.linrec_model`; their canonical
parameters and initialisation), validation bookkeeping, the progress line, the checkpoint and the CLI.
The training loops are twins: ``linrec.backends.jax.train`` and ``linrec.backends.torch.train``, both
started from the same NumPy initial parameters and fed the same batches.

Usage: ``linrec train selective-copy --backend jax`` or ``python -m linrec.tools.selective_copy --backend torch``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linrec.spec import mingru_lm as lm_spec
from linrec.spec import mingru_stack_lm as stack_lm_spec
from linrec.spec.mingru_lm import MinGRULMConfig
from linrec.spec.mingru_stack import MinGRUStackConfig
from linrec.spec.mingru_stack_lm import MinGRUStackLMConfig

__all__ = [
    "CopyModelConfig",
    "SelectiveCopyTask",
    "TrainSettings",
    "init_copy_model",
    "main",
    "param_shapes",
    "train",
]

MODELS = ("stack", "lm")


# --- the task -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectiveCopyTask:
    """``noise_len`` (``L``) noise positions, ``num_memorize`` (``M``) data tokens, ``vocab_size`` (``A``) ids."""

    noise_len: int = 64
    num_memorize: int = 4
    vocab_size: int = 6

    def __post_init__(self) -> None:
        for name in ("noise_len", "num_memorize"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.vocab_size, int) or self.vocab_size < 3:
            raise ValueError(f"vocab_size must be an int >= 3 (noise, >= 1 data token, marker), "
                             f"got {self.vocab_size!r}")

    @property
    def length(self) -> int:
        """Tokens per input sequence: ``L + 2M``."""
        return self.noise_len + 2 * self.num_memorize

    @property
    def marker(self) -> int:
        return self.vocab_size - 1

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs (B, L + 2M), targets (B, M))``, int64."""
        m, span = self.num_memorize, self.noise_len + self.num_memorize
        data = rng.integers(1, self.vocab_size - 1, (batch_size, m))
        # M distinct positions out of L + M, in increasing order, per row
        positions = np.sort(np.argsort(rng.random((batch_size, span)), axis=1)[:, :m], axis=1)
        inputs = np.zeros((batch_size, self.length), np.int64)
        np.put_along_axis(inputs, positions, data, axis=1)
        inputs[:, span:] = self.marker
        return inputs, data.astype(np.int64)

    def batches(self, seed: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """An endless stream of training batches from ``seed``."""
        rng = np.random.default_rng(seed)
        while True:
            yield self.batch(rng, batch_size)

    def validation_set(self, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """A fixed validation set of ``size`` sequences (a stream disjoint from training's)."""
        return self.batch(np.random.default_rng([seed, 0x5E1EC7]), size)


# --- the models ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyModelConfig:
    """``kind="stack"``: embedding ``(A, E)`` -> :class:`MinGRUStackConfig` -> head ``(H_last, A)`` (cheind's
    model); ``kind="lm"``: the minGRU language model (:class:`MinGRULMConfig`). Either way the logits at the
    last ``M`` positions are the answer."""

    kind: str
    num_memorize: int
    vocab_size: int
    emb_dims: int = 0
    stack: MinGRUStackConfig | None = None
    lm: MinGRULMConfig | None = None

    def __post_init__(self) -> None:
        if self.kind not in MODELS:
            raise ValueError(f"model kind must be one of {MODELS}, got {self.kind!r}")
        if self.kind == "stack" and (self.stack is None or self.stack.input_size != self.emb_dims):
            raise ValueError("kind='stack' needs a MinGRUStackConfig with input_size == emb_dims")
        if self.kind == "lm" and (self.lm is None or self.lm.vocab_size != self.vocab_size):
            raise ValueError("kind='lm' needs a MinGRULMConfig with the task's vocab_size")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "num_memorize": self.num_memorize, "vocab_size": self.vocab_size}
        if self.kind == "stack":
            out.update(emb_dims=self.emb_dims, stack=asdict(self.stack))
        else:
            out["lm"] = asdict(self.lm)
        return out

    def linrec_model(self) -> tuple[str, MinGRUStackLMConfig | MinGRULMConfig]:
        """The linrec model type and config this model is: ``("mingru_stack_lm", ...)`` for ``kind="stack"``,
        ``("mingru_lm", ...)`` for ``kind="lm"`` (what the checkpoint stores, so ``linrec.load`` reads it)."""
        if self.kind == "stack":
            return "mingru_stack_lm", MinGRUStackLMConfig.from_stack(self.vocab_size, self.stack)
        return "mingru_lm", self.lm

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CopyModelConfig:
        data = dict(data)
        if "stack" in data:
            stack = dict(data.pop("stack"))
            stack["hidden_sizes"] = tuple(stack["hidden_sizes"])
            data["stack"] = MinGRUStackConfig(**stack)
        if "lm" in data:
            data["lm"] = MinGRULMConfig(**data.pop("lm"))
        return cls(**data)


def param_shapes(config: CopyModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical names of the linrec model (:meth:`CopyModelConfig.linrec_model`): ``embed.embedding``,
    ``rnn.<stack names>``, ``head.{kernel,bias}`` (``mingru_stack_lm``), or the LM's (``mingru_lm``)."""
    model, cfg = config.linrec_model()
    return _spec(model).param_shapes(cfg)


def init_copy_model(config: CopyModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 initial parameters (the spec initialisers; embedding ``N(0, 1)``), shared by both backends."""
    model, cfg = config.linrec_model()
    return _spec(model).init_params(cfg, seed)


def _spec(model: str):
    return stack_lm_spec if model == "mingru_stack_lm" else lm_spec


# --- training settings, progress, results ---------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """What the twin loops need besides the model: optimiser, schedule, evaluation, scan method."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    clip_norm: float = 1.0
    eval_every: int = 250
    val_size: int = 1024
    seed: int = 0
    method: str = "auto"
    #: torch intra-op threads. 1 by default: on this shared 2-core machine two threads made each
    #: (small) training step ~10x slower (OpenMP threads waiting on a busy partner). None: torch's default.
    threads: int | None = 1

    def lr_at(self, step: int) -> float:
        """Linear warmup over ``warmup`` steps, then cosine decay to 10% at the last step."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        frac = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@dataclass
class Progress:
    """Prints one status line on ``stream`` (``\\r``-updated on a terminal, every ``every`` steps on a pipe)."""

    total: int
    stream: Any = field(default_factory=lambda: sys.stderr)
    every: int = 50
    start: float = field(default_factory=time.perf_counter)
    last_val: float | None = None

    def step(self, step: int, loss: float, acc: float) -> None:
        done = step + 1
        if done % self.every and done != self.total:
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        val = "" if self.last_val is None else f"  val {100 * self.last_val:.2f}%"
        line = f"step {done}/{self.total}  loss {loss:.4f}  acc {100 * acc:.1f}%{val}  {rate:.1f} steps/s"
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.stream.write(("\r" + line) if tty else line + "\n")
        self.stream.flush()

    def validation(self, step: int, acc: float) -> None:
        self.last_val = acc
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.stream.write(("\n" if tty else "") + f"validation after {step + 1} steps: {100 * acc:.2f}%\n")
        self.stream.flush()


def token_accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of target tokens whose argmax logit is right (cheind's metric)."""
    return float(np.mean(np.argmax(logits, axis=-1) == targets))


def sequence_accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of sequences with all ``M`` tokens right."""
    return float(np.mean(np.all(np.argmax(logits, axis=-1) == targets, axis=-1)))


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg_1min": load, "python": platform.python_version(),
            "platform": platform.platform()}


def train(backend: str, task: SelectiveCopyTask, model: CopyModelConfig, settings: TrainSettings, *,
          params: dict[str, np.ndarray] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Train with ``backend``'s loop; returns ``{"params", "history", "val_accuracy", ...}`` (params canonical)."""
    if backend == "jax":
        from linrec.backends.jax import train as loop
    elif backend == "torch":
        from linrec.backends.torch import train as loop
    else:
        raise ValueError(f"backend must be 'jax' or 'torch', got {backend!r}")
    params = init_copy_model(model, settings.seed) if params is None else params
    return loop.fit(task, model, settings, params, progress=progress)


def save_checkpoint(path: Path, params: dict[str, np.ndarray], model: CopyModelConfig, task: SelectiveCopyTask,
                    extra: dict[str, Any], *, force: bool = True) -> tuple[Path, Path]:
    """``path``: a linrec safetensors checkpoint of the model (:meth:`CopyModelConfig.linrec_model`, so
    ``linrec inspect`` names it and ``linrec.load`` loads it in every backend) whose ``selective_copy`` metadata
    holds the task, the copy-model config and ``extra``; and ``path`` with ``.json`` (the same, readable)."""
    import linrec
    from linrec.tools import formats
    from linrec.tools.layout import config_to_dict
    from linrec.tools.safetensors_io import write_safetensors

    model_type, linrec_config = model.linrec_model()
    config = {"task": asdict(task), "model": model.to_json(), **extra}
    metadata = {  # formats.write_linrec's metadata, plus the task
        "linrec_format": formats.LINREC_FORMAT,
        "linrec_spec_version": linrec.SPEC_VERSION,
        "linrec_version": linrec.__version__,
        "model_type": model_type,
        "config": json.dumps(config_to_dict(linrec_config), sort_keys=True),
        "selective_copy": json.dumps(config),
    }
    st = write_safetensors(path, params, metadata, force=force)
    js = path.with_suffix(".json")
    js.write_text(json.dumps(config, indent=2) + "\n")
    return st, js


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], CopyModelConfig, SelectiveCopyTask]:
    """The inverse of :func:`save_checkpoint` (also reads the earlier files with ``linrec_model`` metadata)."""
    from linrec.tools.safetensors_io import read_safetensors

    params, meta = read_safetensors(path)
    config = json.loads(meta["selective_copy"] if "selective_copy" in meta else meta["config"])
    return params, CopyModelConfig.from_json(config["model"]), SelectiveCopyTask(**config["task"])


# --- CLI ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linrec train selective-copy",
                                description="Train a minGRU model on selective copying (Gu & Dao 2023).")
    p.add_argument("--backend", choices=("jax", "torch"), required=True)
    p.add_argument("--model", choices=MODELS, default="stack",
                   help="stack: embedding + MinGRU stack + head (cheind); lm: the minGRU language model")
    p.add_argument("--steps", type=int, default=TrainSettings.steps)
    p.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    p.add_argument("--lr", type=float, default=TrainSettings.lr, help="peak Adam learning rate")
    p.add_argument("--warmup", type=int, default=TrainSettings.warmup)
    p.add_argument("--clip-norm", type=float, default=TrainSettings.clip_norm,
                   help="global gradient-norm clip (0: off)")
    p.add_argument("--eval-every", type=int, default=TrainSettings.eval_every)
    p.add_argument("--val-size", type=int, default=TrainSettings.val_size, help="validation sequences")
    p.add_argument("--seed", type=int, default=TrainSettings.seed)
    p.add_argument("--method", default=TrainSettings.method, help="scan method of every minGRU layer")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--noise-len", type=int, default=64, help="L, noise positions")
    p.add_argument("--memorize", type=int, default=4, help="M, tokens to copy")
    p.add_argument("--vocab", type=int, default=6, help="A: noise + data tokens + marker")
    p.add_argument("--emb-dims", type=int, default=16, help="stack: embedding width")
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="stack: hidden sizes, one per layer")
    p.add_argument("--no-norm", action="store_true", help="stack: no LayerNorm on layer inputs")
    p.add_argument("--no-residual", action="store_true", help="stack: no residual connections")
    p.add_argument("--dropout", type=float, default=0.0, help="stack: dropout between layers")
    p.add_argument("--d-model", type=int, default=64, help="lm: width")
    p.add_argument("--layers", type=int, default=2, help="lm: blocks")
    p.add_argument("--block", choices=lm_spec.BLOCKS, default="glu", help="lm: block design")
    p.add_argument("--candidate", choices=("g", "identity"), default=None,
                   help="minGRU candidate (default: g for stack, identity for lm)")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint path (.safetensors; a .json with the config goes next to it); "
                        "default: selective_copy_<backend>_<model>.safetensors")
    p.add_argument("--results", type=Path, default=None, help="also write the run's figures as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def model_from_args(args: argparse.Namespace, task: SelectiveCopyTask) -> CopyModelConfig:
    if args.model == "stack":
        candidate = args.candidate or "g"
        stack = MinGRUStackConfig(
            input_size=args.emb_dims, hidden_sizes=tuple(args.hidden), residual=not args.no_residual,
            norm=not args.no_norm, dropout=args.dropout, candidate=candidate,
            default_state=0.5 if candidate == "g" else 0.0,
        )
        return CopyModelConfig("stack", task.num_memorize, task.vocab_size, emb_dims=args.emb_dims, stack=stack)
    lm = MinGRULMConfig(vocab_size=task.vocab_size, d_model=args.d_model, n_layers=args.layers, block=args.block,
                        candidate=args.candidate or "identity")
    return CopyModelConfig("lm", task.num_memorize, task.vocab_size, lm=lm)


def run(args: argparse.Namespace, stream=None) -> dict[str, Any]:
    """Train as ``args`` say, save the checkpoint, and return the run's figures."""
    stream = sys.stderr if stream is None else stream
    task = SelectiveCopyTask(args.noise_len, args.memorize, args.vocab)
    model = model_from_args(args, task)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                             clip_norm=args.clip_norm, eval_every=args.eval_every, val_size=args.val_size,
                             seed=args.seed, method=args.method, threads=args.threads or None)
    progress = None if args.quiet else Progress(settings.steps, stream)
    start = time.perf_counter()
    result = train(args.backend, task, model, settings, progress=progress)
    wall = time.perf_counter() - start
    # rates over the steps after the first (which includes JAX's compilation), validation time excluded
    timed_steps = max(settings.steps - 1, 1)
    tokens = timed_steps * settings.batch_size * task.length
    figures = {
        "backend": args.backend,
        "model": model.to_json(),
        "task": asdict(task),
        "settings": asdict(settings),
        "parameters": int(sum(v.size for v in result["params"].values())),
        "val_accuracy": result["val_accuracy"],
        "val_sequence_accuracy": result["val_sequence_accuracy"],
        "final_train_loss": result["history"][-1]["loss"] if result["history"] else None,
        "steps": settings.steps,
        "wall_seconds": round(wall, 2),
        "train_seconds": round(result["train_seconds"], 2),
        "first_step_seconds": round(result["first_step_seconds"], 2),
        "steps_per_second": round(timed_steps / max(result["train_seconds"], 1e-9), 2),
        "tokens_per_second": round(tokens / max(result["train_seconds"], 1e-9), 1),
        "evaluations": result["evaluations"],
        "versions": result.get("versions", {}),
        "machine": machine_info(),
    }
    out = args.out or Path(f"selective_copy_{args.backend}_{model.kind}.safetensors")
    st, js = save_checkpoint(out, result["params"], model, task,
                             {"settings": asdict(settings), "val_accuracy": result["val_accuracy"]})
    figures["checkpoint"] = str(st)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(figures, indent=2) + "\n")
    stream.write(f"validation accuracy {100 * result['val_accuracy']:.2f}% ({settings.val_size} sequences) after "
                 f"{settings.steps} steps in {wall:.1f} s; checkpoint {st} (+ {js.name})\n")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``linrec train selective-copy`` (``argv`` without the subcommand words)."""
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.eval_every < 1 or args.val_size < 1:
        raise SystemExit("linrec train selective-copy: --steps, --batch-size, --eval-every, --val-size must be >= 1")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
