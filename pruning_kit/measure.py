"""Measuring a model: size, sparsity, compute, latency and accuracy in one table.

Every notebook ends its experiments the same way: build a row per model with
:func:`measure`, then print :func:`compare` of the rows, so a pruned or quantized model is
always judged against its baseline with the same yardsticks:

* **size** -- :func:`count_params`, :func:`count_nonzero`, :func:`dense_bytes` (as if
  every parameter were ``float32``) and :func:`serialized_bytes` (the file
  :func:`pruning_kit.train.save_model` actually writes);
* **compute** -- :func:`cost`, XLA's own FLOP count of the compiled forward pass;
* **speed** -- :func:`latency`, the median wall time of the ``jax.jit``-compiled forward;
  :func:`compare_latency`, several candidates timed interleaved, with the median and
  spread of each and of their speed-up over a baseline (the figure to quote);
* **where the parameters are** -- :func:`layer_table`, one row per layer.

Everything is generic over any Flax NNX model returning logits (and, for the counts, over
any pytree of arrays). :func:`machine_info` records where a timing was taken (CPU model,
instruction set, versions).

Introduced in ``notebooks/00_compression_and_measurement.ipynb``.

Examples:
    >>> from pruning_kit import models
    >>> model = models.lenet_300_100()
    >>> count_params(model), dense_bytes(model)
    (266610, 1066440)
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp  # noqa: F401  (used by the doctests)
import numpy as np
from flax import nnx

from pruning_kit import models as models_lib
from pruning_kit import train as train_lib
from pruning_kit import validate
from pruning_kit.table import Table, compare, format_bytes, format_table, format_value
from pruning_kit.timing import (  # re-exported: the course imports measure
    LatencyComparison,
    LatencyResult,
    LatencyStats,
    ModelOrFn,
    as_batch,
    compare_latency,
    compiled_forward,
    latency,
    machine_info,
    machine_summary,
)
from pruning_kit.tree import SEP, path_name

__all__ = [
    "LatencyComparison", "LatencyResult", "LatencyStats", "Table", "compare",
    "accuracy_standard_error", "compare_latency", "cost", "count_nonzero", "count_params",
    "dense_bytes", "format_bytes",
    "format_table", "format_value", "latency", "layer_table", "machine_info",
    "machine_summary", "measure", "named_params", "paired_standard_error", "serialized_bytes",
]

Params = Any


# --------------------------------------------------------------------------- noise
def accuracy_standard_error(accuracy: float, n: int, *, percent: bool = False) -> float:
    """One standard error of an accuracy measured on ``n`` images: ``sqrt(p (1 - p) / n)``.

    ``accuracy`` is a fraction, or with ``percent`` a percentage (the result is then in
    percentage points). It is the noise of one accuracy as an estimate of how the model does
    on new images. To compare two models scored on the *same* images use
    :func:`paired_standard_error` (only the images they disagree on count, so it is far
    smaller when the two mostly agree);
    to compare two training recipes, train several seeds (a second run of one recipe moves
    its accuracy too, which no test set measures).

    Examples:
        >>> round(accuracy_standard_error(0.9, 5000), 4)
        0.0042
        >>> round(accuracy_standard_error(90.0, 5000, percent=True), 2)
        0.42

    Raises:
        ValueError: ``n`` is not a positive integer or ``accuracy`` is outside
            ``[0, 1]`` (``[0, 100]`` with ``percent``).
    """
    n = validate.integer("n", n, minimum=1)
    scale = 100.0 if percent else 1.0
    if not 0.0 <= float(accuracy) <= scale:
        raise ValueError(f"accuracy must be in [0, {scale:g}], got {accuracy!r}"
                         + ("" if percent else "; pass percent=True for a percentage") + ".")
    p = float(accuracy) / scale
    return scale * math.sqrt(p * (1.0 - p) / n)


def paired_standard_error(correct_a: Any, correct_b: Any, *,
                          percent: bool = False) -> float:
    """One standard error of ``accuracy(b) - accuracy(a)`` for two models on the same images.

    Only the images on which the two disagree move the difference: with ``n01`` images
    right for ``a`` and wrong for ``b``, ``n10`` the reverse, and ``n`` images in all, the
    per-image differences have standard error ``sqrt(n01 + n10 - (n01 - n10)^2 / n) / n``
    (about ``sqrt(n01 + n10) / n``, notebook 00's formula, when the difference is small).
    It measures the test set's noise for these two trained models, not the noise of
    training them: a second seed of either recipe moves its accuracy too.

    Args:
        correct_a, correct_b: one boolean per image, True where that model is right (e.g.
            ``train.predict(model, x).argmax(-1) == y``), in the same image order.
        percent: the result in percentage points instead of a fraction.

    Returns:
        The standard error (0.0 when the two models agree on every image).

    Raises:
        ValueError: the two are not 1-D, not the same length, empty, or not booleans.

    Examples:
        >>> import numpy as np
        >>> a = np.array([True] * 90 + [False] * 10)
        >>> b = a.copy(); b[:3] = False; b[90:95] = True        # 3 lost, 5 gained
        >>> round(paired_standard_error(a, b, percent=True), 2)
        2.82
    """
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    for name, v in (("correct_a", a), ("correct_b", b)):
        if v.ndim != 1 or v.dtype != np.bool_:
            raise ValueError(f"{name} must be a 1-D boolean array (True where the model is "
                             f"right), got dtype {v.dtype} and shape {v.shape}; build it "
                             "as predictions.argmax(-1) == labels.")
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"correct_a and correct_b must be non-empty and score the same "
                         f"images, got {len(a)} and {len(b)} entries.")
    n, n01, n10 = len(a), int(np.sum(a & ~b)), int(np.sum(~a & b))
    scale = 100.0 if percent else 1.0
    return scale * math.sqrt(max(n01 + n10 - (n01 - n10) ** 2 / n, 0.0)) / n


# --------------------------------------------------------------------------- counting
def named_params(tree_or_model: Params | nnx.Module) -> list[tuple[str, jax.Array]]:
    """``(name, array)`` for every parameter, in a stable order.

    Names are :mod:`pruning_kit.tree` paths (``"layers/0/kernel"``).

    For an NNX model these are its ``nnx.Param`` values (BatchNorm statistics excluded);
    for a pytree, every leaf, which must be an array.

    Raises:
        ValueError: ``tree_or_model`` is neither a model nor a pytree of arrays.

    Examples:
        >>> from pruning_kit import models
        >>> [name for name, _ in named_params(models.MLP(64, (8,), rngs=nnx.Rngs(0)))]
        ['layers/0/bias', 'layers/0/kernel', 'layers/1/bias', 'layers/1/kernel']
    """
    tree = nnx.state(tree_or_model, nnx.Param) if isinstance(tree_or_model, nnx.Module) \
        else tree_or_model
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not leaves and not isinstance(tree_or_model, nnx.Module):
        raise ValueError(f"Expected an NNX model or a pytree of arrays, got "
                         f"{type(tree_or_model).__name__} {tree_or_model!r:.60} with no arrays.")
    out = []
    for path, leaf in leaves:
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            raise ValueError(f"Expected an NNX model or a pytree of arrays, but leaf "
                             f"{jax.tree_util.keystr(path)!r} is a {type(leaf).__name__}. "
                             "Pass the model itself or nnx.state(model, nnx.Param).")
        out.append((path_name(path), leaf))  # an nnx.Variable's trailing "value" dropped
    return out


def count_params(tree_or_model: Params | nnx.Module) -> int:
    """Number of parameter entries (``nnx.Param`` leaves of a model, or all array leaves).

    Examples:
        >>> count_params({"w": jnp.ones((3, 4)), "b": jnp.zeros(4)})
        16
    """
    return int(sum(np.size(a) for _, a in named_params(tree_or_model)))


def count_nonzero(tree_or_model: Params | nnx.Module) -> int:
    """Number of non-zero parameter entries (what a sparse format would have to store).

    Examples:
        >>> count_nonzero({"w": jnp.array([[0.0, 1.0], [2.0, 0.0]])})
        2
    """
    return int(sum(np.count_nonzero(np.asarray(a)) for _, a in named_params(tree_or_model)))


def dense_bytes(tree_or_model: Params | nnx.Module) -> int:
    """Bytes if every parameter were stored densely as ``float32``: ``4 * count_params``."""
    return 4 * count_params(tree_or_model)


def serialized_bytes(model_or_path: nnx.Module | str | os.PathLike | Params) -> int:
    """Bytes as actually serialized: the size of the checkpoint file.

    Args:
        model_or_path: a model registered in ``pruning_kit.models.MODEL_CLASSES`` (saved
            with :func:`pruning_kit.train.save_model` to a temporary file, measured, and
            deleted); any other NNX model or pytree of arrays (saved as an ``.npz`` of
            its state, the same layout without the header); or the path of an existing
            file, whose size is returned.

    Returns:
        File size in bytes.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: something that is not a model, pytree of arrays or path.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"No file at {path}; pass a model or the path of a "
                                    "saved checkpoint.")
        return path.stat().st_size
    with tempfile.TemporaryDirectory(prefix="pruning_kit_measure_") as tmp:
        path = Path(tmp) / "model.npz"
        if (isinstance(model_or_path, nnx.Module) and hasattr(model_or_path, "config")
                and models_lib.MODEL_CLASSES.get(type(model_or_path).__name__)
                is type(model_or_path)):
            train_lib.save_model(model_or_path, path)
        else:
            tree = (nnx.state(model_or_path) if isinstance(model_or_path, nnx.Module)
                    else model_or_path)
            arrays = {name: train_lib.host_array(a) for name, a in named_params(tree)}
            np.savez(path, **arrays)
        return path.stat().st_size


