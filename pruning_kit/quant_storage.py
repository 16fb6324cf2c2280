"""Storing quantized tensors: sub-byte packing and :class:`QuantizedTensor` over a pytree.

:func:`pruning_kit.quantize.quantize` gives integer codes in a whole byte (int8/uint8) or
two (int16/uint16). Stored at ``b`` bits they take ``ceil(n * b / 8)`` bytes:
:func:`pack` writes them as a dense little-endian bitstream (any width 1..16) and
:func:`unpack` reads them back. A :class:`QuantizedTensor` is one tensor as stored -- the
packed codes, the float32 scales and (asymmetric only) int32 zero points -- and its
``nbytes`` counts exactly those arrays. :func:`quantize_tree` turns the kernels of a params
pytree (or NNX model) into QuantizedTensors, with one width or a width per layer (mixed
precision); :func:`tree_nbytes` is the stored size of the result.

Introduced in ``notebooks/01_quantization.ipynb``.

Examples:
    >>> w = jnp.linspace(-1.0, 1.0, 1000).reshape(100, 10)
    >>> qt = quantize_tensor(w, 4, axis=-1)
    >>> qt.data.dtype, qt.nbytes, w.nbytes          # 500 packed bytes + 10 scales * 4
    (dtype('uint8'), 540, 4000)
    >>> bool(jnp.abs(qt.dequantize() - w).max() <= qt.qparams.scale.max() / 2)
    True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruning_kit import train as train_lib
from pruning_kit import tree, validate
from pruning_kit.quantize import (
    QParams,
    compute_qparams,
    dequantize,
    mse_clip,
    quantize,
    storage_dtype,
)

__all__ = [
    "QuantizedTensor", "dequantize_tree", "dequantized_model", "pack", "packed_nbytes",
    "quantize_tensor", "quantize_tree", "tree_nbytes", "unpack",
]

Params = Any


def packed_nbytes(num_values: int, bits: int) -> int:
    """Bytes that :func:`pack` writes for ``num_values`` codes of ``bits`` bits."""
    return math.ceil(num_values * bits / 8)


def pack(q: jax.typing.ArrayLike, bits: int, *, signed: bool | None = None) -> jax.Array:
    """Pack integer codes into a dense little-endian bitstream of ``bits`` bits each.

    Code ``i`` occupies bits ``i*bits .. (i+1)*bits - 1`` of the stream, least significant
    bit first; signed codes are stored in ``bits``-bit two's complement. Any width 1..16.

    Args:
        q: integer codes (e.g. from :func:`quantize`), any shape; flattened in C order.
        bits: width of each code, a Python int in 1..16.
        signed: whether the codes are signed; default: from ``q``'s dtype.

    Returns:
        1-D uint8 array of :func:`packed_nbytes` ``(q.size, bits)`` bytes.

    Raises:
        ValueError: float input, bad ``bits``, or codes that do not fit ``bits`` bits.

    Examples:
        >>> pack(jnp.array([1, 2, 3], jnp.uint8), 2)          # 0b00_11_10_01
        Array([57], dtype=uint8)
        >>> unpack(pack(jnp.array([-2, 1, 0], jnp.int8), 2), 2, (3,), signed=True)
        Array([-2,  1,  0], dtype=int8)
    """
    q = jnp.asarray(q)
    if not jnp.issubdtype(q.dtype, jnp.integer):
        raise ValueError(f"pack takes integer codes, got dtype {q.dtype}; call quantize first.")
    bits = validate.bits(bits)
    if signed is None:
        signed = bool(jnp.issubdtype(q.dtype, jnp.signedinteger))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if q.size and not isinstance(q, jax.core.Tracer):
        qmin, qmax = int(np.asarray(q).min()), int(np.asarray(q).max())
        if qmin < lo or qmax > hi:
            raise ValueError(f"Codes in [{qmin}, {qmax}] do not fit "
                             f"{'signed' if signed else 'unsigned'} {bits}-bit [{lo}, {hi}]; "
                             "use more bits, or signed=False for non-negative codes.")
    return _pack(q, bits)


@functools.partial(jax.jit, static_argnums=1)
def _pack(q: jax.Array, bits: int) -> jax.Array:
    v = q.reshape(-1).astype(jnp.int32) & ((1 << bits) - 1)  # two's complement low bits
    stream = ((v[:, None] >> jnp.arange(bits)) & 1).reshape(-1)
    stream = jnp.pad(stream, (0, (-stream.size) % 8))
    return jnp.sum(stream.reshape(-1, 8) << jnp.arange(8), axis=1).astype(jnp.uint8)


def unpack(packed: jax.typing.ArrayLike, bits: int, shape: Sequence[int],
           signed: bool) -> jax.Array:
    """Inverse of :func:`pack`: codes of ``shape`` in :func:`storage_dtype` ``(bits, signed)``.

    Raises:
        ValueError: ``packed`` is not uint8 or has the wrong length for ``shape`` and
            ``bits`` (truncated data, or the wrong shape/bits).
    """
    packed = jnp.asarray(packed)
    bits = validate.bits(bits)
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if packed.dtype != jnp.uint8 or packed.shape != (packed_nbytes(n, bits),):
        raise ValueError(f"packed must be 1-D uint8 of {packed_nbytes(n, bits)} bytes for "
                         f"shape {shape} at {bits} bits, got {packed.dtype} {packed.shape}; "
                         "the data is truncated or shape/bits do not match what was packed.")
    return _unpack(packed, bits, shape, bool(signed))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _unpack(packed: jax.Array, bits: int, shape: tuple[int, ...], signed: bool) -> jax.Array:
    n = math.prod(shape)
    stream = ((packed[:, None].astype(jnp.int32) >> jnp.arange(8)) & 1).reshape(-1)
    v = jnp.sum(stream[: n * bits].reshape(n, bits) << jnp.arange(bits), axis=1)
    if signed:
        v = jnp.where(v >= 2 ** (bits - 1), v - 2**bits, v)
    return v.astype(storage_dtype(bits, signed)).reshape(shape)


class QuantizedTensor(NamedTuple):
    """A tensor as stored: packed codes, their :class:`QParams`, and the original shape.

    ``nbytes`` counts what is stored: the packed bytes, the float32 scales and (asymmetric
    only) the int32 zero points.
    """

    data: jax.Array
    qparams: QParams
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        zp = self.qparams.zero_point
        return int(self.data.nbytes + self.qparams.scale.nbytes
                   + (0 if zp is None else zp.nbytes))

    def dequantize(self) -> jax.Array:
        """The float32 tensor the codes stand for."""
        qp = self.qparams
        return dequantize(unpack(self.data, qp.bits, self.shape, qp.symmetric), qp)


jax.tree_util.register_pytree_node(
    QuantizedTensor, lambda t: ((t.data, t.qparams), t.shape),
    lambda shape, ch: QuantizedTensor(ch[0], ch[1], shape))


def quantize_tensor(x: jax.typing.ArrayLike, bits: int = 8, *, axis: int | None = None,
                    symmetric: bool = True, clip: Any = None,
                    method: str = "minmax") -> QuantizedTensor:
    """Quantize ``x`` and pack the codes (``bits`` must be a Python int).

    Args:
        x: the tensor, e.g. a kernel.
        bits, axis, symmetric, clip: see :func:`pruning_kit.quantize.compute_qparams`.
        method: how the range is chosen when ``clip`` is not given: ``"minmax"`` (the
            whole range of ``x`` or of each channel) or ``"mse"`` (the clipping range with
            the smallest error, :func:`pruning_kit.quantize.mse_clip`; better at <= 4 bits).

    Raises:
        ValueError: bad ``bits``/``axis``/``method``, both ``clip`` and ``method="mse"``,
            empty or non-finite ``x``.

    Examples:
        >>> w = jax.random.normal(jax.random.key(0), (256, 128))
        >>> qt = quantize_tensor(w, 4, axis=-1)
        >>> qt.nbytes, round(qt.nbytes / w.nbytes, 3)     # 16384 packed + 128 scales * 4
        (16896, 0.129)
    """
    bits = validate.bits(bits, minimum=2 if symmetric else 1)
    if method == "mse":
        if clip is not None:
            raise ValueError("Pass either clip or method='mse' (which chooses the clip), "
                             "not both.")
        clip = mse_clip(x, bits, axis=axis, symmetric=symmetric)
    elif method != "minmax":
        raise ValueError(f"method must be 'minmax' or 'mse', got {method!r}.")
    qp = compute_qparams(x, bits, axis=axis, symmetric=symmetric, clip=clip)
    q = quantize(x, qp)
    return QuantizedTensor(pack(q, bits, signed=symmetric), qp, tuple(q.shape))



def quantize_tree(params: Params, bits: int | Mapping[str, int] = 8, *,
                  axis: int | None = -1, symmetric: bool = True, method: str = "minmax",
                  filter: Callable[[str, jax.Array], bool] = tree.is_kernel) -> Params:
    """Replace selected leaves of a params pytree by :class:`QuantizedTensor`.

    Args:
        params: a pytree of arrays, e.g. ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``
            (an ``nnx.State`` or a model is converted that way).
        bits: one width for every quantized leaf, or ``{"layers/0/kernel": 4, ...}`` by
            leaf name (:func:`pruning_kit.tree.path_name`; mixed precision); the mapping must
            name every selected leaf.
        axis: per-channel axis; default ``-1``, the output channel of Flax ``Linear``
            ``(in, out)`` and ``Conv`` ``(kh, kw, in, out)`` kernels. ``None``: per tensor.
        symmetric: see :func:`compute_qparams`.
        method: ``"minmax"`` or ``"mse"`` clipping, see :func:`quantize_tensor`.
        filter: ``filter(path, leaf) -> bool`` picks leaves; default: kernels (ndim >= 2),
            biases stay float32.

    Examples:
        >>> params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
        >>> q = quantize_tree(params, 4)
        >>> type(q["dense"]["kernel"]).__name__, tree_nbytes(q)   # 6 + 12 + 12 bytes
        ('QuantizedTensor', 30)
    """
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    chosen = list(tree.named_leaves(params, filter=filter).items())
    if not chosen:
        raise ValueError("No leaf of params passed the filter; nothing to quantize. Check "
                         "the filter (default: arrays with ndim >= 2).")
    if isinstance(bits, Mapping):
        missing = [name for name, _ in chosen if name not in bits]
        if missing:
            raise ValueError(f"bits has no entry for {missing}; give every quantized leaf a "
                             "width, or pass one int for all.")

    def one(name, leaf):
        if not filter(name, leaf):
            return leaf
        b = bits[name] if isinstance(bits, Mapping) else bits
        try:
            return quantize_tensor(leaf, b, axis=axis, symmetric=symmetric, method=method)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err

    return tree.map_named(one, params)


def _is_qt(x: Any) -> bool:
    return isinstance(x, QuantizedTensor)


def dequantize_tree(qtree: Params) -> Params:
    """Float32 params from :func:`quantize_tree`'s output (other leaves unchanged)."""
    return jax.tree.map(lambda v: v.dequantize() if _is_qt(v) else v, qtree, is_leaf=_is_qt)


