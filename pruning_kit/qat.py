"""Quantization-aware training (QAT) with the straight-through estimator.

Post-training quantization (PTQ) rounds a trained model once; at 4-bit activations or
2-bit weights that breaks it. Two ways to let training repair the damage:

* **QAT with the straight-through estimator (STE)**, this module. The forward pass runs on
  fake-quantized values -- every kernel on its per-output-channel grid
  (:func:`pruning_kit.quantize.fake_quant`), every activation entering a layer on its
  calibrated ``act_bits`` grid -- while the backward pass treats rounding as the identity
  (zero outside the clipping range). Fine-tuning a float model for a few epochs this way
  moves the weights to where rounding hurts least. :func:`qat_loss` is that forward as a
  ``loss_fn`` for :func:`pruning_kit.train.fit`; :func:`evaluate_deployed_mlp` then
  measures the model as it will run (the integer pipeline of :mod:`pruning_kit.quant_infer`).
* **Trained k-means (weight sharing).** Each kernel keeps ``2^bits`` shared values; the
  assignments stay fixed and only the centroids are trained, each by the sum of the
  gradients of the weights that share it (:mod:`pruning_kit.weight_sharing`).

Biases stay float32 throughout (in the integer pipeline they become int32 in units of
input scale x weight scale, a negligible rounding): they are 0.1% of the parameters.

Introduced in ``notebooks/01_quantization.ipynb``.

Examples:
    The QAT recipe for 8-bit weights and 4-bit activations (train the float model first;
    ``train.fit(model, x, y, loss_fn=loss_fn)`` then fine-tunes through the fake-quantized
    forward, and :func:`evaluate_deployed_mlp` scores the integer model):

    >>> import numpy as np
    >>> from pruning_kit import models
    >>> model = models.MLP(64, (32,), rngs=nnx.Rngs(0))
    >>> x = np.random.default_rng(0).random((256, 64), dtype=np.float32)
    >>> y = np.arange(256) % 10
    >>> clips = calibrate_inputs(model, x, 4)          # one range per layer input
    >>> len(clips)
    2
    >>> loss_fn = qat_loss(8, 4, act_clips=clips)
    >>> loss, logits = loss_fn(model, x[:8], y[:8])   # what train.fit differentiates
    >>> logits.shape, bool(loss > 0)
    ((8, 10), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pruning_kit import graph as graph_lib
from pruning_kit import interpret, quant_infer, tree, validate
from pruning_kit import models as models_lib
from pruning_kit import train as train_lib
from pruning_kit.quant_storage import dequantized_model, quantize_tree
from pruning_kit.quantize import (
    QParams,
    calibrate,
    compute_qparams,
    fake_quant,
    fake_quant_with,
    mse_clip,
)

__all__ = ["calibrate_inputs", "evaluate_deployed_mlp", "fake_quant_model", "qat_loss"]

Clip = QParams | tuple[float, float]


# --------------------------------------------------------------------------- validation
def _check_mlp(model: Any, what: str) -> models_lib.MLP:
    if not isinstance(model, models_lib.MLP):
        raise ValueError(f"{what} takes a pruning_kit.models.MLP (Linear layers with ReLU "
                         f"between), got {type(model).__name__}.")
    return model


def _check_weight_bits(bits: Any) -> int:
    return validate.bits(bits, name="weight_bits", minimum=2, maximum=8)


def _check_act_bits(bits: Any) -> int | None:
    return None if bits is None else validate.bits(bits, name="act_bits", maximum=8)


def _check_method(method: Any) -> str:
    return validate.choice("weight_method", method, ("minmax", "mse"))


def _as_input(x: Any) -> jax.Array:
    """Inputs as the model takes them: integer inputs (token ids) kept, the rest float32."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.integer) else x.astype(jnp.float32)


def _check_calib(calib_x: Any) -> jax.Array:
    x = _as_input(calib_x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"calib_x must be a non-empty batch of inputs, got shape {x.shape}; "
                         "pass a few hundred to a few thousand held-out examples.")
    return x