# --------------------------------------------------------------------------- compute
def cost(model_or_fn: ModelOrFn, x: Any) -> dict[str, float]:
    """FLOPs of the compiled forward pass on ``x``, from XLA's own cost analysis.

    Counts what XLA compiles (matmuls, convolutions, bias adds, activations); a
    multiply-accumulate is two FLOPs, so ``macs = flops / 2``. Zeros in the weights do not
    lower the count: dense kernels do the same work whatever their sparsity.

    Args:
        model_or_fn: an NNX model (run in eval mode) or a function ``fn(x)``.
        x: an input batch.

    Returns:
        ``{"flops", "macs", "flops_per_example", "macs_per_example", "batch_size"}``; the
        counts are NaN if this backend's cost analysis does not report FLOPs.

    Raises:
        ValueError: an empty ``x`` or not a model/callable.

    Examples:
        >>> c = cost(lambda x: x @ jnp.ones((4, 3)), jnp.ones((2, 4)))
        >>> c["macs_per_example"]
        12.0
    """
    x = as_batch(x)
    _, lower = compiled_forward(model_or_fn)
    analysis = lower(x).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device program
        analysis = analysis[0] if analysis else None
    flops = float((analysis or {}).get("flops", math.nan))
    batch = int(x.shape[0])
    return {"flops": flops, "macs": flops / 2, "flops_per_example": flops / batch,
            "macs_per_example": flops / 2 / batch, "batch_size": batch}


