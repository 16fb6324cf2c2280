"""Integer inference (W8A8, and lower) for any NNX model whose layers are dense or conv.

:func:`quantize_model` folds the model's BatchNorms (:mod:`pruning_kit.fold`), stores
every kernel as integer codes with one scale per output channel (symmetric), calibrates
one activation scale per layer input on sample data (the largest |x| seen, or a
percentile), and runs the traced forward (:mod:`pruning_kit.interpret`) with each dense
and convolution op replaced by

    q_x = clip(round(x / s_x), -Q, Q)            (int8 container)
    acc = q_x (*) q_W                              (int32 accumulation: XLA's integer op)
    y   = acc * s_x * s_W[channel]                 (back to float for the rest)

Everything between kernels -- biases, the folded norms, activations, pooling, residual
adds, attention's activation-by-activation products -- stays float32: the integer work is
the matmuls and convolutions, where nearly all the MACs are. Codes of fewer bits (W4A4:
``weight_bits=4, act_bits=4``) travel in the same int8 containers through the same int32
accumulation; that is a legitimate way to *run* 4-bit arithmetic on hardware without
4-bit units (it computes exactly what a 4-bit unit would; it is not faster). The course's
hand-built integer path for its own models, with zero points and integer requantization
between layers, is :mod:`pruning_kit.quant_infer`.

``act_qparams`` (from :func:`pruning_kit.qat.calibrate_inputs`, the ranges a QAT model
trained with) replaces the symmetric activation codes by the QAT forward's unsigned codes
with a zero point, ``q_x = clip(round(x / s_x) + z, 0, 2^b - 1) - z``: the integer model
then computes what :func:`pruning_kit.qat.fake_quant_model` computes (same weight grid,
same activation grid, same rounding), so what QAT learned carries over. The shifted codes
``q - z`` lie in ``[-(2^b - 1), 2^b - 1]``: int8 up to 7 bits (int16 containers at 8), and a
zero-padded convolution still pads with the code of 0.0.

Examples:
    Any model of dense/conv layers, here an ``nnx.Sequential`` of two ``Linear``:

    >>> import numpy as np
    >>> from flax import nnx
    >>> rngs = nnx.Rngs(0)
    >>> net = nnx.Sequential(nnx.Linear(8, 16, rngs=rngs), nnx.relu,
    ...                      nnx.Linear(16, 3, rngs=rngs))
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    >>> q = quantize_model(net, x)
    >>> len(q.kernels), {str(c.dtype) for c in q.codes.values()}
    (2, {'int8'})
    >>> bool(np.abs(np.asarray(q(x)) - np.asarray(net(x))).max() < 0.05)
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruning_kit import fold as fold_lib
from pruning_kit import interpret, measure, validate
from pruning_kit.quantize import QParams


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


class IntegerModel:
    """A model whose dense/conv layers run on integer codes (see the module docstring).

    Call it like the model: ``q(x)`` gives float32 logits. Attributes: ``kernels`` (the
    quantized kernels' paths), ``codes`` and ``weight_scales`` by path, ``act_scales`` by
    kernel op index, ``act_mins`` (the smallest input seen there), ``folded``
    (``{batchnorm: kernel}`` pairs folded first), the bits.
    """

    def __init__(self, fwd: interpret.Forward, codes: Mapping[str, np.ndarray],
                 weight_scales: Mapping[str, np.ndarray], act_scales: Mapping[int, float],
                 weight_bits: int, act_bits: int, folded: Mapping[str, str], *,
                 act_mins: Mapping[int, float] | None = None,
                 act_zero_points: Mapping[int, int] | None = None):
        self._fwd = fwd
        self.act_zero_points = dict(act_zero_points or {})
        self.act_mins = dict(act_mins or {})
        self.codes = dict(codes)
        self.weight_scales = dict(weight_scales)
        self.act_scales = dict(act_scales)
        self.weight_bits, self.act_bits = weight_bits, act_bits
        self.folded = dict(folded)
        self.kernels = list(self.codes)
        leaves = [jnp.asarray(self.codes[p]) if p in self.codes else a
                  for p, a in zip(fwd.paths, fwd.leaves, strict=True)]
        scales = {p: jnp.asarray(s, jnp.float32) for p, s in self.weight_scales.items()}
        acts = {i: jnp.float32(s) for i, s in self.act_scales.items()}
        qmax = _qmax(act_bits)
        zps = {i: jnp.float32(z) for i, z in self.act_zero_points.items()}
        # unsigned codes minus their zero point span [-(2^b - 1), 2^b - 1]
        wide = bool(zps) and act_bits == 8

        def hook(op, x, codes, run):
            if op.path not in scales:
                return run(x, codes)
            s_x = acts[op.index]
            if op.index in zps:     # the QAT grid: unsigned codes with a zero point
                z = zps[op.index]
                q = jnp.clip(jnp.round(x / s_x + z), 0, 2**act_bits - 1) - z
            else:                   # symmetric codes
                q = jnp.clip(jnp.round(x / s_x), -qmax, qmax)
            if wide:
                q, codes = q.astype(jnp.int16), codes.astype(jnp.int16)
            else:
                q = q.astype(jnp.int8)
            acc = run(q, codes, preferred_element_type=jnp.int32)
            s_w = scales[op.path].reshape(interpret.scales_shape(op, acc.ndim, codes.shape))
            return acc.astype(jnp.float32) * (s_x * s_w)

        self._call = jax.jit(lambda leaves, *args: fwd(*args, leaves=leaves, hook=hook))
        self._leaves = leaves

    def __call__(self, *args: Any) -> jax.Array:
        return self._call(self._leaves, *args)

    @property
    def model(self) -> nnx.Module:
        """The float model the codes were made from (BatchNorms folded when ``folded``)."""
        return self._fwd.module()

    @property
    def input_scales(self) -> dict[str, float]:
        """``{kernel path: scale of the activation it multiplies}`` (quantized kernels)."""
        return {op.path: float(self.act_scales[op.index]) for op in self._fwd.kernel_ops
                if op.path in self.codes}

    @property
    def unsigned_inputs(self) -> set[str]:
        """Kernel paths whose input was never negative in calibration (e.g. after ReLU)."""
        return {op.path for op in self._fwd.kernel_ops if op.path in self.codes
                and self.act_mins.get(op.index, -1.0) >= 0}

    def kernel_op(self, path: str) -> interpret.KernelOp:
        """The traced op that reads kernel ``path`` (its output axes, source line...)."""
        return next(op for op in self._fwd.kernel_ops if op.path == path)

    def kernel_bytes(self) -> int:
        """Bytes of the integer kernels as stored (int8 containers) plus their scales."""
        return sum(np.asarray(c).size * (1 if self.weight_bits == 8 else self.weight_bits / 8)
                   for c in self.codes.values()) + sum(4 * np.size(s)
                                                       for s in self.weight_scales.values())

    def predict(self, x: Any, *, batch_size: int = 1000) -> np.ndarray:
        """Predicted classes for ``x``, in batches."""
        x = np.asarray(x)
        return np.concatenate([np.asarray(self(jnp.asarray(x[i:i + batch_size]))).argmax(-1)
                               for i in range(0, len(x), batch_size)])

    def evaluate(self, x: Any, y: Any, *, batch_size: int = 1000) -> float:
        """Accuracy (a fraction) on ``(x, y)``."""
        return float((self.predict(x, batch_size=batch_size) == np.asarray(y)).mean())


def quantize_model(model: nnx.Module, calib_x: Any, *, weight_bits: int = 8,
                   act_bits: int = 8, percentile: float | None = None, fold: bool = True,
                   batch_size: int = 256,
                   act_qparams: Sequence[QParams] | None = None) -> IntegerModel:
    """Integer (W8A8 by default) inference for ``model``; the model is not changed.

    Args:
        model: any Flax NNX model whose compute layers are dense (``dot_general`` with a
            model array) or convolutions; other ops stay float.
        calib_x: calibration inputs (a few hundred training images); the first two also
            serve as the example that traces the model.
        weight_bits, act_bits: 2..8; codes travel in int8 either way.
        percentile: clip each activation range at this percentile of |x| (e.g. 99.99);
            ``None`` takes the largest |x| seen.
        fold: fold BatchNorms into the preceding kernels first (recommended).
        batch_size: calibration batch size.
        act_qparams: instead of calibrating, the unsigned per-tensor ``act_bits`` ranges
            of each dense/conv layer's input in forward order -- what
            :func:`pruning_kit.qat.calibrate_inputs` returns and QAT trained with (see the
            module docstring). ``percentile`` is then unused.

    Returns:
        An :class:`IntegerModel`.

    Raises:
        ValueError: bits out of range, empty calibration data, a model with no dense or
            conv layer, a kernel read by something other than its layer, or
            ``act_qparams`` that are not one unsigned per-tensor ``act_bits`` range per layer.
    """
    weight_bits = validate.bits(weight_bits, name="weight_bits", minimum=2, maximum=8)
    act_bits = validate.bits(act_bits, name="act_bits", minimum=2, maximum=8)
    calib_x = np.asarray(calib_x)
    if calib_x.ndim == 0 or len(calib_x) == 0:
        raise ValueError("calib_x is empty: pass a few hundred inputs to calibrate on.")
    if np.issubdtype(calib_x.dtype, np.number) and not np.isfinite(calib_x).all():
        raise ValueError(f"calib_x holds {int((~np.isfinite(calib_x)).sum())} NaN/inf "
                         "value(s); the activation ranges would be meaningless. Calibrate on "
                         "finite inputs (check the data pipeline, or np.nan_to_num).")
    bad = [k for k, v in measure.named_params(model)
           if jnp.issubdtype(v.dtype, jnp.floating) and not bool(jnp.isfinite(v).all())]
    if bad:
        raise ValueError(f"the model's parameter(s) {bad[:5]} hold NaN/inf; integer codes "
                         "of them would be meaningless. Fix (or retrain) the model first.")
    if percentile is not None and not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile!r}.")
    example = calib_x[:2]
    folded_pairs: dict[str, str] = {}
    if fold:
        model, folded_pairs = fold_lib.fold_batchnorm_model(model, example)
    fwd = interpret.Forward(model, example)
    interpret.check_kernel_ops(fwd, "quantize_model")
    ops_per_path: dict[str, int] = {}
    for op in fwd.kernel_ops:
        ops_per_path[op.path] = ops_per_path.get(op.path, 0) + 1
    shared = sorted(p for p, n in ops_per_path.items() if fwd.uses.get(p, 0) != n)
    if shared:
        raise ValueError(f"Kernel(s) {shared} are also read outside their layer (weight "
                         "tying?); integer codes would change those reads. Untie them first.")

    def calib(x):
        stats = {}

        def hook(op, a, w, run):
            absx = jnp.abs(a).ravel()
            stats[op.index] = (jnp.max(absx) if percentile is None
                               else jnp.percentile(absx, percentile), jnp.min(a))
            return run(a, w)

        fwd(x, hook=hook)
        return stats

    calib = jax.jit(calib)
    ranges: dict[int, float] = {}
    lows: dict[int, float] = {}
    for start in range(0, len(calib_x), batch_size):
        for i, (v, low) in calib(jnp.asarray(calib_x[start:start + batch_size])).items():
            ranges[i] = max(ranges.get(i, 0.0), float(v))
            lows[i] = min(lows.get(i, np.inf), float(low))
    act_scales = {i: max(r, 1e-8) / _qmax(act_bits) for i, r in ranges.items()}
    act_zero_points: dict[int, int] = {}
    if act_qparams is not None:
        act_scales, act_zero_points = _from_qparams(act_qparams, fwd, act_bits)
    codes, w_scales = {}, {}
    for op in fwd.kernel_ops:
        if op.path in codes:
            continue
        kernel = np.asarray(fwd.leaf(op.path), np.float32)
        absmax = interpret.per_channel_absmax(kernel, op)
        scale = np.maximum(absmax, 1e-12) / _qmax(weight_bits)
        shape = [1] * kernel.ndim
        for a, size in zip(op.out_axes, np.shape(scale), strict=True):
            shape[a] = size
        q = np.clip(np.round(kernel / scale.reshape(shape)), -_qmax(weight_bits),
                    _qmax(weight_bits))
        codes[op.path] = q.astype(np.int8)
        w_scales[op.path] = scale.astype(np.float32)
    return IntegerModel(fwd, codes, w_scales, act_scales, weight_bits, act_bits, folded_pairs,
                        act_mins=lows, act_zero_points=act_zero_points)


def _from_qparams(act_qparams: Sequence[QParams], fwd: interpret.Forward,
                  act_bits: int) -> tuple[dict[int, float], dict[int, int]]:
    """``({op index: scale}, {op index: zero point})`` from one QParams per kernel op."""
    act_qparams = tuple(act_qparams)
    if len(act_qparams) != len(fwd.kernel_ops):
        raise ValueError(f"act_qparams hold {len(act_qparams)} ranges but the model has "
                         f"{len(fwd.kernel_ops)} dense/conv layers; "
                         "qat.calibrate_inputs gives one per layer.")
    scales, zero_points = {}, {}
    for op, qp in zip(fwd.kernel_ops, act_qparams, strict=True):
        if not isinstance(qp, QParams) or qp.symmetric or qp.axis is not None \
                or qp.bits != act_bits:
            raise ValueError(f"act_qparams[{op.index}] must be per-tensor unsigned "
                             f"{act_bits}-bit QParams (qat.calibrate_inputs(model, calib_x, "
                             f"{act_bits})), got {qp!r:.120}.")
        scales[op.index] = float(qp.scale)
        zero_points[op.index] = int(qp.zero_point)
    return scales, zero_points
