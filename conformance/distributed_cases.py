"""The ``distributed`` conformance group (recurrence.md §12): sequence-parallel == one device.

``linrec conformance --devices N`` runs it. For JAX the cases run in a subprocess whose CPU is split into ``N``
host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``: a process that has already started JAX
cannot change its device count); for PyTorch, ``linrec.conformance.distributed_torch.run(devices, select)`` runs
them over ``N`` processes. Each case computes a scan, layer or language model (outputs and gradients) once on one
device and once with the time axis split over the devices, and compares them with the spec's tolerances
(``linrec.spec.tolerances``, gradients ×10); the error cases check the refusals of §12.

Run the JAX side directly with ``python -m linrec.conformance.distributed_cases --devices 8 [--select PAT]``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from linrec.conformance.case import Outcome
from linrec.conformance.runner import BackendReport, CaseResult

__all__ = ["DistributedCase", "jax_cases", "run", "run_jax", "run_jax_here"]

#: cases the default test tier runs (the rest run in the slow tier and in ``linrec conformance --devices N``)
QUICK = ("scan/sharded/forward-resets-initial-state[sequential]", "scan/sharded/reverse-resets[chunked]",
         "scan/sharded/errors/*", "lm/sharded/mingru_lm/train-step-data-seq")


@dataclass(frozen=True)
class DistributedCase:
    """``fn(devices)`` runs in a process with at least ``devices`` JAX devices and returns an :class:`Outcome`."""

    id: str
    property: str
    doc: str
    fn: Callable[[int], Outcome]


def selected(case_id: str, select: str | Sequence[str] | None) -> bool:
    """Whether ``case_id`` matches ``select`` (an fnmatch pattern, a sequence of them, or ``None``: every case)."""
    if select is None:
        return True
    patterns = [select] if isinstance(select, str) else list(select)
    return any(fnmatch.fnmatchcase(case_id, p) for p in patterns)


# ---------------------------------------------------------------------------------------------------------------------
# Comparison of two pytrees (sharded vs one device) with the spec's tolerances.


def _compare(sharded, single, length: int, n_outputs: int) -> Outcome:
    """Leaves ``[:n_outputs]`` are outputs, the rest gradients (tolerance ×10); worst leaf by error/allowed."""
    import jax

    from linrec.spec.tolerances import max_violation, tolerance_for

    got, want = jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(single)
    if len(got) != len(want):
        return Outcome(False, detail=f"{len(got)} sharded leaves vs {len(want)} one-device leaves")
    worst: tuple[float, float, float, str] = (-1.0, 0.0, 0.0, "no floating leaf")
    for i, (x, y) in enumerate(zip(got, want, strict=True)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind not in "fc":
            if not np.array_equal(x, y):
                return Outcome(False, detail=f"leaf {i}: integer leaves differ")
            continue
        tol = tolerance_for(str(y.dtype), length=length, grad=i >= n_outputs)
        err, allowed = max_violation(x, y, tol)
        if err / allowed > worst[0]:
            kind = "output" if i < n_outputs else "gradient"
            worst = (err / allowed, err, allowed, f"worst leaf {i} ({kind}, shape {y.shape})")
    _, err, allowed, where = worst
    return Outcome(err <= allowed, err, allowed, where)


def _mesh(devices: int, data: int = 1):
    import jax
    from jax.sharding import Mesh

    if len(jax.devices()) < devices:
        raise RuntimeError(f"this process has {len(jax.devices())} JAX devices, the case needs {devices}: run it "
                           f"with XLA_FLAGS=--xla_force_host_platform_device_count={devices}")
    grid = np.array(jax.devices()[:devices])
    return Mesh(grid.reshape(data, devices // data), ("data", "seq"))


# ---------------------------------------------------------------------------------------------------------------------
# The scan.


def _scan_case(method: str, *, reverse: bool, resets: bool, initial_state: bool, dtype: str = "float32",
               matrix: bool = False, real_decay: bool = False, data: int = 1) -> Callable[[int], Outcome]:
    def fn(devices: int) -> Outcome:
        import jax
        import jax.numpy as jnp

        from linrec.backends.jax import scan
        from linrec.backends.jax.distributed import linear_scan_sharded

        mesh = _mesh(devices, data)
        n_seq = devices // data
        rng = np.random.default_rng(devices)
        n_batch, n_time = 2 * data, 4 * n_seq
        state = (2, 3, 4) if matrix else (5,)
        a_state = (2, 3, 1) if matrix else ((1,) if real_decay else state)
        a = rng.uniform(0.6, 1.0, (n_batch, n_time, *a_state))
        b = rng.standard_normal((n_batch, n_time, *state))
        h0 = rng.standard_normal((n_batch, *state))
        if dtype == "complex64":
            b = b + 1j * rng.standard_normal(b.shape)
            h0 = h0 + 1j * rng.standard_normal(h0.shape)
            if not real_decay:
                a = a * np.exp(1j * rng.uniform(-0.3, 0.3, a.shape))
        real = "float32"
        a = jnp.asarray(a, real if np.isrealobj(a) else dtype)
        b, h0 = jnp.asarray(b, dtype), jnp.asarray(h0, dtype)
        cuts = None
        if resets:
            cut = np.zeros((n_batch, n_time), bool)
            chunk = n_time // n_seq
            cut[0, chunk] = True           # exactly at a chunk edge (reverse: the previous chunk's last link)
            cut[-1, chunk + 1] = True      # inside a chunk
            cut[-1, 2 * chunk - 1] = True  # the last step of a chunk
            cut[0, 0] = True               # global step 0: no effect
            cuts = jnp.asarray(cut)
        w_h = jnp.asarray(rng.standard_normal(b.shape), dtype)
        w_f = jnp.asarray(rng.standard_normal(h0.shape), dtype)

        def run(scan_fn):
            def loss(a, b, h0):
                h, final = scan_fn(a, b, initial_state=h0 if initial_state else None, reverse=reverse,
                                   resets=cuts, method=method)
                return jnp.sum(jnp.real(h * w_h)) + jnp.sum(jnp.real(final * w_f)), (h, final)

            (_, outs), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(a, b, h0)
            return (*outs, *(grads if initial_state else grads[:2]))

        sharded = run(lambda *x, **k: linear_scan_sharded(*x, mesh=mesh, **k))
        single = run(scan.linear_scan)
        return _compare(sharded, single, n_time, 2)

    return fn


def _scan_cases() -> list[DistributedCase]:
    out = []
    for method in ("sequential", "associative", "chunked", "auto"):
        out.append(DistributedCase(
            f"scan/sharded/forward-resets-initial-state[{method}]", "sharded-equals-one-device",
            "forward scan with initial_state and resets inside, at and next to chunk edges: h, final_state and "
            "the gradients of a, b, initial_state", _scan_case(method, reverse=False, resets=True,
                                                               initial_state=True)))
        out.append(DistributedCase(
            f"scan/sharded/reverse-resets[{method}]", "sharded-equals-one-device",
            "reverse scan with initial_state and resets (a reset at a chunk's first step cuts the previous "
            "chunk's last link)", _scan_case(method, reverse=True, resets=True, initial_state=True)))
    for reverse in (False, True):
        d = "reverse" if reverse else "forward"
        out += [
            DistributedCase(f"scan/sharded/{d}-zero-state", "sharded-equals-one-device",
                            "initial_state=None, no resets", _scan_case("auto", reverse=reverse, resets=False,
                                                                        initial_state=False)),
            DistributedCase(f"scan/sharded/{d}-complex64", "sharded-equals-one-device",
                            "complex state and complex decay", _scan_case("auto", reverse=reverse, resets=True,
                                                                          initial_state=True, dtype="complex64")),
        ]
    out += [
        DistributedCase("scan/sharded/complex64-real-decay", "sharded-equals-one-device",
                        "a real decay of a complex state (the exchanged A is real)",
                        _scan_case("auto", reverse=False, resets=False, initial_state=True, dtype="complex64",
                                   real_decay=True)),
        DistributedCase("scan/sharded/matrix-state-broadcast-decay", "sharded-equals-one-device",
                        "a (H, K, V) state with a per-row decay (B, T, H, K, 1)",
                        _scan_case("auto", reverse=False, resets=True, initial_state=True, matrix=True)),
        DistributedCase("scan/sharded/data-and-sequence-mesh", "sharded-equals-one-device",
                        "a (data=2, seq=N/2) mesh: batch split on data, time on seq",
                        _scan_case("auto", reverse=True, resets=True, initial_state=True, data=2)),
    ]
    return out


def _error_case(kind: str) -> Callable[[int], Outcome]:
    def fn(devices: int) -> Outcome:
        import jax.numpy as jnp
        from jax.sharding import Mesh

        from linrec.backends.jax import log_scan
        from linrec.backends.jax.distributed import linear_scan_sharded, sequence_parallel
        from linrec.conformance.layer_harness import expect_error

        mesh = _mesh(devices)
        a = jnp.full((2, 2 * devices + 1 if kind == "t-not-divisible" else 2 * devices, 3), 0.5)
        b = jnp.ones(a.shape)
        if kind == "t-not-divisible":
            return expect_error(lambda: linear_scan_sharded(a, b, mesh=mesh), ValueError, "pad T")
        if kind == "no-axis":
            return expect_error(lambda: linear_scan_sharded(a, b, mesh=mesh, axis="time"), ValueError,
                                "('data', 'seq')")
        if kind == "axis-size-one":
            return expect_error(lambda: linear_scan_sharded(a, b, mesh=mesh, axis="data"), ValueError,
                                "one device needs no sequence parallelism")
        if kind == "method-log":
            return expect_error(lambda: linear_scan_sharded(a, b, mesh=mesh, method="log"), ValueError, "'chunked'")
        if kind == "log-scan":
            def call():
                with sequence_parallel(mesh):
                    log_scan(jnp.log(a), jnp.log(b))

            return expect_error(call, ValueError, "method='sequential'")
        if kind == "not-a-mesh":
            return expect_error(lambda: linear_scan_sharded(a, b, mesh=Mesh), TypeError, "jax.sharding.Mesh")
        raise AssertionError(kind)

    return fn


def _error_cases() -> list[DistributedCase]:
    docs = {"t-not-divisible": "T not a multiple of the devices: ValueError saying to pad T",
            "no-axis": "a mesh without the named axis: ValueError listing the mesh's axes",
            "axis-size-one": "a sequence axis of size one: ValueError saying one device needs none",
            "method-log": "method='log': ValueError naming the methods that can",
            "log-scan": "log_scan inside sequence_parallel: ValueError naming the methods that can",
            "not-a-mesh": "mesh not a jax.sharding.Mesh: TypeError"}
    return [DistributedCase(f"scan/sharded/errors/{k}", "sharded-errors", d, _error_case(k)) for k, d in docs.items()]


# ---------------------------------------------------------------------------------------------------------------------
# Layers and language models: the same function with and without sequence_parallel.


def _model(name: str):
    """``(apply(params, x) -> (y, State), params (numpy), x (numpy), float inputs?)`` of a small model."""
    from linrec.backends import jax as J
    from linrec.spec import gated_linear_rnn as glrnn
    from linrec.spec import gated_linear_rnn_lm as glrnn_lm
    from linrec.spec import gateloop_mh, mingru, mingru_lm, mingru_stack, mingru_stack_lm, minlstm

    if name == "mingru":
        cfg = mingru.MinGRUConfig(d_model=6, expansion=1.5, out_proj=True, default_state=0.5)
        return (lambda p, x, **k: J.mingru(p, x, config=cfg, **k)), mingru.init_params(cfg, 1), True
    if name == "minlstm":
        cfg = minlstm.MinLSTMConfig(d_model=6, out_proj=True)
        return (lambda p, x, **k: J.minlstm(p, x, config=cfg, **k)), minlstm.init_params(cfg, 2), True
    if name in ("gated_linear_rnn", "gated_linear_rnn-reversed"):
        cfg = glrnn.GatedLinearRNNConfig(d_model=6, d_h=8, reversed=name.endswith("reversed"))
        return (lambda p, x, **k: J.gated_linear_rnn(p, x, config=cfg, **k)), glrnn.init_params(cfg, 3), True
    if name == "gateloop_mh":
        cfg = gateloop_mh.GateLoopMHConfig(d_model=8, num_heads=2, gate="complex")
        return (lambda p, x, **k: J.gateloop_mh(p, x, config=cfg, **k)), gateloop_mh.init_params(cfg, 4), True
    if name == "mingru_stack":
        cfg = mingru_stack.MinGRUStackConfig(input_size=6, hidden_sizes=(8, 8), residual=True, norm=True)
        return (lambda p, x, **k: J.mingru_stack(p, x, config=cfg, **k)), mingru_stack.init_params(cfg, 5), True
    if name == "mingru_lm":
        cfg = mingru_lm.MinGRULMConfig(vocab_size=11, d_model=8, n_layers=2)
        return (lambda p, x, **k: J.mingru_lm(p, x, config=cfg, **k)), mingru_lm.init_params(cfg, 6), False
    if name == "gated_linear_rnn_lm":
        cfg = glrnn_lm.GatedLinearRNNLMConfig(n_layer=2, d_model=8, d_channel_mixing=12, d_h=8, input_vocab_size=11,
                                              output_vocab_size=11, max_seq_length=64,
                                              positional_encoding_mode="learned")
        return (lambda p, x, **k: J.gated_linear_rnn_lm(p, x, config=cfg, **k)), glrnn_lm.init_params(cfg, 7), False
    if name == "mingru_stack_lm":
        cfg = mingru_stack_lm.MinGRUStackLMConfig(vocab_size=11, input_size=8, hidden_sizes=(8, 8))
        from linrec.backends.jax.mingru_stack_lm import mingru_stack_lm as apply

        return (lambda p, x, **k: apply(p, x, config=cfg, **k)), mingru_stack_lm.init_params(cfg, 8), False
    raise AssertionError(name)


LAYERS = ("mingru", "minlstm", "gated_linear_rnn", "gated_linear_rnn-reversed", "gateloop_mh", "mingru_stack")
LMS = ("mingru_lm", "gated_linear_rnn_lm", "mingru_stack_lm")


def _layer_case(name: str, method: str, with_state: bool) -> Callable[[int], Outcome]:
    def fn(devices: int) -> Outcome:
        import jax
        import jax.numpy as jnp

        from linrec.backends.jax.distributed import sequence_parallel

        apply, params_np, floats = _model(name)
        mesh = _mesh(devices, 2 if devices % 4 == 0 else 1)
        n_batch, n_time = 2, 4 * (devices // mesh.shape["data"])
        rng = np.random.default_rng(len(name))
        params = {k: jnp.asarray(v) for k, v in params_np.items()}
        x = (jnp.asarray(rng.standard_normal((n_batch, n_time, 6 if name != "gateloop_mh" else 8)), jnp.float32)
             if floats else jnp.asarray(rng.integers(0, 11, (n_batch, n_time)), jnp.int32))
        _, state0 = apply(params, x[:, :3], method=method)  # a non-trivial carried state (and position, for LMs)
        state = state0 if with_state else None

        def loss(p, x):
            y, final = apply(p, x, initial_state=state, method=method)
            leaves = jax.tree_util.tree_leaves(final)
            return jnp.sum(jnp.sin(jnp.real(y))) + sum(jnp.sum(jnp.real(f)) for f in leaves
                                                       if jnp.issubdtype(f.dtype, jnp.inexact)), (y, final)

        argnums = (0, 1) if floats else 0

        def run():
            (_, outs), grads = jax.jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))(params, x)
            return outs, grads

        single = run()
        with sequence_parallel(mesh, "seq"):
            sharded = run()
            program = str(jax.make_jaxpr(loss, static_argnums=())(params, x))
        if "all_gather" not in program:  # the scans must really have been split, not served by one device
            return Outcome(False, detail="no all_gather in the program traced under sequence_parallel")
        n_out = len(jax.tree_util.tree_leaves(single[0]))
        return _compare(sharded, single, n_time, n_out)

    return fn


def _train_step_case(devices: int) -> Outcome:
    """The README example: an LM training step on a (data, seq) mesh equals the one-device loss and gradients."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from linrec.backends.jax import mingru_lm
    from linrec.backends.jax.distributed import sequence_parallel
    from linrec.spec.mingru_lm import MinGRULMConfig, init_params

    mesh = _mesh(devices, 2 if devices % 4 == 0 else 1)
    config = MinGRULMConfig(vocab_size=32, d_model=16, n_layers=2)
    params = {k: jnp.asarray(v) for k, v in init_params(config, seed=0).items()}
    n_time = 4 * mesh.shape["seq"]
    tokens = np.random.default_rng(0).integers(0, 32, (2 * mesh.shape["data"], n_time + 1))
    inputs, targets = (jax.device_put(jnp.asarray(t, jnp.int32), NamedSharding(mesh, P("data", "seq")))
                       for t in (tokens[:, :-1], tokens[:, 1:]))

    def loss_fn(params, inputs, targets):
        logits, _ = mingru_lm(params, inputs, config=config)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    step = jax.jit(jax.value_and_grad(loss_fn))
    with sequence_parallel(mesh, "seq"):
        sharded = step(params, inputs, targets)
        program = str(jax.make_jaxpr(loss_fn)(params, inputs, targets))
    if "all_gather" not in program:
        return Outcome(False, detail="no all_gather in the program traced under sequence_parallel")
    single = step(params, inputs, targets)
    return _compare(sharded, single, n_time, 1)


