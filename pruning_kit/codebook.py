"""k-means weight sharing (Han et al., *Deep Compression*, 2016).

Instead of a uniform grid, a layer's weights share ``2^bits`` values learned by 1-D
k-means: the layer stores a small float32 codebook and a ``bits``-bit index per weight
(packed with :func:`pruning_kit.quant_storage.pack`). This module works on one tensor;
:mod:`pruning_kit.weight_sharing` shares the kernels of a model and fine-tunes the
centroids with the indices fixed ("trained quantization").

Introduced in ``notebooks/01_quantization.ipynb``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from pruning_kit import validate
from pruning_kit.quant_storage import packed_nbytes
from pruning_kit.quantize import as_float

__all__ = ["codebook_lookup", "codebook_nbytes", "kmeans_codebook"]


def kmeans_codebook(w: jax.typing.ArrayLike, bits: int, *, iters: int = 20,
                    init: str = "linear") -> tuple[jax.Array, jax.Array]:
    """Weight sharing (Han et al., Deep Compression): ``2^bits`` shared values for ``w``.

    One-dimensional k-means (Lloyd's algorithm). ``init="linear"`` spaces the centroids
    evenly between ``min(w)`` and ``max(w)`` (the paper's best choice: it keeps the rare
    large weights); ``"density"`` puts them at evenly spaced quantiles. Deterministic.
    An empty cluster keeps its centroid; centroids stay sorted.

    Returns:
        ``(codebook, indices)``: float32 ``(2^bits,)`` centroids and uint8 indices of
        ``w``'s shape, so that ``codebook[indices]`` approximates ``w``.

    Raises:
        ValueError: bits outside 1..8, negative ``iters``, unknown ``init``, empty or
            non-finite ``w``.

    Examples:
        >>> w = jnp.array([-1.0, -0.9, 0.1, 0.2, 0.95])
        >>> codebook, idx = kmeans_codebook(w, 1)
        >>> [round(c, 2) for c in codebook.tolist()], idx.tolist()
        ([-0.95, 0.42], [0, 0, 1, 1, 1])
    """
    flat = jnp.ravel(as_float(w, "w"))
    bits = validate.bits(bits, maximum=8)
    iters = validate.integer("iters", iters, minimum=0)
    validate.choice("init", init, ("linear", "density"))
    codebook, idx = _kmeans(flat, 2**bits, iters, init)
    return codebook, idx.reshape(jnp.shape(w))


@functools.partial(jax.jit, static_argnums=(1, 3))
def _kmeans(flat: jax.Array, k: int, iters: Any, init: str) -> tuple[jax.Array, jax.Array]:
    if init == "linear":
        codebook = jnp.linspace(flat.min(), flat.max(), k)
    else:
        codebook = jnp.quantile(flat, jnp.linspace(0.0, 1.0, k))

    def assign(c):
        return jnp.searchsorted((c[1:] + c[:-1]) / 2, flat)

    def step(_, c):
        idx = assign(c)
        sums = jax.ops.segment_sum(flat, idx, k)
        counts = jax.ops.segment_sum(jnp.ones_like(flat), idx, k)
        return jnp.sort(jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), c))

    codebook = jax.lax.fori_loop(0, iters, step, codebook.astype(jnp.float32))
    return codebook, assign(codebook).astype(jnp.uint8)


def codebook_lookup(codebook: jax.Array, indices: jax.Array) -> jax.Array:
    """The shared weights ``codebook[indices]``, and ``0`` where an index is ``-1``.

    Index ``-1`` marks a weight outside the sharing (a pruned zero, see
    :func:`pruning_kit.weight_sharing.kmeans_codebooks`). Differentiable in ``codebook``:
    the gradient of a centroid is the sum of the gradients of the weights that share it,
    which is how Deep Compression fine-tunes centroids.

    Examples:
        >>> grad = jax.grad(lambda c: codebook_lookup(c, jnp.array([0, 1, 1, -1])).sum())
        >>> grad(jnp.array([-1.0, 1.0])).tolist()
        [1.0, 2.0]
        >>> codebook_lookup(jnp.array([-1.0, 1.0]), jnp.array([1, -1])).tolist()
        [1.0, 0.0]
    """
    codebook, indices = jnp.asarray(codebook), jnp.asarray(indices)
    if not jnp.issubdtype(indices.dtype, jnp.signedinteger):
        return jnp.take(codebook, indices, axis=0)
    return jnp.where(indices >= 0, jnp.take(codebook, jnp.maximum(indices, 0), axis=0), 0.0)


def codebook_nbytes(num_weights: int, bits: int) -> int:
    """Stored bytes of a weight-shared tensor: ``num_weights`` indices packed at ``bits``
    bits plus a float32 codebook of ``2^bits`` centroids.

    Examples:
        >>> codebook_nbytes(784 * 300, 2), 784 * 300 * 4      # 58800 + 16 vs float32
        (58816, 940800)
    """
    bits = validate.bits(bits, maximum=8)
    num_weights = validate.integer("num_weights", num_weights, minimum=0)
    return packed_nbytes(num_weights, bits) + 4 * 2**bits
