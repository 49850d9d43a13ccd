"""Hostile checkpoint files: every input either loads or raises ``CheckpointError``.

Hand-built files pin each known hole (aliased offsets, non-integer shapes, deep nesting, a list
``__metadata__``, hostile msgpack array records); Hypothesis then mutates valid safetensors, ``.pt`` and
msgpack files (bit flips, truncation, splices, random headers) and checks that no read raises anything
else, hangs, or writes a file. The default run is short; ``-m slow`` runs many more examples.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import sys
import tempfile
import warnings
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linrec.conformance import conversion_cases as cc
from linrec.tools import convert, formats
from linrec.tools.safetensors_io import CheckpointError, read_safetensors, write_safetensors

MODEL = "gated_linear_rnn"
SUFFIX = {"linrec": ".safetensors", "torch": ".pt", "torch-legacy": ".pt", "flax": ".msgpack"}
FAST = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HANG_SECONDS = 20  # far above any honest read of these few-KB files


# --- helpers ----------------------------------------------------------------------------------------------


def _safetensors_bytes(header: dict | str | bytes, data: bytes = b"") -> bytes:
    head = header if isinstance(header, bytes) else (
        header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(head)) + head + data


def _write(tmp_path: Path, name: str, raw: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def _ndarray_ext(shape, dtype: str | bytes, buffer: bytes, code: int = 1) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb((shape, dtype, buffer), use_bin_type=True))


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so no reader's ``except Exception`` can swallow it."""


@contextlib.contextmanager
def _alarm(seconds: int):
    def fire(signum, frame):
        raise _Hang(f"a read took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _snapshot(*folders: Path) -> set[str]:
    return {str(p) for folder in folders for p in folder.rglob("*")}


def _read_hostile(fmt: str, raw: bytes) -> None:
    """Read ``raw`` as a ``fmt`` file through the format reader and ``convert.read``, from a fresh empty cwd.

    Passes if each read returns or raises ``CheckpointError``; fails on any other exception, on a hang and on
    any file appearing in the cwd or next to the input.
    """
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as cwd:
        path = Path(home) / f"x{SUFFIX[fmt]}"
        path.write_bytes(raw)
        before = _snapshot(Path(home), Path(cwd))
        old = os.getcwd()
        os.chdir(cwd)
        try:
            with _alarm(HANG_SECONDS), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. torch's note on a mangled pickle protocol byte
                for read in (_format_reader(fmt), lambda p: convert.read(p, model=MODEL)):
                    try:
                        read(path)
                    except CheckpointError:
                        pass
        finally:
            os.chdir(old)
        assert _snapshot(Path(home), Path(cwd)) == before, "a read wrote a file"


def _format_reader(fmt: str):
    return {"linrec": formats.read_linrec, "torch": formats.read_torch, "torch-legacy": formats.read_torch,
            "flax": formats.read_flax}[fmt]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    """A small valid checkpoint of ``MODEL`` in each of the three formats (and torch's legacy one), as bytes."""
    pytest.importorskip("torch")
    pytest.importorskip("flax")
    folder = tmp_path_factory.mktemp("seeds")
    config = cc.CONFIGS[MODEL]["untied-recurrent"]()
    params = cc.random_params(MODEL, config, "float32", 0)
    src = convert.save((config, params), folder / "seed.safetensors")
    out = {"linrec": src.read_bytes()}
    for fmt in ("torch", "flax"):
        dst = folder / f"seed{SUFFIX[fmt]}"
        convert.convert(src, dst, progress=False)
        out[fmt] = dst.read_bytes()
    # the pre-1.6 torch format (one pickle stream, storages appended): its own parser, so its own seed
    torch = pytest.importorskip("torch")
    legacy = io.BytesIO()
    torch.save(torch.load(folder / "seed.pt", weights_only=True), legacy, _use_new_zipfile_serialization=False)
    out["torch-legacy"] = legacy.getvalue()
    return out


# --- safetensors: hand-built files, one per hole -----------------------------------------------------------


def test_aliased_and_overlapping_offsets_are_refused(tmp_path):
    a = np.arange(4, dtype=np.float32)
    # two names for the same bytes: the reader used to hand both the same weights
    aliased = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
               "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    path = _write(tmp_path, "aliased.safetensors", _safetensors_bytes(aliased, a.tobytes()))
    with pytest.raises(CheckpointError, match=r"'b' starts at byte 0 but tensor 'a' ends at byte 16.*overlapping"):
        read_safetensors(path)
    # half-overlapping tensors inside a data section that is exactly large enough for both ends
    half = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    path = _write(tmp_path, "half.safetensors", _safetensors_bytes(half, np.arange(6, dtype=np.float32).tobytes()))
    with pytest.raises(CheckpointError, match="'b' starts at byte 8 but tensor 'a' ends at byte 16"):
        read_safetensors(path)
    # a gap before the first tensor, and bytes after the last
    gap = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
    path = _write(tmp_path, "gap.safetensors", _safetensors_bytes(gap, a.tobytes()))
    with pytest.raises(CheckpointError, match="starts at byte 8 but the data section starts at 0"):
        read_safetensors(path)
    tail = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    path = _write(tmp_path, "tail.safetensors", _safetensors_bytes(tail, a.tobytes()))
    with pytest.raises(CheckpointError, match="end at byte 8 but the data section has 16 bytes"):
        read_safetensors(path)


def test_tiled_offsets_in_any_header_order_still_load(tmp_path):
    # the writer sorts by name; another writer may order the header differently, and zero-size tensors share
    # an offset with their neighbour: both are valid
    header = {"z": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [8, 8]},
              "a": {"dtype": "I8", "shape": [3], "data_offsets": [8, 11]}}
    data = np.array([1.5, -2.0], np.float32).tobytes() + bytes([1, 2, 255])
    tensors, meta = read_safetensors(_write(tmp_path, "ok.safetensors", _safetensors_bytes(header, data)))
    assert meta == {}
    np.testing.assert_array_equal(tensors["z"], [1.5, -2.0])
    np.testing.assert_array_equal(tensors["a"], np.array([1, 2, -1], np.int8))
    assert tensors["empty"].shape == (0, 3) and tensors["empty"].dtype == np.float32


