"""Huffman coding (huffman) and the compressed model file format (codec)."""

import os
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from pruning_kit import codec, models
from pruning_kit import huffman as hf
from pruning_kit.quant_storage import dequantized_model, quantize_tree

FAST = settings(max_examples=25, deadline=None)
SPECIAL = [0.0, -0.0, 0.5, -0.25, 1e-40, np.inf, -np.inf, np.nan, 3.0]  # 1e-40: subnormal


# --------------------------------------------------------------------------- helpers
def leaves(model):
    """Everything codec stores, by name, as numpy arrays."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.RngState)))
    return {"/".join(str(k.key) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(pure)}


def set_leaves(model, fn):
    """Replace every stored array ``x`` named ``name`` by ``fn(name, x)``; ``x`` is a
    ``jax.ShapeDtypeStruct`` for a model built with ``nnx.eval_shape``."""
    state = nnx.state(model, nnx.Not(nnx.RngState))

    def one(path, v):
        x = v if isinstance(v, jax.ShapeDtypeStruct) else np.asarray(v)
        return jnp.asarray(fn("/".join(str(k.key) for k in path), x), v.dtype)

    pure = jax.tree_util.tree_map_with_path(one, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model


def assert_same_bits(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name  # stricter than array_equal


def prune_and_share(w, sparsity, bits):
    """Magnitude-prune ``w`` and snap the survivors to ``2**bits`` shared values."""
    w = np.asarray(w, np.float32)
    keep = np.abs(w) > np.quantile(np.abs(w), sparsity)
    centroids = np.linspace(w[keep].min(), w[keep].max(), 2**bits, dtype=np.float32)
    snapped = centroids[np.abs(w[..., None] - centroids).argmin(-1)]
    return np.where(keep, snapped, 0.0).astype(np.float32)


def abstract(cls, *args, **kwargs):
    """Shapes only: tests replace every array, so skip compiling the random init."""
    return nnx.eval_shape(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0)))


def compressed_mlp(sizes=(64, 16, 10), sparsity=0.8, bits=4, seed=0):
    rng = np.random.default_rng(seed)
    m = abstract(models.MLP, sizes[0], sizes[1:-1], sizes[-1])
    return set_leaves(m, lambda n, x: prune_and_share(
        rng.normal(size=x.shape) / np.sqrt(x.shape[0]), sparsity, bits) if len(x.shape) == 2
        else rng.normal(size=x.shape) * 0.1)


def randomized_cnn(seed=0):
    """A tiny SmallCNN whose BatchNorm statistics are not the defaults."""
    rng = np.random.default_rng(seed)
    m = set_leaves(abstract(models.SmallCNN, 1, (4, 8), image_size=8),
                   lambda n, x: np.abs(rng.normal(size=x.shape)) + 0.1 if n.endswith("var")
                   else rng.normal(size=x.shape))
    m.eval()
    return m


@pytest.fixture
def small_file(tmp_path):
    path = codec.save(tmp_path / "small.pkc", compressed_mlp())
    return path, path.read_bytes()


# --------------------------------------------------------------------------- huffman
@FAST
@given(st.lists(st.integers(-5, 40), max_size=400))
def test_huffman_round_trip_and_within_one_bit_per_symbol_of_entropy(symbols):
    s = np.array(symbols, np.int64)
    stream = hf.encode(s)
    assert np.array_equal(hf.decode(stream), s)
    assert np.array_equal(hf.decode(stream.to_bytes()), s)
    assert stream.nbytes == len(stream.to_bytes())
    code = hf.huffman_code(s)
    counts = np.unique(s, return_counts=True)[1]
    bits = int((counts * code.lengths).sum())
    bound = hf.entropy_bits(s)
    assert bound - 1e-9 <= bits <= bound + len(s)  # Shannon: H <= L < H + 1 per symbol
    assert len(stream.payload) == (bits + 7) // 8
    if len(code.lengths) > 1:  # a complete prefix code: Kraft's sum is exactly 1
        assert sum(2.0 ** -int(n) for n in code.lengths) == 1.0


def test_huffman_edge_cases():
    assert hf.decode(hf.encode([])).size == 0 and hf.encode([]).payload == b""
    one = hf.encode(np.full(20, 7))
    assert one.lengths.tolist() == [1] and len(one.payload) == 3
    assert hf.decode(one).tolist() == [7] * 20
    assert hf.entropy_bits([7] * 20) == 0.0 and hf.overhead_pct([7] * 20) == float("inf")
    assert hf.entropy_bits([1, 2, 3, 4]) == 8.0


def test_huffman_large_alphabet_and_extreme_symbols(monkeypatch):
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.integers(-10**6, 10**6, 5000), [2**62, -(2**62)], np.zeros(3000)])
    s = s.astype(np.int64)
    blob = hf.encode(s).to_bytes()
    assert np.array_equal(hf.decode(blob), s)
    monkeypatch.setattr(hf, "_CHUNK_BITS", 61)  # codes straddle many decode chunks
    assert np.array_equal(hf.decode(blob), s)


def test_huffman_lengths_are_capped_and_code_stays_complete():
    counts = [1, 1]
    while len(counts) < 16:  # Fibonacci counts: the most skewed tree, depth 15
        counts.append(counts[-1] + counts[-2])
    s = np.repeat(np.arange(16), counts)
    assert hf.huffman_code(s).lengths.max() == 15
    code = hf.huffman_code(s, max_length=6)
    assert code.lengths.max() == 6
    assert sum(2.0 ** -int(n) for n in code.lengths) == 1.0
    assert np.array_equal(hf.decode(hf.encode(s, max_length=6)), s)
    with pytest.raises(ValueError, match="do not fit"):
        hf.huffman_code(np.arange(100), max_length=6)


def test_huffman_is_close_to_entropy_on_deep_compression_streams():
    rng = np.random.default_rng(0)
    gaps = rng.geometric(0.08, 25_000) - 1  # zero runs at 92% sparsity
    codes = np.clip(np.round(rng.normal(7.5, 2.5, 25_000)), 0, 15).astype(int)  # 16 centroids
    for s in (gaps, codes):
        assert 0 <= hf.overhead_pct(s) < 3.0
        assert np.array_equal(hf.decode(hf.encode(s)), s)


def test_huffman_rejects_bad_input_and_corrupt_streams():
    with pytest.raises(ValueError, match="integer symbols"):
        hf.encode(np.array([0.5, 1.0]))
    blob = hf.encode(np.arange(50) % 7).to_bytes()
    with pytest.raises(ValueError, match="truncated"):
        hf.decode(blob[:-1])
    with pytest.raises(ValueError, match="trailing"):
        hf.decode(blob + b"\x00")
    with pytest.raises(ValueError, match="truncated"):
        hf.decode(blob[:3])  # cut inside the table


# --------------------------------------------------------------------------- round trips
def test_mlp_round_trip_is_bit_exact_and_predicts_identically(tmp_path):
    m = compressed_mlp()
    path = codec.save(tmp_path / "m.pkc", m, metadata={"note": "test"})
    back = codec.load(path)
    assert_same_bits(leaves(m), leaves(back))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 64)), jnp.float32)
    assert np.array_equal(np.asarray(m(x)), np.asarray(back(x)))
    info = codec.inspect(path)
    enc = {r["leaf"]: r["encoding"] for r in info["streams"]}
    assert {enc["layers/0/kernel"], enc["layers/1/kernel"]} <= {"sparse-codebook",
                                                                "sparse-context"}
    assert enc["layers/0/bias"] == "raw" and info["metadata"] == {"note": "test"}
    assert sum(info["totals"].values()) == info["file_bytes"] == path.stat().st_size
    for r in info["streams"]:
        if r["entropy_bytes"] is not None:
            assert r["entropy_bytes"] <= r["payload_bytes"] + 1e-9


def test_cnn_round_trip_keeps_batch_stats(tmp_path):
    m = randomized_cnn()
    back = codec.load(codec.save(tmp_path / "cnn.pkc", m))
    assert_same_bits(leaves(m), leaves(back))
    assert not np.allclose(leaves(back)["bn1/mean"], 0.0)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 1)), jnp.float32)
    assert np.array_equal(np.asarray(m(x)), np.asarray(back(x)))


@pytest.mark.parametrize("encoding", ["int", "int-huffman", "auto"])
def test_quantized_kernels_load_as_their_dequantized_values(tmp_path, encoding):
    m = randomized_cnn()
    qtree = quantize_tree(m, 8)
    coding = {"conv2/kernel": encoding, "head/kernel": encoding}
    path = codec.save(tmp_path / "q.pkc", m, quantized=qtree, coding=coding)
    assert_same_bits(leaves(dequantized_model(m, qtree)), leaves(codec.load(path)))
    encodings = {r["leaf"]: r["encoding"] for r in codec.inspect(path)["streams"]}
    assert encodings["conv2/kernel"] in ({encoding} if encoding != "auto"
                                         else {"int", "int-huffman"})
    assert encodings["bn2/var"] == "raw"


def test_asymmetric_quantized_kernels_store_zero_points(tmp_path):
    m = compressed_mlp(sparsity=0.0)
    qtree = quantize_tree(m, 5, symmetric=False)
    path = codec.save(tmp_path / "a.pkc", m, quantized=qtree)
    assert_same_bits(leaves(dequantized_model(m, qtree)), leaves(codec.load(path)))
    assert "zero_point" in {r["stream"] for r in codec.inspect(path)["streams"]}


@FAST
@given(n_in=st.integers(1, 8), n_hidden=st.integers(1, 6),
       values=st.lists(st.sampled_from(SPECIAL), min_size=48, max_size=48),
       coding=st.sampled_from(["auto", "raw", "sparse-codebook", "sparse-context"]))
def test_any_values_round_trip_bit_exactly(tmp_path_factory, n_in, n_hidden, values, coding):
    m = abstract(models.MLP, n_in, (n_hidden,), 3)
    palette = np.array(values, np.float32)  # includes -0.0, nan, inf, subnormals, all-zero
    m = set_leaves(m, lambda n, x: np.resize(palette, x.shape))
    path = codec.save(tmp_path_factory.mktemp("p") / "m.pkc", m, coding=coding)
    assert_same_bits(leaves(m), leaves(codec.load(path)))


def test_lenet_sized_file_is_over_40x_smaller(tmp_path):
    m = compressed_mlp((784, 300, 100, 10), sparsity=0.92, bits=4)
    info = codec.inspect(codec.save(tmp_path / "lenet.pkc", m, coding="sparse-codebook"))
    assert info["dense_bytes"] == 266_610 * 4
    assert info["compression"] > 40
    overhead = {r["stream"]: r["overhead_pct"] for r in info["streams"]
                if r["leaf"] == "layers/0/kernel" and r["entropy_bytes"]}
    assert overhead["gaps"] < 3.0 and overhead["codes"] < 5.0  # 0.55% and 2.98% here
    # auto measures every encoding of every kernel: never larger than Huffman everywhere
    auto = codec.inspect(codec.save(tmp_path / "auto.pkc", m))
    assert auto["file_bytes"] <= info["file_bytes"]


# --------------------------------------------------------------------------- robustness
def expected_error(data: bytes, position: int) -> str:
    """What load must say when byte ``position`` of a valid file is flipped."""
    if position < 8:
        return "bad magic"
    if position < 10:
        return "unsupported format version"
    if position < 32:
        return "checksum mismatch in the header"
    mlen = struct.unpack_from("<I", data, 12)[0]
    if position < 32 + mlen:
        return "checksum mismatch in the manifest"
    manifest = __import__("json").loads(zlib.decompress(data[32:32 + mlen]))
    for entry in manifest["leaves"]:
        for stream, (offset, length, _) in entry["streams"].items():
            if offset <= position - 32 - mlen < offset + length:
                return f"checksum mismatch in stream '{entry['name']}:{stream}'"
    raise AssertionError(position)


def test_every_truncation_is_rejected(small_file, tmp_path):
    path, data = small_file
    bad = tmp_path / "cut.pkc"
    for n in range(len(data)):
        bad.write_bytes(data[:n])
        expected = f"truncated: expected {len(data)} bytes, found {n}" if n >= 32 \
            else f"truncated: expected at least 32 bytes, found {n}"
        with pytest.raises(ValueError, match=expected):
            codec.load(bad)
    bad.write_bytes(data + b"\x00")
    with pytest.raises(ValueError, match="1 unexpected trailing bytes"):
        codec.load(bad)


def test_every_flipped_byte_is_rejected_with_what_is_wrong(small_file, tmp_path):
    path, data = small_file
    assert len(data) < 2000
    bad = tmp_path / "flip.pkc"
    for position in range(len(data)):
        for mask in (0x01, 0xFF):
            flipped = bytearray(data)
            flipped[position] ^= mask
            bad.write_bytes(bytes(flipped))
            with pytest.raises(ValueError) as err:
                codec.load(bad)
            assert expected_error(data, position) in str(err.value), (position, mask)


def test_unknown_version_is_refused_with_both_versions(small_file, tmp_path):
    _, data = small_file
    head = bytearray(data[:28])
    head[8:10] = (7).to_bytes(2, "little")
    newer = bytes(head) + struct.pack("<I", zlib.crc32(head)) + data[32:]
    (tmp_path / "v7.pkc").write_bytes(newer)
    with pytest.raises(ValueError, match="unsupported format version 7.*reads versions 1, 2"):
        codec.load(tmp_path / "v7.pkc")


def as_version_1(data: bytes) -> bytes:
    """The same file as format version 1 wrote it: a plain-JSON manifest."""
    mlen = struct.unpack_from("<I", data, 12)[0]
    text = zlib.decompress(data[32:32 + mlen])
    streams = data[32 + mlen:]
    head = struct.pack("<8sHHIQI", codec.MAGIC, 1, 0, len(text), 32 + len(text) + len(streams),
                       zlib.crc32(text))
    return head + struct.pack("<I", zlib.crc32(head)) + text + streams


def test_version_1_files_still_load(tmp_path):
    path = codec.save(tmp_path / "v2.pkc", compressed_mlp(), coding="sparse-codebook")
    data = path.read_bytes()                 # (version 1 had no sparse-context)
    old = tmp_path / "v1.pkc"
    old.write_bytes(as_version_1(data))
    assert_same_bits(leaves(codec.load(path)), leaves(codec.load(old)))
    assert codec.inspect(old)["format_version"] == 1
    assert codec.inspect(path)["format_version"] == codec.FORMAT_VERSION == 2


def test_other_files_are_not_compressed_models(tmp_path):
    from pruning_kit import train

    npz = train.save_model(compressed_mlp(), tmp_path / "m.npz")
    with pytest.raises(ValueError, match="bad magic"):
        codec.load(npz)
    with pytest.raises(FileNotFoundError, match="codec.save"):
        codec.load(tmp_path / "missing.pkc")


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = codec.save(tmp_path / "m.pkc", compressed_mlp(seed=0))
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", crash)  # after the bytes are written, before rename
    with pytest.raises(OSError, match="disk full"):
        codec.save(path, compressed_mlp(seed=1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pkc"]


# --------------------------------------------------------------------------- bad arguments
def test_codebook_too_large_only_fails_when_forced(tmp_path):
    rng = np.random.default_rng(0)  # dense random kernels: 1024 distinct values in layer 0
    m = set_leaves(abstract(models.MLP, 64, (16,), 10), lambda n, x: rng.normal(size=x.shape))
    info = codec.inspect(codec.save(tmp_path / "auto.pkc", m))
    assert {r["encoding"] for r in info["streams"]} == {"raw"}
    for coding in ("sparse-codebook", {"layers/0/kernel": "sparse-codebook"}):
        with pytest.raises(ValueError, match="layers/0/kernel has 1024 distinct non-zero"
                                             " values.*at most 256"):
            codec.save(tmp_path / "forced.pkc", m, coding=coding)
    assert not (tmp_path / "forced.pkc").exists()


def test_bad_coding_arguments(tmp_path):
    m = compressed_mlp()
    with pytest.raises(ValueError, match="not leaves of the model"):
        codec.save(tmp_path / "m.pkc", m, coding={"layers/9/kernel": "raw"})
    with pytest.raises(ValueError, match="Unknown encoding"):
        codec.save(tmp_path / "m.pkc", m, coding={"layers/0/kernel": "zip"})
    with pytest.raises(ValueError, match="coding must be one of"):
        codec.save(tmp_path / "m.pkc", m, coding="huffman")
    with pytest.raises(ValueError, match="quantized=quantize_tree"):
        codec.save(tmp_path / "m.pkc", m, coding={"layers/0/kernel": "int"})
    with pytest.raises(ValueError, match="QuantizedTensor in quantized="):
        codec.save(tmp_path / "m.pkc", m, quantized=quantize_tree(m, 8),
                   coding={"layers/0/kernel": "raw"})
    with pytest.raises(ValueError, match="JSON"):
        codec.save(tmp_path / "m.pkc", m, metadata={"x": object()})


class Tiny(nnx.Module):
    """A user's model: a Linear, dropout (RNG state, not stored) and a .config."""

    def __init__(self, width: int = 3, *, rngs: nnx.Rngs):
        self.config = {"width": width}
        self.linear = nnx.Linear(4, width, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.linear(x))


