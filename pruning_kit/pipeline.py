"""The full compression pipeline: prune, share weights, fine-tune with a teacher, ship.

Deep Compression (Han et al., 2016) chains three techniques on a trained network:
pruning (:mod:`pruning_kit.prune`), trained quantization by weight sharing
(:mod:`pruning_kit.codebook`) and Huffman coding (:mod:`pruning_kit.codec`). This module
holds the pieces the chain needs beyond those modules:

* :func:`kmeans_nonzero` -- one k-means codebook per kernel, over its **non-zero** weights
  only. (``qat.kmeans_quantize_model`` clusters every weight: on a 90%-sparse kernel the
  zeros would take centroids and become small non-zero values.) Pruned positions get the
  index ``-1`` and stay exactly zero.
* :func:`shared_model` / :func:`finetune_shared` -- the weight-shared model, and the
  fine-tuning of its centroids (plus, by default, its biases) with any ``loss_fn``, e.g.
  :func:`pruning_kit.distill.recovery_loss` with the dense model's logits as targets;
  indices fixed, so the zeros stay zeros.
* :func:`deep_compression` -- the chain on a pruned model, returning the in-memory model
  that :func:`pruning_kit.codec.save` writes and :func:`pruning_kit.codec.load` gives
  back bit for bit.
* :class:`FoldedCNN` / :func:`fold_cnn_model` -- a :class:`~pruning_kit.models.SmallCNN`
  with its BatchNorms folded into the convolutions (no BatchNorm left to store or run),
  registered in ``models.MODEL_CLASSES`` so that the codec can save and load it (e.g.
  with int8 weights).

Kernel names are the codec's: ``"layers/0/kernel"``.

Introduced in ``notebooks/05_full_pipeline.ipynb`` (``python -m benchmarks.pipeline``).

Examples:
    >>> from pruning_kit import models, prune
    >>> model = models.MLP(64, (32,), rngs=nnx.Rngs(0))
    >>> params = nnx.state(model, nnx.Param)
    >>> nnx.update(model, prune.apply_masks(params, prune.magnitude_masks(params, 0.8)))
    >>> cbs, idx = kmeans_nonzero(model, 2)          # 4 shared values per kernel
    >>> shared = shared_model(model, cbs, idx)
    >>> k = np.asarray(shared.layers[0].kernel[...])
    >>> int((k != 0).sum()), len(np.unique(k[k != 0]))   # the 20% kept, 4 values
    (410, 4)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from pruning_kit import fold as fold_lib
from pruning_kit import graph as graph_lib
from pruning_kit import models as models_lib
from pruning_kit import train as train_lib
from pruning_kit.codebook import kmeans_codebook
from pruning_kit.quant_storage import _path_name, dequantized_model, quantize_tree

__all__ = ["MLP_CHAIN", "Compressed", "FoldedCNN", "deep_compression", "finetune_shared",
           "fold_cnn_model", "kmeans_nonzero", "shared_model"]

#: The MLP chain of notebook 05: bits per kernel, fine-tuning epochs and T/alpha chosen on
#: the validation split by ``python -m benchmarks.pipeline`` (bits: the smallest file within
#: 1 pt of the dense model; the rest kept unless beaten beyond one standard error).
MLP_CHAIN = dict(bits={"layers/0/kernel": 2, "layers/1/kernel": 3, "layers/2/kernel": 4},
                 bias_bits=8, epochs=4, lr=3e-4, batch_size=128, temperature=4.0, alpha=0.7)


# --------------------------------------------------------------------------- names
def _name(path: tuple) -> str:
    if path and getattr(path[-1], "name", None) == "value":      # nnx.Variable leaves
        path = path[:-1]
    return _path_name(path, "/")


def _params(model: nnx.Module) -> dict[str, jax.Array]:
    state = nnx.state(model, nnx.Param)
    return {_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(state)}


def _replace(state: nnx.State, leaves: Mapping[str, jax.Array]) -> nnx.State:
    return jax.tree_util.tree_map_with_path(lambda p, leaf: leaves.get(_name(p), leaf), state)


# --------------------------------------------------------------------------- weight sharing
def kmeans_nonzero(model: nnx.Module, bits: int | Mapping[str, int], *, init: str = "linear",
                   iters: int = 30) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """k-means weight sharing of each kernel's non-zero weights (zeros stay zeros).

    Args:
        model: an NNX model, usually pruned.
        bits: ``2^bits`` shared values per kernel (1..8): one int for every kernel
            (ndim >= 2) or ``{"layers/0/kernel": 3, ...}`` naming the kernels to share.
        init: ``"linear"`` (Han et al.'s choice: centroids evenly spaced between the
            smallest and largest weight, which keeps the rare large weights and gives the
            clusters unequal sizes that Huffman coding then exploits) or ``"density"``.
        iters: Lloyd iterations.

    Returns:
        ``(codebooks, indices)`` by kernel name: float32 ``(2^bits,)`` centroids and int32
        indices of the kernel's shape, ``-1`` where the weight is zero.

    Raises:
        ValueError: a name in ``bits`` that is not a kernel, a kernel with no non-zero
            weight, or bad ``bits``/``init``.
    """
    params = _params(model)
    kernels = {n: v for n, v in params.items() if jnp.ndim(v) >= 2}
    if isinstance(bits, Mapping):
        unknown = sorted(set(bits) - set(kernels))
        if unknown:
            raise ValueError(f"bits names {unknown}, which are not kernels of the model; "
                             f"kernels: {sorted(kernels)}.")
        chosen = dict(bits)
    else:
        chosen = {n: bits for n in kernels}
    codebooks, indices = {}, {}
    for name, b in chosen.items():
        w = np.asarray(kernels[name])
        nz = w != 0
        if not nz.any():
            raise ValueError(f"{name} has no non-zero weight; leave it out of bits.")
        try:
            cb, idx = kmeans_codebook(w[nz], b, iters=iters, init=init)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
        full = np.full(w.shape, -1, np.int32)
        full[nz] = np.asarray(idx, np.int32)
        codebooks[name], indices[name] = cb, jnp.asarray(full)
    return codebooks, indices


def _lookup(codebook: jax.Array, idx: jax.Array) -> jax.Array:
    """``codebook[idx]`` with ``0`` where ``idx == -1``; differentiable in ``codebook``."""
    return jnp.where(idx >= 0, jnp.take(codebook, jnp.maximum(idx, 0)), 0.0)


def _check_shared(model: nnx.Module, codebooks: Mapping, indices: Mapping) -> None:
    params = _params(model)
    if set(codebooks) != set(indices) or set(codebooks) - set(params):
        raise ValueError(f"codebooks {sorted(codebooks)} and indices {sorted(indices)} must "
                         f"name the same kernels of the model ({sorted(params)}); make them "
                         "with kmeans_nonzero(model, bits).")
    for name in codebooks:
        cb, idx = jnp.asarray(codebooks[name]), jnp.asarray(indices[name])
        if cb.ndim != 1 or idx.shape != params[name].shape or (
                idx.size and not -1 <= int(idx.min()) <= int(idx.max()) < cb.size):
            raise ValueError(f"{name}: codebook {cb.shape} and indices {idx.shape} do not fit "
                             f"the kernel {params[name].shape} (indices in -1..len-1).")


def shared_model(model: nnx.Module, codebooks: Mapping[str, Any],
                 indices: Mapping[str, Any]) -> nnx.Module:
    """A copy of ``model`` whose kernels are ``codebook[indices]`` (zero where ``-1``).

    Raises:
        ValueError: codebooks/indices that do not fit the model.
    """
    _check_shared(model, codebooks, indices)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    kernels = {n: _lookup(jnp.asarray(cb, jnp.float32), jnp.asarray(indices[n]))
               for n, cb in codebooks.items()}
    return nnx.merge(graphdef, _replace(params, kernels), rest)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _step(graphdef, tx, loss_fn, trainable, opt_state, params, rest, indices, x, y):
    def objective(tr):
        cbs, others = tr
        kernels = {n: _lookup(cb, indices[n]) for n, cb in cbs.items()}
        model = nnx.merge(graphdef, _replace(params, {**others, **kernels}), rest)
        return loss_fn(model, x, y)[0]

    loss, grads = jax.value_and_grad(objective)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss


def finetune_shared(model: nnx.Module, codebooks: Mapping[str, Any],
                    indices: Mapping[str, Any], x: np.ndarray, y: Any, *,
                    loss_fn: train_lib.LossFn = train_lib.cross_entropy_loss,
                    epochs: int = 3, lr: float = 3e-4, batch_size: int = 128,
                    train_biases: bool = True, seed: int = 0, progress: bool = False
                    ) -> tuple[dict[str, jax.Array], nnx.Module]:
    """Train the shared values (and the other parameters); indices -- and zeros -- fixed.

    The gradient of a centroid is the sum of the gradients of the weights that share it
    (Deep Compression's trained quantization). Adam with a cosine decay of ``lr`` to zero.

    Args:
        model: the model the codebooks were made from (not changed).
        codebooks, indices: from :func:`kmeans_nonzero`.
        x, y: training data; ``y`` the labels or a tuple ``(labels, extra...)`` of arrays
            aligned with ``x``, handed to ``loss_fn`` as in :func:`pruning_kit.train.fit`
            (``y = (labels, teacher_logits)`` with ``distill.recovery_loss()``).
        loss_fn: ``loss_fn(model, x, y) -> (loss, logits)``.
        epochs: passes over the data, >= 1.
        lr: peak learning rate of Adam, > 0.
        batch_size: examples per step (last partial batch dropped).
        train_biases: also train every parameter that is not a shared kernel (biases).
        seed: shuffling seed.
        progress: a ``tqdm`` bar over epochs.

    Returns:
        ``(codebooks, shared)``: the trained codebooks and the weight-shared model (with
        the trained biases), in eval mode.

    Raises:
        ValueError: codebooks that do not fit, bad ``epochs``/``lr``/``batch_size``, empty
            or mismatched data.
        FloatingPointError: the loss diverged.
    """
    _check_shared(model, codebooks, indices)
    train_lib.check_training_args(x, y, epochs=epochs, lr=lr, batch_size=batch_size)
    model = graph_lib.eval_copy(model)            # the caller's model keeps its mode
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    others = {n: v for n, v in _params(model).items() if n not in codebooks} \
        if train_biases else {}
    trainable = ({n: jnp.asarray(cb, jnp.float32) for n, cb in codebooks.items()},
                 {n: jnp.asarray(v) for n, v in others.items()})
    idx = {n: jnp.asarray(indices[n], jnp.int32) for n in codebooks}
    steps = len(x) // batch_size
    tx = optax.adam(optax.cosine_decay_schedule(float(lr), steps * epochs))
    opt_state = tx.init(trainable)
    ys = tuple(y) if isinstance(y, (tuple, list)) else (y,)
    for epoch in tqdm(range(epochs), desc="fine-tune epochs", disable=not progress,
                      leave=False):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        losses = []
        for i in range(steps):
            b = order[i * batch_size:(i + 1) * batch_size]
            yb = tuple(jnp.asarray(a[b]) for a in ys)
            trainable, opt_state, loss = _step(graphdef, tx, loss_fn, trainable, opt_state,
                                               params, rest, idx, jnp.asarray(x[b]),
                                               yb if len(yb) > 1 else yb[0])
            losses.append(loss)
        if not np.isfinite(float(jnp.mean(jnp.stack(losses)))):
            raise FloatingPointError(f"Fine-tuning diverged at epoch {epoch + 1}; lower lr.")
    cbs, others = trainable
    shared = shared_model(nnx.merge(graphdef, _replace(params, others), rest), cbs, idx)
    shared.eval()
    return cbs, shared


class Compressed(NamedTuple):
    """What :func:`deep_compression` returns.

    ``model`` is the compressed model as it runs in memory; ``quantized`` the integer
    codes of its biases, for ``codec.save(path, model, quantized=quantized)``.
    """

    model: nnx.Module
    quantized: Any
    codebooks: dict[str, jax.Array]
    indices: dict[str, jax.Array]


def deep_compression(pruned: nnx.Module, x: np.ndarray, y: Any,
                     bits: int | Mapping[str, int], *, bias_bits: int | None = 8,
                     loss_fn: train_lib.LossFn = train_lib.cross_entropy_loss,
                     epochs: int = 3, lr: float = 3e-4, batch_size: int = 128,
                     init: str = "linear", seed: int = 0, progress: bool = False
                     ) -> Compressed:
    """Weight sharing + fine-tuning + integer biases on an already pruned model.

    1. :func:`kmeans_nonzero` with ``bits`` (zeros kept);
    2. :func:`finetune_shared` with ``loss_fn`` (e.g. ``distill.recovery_loss()`` and
       ``y = (labels, distill.teacher_logits(dense, x))``);
    3. biases (and any other 1-D parameter) rounded to ``bias_bits`` integers, one scale
       per tensor (``None``: biases stay float32).

    Args:
        pruned: a trained, pruned model registered in ``models.MODEL_CLASSES``.
        x, y: fine-tuning data (training set; not the data you choose ``bits`` on).
        bits, init: see :func:`kmeans_nonzero`.
        bias_bits: 2..8 or ``None``.
        loss_fn, epochs, lr, batch_size, seed, progress: see :func:`finetune_shared`.

    Returns:
        A :class:`Compressed`; save it with ``codec.save(path, c.model,
        quantized=c.quantized)``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from pruning_kit import codec, data, models, prune, train
        >>> ds = data.load_digits()
        >>> model = models.MLP(64, (32,), rngs=nnx.Rngs(0))
        >>> _ = train.fit(model, ds.x_train, ds.y_train, epochs=10, batch_size=32,
        ...               learning_rate=3e-3, progress=False)
        >>> params = nnx.state(model, nnx.Param)
        >>> nnx.update(model, prune.apply_masks(params, prune.magnitude_masks(params, 0.5)))
        >>> c = deep_compression(model, ds.x_train, ds.y_train, 3, epochs=3, lr=3e-3,
        ...                      batch_size=32)
        >>> path = codec.save(Path(tempfile.mkdtemp()) / "m.pkc", c.model,
        ...                   quantized=c.quantized)
        >>> back = codec.load(path)
        >>> bool(np.array_equal(train.predict(back, ds.x_test),
        ...                     train.predict(c.model, ds.x_test)))
        True
        >>> train.evaluate(back, ds.x_test, ds.y_test) > 0.85
        True
    """
    cbs, idx = kmeans_nonzero(pruned, bits, init=init)
    cbs, shared = finetune_shared(pruned, cbs, idx, x, y, loss_fn=loss_fn, epochs=epochs,
                                  lr=lr, batch_size=batch_size, seed=seed, progress=progress)
    qtree = None
    if bias_bits is not None:
        qtree = quantize_tree(shared, bias_bits, axis=None,
                              filter=lambda name, leaf: jnp.ndim(leaf) == 1)
        shared = dequantized_model(shared, qtree)
        shared.eval()
    return Compressed(shared, qtree, cbs, idx)


# --------------------------------------------------------------------------- folded CNN
FoldedCNN = models_lib.FoldedCNN   # defined in models (so codec.load needs no import)


def fold_cnn_model(model: models_lib.SmallCNN) -> FoldedCNN:
    """A :class:`FoldedCNN` computing what ``model`` computes in eval mode.

    The BatchNorms are folded by :func:`pruning_kit.fold.fold_batchnorm_model` (pairs
    found in the traced forward, as for any model); the SmallCNN-specific part -- which
    arrays of the folded model fill which layer of the BatchNorm-free class -- is
    :meth:`FoldedCNN.from_folded`, next to both classes in :mod:`pruning_kit.models`.

    Raises:
        ValueError: ``model`` is not a SmallCNN (for your own model, use
            ``fold.fold_batchnorm_model``: it returns your class with the norms folded).

    Examples:
        >>> from pruning_kit import models
        >>> cnn = models.SmallCNN(widths=(4, 8), rngs=nnx.Rngs(0))
        >>> cnn.eval()
        >>> x = jnp.ones((2, 28, 28, 1))
        >>> bool(jnp.allclose(fold_cnn_model(cnn)(x), cnn(x), atol=1e-5))
        True
    """
    if not isinstance(model, models_lib.SmallCNN):
        raise ValueError(f"fold_cnn_model builds the course's FoldedCNN from a SmallCNN, got "
                         f"{type(model).__name__}; for your own model use "
                         "fold.fold_batchnorm_model(model, example).")
    folded, _ = fold_lib.fold_batchnorm_model(model, model.example_input())
    return FoldedCNN.from_folded(folded)
