"""Selective copying: the task generator, the twin training loops (tiny runs), checkpoints and the CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from linrec.tools import selective_copy as sc

TINY = dict(steps=30, batch_size=32, lr=1e-2, warmup=5, eval_every=15, val_size=64, seed=0)


def test_task_batches():
    task = sc.SelectiveCopyTask()
    assert (task.length, task.marker) == (72, 5)
    x, y = task.batch(np.random.default_rng(0), 256)
    assert x.shape == (256, 72) and y.shape == (256, 4) and x.dtype == y.dtype == np.int64
    assert np.all(x[:, 68:] == 5) and np.all((y >= 1) & (y <= 4))
    body = x[:, :68]
    assert np.all(np.isin(body, [0, 1, 2, 3, 4]))
    assert np.all((body > 0).sum(axis=1) == 4)  # exactly M data tokens, the rest noise
    np.testing.assert_array_equal(body[body > 0].reshape(256, 4), y)  # in order
    positions = np.argwhere(body > 0)[:, 1].reshape(256, 4)
    assert positions.min() == 0 and positions.max() == 67  # anywhere in the L + M span
    again, _ = task.batch(np.random.default_rng(0), 256)
    np.testing.assert_array_equal(again, x)
    val_x, _ = task.validation_set(0, 64)
    train_x, _ = next(task.batches(0, 64))
    assert not np.array_equal(val_x, train_x)
    with pytest.raises(ValueError, match="vocab_size"):
        sc.SelectiveCopyTask(vocab_size=2)


def test_lr_schedule():
    s = sc.TrainSettings(steps=100, lr=1.0, warmup=10)
    assert s.lr_at(0) == pytest.approx(0.1) and s.lr_at(9) == pytest.approx(1.0)
    assert s.lr_at(10) == pytest.approx(1.0) and s.lr_at(99) == pytest.approx(0.1, abs=1e-3)
    assert all(s.lr_at(i) >= s.lr_at(i + 1) for i in range(10, 99))


def _tiny_model(kind: str = "stack") -> tuple[sc.SelectiveCopyTask, sc.CopyModelConfig]:
    task = sc.SelectiveCopyTask(noise_len=16, num_memorize=2, vocab_size=5)
    args = sc.build_parser().parse_args(
        ["--backend", "torch", "--model", kind, "--emb-dims", "8", "--hidden", "16", "16", "--d-model", "16",
         "--noise-len", "16", "--memorize", "2", "--vocab", "5"])
    return task, sc.model_from_args(args, task)


def _run(backend: str, kind: str = "stack"):
    task, model = _tiny_model(kind)
    progress = sc.Progress(TINY["steps"], io.StringIO(), every=5)
    result = sc.train(backend, task, model, sc.TrainSettings(**TINY), progress=progress)
    return result, progress.stream.getvalue()


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_tiny_training_run_learns(backend):
    pytest.importorskip(backend)
    result, log = _run(backend)
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 7 and losses[-1] < 0.8 * losses[0], losses  # step 1, 5, 10, ..., 30
    assert "step 30/30" in log and "validation after 15 steps" in log
    assert [e["step"] for e in result["evaluations"]] == [15, 30]
    assert 0 <= result["val_accuracy"] <= 1 and result["train_seconds"] > 0
    _, model = _tiny_model()
    assert set(result["params"]) == set(sc.param_shapes(model))


def test_twin_loops_agree():
    """Same initial parameters, same batches, same optimiser: the two frameworks' loss curves coincide."""
    pytest.importorskip("jax")
    pytest.importorskip("torch")
    jax_result, _ = _run("jax")
    torch_result, _ = _run("torch")
    j = np.array([h["loss"] for h in jax_result["history"]])
    t = np.array([h["loss"] for h in torch_result["history"]])
    np.testing.assert_allclose(j, t, rtol=2e-3)


def test_cli_checkpoint_and_cross_framework_eval(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("jax")
    out, results = tmp_path / "copy.safetensors", tmp_path / "run.json"
    argv = ["--backend", "torch", "--steps", "12", "--batch-size", "16", "--eval-every", "6", "--val-size", "32",
            "--noise-len", "16", "--memorize", "2", "--vocab", "5", "--hidden", "16", "--emb-dims", "8",
            "--out", str(out), "--results", str(results), "--quiet"]
    assert sc.main(argv) == 0
    figures = json.loads(results.read_text())
    assert figures["steps"] == 12 and figures["backend"] == "torch" and figures["checkpoint"] == str(out)
    assert {"val_accuracy", "wall_seconds", "tokens_per_second", "machine"} <= set(figures)
    config = json.loads(out.with_suffix(".json").read_text())
    assert config["model"]["kind"] == "stack" and config["task"]["noise_len"] == 16
    params, model, task = sc.load_checkpoint(out)
    assert set(params) == set(sc.param_shapes(model))
    # the torch-trained checkpoint gives the same logits in JAX
    from linrec.backends.jax.train import copy_logits
    from linrec.backends.torch.train import CopyNet

    x, _ = task.batch(np.random.default_rng(1), 8)
    with torch.no_grad():
        t_logits = CopyNet(model, params).eval()(torch.from_numpy(x)).numpy()
    j_logits = np.asarray(copy_logits(params, x, model))
    np.testing.assert_allclose(j_logits, t_logits, rtol=1e-4, atol=1e-4)


def test_lm_model_trains_a_few_steps():
    pytest.importorskip("torch")
    result, _ = _run("torch", "lm")
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0] and "layers.1.glu.kernel" in result["params"]


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        sc.main(["--backend", "mxnet"])
    with pytest.raises(SystemExit):
        sc.main(["--backend", "torch", "--steps", "0"])