def test_user_model_reloads_with_like_or_registered(tmp_path, monkeypatch):
    m = Tiny(5, rngs=nnx.Rngs(1))
    own = codec.save(tmp_path / "own.pkc", m)            # your own class: no registry needed
    with pytest.raises(ValueError, match="like="):
        codec.load(own)
    again = codec.load(own, like=Tiny(5, rngs=nnx.Rngs(9)))
    assert_same_bits(leaves(m), leaves(again))
    with pytest.raises(ValueError, match="like= is a"):
        codec.load(own, like=nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    monkeypatch.setitem(models.MODEL_CLASSES, "Tiny", Tiny)
    path = codec.save(tmp_path / "t.pkc", m)
    back = codec.load(path)
    assert_same_bits(leaves(m), leaves(back))
    m.eval()
    x = jnp.ones((2, 4))
    assert np.array_equal(np.asarray(m(x)), np.asarray(back(x)))
    monkeypatch.delitem(models.MODEL_CLASSES, "Tiny")
    with pytest.raises(ValueError, match="not registered.*MODEL_CLASSES\\['Tiny'\\]"):
        codec.load(path)


def test_config_that_does_not_rebuild_the_model_is_refused_at_save(tmp_path):
    m = compressed_mlp()
    m._config = (("in_features", 64), ("hidden", (32,)), ("num_classes", 10))
    with pytest.raises(ValueError, match="layers/0/.*: build.*gives shape"):
        codec.save(tmp_path / "m.pkc", m)


def rewritten(data: bytes, edit) -> bytes:
    """The file with its manifest and streams passed through ``edit(manifest, streams)``
    and every length and checksum recomputed: corruption the CRCs cannot catch."""
    import json
    mlen = struct.unpack_from("<I", data, 12)[0]
    manifest = json.loads(zlib.decompress(data[32:32 + mlen]))
    base = 32 + mlen
    streams = {(e["name"], s): data[base + o:base + o + n]
               for e in manifest["leaves"] for s, (o, n, _) in e["streams"].items()}
    edit(manifest, streams)
    blobs, offset = [], 0
    for e in manifest["leaves"]:
        for s in e["streams"]:
            blob = streams[e["name"], s]
            e["streams"][s] = [offset, len(blob), zlib.crc32(blob)]
            blobs.append(blob)
            offset += len(blob)
    text = zlib.compress(json.dumps(manifest).encode())
    head = struct.pack("<8sHHIQI", codec.MAGIC, 2, 0, len(text), 32 + len(text) + offset,
                       zlib.crc32(text))
    return head + struct.pack("<I", zlib.crc32(head)) + text + b"".join(blobs)


def test_context_streams_that_pass_the_checksums_but_lie_are_refused(tmp_path):
    path = codec.save(tmp_path / "m.pkc", compressed_mlp(), coding="sparse-context")
    data, bad = path.read_bytes(), tmp_path / "bad.pkc"
    leaf = "layers/0/kernel"

    def context(m, s):
        next(e for e in m["leaves"] if e["name"] == leaf)["codes_context"] = "diagonal"

    def cut(m, s):
        s[leaf, "codes"] = s[leaf, "codes"][:-1]

    def longer(m, s):
        s[leaf, "positions"] = s[leaf, "positions"] + b"\x00"

    def huge_codebook(m, s):
        s[leaf, "codebook"] = b"\x01\x00\x00\x00" * 300

    for edit, message in ((context, "codes_context is 'diagonal'"),
                          (cut, "index stream ends before|outside a codebook"),
                          (longer, "position stream has 1 bytes more"),
                          (huge_codebook, "codebook of 1200 bytes is not 1 to 256")):
        bad.write_bytes(rewritten(data, edit))
        with pytest.raises(ValueError, match=message):
            codec.load(bad)
    bad.write_bytes(rewritten(data, lambda m, s: None))        # the helper itself is exact
    assert_same_bits(leaves(codec.load(path)), leaves(codec.load(bad)))
