"""``linrec bench scan --device cuda [--dry-run]``: the Triton scan kernel against the device's memory roofline.

Shape legend: ``B`` batch, ``T`` time, ``D`` state width; float32 ``a``, ``b`` of shape ``(B, T, D)``.

On a CUDA device every row is timed with CUDA events after a warm-up call (compilation), and divided by the
*roofline*: the bytes the kernel must move (:func:`kernel_costs`) over the device bandwidth measured in the same run
(a device-to-device copy, :func:`cuda_bandwidth_probe`). Rows: ``method="triton"`` (forward, forward + backward),
``method="chunked"`` (the generic tensor-op method, for scale), and flash-linear-attention's HGRN recurrence
(``fla.ops.hgrn``: ``h_t = exp(g_t) h_{t-1} + x_t``, the same scan with ``a = exp(g)``) where ``fla`` is installed.

``--dry-run`` runs the same code on CPU tensors in Triton's interpreter on tiny shapes, with the host's bandwidth
probe as the roofline: it checks the command end to end (tested in CI), its times mean nothing. Without CUDA and
without ``--dry-run`` the command says so and exits with status 2.

:data:`DEVICES` and :func:`model_table` give the roofline *model* written into ``benchmarks/README.md``: bytes moved,
FLOPs and the expected milliseconds on H100/H200 at the sizes of the CPU benchmark. Nothing here imports a framework
at module import.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEVICES", "Device", "KernelCost", "cuda_bandwidth_probe", "kernel_costs", "main", "model_table", "run"]


@dataclass(frozen=True)
class Device:
    """Datasheet peaks (SXM parts): HBM bandwidth in bytes/s, non-tensor-core float32 FLOP/s."""

    name: str
    bandwidth: float
    fp32_flops: float


#: NVIDIA datasheet figures: H100 SXM5 (HBM3 3.35 TB/s, 67 TFLOP/s fp32), H200 SXM (HBM3e 4.8 TB/s, same SMs).
DEVICES = {"H100": Device("H100 SXM", 3.35e12, 67e12), "H200": Device("H200 SXM", 4.8e12, 67e12)}
#: the sizes of the CPU scan benchmark (benchmarks/scan.py FULL) and of the dry run
FULL = {"B": 8, "D": 512, "T": (1024, 4096, 16384)}
DRY = {"B": 1, "D": 16, "T": (32,)}


@dataclass(frozen=True)
class KernelCost:
    """What one kernel call must move and compute (float32 state, every operand read or written once)."""

    kernel: str
    bytes: float
    flops: float

    def seconds(self, device: Device) -> float:
        """The roofline time: the slower of streaming the bytes and issuing the FLOPs at the device's peaks."""
        return max(self.bytes / device.bandwidth, self.flops / device.fp32_flops)


def kernel_costs(B: int, T: int, D: int, *, block_t: int = 16, element_bytes: int = 4) -> list[KernelCost]:
    """Bytes and FLOPs of the Triton scan kernels for ``(B, T, D)`` real inputs (``a`` not broadcast).

    Forward (``scan_fwd_kernel``): reads ``a``, ``b``, writes ``h``: 3 streams. Per element, the block scan does
    ``log2 block_t`` Hillis–Steele rounds of ``a·b' + b`` and ``a·a'`` (3 FLOPs) plus the carry ``a*·h + b*``
    (2 FLOPs); the sequential minimum would be 2. Backward (``scan_bwd_kernel``): reads ``a``, ``h``, ``ḣ``, writes
    ``g = b̄`` and ``ā``: 5 streams, the same scan plus ``ā = g·h_prev`` (1 FLOP). The ``h_prev`` read is the row
    before ``h``'s (a cache hit, not a second stream). bf16/fp16 inputs halve the ``a``, ``b`` streams
    (``element_bytes=2``); the state stays float32.
    """
    n = B * T * D
    rounds = max(0, int(math.log2(block_t)))
    scan_flops = (3 * rounds + 2) * n
    fwd = KernelCost("scan fwd", (2 * element_bytes + 4) * n, scan_flops)
    bwd = KernelCost("scan bwd", (element_bytes + 4 * 4) * n, scan_flops + n)
    both = KernelCost("scan fwd+bwd", fwd.bytes + bwd.bytes, fwd.flops + bwd.flops)
    return [fwd, bwd, both]


