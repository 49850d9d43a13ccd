"""Files linrec writes get the permissions of an ordinary file write (0o666 minus the umask), not mkstemp's 0o600.

Each case runs in a subprocess with its own umask: the umask is process-global, and changing it here would
change it for every other test in this process.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_WRITER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    os.umask(int(sys.argv[1], 8))
    out, formats = Path(sys.argv[2]), sys.argv[3].split(",")
    from linrec.conformance import conversion_cases as cc
    from linrec.tools import convert, safetensors_io
    config = cc.CONFIGS["mingru"][next(iter(cc.CONFIGS["mingru"]))]()
    ckpt = convert.Checkpoint("mingru", config, cc.random_params("mingru", config, "float32"))
    names = {"linrec": "m.safetensors", "torch": "m.pt", "flax": "m.msgpack", "orbax": "m_orbax"}
    for fmt in formats:
        convert.write(ckpt, out / names[fmt], format=fmt)
    if "linrec" in formats:  # a second write through linrec convert, replacing a file with --force
        convert.convert(out / "m.safetensors", out / "m.safetensors", force=True, progress=False)
    proc = safetensors_io.current_umask()
    def fallback_open(*args, **kwargs):
        raise OSError("no /proc")
    import builtins
    real_open, builtins.open = builtins.open, fallback_open
    try:
        fallback = safetensors_io.current_umask()
    finally:
        builtins.open = real_open
    modes = {str(p.relative_to(out)): p.stat().st_mode for p in [*out.rglob("*")]}
    print(json.dumps({"modes": modes, "proc": proc, "fallback": fallback, "after": os.umask(0)}))
""")


def _write(tmp_path: Path, umask: int, formats: str) -> dict:
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run([sys.executable, "-c", _WRITER, oct(umask), str(out), formats],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoint_files_get_the_ordinary_mode(umask, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("flax")
    result = _write(tmp_path, umask, "linrec,torch,flax")
    assert result["proc"] == result["fallback"] == result["after"] == umask  # read, never changed
    modes = result["modes"]
    assert sorted(modes) == ["m.msgpack", "m.pt", "m.safetensors"]  # no temporary files left
    for name, mode in modes.items():
        assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o666 & ~umask, (name, oct(mode))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_orbax_directories_get_the_ordinary_modes(umask, tmp_path):
    pytest.importorskip("orbax.checkpoint")
    modes = _write(tmp_path, umask, "orbax")["modes"]
    assert "m_orbax/_METADATA" in modes
    assert not [n for n in modes if n.startswith(".")]  # the temporary sibling directory is gone
    for name, mode in modes.items():
        want = 0o777 & ~umask if stat.S_ISDIR(mode) else 0o666 & ~umask
        assert stat.S_IMODE(mode) == want, (name, oct(mode))
