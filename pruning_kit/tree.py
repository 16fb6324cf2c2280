"""Names for the leaves of a model's state: one spelling, used by every module.

A leaf of ``nnx.state(model)`` or of any pytree is named by its key path with ``/``
between the parts (``"layers/0/kernel"``), the spelling of the package's files
(checkpoints, ``codec``), of layer dictionaries (``quantize_tree``'s bits, pruning
sparsities) and of its messages. A trailing ``nnx.Variable`` ``value`` key is dropped, so
``nnx.state`` and ``nnx.to_pure_dict`` leaves get the same name.

Examples:
    >>> from flax import nnx
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> sorted(named_leaves(nnx.state(model, nnx.Param)))
    ['bias', 'kernel']
    >>> path_name((jax.tree_util.DictKey("layers"), jax.tree_util.SequenceKey(0),
    ...            jax.tree_util.GetAttrKey("kernel")))
    'layers/0/kernel'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

SEP = "/"


def key_name(key: Any) -> str:
    """One key of a path as text: ``DictKey("a")`` -> ``"a"``, ``SequenceKey(0)`` -> ``"0"``."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_name(path: tuple) -> str:
    """``"layers/0/kernel"`` from a ``jax.tree_util`` key path or a tuple of plain keys.

    A last key ``value`` (the array inside an ``nnx.Variable``) is left out.
    """
    parts = [key_name(k) for k in path]
    if len(parts) > 1 and parts[-1] == "value":
        parts.pop()
    return SEP.join(parts)


def split_name(name: str) -> tuple[str | int, ...]:
    """A leaf name's keys, digits as ints: ``"layers/0/kernel"`` -> ``("layers", 0, "kernel")``."""
    return tuple(int(p) if p.isdigit() else p for p in name.split(SEP))


def is_kernel(name: str, leaf: Any) -> bool:
    """The default choice of layers to quantize or share: arrays with ``ndim >= 2``.

    Kernels of dense and convolution layers, embeddings; not biases or BatchNorm vectors.
    The ``filter(name, leaf)`` default of ``quant_storage.quantize_tree``,
    ``weight_sharing.kmeans_codebooks`` and ``mixed_precision``.
    """
    return jnp.ndim(leaf) >= 2


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def named_leaves(tree: Any, *, filter: Callable[[str, Any], bool] | None = None,
                 unwrap: bool = True) -> dict[str, Any]:
    """``{name: leaf}`` of a pytree or ``nnx.State``, in tree order.

    ``nnx.Variable`` leaves are unwrapped to their arrays (``unwrap=False`` keeps them);
    ``filter(name, leaf)`` keeps a subset.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_variable):
        if _is_variable(leaf) and unwrap:
            leaf = leaf.get_value()
        name = path_name(path)
        if filter is None or filter(name, leaf):
            out[name] = leaf
    return out


def map_named(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """``tree`` with each leaf replaced by ``fn(name, leaf)`` (Variables keep their type)."""
    def one(path, leaf):
        if _is_variable(leaf):
            return leaf.replace(fn(path_name(path), leaf.get_value()))
        return fn(path_name(path), leaf)
    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_variable)


def replace_leaves(tree: Any, leaves: Mapping[str, Any]) -> Any:
    """``tree`` with the leaves named in ``leaves`` swapped in; the others unchanged."""
    return map_named(lambda name, leaf: leaves.get(name, leaf), tree)


def flatten_dict(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"layers/0/kernel": leaf, ...}`` from a nested dict (``nnx.to_pure_dict``'s form)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{SEP}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_dict(value, name))
        else:
            out[name] = value
    return out


def unflatten_dict(flat: Mapping[str, Any]) -> dict:
    """The nested dict ``flatten_dict`` came from (digit keys become ints)."""
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = split_name(name)
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree
