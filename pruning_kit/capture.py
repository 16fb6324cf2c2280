"""Read any Flax NNX model's intermediate activations by layer path.

A *layer path* names a submodule the way :func:`flax.nnx.iter_graph` paths do, joined with
``"/"`` (:mod:`pruning_kit.tree`): ``"conv2"`` for ``model.conv2``, ``"layers/1"`` for
``model.layers[1]``, ``"blocks/0/conv2"`` for ``model.blocks[0].conv2``. :func:`capture`
runs ``model(x)`` and returns, besides its output, what each named submodule returned
during that forward pass -- no ``features()`` method needed, so feature (hint)
distillation and activation plots work on a learner's own model.

How it works. ``nnx.merge(*nnx.split(model))`` builds a second set of module objects that
share the model's variables. On that copy each target submodule is replaced by a small
recorder module that calls the original and keeps its output; the copy runs once and is
dropped. The caller's model keeps its structure and its train/eval mode, and the forward
pass has exactly the effect of ``model(x)`` (in train mode, BatchNorm statistics move as
they would). Everything is ordinary traced JAX: it works under ``jax.jit``, and gradients
flow through the captured activations (the online hint loss differentiates through them).

Only submodules can be captured, not a value computed inline or by a plain method (a
``jax.nn.relu`` or a ``features()`` method): capture the submodule that produces it, or
the next one. A submodule that the forward pass never calls (some models read a layer's
weights directly), or calls more than once (a shared layer), raises a ``ValueError``.

* :func:`layer_paths` -- the capturable paths, in definition order.
* :func:`shapes` -- ``{path: output shape}`` for one input, without computing anything.
* :func:`capture` -- ``(output, {path: activation})``.

Used by :mod:`pruning_kit.distill` for FitNets hints on any model (layers by path).

Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
    >>> layer_paths(model)
    ['layers/0', 'layers/2']
    >>> out, acts = capture(model, jnp.ones((3, 4)), ["layers/0"])
    >>> out.shape, acts["layers/0"].shape
    ((3, 2), (3, 8))
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, MutableMapping, MutableSequence, Sequence
from typing import Any

import jax
from flax import nnx

from pruning_kit.program import module_path
from pruning_kit.tree import SEP

__all__ = ["capture", "layer_paths", "shapes"]

_CONTAINERS = (nnx.List, nnx.Dict)


# --------------------------------------------------------------------------- paths
def _children(node: Any) -> list[tuple[Any, Any]]:
    """``(key, child)`` pairs of a graph node, in definition (insertion) order."""
    if isinstance(node, Mapping):
        return list(node.items())
    if isinstance(node, Sequence) and not isinstance(node, str):
        return list(enumerate(node))
    if isinstance(node, nnx.Module):
        return [(k, v) for k, v in vars(node).items() if not k.startswith("_pytree__")]
    return []


def _definition_order(model: nnx.Module) -> dict[tuple, int]:
    """Rank of every module path in a depth-first walk of the attributes as assigned."""
    order: dict[tuple, int] = {}
    seen: set[int] = set()

    def walk(node: Any, path: tuple) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        for key, child in _children(node):
            if isinstance(child, (nnx.Module, Mapping, Sequence)) and not isinstance(child, str):
                if isinstance(child, nnx.Module):
                    order.setdefault(path + (key,), len(order))
                walk(child, path + (key,))

    walk(model, ())
    return order


def _module_paths(model: nnx.Module) -> dict[str, tuple[tuple, nnx.Module]]:
    """``{"layers/1": (("layers", 1), module)}`` for every submodule, definition order."""
    if not isinstance(model, nnx.Module):
        raise ValueError(f"model must be a Flax NNX module, got {type(model).__name__}.")
    found = [(path, m) for path, m in nnx.iter_modules(model) if path]
    rank = _definition_order(model)
    found.sort(key=lambda pm: rank.get(pm[0], len(rank)))
    return {module_path(path): (path, m) for path, m in found}


def layer_paths(model: nnx.Module) -> list[str]:
    """The paths :func:`capture` accepts: every submodule, in definition order.

    Containers (``nnx.List``, ``nnx.Dict``) are left out -- they are not called; their
    items are listed (``"layers/0"``). A submodule reachable by two paths (a shared layer)
    is listed once. Definition order is the order the attributes were assigned; a model
    rebuilt by ``nnx.merge``, ``nnx.clone`` or ``nnx.jit`` has them in nnx's (alphabetical)
    order. :func:`shapes` lists the layers in forward order.

    Args:
        model: any Flax NNX module.

    Returns:
        Paths, e.g. ``["conv1", "bn1", "blocks/0/conv", "head"]``.

    Raises:
        ValueError: ``model`` is not a Flax NNX module.

    Examples:
        >>> from flax import nnx
        >>> class Net(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        ...         self.blocks = nnx.List([nnx.Linear(4, 4, rngs=rngs)])
        ...         self.head = nnx.Linear(4, 2, rngs=rngs)
        >>> layer_paths(Net(nnx.Rngs(0)))
        ['conv', 'blocks/0', 'head']
    """
    return [p for p, (_, m) in _module_paths(model).items() if not isinstance(m, _CONTAINERS)]


def _check_paths(model: nnx.Module, paths: Any) -> tuple[list[str], dict]:
    if isinstance(paths, str):
        paths = [paths]
    if isinstance(paths, Iterable) and not isinstance(paths, Mapping):
        paths = list(paths)
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError(f"paths must be a layer path string or a list of them (e.g. "
                         f"['conv2', 'layers/1']), got {paths!r}.")
    paths = list(dict.fromkeys(paths))          # drop repeats, keep the order
    table = _module_paths(model)
    available = [p for p, (_, m) in table.items() if not isinstance(m, _CONTAINERS)]
    for p in paths:
        if p not in table:
            raise ValueError(f"{type(model).__name__} has no submodule at path {p!r}. "
                             f"Capturable paths (capture.layer_paths(model)): {available}. "
                             "Only submodules can be captured, not methods or values "
                             "computed inline; capture.shapes(model, x) shows each "
                             "layer's output shape.")
        if isinstance(table[p][1], _CONTAINERS):
            items = [q for q in available if q.startswith(p + SEP)]
            raise ValueError(f"{p!r} is a container ({type(table[p][1]).__name__}) that is "
                             f"never called; capture one of its items: {items}.")
    return paths, table


# --------------------------------------------------------------------------- recording
class _Recorder(nnx.Module):
    """Stands in for ``layer`` on the throw-away copy: calls it and hands its output on."""

    def __init__(self, layer: nnx.Module, started: Any, finished: Any):
        self.layer = layer
        self.started, self.finished = started, finished

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.started()
        out = self.layer(*args, **kwargs)
        self.finished(out)
        return out

    def __getattr__(self, name: str) -> Any:
        # A parent may read its child's attributes (``self.bn.use_running_average``,
        # ``self.conv.kernel``): forward them to the wrapped layer.
        layer = vars(self).get("layer")
        if layer is None:
            raise AttributeError(name)
        return getattr(layer, name)


def _get(node: Any, key: Any) -> Any:
    if isinstance(node, nnx.Module) and not isinstance(node, _CONTAINERS):
        return getattr(node, key)
    return node[key]


def _set(node: Any, key: Any, value: Any, path: str) -> None:
    if isinstance(node, nnx.Module) and not isinstance(node, _CONTAINERS):
        setattr(node, key, value)
    elif isinstance(node, (MutableMapping, MutableSequence)):
        node[key] = value
    else:
        raise ValueError(f"Cannot capture {path!r}: it sits in an immutable "
                         f"{type(node).__name__}; hold the submodules in an nnx.List or an "
                         "attribute instead.")


def _run(model: nnx.Module, x: Any, paths: Sequence[str], table: dict
         ) -> tuple[Any, dict[str, list]]:
    """``model(x)`` on a copy whose ``paths`` are recorded: ``(output, {path: [outs]})``.

    The records dict lists the paths in the order of their first call (forward order), the
    paths never called last.
    """
    copy = nnx.merge(*nnx.split(model))     # new module objects, the model's variables
    order: list[str] = []
    records: dict[str, list] = {p: [] for p in paths}

    def first_call(p: str) -> None:
        if p not in order:
            order.append(p)

    targets = []
    for p in paths:                         # locate all first: a path may lie inside another
        parts = table[p][0]
        parent = copy
        for part in parts[:-1]:
            parent = _get(parent, part)
        targets.append((parent, parts[-1], _get(parent, parts[-1]), p))
    for parent, key, layer, p in targets:
        _set(parent, key, _Recorder(layer, functools.partial(first_call, p),
                                    records[p].append), p)
    out = copy(x)
    return out, {p: records[p] for p in order + [p for p in paths if p not in order]}


def capture(model: nnx.Module, x: Any, paths: str | Sequence[str]
            ) -> tuple[Any, dict[str, Any]]:
    """Run ``model(x)`` and return the outputs of the submodules at ``paths`` too.

    The forward pass is ``model(x)`` in the model's current mode (call ``model.eval()``
    first for inference activations) and has the same effect on the model (none in eval
    mode; BatchNorm statistics in train mode). The model's structure and mode are left as
    they came. Works inside ``jax.jit`` and ``jax.grad``: gradients flow through the
    returned activations.

    Args:
        model: any Flax NNX module.
        x: the model's input.
        paths: one layer path (``"blocks/0/conv2"``) or a list of them; see
            :func:`layer_paths`. Submodules only -- not methods or inline values.

    Returns:
        ``(output, {path: activation})`` with ``output = model(x)``; the activation is what
        the submodule returned (an array, or whatever pytree it returns).

    Raises:
        ValueError: ``model`` not an NNX module, a path that names no submodule (the
            message lists the available paths), or a submodule that ``model(x)`` does not
            call exactly once.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> class Net(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.blocks = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])
        ...         self.head = nnx.Linear(4, 2, rngs=rngs)
        ...     def __call__(self, x):
        ...         for block in self.blocks:
        ...             x = nnx.relu(block(x))
        ...         return self.head(x)
        >>> net, x = Net(nnx.Rngs(0)), jnp.ones((3, 4))
        >>> logits, acts = capture(net, x, "blocks/0")
        >>> bool(jnp.allclose(acts["blocks/0"], net.blocks[0](x)))
        True
        >>> bool(jnp.allclose(logits, net(x)))
        True
        >>> capture(net, x, "blocks/2")
        Traceback (most recent call last):
        ...
        ValueError: Net has no submodule at path 'blocks/2'. Capturable paths (capture.layer_paths(model)): ['blocks/0', 'blocks/1', 'head']. Only submodules can be captured, not methods or values computed inline; capture.shapes(model, x) shows each layer's output shape.
    """  # noqa: E501
    paths, table = _check_paths(model, paths)
    out, records = _run(model, x, paths, table)
    acts = {}
    for p in paths:
        calls = len(records[p])
        if calls != 1:
            what = type(table[p][1]).__name__
            why = ("never called it (the forward may read its weights directly or call "
                   "another of its methods; in eval mode some models take a different "
                   "path)" if calls == 0 else
                   f"called it {calls} times (a shared layer); capture a layer called once")
            raise ValueError(f"Cannot capture {p!r} ({what}): {type(model).__name__}(x) "
                             f"{why}. capture.shapes(model, x) lists the layers that are "
                             "called once.")
        acts[p] = records[p][0]
    return out, acts


def shapes(model: nnx.Module, x: Any) -> dict[str, Any]:
    """The output shape of every layer that ``model(x)`` calls once, in forward order.

    Computed abstractly (``jax.eval_shape``): nothing runs and the model is untouched, even
    in train mode. Layers the forward pass does not call exactly once are left out.

    Args:
        model: any Flax NNX module.
        x: an example input (an array or ``jax.ShapeDtypeStruct``; the batch size shows
            up in the shapes).

    Returns:
        ``{path: shape}`` in the order the forward pass calls the layers (a pytree of
        shapes for a layer that returns several arrays).

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> model = nnx.Sequential(nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0)),
        ...                        nnx.BatchNorm(4, rngs=nnx.Rngs(0)), nnx.relu)
        >>> shapes(model, jnp.zeros((2, 8, 8, 1)))
        {'layers/0': (2, 8, 8, 4), 'layers/1': (2, 8, 8, 4)}
    """
    paths, table = _check_paths(model, layer_paths(model))
    graphdef, state = nnx.split(model)
    order: list[str] = []

    def run(state: Any, x: Any) -> dict[str, Any]:
        # merged inside eval_shape: fresh variables, so train-mode updates stay in here
        _, records = _run(nnx.merge(graphdef, state), x, paths, table)
        order.extend(records)                   # forward order (a pytree dict is sorted)
        return {p: r[0] for p, r in records.items() if len(r) == 1}

    abstract = jax.eval_shape(run, state, x)
    return {p: jax.tree.map(lambda a: tuple(a.shape), abstract[p])
            for p in order if p in abstract}
