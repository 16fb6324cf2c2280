"""Uniform affine quantization: quantize, dequantize, fake-quant and calibration.

Uniform affine quantization maps a real value ``x`` to an integer code ``q`` on a grid of
step ``scale``::

    q = clip(round(x / scale) + zero_point, qmin, qmax)        x_hat = (q - zero_point) * scale

so inside the clipping range ``|x_hat - x| <= scale / 2`` (half a step). Two grids:

* **symmetric** (weights): ``zero_point = 0``, signed *narrow* range
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (int8: ``[-127, 127]``), ``scale = max|x| / qmax``. The
  grid is symmetric about zero; ``-128`` is never used. Needs ``bits >= 2``.
* **asymmetric** (activations): unsigned ``[0, 2^b - 1]`` (uint8: ``[0, 255]``),
  ``scale = (max - min) / (2^b - 1)`` and an integer ``zero_point`` so that 0.0 is exactly
  representable (the range is widened to include 0). Post-ReLU data gets ``zero_point = 0``.

Scales are per tensor (``axis=None``) or per channel along ``axis`` (one scale per index of
that axis; Flax kernels use ``axis=-1``, the output channel). A range of zero width (an
all-zero tensor or channel) gets the scale :data:`SCALE_FLOOR` (float32 epsilon, as
PyTorch's observers do) instead of a NaN.

Sections: parameters and validation; quantize / dequantize / fake-quant (straight-through
estimator, traced ``bits`` allowed); calibration of activation ranges and MSE-optimal
weight clipping (:func:`mse_clip`). The rest of the
quantization toolkit builds on this core, one idea per module:

* :mod:`pruning_kit.quant_storage` -- sub-byte packing, :class:`QuantizedTensor` and
  :func:`quantize_tree` over a params pytree, stored bytes;
* :mod:`pruning_kit.codebook` -- 1-D k-means codebooks; :mod:`pruning_kit.weight_sharing`
  -- k-means weight sharing of a model and its centroid fine-tuning (Deep Compression);
* :mod:`pruning_kit.quant_infer` -- BatchNorm folding and real integer inference;
* :mod:`pruning_kit.qat` -- quantization-aware training;
* :mod:`pruning_kit.mixed_precision` -- bits per layer under a size budget.

Introduced in ``notebooks/01_quantization.ipynb``.

Examples:
    >>> x = jnp.array([-1.0, -0.3, 0.0, 0.4, 1.0])
    >>> qp = compute_qparams(x, bits=4)
    >>> q = quantize(x, qp)
    >>> q.tolist(), round(float(qp.scale), 4)
    ([-7, -2, 0, 3, 7], 0.1429)
    >>> [round(v, 3) for v in dequantize(q, qp).tolist()]     # error <= scale / 2
    [-1.0, -0.286, 0.0, 0.429, 1.0]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pruning_kit import validate

__all__ = [
    "MAX_BITS", "SCALE_FLOOR", "QParams", "as_float", "calibrate", "compute_qparams",
    "dequantize", "fake_quant", "fake_quant_with", "int_range", "mse_clip", "quantize",
    "storage_dtype",
]

Params = Any
MAX_BITS = 16
SCALE_FLOOR = float(np.finfo(np.float32).eps)  # smallest scale; avoids 0/0 on constant data
_MSE_MAX_VALUES = 1 << 20  # MSE calibration looks at most this many values (strided subset)


# --------------------------------------------------------------------------- parameters
class QParams(NamedTuple):
    """How a tensor is quantized.

    Attributes:
        scale: step size, float32; shape ``()`` per tensor or ``(C,)`` per channel.
        zero_point: int32 code of 0.0, same shape as ``scale``; ``None`` when symmetric
            (the zero point is 0 and nothing is stored).
        bits: bit-width, a Python int (or a traced int32 inside ``jit``, see :func:`fake_quant`).
        symmetric: signed narrow range with zero point 0, else unsigned with a zero point.
        axis: the (non-negative) channel axis, or ``None`` per tensor.

    A pytree whose leaves are ``scale``, ``zero_point`` and a traced ``bits``; ``symmetric``,
    ``axis`` and a Python-int ``bits`` are static, so QParams can cross ``jax.jit``.
    """

    scale: jax.Array
    zero_point: jax.Array | None
    bits: Any
    symmetric: bool
    axis: int | None


def _qparams_flatten(qp: QParams):
    static_bits = isinstance(qp.bits, int)
    children = (qp.scale, qp.zero_point, None if static_bits else qp.bits)
    return children, (qp.bits if static_bits else None, qp.symmetric, qp.axis)


def _qparams_unflatten(aux, children):
    bits = aux[0] if aux[0] is not None else children[2]
    return QParams(children[0], children[1], bits, aux[1], aux[2])


jax.tree_util.register_pytree_node(QParams, _qparams_flatten, _qparams_unflatten)


def _traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_bits(bits: Any, *, symmetric: bool = False, allow_traced: bool = True,
                name: str = "bits") -> Any:
    """A validated Python int, or (traced) an int32 clipped into the supported range."""
    low = 2 if symmetric else 1
    if _traced(bits):
        if not allow_traced:
            raise ValueError(f"{name} must be a concrete Python int here (it fixes the "
                             "storage layout), not a traced value; don't pass it through jit.")
        return jnp.clip(jnp.asarray(bits).astype(jnp.int32), low, MAX_BITS)
    if isinstance(bits, (np.ndarray, jax.Array)) and np.ndim(bits) == 0:
        bits = np.asarray(bits).item()
    if symmetric and bits == 1 and not isinstance(bits, bool):
        raise ValueError(f"symmetric quantization needs {name} >= 2 (its range "
                         "[-(2^(b-1)-1), 2^(b-1)-1] holds only 0 at 1 bit); use "
                         "symmetric=False for 1-bit codes (two levels).")
    return validate.bits(bits, name=name, minimum=low, maximum=MAX_BITS)


def _check_axis(axis: Any, ndim: int) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) \
            or not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis!r} does not exist for a {ndim}-D tensor; use an axis in "
                         f"[{-ndim}, {ndim - 1}] for per-channel scales (-1 = output channel "
                         "of a Flax kernel) or axis=None for one scale per tensor.")
    return int(axis) % ndim


def as_float(x: Any, name: str = "x") -> jax.Array:
    """``x`` as a float32 array, checked non-empty and (unless traced) finite.

    Raises:
        ValueError: ``x`` is not numeric, empty, or holds NaN/inf (the message names
            ``name``).
    """
    try:
        arr = jnp.asarray(x, dtype=jnp.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}.") from err
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); pass at least one value.")
    if _traced(arr):  # inside jit the values are unknown: nothing to check
        return arr
    bad = arr.size - int(np.isfinite(np.asarray(arr)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN/inf value(s) out of {arr.size}; "
                         "quantization needs finite values. Fix the model or data that "
                         "produced them (or jnp.nan_to_num) before quantizing.")
    return arr


def int_range(bits: Any, symmetric: bool = True) -> tuple[Any, Any]:
    """``(qmin, qmax)``: the integer codes used for ``bits`` (Python ints, or float32 arrays
    when ``bits`` is traced).

    Examples:
        >>> int_range(8), int_range(8, symmetric=False), int_range(4)
        ((-127, 127), (0, 255), (-7, 7))
    """
    if _traced(bits) or isinstance(bits, jax.Array):
        b = jnp.asarray(bits, jnp.int32)
        one = jnp.int32(1)
        if symmetric:
            qmax = (jnp.left_shift(one, b - 1) - 1).astype(jnp.float32)
            return -qmax, qmax
        return jnp.float32(0.0), (jnp.left_shift(one, b) - 1).astype(jnp.float32)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def storage_dtype(bits: Any, signed: bool) -> jnp.dtype:
    """Integer dtype holding ``bits``-bit codes: (u)int8 up to 8 bits, (u)int16 up to 16,
    int32 when ``bits`` is traced (its value is unknown while tracing)."""
    if _traced(bits):
        return jnp.dtype(jnp.int32)
    if bits <= 8:
        return jnp.dtype(jnp.int8 if signed else jnp.uint8)
    return jnp.dtype(jnp.int16 if signed else jnp.uint16)


def _from_range(lo: Any, hi: Any, bits: Any, symmetric: bool, axis: int | None) -> QParams:
    """QParams for the clipping range ``[lo, hi]`` (widened to include 0)."""
    lo = jnp.minimum(jnp.asarray(lo, jnp.float32), 0.0)
    hi = jnp.maximum(jnp.asarray(hi, jnp.float32), 0.0)
    qmin, qmax = int_range(bits, symmetric)
    if symmetric:
        scale = jnp.maximum(jnp.maximum(-lo, hi) / qmax, SCALE_FLOOR)
        return QParams(scale, None, bits, True, axis)
    scale = jnp.maximum((hi - lo) / (qmax - qmin), SCALE_FLOOR)
    zero_point = jnp.clip(jnp.round(-lo / scale), qmin, qmax).astype(jnp.int32)
    return QParams(scale, zero_point, bits, False, axis)


def _minmax_qparams(x: jax.Array, bits: Any, symmetric: bool, axis: int | None) -> QParams:
    reduce = None if axis is None else tuple(a for a in range(x.ndim) if a != axis)
    return _from_range(jnp.min(x, axis=reduce), jnp.max(x, axis=reduce), bits, symmetric, axis)


# One compiled call per shape when bits is a Python int (static); traced bits run inline.
_minmax_qparams_jit = jax.jit(_minmax_qparams, static_argnums=(1, 2, 3))
_from_range_jit = jax.jit(_from_range, static_argnums=(2, 3, 4))


def compute_qparams(x: jax.typing.ArrayLike, bits: Any = 8, *, axis: int | None = None,
                    symmetric: bool = True, clip: Any = None) -> QParams:
    """Scale (and zero point) from the min/max of ``x`` or an explicit clipping range.

    Args:
        x: the tensor to be quantized (finite, non-empty).
        bits: 1..16 (2..16 when symmetric); may be traced inside ``jit`` (then clipped
            into that range instead of validated).
        axis: channel axis for per-channel scales (negative counts from the end), or
            ``None`` for one scale for the whole tensor.
        symmetric: signed narrow range, zero point 0; else unsigned with a zero point.
        clip: optional clipping range: ``c`` (meaning ``[-c, c]``) or ``(lo, hi)``, scalars
            or per-channel arrays of shape ``(x.shape[axis],)``. Default: min and max of x.

    Returns:
        :class:`QParams` with ``scale`` of shape ``()`` or ``(x.shape[axis],)``.

    Raises:
        ValueError: bad ``bits`` or ``axis``, empty ``x``, NaN/inf in ``x``, or ``lo > hi``.

    Examples:
        >>> w = jnp.array([[0.5, -2.0], [0.25, 1.0]])
        >>> [round(s, 4) for s in compute_qparams(w, 8, axis=-1).scale.tolist()]
        [0.0039, 0.0157]
        >>> qp = compute_qparams(jnp.array([0.0, 3.0]), 2, symmetric=False)
        >>> float(qp.scale), int(qp.zero_point)
        (1.0, 0)
    """
    x = as_float(x)
    bits = _check_bits(bits, symmetric=symmetric)
    axis = _check_axis(axis, x.ndim)
    static = not _traced(bits)
    if clip is None:
        return (_minmax_qparams_jit if static else _minmax_qparams)(x, bits, symmetric, axis)
    else:
        lo, hi = (clip if isinstance(clip, (tuple, list)) and len(clip) == 2
                  else (-jnp.abs(jnp.asarray(clip)), jnp.abs(jnp.asarray(clip))))
        want = () if axis is None else (x.shape[axis],)
        lo, hi = (jnp.broadcast_to(jnp.asarray(v, jnp.float32), want) for v in (lo, hi))
        if not (_traced(lo) or _traced(hi)) and np.any(np.asarray(lo) > np.asarray(hi)):
            raise ValueError(f"clip range has lo > hi ({clip!r}); pass (lo, hi) with lo <= hi.")
        static = static and not (_traced(lo) or _traced(hi))
    return (_from_range_jit if static else _from_range)(lo, hi, bits, symmetric, axis)


# --------------------------------------------------------------------------- quantize
def _bcast(v: jax.Array, qp: QParams, ndim: int) -> jax.Array:
    if qp.axis is None:
        return v
    shape = [1] * ndim
    shape[qp.axis] = -1
    return v.reshape(shape)


def _fitting(x: Any, qp: QParams) -> jax.Array:
    """``x`` as float32, checked finite and of a shape ``qp`` fits."""
    x = as_float(x)
    _check_fits(qp, x.shape)
    return x


def _check_fits(qp: QParams, shape: tuple[int, ...]) -> None:
    if qp.axis is None:
        return
    if qp.axis >= len(shape) or shape[qp.axis] != qp.scale.shape[0]:
        raise ValueError(f"QParams are per-channel along axis {qp.axis} with "
                         f"{qp.scale.shape[0]} channels, but the tensor has shape {shape}; "
                         "compute them from a tensor of this shape (compute_qparams).")


def quantize(x: jax.typing.ArrayLike, qparams: QParams) -> jax.Array:
    """Integer codes of ``x``: ``clip(round(x / scale) + zero_point, qmin, qmax)``.

    Rounds to nearest (ties to even). The dtype is :func:`storage_dtype`: int8/uint8 up to
    8 bits, int16/uint16 up to 16, int32 if ``bits`` is traced.

    Examples:
        >>> qp = compute_qparams(jnp.array([0.0, 1.0]), 8, symmetric=False)
        >>> quantize(jnp.array([-1.0, 0.25, 2.0]), qp)   # clipped to [0, 255]
        Array([  0,  64, 255], dtype=uint8)
    """
    return _quantize(_fitting(x, qparams), qparams)


@jax.jit
def _quantize(x: jax.Array, qp: QParams) -> jax.Array:
    qmin, qmax = int_range(qp.bits, qp.symmetric)
    q = jnp.round(x / _bcast(qp.scale, qp, x.ndim))
    if qp.zero_point is not None:
        q = q + _bcast(qp.zero_point, qp, x.ndim)
    return jnp.clip(q, qmin, qmax).astype(storage_dtype(qp.bits, qp.symmetric))


def dequantize(q: jax.typing.ArrayLike, qparams: QParams) -> jax.Array:
    """Float32 values ``(q - zero_point) * scale`` of integer codes ``q``."""
    q = jnp.asarray(q)
    _check_fits(qparams, q.shape)
    return _dequantize(q, qparams)


@jax.jit
def _dequantize(q: jax.Array, qp: QParams) -> jax.Array:
    x = q.astype(jnp.float32)
    if qp.zero_point is not None:
        x = x - _bcast(qp.zero_point, qp, q.ndim)
    return x * _bcast(qp.scale, qp, q.ndim)


def fake_quant_with(x: jax.typing.ArrayLike, qparams: QParams) -> jax.Array:
    """``dequantize(quantize(x))`` in float, with a straight-through gradient.

    The forward value is exactly on the quantization grid. The gradient with respect to
    ``x`` is 1 where ``x`` rounds into ``[qmin, qmax]`` and 0 where it is clipped (the
    clipped straight-through estimator of quantization-aware training).
    """
    return _fake_quant(_fitting(x, qparams), qparams)


@jax.jit
def _fake_quant(x: jax.Array, qp: QParams) -> jax.Array:
    qmin, qmax = int_range(qp.bits, qp.symmetric)
    scale = _bcast(qp.scale, qp, x.ndim)
    zp = 0.0 if qp.zero_point is None else _bcast(qp.zero_point, qp, x.ndim).astype(jnp.float32)
    v = x / scale + zp
    inside = (v >= qmin - 0.5) & (v <= qmax + 0.5)
    dq = (jnp.clip(jnp.round(v), qmin, qmax) - zp) * scale
    passed = jnp.where(inside, x, jax.lax.stop_gradient(x))
    return dq + (passed - jax.lax.stop_gradient(passed))


def fake_quant(x: jax.typing.ArrayLike, bits: Any = 8, *, axis: int | None = None,
               symmetric: bool = True, clip: Any = None) -> jax.Array:
    """Quantize-dequantize ``x`` with ranges from ``x`` itself (or ``clip``), for QAT.

    The range is computed under ``stop_gradient``; the gradient with respect to ``x`` is
    the straight-through estimator of :func:`fake_quant_with` (identity inside the range).

    ``bits`` may be a traced value: ``jax.jit(lambda x, b: fake_quant(x, b))`` compiles
    once and serves every bit-width (a slider never recompiles). A traced ``bits`` cannot
    be validated; it is clipped to 1..16 (2..16 when symmetric).

    Examples:
        >>> x = jnp.linspace(-1.0, 1.0, 5)
        >>> fake_quant(x, 2).tolist()
        [-1.0, 0.0, 0.0, 0.0, 1.0]
        >>> jax.grad(lambda v: fake_quant(v, 2).sum())(x).tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    x = as_float(x)
    qp = compute_qparams(jax.lax.stop_gradient(x), bits, axis=axis, symmetric=symmetric,
                         clip=clip)
    return fake_quant_with(x, qp)