@pytest.mark.parametrize("dim", ["Infinity", "-Infinity", "NaN", "1e400", str(2**70), "-1", "2.0", "true", '"4"',
                                 "[4]", "null"])
def test_non_integer_or_huge_shapes_are_refused(dim, tmp_path):
    head = '{"w":{"dtype":"F32","shape":[DIM],"data_offsets":[0,16]}}'.replace("DIM", dim)
    path = _write(tmp_path, "shape.safetensors", _safetensors_bytes(head, bytes(16)))
    with pytest.raises(CheckpointError, match=r"(shape must be a list of non-negative integers|not JSON|needs)"):
        read_safetensors(path)


@pytest.mark.parametrize("offsets", ["[0,1e400]", "[0,Infinity]", "[-16,0]", "[0,16,32]", "[0]", "[0.0,16]",
                                     '"0-16"', str([2**70, 2**70 + 16])])
def test_malformed_offsets_are_refused(offsets, tmp_path):
    head = '{"w":{"dtype":"F32","shape":[4],"data_offsets":OFFSETS}}'.replace("OFFSETS", offsets)
    path = _write(tmp_path, "offsets.safetensors", _safetensors_bytes(head, bytes(16)))
    with pytest.raises(CheckpointError, match=r"'w'|not JSON"):
        read_safetensors(path)


def test_deeply_nested_header_json_is_refused(tmp_path):
    for depth in (100, 100_000):  # under and far over the JSON scanner's recursion limit
        head = '{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16],"x":' + "[" * depth + "]" * depth + "}}"
        path = _write(tmp_path, "deep.safetensors", _safetensors_bytes(head, bytes(16)))
        if depth == 100:  # unknown keys are ignored, as by the reference reader
            assert read_safetensors(path)[0]["w"].shape == (4,)
        else:
            with pytest.raises(CheckpointError, match="nested too deeply"):
                read_safetensors(path)
    head = '{"__metadata__":' + '{"a":' * 50_000 + "1" + "}" * 50_000 + "}"
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_safetensors(_write(tmp_path, "deepmeta.safetensors", _safetensors_bytes(head)))


