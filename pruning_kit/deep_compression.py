"""Deep Compression (Han et al., 2016): prune, share weights, Huffman-code -- and ship.

The chain has three techniques on a trained network: pruning (:mod:`pruning_kit.prune`),
trained quantization by weight sharing (:mod:`pruning_kit.weight_sharing`) and Huffman
coding (:mod:`pruning_kit.codec`). This module chains them:

* :func:`deep_compression` -- on a pruned model: k-means codebooks of the **non-zero**
  weights (:func:`pruning_kit.weight_sharing.kmeans_codebooks`; pruned positions get the
  index ``-1`` and stay exactly zero), fine-tuning of the centroids and, by default, the
  biases with any ``loss_fn`` (e.g. :func:`pruning_kit.distill.recovery_loss` with the
  dense model's logits as targets), integer biases; it returns the in-memory model that
  :func:`pruning_kit.codec.save` writes and :func:`pruning_kit.codec.load` gives back bit
  for bit.
* :data:`MLP_CHAIN` -- the settings notebook 05 uses for LeNet-300-100.
* :func:`bits_per_nonzero` -- where a file's bits go, per sparse kernel: Huffman against
  the context-model range coder and the entropy bounds of both.
* :class:`FoldedCNN` / :func:`fold_cnn_model` -- a :class:`~pruning_kit.models.SmallCNN`
  with its BatchNorms folded into the convolutions (no BatchNorm left to store or run),
  registered in ``models.MODEL_CLASSES`` so that the codec can save and load it (e.g.
  with int8 weights).

Kernel names are the codec's: ``"layers/0/kernel"``.

Introduced in ``notebooks/05_full_pipeline.ipynb`` (``python -m benchmarks.pipeline``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruning_kit import context_coding, huffman, weight_sharing
from pruning_kit import fold as fold_lib
from pruning_kit import models as models_lib
from pruning_kit import train as train_lib
from pruning_kit.quant_storage import dequantized_model, quantize_tree
from pruning_kit.tree import named_leaves

__all__ = ["MLP_CHAIN", "Compressed", "FoldedCNN", "bits_per_nonzero", "deep_compression",
           "fold_cnn_model"]

#: The MLP chain of notebook 05: bits per kernel, fine-tuning epochs and T/alpha chosen on
#: the validation split by ``python -m benchmarks.pipeline`` (bits: the smallest file within
#: 1 pt of the dense model; the rest kept unless beaten beyond one standard error).
MLP_CHAIN = dict(bits={"layers/0/kernel": 2, "layers/1/kernel": 3, "layers/2/kernel": 4},
                 bias_bits=8, epochs=4, lr=3e-4, batch_size=128, temperature=4.0, alpha=0.7)


# --------------------------------------------------------------------------- the chain
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

    1. :func:`~pruning_kit.weight_sharing.kmeans_codebooks` with ``bits`` (zeros kept);
    2. :func:`~pruning_kit.weight_sharing.finetune_shared` with ``loss_fn`` (e.g.
       ``distill.recovery_loss()`` and ``y = (labels, distill.teacher_logits(dense, x))``);
    3. biases (and any other 1-D parameter) rounded to ``bias_bits`` integers, one scale
       per tensor (``None``: biases stay float32).

    Args:
        pruned: a trained, pruned model registered in ``models.MODEL_CLASSES``.
        x, y: fine-tuning data (training set; not the data you choose ``bits`` on).
        bits, init: see :func:`pruning_kit.weight_sharing.kmeans_codebooks`.
        bias_bits: 2..8 or ``None``.
        loss_fn, epochs, lr, batch_size, seed, progress: see
            :func:`pruning_kit.weight_sharing.finetune_shared`.

    Returns:
        A :class:`Compressed`; save it with ``codec.save(path, c.model,
        quantized=c.quantized)``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from pruning_kit import codec, data, models, prune, train
        >>> ds = data.load_digits()
        >>> model = models.MLP(64, (32,), rngs=nnx.Rngs(0))        # (train it first)
        >>> params = nnx.state(model, nnx.Param)
        >>> nnx.update(model, prune.apply_masks(params, prune.magnitude_masks(params, 0.5)))
        >>> c = deep_compression(model, ds.x_train, ds.y_train, 3, epochs=1, batch_size=64)
        >>> k = np.asarray(c.model.layers[0].kernel[...])
        >>> float((k == 0).mean()), len(np.unique(k[k != 0])) <= 2**3   # zeros kept, shared
        (0.5, True)
        >>> path = codec.save(Path(tempfile.mkdtemp()) / "m.pkc", c.model,
        ...                   quantized=c.quantized)
        >>> bool(np.array_equal(train.predict(codec.load(path), ds.x_test),
        ...                     train.predict(c.model, ds.x_test)))
        True
    """
    cbs, idx = weight_sharing.kmeans_codebooks(pruned, bits, init=init)
    cbs, shared = weight_sharing.finetune_shared(pruned, cbs, idx, x, y, loss_fn=loss_fn,
                                                 epochs=epochs, lr=lr, batch_size=batch_size,
                                                 seed=seed, progress=progress)
    qtree = None
    has_1d = any(jnp.ndim(v) == 1 for v in jax.tree.leaves(nnx.state(shared, nnx.Param)))
    if bias_bits is not None and has_1d:   # a bias-free model has nothing to round here
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