# --------------------------------------------------------------------------- calibration
def calibrate(samples: jax.typing.ArrayLike | Sequence[jax.typing.ArrayLike], bits: int = 8,
              method: str = "minmax", *, percentile: float = 99.99, symmetric: bool = False,
              num_candidates: int = 100) -> QParams:
    """Per-tensor QParams for activations, from values seen on a calibration set.

    Methods for the clipping range:

    * ``"minmax"``: the smallest and largest value seen;
    * ``"percentile"``: the ``percentile``-th (and ``100 - percentile``-th) percentile,
      of ``|x|`` when symmetric, ignoring rare outliers;
    * ``"mse"``: among ``num_candidates`` ranges ``f * [min, max]``, ``f = 1/n, ..., 1``,
      the one whose quantize-dequantize error (mean squared) is smallest. Over 2^20
      values, a strided subset is scored.

    Args:
        samples: an array of activations, or a list of batches of them (any shapes).
        bits: 1..16 (2..16 when symmetric).
        method: ``"minmax"``, ``"percentile"`` or ``"mse"``.
        percentile: in (50, 100], for ``"percentile"``.
        symmetric: default False (unsigned codes with a zero point), which wastes no code
            on post-ReLU activations.
        num_candidates: clipping ranges tried by ``"mse"``.

    Raises:
        ValueError: an empty set, NaN/inf values, a constant set (every value equal: no
            range can be estimated), an unknown method or bad parameters.

    Examples:
        >>> acts = jax.nn.relu(jax.random.normal(jax.random.key(0), (10000,)))
        >>> for method in ("minmax", "percentile", "mse"):
        ...     qp = calibrate(acts, 4, method, percentile=99.9)
        ...     err = jnp.mean((dequantize(quantize(acts, qp), qp) - acts) ** 2)
        ...     print(f"{method:10s} clip at {15 * float(qp.scale):.2f}  mse {float(err):.5f}")
        minmax     clip at 3.61  mse 0.00243
        percentile clip at 3.07  mse 0.00177
        mse        clip at 2.89  mse 0.00170
    """
    empty = ("The calibration set is empty; pass activations from at least one batch of "
             "held-out examples.")
    if isinstance(samples, (list, tuple)):
        if not samples:
            raise ValueError(empty)
        samples = np.concatenate([np.ravel(np.asarray(v, np.float32)) for v in samples])
    flat = np.ravel(np.asarray(samples, np.float32))  # a one-shot host-side tool
    if flat.size == 0:
        raise ValueError(empty)
    as_float(flat, "calibration samples")
    bits = _check_bits(bits, symmetric=symmetric, allow_traced=False)
    lo, hi = float(flat.min()), float(flat.max())
    if lo == hi:
        raise ValueError(f"All {flat.size} calibration values equal {lo:g}: a clipping "
                         "range cannot be estimated. Calibrate on more varied data, or set "
                         "the range yourself with compute_qparams(x, bits, clip=(lo, hi)).")
    if method == "minmax":
        pass
    elif method == "percentile":
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}; 99.99 is "
                             "a common choice.")
        if symmetric:
            hi = float(np.percentile(np.abs(flat), percentile))
            lo = -hi
        else:
            lo, hi = (float(v) for v in np.percentile(flat, [100.0 - percentile, percentile]))
        if max(-lo, hi) <= 0.0:
            raise ValueError(f"The {percentile}th percentile range is [0, 0] (almost every "
                             "value is 0); use a higher percentile or method='minmax'.")
    elif method == "mse":
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) \
                or num_candidates < 1:
            raise ValueError(f"num_candidates must be a positive integer, got "
                             f"{num_candidates!r}.")
        data = jnp.asarray(flat[:: max(1, math.ceil(flat.size / _MSE_MAX_VALUES))])
        best = float(_mse_fraction(data, lo, hi, bits, symmetric, num_candidates))
        lo, hi = lo * best, hi * best
    else:
        raise ValueError(f"method must be 'minmax', 'percentile' or 'mse', got {method!r}.")
    return _from_range_jit(lo, hi, bits, symmetric, None)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _mse_fraction(data: jax.Array, lo: Any, hi: Any, bits: int, symmetric: bool,
                  num_candidates: int) -> jax.Array:
    """The fraction ``f`` of ``[lo, hi]`` whose fake-quant error on ``data`` is smallest."""
    def error(f):
        qp = _from_range(lo * f, hi * f, bits, symmetric, None)
        return jnp.mean((_fake_quant(data, qp) - data) ** 2)

    fractions = jnp.arange(1, num_candidates + 1, dtype=jnp.float32) / num_candidates
    return fractions[jnp.argmin(jax.lax.map(error, fractions))]