def _model_cases() -> list[DistributedCase]:
    out = []
    for name in LAYERS:
        kind = "layer"
        out.append(DistributedCase(f"{kind}/sharded/{name}[auto]", "sharded-equals-one-device",
                                   f"{name} under sequence_parallel on a (data, seq) mesh: outputs, final state and "
                                   "gradients of params and x", _layer_case(name, "auto", True)))
    for name in LMS:
        out.append(DistributedCase(f"lm/sharded/{name}[auto]", "sharded-equals-one-device",
                                   f"{name} from a carried state (position > 0) under sequence_parallel: logits, "
                                   "state and parameter gradients", _layer_case(name, "auto", True)))
    out.append(DistributedCase("layer/sharded/mingru[chunked]", "sharded-equals-one-device",
                               "minGRU with the chunked local scan, default state", _layer_case("mingru", "chunked",
                                                                                                False)))
    out.append(DistributedCase("lm/sharded/mingru_lm/train-step-data-seq", "sharded-equals-one-device",
                               "a jitted value_and_grad LM training step on a (data, seq) mesh (the README example)",
                               _train_step_case))
    return out


def jax_cases() -> list[DistributedCase]:
    """Every JAX case of the distributed group."""
    return _scan_cases() + _error_cases() + _model_cases()


# ---------------------------------------------------------------------------------------------------------------------
# Running.