def _as_clips(act_clips: Sequence[Clip] | None, act_bits: int | None,
              num_layers: int) -> tuple[QParams, ...] | None:
    """One unsigned ``act_bits`` QParams per layer input, from QParams or (lo, hi) pairs."""
    if act_bits is None:
        if act_clips is not None:
            raise ValueError("act_clips were given but act_bits is None (float "
                             "activations); pass act_bits too, or drop act_clips.")
        return None
    if act_clips is None:
        raise ValueError(f"act_bits={act_bits} needs act_clips, the clipping range of each "
                         "layer's input; get them with calibrate_inputs(model, calib_x, "
                         f"{act_bits}) on held-out data.")
    if isinstance(act_clips, QParams):
        raise ValueError("act_clips must be a sequence with one range per layer input "
                         "(calibrate_inputs's tuple), not a single QParams.")
    act_clips = tuple(act_clips)
    if len(act_clips) != num_layers:
        raise ValueError(f"act_clips must hold one range per layer input ({num_layers}: the "
                         f"input and each hidden activation), got {len(act_clips)}.")
    out = []
    for i, clip in enumerate(act_clips):
        if isinstance(clip, QParams):
            if clip.symmetric or clip.axis is not None or clip.bits != act_bits:
                raise ValueError(f"act_clips[{i}] must be per-tensor unsigned {act_bits}-bit "
                                 f"QParams (calibrate(..., {act_bits})), got bits="
                                 f"{clip.bits}, symmetric={clip.symmetric}, axis={clip.axis}.")
            out.append(clip)
        elif isinstance(clip, (tuple, list)) and len(clip) == 2:
            out.append(compute_qparams(jnp.zeros(1), act_bits, symmetric=False,
                                       clip=(float(clip[0]), float(clip[1]))))
        else:
            raise ValueError(f"act_clips[{i}] must be QParams or a (lo, hi) pair, got "
                             f"{clip!r:.80}.")
    return tuple(out)


# --------------------------------------------------------------------------- QAT
def _forward_for(model: nnx.Module, x: Any, cache: dict | None = None, what: str = "QAT"
                 ) -> interpret.Forward:
    """The traced forward of ``model`` (cached by structure and input shape); warns once
    when ``what`` would leave layers float (:func:`interpret.warn_indirect`)."""
    key = (nnx.graphdef(model), tuple(np.shape(x)))
    if cache is not None and key in cache:
        return cache[key]
    fwd = interpret.Forward(model, x)
    interpret.warn_indirect(fwd, what)
    if cache is not None:
        cache[key] = fwd
    return fwd


def calibrate_inputs(model: nnx.Module, calib_x: jax.typing.ArrayLike, act_bits: int = 8,
                     *, method: str = "mse", percentile: float = 99.99) -> tuple[QParams, ...]:
    """Activation ranges of any model: QParams of each dense/conv layer's input.

    The layers are the model's kernel ops in forward order (:mod:`pruning_kit.interpret`);
    for the course's MLP that is the flattened image, then each hidden layer's post-ReLU
    output. Unsigned codes with a zero point, per tensor -- the recipe of
    :func:`pruning_kit.quant_infer.quantize_mlp` -- so QAT trains with the ranges
    deployment uses.

    Args:
        model: any Flax NNX model (traced in eval mode; not changed).
        calib_x: held-out inputs (never the test set), a few thousand is plenty.
        act_bits: 1..8.
        method, percentile: see :func:`pruning_kit.quantize.calibrate`; ``"mse"`` is
            usually best at 4 bits.

    Returns:
        A tuple of QParams, one per dense/conv layer, in forward order.

    Raises:
        ValueError: bad ``act_bits``/``method``, empty or constant data, a model without
            dense or conv layers.
    """
    act_bits = validate.bits(act_bits, name="act_bits", maximum=8)
    x = _check_calib(calib_x)
    fwd = interpret.Forward(model, x[:2])
    interpret.check_kernel_ops(fwd, "calibrate_inputs")
    samples: dict[int, jax.Array] = {}

    def record(op, a, w, run):
        samples[op.index] = a
        return run(a, w)

    fwd(x, hook=record)
    out = []
    for op in fwd.kernel_ops:
        try:
            out.append(calibrate(samples[op.index], act_bits, method, percentile=percentile))
        except ValueError as err:
            layer = op.path.rsplit(tree.SEP, 1)[0]
            raise ValueError(f"Calibrating the input of {layer}: {err}") from err
    return tuple(out)


def _weight_fq(kernel: jax.Array, bits: int, per_channel: bool, method: str,
               axis: int | None = -1) -> jax.Array:
    axis = axis if per_channel else None
    if method == "mse":
        clip = mse_clip(jax.lax.stop_gradient(kernel), bits, axis=axis)
        return fake_quant(kernel, bits, axis=axis, clip=clip)
    return fake_quant(kernel, bits, axis=axis)


