"""BatchNorm folding and real integer inference (int8 x int8 -> int32) for the course models.

The integer pipeline follows the usual full-integer recipe (PyTorch/fbgemm, TFLite):

* weights: int8, symmetric, one scale per output channel (``s_w``);
* activations: ``act_bits`` unsigned codes with a zero point ``z`` from calibration
  (:func:`pruning_kit.quantize.calibrate`), held as int8 by subtracting 128, so every
  matmul/conv is ``int8 x int8`` accumulated in int32 via ``preferred_element_type``;
* bias: int32 in units of ``s_x * s_w``; the zero-point term ``(z - 128) * sum(w)`` is
  subtracted from the accumulator;
* requantization: ``q_next = clip(round(acc * s_x * s_w / s_next) + z_next)`` with a
  float32 multiplier; ReLU is the lower clip at ``z_next``.

:func:`fake_quant_forward` computes the same network in float32 with fake quantization at
the same points; it agrees with :func:`int_forward` to within one output step.

Introduced in ``notebooks/01_quantization.ipynb``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pruning_kit import models as models_lib
from pruning_kit.quantize import (
    QParams,
    _check_bits,
    calibrate,
    compute_qparams,
    dequantize,
    fake_quant_with,
    int_range,
    quantize,
)

__all__ = [
    "IntLayer", "IntegerCNN", "IntegerMLP", "fake_quant_forward", "fold_batchnorm", "fold_cnn",
    "folded_cnn_forward", "int_forward", "quantize_cnn", "quantize_mlp",
]

_OFFSET = 128  # unsigned activation code u is held as the int8 u - 128
_DIMS = ("NHWC", "HWIO", "NHWC")


# --------------------------------------------------------------------------- BN folding
def fold_batchnorm(kernel: jax.typing.ArrayLike, bias: jax.typing.ArrayLike | None,
                   bn_scale: jax.typing.ArrayLike, bn_bias: jax.typing.ArrayLike,
                   bn_mean: jax.typing.ArrayLike, bn_var: jax.typing.ArrayLike,
                   eps: float = 1e-5) -> tuple[jax.Array, jax.Array]:
    """Fold an eval-mode BatchNorm into the conv/linear layer before it.

    ``BN(conv(x)) = gamma * (conv(x) - mean) / sqrt(var + eps) + beta`` is itself a conv
    with kernel ``kernel * g`` and bias ``(bias - mean) * g + beta``, ``g = gamma /
    sqrt(var + eps)`` per output channel (the last kernel axis).

    Returns:
        ``(kernel, bias)`` of the folded layer, float32.

    Raises:
        ValueError: BN vectors whose length is not the kernel's output channels, negative
            variances or ``eps <= 0``.

    Examples:
        >>> k, b = fold_batchnorm(jnp.ones((2, 3)), None, jnp.full(3, 2.0), jnp.ones(3),
        ...                       jnp.zeros(3), jnp.full(3, 4.0), eps=0.0)
        >>> k.tolist()[0], b.tolist()
        ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    """
    kernel = jnp.asarray(kernel, jnp.float32)
    out = kernel.shape[-1]
    vecs = [jnp.asarray(v, jnp.float32) for v in (bn_scale, bn_bias, bn_mean, bn_var)]
    if bias is not None:
        vecs.append(jnp.asarray(bias, jnp.float32))
    if any(v.shape != (out,) for v in vecs):
        raise ValueError(f"BatchNorm/bias vectors must have shape ({out},) to match the "
                         f"kernel's output channels {kernel.shape}, got "
                         f"{[v.shape for v in vecs]}.")
    if eps < 0 or np.any(np.asarray(vecs[3]) + eps <= 0):
        raise ValueError(f"bn_var + eps must be positive (eps={eps!r}); pass the BatchNorm's "
                         "running variance and its epsilon (1e-5 in Flax).")
    b = vecs[4] if bias is not None else jnp.zeros(out, jnp.float32)
    return _fold(kernel, b, *vecs[:4], eps)


@jax.jit
def _fold(kernel, bias, gamma, beta, mean, var, eps):
    gain = gamma / jnp.sqrt(var + eps)
    return kernel * gain, (bias - mean) * gain + beta


_CONVS = (("conv1", "bn1"), ("conv2", "bn2"), ("res_conv1", "res_bn1"),
          ("res_conv2", "res_bn2"))


def fold_cnn(model: models_lib.SmallCNN) -> dict[str, tuple[jax.Array, jax.Array]]:
    """``{"conv1": (kernel, bias), ..., "head": (kernel, bias)}`` with every BatchNorm
    folded in (running statistics), so :func:`folded_cnn_forward` equals the model in
    eval mode."""
    if not isinstance(model, models_lib.SmallCNN):
        raise ValueError(f"fold_cnn takes a pruning_kit.models.SmallCNN, got "
                         f"{type(model).__name__}; use fold_batchnorm layer by layer.")
    folded = {}
    for conv_name, bn_name in _CONVS:
        conv, bn = getattr(model, conv_name), getattr(model, bn_name)
        bias = None if conv.bias is None else conv.bias[...]
        folded[conv_name] = fold_batchnorm(conv.kernel[...], bias, bn.scale[...],
                                           bn.bias[...], bn.mean[...], bn.var[...],
                                           bn.epsilon)
    folded["head"] = (jnp.asarray(model.head.kernel[...]), jnp.asarray(model.head.bias[...]))
    return folded


def _pool(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2 (works on integer codes too)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DIMS)


def _cnn_float(folded: dict, x: jax.Array) -> dict[str, jax.Array]:
    """Float forward of the folded CNN; activations by name (pre-pool where pooled)."""
    acts = {"input": x}
    y = acts["conv1"] = jax.nn.relu(_conv(x, folded["conv1"][0]) + folded["conv1"][1])
    y = acts["conv2"] = jax.nn.relu(_conv(_pool(y), folded["conv2"][0]) + folded["conv2"][1])
    y = _pool(y)
    h = acts["res_conv1"] = jax.nn.relu(_conv(y, folded["res_conv1"][0])
                                        + folded["res_conv1"][1])
    y = acts["residual"] = jax.nn.relu(y + _conv(h, folded["res_conv2"][0])
                                       + folded["res_conv2"][1])
    acts["logits"] = y.reshape(y.shape[0], -1) @ folded["head"][0] + folded["head"][1]
    return acts


_cnn_float_jit = jax.jit(_cnn_float)


def folded_cnn_forward(folded: dict[str, tuple[jax.Array, jax.Array]],
                       x: jax.typing.ArrayLike) -> jax.Array:
    """Logits of a :class:`~pruning_kit.models.SmallCNN` from :func:`fold_cnn`'s layers."""
    return _cnn_float_jit(folded, jnp.asarray(x, jnp.float32))["logits"]


