"""Smoke runs of the language-model decode benchmark (``benchmarks/decode.py``, ``linrec bench decode``).

Tiny sizes, in process: they check the table's rows and columns, the report files, the CLI wiring and that the
benchmark's linrec configs are what the importers make of the originals, never a speed (speed is a ratio measured
within one run by the full benchmark, ``benchmarks/README.md``). The slow tier: every implementation is built and
compiled once (about 30 s).
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
from _bench_helpers import check_ceilings, has, table

from linrec.tools import bench, bench_cli

_MISSING = bench.benchmarks_dir() is None or not (bench.benchmarks_dir() / "decode.py").is_file()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_MISSING, reason="benchmarks/decode.py is not in this installation")]

TINY = {"V": 11, "D": 8, "L": 2, "prompt": 3, "decode_tokens": 2, "batches": (1, 3)}


@pytest.fixture(scope="module")
def decode():
    return bench.load_benchmark("decode")


@pytest.fixture(scope="module")
def decode_result(decode):
    if not (has("jax") or has("torch")):
        pytest.skip("needs jax or torch")
    threads = importlib.import_module("torch").get_num_threads() if has("torch") else None
    result = decode.run(True, sizes=TINY, repeat=1, budget=0.0, isolate=False, bandwidth=1e10)
    if threads is not None:  # the in-process run restores PyTorch's thread count
        assert importlib.import_module("torch").get_num_threads() == threads
    return result


def test_decode_table(decode, decode_result):
    md = decode.report(decode_result)
    rows = table(md, decode.COLUMNS)  # every implementation and the weight-read floor, at B=1 and B=3
    per_model = 2 * (len(decode.IMPLS) + 1)
    assert len(rows) == len(decode.MODELS) * per_model
    titles = [title for title, _, _ in decode.MODELS.values()]
    assert [r[0] for r in rows] == [t for t in titles for _ in range(per_model)]
    assert [r[1] for r in rows[:per_model]] == ["1"] * (per_model // 2) + ["3"] * (per_model // 2)
    assert len(table(md, decode.CONFIG_COLUMNS)) == len(decode.MODELS)
    measured = [r for r in decode_result["rows"] if r["impl"] != decode.WEIGHT_FLOOR]
    for r in decode_result["rows"]:
        if r["impl"] == decode.WEIGHT_FLOOR:  # 4 bytes per parameter at the given 10 GB/s
            assert r["µs/token"] == pytest.approx(1e6 * decode.weight_bytes(r["key"], TINY) / 1e10)
    for r in measured:
        module = decode.MODELS[r["key"]][2] if r["impl"] == "original" else None
        installed = has(decode._framework(r["key"], r["impl"])) and (module is None or has(module))
        if installed:
            assert r.get("µs/token", 0) > 0 and r.get("tokens/s", 0) > 0, r
            assert "note" not in r, r  # no error, finite logits
        else:
            assert "not installed" in r["note"], r
        if r["impl"] == "original" and installed:
            assert r["speedup vs original"] == pytest.approx(1.0)
    targets = decode_result["targets"]
    assert len(targets) == len(decode.MODELS) * 2 * (len(decode.TARGET_IMPLS) + len(decode.FLOOR_IMPLS))
    for r in measured:  # each linrec decode path over the larger floor of its framework and batch, when both ran
        if r["impl"] in decode.FLOOR_IMPLS and r.get("µs/token"):
            floor = "matmul floor jax" if "jax" in r["impl"] else "matmul floor torch"
            same = [f for f in decode_result["rows"] if f["key"] == r["key"] and f["B"] == r["B"]]
            matmul = next(f["µs/token"] for f in same if f["impl"] == floor)
            read = next(f["µs/token"] for f in same if f["impl"] == decode.WEIGHT_FLOOR)
            assert r["/ floor"] == pytest.approx(r["µs/token"] / max(matmul, read))
    assert all(t["target"] and t["reached"] in (True, False, None) for t in targets)
    check_ceilings(decode, decode_result["rows"], targets)


def test_missing_originals_say_not_installed(decode, monkeypatch):
    monkeypatch.setattr(decode, "_installed", lambda module: False)
    result = decode.run(True, sizes=TINY, isolate=False, bandwidth=1e10)
    measured = [r for r in result["rows"] if r["impl"] != decode.WEIGHT_FLOOR]
    assert len(measured) == len(decode.MODELS) * 2 * len(decode.IMPLS)
    for r in measured:
        assert "not installed" in r["note"] and "µs/token" not in r, r
    assert all(t["reached"] is None and t["measured"] == "–" for t in result["targets"])


def test_decode_writes_results(decode, tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "_installed", lambda module: False)
    result = decode.run(True, sizes=TINY, isolate=False, bandwidth=1e10)
    written = {p.name for p in decode.write(result, tmp_path)}
    assert "decode.md" in written and (tmp_path / "decode.md").read_text().startswith("# Decode benchmark")
    if has("matplotlib"):
        assert "decode.png" in written


@pytest.mark.parametrize("model", ["gated_linear_rnn_lm", "mingru_lm"])
def test_lm_configs_are_the_originals(decode, model, tmp_path):
    """The benchmark's linrec config is what the importer makes of the original built with ``original_kwargs``."""
    from linrec.tools import convert

    kwargs = decode.original_kwargs(model, TINY)
    if model == "gated_linear_rnn_lm":
        fglrnn = pytest.importorskip("flax_gated_linear_rnn")
        import jax
        from flax import serialization

        lm = fglrnn.GatedLinearRNNLM(**kwargs)
        variables = lm.init(jax.random.PRNGKey(0), np.zeros((1, 3), np.int32), training=False)
        (tmp_path / "w.msgpack").write_bytes(serialization.to_bytes(variables))
        # the LayerNorm eps is not stored in the file (the importer says so): it is passed as the original's
        ckpt = convert.read(tmp_path / "w.msgpack", format="gated-linear-rnn", config={"eps": kwargs["eps"]})
    else:
        torch = pytest.importorskip("torch")
        minlm = pytest.importorskip("minGRU_pytorch.minLM")
        torch.save(minlm.minLM(**kwargs).state_dict(), tmp_path / "w.pt")
        ckpt = convert.read(tmp_path / "w.pt", format="lucidrains-mingru")
    assert ckpt.model_type == model
    assert ckpt.config == decode.linrec_config(model, TINY)


def test_cli_lists_decode(capsys):
    assert "decode" in bench_cli.SUBCOMMANDS
    assert bench_cli.main(["--help"]) == 0
    assert "decode" in capsys.readouterr().out
    run_all = bench.load_benchmark("run_all")
    assert "decode" in run_all.NAMES


def test_rounds_keep_the_faster_round(decode):
    slow, fast = {"s_per_token": 2.0, "median_s_per_token": 2.5}, {"s_per_token": 1.0, "median_s_per_token": 1.2}
    assert decode.faster(slow, fast) is fast and decode.faster(fast, slow) is fast
    assert decode.faster({"error": "exit 1"}, slow) is slow and decode.faster(slow, {"error": "timed out"}) is slow