def _fq_forward(fwd: interpret.Forward, leaves: Sequence[Any], x: jax.Array,
                weight_bits: int, clips: tuple[QParams, ...] | None, per_channel: bool,
                weight_method: str) -> jax.Array:
    if clips is not None and len(clips) != len(fwd.kernel_ops):
        raise ValueError(f"act_clips hold {len(clips)} ranges but the model has "
                         f"{len(fwd.kernel_ops)} dense/conv layers; calibrate_inputs gives "
                         "one per layer.")

    def hook(op, a, w, run):
        if clips is not None:
            a = fake_quant_with(a, clips[op.index])
        axis = op.out_axes[0] if len(op.out_axes) == 1 else None
        return run(a, _weight_fq(w, weight_bits, per_channel, weight_method, axis))

    return fwd(x, leaves=leaves, hook=hook)


def _leaves_of(model: nnx.Module) -> list:
    return graph_lib.leaf_paths(nnx.state(model))[1]


def fake_quant_model(model: nnx.Module, x: jax.typing.ArrayLike, *, weight_bits: int = 8,
                     act_bits: int | None = None, act_clips: Sequence[Clip] | None = None,
                     per_channel: bool = True, weight_method: str = "minmax") -> jax.Array:
    """Logits of any model with fake-quantized kernels and layer inputs (the QAT forward).

    Every dense/conv kernel is quantize-dequantized symmetrically at ``weight_bits`` (one
    scale per output channel, or per tensor), every such layer's input at ``act_bits``
    with the fixed ranges ``act_clips``. Gradients follow the straight-through estimator.
    Everything else (biases, norms, activations, logits) stays float32. The forward is the
    model's eval-mode program (BatchNorm uses its running statistics, Dropout is off).

    Args:
        model: any Flax NNX model (not changed).
        x: a batch of inputs.
        weight_bits: 2..8.
        act_bits: 1..8, or ``None`` for float activations (weight-only quantization).
        act_clips: one clipping range per dense/conv layer input -- QParams from
            :func:`calibrate_inputs` or ``(lo, hi)`` pairs; required with ``act_bits``.
        per_channel: one weight scale per output channel (else per tensor).
        weight_method: ``"minmax"`` (the integer pipeline's grid) or ``"mse"`` (clipped
            per channel by :func:`pruning_kit.quantize.mse_clip`, recomputed at every step
            with its default 100 candidates -- the same grid ``quantize_tree(...,
            method="mse")`` stores; better at 2-3 bits, deployed weight-only).

    Raises:
        ValueError: bad bits, missing or mismatched ``act_clips``.
    """
    weight_bits = _check_weight_bits(weight_bits)
    act_bits = _check_act_bits(act_bits)
    x = _as_input(x)
    fwd = _forward_for(model, x, what="fake_quant_model")
    clips = _as_clips(act_clips, act_bits, len(fwd.kernel_ops))
    return _fq_forward(fwd, fwd.leaves, x, weight_bits, clips, bool(per_channel),
                       _check_method(weight_method))


def qat_loss(weight_bits: int, act_bits: int | None, *,
             act_clips: Sequence[Clip] | None = None, per_channel: bool = True,
             weight_method: str = "minmax") -> train_lib.LossFn:
    """A QAT loss for :func:`pruning_kit.train.fit`: cross-entropy of :func:`fake_quant_model`.

    Arguments as :func:`fake_quant_model`; the ranges ``act_clips`` are fixed (calibrated
    once on held-out data before training), the weights' grids follow the weights as they
    train. Fine-tune from the trained float model with a small learning rate (``1e-4``) for
    a few epochs. Works for any model whose compute layers are dense or convolutions (the
    forward is its eval-mode program: BatchNorm statistics stay frozen during QAT).

    Returns:
        ``loss_fn(model, x, y) -> (loss, logits)``; the logits are the fake-quantized
        model's, so ``fit``'s training accuracy is the quantized model's.

    Raises:
        ValueError: bad bits, ``act_bits`` without ``act_clips`` (or the reverse), bad
            ``weight_method`` -- at once, not at the first training step.

    Examples:
        >>> from pruning_kit import models
        >>> model = models.MLP(4, (8,), 3, rngs=nnx.Rngs(0))
        >>> loss_fn = qat_loss(2, None)                       # 2-bit weights only
        >>> loss, logits = loss_fn(model, jnp.ones((5, 4)), jnp.zeros(5, jnp.int32))
        >>> logits.shape, bool(jnp.isfinite(loss))
        ((5, 3), True)
    """
    weight_bits = _check_weight_bits(weight_bits)
    act_bits = _check_act_bits(act_bits)
    weight_method = _check_method(weight_method)
    per_channel = bool(per_channel)
    clip_list = None if act_clips is None or isinstance(act_clips, QParams) \
        else tuple(act_clips)
    # converted now (outside jit); the count is checked against the model at the first call
    clips = _as_clips(clip_list if clip_list is not None else act_clips, act_bits,
                      0 if clip_list is None else len(clip_list))
    cache: dict = {}

    def loss_fn(model: nnx.Module, x: jax.Array, y: Any) -> tuple[jax.Array, jax.Array]:
        fwd = _forward_for(model, x, cache)
        logits = _fq_forward(fwd, _leaves_of(model), x, weight_bits, clips, per_channel,
                             weight_method)
        labels = y[0] if isinstance(y, (tuple, list)) else y
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    return loss_fn


