"""Smoke runs of the benchmark suite (``benchmarks/``, ``linrec bench``) on tiny sizes.

These check the tables' shape (rows and columns), the report files and the CLI wiring, never a speed: speed is
a ratio measured within one run by the full suite (``benchmarks/README.md``), not a wall-clock threshold here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _bench_helpers import check_ceilings, has, table

from linrec.tools import bench, bench_cli

pytestmark = pytest.mark.skipif(bench.benchmarks_dir() is None, reason="benchmarks/ is not in this installation")


@pytest.fixture(scope="module")
def scan_result():
    scan = bench.load_benchmark("scan")
    return scan.run(True, sizes={"B": 1, "D": 8, "T": (8,)}, repeat=1, budget=0.0, probe_elements=2**18,
                    isolate=False, rounds=2)


@pytest.fixture(scope="module")
def layers_result():
    layers = bench.load_benchmark("layers")
    return layers.run(True, sizes={"B": 1, "D": 8, "T": (16,), "decode_tokens": 2, "decode_batches": (1, 3)},
                      repeat=1, budget=0.0, isolate=False, bandwidth=1e10)


@pytest.fixture(scope="module")
def memory_result():
    """One point, in a fresh interpreter (``memory.py --worker``) as in the full run.

    D=64: the step's buffers (B·T·D floats, 128 KiB) must exceed the 64 KiB ``MALLOC_MMAP_THRESHOLD_`` of the
    worker, so each one is freshly mapped and the peak RSS measurably rises; at D=8 they came from the heap and
    the rise was sometimes 0."""
    memory = bench.load_benchmark("memory")
    impls = ("linrec torch",) if has("torch") else ("linrec jax",)
    return memory.run(True, sizes={"B": 1, "D": 64, "T": (512,)}, impls=impls)


#: The tests of the three benchmark scripts' smoke runs (the fixtures above, ~50 s of JAX and torch compiles on the
#: 2-core reference machine) are in the slow tier, which `.ci/run` runs after the README's command.
BENCH_RUN = pytest.mark.slow


@BENCH_RUN
def test_scan_table(scan_result):
    scan = bench.load_benchmark("scan")
    expected = []
    for T in (8,):
        if bench.load_benchmark("scan").native_available():
            expected.append(("C loop", "native kernel, preallocated", str(T)))
            expected.append(("C loop", "native kernel, preallocated, bf16", str(T)))
        for name in ("numpy", "jax", "torch"):
            if name == "numpy" or has(name):
                methods = [m for m in __import__(f"linrec.backends.{name}", fromlist=["METHODS"]).METHODS
                           if m != "triton"]  # interpreted on CPU: timed by `linrec bench scan --device cuda`
                for m in methods:
                    expected.append((name, m, str(T)))
                    if m == "native" and name != "numpy":  # the same call on bfloat16 inputs follows it
                        expected.append((name, scan.BF16, str(T)))
    rows = table(scan.report(scan_result), scan.COLUMNS)
    assert [tuple(r[:3]) for r in rows] == expected
    by_key = {(r["backend"], r["method"], r["T"]): r for r in scan_result["rows"]}
    for (backend, method, T), r in by_key.items():
        assert "error" not in r, (backend, method, T, r.get("error"))
        assert r["fwd ms"] > 0 and r["fwd/roofline"] > 0
        assert (r.get("bf16/fp32 fwd") is not None) == ("bf16" in method), (backend, method)
        has_bwd = backend in ("jax", "torch")
        assert (r.get("(fwd+bwd)/roofline") is not None) == has_bwd, (backend, method)
    assert scan_result["meta"]["bandwidth_GBps"]["best"] > 0


@BENCH_RUN
def test_layers_tables(layers_result):
    layers = bench.load_benchmark("layers")
    md = layers.report(layers_result)
    rows = table(md, layers.COLUMNS)
    assert len(rows) == len(layers.LAYERS) * len(layers.IMPLS)
    decode = table(md, layers.DECODE_COLUMNS)  # every implementation and the weight-read floor, at B=1 and B=3
    assert len(decode) == len(layers.LAYERS) * 2 * (len(layers.IMPLS) + 1)
    assert [r[1] for r in decode[:2 * (len(layers.IMPLS) + 1)]] == ["1"] * 6 + ["3"] * 6
    for r in layers_result["decode"]:
        if r["impl"] == layers.WEIGHT_FLOOR:  # 4 bytes per parameter at the given 10 GB/s
            assert r["decode µs/token"] == pytest.approx(1e6 * layers.weight_bytes(r["key"], 8) / 1e10)
            continue
        same = [f for f in layers_result["decode"] if f["key"] == r["key"] and f["B"] == r["B"]]
        matmul = next((f for f in same if f["impl"] == layers.FLOORS.get(r["impl"])), {})
        if r["impl"] in layers.FLOORS and r.get("decode µs/token") and matmul.get("decode µs/token"):
            read = next(f for f in same if f["impl"] == layers.WEIGHT_FLOOR)["decode µs/token"]
            assert r["/ floor"] == pytest.approx(r["decode µs/token"] / max(matmul["decode µs/token"], read))
        else:
            assert r.get("/ floor") is None
    for r in layers_result["rows"]:
        framework = "jax" if r["impl"] == "linrec jax" else "torch"
        if r["impl"] == "original":
            installed = has(layers.LAYERS[r["key"]].original_module)
        else:
            installed = has(framework)
        if installed:
            assert r.get("tokens/s", 0) > 0 and r.get("peak MB") is not None, r
        else:
            assert "not installed" in r["note"], r
        if r["impl"] == "original" and installed:
            assert r["speedup vs original"] == pytest.approx(1.0)
    assert all(t["target"] for t in layers_result["targets"])
    check_ceilings(layers, layers_result["rows"] + layers_result["decode"], layers_result["targets"])



@pytest.mark.parametrize("layer", ["gated_linear_rnn", "gated_linear_rnn_untied", "mingru", "gateloop_mh",
                                   "gateloop_mh_heads"])
def test_layer_configs_are_the_originals(layer, tmp_path):
    """The benchmark's linrec config is what the importer makes of the original's layer."""
    layers = bench.load_benchmark("layers")
    from linrec.tools import convert

    d = 16
    if layer.startswith("gated_linear_rnn"):
        fglrnn = pytest.importorskip("flax_gated_linear_rnn")
        import jax
        from flax import serialization

        variables = fglrnn.GatedLinearRNN(d_model=d, d_h=d, use_tied_gates=layer == "gated_linear_rnn").init(
            jax.random.PRNGKey(0), np.zeros((1, 3, d)))
        (tmp_path / "w.msgpack").write_bytes(serialization.to_bytes(variables))
        ckpt = convert.read(tmp_path / "w.msgpack", format="gated-linear-rnn")
    else:
        torch = pytest.importorskip("torch")
        if layer == "mingru":
            layer_cls = pytest.importorskip("minGRU_pytorch").minGRU
            module, fmt = layer_cls(d), "lucidrains-mingru"
        elif layer == "gateloop_mh":
            simplified = pytest.importorskip("gateloop_transformer.simplified_gate_loop")
            module, fmt = simplified.SimpleGateLoopLayer(d, prenorm=False), "gateloop-transformer"
        else:
            full = pytest.importorskip("gateloop_transformer.gateloop_transformer")
            module, fmt = full.GateLoopedAttention(d, heads=d // layers.HEAD_WIDTH), "gateloop-transformer"
        torch.save(module.state_dict(), tmp_path / "w.pt")
        ckpt = convert.read(tmp_path / "w.pt", format=fmt)
    assert ckpt.model_type == layers.LAYERS[layer].module
    assert ckpt.config == layers.linrec_config(layer, d)


def test_minlstm_config_computes_the_originals_function():
    """No importer reads lucidrains' minLSTM, so the benchmark's config is checked on outputs: the original's fused
    ``[hidden | f | i]`` weight, reordered to the canonical ``[f | i | h̃]`` columns, gives the same ``y``."""
    torch = pytest.importorskip("torch")
    original = pytest.importorskip("minGRU_pytorch.minLSTM").minLSTM
    from linrec.backends.numpy.minlstm import minlstm
    from linrec.spec.tolerances import tolerance_for

    layers = bench.load_benchmark("layers")
    d = 6
    torch.manual_seed(0)
    module = original(d)
    w = module.to_hidden_and_f_i_gate.weight.detach().numpy().T.astype(np.float64)  # (D, 3H): [h̃ | f | i]
    kernel = np.concatenate([w[:, d:2 * d], w[:, 2 * d:], w[:, :d]], axis=1)
    x = np.random.default_rng(0).standard_normal((2, 9, d))
    with torch.no_grad():
        want = module(torch.from_numpy(x).float()).double().numpy()
    y, _ = minlstm({"proj.kernel": kernel}, x, config=layers.linrec_config("minlstm", d))
    tol = tolerance_for("float32", length=x.shape[1])  # the original runs in float32
    np.testing.assert_allclose(y, want, rtol=tol.rtol, atol=tol.atol)


@BENCH_RUN
def test_memory_table(memory_result):
    memory = bench.load_benchmark("memory")
    md = memory.report(memory_result)
    rows = table(md, memory.COLUMNS)
    assert [r[1] for r in rows] == ["512"]
    (row,) = memory_result["rows"]
    assert row.get("peak MB", 0) > 0, row
    assert len(table(md, memory.FIT_COLUMNS)) == 1
    (fit,) = memory_result["fits"]
    assert fit["points"] == 1 and "exponent" not in fit  # a slope needs two points


@BENCH_RUN
def test_run_all_writes_results(scan_result, layers_result, memory_result, tmp_path):
    run_all = bench.load_benchmark("run_all")
    results = {"scan": scan_result, "layers": layers_result, "memory": memory_result,
               "seconds": {"scan": 1.0, "layers": 1.0, "memory": 1.0}}
    written = {p.name for p in run_all.write(results, tmp_path, update_readme=False)}
    assert {"scan.md", "layers.md", "memory.md", "machine.json", "suite.json"} <= written
    if has("matplotlib"):
        assert {"scan.png", "layers.png", "memory.png"} <= written
    machine = json.loads((tmp_path / "machine.json").read_text())
    assert machine["cpu_model"] and machine["logical_cores"] >= 1 and machine["versions"]["numpy"]
    assert "| target | measured | status |" in run_all.status_table(results)


def test_cli(capsys):
    assert bench_cli.main(["--help"]) == 0
    assert "linrec bench" in capsys.readouterr().out
    assert bench_cli.main(["nonsense"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_helpers():
    assert bench.fit_exponent([1, 2, 4], [3, 6, 12]) == pytest.approx(1.0)
    assert bench.markdown_table(["a", "b"], [{"a": 1.23456, "b": None}]).splitlines()[2] == "| 1.23 | – |"
    assert bench.current_rss_bytes() > 0 and bench.peak_rss_bytes() > 0


def test_steady_bandwidth_is_the_median_round(monkeypatch):
    """One burst round does not set the roofline: the median of the rounds' bests does."""
    assert bench.steady_bandwidth(1 << 16, 1, rounds=1) > 0  # the real probes, once
    rounds = iter([(30e9, 34e9), (60e9, 69e9), (31e9, 36e9)])
    current = {}

    def one_thread(n, repeat):
        current["round"] = next(rounds)
        return current["round"][0]

    monkeypatch.setattr(bench, "bandwidth_probe", one_thread)
    monkeypatch.setattr(bench, "threaded_bandwidth_probe", lambda n, repeat: current["round"][1])
    assert bench.steady_bandwidth(1024, 1) == 36e9


