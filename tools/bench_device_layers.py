"""``linrec bench layers --device cuda [--dry-run] [--model]``: the PyTorch layers with Triton kernels on a GPU.

Shape legend: ``B`` batch, ``T`` time, ``D`` ``d_model``, ``N = B·T`` tokens, ``H`` state width (minGRU,
GatedLinearRNN) or heads (GateLoop), ``K``/``V`` ``d_key``/``d_value``, ``R`` gate rows per head, ``C`` chunk steps.

Layers (:data:`LAYERS`; float32, ``d_model = D``): minGRU (``candidate="g"``, no bias, no ``out_proj``, ``H = D``)
and GatedLinearRNN (``d_h = D``, tied gates) with their gates fused into the Triton scan, and GateLoop through
``gateloop_mh`` with the Triton kernel: one SISO head per channel (``H = D``, ``K = V = 1``, the configuration of
the CPU layer benchmark, ``benchmarks/layers.py``) and multi-head (``H = 8``, ``K = V = D/8``). Each is timed
forward (under ``no_grad``) and forward + backward of a training step (``torch.autograd.grad`` of ``y`` for a fixed
cotangent with respect to ``x`` and every parameter) with ``method="triton"`` and ``method="chunked"`` (for scale),
and with flash-linear-attention's equivalent op in place of the recurrence where ``fla`` is installed and the
device is CUDA (:data:`FLA`: HGRN for minGRU, GatedLinearRNN and the SISO GateLoop, GLA's ``chunk_gla`` for the
multi-head GateLoop; fla's kernels do not run on CPU tensors, so the dry run names them and skips them).

**Roofline model** (:func:`layer_costs`): a layer call costs ``max(bytes / bandwidth, kernel FLOPs / fp32 peak) +
matmul FLOPs / fp32 peak``. *bytes* are what the layer must move beyond its dense products, float32: the streams
the fused kernel reads and writes (``ū``-style gradients included) and the elementwise gate activations outside it;
the products' own operands are left out (at these shapes they are compute-bound: ``2·N·I·O`` FLOPs over
``4·(N·I + I·O + N·O)`` bytes is ≥ 40 FLOP/byte, above the ~20 of an H100's float32 ridge point). *matmul FLOPs*:
``2·N·I·O`` per ``(I, O)`` kernel forward, three times that forward + backward (``x̄`` and ``W̄``), at the float32
peak (PyTorch's default ``allow_tf32=False``; with TF32 the term shrinks ~7×). Per token, in float32 words:

- minGRU: forward reads ``u = [u_z | u_h]`` (2H), writes ``h`` (H): 3H; backward reads ``u``, ``h``, ``ḣ``, writes
  ``ū``: 6H. Kernel FLOPs: the block scan's, 14 per element forward, 15 backward (``kernel_costs`` of
  ``bench_device``; the gates' transcendentals are left out). Products: ``(D, 2H)``.
- GatedLinearRNN: forward reads ``u_in, u_i, u_o`` (tied: ``u_f`` unread), writes ``h`` and ``y``: 5H; backward
  reads ``u_in, u_i, u_o, h, ȳ``, writes three ``ū`` blocks: 8H. Products: ``(D, 3H)``, ``(H, D)``.
- GateLoop: forward ``a = σ(a_proj x)`` (reads, writes ``H·R``), the kernel reads ``q, k, v, a``, writes ``o``:
  ``2HR + 2HK + 2HV + HR``, plus one ``K×V`` checkpoint per head and chunk; backward reads ``q, k, v, a, ō`` and the
  checkpoints, writes ``q̄, k̄, v̄, ā``, then ``σ``'s backward (3HR): ``4HK + 3HV + 5HR``. Its scratch (``C`` states
  per program, re-read within the chunk) is L2-sized and left out. Kernel FLOPs ``4·K·V`` per head and step
  forward, ``12·K·V`` backward. Products: ``(D, HK)`` twice, ``(D, HV)``, ``(D, HR)``, ``(HV, D)``.

On CUDA the roofline of each row uses the bandwidth of a device-to-device copy and the float32 rate of a large
matrix product (for the kernel FLOPs too), both measured in the same run; ``--model`` prints the model at the CPU
layer benchmark's sizes on the datasheet peaks of ``bench_device.DEVICES`` (H100, H200). ``--dry-run`` runs
everything on CPU tensors in Triton's interpreter at tiny shapes (the times mean nothing). Without CUDA and without
``--dry-run`` the command says so and exits with status 2. Nothing here imports a framework at module import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from linrec.tools.bench_device import DEVICES, Device, device_main

__all__ = ["FLA", "LAYERS", "LayerCost", "layer_costs", "main", "model_table", "run"]

#: the sizes of the CPU layer benchmark (benchmarks/layers.py FULL) and of the dry run
FULL = {"B": 4, "D": 256, "T": (1024, 4096)}
DRY = {"B": 1, "D": 16, "T": (8,)}
#: key -> row label
LAYERS = {"mingru": "minGRU", "gated_linear_rnn": "GatedLinearRNN", "gateloop_siso": "GateLoop SISO (H=D, K=V=1)",
          "gateloop_mh": "GateLoop MH (H=8, K=V=D/8)"}
MH_HEADS = 8
#: key -> (fla op, how it maps or why it is not used)
FLA = {
    "mingru": ("fla.ops.hgrn.fused_recurrent_hgrn",
               "h = exp(g) h + x with g = log σ(-u_z), x = σ(u_z) g(u_h): minGRU's recurrence, gates made by torch"),
    "gated_linear_rnn": ("fla.ops.hgrn.fused_recurrent_hgrn",
                         "g = log σ(-u_i), x = σ(u_i) tanh(u_in), then y = tanh(h) σ(u_o): gates made by torch"),
    "gateloop_siso": ("fla.ops.hgrn.fused_recurrent_hgrn",
                      "a 1×1 state per head is a scalar scan: x = k v, g = log a, o = q h (chunk_gla's tiles need "
                      "K ≥ 16)"),
    "gateloop_mh": ("fla.ops.gla.chunk_gla",
                    "S = diag(exp(g)) S + k vᵀ, o = Sᵀ q with g = log σ(a_proj x) per key row, scale=1"),
}


@dataclass(frozen=True)
class LayerCost:
    """One layer call: float32 bytes beyond its dense products, its kernel's FLOPs and its products' FLOPs."""

    layer: str
    pass_: str
    bytes: float
    kernel_flops: float
    matmul_flops: float

    def seconds(self, device: Device, bandwidth: float | None = None, flop_rate: float | None = None) -> float:
        """Roofline time: the kernel part (bytes or FLOPs, the slower) plus the products at the float32 rate
        (``bandwidth``, ``flop_rate``: rates measured in the run in place of ``device``'s datasheet peaks)."""
        bw, rate = bandwidth or device.bandwidth, flop_rate or device.fp32_flops
        return max(self.bytes / bw, self.kernel_flops / rate) + self.matmul_flops / rate


def _shape(layer: str, D: int) -> dict[str, int]:
    """``H, K, V, R`` of a layer at ``d_model = D`` (K = V = R = 1 for the channel-wise layers)."""
    if layer == "gateloop_mh":
        return {"H": MH_HEADS, "K": D // MH_HEADS, "V": D // MH_HEADS, "R": D // MH_HEADS}
    return {"H": D, "K": 1, "V": 1, "R": 1}


def layer_costs(layer: str, B: int, T: int, D: int, *, chunk: int = 64) -> list[LayerCost]:
    """``[forward, forward + backward]`` costs of ``layer`` (a key of :data:`LAYERS`) on ``x: (B, T, D)`` float32.

    ``chunk``: GateLoop's ``config.chunk_size`` (checkpoints per head every ``min(chunk, 2^⌈log2 T⌉)`` steps).
    """
    n, s = B * T, _shape(layer, D)
    H, K, V, R = s["H"], s["K"], s["V"], s["R"]
    if layer == "mingru":
        fwd_w, bwd_w, kf, kb, mats = 3 * H, 6 * H, 14 * H, 15 * H, [(D, 2 * H)]
    elif layer == "gated_linear_rnn":
        fwd_w, bwd_w, kf, kb, mats = 5 * H, 8 * H, 14 * H, 15 * H, [(D, 3 * H), (H, D)]
    elif layer in ("gateloop_siso", "gateloop_mh"):
        c = min(chunk, 1 << max(0, (T - 1).bit_length()))
        checkpoints = B * math.ceil(T / c) * H * K * V / n  # per token
        fwd_w = 2 * H * R + 2 * H * K + 2 * H * V + H * R + checkpoints
        bwd_w = 4 * H * K + 3 * H * V + 5 * H * R + checkpoints
        kf, kb = 4 * H * K * V, 12 * H * K * V
        mats = [(D, H * K), (D, H * K), (D, H * V), (D, H * R), (H * V, D)]
    else:
        raise ValueError(f"unknown layer {layer!r} (choose from {', '.join(LAYERS)})")
    mm = sum(2 * n * i * o for i, o in mats)
    fwd = LayerCost(LAYERS[layer], "fwd", 4 * n * fwd_w, n * kf, mm)
    both = LayerCost(LAYERS[layer], "fwd+bwd", 4 * n * (fwd_w + bwd_w), n * (kf + kb), 3 * mm)
    return [fwd, both]


def model_table(sizes: dict[str, Any] = FULL) -> str:
    """Markdown: per layer, pass and T the bytes, kernel and matmul FLOPs and the expected ms per device."""
    names = list(DEVICES)
    lines = ["| layer | pass | B×T×D | MB moved | kernel MFLOP | matmul GFLOP | "
             + " | ".join(f"{n} ms" for n in names) + " |", "|---|---|---|---|---|---|" + "---|" * len(names)]
    for layer in LAYERS:
        for T in sizes["T"]:
            for cost in layer_costs(layer, sizes["B"], T, sizes["D"]):
                ms = " | ".join(f"{1e3 * cost.seconds(DEVICES[n]):.3g}" for n in names)
                lines.append(f"| {cost.layer} | {cost.pass_} | {sizes['B']}×{T}×{sizes['D']} | "
                             f"{cost.bytes / 1e6:.3g} | {cost.kernel_flops / 1e6:.3g} | "
                             f"{cost.matmul_flops / 1e9:.3g} | {ms} |")
    return "\n".join(lines) + "\n"


# --- the layers, linrec's and fla's --------------------------------------------------------------------------


def layer_config(layer: str, D: int) -> Any:
    """The linrec config of ``layer`` at ``d_model = D`` (the CPU layer benchmark's, plus the multi-head GateLoop)."""
    if layer == "mingru":
        from linrec.spec.mingru import MinGRUConfig

        return MinGRUConfig(d_model=D, candidate="g", bias=False, default_state=0.0, out_proj=False)
    if layer == "gated_linear_rnn":
        from linrec.spec.gated_linear_rnn import GatedLinearRNNConfig

        return GatedLinearRNNConfig(d_model=D, d_h=D)
    from linrec.spec.gateloop_mh import GateLoopMHConfig

    s = _shape(layer, D)
    return GateLoopMHConfig(d_model=D, num_heads=s["H"], d_key=s["K"], d_value=s["V"], qkv_bias=True, gate="real",
                            gate_granularity="key")


def _module(layer: str) -> str:
    return "gateloop_mh" if layer.startswith("gateloop") else layer


def linrec_layer(layer: str, cfg: Any, method: str) -> Callable:
    """``(params, x (B, T, D)) -> y (B, T, D)``: linrec's PyTorch layer with the scan ``method``."""
    from importlib import import_module

    name = _module(layer)
    fn = getattr(import_module(f"linrec.backends.torch.{name}"), name)
    return lambda params, x: fn(params, x, config=cfg, method=method)[0]


def fla_layer(layer: str, cfg: Any, hgrn: Callable, gla: Callable) -> Callable:
    """``(params, x (B, T, D)) -> y (B, T, D)``: the same layer with fla's op (:data:`FLA`) as the recurrence.

    ``hgrn(x, g) -> (h, _)``: ``h_t = exp(g_t) h_{t-1} + x_t`` on ``(B, T, H)``; ``gla(q, k, v, g, scale=1.0) ->
    (o, _)`` on ``(B, T, H, K|V)``. Both start from a zero state, as the layers do here.
    """
    import torch.nn.functional as F

    from linrec.backends.torch.mingru import candidate

    def mm(params, name, x):
        bias = params.get(f"{name}.bias")
        return x @ params[f"{name}.kernel"] + (0 if bias is None else bias)

    if layer == "mingru":
        def run(params, x):
            u_z, u_h = mm(params, "proj", x).chunk(2, dim=-1)
            return hgrn(u_z.sigmoid() * candidate(u_h, cfg.candidate), F.logsigmoid(-u_z))[0]
    elif layer == "gated_linear_rnn":
        def run(params, x):
            u_in, u_i, u_o = mm(params, "proj", x).chunk(3, dim=-1)
            h = hgrn(u_i.sigmoid() * u_in.tanh(), F.logsigmoid(-u_i))[0]
            return mm(params, "out_proj", h.tanh() * u_o.sigmoid())
    else:
        def run(params, x):
            lead, shp = x.shape[:2], _shape(layer, cfg.d_model)
            q, k, v, g = (mm(params, p, x) for p in ("q_proj", "k_proj", "v_proj", "a_proj"))
            g = F.logsigmoid(g)
            if layer == "gateloop_siso":
                o = q * hgrn(k * v, g)[0]
            else:
                heads = [t.reshape(*lead, shp["H"], -1) for t in (q, k, v, g)]
                o = gla(*heads, scale=1.0)[0].reshape(*lead, -1)
            return mm(params, "out_proj", o)
    return run


def fla_ops(device: str) -> tuple[Callable | None, Callable | None, str]:
    """``(hgrn, gla, status)``: fla's ops where they can run (installed, CUDA), else Nones and the reason."""
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.hgrn import fused_recurrent_hgrn
    except Exception as err:  # not installed, or no GPU build
        return None, None, f"not importable ({type(err).__name__}): no fla rows"
    if device != "cuda":
        return None, None, ("installed, but its kernels are written for GPU tensors (on this CPU run it warns that "
                            "Triton is not supported and is not run in the interpreter): no fla rows in the dry run")
    return fused_recurrent_hgrn, chunk_gla, "timed"


# --- measuring ----------------------------------------------------------------------------------------------


def matmul_rate(device: str, n: int, repeat: int = 5) -> float:
    """float32 FLOP/s of an ``(n, n) @ (n, n)`` product on ``device``, the best of ``repeat``."""
    import torch

    from linrec.tools.bench_device import _cpu_seconds, _cuda_seconds

    timer = _cuda_seconds if device == "cuda" else _cpu_seconds
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    a @ b
    return 2 * n**3 / min(timer(lambda: a @ b) for _ in range(repeat))


def _cases(layer: str, B: int, T: int, D: int, device: str, fla: tuple[Callable | None, Callable | None, str]
           ) -> dict[str, tuple[Callable, Callable]]:
    """label -> (forward, forward + backward) closures of one layer on fixed float32 inputs on ``device``."""
    from importlib import import_module

    import torch

    cfg = layer_config(layer, D)
    raw = import_module(f"linrec.spec.{_module(layer)}").init_params(cfg, seed=0)
    params = {k: torch.as_tensor(v).to(device).requires_grad_(True) for k, v in raw.items()}
    g = torch.Generator().manual_seed(T)
    x = torch.randn(B, T, D, generator=g).to(device).requires_grad_(True)
    ct = torch.randn(B, T, D, generator=g).to(device)
    fns = {"linrec triton": linrec_layer(layer, cfg, "triton"), "linrec chunked": linrec_layer(layer, cfg, "chunked")}
    hgrn, gla, _ = fla
    if hgrn is not None:
        fns[f"fla {FLA[layer][0].rsplit('.', 1)[1]}"] = fla_layer(layer, cfg, hgrn, gla)

    def pair(fn):
        def fwd():
            with torch.no_grad():
                return fn(params, x)

        def fwd_bwd():
            return torch.autograd.grad(fn(params, x), [x, *params.values()], ct)

        return fwd, fwd_bwd

    return {label: pair(fn) for label, fn in fns.items()}


def run(device: str, sizes: dict[str, Any], *, repeat: int = 5) -> dict[str, Any]:
    """Time every layer and implementation over ``sizes["T"]`` on ``device`` (``"cuda"``, or ``"cpu"``: dry run)."""
    import warnings

    from linrec.tools import bench
    from linrec.tools.bench_device import _cpu_seconds, _cuda_seconds, cuda_bandwidth_probe

    if device == "cuda":
        bandwidth, rate, timer = cuda_bandwidth_probe(), matmul_rate("cuda", 4096), _cuda_seconds
    else:
        bandwidth = bench.torch_bandwidth_probe(2**20, repeat=3) or bench.bandwidth_probe(2**20, 3)
        rate, timer = matmul_rate("cpu", 256, repeat=3), _cpu_seconds
    fla = fla_ops(device)
    rows = []
    B, D = sizes["B"], sizes["D"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*interpreter.*")
        for layer in LAYERS:
            for T in sizes["T"]:
                fwd_cost, both_cost = layer_costs(layer, B, T, D)
                roof_fwd = fwd_cost.seconds(DEVICES["H100"], bandwidth, rate)
                roof_both = both_cost.seconds(DEVICES["H100"], bandwidth, rate)
                for label, (fwd, fwd_bwd) in _cases(layer, B, T, D, device, fla).items():
                    fwd(), fwd_bwd()  # warm-up: compilation (or the interpreter's first pass)
                    t_fwd = min(timer(fwd) for _ in range(repeat))
                    t_both = min(timer(fwd_bwd) for _ in range(repeat))
                    rows.append({"layer": LAYERS[layer], "op": label, "T": T, "roofline fwd ms": 1e3 * roof_fwd,
                                 "fwd ms": 1e3 * t_fwd, "fwd/roofline": t_fwd / roof_fwd,
                                 "roofline fwd+bwd ms": 1e3 * roof_both, "fwd+bwd ms": 1e3 * t_both,
                                 "(fwd+bwd)/roofline": t_both / roof_both,
                                 "H100 model fwd+bwd ms": 1e3 * both_cost.seconds(DEVICES["H100"])})
    return {"device": device, "B": B, "D": D, "bandwidth_GBps": bandwidth / 1e9, "matmul_GFLOPs": rate / 1e9,
            "rows": rows, "fla": fla[2]}


COLUMNS = ["layer", "op", "T", "roofline fwd ms", "fwd ms", "fwd/roofline", "roofline fwd+bwd ms", "fwd+bwd ms",
           "(fwd+bwd)/roofline", "H100 model fwd+bwd ms"]


def report(result: dict[str, Any]) -> str:
    from linrec.tools import bench

    kind = ("CUDA" if result["device"] == "cuda" else
            "DRY RUN: CPU tensors in Triton's interpreter, tiny shapes; the times mean nothing")
    fla = "\n".join(f"- {LAYERS[k]}: {op} ({how})" for k, (op, how) in FLA.items())
    head = (f"# Layers with Triton kernels on {kind}\n\nfloat32, B={result['B']}, D={result['D']}; roofline = bytes "
            f"beyond the dense products / {result['bandwidth_GBps']:.1f} GB/s + matmul FLOPs / "
            f"{result['matmul_GFLOPs']:.1f} GFLOP/s, both measured in this run (model: linrec.tools."
            f"bench_device_layers.layer_costs).\n\nflash-linear-attention: {result['fla']}. Its ops per layer:\n"
            f"{fla}\n\n")
    return head + bench.markdown_table(COLUMNS, result["rows"])


def main(argv: Sequence[str] | None = None) -> int:
    return device_main(argv, what="layers", cpu_alternative="the CPU layers", model=model_table, run=run,
                       report=report, full=FULL, dry=DRY)

if __name__ == "__main__":
    raise SystemExit(main())