# --------------------------------------------------------------------------- bits
def bits_per_nonzero(model: nnx.Module, huffman_info: Mapping[str, Any],
                     shipped_info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Bits per non-zero weight of each sparse kernel of ``model``, two files compared.

    Args:
        model: the compressed model both files hold.
        huffman_info: ``codec.inspect`` of it saved with ``coding="sparse-codebook"``
            (Deep Compression's Huffman coding).
        shipped_info: ``codec.inspect`` of it saved another way (e.g. ``"auto"``).

    Returns:
        One row per sparse kernel: ``kernel``, ``nnz``, ``shipped`` (its encoding there);
        positions -- ``pos_huffman`` (the Huffman-coded zero runs, code table included),
        the bounds ``pos_iid`` (every position alike, :math:`H_2(d)/d`), ``pos_gaps_H0``
        (order-0 entropy of the runs: the best Huffman can do), ``pos_context_H`` (the
        conditional entropy of :mod:`~pruning_kit.context_coding`'s contexts) and
        ``pos_shipped``; values -- ``val_huffman``, ``val_H0`` (order-0 entropy of the
        codebook indices) and ``val_shipped``.
    """
    rows = []
    shipped = {r["leaf"] for r in shipped_info["streams"] if r["nnz"]}
    for name, x in named_leaves(nnx.state(model)).items():
        if name not in shipped:
            continue
        x = np.asarray(x)
        bits = x.reshape(-1).view(f"u{x.dtype.itemsize}")  # -0.0 is a value, as in codec
        nnz = int((bits != 0).sum())
        h = {r["stream"]: r["bytes"] for r in huffman_info["streams"] if r["leaf"] == name}
        c = {r["stream"]: r for r in shipped_info["streams"] if r["leaf"] == name}
        if "gaps" not in h:
            raise ValueError(f"{name} is not Huffman-coded in huffman_info; save the model "
                             "with coding='sparse-codebook' for it.")
        bounds = context_coding.bitmap_entropy_bits((bits != 0).reshape(x.shape))
        _, idx = np.unique(bits[bits != 0], return_inverse=True)
        pos = c["positions" if "positions" in c else "gaps"]["bytes"]
        rows.append({"kernel": name, "nnz": nnz, "shipped": c["codes"]["encoding"],
                     "pos_huffman": 8 * h["gaps"] / nnz, "pos_iid": bounds["iid"] / nnz,
                     "pos_gaps_H0": bounds["gaps"] / nnz,
                     "pos_context_H": bounds["context"] / nnz, "pos_shipped": 8 * pos / nnz,
                     "val_huffman": 8 * h["codes"] / nnz,
                     "val_H0": huffman.entropy_bits(idx) / nnz,
                     "val_shipped": 8 * c["codes"]["bytes"] / nnz})
    return rows
