"""A channel dependency graph traced from any Flax NNX model.

Removing a channel means slicing every array that indexes it: the kernel that computes
it, its bias and BatchNorm vectors, the next layer's input rows -- and, across a
residual add, every layer that writes into the same sum. Which arrays those are is read
from the model itself: :func:`trace` runs the model's forward through ``jax.make_jaxpr``
(in eval mode, on a copy) and follows every axis of every intermediate value through
the primitives XLA sees -- the idea of Torch-Pruning's DepGraph (Fang et al., 2023),
written for JAX.

How it works. Every axis of every array in the trace gets a *node*; two axes that must
be sliced together are joined (union-find):

* elementwise ops join the matching axes of their operands (a residual add couples its
  two inputs; a bias or BatchNorm vector broadcast onto a channel axis joins it);
* ``dot_general`` / ``conv_general_dilated`` join each contracted axis of the input with
  the kernel's input axis, and the output's feature axis *is* the kernel's output axis;
* reshapes record structure: a flatten of ``(H, W, C)`` is the *product* of three nodes
  (so the next layer's rows are sliced as ``(H, W, C)``); splitting ``C`` into
  ``(heads, head_dim)`` gives a node two children; a concatenation is a *concat* node;
* grouped and depthwise convolutions split their channel axis into ``(groups, per_group)``
  and keep the number of groups (and a depthwise channel multiplier) whole;
* an embedding lookup ``table[ids]`` makes the output's last axis the table's feature
  axis (the table's rows, picked by value, stay whole).

A class of joined axes that holds arrays of the model and carries activations is a
*channel group*. Some classes can never shrink, and the graph says why: the model's
input and output, an axis reduced over (LayerNorm's mean, a softmax), sliced or padded
partially, or read by or coming out of an op the tracer does not follow -- its inputs'
axes, a model array's too, and its outputs' axes (reported with the primitive and the
source line, never guessed).

Examples:
    A residual add ties ``fc``'s outputs to ``res``'s: one group holds both layers'
    output axes, ``res``'s input rows and ``out``'s.

    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> class Net(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.fc = nnx.Linear(4, 8, rngs=rngs)
    ...         self.res = nnx.Linear(8, 8, rngs=rngs)
    ...         self.out = nnx.Linear(8, 2, rngs=rngs)
    ...     def __call__(self, x):
    ...         h = nnx.relu(self.fc(x))
    ...         return self.out(h + self.res(h))
    >>> g = trace(Net(nnx.Rngs(0)), jnp.zeros((2, 4)))
    >>> print(g.report())
    1 channel group(s):
      fc (8): fc/bias[0], fc/kernel[1], out/kernel[0], res/bias[0], res/kernel[0], res/kernel[1]
    kept whole:
      out: the model's output

The program itself, and the names of the model's arrays and modules, come from
:mod:`pruning_kit.program`; the axis-by-axis walk is :mod:`pruning_kit.axis_trace`.
Used by :mod:`pruning_kit.structure` (channel removal) and notebook 04's "your own
model" section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from pruning_kit import tree
from pruning_kit.axis_trace import AxisTracer, Value
from pruning_kit.program import UnsupportedModelError, eval_copy, leaf_paths, modules, program

# eval_copy, leaf_paths, modules, program and UnsupportedModelError live in pruning_kit.program
__all__ = [
    "ChannelGraph", "Group", "Member", "UnsupportedModelError", "eval_copy", "leaf_paths",
    "modules", "program", "sync_widths", "trace",
]


class Member(NamedTuple):
    """One array axis that a group's channels index.

    ``leaf`` is the state path (``"conv2/kernel"``), ``axis`` the array axis and ``role``
    how the forward uses it: ``"out"`` (a kernel's output features), ``"in"``
    (a kernel's input features, contracted), ``"affine"`` (a bias, a BatchNorm vector, a
    kernel applied elementwise). ``view`` is set when the axis holds more than this group
    (a flattened ``(H, W, C)``, or ``(heads, head_dim)``): the shape that axis unfolds
    into, the group's channels on ``view_axis``; ``None`` when the axis is the group.
    """

    leaf: str
    axis: int
    role: str
    view: tuple[int, ...] | None = None
    view_axis: int | None = None


class Group(NamedTuple):
    """Channels that must be kept or removed together (see :class:`Member`)."""

    name: str
    size: int
    members: tuple[Member, ...]

    @property
    def producers(self) -> tuple[Member, ...]:
        """The members that compute the channels (kernel outputs, biases, norms)."""
        return tuple(m for m in self.members if m.role != "in")

    @property
    def consumers(self) -> tuple[Member, ...]:
        """The members that read them (the next layers' input axes)."""
        return tuple(m for m in self.members if m.role == "in")



class ChannelGraph:
    """What :func:`trace` found: the groups, the fixed axes and why, and the slicing.

    Attributes:
        groups: ``{name: Group}`` -- the channel groups that can shrink, in forward order.
        fixed: ``{name: [reasons]}`` -- classes that hold model arrays and carry
            activations but cannot shrink, named like groups.
        unfollowed: ``"primitive at file:line"`` for each op the tracer could not follow.
    """

    def __init__(self, tracer: AxisTracer, leaf_nodes: dict[tuple[str, int], int],
                 names: Mapping[str, str] | None, module_of: Mapping[str, str]):
        uf = tracer.uf
        self._uf = uf
        # structure and fixed-ness flow from a class to the classes it is made of
        for r in list(uf.struct):
            self._push_down(r)
        self._leaf_class = {k: uf.find(n) for k, n in leaf_nodes.items()}
        self._role = {k: tracer.roles.get(n, "affine") for k, n in leaf_nodes.items()}
        self.unfollowed = list(dict.fromkeys(tracer.unfollowed))
        self._parents: dict[int, list[int]] = {}
        for r, (_, kids) in self._structs().items():
            for c in kids:
                self._parents.setdefault(uf.find(c), []).append(r)
        first_seen: dict[int, int] = {}
        for n, k in tracer.seq.items():
            r = uf.find(n)
            first_seen[r] = min(first_seen.get(r, k), k)
        order: dict[int, list[tuple[str, int]]] = {}
        for key, cls in self._leaf_class.items():
            for atom in self._atoms(cls):
                order.setdefault(atom, []).append(key)

        def when(atom: int) -> int:
            if atom in first_seen:
                return first_seen[atom]
            return min((when(p) for p in self._parents.get(atom, [])), default=1 << 30)

        order = dict(sorted(order.items(), key=lambda kv: when(kv[0])))
        self.groups: dict[str, Group] = {}
        self.fixed: dict[str, list[str]] = {}
        self._group_class: dict[str, int] = {}
        seen: dict[str, int] = {}
        for atom, keys in order.items():
            if not self._is_active(atom):
                continue
            members = tuple(sorted((self._member(k, atom) for k in keys),
                                   key=lambda m: (m.leaf, m.axis)))
            if all(m.role == "in" for m in members):
                continue                  # nothing computes these positions (spatial, input)
            producers = [k for k in keys if self._role[k] != "in"]
            first = min(producers, key=lambda k: (
                self._role[k] != "out", tracer.seq.get(leaf_nodes[k], 1 << 30), k))
            base = module_of.get(first[0], first[0]) \
                if first[0].endswith((f"{tree.SEP}kernel", f"{tree.SEP}weight")) else first[0]
            kids = self._atoms(self._leaf_class[first])
            if len(kids) > 1:
                base = f"{base}#{kids.index(atom)}"
            name = (names or {}).get(base, base)
            if name in seen:
                name = f"{name}@{first[1]}"
            seen[name] = atom
            reasons = uf.fixed.get(atom)
            if reasons:
                self.fixed[name] = list(reasons)
            else:
                self.groups[name] = Group(name, uf.size[atom], members)
                self._group_class[name] = atom

    # -- structure helpers ------------------------------------------------------------
    def _structs(self) -> dict[int, tuple[str, list[int]]]:
        return {self._uf.find(r): s for r, s in self._uf.struct.items()}

    def _push_down(self, r: int) -> None:
        uf = self._uf
        r = uf.find(r)
        st = uf.struct.get(r)
        if not st:
            return
        for c in st[1]:
            if r in uf.active:
                uf.active.add(uf.find(c))
            if r in uf.fixed:
                for why in uf.fixed[r]:
                    uf.fix(c, why)
            self._push_down(c)

    def _kids(self, cls: int) -> tuple[str, list[int]] | None:
        st = self._uf.struct.get(self._uf.find(cls))
        return (st[0], [self._uf.find(c) for c in st[1]]) if st else None

    def _atoms(self, cls: int) -> list[int]:
        st = self._kids(cls)
        if st is None:
            return [self._uf.find(cls)]
        return [a for c in st[1] for a in self._atoms(c)]

    def _is_active(self, atom: int) -> bool:
        if atom in self._uf.active:
            return True
        return any(self._is_active(p) for p in self._parents.get(atom, []))

    def _coords(self, cls: int, atom: int) -> np.ndarray | None:
        """For each position of ``cls``, the channel of ``atom`` it belongs to (-1: none)."""
        cls = self._uf.find(cls)
        if cls == atom:
            return np.arange(self._uf.size[atom])
        st = self._kids(cls)
        if st is None:
            return None
        parts = [self._coords(c, atom) for c in st[1]]
        if all(p is None for p in parts):
            return None
        if st[0] == "cat":
            return np.concatenate([p if p is not None else np.full(self._uf.size[c], -1)
                                   for p, c in zip(parts, st[1], strict=True)])
        grids = np.meshgrid(*[p if p is not None else np.full(self._uf.size[c], -2)
                              for p, c in zip(parts, st[1], strict=True)], indexing="ij")
        stacked = np.stack([g.ravel() for g in grids])
        return np.where(stacked >= 0, stacked, -1).max(axis=0) if len(grids) else None

    def _member(self, key: tuple[str, int], atom: int) -> Member:
        cls = self._leaf_class[key]
        role = self._role[key]
        if cls == atom:
            return Member(key[0], key[1], role)
        st = self._kids(cls)
        if st and st[0] == "prod" and atom in st[1]:
            view = tuple(self._uf.size[c] for c in st[1])
            return Member(key[0], key[1], role, view, st[1].index(atom))
        return Member(key[0], key[1], role, (self._uf.size[cls],), None)

    # -- the public questions -----------------------------------------------------------
    def keep_mask(self, cls: int, keep: Mapping[str, np.ndarray]) -> np.ndarray:
        """Boolean mask over the positions of class ``cls`` for the kept channels."""
        cls = self._uf.find(cls)
        st = self._kids(cls)
        if st is None:
            mask = np.ones(self._uf.size[cls], bool)
            for name, c in self._group_class.items():
                if c == cls and name in keep:
                    mask[:] = False
                    mask[np.asarray(keep[name])] = True
            return mask
        parts = [self.keep_mask(c, keep) for c in st[1]]
        if st[0] == "cat":
            return np.concatenate(parts)
        out = parts[0]
        for p in parts[1:]:
            out = np.outer(out, p).ravel()
        return out

    def axis_masks(self, keep: Mapping[str, np.ndarray]) -> dict[str, dict[int, np.ndarray]]:
        """``{leaf: {axis: kept-position mask}}`` for every axis that loses positions."""
        out: dict[str, dict[int, np.ndarray]] = {}
        for (leaf, axis), cls in self._leaf_class.items():
            mask = self.keep_mask(cls, keep)
            if not mask.all():
                out.setdefault(leaf, {})[axis] = mask
        return out

    def channel_of(self, member_key: tuple[str, int], group: str) -> np.ndarray:
        """For each position along ``member_key``'s axis, its channel in ``group`` or -1."""
        coords = self._coords(self._leaf_class[member_key], self._group_class[group])
        if coords is None:
            return np.full(self._uf.size[self._leaf_class[member_key]], -1)
        return coords

    def report(self) -> str:
        """A readable summary: each group with its arrays, then what is fixed and why."""
        lines = [f"{len(self.groups)} channel group(s):"]
        for g in self.groups.values():
            arrays = ", ".join(f"{m.leaf}[{m.axis}]" for m in g.members)
            lines.append(f"  {g.name} ({g.size}): {arrays}")
        if self.fixed:
            lines.append("kept whole:")
            for name, why in self.fixed.items():
                lines.append(f"  {name}: {why[0]}" + (f" (+{len(why) - 1} more)"
                                                      if len(why) > 1 else ""))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ChannelGraph(groups={list(self.groups)}, fixed={list(self.fixed)})"


def sync_widths(model: nnx.Module) -> None:
    """Make Flax layers' stored widths match their arrays (after slicing); run hooks.

    ``in_features``/``out_features`` of ``Linear``/``LinearGeneral``/``Conv`` (and a
    depthwise conv's ``feature_group_count``), ``num_features`` of the norms (a
    ``GroupNorm``'s ``num_groups``: channels leave in whole groups), attention's
    head count and size, ``Embed``'s sizes, ``Einsum``'s kernel and bias shapes. Then
    every module that defines ``after_resize()`` is called, to update widths it stores
    itself (the course's models re-read their ``.config`` there).
    """
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Conv):
            k = node.kernel.shape
            old_in, groups = node.in_features, node.feature_group_count
            if groups > 1 and groups == old_in:              # depthwise: groups follow
                mult = node.out_features // old_in
                node.out_features = k[-1]
                node.in_features = node.feature_group_count = k[-1] // mult
            else:
                node.in_features, node.out_features = k[-2] * groups, k[-1]
        elif isinstance(node, nnx.Linear):
            node.in_features, node.out_features = node.kernel.shape
        elif isinstance(node, nnx.LinearGeneral):
            n_in = len(node.in_features)
            node.in_features = tuple(node.kernel.shape[:n_in])
            node.out_features = tuple(node.kernel.shape[n_in:])
        elif isinstance(node, nnx.MultiHeadAttention):
            q = node.query.kernel.shape
            node.in_features, node.num_heads, node.head_dim = q
            node.qkv_features = q[1] * q[2]
            node.num_kv_heads = node.key.kernel.shape[1]
            node.out_features = node.out.kernel.shape[-1]
        elif isinstance(node, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)):
            for name in ("scale", "bias", "mean"):
                v = getattr(node, name, None)
                if v is None or not hasattr(v, "shape"):
                    continue
                if isinstance(node, nnx.GroupNorm):   # whole groups go: their size stays
                    node.num_groups = v.shape[-1] // node.group_size
                else:
                    node.num_features = v.shape[-1]
                break
        elif isinstance(node, nnx.Embed):
            node.num_embeddings, node.features = node.embedding.shape
        elif isinstance(node, nnx.Einsum):
            node.kernel_shape = tuple(node.kernel.shape)
            if getattr(node, "bias", None) is not None:
                node.bias_shape = tuple(node.bias.shape)
    for _, node in nnx.iter_graph(model):
        hook = getattr(node, "after_resize", None)
        if isinstance(node, nnx.Module) and callable(hook):
            hook()



