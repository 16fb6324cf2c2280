"""Compressed model files: pruned, weight-shared and Huffman-coded weights in ONE file.

:func:`save` writes a model in the form Deep Compression (Han et al., 2016) ships it, and
:func:`load` rebuilds a runnable Flax NNX model from that file alone, bit for bit.
:func:`inspect` says where every byte went. Each array of ``nnx.state(model)`` (weights
and BatchNorm statistics; RNG state is not stored) is written with one encoding:

``"sparse-codebook"``
    For a pruned, weight-shared kernel: its non-zero entries take at most
    :data:`MAX_CODEBOOK` distinct values. Three streams: ``codebook`` (the distinct values,
    raw), ``codes`` (each non-zero's index into the codebook, Huffman-coded) and ``gaps``
    (where the non-zeros are: the run of zeros before each one, Huffman-coded). The gaps
    are coded directly over whatever run lengths occur -- no cap and no filler zeros as in
    the paper's 4/8-bit relative indices -- so decoding is exact and the code table lists
    only the run lengths that occur. "Zero" means all bits zero: ``-0.0`` is a value.
``"sparse-context"``
    The same kernels, coded closer to what they hold: ``positions`` is the non-zero
    bitmap and ``codes`` the codebook indices, both range-coded with probabilities
    learnt per context (neighbouring weights, row and column densities;
    :mod:`pruning_kit.context_coding`), which can get below the order-0 entropy that
    bounds Huffman coding (it did in the course's LeNet-300-100, for the file as a whole).
    No code tables are stored: the decoder learns the same probabilities.
``"int"`` / ``"int-huffman"``
    For a :class:`~pruning_kit.quant_storage.QuantizedTensor` handed in ``quantized=``:
    ``codes`` (packed as stored, or Huffman-coded), ``scale`` and, if asymmetric,
    ``zero_point``. :func:`load` gives the dequantized float32 kernel.
``"raw"``
    The array's bytes (biases, BatchNorm scale/bias/mean/var, dense kernels).

``coding="auto"`` codes a float kernel (ndim >= 2) with at most 256 distinct non-zero
values with the smallest of ``sparse-codebook``, ``sparse-context`` and ``raw`` (all three
are written and measured), every other array raw, and a quantized leaf with the smaller
of ``int``/``int-huffman``.

File layout (little-endian)::

    magic (8) | version u16 | reserved u16 | manifest length u32 | file length u64
    | manifest CRC-32 u32 | header CRC-32 u32      -- 32-byte header
    manifest: compact JSON, deflated (zlib) -- kind, config, metadata, leaves with
              shapes, dtypes, encodings and each stream's [offset, length, CRC-32]
    streams:  the bytes of every stream, in manifest order

Version 1 files (plain-JSON manifest, no ``sparse-context``) still load. Every byte is
covered by a check (magic, version, header CRC, file length, manifest CRC, one CRC per
stream), so a truncated or corrupted file raises a ``ValueError`` saying what is wrong
instead of loading into a wrong model. Files are written atomically.

Used by ``notebooks/05_full_pipeline.ipynb`` (the Deep Compression chain).

Examples:
    >>> import tempfile
    >>> from pruning_kit import models
    >>> m = models.MLP(64, (16,), rngs=nnx.Rngs(0))
    >>> k = m.layers[0].kernel
    >>> k[...] = jnp.where(jnp.abs(k[...]) > 0.2, jnp.sign(k[...]) * 0.25, 0.0)  # 2 values
    >>> p = save(Path(tempfile.mkdtemp()) / "m.pkc", m)
    >>> info = inspect(p)
    >>> info["dense_bytes"], info["file_bytes"]      # 117 non-zeros of 1,024 in layers/0
    (4840, 1221)
    >>> [(r["stream"], r["bytes"]) for r in info["streams"] if r["leaf"] == "layers/0/kernel"]
    [('codebook', 8), ('codes', 18), ('positions', 85)]
    >>> bool(jnp.array_equal(load(p).layers[0].kernel[...], k[...]))
    True
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruning_kit import __version__, validate
from pruning_kit import context_coding as cc
from pruning_kit import data as data_lib
from pruning_kit import graph as graph_lib
from pruning_kit import huffman as hf
from pruning_kit import models as models_lib
from pruning_kit.quant_storage import QuantizedTensor, packed_nbytes, unpack
from pruning_kit.quantize import QParams, dequantize, storage_dtype
from pruning_kit.tree import key_name

__all__ = ["ENCODINGS", "FORMAT_VERSION", "MAGIC", "MAX_CODEBOOK", "inspect", "load", "save"]

#: First bytes of every file (PNG-style: a non-ASCII byte, then CR LF, ^Z, LF catch
#: files mangled by text-mode transfers).
MAGIC = b"\x89PKC\r\n\x1a\n"
FORMAT_VERSION = 2
#: Versions :func:`load` reads (1: the manifest was plain JSON).
READABLE_VERSIONS = (1, 2)
MAX_CODEBOOK = 256
ENCODINGS = ("raw", "sparse-codebook", "sparse-context", "int", "int-huffman")
_HEAD = struct.Struct("<8sHHIQI")  # magic, version, reserved, manifest len, file len, CRC
_HEADER_SIZE = _HEAD.size + 4  # + CRC-32 of the fields above
_CATEGORY = {"data": "values", "codes": "values", "codebook": "codebooks",
             "scale": "codebooks", "zero_point": "codebooks", "gaps": "positions",
             "positions": "positions"}
_HUFFMAN = {("sparse-codebook", "codes"), ("sparse-codebook", "gaps"), ("int-huffman", "codes")}
_CONTEXT = {("sparse-context", "codes"), ("sparse-context", "positions")}
_MAX_MANIFEST = 64 << 20  # bytes a manifest may inflate to (a corrupt one may claim more)
_RNG = nnx.Not(nnx.RngState)  # everything but RNG state is stored


# --------------------------------------------------------------------------- encodings
def _bits_view(x: np.ndarray) -> np.ndarray:
    """The flat array as unsigned integers of the same width (bit patterns)."""
    return np.ascontiguousarray(x).reshape(-1).view(f"u{x.dtype.itemsize}")


def _distinct_nonzero(x: np.ndarray) -> int:
    return len(np.unique(_bits_view(x)[_bits_view(x) != 0]))


def _shared(name: str, x: np.ndarray, encoding: str) -> tuple[np.ndarray, ...]:
    """(flat bit patterns, positions of the non-zeros, codebook, each one's index)."""
    flat = _bits_view(x)
    pos = np.flatnonzero(flat)
    codebook, codes = np.unique(flat[pos], return_inverse=True)
    if len(codebook) > MAX_CODEBOOK:
        raise ValueError(f"{name} has {len(codebook)} distinct non-zero values, but "
                         f"{encoding} stores at most {MAX_CODEBOOK}. Share weights first "
                         "(pruning_kit.codebook.kmeans_codebook), or code this leaf raw: "
                         f"coding={{{name!r}: 'raw'}}.")
    return flat, pos, codebook, codes


def _sparse_codebook(name: str, x: np.ndarray) -> tuple[dict[str, bytes], dict]:
    _, pos, codebook, codes = _shared(name, x, "sparse-codebook")
    gaps = np.diff(pos, prepend=-1) - 1  # zeros skipped before each non-zero
    return ({"codebook": codebook.tobytes(), "codes": hf.encode(codes).to_bytes(),
             "gaps": hf.encode(gaps).to_bytes()}, {"nnz": len(pos)})


def _sparse_context(name: str, x: np.ndarray) -> tuple[dict[str, bytes], dict]:
    flat, pos, codebook, codes = _shared(name, x, "sparse-context")
    indices = np.full(flat.shape, -1, np.int64)
    indices[pos] = codes
    indices = indices.reshape(x.shape)
    options = {nb: cc.encode_indices(indices, max(len(codebook), 1), neighbour=nb)
               for nb in (False, True)}     # the index context is chosen by measuring
    neighbour = len(options[True]) < len(options[False])
    return ({"codebook": codebook.tobytes(), "codes": options[neighbour],
             "positions": cc.encode_bitmap(indices >= 0)},
            {"nnz": len(pos), "codes_context": "neighbour" if neighbour else "none"})


def _int(name: str, x: np.ndarray, qt: QuantizedTensor, huffman: bool
         ) -> tuple[dict[str, bytes], dict]:
    qp = qt.qparams
    if tuple(qt.shape) != x.shape or x.dtype != np.float32:
        raise ValueError(f"{name}: the QuantizedTensor has shape {tuple(qt.shape)}, the model's "
                         f"leaf is {x.dtype} {x.shape}; build quantized= from this model.")
    data = np.asarray(qt.data)
    if not huffman:
        codes = data.tobytes()
    else:
        codes = hf.encode(np.asarray(unpack(data, qp.bits, qt.shape, qp.symmetric))).to_bytes()
    scale = np.asarray(qp.scale, np.float32)
    streams = {"codes": codes, "scale": scale.tobytes()}
    if qp.zero_point is not None:
        streams["zero_point"] = np.asarray(qp.zero_point, np.int32).tobytes()
    return streams, {"bits": int(qp.bits), "symmetric": bool(qp.symmetric), "axis": qp.axis,
                     "scale_shape": list(scale.shape)}


def _encode_leaf(name: str, x: np.ndarray, qt: QuantizedTensor | None, requested: str
                 ) -> tuple[str, dict[str, bytes], dict]:
    if qt is not None:
        if requested not in ("auto", "int", "int-huffman"):
            raise ValueError(f"{name} is a QuantizedTensor in quantized=; code it as 'int' or "
                             f"'int-huffman' (or 'auto'), not {requested!r}.")
        options = ["int", "int-huffman"] if requested == "auto" else [requested]
    elif requested in ("int", "int-huffman"):
        raise ValueError(f"{name}: {requested!r} stores integer codes; pass them with "
                         "quantized=quantize_tree(model, bits) (pruning_kit.quant_storage).")
    elif requested == "auto":
        kernel = x.ndim >= 2 and jnp.issubdtype(x.dtype, jnp.floating)
        options = ["sparse-codebook", "sparse-context", "raw"] \
            if kernel and _distinct_nonzero(x) <= MAX_CODEBOOK else ["raw"]
    else:
        options = [requested]
    best = None
    for enc in options:
        if enc == "raw":
            streams, info = {"data": np.ascontiguousarray(x).tobytes()}, {}
        elif enc == "sparse-codebook":
            streams, info = _sparse_codebook(name, x)
        elif enc == "sparse-context":
            streams, info = _sparse_context(name, x)
        else:
            streams, info = _int(name, x, qt, enc == "int-huffman")
        size = sum(len(b) for b in streams.values())
        if best is None or size < best[0]:
            best = (size, enc, streams, info)
    return best[1:]


def _huffman(blob: bytes, what: str) -> np.ndarray:
    try:
        return hf.decode(blob)
    except ValueError as err:
        raise ValueError(f"stream {what!r}: {err}") from err


def _codebook(name: str, blob: bytes, dtype: np.dtype) -> np.ndarray:
    size = len(blob) // dtype.itemsize
    if len(blob) % dtype.itemsize or not 1 <= size <= MAX_CODEBOOK:
        raise ValueError(f"{name}: a codebook of {len(blob)} bytes is not 1 to {MAX_CODEBOOK} "
                         f"{dtype} values; the file is corrupt.")
    return np.frombuffer(blob, np.dtype(f"u{dtype.itemsize}"))


def _decode_leaf(entry: dict, blobs: dict[str, bytes]) -> np.ndarray:
    name, enc = entry["name"], entry["encoding"]
    shape, dtype = tuple(entry["shape"]), jnp.dtype(entry["dtype"])
    size = int(np.prod(shape))
    if enc == "raw":
        if len(blobs["data"]) != size * dtype.itemsize:
            raise ValueError(f"{name}: {len(blobs['data'])} bytes for {dtype} {shape}.")
        return np.frombuffer(blobs["data"], dtype).reshape(shape).copy()
    if enc == "sparse-codebook":
        uint = np.dtype(f"u{dtype.itemsize}")
        codebook = (_codebook(name, blobs["codebook"], dtype) if entry["nnz"]
                    else np.zeros(0, uint))
        codes = _huffman(blobs["codes"], f"{name}:codes")
        gaps = _huffman(blobs["gaps"], f"{name}:gaps")
        pos = np.cumsum(gaps + 1) - 1
        if not (len(codes) == len(gaps) == entry["nnz"]) or (len(codes) and (
                codes.min() < 0 or codes.max() >= len(codebook) or gaps.min() < 0
                or pos[-1] >= size)):
            raise ValueError(f"{name}: its codes and gaps do not describe a {shape} array.")
        flat = np.zeros(size, uint)
        flat[pos] = codebook[codes]
        return flat.view(dtype).reshape(shape)
    if enc == "sparse-context":
        uint = np.dtype(f"u{dtype.itemsize}")
        if entry.get("codes_context") not in ("neighbour", "none"):
            raise ValueError(f"{name}: codes_context is {entry.get('codes_context')!r}, not "
                             "'neighbour' or 'none'; the file is corrupt.")
        codebook = (_codebook(name, blobs["codebook"], dtype) if entry["nnz"]
                    else np.zeros(0, uint))
        try:
            mask = cc.decode_bitmap(blobs["positions"], shape)
            indices = cc.decode_indices(blobs["codes"], mask, max(len(codebook), 1),
                                        neighbour=entry["codes_context"] == "neighbour")
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
        if int(mask.sum()) != entry["nnz"]:
            raise ValueError(f"{name}: {int(mask.sum())} non-zeros decoded, "
                             f"{entry['nnz']} stored.")
        flat = np.zeros(size, uint)
        keep = mask.reshape(-1)
        flat[keep] = codebook[indices.reshape(-1)[keep]]
        return flat.view(dtype).reshape(shape)
    bits, symmetric = entry["bits"], entry["symmetric"]
    if enc == "int":
        packed = np.frombuffer(blobs["codes"], np.uint8)
        if packed.size != packed_nbytes(size, bits):
            raise ValueError(f"{name}: {packed.size} code bytes for {shape} at {bits} bits.")
        q = unpack(packed, bits, shape, symmetric)
    else:
        q = _huffman(blobs["codes"], f"{name}:codes")
        if q.size != size:
            raise ValueError(f"{name}: {q.size} codes for {shape}.")
        q = jnp.asarray(q.astype(storage_dtype(bits, symmetric)).reshape(shape))
    scale_shape = tuple(entry["scale_shape"])
    scale = jnp.asarray(np.frombuffer(blobs["scale"], np.float32).reshape(scale_shape))
    zp = blobs.get("zero_point")
    zp = None if zp is None else jnp.asarray(np.frombuffer(zp, np.int32).reshape(scale_shape))
    return np.asarray(dequantize(q, QParams(scale, zp, bits, symmetric, entry["axis"])))


# --------------------------------------------------------------------------- model <-> leaves
def _leaf_name(path: tuple) -> str:
    return "/".join(key_name(key) for key in path)


def _leaves(model: nnx.Module) -> dict[str, Any]:
    """``{"layers/0/kernel": array, ...}`` for everything in the model but RNG state."""
    pure = nnx.to_pure_dict(nnx.state(model, _RNG))
    return {_leaf_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(pure)}


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _identity(model: nnx.Module) -> tuple[str, dict | None]:
    """``(kind, config)``: a registered class with its config, or your own class's full
    name and ``None`` (the file's shapes are enough, given ``like=`` at load time)."""
    kind = type(model).__name__
    config = getattr(model, "config", None)
    if models_lib.MODEL_CLASSES.get(kind) is type(model) and isinstance(config, dict):
        return kind, config
    return _class_name(type(model)), None


def _check_rebuild(kind: str, config: dict, leaves: dict[str, Any]) -> None:
    """Fail at save time, not load time, if build(kind, config) would not fit the arrays."""
    shadow = _leaves(nnx.eval_shape(lambda: models_lib.build(kind, config)))
    if set(shadow) != set(leaves):
        raise ValueError(f"build({kind!r}, model.config) gives arrays {sorted(shadow)}, the "
                         f"model has {sorted(leaves)}; make .config describe the model.")
    for name, v in shadow.items():
        if tuple(v.shape) != np.shape(leaves[name]):
            raise ValueError(f"{name}: build({kind!r}, model.config) gives shape {v.shape}, "
                             f"the model has {np.shape(leaves[name])}; make .config "
                             "describe the model (e.g. its pruned widths).")


def _quantized_leaves(quantized: Any, leaves: dict) -> dict[str, QuantizedTensor]:
    if quantized is None:
        return {}
    is_qt = lambda v: isinstance(v, QuantizedTensor)  # noqa: E731
    found = {_leaf_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(quantized,
                                                                             is_leaf=is_qt)
             if is_qt(v)}
    if not found or set(found) - set(leaves):
        raise ValueError(f"quantized= names {sorted(found)}, not leaves of the model "
                         f"({sorted(leaves)}); pass quantize_tree(model, bits).")
    return found


def _requested(coding: Any, leaves: dict, quantized: dict) -> dict[str, str]:
    choices = ("auto", "raw", "sparse-codebook", "sparse-context")
    if isinstance(coding, str):
        if coding not in choices:
            raise ValueError(f"coding must be one of {choices} or a dict by leaf name, got "
                             f"{coding!r}.")
        kernels = {n for n, v in leaves.items() if np.ndim(v) >= 2 and n not in quantized}
        return {n: coding if n in kernels else "auto" for n in leaves}
    if not isinstance(coding, Mapping):
        raise ValueError(f"coding must be a string or a dict by leaf name, got {coding!r}.")
    unknown = sorted(set(coding) - set(leaves))
    if unknown:
        raise ValueError(f"coding names {unknown}, which are not leaves of the model; "
                         f"leaves: {sorted(leaves)}.")
    bad = {n: e for n, e in coding.items() if e not in ENCODINGS + ("auto",)}
    if bad:
        raise ValueError(f"Unknown encoding(s) {bad}; choose from {ENCODINGS + ('auto',)}.")
    return {n: coding.get(n, "auto") for n in leaves}


# --------------------------------------------------------------------------- save / load
def save(path: str | os.PathLike, model: nnx.Module, *, coding: str | Mapping[str, str] = "auto",
         quantized: Any = None, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as one compressed file (atomically: temp file, fsync, rename).

    Args:
        path: where to write (conventionally ``*.pkc``).
        model: any NNX model. A class registered in ``pruning_kit.models.MODEL_CLASSES``
            with a ``.config`` reloads from the file alone; your own class reloads with
            ``load(path, like=an_instance)`` (the file records every array's shape).
            Pruned (zeros) and weight-shared (few distinct values) kernels compress, the
            rest is stored raw.
        coding: ``"auto"`` (see the module docstring), or ``"raw"`` / ``"sparse-codebook"``
            / ``"sparse-context"`` for every kernel (ndim >= 2; other arrays auto), or a dict
            ``{"layers/0/kernel": "sparse-codebook", ...}`` (unnamed leaves auto).
        quantized: optional ``quantize_tree(model, bits)`` output; its
            :class:`QuantizedTensor` leaves are stored as integer codes (``"int"``).
        metadata: JSON-serialisable notes stored in the manifest.

    Returns:
        The path written.

    Raises:
        ValueError: unregistered model class, a ``.config`` that does not rebuild the
            model, unknown leaf names or encodings, or a forced ``sparse-codebook`` leaf
            with more than :data:`MAX_CODEBOOK` distinct non-zero values.
    """
    validate.path_then_model("codec.save(path, model)", path, model)
    kind, config = _identity(model)
    leaves = {n: np.asarray(v) for n, v in _leaves(model).items()}
    if config is not None:
        _check_rebuild(kind, config, leaves)
    qts = _quantized_leaves(quantized, leaves)
    requested = _requested(coding, leaves, qts)
    entries, blobs, offset = [], [], 0
    for name, x in leaves.items():
        enc, streams, info = _encode_leaf(name, x, qts.get(name), requested[name])
        entry = {"name": name, "encoding": enc, "shape": list(x.shape), "dtype": str(x.dtype),
                 **info, "streams": {}}
        for stream, blob in streams.items():
            entry["streams"][stream] = [offset, len(blob), zlib.crc32(blob)]
            blobs.append(blob)
            offset += len(blob)
        entries.append(entry)
    manifest = {"kind": kind, "config": config, "writer": f"pruning_kit {__version__}",
                "metadata": metadata or {}, "leaves": entries}
    try:
        text = zlib.compress(json.dumps(manifest, separators=(",", ":"),
                                        allow_nan=False).encode(), 9)
    except (TypeError, ValueError) as err:
        raise ValueError(f"model.config and metadata must be JSON-serialisable: {err}") from err
    size = _HEADER_SIZE + len(text) + offset
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, 0, len(text), size, zlib.crc32(text))
    head += struct.pack("<I", zlib.crc32(head))
    path = Path(path)
    data_lib.atomic_write(path, b"".join([head, text, *blobs]))
    return path


def _read(path: str | os.PathLike) -> tuple[dict, dict[tuple[str, str], bytes], int, int]:
    """Check every byte of the file; return (manifest, streams, manifest length, version)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No compressed model at {path}; write one with "
                                "pruning_kit.codec.save(path, model).")
    data = path.read_bytes()
    n = len(data)

    def fail(what: str) -> ValueError:
        return ValueError(f"{path}: {what}")

    def truncated(expected: int, at_least: str = "") -> ValueError:
        return fail(f"truncated: expected {at_least}{expected} bytes, found {n}. The file "
                    "was cut short (interrupted copy?); save it again.")

    if data[:len(MAGIC)] != MAGIC[:n]:
        raise fail("not a pruning_kit compressed file (bad magic); write one with "
                   "pruning_kit.codec.save (checkpoints of train.save_model are .npz).")
    if n < len(MAGIC) + 2:
        raise truncated(_HEADER_SIZE, "at least ")
    version = int.from_bytes(data[8:10], "little")
    if version not in READABLE_VERSIONS:
        raise fail(f"unsupported format version {version}; this pruning_kit reads versions "
                   f"{', '.join(map(str, READABLE_VERSIONS))}. Upgrade pruning_kit (or the file "
                   "is corrupt).")
    if n < _HEADER_SIZE:
        raise truncated(_HEADER_SIZE, "at least ")
    _, _, reserved, mlen, size, mcrc = _HEAD.unpack_from(data)
    if zlib.crc32(data[:_HEAD.size]) != int.from_bytes(data[_HEAD.size:_HEADER_SIZE], "little"):
        raise fail("checksum mismatch in the header; the file is corrupt.")
    if n < size:
        raise truncated(size)
    if n > size:
        raise fail(f"expected {size} bytes, found {n}: {n - size} unexpected trailing bytes.")
    text = data[_HEADER_SIZE:_HEADER_SIZE + mlen]
    if reserved:
        raise fail(f"reserved header field is {reserved}, not 0; not written by this format.")
    if _HEADER_SIZE + mlen > size or zlib.crc32(text) != mcrc:
        raise fail("checksum mismatch in the manifest; the file is corrupt.")
    try:
        if version >= 2:
            inflate = zlib.decompressobj()
            text = inflate.decompress(text, _MAX_MANIFEST)
            if inflate.unconsumed_tail:
                raise ValueError(f"the manifest inflates to more than {_MAX_MANIFEST:,} bytes")
        manifest = json.loads(text)
    except (ValueError, zlib.error) as err:
        raise fail(f"the manifest is not valid JSON ({err}).") from err
    start, streams = _HEADER_SIZE + mlen, {}
    for entry in manifest["leaves"]:
        for stream, (offset, length, crc) in entry["streams"].items():
            blob = data[start + offset:start + offset + length]
            if len(blob) != length or zlib.crc32(blob) != crc:
                raise fail(f"checksum mismatch in stream '{entry['name']}:{stream}'; the file "
                           "is corrupt.")
            streams[entry["name"], stream] = blob
    return manifest, streams, mlen, version


def load(path: str | os.PathLike, *, like: nnx.Module | None = None) -> nnx.Module:
    """Rebuild the model :func:`save` wrote, in eval mode, with exactly the saved arrays
    (quantized leaves dequantized).

    Args:
        path: a file written by :func:`save`.
        like: for a model of your own class (not in ``models.MODEL_CLASSES``): any
            instance of that class -- e.g. a freshly built one, before pruning. Its
            structure is reused and every array takes the file's shape and values, so a
            model whose channels were removed reloads at its smaller size.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not such a file, unsupported version, truncated or corrupt (the message
            names the check that failed), or a model of your own class without ``like=``
            (or with ``like=`` of another class or other arrays).

    Examples:
        >>> import tempfile
        >>> class Net(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.fc = nnx.Linear(3, 2, rngs=rngs)
        ...     def __call__(self, x):
        ...         return self.fc(x)
        >>> p = save(Path(tempfile.mkdtemp()) / "net.pkc", Net(nnx.Rngs(1)))
        >>> load(p, like=Net(nnx.Rngs(0))).fc.kernel.shape
        (3, 2)
    """
    manifest, streams, _, _ = _read(path)
    kind, config = manifest["kind"], manifest["config"]
    if config is None:
        if like is None:
            raise ValueError(f"{path} holds a {kind} (your own class): pass like= an instance "
                             "of it, e.g. load(path, like=MyNet(nnx.Rngs(0))); the file "
                             "supplies every array and its shape.")
        if _class_name(type(like)) != kind:
            raise ValueError(f"{path} holds a {kind}; like= is a {_class_name(type(like))}.")
        model = nnx.clone(like)      # like= only lends its structure: it is never changed
    elif kind not in models_lib.MODEL_CLASSES:
        raise ValueError(f"{path} holds a {kind}, which is not registered in "
                         "pruning_kit.models.MODEL_CLASSES; import or define it and run "
                         f"`MODEL_CLASSES[{kind!r}] = {kind}` before loading.")
    else:
        # Shapes only (no random initialisation to run), unless the model keeps RNG
        # state: that is not stored, so it needs a real build.
        model = nnx.eval_shape(lambda: models_lib.build(kind, config))
        if jax.tree.leaves(nnx.state(model, nnx.RngState)):
            model = models_lib.build(kind, config)
    state = nnx.state(model, _RNG)
    flat, treedef = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))
    entries = {e["name"]: e for e in manifest["leaves"]}
    names = [_leaf_name(p) for p, _ in flat]
    if set(names) != set(entries):
        raise ValueError(f"{path}: stored arrays {sorted(entries)} do not match a {kind} with "
                         f"config {config} ({sorted(names)}).")
    values = []
    for name, (_, leaf) in zip(names, flat, strict=True):
        e = entries[name]
        if config is not None and (tuple(e["shape"]) != tuple(leaf.shape)
                                   or jnp.dtype(e["dtype"]) != leaf.dtype):
            raise ValueError(f"{path}: {name} is {e['dtype']} {tuple(e['shape'])}, a {kind} "
                             f"with config {config} expects {leaf.dtype} {leaf.shape}.")
        blobs = {s: streams[name, s] for s in e["streams"]}
        x = _decode_leaf(e, blobs)       # your own class (no config): the file gives shapes
        if x.dtype != leaf.dtype or (config is not None and x.shape != leaf.shape):
            raise ValueError(f"{path}: {name} is {x.dtype} {x.shape}, a {kind} with config "
                             f"{config} expects {leaf.dtype} {leaf.shape}.")
        values.append(jnp.asarray(x))
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, values))
    nnx.update(model, state)
    if config is None:
        graph_lib.sync_widths(model)
    model.eval()
    return model


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """Byte accounting of a compressed file, per stream and per category.

    Returns:
        A dict with ``kind``, ``config``, ``metadata``, ``format_version`` (of the file),
        ``file_bytes``, ``dense_bytes``
        (the arrays uncompressed), ``compression`` (their ratio), ``totals`` -- bytes by
        category: ``values`` (what each stored weight is: codebook indices, int codes, raw
        arrays), ``positions`` (where the non-zeros are), ``codebooks`` (codebooks and
        quantization scales) and ``metadata`` (header, manifest, Huffman tables); they sum
        to ``file_bytes`` -- ``bits_per_nonzero`` (``positions`` and ``values`` bits per
        non-zero weight over the sparse kernels, Huffman code tables included; empty if
        there are none) and ``streams``,
        one row per stream: ``leaf``, ``stream``,
        ``encoding``, ``category``, ``coder`` (``"huffman"``, ``"context"`` -- the range
        coder of :mod:`~pruning_kit.context_coding` -- or ``None``), ``nnz`` (non-zeros of a
        sparse leaf), ``symbols``, ``bytes``, ``payload_bytes``,
        ``table_bytes``, ``entropy_bytes`` (the Shannon bound of a Huffman stream) and
        ``overhead_pct`` (payload over that bound), ``None`` where not Huffman-coded.
    """
    manifest, streams, mlen, version = _read(path)
    totals = {"values": 0, "positions": 0, "codebooks": 0, "metadata": _HEADER_SIZE + mlen}
    rows, dense = [], 0
    for e in manifest["leaves"]:
        dense += int(np.prod(e["shape"])) * jnp.dtype(e["dtype"]).itemsize
        for stream in e["streams"]:
            blob, category = streams[e["name"], stream], _CATEGORY[stream]
            coder = ("huffman" if (e["encoding"], stream) in _HUFFMAN else
                     "context" if (e["encoding"], stream) in _CONTEXT else None)
            row = {"leaf": e["name"], "stream": stream, "encoding": e["encoding"],
                   "category": category, "coder": coder, "nnz": e.get("nnz"),
                   "symbols": None, "bytes": len(blob),
                   "payload_bytes": len(blob), "table_bytes": 0, "entropy_bytes": None,
                   "overhead_pct": None}
            if (e["encoding"], stream) in _HUFFMAN:
                coded = hf.EncodedStream.from_bytes(blob)
                symbols = _huffman(blob, f"{e['name']}:{stream}")
                bound = hf.entropy_bits(symbols) / 8
                payload = len(coded.payload)
                row.update(symbols=coded.count, payload_bytes=payload,
                           table_bytes=len(blob) - payload, entropy_bytes=bound,
                           overhead_pct=(100 * (payload - bound) / bound if bound else None))
            totals[category] += row["payload_bytes"]
            totals["metadata"] += row["table_bytes"]
            rows.append(row)
    size = sum(totals.values())
    sparse = [r for r in rows if r["encoding"].startswith("sparse-")]
    nnz = sum(r["nnz"] for r in sparse if r["stream"] == "codes")
    per_nnz = {c: 8 * sum(r["bytes"] for r in sparse if r["category"] == c) / nnz
               for c in ("positions", "values")} if nnz else {}
    return {"kind": manifest["kind"], "config": manifest["config"],
            "metadata": manifest["metadata"], "format_version": version,
            "file_bytes": size, "dense_bytes": dense, "compression": dense / size,
            "totals": totals, "bits_per_nonzero": per_nnz, "streams": rows}