def evaluate_deployed_mlp(model: models_lib.MLP, x: Any, y: Any, *, weight_bits: int = 8,
                          act_bits: int | None = 8, calib_x: Any = None,
                          act_clips: Sequence[Clip] | None = None, per_channel: bool = True,
                          weight_method: str = "minmax", method: str = "mse",
                          output_bits: int = 8) -> float:
    """Accuracy of an MLP as it will be deployed after (QAT or post-training) quantization.

    * ``act_bits`` given: the real integer pipeline -- :func:`pruning_kit.quant_infer.
      quantize_mlp` (int8-held weight codes, ``act_bits`` activations, int32 accumulation)
      run by :func:`~pruning_kit.quant_infer.int_forward`. Any ``weight_bits`` from 2 to 8
      works there (2-bit codes -1, 0, 1 are held in int8). The activation ranges are
      ``act_clips`` (use the ones QAT trained with) or, without them, calibrated on
      ``calib_x`` with ``method``. The logits are coded at ``output_bits``, their range
      always calibrated on ``calib_x`` with ``method``.
    * ``act_bits=None`` (weight-only): the float model whose kernels are the dequantized
      ``weight_bits`` codes (:func:`pruning_kit.quant_storage.dequantized_model`), which is
      how weight-only storage runs; ``weight_method="mse"`` is allowed here.

    Args:
        model: a :class:`~pruning_kit.models.MLP`.
        x, y: evaluation data.
        weight_bits: 2..8.
        act_bits: 1..8 or ``None``.
        calib_x: held-out inputs; needed with ``act_bits`` (for the logits' range, and
            for every range when ``act_clips`` is not given).
        act_clips: see :func:`fake_quant_model`.
        per_channel: one weight scale per output channel.
        weight_method: ``"minmax"``; ``"mse"`` only weight-only (the integer pipeline
            takes each channel's full range).
        method: calibration method of the ranges calibrated on ``calib_x``: every
            activation range when ``act_clips`` is not given, and the logits' range
            always (``act_clips`` covers only the layers' inputs), so pass the method
            ``act_clips`` were calibrated with to deploy one setup throughout.
        output_bits: bits of the logits' codes in the integer pipeline.

    Returns:
        Top-1 accuracy, a fraction in [0, 1].

    Raises:
        ValueError: bad bits, missing ``calib_x``, ``weight_method="mse"`` with
            ``act_bits``, empty or mismatched data.
    """
    model = _check_mlp(model, "evaluate_deployed_mlp")
    weight_bits = _check_weight_bits(weight_bits)
    act_bits = _check_act_bits(act_bits)
    weight_method = _check_method(weight_method)
    y = np.asarray(y)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"x and y must be non-empty and aligned, got {len(x)} inputs and "
                         f"{len(y)} labels.")
    if act_bits is None:
        qtree = quantize_tree(model, weight_bits, axis=-1 if per_channel else None,
                              method=weight_method)
        return train_lib.evaluate(dequantized_model(model, qtree), x, y)
    if weight_method != "minmax":
        raise ValueError("The integer pipeline quantizes each channel over its full range "
                         "(weight_method='minmax'); use act_bits=None to evaluate 'mse' "
                         "weights weight-only.")
    if calib_x is None:
        raise ValueError("calib_x is needed to build the integer model (activation and "
                         "logit ranges); pass held-out training inputs.")
    clips = _as_clips(act_clips, act_bits, len(act_clips)) if act_clips is not None \
        else None
    qm = quant_infer.quantize_mlp(model, calib_x, weight_bits=weight_bits, act_bits=act_bits,
                                  per_channel=per_channel, method=method,
                                  output_bits=output_bits, act_qparams=clips)
    forward = jax.jit(quant_infer.int_forward)
    logits = np.concatenate([np.asarray(forward(qm, jnp.asarray(x[i:i + 2000])))
                             for i in range(0, len(x), 2000)])
    return float(np.mean(logits.argmax(-1) == y))