def tree_nbytes(qtree: Params) -> int:
    """Stored bytes of a (partly) quantized pytree: packed tensors plus plain arrays."""
    leaves = jax.tree.leaves(qtree, is_leaf=_is_qt)
    return int(sum(v.nbytes if _is_qt(v) else np.asarray(v).nbytes for v in leaves))


def dequantized_model(model: nnx.Module, qtree: Params) -> nnx.Module:
    """A copy of ``model`` whose parameters are those of ``qtree``, dequantized.

    This is how a weight-only quantized model runs: the stored codes are turned back into
    float32 weights once, at load time, and the forward pass is the float one. ``model``
    itself is not changed.

    Args:
        model: the NNX model ``qtree`` was made from.
        qtree: :func:`quantize_tree`'s output for ``model`` (any subset of its leaves
            quantized).

    Raises:
        ValueError: ``qtree`` does not have the structure of ``model``'s parameters.

    Examples:
        >>> from pruning_kit import models
        >>> model = models.MLP(4, (8,), 3, rngs=nnx.Rngs(0))
        >>> small = dequantized_model(model, quantize_tree(model, 2))
        >>> len(set(small.layers[0].kernel[...][:, 0].tolist())) <= 3   # {-s, 0, s}
        True
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pure = nnx.to_pure_dict(params)
    values = dequantize_tree(qtree)
    if jax.tree.structure(values) != jax.tree.structure(pure):
        raise ValueError("qtree does not match the model's parameters; build it with "
                         "quantize_tree(model, ...) from this model.")
    values = jax.tree.map(lambda v, p: jnp.asarray(v, jnp.asarray(p).dtype), values, pure)
    params = jax.tree.map(lambda v: v, params)  # a copy: model keeps its own arrays
    nnx.replace_by_pure_dict(params, values)    # each array in its parameter's dtype
    # own everything else too (BatchNorm statistics, RNG counts, unquantized leaves): the
    # copy must not share a Variable or an array with the caller's model
    return train_lib.own_arrays(nnx.merge(graphdef, params, rest))