def trace(model: nnx.Module, example: Any, *, names: Mapping[str, str] | None = None
          ) -> ChannelGraph:
    """Trace ``model`` on ``example`` and return its :class:`ChannelGraph`.

    Args:
        model: any Flax NNX module; traced in eval mode on a copy (BatchNorm's running
            statistics and Dropout's identity are what inference uses).
        example: a batch of inputs (two examples are enough), or a tuple of positional
            arguments.
        names: optional ``{traced name: your name}`` for the groups; a model may also
            define ``channel_group_names()`` returning such a dict.

    Returns:
        The :class:`ChannelGraph`; groups are named after the module whose kernel
        computes them (``"conv1"``, ``"blocks/0/conv2"``), with ``#k`` for the k-th axis
        of a kernel that has several (``"attn.q#0"``: heads, ``#1``: head dimension).

    Raises:
        UnsupportedModelError: the model fails on ``example`` or has no arrays.
    """
    copy = eval_copy(model)
    graphdef, state = nnx.split(copy)
    paths, leaves, treedef = leaf_paths(state)
    if not leaves:
        raise UnsupportedModelError(f"{type(model).__name__} has no arrays to trace.")
    args = example if isinstance(example, tuple) else (example,)
    closed = program(graphdef, treedef, leaves, args, type(model).__name__)
    tracer = AxisTracer()
    inputs, leaf_nodes = [], {}
    for path, leaf in zip(paths, leaves, strict=True):
        nodes = tuple(tracer.uf.new(s) for s in np.shape(leaf))
        for axis, n in enumerate(nodes):
            if np.shape(leaf)[axis] > 1:
                leaf_nodes[(path, axis)] = n
        inputs.append(Value(nodes, False))
    for a in args:
        for leaf in jax.tree.leaves(a):
            inputs.append(Value(tuple(tracer.uf.new(s, "the model's input")
                                     for s in np.shape(leaf)), True))
    outs = tracer.run(closed.jaxpr, inputs)
    for v in outs:
        for n in v.nodes:
            tracer.uf.fix(n, "the model's output")
    module_of = {p: p.rsplit(tree.SEP, 1)[0] for p in paths}
    hook = getattr(model, "channel_group_names", None)
    if names is None and callable(hook):
        names = hook()
    return ChannelGraph(tracer, leaf_nodes, names, module_of)