# --------------------------------------------------------------------------- per layer
def layer_table(model: nnx.Module) -> Table:
    """One row per module that owns parameters: where the parameters of ``model`` live.

    Rows (dicts) have ``name`` (path such as ``layers/0`` or ``conv1``), ``type``
    (``Linear``, ``Conv``, ``BatchNorm``, ...), ``shape`` (of the kernel, else of the
    largest parameter), ``params``, ``nonzeros``, ``sparsity`` (fraction of zeros; a
    :class:`Table` shows it as a percent) and
    ``dense_bytes`` (``float32``). The ``params`` column sums to :func:`count_params`.

    Raises:
        ValueError: ``model`` is not an NNX module.

    Examples:
        >>> from pruning_kit import models
        >>> [(r["name"], r["shape"], r["params"]) for r in layer_table(models.lenet_300_100())]
        [('layers/0', (784, 300), 235500), ('layers/1', (300, 100), 30100), \
('layers/2', (100, 10), 1010)]
    """
    if not isinstance(model, nnx.Module):
        raise ValueError(f"layer_table needs an NNX model, got {type(model).__name__}; for a "
                         "params pytree use named_params().")
    modules, order = {}, {}
    for path, module in nnx.iter_modules(model):
        name = SEP.join(str(k) for k in path)
        modules[name], order[name] = module, _definition_order(model, modules, path)
    groups: dict[str, dict[str, jax.Array]] = {}
    for name, array in named_params(model):
        owner, _, leaf = name.rpartition(SEP)
        groups.setdefault(owner, {})[leaf] = array
    rows = []
    for owner, arrays in groups.items():
        node = modules.get(owner)
        main = arrays.get("kernel", max(arrays.values(), key=np.size))
        params = int(sum(np.size(a) for a in arrays.values()))
        nonzeros = int(sum(np.count_nonzero(np.asarray(a)) for a in arrays.values()))
        rows.append({"name": owner or "(model)",
                     "type": type(node).__name__ if node is not None else "?",
                     "shape": tuple(main.shape), "params": params, "nonzeros": nonzeros,
                     "sparsity": 1 - nonzeros / params if params else 0.0,
                     "dense_bytes": 4 * params})
    rows.sort(key=lambda r: order.get(r["name"], ()))  # stable: unknown owners keep place
    return Table(rows)