def test_scan_worker_in_a_fresh_process_with_retained_malloc():
    """The full run's path: one backend per process, then ``method="native"`` after ``retain_freed_memory()``."""
    scan = bench.load_benchmark("scan")
    backend = "torch" if has("torch") else "jax" if has("jax") else None
    if backend is None or not scan.native_available():
        pytest.skip("needs jax or torch and the native kernel")
    spec = {"backend": backend, "B": 1, "D": 8, "T": [8], "probe_elements": 2**16, "repeat": 1, "budget": 0.0,
            "skip_after": 3.0, "malloc": "retain"}
    result = bench.run_json_subprocess([scan.__file__, "--worker", json.dumps(spec)], timeout=300)
    assert "error" not in result, result
    row, row16 = result["rows"]
    assert (row["backend"], row["method"], row["T"]) == (backend, scan.RETAINED, 8)
    assert row["fwd ms"] > 0 and row["(fwd+bwd)/roofline"] > 0
    assert (row16["method"], row16["T"]) == (scan.RETAINED_BF16, 8) and row16["bf16/fp32 fwd"] > 0


def test_retain_freed_memory_applies_on_glibc():
    import platform
    import subprocess
    import sys

    code = "from linrec.backends.native.malloc import retain_freed_memory; print(retain_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(platform.libc_ver()[0] == "glibc")


