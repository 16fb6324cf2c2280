"""Mixed precision under a size budget: how many bits each layer gets.

Layers are not equally sensitive to quantization: the first layer of an MLP holds most of
the weights but tolerates few bits, a small classifier layer may need more. Two steps:

1. :func:`sensitivity_scan` -- quantize *one* layer's kernel at each candidate width
   (weight-only, the rest float) and measure accuracy on a validation split held out
   from the training data (``pruning_kit.data.holdout``; never the test set).
2. :func:`allocate_bits` -- pick one width per layer so that the stored bytes (packed
   codes + per-channel float32 scales, exactly as :mod:`pruning_kit.quant_storage` counts
   them) fit the budget with the smallest summed accuracy loss: an exact search over all
   combinations for up to 6 layers, a greedy one beyond.

The result is a ``{"layers/0/kernel": 4, ...}`` mapping that
:func:`pruning_kit.quant_storage.quantize_tree` takes directly. Summing per-layer losses
assumes they add up, which holds roughly when each is small; check the chosen model's
accuracy on the validation split.

Introduced in ``notebooks/01_quantization.ipynb``.

Examples:
    >>> sens = {"a": {2: 0.50, 4: 0.88, 8: 0.90},     # accuracy with only "a" quantized
    ...         "b": {2: 0.89, 4: 0.90, 8: 0.90}}
    >>> shapes = {"a": (100, 10), "b": (100, 10)}
    >>> [layer_bytes(shapes["a"], b) for b in (2, 4, 8)]   # codes + 10 float32 scales
    [290, 540, 1040]
    >>> allocate_bits(sens, shapes, 1000)             # the sensitive layer gets more bits
    {'a': 4, 'b': 2}
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from pruning_kit import train as train_lib
from pruning_kit import tree, validate
from pruning_kit.quant_storage import dequantized_model, packed_nbytes, quantize_tree

__all__ = ["allocate_bits", "kernel_shapes", "layer_bytes", "sensitivity_scan",
           "stored_bytes"]

EXACT_MAX_LAYERS = 6
Sensitivity = Mapping[str, Mapping[int, float]]



def _check_options(bits_options: Sequence[int]) -> tuple[int, ...]:
    options = tuple(bits_options)
    if not options:
        raise ValueError("bits_options is empty; pass widths such as (2, 3, 4, 8).")
    for b in options:
        validate.bits(b, name="each of bits_options", minimum=2)
    if len(set(options)) != len(options):
        raise ValueError(f"bits_options has repeated widths: {options}.")
    return tuple(sorted(int(b) for b in options))


def kernel_shapes(model: nnx.Module, *,
                  filter: Callable[[str, jax.Array], bool] = tree.is_kernel
                  ) -> dict[str, tuple[int, ...]]:
    """``{"layers/0/kernel": (784, 300), ...}``: the shapes of the tensors to quantize.

    The names are those ``quantize_tree``'s ``bits`` mapping takes.

    Examples:
        >>> from pruning_kit import models
        >>> kernel_shapes(models.lenet_300_100())
        {'layers/0/kernel': (784, 300), 'layers/1/kernel': (300, 100), \
'layers/2/kernel': (100, 10)}
    """
    leaves = tree.named_leaves(nnx.state(model, nnx.Param), filter=filter)
    return {name: tuple(int(s) for s in np.shape(leaf)) for name, leaf in leaves.items()}


def layer_bytes(shape: Sequence[int], bits: int, *, per_channel: bool = True) -> int:
    """Stored bytes of one kernel at ``bits``: packed codes plus float32 scales (one per
    output channel -- the last axis -- or one per tensor), as ``QuantizedTensor.nbytes``.

    Examples:
        >>> layer_bytes((784, 300), 4), layer_bytes((784, 300), 4, per_channel=False)
        (118800, 117604)
    """
    if isinstance(shape, (int, np.integer)) or not isinstance(shape, (tuple, list)):
        raise ValueError(f"shape must be a kernel shape such as (784, 300) (see "
                         f"kernel_shapes(model)), got {shape!r}; the per-channel scales need "
                         "the output-channel count, not just the number of weights.")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape}.")
    bits = validate.bits(bits, minimum=2)
    return packed_nbytes(int(np.prod(shape)), bits) + 4 * (shape[-1] if per_channel else 1)


def stored_bytes(layer_sizes: Mapping[str, Sequence[int]], bits: Mapping[str, int], *,
                 per_channel: bool = True) -> int:
    """Total :func:`layer_bytes` of the layers at the widths ``bits`` (same keys)."""
    if set(bits) != set(layer_sizes):
        raise ValueError(f"bits and layer_sizes name different layers: "
                         f"{sorted(set(bits) ^ set(layer_sizes))}.")
    return sum(layer_bytes(layer_sizes[k], bits[k], per_channel=per_channel) for k in bits)


def sensitivity_scan(model: nnx.Module, x_val: np.ndarray, y_val: np.ndarray,
                     bits_options: Sequence[int] = (2, 3, 4, 8), *, per_channel: bool = True,
                     method: str = "minmax",
                     filter: Callable[[str, jax.Array], bool] = tree.is_kernel,
                     ) -> dict[str, dict[int, float]]:
    """Accuracy when only one layer's kernel is quantized, for each layer and width.

    Weight-only post-training quantization (symmetric, :func:`pruning_kit.quant_storage.
    quantize_tree` with ``filter`` narrowed to one tensor), every other parameter float.

    Args:
        model: any NNX classifier.
        x_val, y_val: a validation split held out from the training data (not the test
            set: the scan chooses the model).
        bits_options: candidate widths, each 2..16.
        per_channel: one scale per output channel (else per tensor).
        method: ``"minmax"`` or ``"mse"`` weight clipping.
        filter: which tensors are layers to scan; default kernels (ndim >= 2).

    Returns:
        ``{name: {bits: accuracy}}``, accuracies as fractions in [0, 1]; the float model's
        accuracy minus these is each layer's loss.

    Raises:
        ValueError: bad ``bits_options``, empty or mismatched validation data, no tensor
            passes ``filter``.
    """
    options = _check_options(bits_options)
    names = list(kernel_shapes(model, filter=filter))
    axis = -1 if per_channel else None
    result: dict[str, dict[int, float]] = {}
    for name in names:
        result[name] = {}
        for b in options:
            qtree = quantize_tree(model, b, axis=axis, method=method,
                                  filter=lambda path, leaf, name=name: path == name)
            result[name][b] = train_lib.evaluate(dequantized_model(model, qtree), x_val,
                                                 np.asarray(y_val))
    return result


def _check_sensitivity(sensitivity: Sensitivity, layer_sizes: Mapping[str, Any],
                       options: tuple[int, ...]) -> None:
    if not sensitivity:
        raise ValueError("sensitivity is empty; pass sensitivity_scan's result.")
    if set(sensitivity) != set(layer_sizes):
        raise ValueError(f"sensitivity and layer_sizes name different layers: "
                         f"{sorted(set(sensitivity) ^ set(layer_sizes))}.")
    for name, row in sensitivity.items():
        missing = [b for b in options if b not in row]
        if missing:
            raise ValueError(f"sensitivity['{name}'] has no accuracy for bits {missing}; "
                             "scan with the same bits_options.")
        bad = [b for b in options if not np.isfinite(row[b])]
        if bad:
            raise ValueError(f"sensitivity['{name}'] is not finite at bits {bad}.")


def allocate_bits(sensitivity: Sensitivity, layer_sizes: Mapping[str, Sequence[int]],
                  budget_bytes: int, bits_options: Sequence[int] | None = None, *,
                  per_channel: bool = True) -> dict[str, int]:
    """Bits per layer that fit ``budget_bytes`` with the least summed accuracy loss.

    The loss of a layer at ``b`` bits is ``max(accuracies of that layer) - accuracy[b]``
    from ``sensitivity``; the stored size is :func:`stored_bytes`. With up to
    :data:`EXACT_MAX_LAYERS` layers every combination is tried (ties: fewer bytes, then
    more bits); beyond that, a greedy search starts from the smallest widths and keeps
    making the upgrade with the largest loss reduction per extra byte that still fits.

    Args:
        sensitivity: ``{name: {bits: accuracy}}`` from :func:`sensitivity_scan`.
        layer_sizes: ``{name: kernel shape}`` (:func:`kernel_shapes`), same names.
        budget_bytes: the most bytes the quantized kernels may take (biases and other
            float32 parameters are not counted: add them separately).
        bits_options: the widths to choose from (each present in ``sensitivity`` for
            every layer); default: the widths ``sensitivity`` has for every layer.
        per_channel: count one float32 scale per output channel (else per tensor).

    Returns:
        ``{name: bits}``, ready for ``quantize_tree(model, bits)``.

    Raises:
        ValueError: even every layer at the smallest width does not fit (the message
            says how many bytes that needs), or inconsistent inputs.
    """
    if bits_options is None:
        if not sensitivity:
            raise ValueError("sensitivity is empty; pass sensitivity_scan's result.")
        bits_options = sorted(set.intersection(*(set(row) for row in sensitivity.values())))
    options = _check_options(bits_options)
    _check_sensitivity(sensitivity, layer_sizes, options)
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, np.integer)) \
            or budget_bytes < 0:
        raise ValueError(f"budget_bytes must be a non-negative integer, got "
                         f"{budget_bytes!r}.")
    names = list(sensitivity)
    loss = {n: {b: max(sensitivity[n][o] for o in options) - sensitivity[n][b]
                for b in options} for n in names}
    size = {n: {b: layer_bytes(layer_sizes[n], b, per_channel=per_channel) for b in options}
            for n in names}
    smallest = sum(size[n][options[0]] for n in names)
    if smallest > budget_bytes:
        raise ValueError(f"Even {options[0]} bits for every layer needs {smallest} bytes, "
                         f"over the budget of {budget_bytes}; raise the budget, allow fewer "
                         "bits, or prune the model first.")
    if len(names) <= EXACT_MAX_LAYERS:
        best = None
        for combo in itertools.product(options, repeat=len(names)):
            nbytes = sum(size[n][b] for n, b in zip(names, combo, strict=True))
            if nbytes > budget_bytes:
                continue
            key = (round(sum(loss[n][b] for n, b in zip(names, combo, strict=True)), 12),
                   nbytes, tuple(-b for b in combo))
            if best is None or key < best[0]:
                best = (key, combo)
        return dict(zip(names, best[1], strict=True))
    choice = {n: options[0] for n in names}
    used = smallest
    while True:
        moves = []
        for n in names:
            for b in options:
                extra = size[n][b] - size[n][choice[n]]
                gain = loss[n][choice[n]] - loss[n][b]
                if b > choice[n] and used + extra <= budget_bytes and gain > 0:
                    moves.append((gain / extra, gain, n, b, extra))
        if not moves:
            return choice
        _, _, n, b, extra = max(moves)
        choice[n] = b
        used += extra