# --------------------------------------------------------------------------- int layers
class IntLayer(NamedTuple):
    """One quantized linear/conv layer (its input's QParams are kept by the model).

    Attributes:
        kernel: int8 ``(in, out)`` or ``(kh, kw, in, out)`` symmetric codes.
        scale: float32 ``(out,)`` weight scale per output channel.
        bias: int32 ``(out,)`` bias in units of ``s_in * scale``.
    """

    kernel: jax.Array
    scale: jax.Array
    bias: jax.Array


class IntegerMLP(NamedTuple):
    """An integer MLP: ``layers[i]`` reads codes with ``acts[i]``; ``acts[-1]`` = logits."""

    layers: tuple[IntLayer, ...]
    acts: tuple[QParams, ...]


class IntegerCNN(NamedTuple):
    """An integer SmallCNN; ``acts`` names: input, conv1, conv2, res_conv1, residual,
    logits (each the QParams of that layer's post-ReLU output)."""

    layers: dict[str, IntLayer]
    acts: dict[str, QParams]


def _int_layer(name: str, kernel: Any, bias: Any, act_in: QParams, weight_bits: int,
               per_channel: bool) -> IntLayer:
    kernel = jnp.asarray(kernel, jnp.float32)
    out = kernel.shape[-1]
    qp = compute_qparams(kernel, weight_bits, axis=-1 if per_channel else None)
    codes = quantize(kernel, qp)
    scale = jnp.broadcast_to(qp.scale, (out,))
    dead = jnp.all(codes.reshape(-1, out) == 0, axis=0)  # e.g. a pruned channel: any scale
    scale = jnp.where(dead, scale.max(), scale)          # works, the largest keeps bias small
    bias = jnp.zeros(out) if bias is None else jnp.asarray(bias, jnp.float32)
    b = np.round(np.asarray(bias / (act_in.scale * scale), np.float64))
    if np.abs(b).max() > np.iinfo(np.int32).max:
        raise ValueError(f"{name}: the bias does not fit int32 in units of input scale x "
                         "weight scale (weights or input range almost zero); check the "
                         "layer or calibrate on more varied data.")
    return IntLayer(codes.astype(jnp.int8), scale.astype(jnp.float32), jnp.asarray(b, jnp.int32))