def test_dense_floor_times_the_kernels_a_layer_multiplies_by():
    """The matmul floor takes every 2-D canonical parameter but embedding tables, in order, and its calls compute
    the products (forward) and their gradients (training) with the right shapes."""
    from linrec.tools import dense_floor

    params = {"embed.embedding": np.zeros((11, 4)), "layers.0.proj.kernel": np.zeros((4, 6)),
              "layers.0.proj.bias": np.zeros(6), "layers.0.norm.scale": np.zeros(4), "head.kernel": np.zeros((4, 11))}
    shapes = dense_floor.dense_shapes(params)
    assert shapes == [(4, 6), (4, 11)]
    for framework in ("jax", "torch"):
        pytest.importorskip(framework)
        make = getattr(dense_floor, f"{framework}_dense")
        out = make(shapes, 3, train=False)()  # JAX: one concatenated result; PyTorch: one per product
        assert [tuple(np.shape(o)) for o in jax_leaves(out)] == (
            [(3, 17)] if framework == "jax" else [(3, 6), (3, 11)])
        ys, grads = make(shapes, 3, train=True)()
        xs, ws, cts = dense_floor._inputs(shapes, 3)
        # the training call computes the forward products too (XLA would drop them from a call returning only the
        # cotangents, and the floor would miss a third of a training step's products)
        for y, x, w in zip(jax_leaves(ys), xs, ws):
            np.testing.assert_allclose(np.asarray(y), x @ w, rtol=1e-5, atol=1e-5)
        expected = [ct @ w.T for ct, w in zip(cts, ws)] + [x.T @ ct for x, ct in zip(xs, cts)]
        assert [tuple(np.shape(g)) for g in jax_leaves(grads)] == [(3, 4), (3, 4), (4, 6), (4, 11)]
        for g, e in zip(jax_leaves(grads), expected):
            np.testing.assert_allclose(np.asarray(g), e, rtol=1e-5, atol=1e-5)


