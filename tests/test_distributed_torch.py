"""Sequence parallelism on torch.distributed: sharded == one device (scan, every layer and LM, an LM training step
on a sequence group x a DDP data group), with 4 gloo processes on loopback in one spawn (the cases live in
``linrec.conformance.distributed_torch``)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from linrec.conformance import distributed_torch  # noqa: E402

DEVICES = 4


def test_sharded_equals_one_device():
    """Outputs, final states and gradients (a, b, initial_state, inputs, parameters) of the scan, every layer and
    LM on 4 ranks; the bad setups' errors; an LM training step with the sequence over 2 ranks x DDP over 2 data
    ranks giving the one-device loss and gradients. One test, one spawn for all cases (the spawn of 4 processes
    dominates the time; xdist would run a module fixture once per worker)."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    results = {case_id: (ok, message) for case_id, ok, message in distributed_torch.run(DEVICES)}
    assert sorted(results) == sorted(distributed_torch.cases(DEVICES))
    assert {case_id.split("/")[0] for case_id in results} == {"scan", "layer", "lm", "error", "train"}
    assert "train/lm-sequence2-ddp" in results
    failed = {case_id: message for case_id, (ok, message) in results.items() if not ok}
    assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


def test_run_refuses_one_device():
    with pytest.raises(ValueError, match="devices"):
        distributed_torch.run(1)


def test_without_process_group_names_the_fix():
    from linrec.backends.torch.distributed import linear_scan_sharded, sequence_parallel

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    a, b = torch.full((1, 4, 2), 0.5), torch.ones((1, 4, 2))
    with pytest.raises(RuntimeError, match="init_process_group"):
        linear_scan_sharded(a, b)
    with pytest.raises(RuntimeError, match="init_process_group"), sequence_parallel():
        pass


def test_exchange_bytes_is_per_rank_state_sized():
    from linrec.backends.torch.distributed import exchange_bytes

    a, b = torch.rand(2, 100, 8), torch.rand(2, 100, 8)
    fwd = exchange_bytes(a, b, devices=4)
    assert fwd == 3 * (4 + 2 * (8 + 8 + 2)) * 4  # 3 peers x (header + B·(Sa + S + 2 flags)) float32 values
    assert exchange_bytes(a, b, devices=4, backward=True) == fwd + 3 * 2 * 2 * 8 * 4  # backward: two (B, S) cotangents
    longer = exchange_bytes(torch.rand(2, 10_000, 8), torch.rand(2, 10_000, 8), devices=4)
    assert longer == exchange_bytes(a, b, devices=4)  # independent of T
    with pytest.raises(ValueError, match="devices"):
        exchange_bytes(a, b, devices=1)


@pytest.mark.slow
def test_cli_devices_group_reports_the_torch_cases(capsys):
    """`linrec conformance --devices 2 --backend torch --select 'error/*'`: the torch cases through the CLI's report
    (the distributed group's text report, exit code 0)."""
    from linrec.tools.cli import main

    assert main(["conformance", "--devices", "2", "--backend", "torch", "--select", "error/*"]) == 0
    out = capsys.readouterr().out
    assert "torch: PASSED" in out and "error" in out