def mse_clip(x: jax.typing.ArrayLike, bits: int = 8, *, axis: int | None = None,
             symmetric: bool = True, num_candidates: int = 100) -> tuple[jax.Array, jax.Array]:
    """The clipping range with the smallest quantization error, per tensor or per channel.

    Among ``num_candidates`` ranges ``f * [min, max]`` (``f = 1/n, ..., 1``; symmetric:
    ``f * [-max|x|, max|x|]``), chosen separately for each channel along ``axis``, the one
    whose quantize-dequantize squared error on ``x`` is smallest. Clipping a few large
    weights buys a finer step for all the others, which matters at 4 bits and below. The
    weight-side sibling of ``calibrate(..., method="mse")``; usable inside ``jit`` (``x``
    may be traced, ``bits`` must be a Python int).

    Args:
        x: the tensor (a kernel, say).
        bits: 1..16 (2..16 when symmetric), a Python int.
        axis: channel axis (``-1``: the output channel of a Flax kernel) or ``None``.
        symmetric: see :func:`compute_qparams`.
        num_candidates: ranges tried per channel.

    Returns:
        ``(lo, hi)``, float32 of shape ``()`` or ``(x.shape[axis],)``, to pass as
        ``compute_qparams(x, bits, axis=axis, clip=(lo, hi))``.

    Raises:
        ValueError: bad ``bits``, ``axis`` or ``num_candidates``; empty or non-finite ``x``.

    Examples:
        >>> w = jnp.concatenate([jnp.linspace(-1.0, 1.0, 999), jnp.array([8.0])])
        >>> lo, hi = mse_clip(w, 4)
        >>> round(float(hi), 2)                       # the outlier 8.0 gets clipped
        3.12
        >>> def mse(clip): return float(jnp.mean((fake_quant(w, 4, clip=clip) - w) ** 2))
        >>> round(mse(None), 4), round(mse((lo, hi)), 4)
        (0.1232, 0.039)
    """
    x = as_float(x)
    bits = _check_bits(bits, symmetric=symmetric, allow_traced=False)
    axis = _check_axis(axis, x.ndim)
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) \
            or num_candidates < 1:
        raise ValueError(f"num_candidates must be a positive integer, got {num_candidates!r}.")
    return _mse_clip(x, bits, symmetric, axis, num_candidates)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _mse_clip(x: jax.Array, bits: int, symmetric: bool, axis: int | None,
              num_candidates: int) -> tuple[jax.Array, jax.Array]:
    reduce = None if axis is None else tuple(a for a in range(x.ndim) if a != axis)
    lo = jnp.minimum(jnp.min(x, axis=reduce), 0.0)
    hi = jnp.maximum(jnp.max(x, axis=reduce), 0.0)
    if symmetric:
        hi = jnp.maximum(-lo, hi)
        lo = -hi

    def error(f):
        qp = _from_range(lo * f, hi * f, bits, symmetric, axis)
        return jnp.sum((_fake_quant(x, qp) - x) ** 2, axis=reduce)

    fractions = jnp.arange(1, num_candidates + 1, dtype=jnp.float32) / num_candidates
    best = fractions[jnp.argmin(jax.lax.map(error, fractions), axis=0)]
    return lo * best, hi * best