def _calibrate_all(samples: dict[str, jax.Array], act_bits: int, method: str,
                   percentile: float, output_bits: int | None = None) -> dict[str, QParams]:
    out = {}
    for name, value in samples.items():
        bits = output_bits if name == "logits" and output_bits is not None else act_bits
        try:
            out[name] = calibrate(value, bits, method, percentile=percentile)
        except ValueError as err:
            raise ValueError(f"Calibrating the activations '{name}': {err}") from err
    return out


def _check_setup(weight_bits: int, act_bits: int, calib_x: Any,
                 output_bits: int | None = None) -> jax.Array:
    _check_bits(weight_bits, symmetric=True, max_bits=8, allow_traced=False,
                name="weight_bits")
    _check_bits(act_bits, max_bits=8, allow_traced=False, name="act_bits")
    if output_bits is not None:
        _check_bits(output_bits, max_bits=8, allow_traced=False, name="output_bits")
    x = jnp.asarray(calib_x, jnp.float32)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"calib_x must be a non-empty batch of inputs, got shape {x.shape}; "
                         "pass a few hundred held-out examples.")
    return x


def _check_act_qparams(act_qparams: Sequence[QParams], num_layers: int,
                       act_bits: int) -> tuple[QParams, ...]:
    act_qparams = tuple(act_qparams)
    if len(act_qparams) != num_layers:
        raise ValueError(f"act_qparams must hold one QParams per layer input ({num_layers}: "
                         f"the input and each hidden activation), got {len(act_qparams)}.")
    for i, qp in enumerate(act_qparams):
        if not isinstance(qp, QParams) or qp.symmetric or qp.axis is not None \
                or qp.bits != act_bits:
            raise ValueError(f"act_qparams[{i}] must be per-tensor unsigned {act_bits}-bit "
                             "QParams (from calibrate(samples, act_bits)), got "
                             f"{qp!r:.120}.")
    return act_qparams


def quantize_mlp(model: models_lib.MLP, calib_x: jax.typing.ArrayLike, *,
                 weight_bits: int = 8, act_bits: int = 8, per_channel: bool = True,
                 method: str = "minmax", percentile: float = 99.99,
                 output_bits: int | None = None,
                 act_qparams: Sequence[QParams] | None = None) -> IntegerMLP:
    """Build the integer version of an MLP (Linear layers with ReLU between).

    Args:
        model: a :class:`~pruning_kit.models.MLP` (any widths).
        calib_x: inputs whose activations set the activation ranges (held-out data).
        weight_bits: 2..8, symmetric, held in int8.
        act_bits: 1..8, unsigned with a zero point, held in int8.
        per_channel: one weight scale per output neuron (else one per layer).
        method, percentile: activation calibration, see
            :func:`pruning_kit.quantize.calibrate`.
        output_bits: bits of the output codes (the logits), 1..8; default ``act_bits``.
            Low-bit activation schemes usually keep the logits at 8 bits: they feed no
            layer, and 16 levels (4 bits) make the top classes tie.
        act_qparams: optional fixed QParams of each layer's input (input, then each
            post-ReLU hidden activation; one per layer, unsigned ``act_bits``-bit), e.g.
            the ranges a quantization-aware training used (:mod:`pruning_kit.qat`);
            default: calibrate them on ``calib_x``. The logits are calibrated either way.

    Examples:
        >>> from flax import nnx
        >>> from pruning_kit import models
        >>> model = models.MLP(4, (8,), 3, rngs=nnx.Rngs(0))
        >>> x = jax.random.uniform(jax.random.key(1), (64, 4))
        >>> qm = quantize_mlp(model, x)
        >>> qm.layers[0].kernel.dtype, int_forward(qm, x).shape
        (dtype('int8'), (64, 3))
        >>> step = float(qm.acts[-1].scale)
        >>> bool(jnp.abs(int_forward(qm, x) - fake_quant_forward(qm, x)).max() <= step * 1.001)
        True
    """
    if not isinstance(model, models_lib.MLP):
        raise ValueError(f"quantize_mlp takes a pruning_kit.models.MLP, got "
                         f"{type(model).__name__}; for a SmallCNN use quantize_cnn.")
    x = _check_setup(weight_bits, act_bits, calib_x, output_bits)
    h = x.reshape(x.shape[0], -1)
    layers = list(model.layers)
    samples = {"input": h}
    for i, layer in enumerate(layers):
        h = h @ layer.kernel[...] + layer.bias[...]
        h = jax.nn.relu(h) if i < len(layers) - 1 else h
        samples[f"layers.{i}" if i < len(layers) - 1 else "logits"] = h
    if act_qparams is not None:
        fixed = _check_act_qparams(act_qparams, len(layers), act_bits)
        samples = {"logits": samples["logits"]}
    acts = tuple(_calibrate_all(samples, act_bits, method, percentile, output_bits).values())
    if act_qparams is not None:
        acts = fixed + acts
    qlayers = tuple(_int_layer(f"layers.{i}", layer.kernel[...], layer.bias[...], acts[i],
                               weight_bits, per_channel) for i, layer in enumerate(layers))
    return IntegerMLP(qlayers, acts)


