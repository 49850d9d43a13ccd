"""Orbax checkpoints whose metadata declares absurd sizes are refused before any array is read.

The hostile checkpoints are real ones: a small checkpoint written by ``write_orbax``, then the ``.zarray``
metadata of its arrays rewritten inside the OCDBT store (with tensorstore, which Orbax itself uses) to declare
shapes of ``2**40`` elements or a total beyond ``2**40`` bytes. Restoring such an array would try to allocate
terabytes; the guard in ``linrec.tools.orbax_io`` must refuse it from the metadata alone, with one clear
``CheckpointError`` and nothing written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")
ts = pytest.importorskip("tensorstore")

from linrec.tools import convert, orbax_io  # noqa: E402
from linrec.tools.convert import CheckpointError, convert_main  # noqa: E402


def _checkpoint(tmp_path, declared: dict[str, tuple[list[int], str]]):
    """A real Orbax checkpoint of three small float32 arrays, with ``declared`` (name -> (shape, zarr dtype))
    rewritten into their stored array metadata (of the same rank: the stored chunk shape stays valid)."""
    path = tmp_path / "ckpt"
    arrays = {"a": np.ones((2, 3), np.float32), "b": np.zeros((1, 4), np.float32),
              "c": np.full((1, 5), 2.0, np.float32)}
    orbax_io.write_orbax(path, arrays)
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{path}/"}).result()
    for name, (shape, dtype) in declared.items():
        key = f"{name}/.zarray".encode()
        meta = json.loads(kv.read(key).result().value)
        meta.update(shape=shape, dtype=dtype)
        kv.write(key, json.dumps(meta).encode()).result()
    return path


def test_the_limits_are_the_documented_ones():
    assert orbax_io.MAX_ARRAY_ELEMENTS == 2**36 and orbax_io.MAX_TOTAL_BYTES == 2**40


def test_an_array_declaring_too_many_elements_is_refused_before_reading(tmp_path, capsys):
    path = _checkpoint(tmp_path, {"a": ([2**20, 2**20], "<f4")})  # 2**40 elements, 4 TiB
    with pytest.raises(CheckpointError, match=r"'a'.*2\*\*36.*nothing was read"):
        orbax_io.read_orbax(path)
    with pytest.raises(CheckpointError, match=r"2\*\*36"):
        orbax_io.read_orbax_metadata(path)
    out = tmp_path / "out.safetensors"
    assert convert_main([str(path), str(out), "--from", "orbax", "--model", "mingru"]) != 0
    assert "2**36" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(CheckpointError, match=r"2\*\*36"):
        convert.inspect(path)


def test_arrays_declaring_too_many_bytes_together_are_refused(tmp_path):
    # each array within 2**36 elements; together 2**39 + 2**39 + 2**38 bytes > 2**40
    path = _checkpoint(tmp_path, {"a": ([1, 2**36], "<f8"), "b": ([1, 2**36], "<f8"), "c": ([1, 2**35], "<f8")})
    with pytest.raises(CheckpointError, match=r"2\*\*40.*nothing was read"):
        orbax_io.read_orbax(path)


def test_sizes_at_the_limits_pass_the_guard(tmp_path):
    """Exactly ``2**36`` elements, and ``2**40`` bytes in all, are allowed (metadata only: nothing is read)."""
    path = _checkpoint(tmp_path, {"a": ([1, 2**36], "<f8"), "b": ([2**18, 2**18], "<f4"), "c": ([1, 2**36], "<f2")})
    total = 2**36 * (8 + 4 + 2)
    assert total <= 2**40
    placeholders, _ = orbax_io.read_orbax_metadata(path)
    assert placeholders["a"].shape == (1, 2**36) and placeholders["a"].dtype == np.float64
    assert placeholders["a"].strides == (0, 0)  # a placeholder: no memory for the declared shape
