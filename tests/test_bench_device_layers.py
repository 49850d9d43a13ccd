"""``linrec bench layers --device cuda [--dry-run] [--model]`` (``linrec.tools.bench_device_layers``).

Shape legend: ``B`` batch, ``T`` time, ``D`` ``d_model``, ``H`` heads, ``K``/``V`` key/value width.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from linrec.tools import bench_cli, bench_device  # noqa: E402
from linrec.tools import bench_device_layers as bdl  # noqa: E402

N = 4 * 4096  # tokens of the CPU layer benchmark's largest size: B=4, T=4096 (D=256)


def test_model_bytes_and_flops_by_hand(capsys):
    """The roofline model at the CPU layer benchmark's sizes equals the hand count of the docstring."""
    H100 = bench_device.DEVICES["H100"]
    fwd, both = bdl.layer_costs("mingru", 4, 4096, 256)
    assert fwd.bytes == 4 * N * 3 * 256 == 50_331_648  # u (2H) in, h (H) out
    assert both.bytes == 4 * N * 9 * 256  # + u, h, ḣ in, ū (2H) out
    assert fwd.matmul_flops == 2 * N * 256 * 512 == 4_294_967_296 and both.matmul_flops == 3 * fwd.matmul_flops
    assert fwd.seconds(H100) == pytest.approx(50_331_648 / 3.35e12 + 4_294_967_296 / 67e12)
    fwd, both = bdl.layer_costs("gated_linear_rnn", 4, 4096, 256)
    assert (fwd.bytes, both.bytes) == (4 * N * 5 * 256, 4 * N * 13 * 256)
    assert fwd.matmul_flops == 2 * N * (256 * 768 + 256 * 256)
    # multi-head GateLoop, H=8, K=V=R=32, chunk 64: σ (2·256) + q, k, v, a, o (5·256) + 64 checkpoints of 8·32·32
    fwd, both = bdl.layer_costs("gateloop_mh", 4, 4096, 256)
    per_token = 2 * 256 + 5 * 256 + 4 * 64 * 8 * 32 * 32 / N
    assert per_token == 1920 and fwd.bytes == 4 * N * 1920 == 125_829_120
    assert fwd.kernel_flops == N * 4 * 8 * 32 * 32 and both.kernel_flops == 4 * fwd.kernel_flops
    assert fwd.matmul_flops == 5 * 2 * N * 256 * 256
    assert fwd.kernel_flops / fwd.bytes < H100.fp32_flops / H100.bandwidth  # memory-bound, as the scan
    # SISO heads: a state of one number per channel; the chunk (64) caps at the power of two covering T
    fwd, _ = bdl.layer_costs("gateloop_siso", 1, 16, 8)
    assert fwd.bytes == 4 * 16 * (2 * 8 + 5 * 8 + 8 / 16)
    with pytest.raises(ValueError, match="unknown layer"):
        bdl.layer_costs("lstm", 1, 1, 1)

    assert bench_cli.main(["layers", "--model"]) == 0
    out = capsys.readouterr().out
    assert "H100 ms | H200 ms |" in out
    for label in bdl.LAYERS.values():
        assert f"| {label} | fwd | 4×4096×256 |" in out and f"| {label} | fwd+bwd | 4×1024×256 |" in out
    assert "| minGRU | fwd | 4×4096×256 | 50.3 | 58.7 | 4.29 | 0.0791 | 0.0746 |" in out
    assert bench_cli.main(["--help"]) == 0
    assert "layers --device cuda [--dry-run] [--model]" in capsys.readouterr().out


@pytest.mark.slow  # ~30 s of interpreted Triton; the slow tier of .ci/run runs it
def test_bench_layers_device_dry_run(capsys):
    """``--dry-run``: every layer, triton and chunked, on CPU tensors in the interpreter; fla named and skipped."""
    assert bench_cli.main(["layers", "--device", "cuda", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "fla.ops.gla.chunk_gla" in out
    T = bdl.DRY["T"][0]
    for label in bdl.LAYERS.values():
        assert f"| {label} | linrec triton | {T} |" in out and f"| {label} | linrec chunked | {T} |" in out
    if not torch.cuda.is_available():
        assert "| fla" not in out
        assert bench_cli.main(["layers", "--device", "cuda"]) == 2
        assert "--dry-run" in capsys.readouterr().err


def _hgrn(x, g):
    """fla's HGRN recurrence, written out: ``h_t = exp(g_t) h_{t-1} + x_t`` on ``(B, T, H)`` from zero."""
    h, hs = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        h = g[:, t].exp() * h + x[:, t]
        hs.append(h)
    return torch.stack(hs, 1), h


def _gla(q, k, v, g, scale):
    """fla's GLA, written out: ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ``, ``o_t = scale · S_tᵀ q_t``."""
    s = q.new_zeros((*q.shape[:1], q.shape[2], q.shape[3], v.shape[3]))
    os = []
    for t in range(q.shape[1]):
        s = g[:, t, :, :, None].exp() * s + k[:, t, :, :, None] * v[:, t, :, None, :]
        os.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], s))
    return torch.stack(os, 1), s


@pytest.mark.parametrize("layer", list(bdl.LAYERS))
def test_fla_mapping_computes_the_layer(layer):
    """The fla rows compute linrec's layer: with fla's recurrences written out, the same ``y``."""
    torch.manual_seed(0)
    cfg = bdl.layer_config(layer, 16)
    from importlib import import_module

    raw = import_module(f"linrec.spec.{bdl._module(layer)}").init_params(cfg, seed=1)
    params = {k: torch.as_tensor(v).to(torch.float64) for k, v in raw.items()}
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    want = bdl.linrec_layer(layer, cfg, "sequential")(params, x)
    got = bdl.fla_layer(layer, cfg, _hgrn, _gla)(params, x)
    assert got.shape == want.shape == (2, 7, 16)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