def quantize_cnn(model: models_lib.SmallCNN, calib_x: jax.typing.ArrayLike, *,
                 weight_bits: int = 8, act_bits: int = 8, per_channel: bool = True,
                 method: str = "minmax", percentile: float = 99.99,
                 output_bits: int | None = None) -> IntegerCNN:
    """Fold BatchNorm (:func:`fold_cnn`), then build the integer SmallCNN; arguments as
    :func:`quantize_mlp`. The residual add is done on the int32 accumulator, rescaled."""
    folded = fold_cnn(model)
    x = _check_setup(weight_bits, act_bits, calib_x, output_bits)
    acts = _calibrate_all(_cnn_float_jit(folded, x), act_bits, method, percentile,
                          output_bits)
    inputs = {"conv1": "input", "conv2": "conv1", "res_conv1": "conv2",
              "res_conv2": "res_conv1", "head": "residual"}
    layers = {name: _int_layer(name, *folded[name], acts[inputs[name]], weight_bits,
                               per_channel) for name in inputs}
    return IntegerCNN(layers, acts)


# --------------------------------------------------------------------------- forward
def _codes(x: jax.Array, qp: QParams) -> jax.Array:
    return quantize(x, qp).astype(jnp.int32)


def _int8(codes: jax.Array) -> jax.Array:
    return (codes - _OFFSET).astype(jnp.int8)


def _zero_correction(layer: IntLayer, act_in: QParams) -> jax.Array:
    """``(z - 128) * sum(kernel)`` per output channel, int32."""
    k = layer.kernel.astype(jnp.int32)
    return (act_in.zero_point - _OFFSET) * k.reshape(-1, k.shape[-1]).sum(0)


def _int_dense(codes: jax.Array, layer: IntLayer, act_in: QParams) -> jax.Array:
    acc = jax.lax.dot_general(_int8(codes), layer.kernel, (((1,), (0,)), ((), ())),
                              preferred_element_type=jnp.int32)
    return acc + layer.bias - _zero_correction(layer, act_in)


def _int_conv(codes: jax.Array, layer: IntLayer, act_in: QParams) -> jax.Array:
    # Pad with the code of 0.0 (not with integer 0) so the border matches float "SAME".
    pads = jax.lax.padtype_to_pads(codes.shape[1:3], layer.kernel.shape[:2], (1, 1), "SAME")
    x = jnp.pad(_int8(codes), ((0, 0), *pads, (0, 0)),
                constant_values=(act_in.zero_point - _OFFSET).astype(jnp.int8))
    acc = jax.lax.conv_general_dilated(x, layer.kernel, (1, 1), "VALID",
                                       dimension_numbers=_DIMS,
                                       preferred_element_type=jnp.int32)
    return acc + layer.bias - _zero_correction(layer, act_in)


def _requant(real_over_step: jax.Array, act_out: QParams, relu: bool) -> jax.Array:
    """Codes of a value given in units of the output step (float), ReLU fused."""
    qmin, qmax = int_range(act_out.bits, symmetric=False)
    low = act_out.zero_point if relu else qmin
    return jnp.clip(jnp.round(real_over_step) + act_out.zero_point, low, qmax).astype(jnp.int32)


def _int_step(acc: jax.Array, layer: IntLayer, act_in: QParams, act_out: QParams,
              relu: bool) -> jax.Array:
    multiplier = act_in.scale * layer.scale / act_out.scale
    return _requant(acc.astype(jnp.float32) * multiplier, act_out, relu)


def _mlp_int(qm: IntegerMLP, x: jax.Array) -> jax.Array:
    a = qm.acts
    codes = _codes(x.reshape(x.shape[0], -1), a[0])
    for i, layer in enumerate(qm.layers):
        acc = _int_dense(codes, layer, a[i])
        codes = _int_step(acc, layer, a[i], a[i + 1], relu=i < len(qm.layers) - 1)
    return dequantize(codes, a[-1])


