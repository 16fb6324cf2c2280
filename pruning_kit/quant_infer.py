"""Real integer inference (int8 x int8 -> int32) of a chain of dense layers, and the
BatchNorm-folding algebra.

:func:`quantize_mlp` builds the integer version of any model whose forward is a chain of
dense layers with ReLU between (the course's LeNet-300-100, an ``nnx.Sequential`` MLP of
yours): the layers are read from the model's traced forward
(:mod:`pruning_kit.interpret`), never from a table of layer names. Convolutional networks,
residual blocks and anything else run integer matmuls and convolutions through
:func:`pruning_kit.w8a8.quantize_model`, which works on any model. The integer pipeline
follows the usual full-integer recipe (PyTorch/fbgemm, TFLite):

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

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pruning_kit import fold as fold_lib
from pruning_kit import interpret, tree, validate
from pruning_kit.quantize import (
    QParams,
    calibrate,
    compute_qparams,
    dequantize,
    fake_quant_with,
    int_range,
    quantize,
)

__all__ = [
    "IntLayer", "IntegerMLP", "dense_chain", "fake_quant_forward", "fold_batchnorm",
    "int_forward", "quantize_mlp",
]

_OFFSET = 128  # unsigned activation code u is held as the int8 u - 128


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


@functools.partial(jax.tree_util.register_dataclass, data_fields=["dense", "acts"],
                   meta_fields=["names"])
@dataclasses.dataclass(frozen=True)
class IntegerMLP:
    """An integer chain of dense layers: ``dense[i]`` reads codes with ``acts[i]``;
    ``acts[-1]`` codes the logits; ``names[i]`` is layer i's path in the model. A pytree
    (the names are static), so ``jax.jit(int_forward)(qm, x)`` works."""

    dense: tuple[IntLayer, ...]
    acts: tuple[QParams, ...]
    names: tuple[str, ...] = ()


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
    validate.bits(weight_bits, name="weight_bits", minimum=2, maximum=8)
    validate.bits(act_bits, name="act_bits", maximum=8)
    if output_bits is not None:
        validate.bits(output_bits, name="output_bits", maximum=8)
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


def dense_chain(model: Any, example: Any) -> list[tuple[str, jax.Array, jax.Array]]:
    """``[(path, kernel, bias), ...]`` of a model whose forward is dense layers with ReLU
    between, read from its traced forward -- and checked: the chain recomputed from these
    arrays must give the model's outputs on ``example``.

    Raises:
        ValueError: the model is not such a chain (a convolution, a norm, a residual...).
    """
    fwd = interpret.Forward(model, example)
    ops = fwd.kernel_ops
    if not ops:
        interpret.check_kernel_ops(fwd, "quantize_mlp")   # says which layers it cannot see
    if any(op.primitive != "dot_general" or np.ndim(fwd.leaf(op.path)) != 2
                      for op in ops):
        raise ValueError(f"{type(model).__name__} is not a chain of dense layers (its layers: "
                         f"{[(op.path, op.primitive) for op in ops]}); use "
                         "w8a8.quantize_model, which runs integer matmuls and convolutions "
                         "in any model.")
    biases = fold_lib.kernel_biases(fwd)
    chain = []
    for op in ops:
        kernel = jnp.asarray(fwd.leaf(op.path), jnp.float32)
        bias = jnp.asarray(fwd.leaf(biases[op.path]), jnp.float32) if op.path in biases \
            else jnp.zeros(kernel.shape[1])
        chain.append((op.path.rsplit(tree.SEP, 1)[0], kernel, bias))
    x = jnp.asarray(example, jnp.float32)
    got = _chain_float(chain, x)[-1]
    want = jnp.asarray(fwd(x))
    if got.shape != want.shape or float(jnp.abs(got - want).max()) > 1e-4 * max(
            1.0, float(jnp.abs(want).max())):
        raise ValueError(f"{type(model).__name__} is not a plain chain of dense layers with "
                         "ReLU between (recomputing it that way changes its outputs); use "
                         "w8a8.quantize_model for integer inference of any model.")
    return chain


def _chain_float(chain: Sequence[tuple[str, jax.Array, jax.Array]], x: jax.Array
                 ) -> list[jax.Array]:
    """The chain's float activations: its input (flattened), each post-ReLU hidden, logits."""
    h = x.reshape(x.shape[0], -1)
    out = [h]
    for i, (_, kernel, bias) in enumerate(chain):
        h = h @ kernel + bias
        h = jax.nn.relu(h) if i < len(chain) - 1 else h
        out.append(h)
    return out


