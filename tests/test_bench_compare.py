"""``linrec.tools.bench_compare``: the ratio-by-ratio report between two benchmark suites, on hand-built results.

Nothing here runs a benchmark: the suites are small dicts shaped like ``benchmarks/results/suite.json``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from linrec.tools import bench, bench_cli, bench_compare
from linrec.tools.bench_compare import Row, compare, format_report, regressions

SCAN_META = {"B": 8, "D": 512, "T": [1024, 4096], "dtype": "float32", "quick": False, "bandwidth_GBps": {"best": 30}}


def scan_row(backend: str, method: str, T: int, fwd: float, fwd_bwd: float | None = None, c_loop: float = 1.0,
             ms: float = 1.0) -> dict[str, Any]:
    row = {"backend": backend, "method": method, "T": T, "probe GB/s": 30.0, "fwd ms": ms, "fwd/roofline": fwd,
           "fwd/C loop": c_loop}
    if fwd_bwd is not None:
        row |= {"fwd+bwd ms": 3 * ms, "(fwd+bwd)/roofline": fwd_bwd}
    return row


def suite() -> dict[str, Any]:
    """A recorded suite: scan (lower is better), layers and decode (speedups: higher is better), memory fits."""
    return {
        "scan": {"rows": [scan_row("jax", "native", 1024, 2.0, 4.0, 2.0),
                          scan_row("numpy", "native", 1024, 1.0),
                          scan_row("torch", "native", 4096, 1.5, 3.0, 1.5)],
                 "meta": SCAN_META, "targets": []},
        "layers": {"rows": [{"layer": "minGRU", "implementation": "linrec jax", "T": 1024, "key": "mingru",
                             "impl": "linrec jax", "step ms": 20.0, "tokens/s": 1e5, "peak MB": 10.0,
                             "speedup vs original": 2.0},
                            {"layer": "minGRU", "implementation": "matmul floor jax", "T": 1024, "key": "mingru",
                             "impl": "matmul floor jax", "step ms": 5.0, "tokens/s": 4e5, "peak MB": None,
                             "speedup vs original": 8.0}],
                   "decode": [{"layer": "minGRU", "implementation": "linrec jax", "key": "mingru",
                               "impl": "linrec jax", "decode µs/token": 20.0, "speedup vs original": 3.0}],
                   "meta": {"B": 4, "D": 256, "T": [1024], "decode_tokens": 200, "rounds": 2, "quick": False},
                   "targets": []},
        "memory": {"rows": [{"implementation": "linrec jax", "T": 1024, "impl": "linrec jax", "peak MB": 7.8,
                             "MB per 1k steps": 7.8}],
                   "fits": [{"implementation": "linrec jax", "impl": "linrec jax", "points": 7, "target": "<= 1.05",
                             "exponent": 0.94, "reached": True}],
                   "meta": {"B": 1, "D": 256, "T": [1024], "quick": False}, "targets": []},
        "decode": {"rows": [{"model": "minGRU LM", "implementation": "linrec jax", "key": "mingru_lm",
                             "impl": "linrec jax", "µs/token": 900.0, "speedup vs original": 2.5}],
                   "meta": {"V": 256, "D": 256, "L": 4, "prompt": 16, "decode_tokens": 200, "quick": False},
                   "targets": []},
        "seconds": {"scan": 100.0, "layers": 200.0, "memory": 50.0, "decode": 60.0},
    }


def by_id(rows: list[Row]) -> dict[tuple[str, str, str], Row]:
    return {(r.section, r.row_id, r.metric): r for r in rows}


def test_identical_suites_compare_every_ratio_and_flag_nothing():
    rows = compare(suite(), suite())
    assert regressions(rows) == []
    assert all(r.change == 0.0 and r.status == "" for r in rows)
    keys = set(by_id(rows))
    # ratios only: never ms, tokens/s, MB or GB/s
    assert {m for _, _, m in keys} == {"fwd/roofline", "(fwd+bwd)/roofline", "fwd/C loop", "speedup vs original",
                                       "exponent"}
    assert ("scan", "jax, native, T=1024", "(fwd+bwd)/roofline") in keys
    assert ("scan", "numpy, native, T=1024", "(fwd+bwd)/roofline") not in keys  # neither side has it
    assert ("layers.decode", "minGRU, linrec jax", "speedup vs original") in keys
    assert ("memory.fits", "linrec jax", "exponent") in keys
    assert ("decode", "minGRU LM, linrec jax", "speedup vs original") in keys
    assert len(rows) == 3 + 2 + 3 + 2 + 1 + 1 + 1  # scan jax/numpy/torch, layers rows and decode, memory, decode


def test_lower_is_better_ratios():
    new = suite()
    jax, numpy, torch = new["scan"]["rows"]
    jax["fwd/roofline"] = 2.6  # 2.0 -> 2.6: +30 % worse
    jax["(fwd+bwd)/roofline"] = 3.0  # 4.0 -> 3.0: 25 % better (time) -> not beyond the threshold
    jax["fwd/C loop"] = 1.5  # 2.0 -> 1.5: -25 %
    numpy["fwd/roofline"] = 0.5  # 1.0 -> 0.5: -50 %: better
    torch["fwd/roofline"] = 1.5 * 1.2  # +20 %: not flagged
    torch["fwd ms"] = 100.0  # absolute: ignored however much it changed
    rows = by_id(compare(suite(), new))
    r = rows["scan", "jax, native, T=1024", "fwd/roofline"]
    assert (r.recorded, r.now, r.status) == (2.0, 2.6, "WORSE") and r.change == pytest.approx(0.30)
    r = rows["scan", "jax, native, T=1024", "(fwd+bwd)/roofline"]
    assert r.change == pytest.approx(-0.25) and r.status == ""
    r = rows["scan", "numpy, native, T=1024", "fwd/roofline"]
    assert r.change == pytest.approx(-0.5) and r.status == "better"
    r = rows["scan", "torch, native, T=4096", "fwd/roofline"]
    assert r.change == pytest.approx(0.2) and r.status == ""
    assert [(x.section, x.row_id, x.metric) for x in regressions(list(rows.values()))] == [
        ("scan", "jax, native, T=1024", "fwd/roofline")]


def test_higher_is_better_ratios_count_as_time():
    """A speedup falling from 2.0 to 1.5 means the code took 2/1.5 - 1 = 33 % longer vs its reference: WORSE;
    falling to 1.6 is exactly 25 % (not more): not flagged."""
    new = suite()
    new["layers"]["rows"][0]["speedup vs original"] = 1.5
    new["layers"]["rows"][1]["speedup vs original"] = 10.0  # 8 -> 10: -20 %
    new["layers"]["decode"][0]["speedup vs original"] = 1.0  # 3 -> 1: +200 %
    new["decode"]["rows"][0]["speedup vs original"] = 2.0  # 2.5 -> 2.0: exactly +25 %
    new["memory"]["fits"][0]["exponent"] = 1.2  # lower is better: 0.94 -> 1.2: +27.7 %
    rows = by_id(compare(suite(), new))
    r = rows["layers", "minGRU, linrec jax, T=1024", "speedup vs original"]
    assert r.status == "WORSE" and r.change == pytest.approx(1 / 3)
    r = rows["layers", "minGRU, matmul floor jax, T=1024", "speedup vs original"]
    assert r.status == "" and r.change == pytest.approx(-0.2)
    r = rows["layers.decode", "minGRU, linrec jax", "speedup vs original"]
    assert r.status == "WORSE" and r.change == pytest.approx(2.0)
    r = rows["decode", "minGRU LM, linrec jax", "speedup vs original"]
    assert r.status == "" and r.change == pytest.approx(0.25)
    r = rows["memory.fits", "linrec jax", "exponent"]
    assert r.status == "WORSE" and r.change == pytest.approx(1.2 / 0.94 - 1)
    assert len(regressions(list(rows.values()))) == 3


def test_threshold_boundary():
    new = suite()
    new["scan"]["rows"][0]["fwd/roofline"] = 2.5  # exactly +25 %
    assert regressions(compare(suite(), new, threshold=0.25)) == []
    assert len(regressions(compare(suite(), new, threshold=0.2499))) == 1
    assert len(regressions(compare(suite(), new, threshold=0.0))) == 1
    new["scan"]["rows"][0]["fwd/roofline"] = 2.0 * 1.1  # +10 % with float rounding: still exactly 10 %
    assert regressions(compare(suite(), new, threshold=0.1)) == []
    with pytest.raises(ValueError):
        compare(suite(), new, threshold=-0.1)


def test_rows_and_metrics_on_one_side_only():
    new = suite()
    del new["scan"]["rows"][1]  # numpy gone
    new["scan"]["rows"].append(scan_row("torch", "chunked", 4096, 8.0))  # a new row
    del new["scan"]["rows"][0]["(fwd+bwd)/roofline"]  # a metric gone
    new["layers"]["rows"][1]["speedup vs original"] = None  # a value gone (not installed, NaN)
    rows = compare(suite(), new)
    got = {(r.section, r.row_id, r.metric): (r.recorded, r.now, r.status) for r in rows if r.change is None}
    assert got == {
        ("scan", "jax, native, T=1024", "(fwd+bwd)/roofline"): (4.0, None, "only recorded"),
        ("scan", "numpy, native, T=1024", "*"): (None, None, "only recorded"),
        ("scan", "torch, chunked, T=4096", "*"): (None, None, "only now"),
        ("layers", "minGRU, matmul floor jax, T=1024", "speedup vs original"): (8.0, None, "no value"),
    }
    assert regressions(rows) == []
    # recorded order first, then the rows only the new run has
    assert [r.row_id for r in rows if r.section == "scan"][-1] == "torch, chunked, T=4096"


def test_sizes_that_differ_are_not_compared():
    """A --quick run (other B, D, T) against a full run: no row compared, one row per section saying why."""
    new = suite()
    new["scan"]["meta"] = {**SCAN_META, "B": 2, "D": 64, "T": [128, 512], "quick": True}
    for r in new["scan"]["rows"]:
        r["fwd/roofline"] *= 10  # would be flagged if compared
    new["layers"]["meta"]["T"] = [1024, 4096]  # T alone differs: matched row by row, still compared
    rows = compare(suite(), new)
    scan = [r for r in rows if r.section == "scan"]
    assert len(scan) == 1 and scan[0].status == "sizes differ" and scan[0].row_id == "*"
    assert "B=8 D=512" in scan[0].note and "B=2 D=64" in scan[0].note and "--quick" in scan[0].note
    assert regressions(rows) == []
    assert any(r.section == "layers" and r.change == 0.0 for r in rows)


def test_sections_on_one_side_only():
    new = suite()
    del new["layers"], new["memory"], new["decode"]  # e.g. --only scan
    rows = compare(suite(), new)
    assert [(r.section, r.status) for r in rows if r.row_id == "*"] == [
        ("layers", "only recorded"), ("memory", "only recorded"), ("decode", "only recorded")]
    rows = compare(new, suite())
    assert [(r.section, r.status) for r in rows if r.row_id == "*"] == [
        ("layers", "only now"), ("memory", "only now"), ("decode", "only now")]


def test_format_report():
    new = suite()
    new["scan"]["rows"][0]["fwd/roofline"] = 3.0
    del new["decode"]
    text = format_report(compare(suite(), new), 0.25, recorded="old.json", now="new.json")
    header = next(line for line in text.splitlines() if line.startswith("section"))
    assert header.split() == ["section", "row", "metric", "recorded", "now", "change", "%", "flag"]
    line = next(line for line in text.splitlines() if "jax, native, T=1024" in line and "fwd/roofline" in line
                and "fwd+bwd" not in line)
    assert line.split()[-4:] == ["2", "3", "+50.0", "WORSE"]
    assert "decode: only recorded: section not run now" in text
    assert "WORSE: scan / jax, native, T=1024 / fwd/roofline: 2 -> 3 (+50.0 %)" in text
    assert "12 ratios compared: 1 WORSE by more than 25 %" in text
    assert "old.json" in text and "new.json" in text


def test_the_recorded_suite_compares_with_itself():
    """The committed results load and match themselves row by row (the shapes the code expects)."""
    directory = bench.benchmarks_dir()
    if directory is None:
        pytest.skip("benchmarks/ is not in this installation")
    for name in ("suite.json", "suite-quick.json"):
        path = directory / "results" / name
        if not path.is_file():
            continue
        recorded = bench_compare.load(path)
        rows = compare(recorded, copy.deepcopy(recorded))
        assert rows and all(r.change == 0.0 for r in rows), name


def write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_cli_compare_two_files(tmp_path, capsys):
    old = write(tmp_path / "old.json", suite())
    new_suite = suite()
    new_suite["decode"]["rows"][0]["speedup vs original"] = 1.0  # 2.5 -> 1.0: +150 %
    new = write(tmp_path / "new.json", new_suite)
    assert bench_cli.main(["compare", old, new]) == 0  # a report: 0 even with a regression
    out = capsys.readouterr().out
    assert "WORSE: decode / minGRU LM, linrec jax / speedup vs original: 2.5 -> 1 (+150.0 %)" in out
    assert bench_cli.main(["compare", old, new, "--fail-on-regression"]) == 1
    capsys.readouterr()
    assert bench_cli.main(["compare", old, new, "--fail-on-regression", "--threshold", "2"]) == 0
    assert "WORSE by more than 200 %" in capsys.readouterr().out
    assert bench_cli.main(["compare", old, old, "--fail-on-regression"]) == 0


def test_cli_compare_errors(tmp_path, capsys, monkeypatch):
    good = write(tmp_path / "good.json", suite())
    assert bench_cli.main(["compare", good, str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert bench_cli.main(["compare", good, write(tmp_path / "other.json", {"x": 1})]) == 2
    assert "not a benchmark suite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_cli.main(["compare", good])
    # no source checkout needed: it compares files, runs nothing
    monkeypatch.setattr(bench, "benchmarks_dir", lambda: None)
    assert bench_cli.main(["compare", good, good]) == 0
    assert "compare" in bench_cli.SUBCOMMANDS


def test_run_all_checks_the_recorded_file_before_running(tmp_path, capsys):
    if bench.benchmarks_dir() is None:
        pytest.skip("benchmarks/ is not in this installation")
    run_all = bench.load_benchmark("run_all")
    with pytest.raises(SystemExit) as err:
        run_all.main(["--quick", "--compare", str(tmp_path / "missing.json")])
    assert err.value.code == 2 and "--compare" in capsys.readouterr().err