@pytest.mark.parametrize("metadata", [["a", "b"], "text", 3, {"a": 1}, {"a": {"b": "c"}}, {"a": None}])
def test_metadata_must_be_an_object_of_strings(metadata, tmp_path):
    path = _write(tmp_path, "meta.safetensors", _safetensors_bytes({"__metadata__": metadata}))
    with pytest.raises(CheckpointError, match="__metadata__ must be a JSON object of strings"):
        read_safetensors(path)


@pytest.mark.parametrize(("head", "match"), [
    ('{"w":1}', "not a JSON object"),
    ('{"w":{"dtype":"F32","shape":[0]}}', "missing data_offsets"),
    ('{"w":{"dtype":"F99","shape":[0],"data_offsets":[0,0]}}', "dtype must be one of"),
    ('{"w":{"dtype":["F32"],"shape":[0],"data_offsets":[0,0]}}', "dtype must be one of"),
    ('{"w":{"dtype":"F32","shape":[' + ",".join(["1"] * 65) + '],"data_offsets":[0,4]}}', "65 dimensions"),
    ('{"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}',
     "appears twice"),
    ("[1, 2]", "not a JSON object"),
])
def test_malformed_entries_are_refused(head, match, tmp_path):
    with pytest.raises(CheckpointError, match=match):
        read_safetensors(_write(tmp_path, "bad.safetensors", _safetensors_bytes(head)))


def test_non_utf8_header_is_refused(tmp_path):
    head = '{"__metadata__":{"a":"b"}}'.encode("utf-16")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        read_safetensors(_write(tmp_path, "utf16.safetensors", _safetensors_bytes(head)))


def test_written_files_still_round_trip(tmp_path):
    import ml_dtypes

    tensors = {"b": np.arange(6, dtype=np.float64).reshape(2, 3), "a": np.ones(3, ml_dtypes.bfloat16),
               "e": np.zeros((0,), np.float32)}
    path = write_safetensors(tmp_path / "rt.safetensors", tensors, {"k": "v"})
    back, meta = read_safetensors(path)
    assert meta == {"k": "v"}
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and back[name].tobytes() == value.tobytes()


def test_file_level_model_errors_are_checkpoint_errors(tmp_path):
    """Found by the fuzzer: a mutated model_type, and zero-size dims in the shapes the config is inferred from."""
    f32 = np.float32
    write_safetensors(tmp_path / "m.safetensors", {"w": np.zeros(2, f32)}, {"model_type": "fated_linear_rnn"})
    with pytest.raises(CheckpointError, match="unknown model type 'fated_linear_rnn'"):
        convert.read(tmp_path / "m.safetensors")
    zero = {"proj.kernel": np.zeros((3, 8), f32), "proj.bias": np.zeros(8, f32),
            "out_proj.kernel": np.zeros((0, 3), f32), "out_proj.bias": np.zeros(3, f32)}
    write_safetensors(tmp_path / "z.safetensors", zero, {"model_type": MODEL})
    with pytest.raises(CheckpointError, match="cannot infer the gated_linear_rnn config"):
        convert.read(tmp_path / "z.safetensors")


# --- .pt and msgpack: hand-built files -------------------------------------------------------------------


def _nested(depth: int, leaf) -> dict:
    node = leaf
    for _ in range(depth):
        node = {"n": node}
    return node


def test_deeply_nested_pt_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # only torch.save (the C pickler) recurses; loading does not
    try:
        torch.save(_nested(1500, torch.zeros(2)), tmp_path / "deep.pt")
    finally:
        sys.setrecursionlimit(limit)
    torch.save(_nested(formats.MAX_DEPTH + 1, torch.zeros(2)), tmp_path / "over.pt")
    for name in ("deep.pt", "over.pt"):
        with pytest.raises(CheckpointError, match=f"nested deeper than {formats.MAX_DEPTH} levels"):
            formats.read_torch(tmp_path / name)
    torch.save(_nested(formats.MAX_DEPTH - 1, torch.ones(2)), tmp_path / "ok.pt")
    (name, value), = formats.read_torch(tmp_path / "ok.pt").items()
    assert name == ".".join(["n"] * (formats.MAX_DEPTH - 1))
    np.testing.assert_array_equal(value, [1.0, 1.0])


