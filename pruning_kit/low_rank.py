"""Low rank: a dense layer's ``(in, out)`` kernel becomes ``u @ v`` from its truncated SVD.

``r (in + out)`` weights instead of ``in * out``, fewer whenever ``r`` is below
:func:`break_even_rank`. :func:`low_rank` replaces chosen dense layers of any NNX model --
``nnx.Linear`` and 1x1 convolutions (:func:`dense_layers`) -- by
:class:`~pruning_kit.models.LowRankLinear` layers filled from :func:`svd_factors`.

Introduced in ``notebooks/04_structural_optimization.ipynb`` (with channel removal,
:mod:`pruning_kit.structure`, which re-exports these names).

Examples:
    >>> from pruning_kit import models
    >>> small = low_rank(models.MLP(64, (32,), rngs=nnx.Rngs(0)), {0: 4})
    >>> small.config["ranks"], low_rank_params(64, 32, 4), low_rank_params(64, 32, None)
    ([4, None], 416, 2080)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruning_kit import graph as graph_lib
from pruning_kit import models as models_lib
from pruning_kit import program, tree, validate
from pruning_kit import train as train_lib

__all__ = ["break_even_rank", "dense_layers", "layer_path", "low_rank", "low_rank_params",
           "svd_factors"]

def svd_factors(kernel: jax.typing.ArrayLike, rank: int) -> tuple[jax.Array, jax.Array]:
    """``(u, v)`` with ``u @ v`` the best rank-``rank`` approximation of ``kernel``.

    Truncated SVD (Eckart-Young: no rank-r matrix is closer in Frobenius norm), with the
    singular values split evenly: ``u = U_r sqrt(S_r)``, ``v = sqrt(S_r) V_r^T``.

    Examples:
        >>> w = jnp.outer(jnp.arange(1.0, 4.0), jnp.ones(5))      # rank one
        >>> u, v = svd_factors(w, 1)
        >>> u.shape, v.shape, bool(jnp.allclose(u @ v, w, atol=1e-5))
        ((3, 1), (1, 5), True)
    """
    kernel = jnp.asarray(kernel, jnp.float32)
    if kernel.ndim != 2:
        raise ValueError(f"svd_factors needs a 2-D kernel, got shape {kernel.shape}.")
    rank = validate.integer("rank", rank, 1, min(kernel.shape),
                            hint=f"The kernel has shape {tuple(kernel.shape)}.")
    u, s, vt = jnp.linalg.svd(kernel, full_matrices=False)
    root = jnp.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def low_rank_params(in_features: int, out_features: int, rank: int | None) -> int:
    """Weights of a layer (bias included): dense if ``rank`` is None, else factorized."""
    if rank is None:
        return in_features * out_features + out_features
    return rank * (in_features + out_features) + out_features


def break_even_rank(in_features: int, out_features: int) -> int:
    """The largest rank that still stores fewer weights than the dense layer.

    Examples:
        >>> break_even_rank(784, 300)         # 784 * 300 / 1084 = 216.97
        216
    """
    return math.ceil(in_features * out_features / (in_features + out_features)) - 1


def _is_pointwise_conv(node: Any) -> bool:
    """A 1x1 convolution with stride 1 and one group: a dense layer on the channel axis."""
    return isinstance(node, nnx.Conv) and tuple(node.kernel_size) == (1, 1) \
        and node.feature_group_count == 1 and all(
            s == 1 for s in np.atleast_1d(node.strides if node.strides is not None else 1)) \
        and all(d == 1 for d in np.atleast_1d(node.kernel_dilation or 1)) \
        and all(d == 1 for d in np.atleast_1d(node.input_dilation or 1))


def _key(parent: Any, k: str | int) -> str | int:
    """``k`` as ``parent`` spells it: a dict of layers may key them by the string "0"."""
    if isinstance(parent, Mapping):
        return next((key for key in parent if str(key) == str(k)), k)
    return k


def _child(parent: Any, k: str | int) -> Any:
    """One step down a module path: an attribute, a list index or a dict key."""
    if isinstance(k, int) or isinstance(parent, Mapping):
        return parent[_key(parent, k)]
    return getattr(parent, k)


def dense_layers(model: nnx.Module) -> dict[str, nnx.Module]:
    """``{path: layer}`` of the model's dense layers -- ``nnx.Linear``, 1x1 convolutions
    (a dense layer applied at every pixel) and low-rank layers -- sorted by path (list
    indices in numeric order, before names); an integer layer index elsewhere counts in
    this order.

    Examples:
        >>> from pruning_kit import models
        >>> list(dense_layers(models.MLP(64, (32,), rngs=nnx.Rngs(0))))
        ['layers/0', 'layers/1']
    """
    found = {program.module_path(path): node for path, node in nnx.iter_graph(model)
             if isinstance(node, (nnx.Linear, models_lib.LowRankLinear))
             or _is_pointwise_conv(node)}
    return dict(sorted(found.items(), key=lambda kv: [(isinstance(k, str), k)   # ints first
                                                       for k in tree.split_name(kv[0])]))


def layer_path(model: nnx.Module, layer: int | str) -> str:
    """The path of dense layer ``layer`` (an index into :func:`dense_layers`, or a path)."""
    layers = list(dense_layers(model))
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        if not 0 <= layer < len(layers):
            raise ValueError(f"Layer index {layer} does not exist; the model's dense layers "
                             f"are 0..{len(layers) - 1}: {layers}.")
        return layers[int(layer)]
    if layer not in layers:
        raise ValueError(f"{layer!r} is not a dense layer of this model; its nnx.Linear "
                         f"layers are {layers}.")
    return str(layer)


def low_rank(model: nnx.Module, ranks: Mapping[Any, int] | list[int | None]) -> nnx.Module:
    """A copy of ``model`` with the chosen dense layers replaced by SVD factors.

    Each chosen layer -- an ``nnx.Linear`` or a 1x1 ``nnx.Conv`` (:func:`dense_layers`) --
    becomes a :class:`~pruning_kit.models.LowRankLinear` holding ``u @ v``, the truncated
    SVD of its kernel (bias kept), which acts on the last axis as the layer did. Works on
    any NNX model; the original is not changed.

    Args:
        model: any Flax NNX model.
        ranks: ``{layer: rank}`` with a layer path (``"encoder/fc1"``) or an index into
            :func:`dense_layers` (``{0: 32}``: the first), or one entry per dense layer
            (``None`` = keep dense).

    Returns:
        A copy in eval mode that owns its arrays (an MLP's ``config["ranks"]`` records
        the ranks, so save/load rebuild it).

    Raises:
        ValueError: a path that is not an ``nnx.Linear``, a wrong number of entries, a rank
            outside ``[1, min(in, out)]``.

    Examples:
        >>> from pruning_kit import models
        >>> mlp = models.lenet_300_100()
        >>> small = low_rank(mlp, {0: 32})
        >>> small.config["ranks"], models.num_params(small)
        ([32, None, None], 66098)
    """
    linears = dense_layers(model)
    if not isinstance(ranks, Mapping):
        ranks = list(ranks)
        if len(ranks) != len(linears):
            raise ValueError(f"ranks needs one entry per dense layer ({len(linears)}), got "
                             f"{len(ranks)}.")
        ranks = {i: r for i, r in enumerate(ranks) if r is not None}
    chosen = {}
    for key, r in ranks.items():
        path = layer_path(model, key)
        if isinstance(linears[path], models_lib.LowRankLinear):
            raise ValueError(f"Layer {path} is already low rank; factorize the dense model.")
        if r is not None:
            chosen[path] = r
    new = train_lib.own_arrays(model)
    for path, r in chosen.items():
        old = dense_layers(new)[path]
        kernel = old.kernel[...]
        kernel = kernel.reshape(kernel.shape[-2:])      # a 1x1 conv's (1, 1, in, out) too
        if not bool(jnp.isfinite(kernel).all()):
            raise ValueError(f"Layer {path}'s kernel holds NaN/inf; its SVD would be too. Fix "
                             "(or retrain) the model before factorizing it.")
        u, v = svd_factors(kernel, r)
        # x @ u @ v acts on the last axis: a 1x1 convolution on NHWC maps exactly to it
        layer = models_lib.LowRankLinear(old.in_features, old.out_features, r,
                                         rngs=nnx.Rngs(0))
        layer.u, layer.v = (nnx.Param(jnp.asarray(f, kernel.dtype)) for f in (u, v))
        layer.bias = nnx.Param(jnp.array(old.bias[...], copy=True) if old.bias is not None
                               else jnp.zeros(old.out_features))
        *parent_path, last = tree.split_name(path)
        parent = new
        for k in parent_path:
            parent = _child(parent, k)
        if isinstance(last, int) or isinstance(parent, Mapping):
            parent[_key(parent, last)] = layer
        else:
            setattr(parent, last, layer)
    graph_lib.sync_widths(new)
    new.eval()
    return new
