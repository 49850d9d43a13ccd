"""Sequence-parallel scan (recurrence.md §12): bytes exchanged and exchange time against the local scan, per step.

Shape legend: ``B`` batch, ``T`` time (global), ``D`` state width, ``N`` devices on the sequence axis.

On ``N`` simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``; this script sets it when
JAX is not yet loaded) it times, jitted, best of ``--repeat``:

- *one device*: ``linear_scan`` of ``(B, T, D)`` on one device;
- *local scan*: one device's share of step 1, ``linear_scan`` of ``(B, T/N, D)``;
- *exchange*: step 2 alone, the ``all_gather`` of the chunk maps ``(B, D) + (B, D)`` over ``N`` devices inside
  ``shard_map``;
- *sharded*: the whole ``linear_scan_sharded`` (forward), and forward + backward of ``sum(h · w)``.

and the bytes one device receives per scan (forward; the backward moves as many). The simulated devices share
this machine's cores and memory, so the sharded times measure the overhead of the algorithm (two passes, the
exchange, the fix-up), not a speed-up; the bytes are exact. Writes ``results/distributed.md``.

Run: ``python benchmarks/distributed.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if "jax" not in sys.modules:  # the device count is fixed when JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FULL = {"B": 4, "D": 256, "T": (4096, 16384), "N": (2, 4, 8)}
QUICK = {"B": 4, "D": 128, "T": (1024,), "N": (2, 8)}
COLUMNS = ["T", "N", "bytes/device fwd", "bytes/device bwd", "one device ms", "local scan ms", "exchange ms",
           "exchange / local", "sharded fwd ms", "sharded fwd+bwd ms", "one device fwd+bwd ms"]


def _best(fn, repeat: int) -> float:
    import jax

    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def measure(n_batch: int, n_time: int, width: int, n_dev: int, repeat: int) -> dict:
    """One row: times in ms and exact bytes for ``(B, T, D)`` float32 on ``n_dev`` devices."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from linrec.backends.jax import linear_scan
    from linrec.backends.jax.distributed import exchange_bytes, linear_scan_sharded

    mesh = Mesh(np.array(jax.devices()[:n_dev]), ("seq",))
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(0.9, 1.0, (n_batch, n_time, width)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((n_batch, n_time, width)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(b.shape), jnp.float32)
    chunk = n_time // n_dev
    a_loc, b_loc = a[:, :chunk], b[:, :chunk]

    one = jax.jit(lambda a, b: linear_scan(a, b, method="sequential")[0])
    sharded = jax.jit(lambda a, b: linear_scan_sharded(a, b, mesh=mesh, method="sequential")[0])

    def loss(scan):
        return jax.jit(jax.grad(lambda a, b: jnp.sum(scan(a, b) * w), argnums=(0, 1)))

    maps = jnp.ones((2, n_batch * n_dev, width), jnp.float32)  # (A, H) per device, one all_gather
    gather = jax.jit(jax.shard_map(lambda m: lax.all_gather(m, "seq", axis=1, tiled=True), mesh=mesh,
                                   in_specs=P(None, "seq"), out_specs=P(), check_vma=False))
    grad_sharded = loss(lambda a, b: linear_scan_sharded(a, b, mesh=mesh, method="sequential")[0])
    grad_one = loss(lambda a, b: linear_scan(a, b, method="sequential")[0])
    row = {
        "T": n_time, "N": n_dev,
        "bytes/device fwd": exchange_bytes(a, b, devices=n_dev),
        "bytes/device bwd": exchange_bytes(a, b, devices=n_dev, backward=True) - exchange_bytes(a, b, devices=n_dev),
        "one device ms": _best(lambda: one(a, b), repeat),
        "local scan ms": _best(lambda: one(a_loc, b_loc), repeat),
        "exchange ms": _best(lambda: gather(maps), repeat),
        "sharded fwd ms": _best(lambda: sharded(a, b), repeat),
        "sharded fwd+bwd ms": _best(lambda: grad_sharded(a, b), repeat),
        "one device fwd+bwd ms": _best(lambda: grad_one(a, b), repeat),
    }
    row["exchange / local"] = row["exchange ms"] / row["local scan ms"]
    return row


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def to_markdown(rows: list[dict], sizes: dict) -> str:
    import jax

    lines = [
        "# Sequence-parallel scan: exchange against local scan",
        "",
        f"`python benchmarks/distributed.py` — B={sizes['B']}, D={sizes['D']}, float32, `method=\"sequential\"` "
        f"local scans, {len(jax.devices())} simulated CPU devices on {os.cpu_count()} cores (jax {jax.__version__}).",
        "Bytes: what one device receives per scan in the `all_gather` of the chunk maps (recurrence.md §12); the",
        "backward pass moves as many. Times: best of the repeats, ms. The simulated devices share the cores and the",
        "memory of one machine, so *sharded* is the algorithm's overhead here, not a speed-up; on real devices each",
        "runs its *local scan* in parallel and the step costs about local scan + exchange + fix-up.",
        "The *one device* column repeats the same computation in every row of a `T`: its spread is the noise of",
        "this shared machine (other processes on the same two cores), which no best-of-repeats removes.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rows = []
    for n_time in sizes["T"]:
        for n_dev in sizes["N"]:
            row = measure(sizes["B"], n_time, sizes["D"], n_dev, args.repeat)
            print(" ".join(f"{c}={_fmt(row[c])}" for c in COLUMNS), flush=True)
            rows.append(row)
    text = to_markdown(rows, sizes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