def test_pt_with_tensors_numpy_cannot_hold_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(2, 2).to_sparse()}, tmp_path / "sparse.pt")
    with pytest.raises(CheckpointError, match=r"dense tensors only; found: w \(a torch.float32 torch.sparse_coo"):
        formats.read_torch(tmp_path / "sparse.pt")
    torch.save({"w": torch.zeros(2, dtype=torch.float8_e4m3fn)}, tmp_path / "f8.pt")
    with pytest.raises(CheckpointError, match="NumPy cannot hold"):
        formats.read_torch(tmp_path / "f8.pt")


def test_clashing_flattened_names_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"a": {"b": torch.zeros(1)}, "a.b": torch.ones(1)}, tmp_path / "clash.pt")
    with pytest.raises(CheckpointError, match=r"two entries have the name 'a\.b'"):
        formats.read_torch(tmp_path / "clash.pt")
    torch.save({("a", 1): torch.zeros(1)}, tmp_path / "tuplekey.pt")
    with pytest.raises(CheckpointError, match="keys must be strings or integers"):
        formats.read_torch(tmp_path / "tuplekey.pt")


def test_deeply_nested_msgpack_is_refused(tmp_path):
    arr = _ndarray_ext([2], "float32", bytes(8))
    for depth in (formats.MAX_DEPTH + 1, 900, 100_000):  # over the cap; near Python's limit; over msgpack's stack
        raw = b"\x81\xa1n" * depth + msgpack.packb(arr)
        with pytest.raises(CheckpointError, match=r"nested deeper|StackError"):
            formats.read_flax(_write(tmp_path, "deep.msgpack", raw))
    raw = msgpack.packb(_nested(formats.MAX_DEPTH - 1, arr))
    (value,) = formats.read_flax(_write(tmp_path, "ok.msgpack", raw)).values()
    np.testing.assert_array_equal(value, [0.0, 0.0])


@pytest.mark.parametrize(("leaf", "match"), [
    (_ndarray_ext([2], "object", bytes(16)), "dtype 'object'"),
    (_ndarray_ext([2], "float32,float32", bytes(16)), "dtype 'float32,float32'"),
    (_ndarray_ext([2], "V8", bytes(16)), "dtype 'V8'"),
    (_ndarray_ext([3], "float32", bytes(8)), "needs 12 bytes, the record holds 8"),
    (_ndarray_ext([2**63, 2**63], "float32", bytes(8)), "needs"),
    (_ndarray_ext([-1], "float32", bytes(8)), "shape"),
    (_ndarray_ext([1.5], "float32", bytes(8)), "shape"),
    (_ndarray_ext([2], "float32", "text"), "needs 8 bytes"),
    (msgpack.ExtType(1, b"\x93\x91"), "corrupt array record"),
    (msgpack.ExtType(1, msgpack.packb([1, 2])), r"not a \(shape, dtype, bytes\) triple"),
    (msgpack.ExtType(2, msgpack.packb((1.0, 2.0))), "complex Python scalar"),
    (msgpack.ExtType(42, b""), "unknown msgpack extension type 42"),
])
def test_hostile_msgpack_array_records_are_refused(leaf, match, tmp_path):
    raw = msgpack.packb({"params": {"w": leaf}}, use_bin_type=True)
    with pytest.raises(CheckpointError, match=match):
        formats.read_flax(_write(tmp_path, "bad.msgpack", raw))


def test_msgpack_non_array_leaves_and_keys_are_refused(tmp_path):
    for tree, match in [({"w": 1.5}, r"expected arrays only; found: w \(a float\)"),
                        ({"w": [b"raw"]}, "w.0 \\(a bytes\\)"),
                        ({1.5: _ndarray_ext([0], "float32", b"")}, "keys must be strings or integers"),
                        ([1, 2], "expected a nested dict of arrays, got a list")]:
        raw = msgpack.packb(tree, use_bin_type=True)
        with pytest.raises(CheckpointError, match=match):
            formats.read_flax(_write(tmp_path, "leaf.msgpack", raw))