def jax_leaves(tree):
    """Leaves of nested tuples/lists in order (the JAX VJP returns ``(xs_bar, ws_bar)``, PyTorch one flat tuple)."""
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in jax_leaves(item)]
    return [tree]


def test_rounds_keep_each_implementations_fastest_time():
    """``layers.faster``: per ``T`` and for decode the lower time of two rounds; a failed round is ignored."""
    layers = bench.load_benchmark("layers")
    first = {"train": [{"T": 16, "step_s": 2.0, "peak_bytes": 5}, {"T": 32, "step_s": 3.0}],
             "decode": [{"B": 1, "s_per_token": 1.0}, {"B": 16, "s_per_token": 3.0}]}
    again = {"train": [{"T": 16, "step_s": 1.5}, {"T": 32, "step_s": 4.0}],
             "decode": [{"B": 1, "s_per_token": 2.0}, {"B": 16, "s_per_token": 2.5}]}
    merged = layers.faster(first, again)
    assert [(p["T"], p["step_s"]) for p in merged["train"]] == [(16, 1.5), (32, 3.0)]
    assert merged["train"][0]["peak_bytes"] == 5
    assert [(p["B"], p["s_per_token"]) for p in merged["decode"]] == [(1, 1.0), (16, 2.5)]
    assert first["train"][0]["step_s"] == 2.0 and first["decode"][1]["s_per_token"] == 3.0  # inputs unmodified
    assert layers.faster(first, {"error": "exit 1"}) is first and layers.faster({"error": "x"}, again) is again


