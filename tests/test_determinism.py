"""Bitwise reproducibility of ``linear_scan`` (recurrence.md §9, *Determinism*).

The same input must give bit-identical outputs across runs and across thread counts (1 and 2) for every forward
method on CPU. Each configuration runs in a fresh subprocess, so the thread settings (``OMP_NUM_THREADS``,
``LINREC_NUM_THREADS`` for the native kernel, ``torch.set_num_threads``) are in force before any framework starts.
The child prints a SHA-256 of the raw bytes of ``h`` and ``final_state`` per method.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# B=4, T=1024, D=256: whole-tensor ops of ~1M elements, large enough that torch and the native kernel split them
# over threads when allowed (torch's grain is 32768 elements, the kernel's 65536 state updates).
_CHILD = r"""
import hashlib, json, sys
import numpy as np
name, threads = sys.argv[1], int(sys.argv[2])
if name == "torch":
    import torch
    torch.set_num_threads(threads)
import importlib
be = importlib.import_module(f"linrec.backends.{name}")
rng = np.random.default_rng(0)
a = rng.uniform(0.9, 1.0, (4, 1024, 256)).astype(np.float32)
b = rng.uniform(0.1, 1.0, (4, 1024, 256)).astype(np.float32)
h0 = rng.uniform(0.1, 1.0, (4, 256)).astype(np.float32)
resets = rng.random((4, 1024)) < 0.01
out = {}
for method in be.METHODS:
    # the interpreted accelerator kernels (Triton, Pallas) on a slice: their interpreter runs on NumPy whatever
    # the thread setting, and the whole input took a minute in Triton's
    n, t, d = (1, 128, 64) if method in ("triton", "pallas") else a.shape
    kw = {} if method == "log" else {"resets": be.asarray(resets[:n, :t])}
    digests = []
    for _ in range(2):  # twice in the same process: run-to-run
        h, final = be.linear_scan(be.asarray(a[:n, :t, :d]), be.asarray(b[:n, :t, :d]),
                                  initial_state=be.asarray(h0[:n, :d]), method=method, **kw)
        digest = hashlib.sha256()
        for x in (h, final):
            digest.update(np.ascontiguousarray(be.to_numpy(x)).tobytes())
        digests.append(digest.hexdigest())
    out[method] = digests
print(json.dumps(out))
"""


def _run(backend: str, threads: int) -> dict[str, list[str]]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "LINREC_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, backend, str(threads)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_forward_is_bitwise_reproducible_across_runs_and_thread_counts(backend):
    pytest.importorskip({"numpy": "numpy", "torch": "torch", "jax": "jax"}[backend])
    one, two = _run(backend, 1), _run(backend, 2)
    assert one.keys() == two.keys() and {"sequential", "associative", "chunked", "log"} <= one.keys()
    for method in one:
        assert one[method][0] == one[method][1], f"{backend} {method}: two runs differ (1 thread)"
        assert two[method][0] == two[method][1], f"{backend} {method}: two runs differ (2 threads)"
        assert one[method][0] == two[method][0], f"{backend} {method}: 1 and 2 threads differ"