def _definition_order(model: nnx.Module, modules: dict[str, Any], path: tuple) -> tuple:
    """Sort key listing layers in the order ``__init__`` assigned them (conv1, bn1, ...)."""
    key, node = [], model
    for depth, k in enumerate(path):
        # A module may declare its forward order (``nnx.split``/``merge`` and jit sort the
        # attributes of a rebuilt module alphabetically); else use the assignment order.
        declared = getattr(type(node), "LAYER_ORDER", None) if node is not None else None
        if declared is not None:
            attrs = list(declared)
        else:
            attrs = list(vars(node)) if node is not None and hasattr(node, "__dict__") else []
        key.append(attrs.index(str(k)) if str(k) in attrs else len(attrs))
        node = modules.get(SEP.join(str(p) for p in path[:depth + 1]))
    return tuple(key)


# --------------------------------------------------------------------------- one row
def _tile(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if len(x) >= n else x[np.arange(n) % len(x)]


def measure(model: nnx.Module, x_test: Any, y_test: Any, *, name: str | None = None,
            batch_sizes: Sequence[int] = (1, 256), runs: int = 50, warmup: int = 5
            ) -> dict[str, Any]:
    """Everything the course compares, for one model, as one table row.

    Args:
        model: an NNX classifier (put in eval mode).
        x_test, y_test: test inputs and integer labels.
        name: the row's label; default the model's class name.
        batch_sizes: batch sizes to time; batches are the first examples of ``x_test``,
            tiled if ``x_test`` is smaller.
        runs, warmup: passed to :func:`latency`.

    Returns:
        A dict with ``name``, ``accuracy`` (a fraction in [0, 1]), ``params``,
        ``nonzeros``, ``sparsity`` (the fraction of zero parameters), ``dense_bytes``
        (``float32``),
        ``serialized_bytes`` (the saved file), ``macs`` (per example, from XLA) and
        ``latency_b{B}_ms`` (median) for each batch size ``B``.

    Raises:
        ValueError: empty or mismatched test data, a batch size < 1, ``runs < 1``.

    Examples:
        >>> from pruning_kit import data, models
        >>> ds = data.load_digits()
        >>> row = measure(models.MLP(64, (32,), rngs=nnx.Rngs(0)), ds.x_test, ds.y_test,
        ...               batch_sizes=(1,), runs=3)
        >>> row["params"], row["macs"]     # 64*32 + 32*10 multiply-adds, plus bias and ReLU
        (2410, 2405.0)
    """
    if not isinstance(model, nnx.Module):
        raise ValueError(f"measure needs an NNX model, got {type(model).__name__}.")
    x_test = np.asarray(x_test)
    if x_test.ndim == 0 or len(x_test) == 0:
        raise ValueError("x_test is empty; pass at least one test example.")
    batch_sizes = [validate.integer("batch size", b, 1) for b in batch_sizes]
    validate.integer("runs", runs, 1)
    params, nonzeros = count_params(model), count_nonzero(model)
    row: dict[str, Any] = {
        "name": name if name is not None else type(model).__name__,
        "accuracy": train_lib.evaluate(model, x_test, np.asarray(y_test)),
        "params": params,
        "nonzeros": nonzeros,
        "sparsity": 1 - nonzeros / params if params else 0.0,
        "dense_bytes": 4 * params,
        "serialized_bytes": serialized_bytes(model),
        "macs": cost(model, x_test[:1])["macs_per_example"],
    }
    for b in batch_sizes:
        row[f"latency_b{b}_ms"] = latency(model, _tile(x_test, b), runs=runs,
                                          warmup=warmup).median_ms
    return row
