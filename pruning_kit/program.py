"""A model's forward pass as a traced JAX program, and the names of its arrays and modules.

The tools that read a model's structure from the model itself -- the channel graph
(:mod:`pruning_kit.graph`), BatchNorm folding (:mod:`pruning_kit.fold`), integer
inference and fake quantization (:mod:`pruning_kit.interpret`) and ONNX export
(:mod:`pruning_kit.jaxpr_onnx`) -- all start from the same program: the eval-mode forward
of ``nnx.merge(graphdef, arrays)`` traced by ``jax.make_jaxpr``, the model's arrays as its
first inputs, in the order of :func:`leaf_paths`. Arrays and modules are named the
package's one way (:mod:`pruning_kit.tree`): ``"blocks/0/conv2/kernel"``, ``"blocks/0/conv2"``.

Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> graphdef, state = nnx.split(layer)
    >>> names, leaves, treedef = leaf_paths(state)
    >>> names
    ['bias', 'kernel']
    >>> closed = program(graphdef, treedef, leaves, (jnp.zeros((1, 3)),))
    >>> [eqn.primitive.name for eqn in closed.jaxpr.eqns][:1]
    ['dot_general']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from pruning_kit import tree

#: Call-like primitives whose inner program is followed (inlined) rather than opaque.
CALL_PRIMITIVES = frozenset("pjit jit closed_call core_call custom_jvp_call custom_vjp_call "
                            "custom_vjp_call_jaxpr remat checkpoint custom_lin".split())
#: The equation parameters that hold a call's inner program.
SUBJAXPR_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


class UnsupportedModelError(ValueError):
    """The model cannot be traced (it fails on the example input, or has no arrays)."""


def source_line(eqn: Any) -> str:
    """The user source line that produced a traced equation (for error messages)."""
    try:
        from jax._src import source_info_util
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - private helper moved
        return "?"


def sub_jaxpr(eqn: Any) -> tuple[Any, list] | None:
    """``(jaxpr, consts)`` of a call-like equation (jit, custom_jvp, remat...), else None."""
    if eqn.primitive.name not in CALL_PRIMITIVES:
        return None
    for key in SUBJAXPR_KEYS:
        sub = eqn.params.get(key)
        if sub is not None:
            if hasattr(sub, "jaxpr"):
                return sub.jaxpr, list(sub.consts)
            return sub, []
    return None


def leaf_paths(state: Any) -> tuple[list[str], list[Any], Any]:
    """``(leaf names, leaves, treedef)`` of an ``nnx.State``, in flatten order.

    The names are :func:`pruning_kit.tree.path_name`'s (``"conv1/kernel"``).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    return [tree.path_name(path) for path, _ in flat], [leaf for _, leaf in flat], treedef


def module_path(path: Sequence[Any]) -> str:
    """``"blocks/0/conv2"`` from an ``nnx.iter_graph`` path (every key kept, even ``value``,
    the name of attention's value projection)."""
    return tree.SEP.join(tree.key_name(k) for k in path)


def modules(model: nnx.Module) -> dict[str, nnx.Module]:
    """``{module path: submodule}`` of ``model`` (the model itself at ``""``).

    Examples:
        >>> from flax import nnx
        >>> list(modules(nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))))
        ['layers/0', 'layers', '']
    """
    return {module_path(path): node for path, node in nnx.iter_graph(model)
            if isinstance(node, nnx.Module)}


def eval_copy(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` in eval mode (the caller's model and mode are untouched)."""
    copy = nnx.merge(*nnx.split(model), copy=True)   # new modules and Variables, same arrays
    copy.eval()
    return copy


def program(graphdef: Any, treedef: Any, leaves: Sequence[Any], args: Sequence[Any],
            name: str = "model") -> Any:
    """The closed jaxpr of ``merge(graphdef, leaves)(*args)``, the arrays as its first inputs.

    Raises:
        UnsupportedModelError: the model fails on ``args`` (the JAX error is attached).
    """
    def forward(leaves, *args):
        return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))(*args)

    try:
        return jax.make_jaxpr(forward)(list(leaves), *args)
    except Exception as err:
        raise UnsupportedModelError(
            f"{name} could not run on inputs of shape "
            f"{[np.shape(a) for a in jax.tree.leaves(args)]}: {type(err).__name__}: {err}. "
            "Pass inputs the model accepts (the example or calibration batch of the "
            "function you called), e.g. x[:2] of the data it was trained on.") from err