def quantize_mlp(model: Any, calib_x: jax.typing.ArrayLike, *,
                 weight_bits: int = 8, act_bits: int = 8, per_channel: bool = True,
                 method: str = "minmax", percentile: float = 99.99,
                 output_bits: int | None = None,
                 act_qparams: Sequence[QParams] | None = None) -> IntegerMLP:
    """Build the integer version of a chain of dense layers with ReLU between.

    Args:
        model: any NNX model whose forward is such a chain -- the course's
            :class:`~pruning_kit.models.MLP`, an ``nnx.Sequential`` of yours; the layers
            are read from its traced forward (:func:`dense_chain`).
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

    Raises:
        ValueError: bad bits or calibration data, or a model that is not a dense chain.

    Examples:
        >>> from flax import nnx
        >>> from pruning_kit import models
        >>> model = models.MLP(4, (8,), 3, rngs=nnx.Rngs(0))
        >>> x = jax.random.uniform(jax.random.key(1), (64, 4))
        >>> qm = quantize_mlp(model, x)
        >>> qm.names, qm.dense[0].kernel.dtype, int_forward(qm, x).shape
        (('layers/0', 'layers/1'), dtype('int8'), (64, 3))
        >>> step = float(qm.acts[-1].scale)
        >>> bool(jnp.abs(int_forward(qm, x) - fake_quant_forward(qm, x)).max() <= step * 1.001)
        True
    """
    x = _check_setup(weight_bits, act_bits, calib_x, output_bits)
    chain = dense_chain(model, x[:2])
    acts_float = _chain_float(chain, x)
    names = [name for name, _, _ in chain]
    samples = {"input": acts_float[0], **{names[i]: a for i, a in
                                         enumerate(acts_float[1:-1])},
               "logits": acts_float[-1]}
    if act_qparams is not None:
        fixed = _check_act_qparams(act_qparams, len(chain), act_bits)
        samples = {"logits": samples["logits"]}
    acts = tuple(_calibrate_all(samples, act_bits, method, percentile, output_bits).values())
    if act_qparams is not None:
        acts = fixed + acts
    dense = tuple(_int_layer(name, kernel, bias, acts[i], weight_bits, per_channel)
                  for i, (name, kernel, bias) in enumerate(chain))
    return IntegerMLP(dense, acts, tuple(names))


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
    for i, layer in enumerate(qm.dense):
        acc = _int_dense(codes, layer, a[i])
        codes = _int_step(acc, layer, a[i], a[i + 1], relu=i < len(qm.dense) - 1)
    return dequantize(codes, a[-1])


def _check_input(qmodel: Any, x: Any) -> jax.Array:
    if not isinstance(qmodel, IntegerMLP):
        raise ValueError(f"Expected an IntegerMLP (from quantize_mlp), got "
                         f"{type(qmodel).__name__}; a w8a8.IntegerModel is called directly: "
                         "qmodel(x).")
    x = jnp.asarray(x, jnp.float32)
    need, have = qmodel.dense[0].kernel.shape[0], int(np.prod(x.shape[1:]))
    if x.ndim < 2 or x.shape[0] == 0 or have != need:
        raise ValueError(f"x of shape {x.shape} does not fit the model: it needs a non-empty "
                         f"batch with {need} input features.")
    return x


def int_forward(qmodel: IntegerMLP, x: jax.typing.ArrayLike) -> jax.Array:
    """Logits by integer arithmetic: int8 x int8 -> int32 layers, int8 activations.

    Returns the int8 output codes dequantized to float32 (for argmax and comparison).
    Pure and jit-able: ``jax.jit(int_forward)(qmodel, x)``.
    """
    return _mlp_int(qmodel, _check_input(qmodel, x))


def _deq_layer(layer: IntLayer, act_in: QParams) -> tuple[jax.Array, jax.Array]:
    kernel = layer.kernel.astype(jnp.float32) * layer.scale
    return kernel, layer.bias.astype(jnp.float32) * (act_in.scale * layer.scale)


def fake_quant_forward(qmodel: IntegerMLP, x: jax.typing.ArrayLike) -> jax.Array:
    """The same network as :func:`int_forward` in float32 with fake quantization: the
    dequantized weights and bias, and each activation quantize-dequantized with its
    QParams. Agrees with :func:`int_forward` to within one output step."""
    x = _check_input(qmodel, x)
    a = qmodel.acts
    h = fake_quant_with(x.reshape(x.shape[0], -1), a[0])
    for i, layer in enumerate(qmodel.dense):
        k, b = _deq_layer(layer, a[i])
        y = h @ k + b
        h = fake_quant_with(jax.nn.relu(y) if i < len(qmodel.dense) - 1 else y, a[i + 1])
    return h