def test_flax_files_with_int_keys_scalars_and_chunks_still_load(tmp_path):
    flax_serialization = pytest.importorskip("flax.serialization")
    tree = {"layers": {0: {"w": np.arange(3, dtype=np.float32)}}, "s": np.float32(2.5)}
    path = _write(tmp_path, "ok.msgpack", flax_serialization.msgpack_serialize(tree))
    flat = formats.read_flax(path)
    np.testing.assert_array_equal(flat["layers.0.w"], [0, 1, 2])
    assert flat["s"].shape == () and flat["s"] == np.float32(2.5)
    # flax's chunked record for arrays over 1 GiB, built by hand at a small size
    chunked = {"__msgpack_chunked_array__": True, "shape": {"0": 2, "1": 2},
               "chunks": {"0": np.arange(3, dtype=np.float32), "1": np.array([3.0], np.float32)}}
    path = _write(tmp_path, "chunk.msgpack", flax_serialization.msgpack_serialize({"w": chunked}))
    np.testing.assert_array_equal(formats.read_flax(path)["w"], [[0, 1], [2, 3]])
    chunked["shape"] = {"0": 5}
    path = _write(tmp_path, "badchunk.msgpack", flax_serialization.msgpack_serialize({"w": chunked}))
    with pytest.raises(CheckpointError, match=r"shape \(5,\) holds 4 elements"):
        formats.read_flax(path)


# --- fuzzing ---------------------------------------------------------------------------------------------


@st.composite
def _mutated(draw, seed: bytes) -> bytes:
    """``seed`` after one to four of: bit flips, a truncation, a splice of random bytes, a copied chunk."""
    raw = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "duplicate", "byte"]))
        if not raw:
            break
        i = draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            raw[i] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0xC1, 0xDC, 0xDD, 0xDE, 0xDF, 0x5B, 0x7B]))
        elif kind == "truncate":
            del raw[i:]
        elif kind == "splice":
            j = draw(st.integers(i, min(len(raw), i + 64)))
            raw[i:j] = draw(st.binary(max_size=64))
        else:  # a copy of another stretch of the file, e.g. a second header or pickle frame
            j = draw(st.integers(0, len(raw) - 1))
            raw[i:i] = raw[j : j + draw(st.integers(1, 256))]
    return bytes(raw)


def _header_focused(seed: bytes):
    """Mutations aimed at the safetensors JSON header: edit one value inside it, keep the data section."""
    (n,) = struct.unpack("<Q", seed[:8])
    header, data = json.loads(seed[8 : 8 + n]), seed[8 + n :]
    names = sorted(header)
    json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
                               | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                               | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)

    @st.composite
    def edit(draw):
        head = json.loads(json.dumps(header))
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "__entry__", "__new__"]))
        value = draw(json_values | st.lists(st.integers(-4, 2**40), max_size=3))
        if field == "__entry__":
            head[name] = value
        elif field == "__new__":
            head[draw(st.text(max_size=6))] = value
        elif name == "__metadata__":
            head[name] = {field: value} if draw(st.booleans()) else value
        else:
            head[name][field] = value
        text = json.dumps(head, allow_nan=True).encode()  # allow_nan writes the NaN/Infinity the reader refuses
        return _safetensors_bytes(text, data)

    return edit()


def _fuzz(fmt: str, seeds: dict[str, bytes], config) -> None:
    strategy = _mutated(seeds[fmt])
    if fmt == "linrec":
        strategy = strategy | _header_focused(seeds[fmt])

    @config
    @given(raw=strategy)
    def run(raw):
        _read_hostile(fmt, raw)

    run()


def test_seeds_load(seeds):
    for fmt, raw in seeds.items():
        with tempfile.TemporaryDirectory() as home:
            path = Path(home) / f"x{SUFFIX[fmt]}"
            path.write_bytes(raw)
            assert convert.read(path, model=MODEL).model_type == MODEL


@pytest.mark.parametrize("fmt", ["linrec", "torch", "torch-legacy", "flax"])
def test_fuzz_reader(fmt, seeds):
    _fuzz(fmt, seeds, FAST)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["linrec", "torch", "torch-legacy", "flax"])
def test_fuzz_reader_long(fmt, seeds):
    _fuzz(fmt, seeds, SLOW)
