"""The README's sequence-parallel examples run as written and give the one-device loss and gradients.

The torch example (a ```py block: the pytest process is not a process group) runs under ``torch.distributed.run``
with 4 gloo processes on loopback; a check appended to it compares the step with the same step on one device, with
the spec's float32 gradient tolerance. The JAX example is ``examples/jax_sequence_parallel.py``
(tests/test_distributed_jax.py runs it on 8 host devices)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = '''
# --- appended by tests/test_readme_distributed.py: the same step on one device ---
from linrec.spec.tolerances import max_violation, tolerance_for

partial = loss.detach().clone()
dist.all_reduce(partial)                              # sum of the ranks' shares = n_data x the global mean loss
torch.manual_seed(0)
ref = GatedLinearRNNLM(2, 64, 128, 64, input_vocab_size=256, output_vocab_size=256,
                       positional_encoding_mode="learned", max_seq_length=1024)
ref_logits, _ = ref(tokens[:, :-1])
ref_loss = F.cross_entropy(ref_logits.flatten(0, 1), tokens[:, 1:].flatten())
ref_loss.backward()
tol = tolerance_for("float32", length=1024, grad=True)
assert abs(partial.item() / n_data - ref_loss.item()) <= tol.atol + tol.rtol * abs(ref_loss.item())
for (name, p), q in zip(lm.named_parameters(), ref.parameters(), strict=True):
    err, allowed = max_violation(p.grad.numpy(), q.grad.numpy(), tol)
    assert err <= allowed, (name, err, allowed)
if rank == 0:
    print("one-device loss and gradients reproduced", flush=True)
dist.destroy_process_group()
'''


def _readme_block(marker: str) -> str:
    blocks = re.findall(r"```py\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


@pytest.mark.slow
def test_readme_torch_sequence_parallel_step_equals_one_device(tmp_path):
    pytest.importorskip("torch")
    script = tmp_path / "train_sp.py"
    script.write_text(_readme_block("SequenceParallel") + CHECK)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                           str(script)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "one-device loss and gradients reproduced" in proc.stdout


def test_readme_jax_example_is_the_example_file():
    """The README's JAX block is examples/jax_sequence_parallel.py's code (which the slow tier runs on 8 devices)."""
    block = _readme_block("sequence_parallel(mesh")
    source = (ROOT / "examples" / "jax_sequence_parallel.py").read_text()
    def code(text: str) -> list[str]:  # the lines without their trailing comments
        return [line.split("  #")[0].rstrip() for line in text.splitlines() if line.split("  #")[0].strip()]

    missing = [line for line in code(block) if line not in code(source)]
    assert not missing, missing