def run_jax_here(devices: int, select: str | Sequence[str] | None = None) -> list[CaseResult]:
    """Run the JAX cases in this process (which must have ``devices`` JAX devices)."""
    results = []
    for case in jax_cases():
        if not selected(case.id, select):
            continue
        start = time.perf_counter()
        try:
            outcome = case.fn(devices)
            status = "pass" if outcome.passed else "fail"
        except Exception as err:  # reported, not raised: one broken case must not hide the others
            outcome, status = Outcome(False, detail=f"{type(err).__name__}: {err}"), "error"
        results.append(CaseResult(case.id, case.property, status, float(outcome.error), float(outcome.allowed),
                                  outcome.detail, time.perf_counter() - start))
    return results


def _device_env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_jax(devices: int, select: str | Sequence[str] | None = None, *, timeout: float = 3600) -> BackendReport:
    """Run the JAX cases in a subprocess with ``devices`` CPU host devices; a :class:`BackendReport`."""
    report = BackendReport("jax", "linrec.backends.jax.distributed", info={"devices": devices})
    if importlib_util_missing("jax"):
        report.skipped = "jax is not installed (pip install 'linrec[jax]')"
        return report
    patterns = [select] if isinstance(select, str) or select is None else list(select)
    cmd = [sys.executable, "-m", "linrec.conformance.distributed_cases", "--devices", str(devices), "--json-lines"]
    for p in patterns:
        if p is not None:
            cmd += ["--select", p]
    proc = subprocess.run(cmd, env=_device_env(devices), capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            report.results.append(CaseResult(**json.loads(line)))
    if proc.returncode not in (0, 1) or (not report.results and proc.returncode):
        report.import_error = f"the JAX subprocess exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}"
    return report


def importlib_util_missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _run_torch(devices: int, select: str | None) -> BackendReport:
    import importlib

    try:
        module = importlib.import_module("linrec.conformance.distributed_torch")
    except ModuleNotFoundError as err:
        if err.name not in ("linrec.conformance.distributed_torch", "torch"):
            raise
        report = BackendReport("torch", "linrec.conformance.distributed_torch")
        report.skipped = ("the torch distributed cases are not available in this install "
                          f"({err.name} not found)")
        return report
    result = module.run(devices, select)
    if isinstance(result, BackendReport):
        return result
    report = BackendReport("torch", "linrec.backends.torch.distributed", info={"devices": devices})
    for case_id, ok, message in result:  # distributed_torch.run gives (case_id, ok, message) per case
        report.results.append(CaseResult(case_id, case_id.split("/", 1)[0], "pass" if ok else "fail", 0.0, 0.0,
                                         message, 0.0))
    return report


def run(backends: Sequence[str] | None, devices: int, select: str | None = None) -> list[BackendReport]:
    """The distributed group for each of ``backends`` (default: jax and torch) on ``devices`` devices/processes."""
    if not isinstance(devices, int) or devices < 2:
        raise ValueError(f"--devices must be an integer >= 2 (the devices the sequence is split over), got {devices!r}")
    reports = []
    for name in backends or ("jax", "torch"):
        if name == "jax":
            reports.append(run_jax(devices, select))
        elif name == "torch":
            reports.append(_run_torch(devices, select))
        else:
            report = BackendReport(name, name)
            report.skipped = "the distributed group covers the bundled jax and torch backends only"
            reports.append(report)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m linrec.conformance.distributed_cases",
                                     description="Run the JAX distributed cases in this process.")
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--select", action="append", help="fnmatch pattern of case ids (repeatable)")
    parser.add_argument("--json-lines", action="store_true", help="one JSON object per case on stdout")
    parser.add_argument("--list", action="store_true", help="list the case ids and exit")
    args = parser.parse_args(argv)
    if args.list:
        for case in jax_cases():
            print(f"{case.id}: {case.doc}")
        return 0
    results = run_jax_here(args.devices, args.select)
    for r in results:
        print(json.dumps(asdict(r)) if args.json_lines else f"{r.status:>5} {r.id} {r.error:.1e}/{r.allowed:.1e} "
                                                              f"{r.detail}", flush=True)
    return 0 if results and all(r.status == "pass" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