def test_layers_in_two_rounds():
    layers = bench.load_benchmark("layers")
    result = layers.run(True, sizes={"B": 1, "D": 8, "T": (16,), "decode_tokens": 2, "rounds": 2}, repeat=1,
                        budget=0.0, isolate=False, layers=("mingru",))
    timed = [r for r in result["rows"] if r.get("step ms") is not None]
    assert timed and all(r["step ms"] > 0 for r in timed)
    assert "2 round(s)" in result["meta"]["timing"]


def test_round_robin_takes_turns_and_merges():
    calls = []

    def measure(impl, first_round):
        calls.append((impl, first_round))
        return {"t": len(calls)}

    out = bench.round_robin(("a", "b"), 2, measure, lambda x, y: x if x["t"] < y["t"] else y)
    assert calls == [("a", True), ("b", True), ("a", False), ("b", False)]
    assert out == {"a": {"t": 1}, "b": {"t": 2}}


def test_dense_table_compares_every_implementation_with_the_native_kernel(tmp_path):
    """``benchmarks/dense.py --quick``: a row per (shape, rows, implementation), each in its own process; the
    native kernel's own speedup is 1 and every framework's is its time over the native one's."""
    from linrec.backends import native

    if not native.available():
        pytest.skip("the native kernel is not built")
    dense = bench.load_benchmark("dense")
    result = dense.run(True, rounds=1)
    rows = result["rows"]
    assert {(r["K x N"], r["M"]) for r in rows} == {("64x96", 1), ("64x96", 16)}
    native_rows = [r for r in rows if r["implementation"] == "native"]
    assert len(native_rows) == 2 and all(r["native speedup"] == 1.0 for r in native_rows)
    for r in rows:
        mine = next(n for n in native_rows if n["M"] == r["M"])
        assert r["µs/product"] > 0 and r["native speedup"] == pytest.approx(r["µs/product"] / mine["µs/product"])
        assert r["GFLOP/s"] == pytest.approx(2 * r["M"] * 64 * 96 / r["µs/product"] / 1e3)
    assert "| 64x96 | 16 | native |" in dense.report(result)
    assert [p.name for p in dense.write(result, tmp_path)] == ["dense.md"]


def test_scan_rounds_keep_each_rows_round_closest_to_its_rooflines():
    """A row is kept whole (its probe and the timings measured with it) from the round whose ratios sum lowest; a
    row that ran beats one that failed or was skipped."""
    merge_rounds = bench.load_benchmark("scan").merge_rounds

    def row(method, fwd, train=None, **extra):
        return {"backend": "torch", "method": method, "T": 4096, "probe GB/s": 30.0 + fwd, "fwd/roofline": fwd,
                "train/roofline": train, **extra}

    first = {"rows": [row("native", 1.0, 4.9), row("chunked", 7.0, 18.0), row("log", 1.0, error="boom")]}
    second = {"rows": [row("native", 1.2, 2.8), row("chunked", 6.5, 19.0), row("log", 90.0, 100.0),
                       row("sequential", 16.0)]}
    kept = {(r["method"]): r for r in merge_rounds(first, second)["rows"]}
    assert kept["native"] == row("native", 1.2, 2.8)  # 4.0 beats 5.9, probe included
    assert kept["chunked"] == row("chunked", 7.0, 18.0)  # 25.0 beats 25.5
    assert kept["log"]["fwd/roofline"] == 90.0 and "error" not in kept["log"]
    assert kept["sequential"]["fwd/roofline"] == 16.0