def model_table(sizes: dict[str, Any] = FULL) -> str:
    """The Markdown roofline model: per kernel and T, bytes, FLOPs, arithmetic intensity, expected ms per device."""
    names = list(DEVICES)
    lines = ["| kernel | B×T×D | MB moved | MFLOP | FLOP/byte | " + " | ".join(f"{n} ms" for n in names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names)]
    for T in sizes["T"]:
        for cost in kernel_costs(sizes["B"], T, sizes["D"]):
            ms = " | ".join(f"{1e3 * cost.seconds(DEVICES[n]):.3g}" for n in names)
            lines.append(f"| {cost.kernel} | {sizes['B']}×{T}×{sizes['D']} | {cost.bytes / 1e6:.3g} | "
                         f"{cost.flops / 1e6:.3g} | {cost.flops / cost.bytes:.2g} | {ms} |")
    return "\n".join(lines) + "\n"


# --- measuring ----------------------------------------------------------------------------------------------


def cuda_bandwidth_probe(n_elements: int = 64 * 2**20, repeat: int = 10) -> float:
    """Device memory bandwidth in bytes/s: the best of ``repeat`` float32 device-to-device copies (read + write)."""
    import torch

    x = torch.rand(n_elements, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    best = math.inf
    for _ in range(repeat):
        best = min(best, _cuda_seconds(lambda: y.copy_(x)))
    return 8 * n_elements / best


def _cuda_seconds(fn: Callable[[], object]) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def _cpu_seconds(fn: Callable[[], object]) -> float:
    import time

    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _fla_hgrn() -> Callable | None:
    """flash-linear-attention's HGRN recurrence ``(x, g) -> (o, final)`` (``h = exp(g) h + x``), or None."""
    try:
        from fla.ops.hgrn import fused_recurrent_hgrn
    except Exception:  # not installed, or no GPU build
        return None
    return fused_recurrent_hgrn


def _cases(B: int, T: int, D: int, device: str) -> dict[str, tuple[Callable, Callable]]:
    """label -> (forward, forward + backward) closures on fixed float32 inputs on ``device``."""
    import torch

    from linrec.backends import torch as backend

    g = torch.Generator().manual_seed(T)
    a = (0.9 + 0.1 * torch.rand(B, T, D, generator=g)).to(device)
    b = torch.rand(B, T, D, generator=g).to(device)
    ct = torch.randn(B, T, D, generator=g).to(device)
    ag, bg = a.clone().requires_grad_(True), b.clone().requires_grad_(True)

    def scan(method):
        def fwd():
            with torch.no_grad():
                return backend.linear_scan(a, b, method=method)[0]

        def fwd_bwd():
            return torch.autograd.grad(backend.linear_scan(ag, bg, method=method)[0], (ag, bg), ct)

        return fwd, fwd_bwd

    cases = {"linrec triton": scan("triton"), "linrec chunked": scan("chunked")}
    hgrn = _fla_hgrn()
    if hgrn is not None and device == "cuda":
        log_a = a.log()
        lg, xg = log_a.clone().requires_grad_(True), bg

        def fla_fwd():
            with torch.no_grad():
                return hgrn(b, log_a)[0]

        def fla_fwd_bwd():
            return torch.autograd.grad(hgrn(xg, lg)[0], (xg, lg), ct)

        cases["fla fused_recurrent_hgrn"] = (fla_fwd, fla_fwd_bwd)
    return cases


def run(device: str, sizes: dict[str, Any], *, repeat: int = 5) -> dict[str, Any]:
    """Time every case over ``sizes["T"]`` on ``device`` (``"cuda"``, or ``"cpu"`` for the interpreted dry run)."""
    import warnings

    from linrec.tools import bench

    if device == "cuda":
        bandwidth, timer = cuda_bandwidth_probe(), _cuda_seconds
    else:
        bandwidth, timer = bench.torch_bandwidth_probe(2**20, repeat=3) or bench.bandwidth_probe(2**20, 3), \
            _cpu_seconds
    rows = []
    B, D = sizes["B"], sizes["D"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*interpreter.*")
        for T in sizes["T"]:
            costs = {c.kernel: c for c in kernel_costs(B, T, D)}
            roof_fwd = costs["scan fwd"].bytes / bandwidth
            roof_both = costs["scan fwd+bwd"].bytes / bandwidth
            for label, (fwd, fwd_bwd) in _cases(B, T, D, device).items():
                fwd(), fwd_bwd()  # warm-up: compilation (or the interpreter's first pass)
                t_fwd = min(timer(fwd) for _ in range(repeat))
                t_both = min(timer(fwd_bwd) for _ in range(repeat))
                rows.append({"op": label, "T": T, "roofline fwd ms": 1e3 * roof_fwd, "fwd ms": 1e3 * t_fwd,
                             "fwd/roofline": t_fwd / roof_fwd, "fwd+bwd ms": 1e3 * t_both,
                             "(fwd+bwd)/roofline": t_both / roof_both,
                             "H100 model fwd ms": 1e3 * costs["scan fwd"].seconds(DEVICES["H100"])})
    return {"device": device, "B": B, "D": D, "bandwidth_GBps": bandwidth / 1e9, "rows": rows,
            "fla": _fla_hgrn() is not None}


COLUMNS = ["op", "T", "roofline fwd ms", "fwd ms", "fwd/roofline", "fwd+bwd ms", "(fwd+bwd)/roofline",
           "H100 model fwd ms"]


def _fla_note(result: dict[str, Any]) -> str:
    if not result["fla"]:
        return "not installed (no fla rows)"
    if result["device"] != "cuda":
        return "installed, not timed (its kernels do not run on CPU tensors)"
    return "fused_recurrent_hgrn timed"


def report(result: dict[str, Any]) -> str:
    from linrec.tools import bench

    kind = ("CUDA" if result["device"] == "cuda" else
            "DRY RUN: CPU tensors in Triton's interpreter, tiny shapes; the times mean nothing")
    head = (f"# Scan kernels on {kind}\n\nfloat32, B={result['B']}, D={result['D']}; roofline = bytes the kernel "
            f"must move / {result['bandwidth_GBps']:.1f} GB/s measured in this run (fwd: 12 B/element; fwd+bwd: "
            "32 B/element). flash-linear-attention: "
            f"{_fla_note(result)}.\n\n")
    return head + bench.markdown_table(COLUMNS, result["rows"])


def device_main(argv: Sequence[str] | None, *, what: str, cpu_alternative: str, model: Callable[[], str],
                run: Callable[..., dict[str, Any]], report: Callable[[dict[str, Any]], str],
                full: dict[str, Any], dry: dict[str, Any]) -> int:
    """The command line shared by ``linrec bench scan|layers --device cuda``: ``--model`` prints the roofline model,
    ``--dry-run`` runs ``run`` on CPU tensors in Triton's interpreter at ``dry`` sizes, else CUDA at ``full``
    sizes (status 2 without CUDA or triton)."""
    parser = argparse.ArgumentParser(prog=f"linrec bench {what} --device cuda", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda: compiled kernels; cpu: only with --dry-run (Triton's interpreter)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU tensors in Triton's interpreter on tiny shapes: checks the command, not the speed")
    parser.add_argument("--model", action="store_true", help="print the H100/H200 roofline model and exit")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.model:
        print(model())
        return 0
    from linrec.backends.torch import triton_scan

    if not triton_scan.available():
        print(f"linrec bench {what} --device: needs triton (pip install 'linrec[triton]')", file=sys.stderr)
        return 2
    if args.dry_run:
        device, sizes = "cpu", dry
    else:
        import torch

        if args.device != "cuda" or not torch.cuda.is_available():
            print(f"linrec bench {what} --device cuda: no CUDA device here; --dry-run runs the same code on CPU "
                  f"tensors in Triton's interpreter (tiny shapes), and plain 'linrec bench {what}' times "
                  f"{cpu_alternative}", file=sys.stderr)
            return 2
        device, sizes = "cuda", full
    text = report(run(device, sizes, repeat=1 if args.dry_run else 5))
    print(text)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return device_main(argv, what="scan", cpu_alternative="the CPU methods", model=model_table, run=run,
                       report=report, full=FULL, dry=DRY)

if __name__ == "__main__":
    raise SystemExit(main())