def _cnn_int(qm: IntegerCNN, x: jax.Array) -> jax.Array:
    L, a = qm.layers, qm.acts
    codes = _codes(x, a["input"])
    for name, prev in (("conv1", "input"), ("conv2", "conv1")):
        codes = _pool(_int_step(_int_conv(codes, L[name], a[prev]), L[name], a[prev], a[name],
                                relu=True))
    h = _int_step(_int_conv(codes, L["res_conv1"], a["conv2"]), L["res_conv1"], a["conv2"],
                  a["res_conv1"], relu=True)
    acc = _int_conv(h, L["res_conv2"], a["res_conv1"])
    s_r = a["residual"].scale  # residual: conv accumulator + skip codes, both rescaled
    y = (acc.astype(jnp.float32) * (a["res_conv1"].scale * L["res_conv2"].scale / s_r)
         + (codes - a["conv2"].zero_point).astype(jnp.float32) * (a["conv2"].scale / s_r))
    codes = _requant(y, a["residual"], relu=True)
    flat = codes.reshape(codes.shape[0], -1)
    acc = _int_dense(flat, L["head"], a["residual"])
    return dequantize(_int_step(acc, L["head"], a["residual"], a["logits"], relu=False),
                      a["logits"])


def _check_input(qmodel: Any, x: Any) -> jax.Array:
    if not isinstance(qmodel, (IntegerMLP, IntegerCNN)):
        raise ValueError(f"Expected an IntegerMLP or IntegerCNN (from quantize_mlp / "
                         f"quantize_cnn), got {type(qmodel).__name__}.")
    x = jnp.asarray(x, jnp.float32)
    if isinstance(qmodel, IntegerMLP):
        need, have, what = qmodel.layers[0].kernel.shape[0], int(np.prod(x.shape[1:])), \
            "input features"
    else:
        need, have, what = qmodel.layers["conv1"].kernel.shape[2], x.shape[-1], \
            "channels (NHWC)"
        have = have if x.ndim == 4 else -1
    if x.ndim < 2 or x.shape[0] == 0 or have != need:
        raise ValueError(f"x of shape {x.shape} does not fit the model: it needs a non-empty "
                         f"batch with {need} {what}.")
    return x


def int_forward(qmodel: IntegerMLP | IntegerCNN, x: jax.typing.ArrayLike) -> jax.Array:
    """Logits by integer arithmetic: int8 x int8 -> int32 layers, int8 activations.

    Returns the int8 output codes dequantized to float32 (for argmax and comparison).
    Pure and jit-able: ``jax.jit(int_forward)(qmodel, x)``.
    """
    x = _check_input(qmodel, x)
    return _mlp_int(qmodel, x) if isinstance(qmodel, IntegerMLP) else _cnn_int(qmodel, x)


def _deq_layer(layer: IntLayer, act_in: QParams) -> tuple[jax.Array, jax.Array]:
    kernel = layer.kernel.astype(jnp.float32) * layer.scale
    return kernel, layer.bias.astype(jnp.float32) * (act_in.scale * layer.scale)


def fake_quant_forward(qmodel: IntegerMLP | IntegerCNN, x: jax.typing.ArrayLike) -> jax.Array:
    """The same network as :func:`int_forward` in float32 with fake quantization: the
    dequantized weights and bias, and each activation quantize-dequantized with its
    QParams. Agrees with :func:`int_forward` to within one output step."""
    x = _check_input(qmodel, x)
    fq = fake_quant_with
    if isinstance(qmodel, IntegerMLP):
        a = qmodel.acts
        h = fq(x.reshape(x.shape[0], -1), a[0])
        for i, layer in enumerate(qmodel.layers):
            k, b = _deq_layer(layer, a[i])
            y = h @ k + b
            h = fq(jax.nn.relu(y) if i < len(qmodel.layers) - 1 else y, a[i + 1])
        return h
    L, a = qmodel.layers, qmodel.acts
    folded = {name: _deq_layer(L[name], a[prev]) for name, prev in (
        ("conv1", "input"), ("conv2", "conv1"), ("res_conv1", "conv2"),
        ("res_conv2", "res_conv1"), ("head", "residual"))}
    h = fq(x, a["input"])
    for name in ("conv1", "conv2"):
        h = _pool(fq(jax.nn.relu(_conv(h, folded[name][0]) + folded[name][1]), a[name]))
    r = fq(jax.nn.relu(_conv(h, folded["res_conv1"][0]) + folded["res_conv1"][1]),
           a["res_conv1"])
    h = fq(jax.nn.relu(_conv(r, folded["res_conv2"][0]) + folded["res_conv2"][1] + h),
           a["residual"])
    return fq(h.reshape(h.shape[0], -1) @ folded["head"][0] + folded["head"][1], a["logits"])
