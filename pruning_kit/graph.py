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
  and keep the number of groups (and a depthwise channel multiplier) whole.

A class of joined axes that holds arrays of the model and carries activations is a
*channel group*. Some classes can never shrink, and the graph says why: the model's
input and output, an axis reduced over (LayerNorm's mean, a softmax), sliced or padded
partially, or passed through an op the tracer does not follow (reported with the
primitive and the source line, never guessed).

Examples:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> class Net(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.fc = nnx.Linear(4, 8, rngs=rngs)
    ...         self.out = nnx.Linear(8, 2, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.out(nnx.relu(self.fc(x)))
    >>> g = trace(Net(nnx.Rngs(0)), jnp.zeros((2, 4)))
    >>> list(g.groups), g.groups["fc"].size
    (['fc'], 8)
    >>> [m.leaf for m in g.groups["fc"].members]
    ['fc.bias', 'fc.kernel', 'out.kernel']

Used by :mod:`pruning_kit.structure` (channel removal), :mod:`pruning_kit.fold` (BatchNorm
folding) and notebook 04's "your own model" section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.extend import core as jcore

ELEMENTWISE = frozenset("""
add sub mul div max min pow atan2 rem and or xor not ne eq gt ge lt le select_n clamp
neg exp exp2 log log1p expm1 tanh logistic sin cos tan abs sign floor ceil round sqrt rsqrt
cbrt integer_pow erf erfc erf_inv is_finite convert_element_type reduce_precision copy
copy_p stop_gradient square lgamma digamma nextafter asinh acosh atanh sinh cosh asin acos
atan real imag conj population_count shift_left shift_right_logical shift_right_arithmetic
""".split())
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or "
                       "reduce_xor argmax argmin".split())
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_SUBJAXPR_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_CALLS = frozenset("pjit jit closed_call core_call custom_jvp_call custom_vjp_call "
                   "custom_vjp_call_jaxpr remat checkpoint custom_lin".split())


class Member(NamedTuple):
    """One array axis that a group's channels index.

    ``leaf`` is the dotted state path (``"conv2.kernel"``), ``axis`` the array axis and
    ``role`` how the forward uses it: ``"out"`` (a kernel's output features), ``"in"``
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


class UnsupportedModelError(ValueError):
    """The model cannot be traced (it fails on the example input, or has no arrays)."""


def source_line(eqn: Any) -> str:
    """The user source line that produced a traced equation (for error messages)."""
    try:
        from jax._src import source_info_util
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - private helper moved
        return "?"


def leaf_paths(state: Any) -> tuple[list[str], list[Any], Any]:
    """``(dotted paths, leaves, treedef)`` of an ``nnx.State``, in flatten order."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = []
    for path, _ in flat:
        keys = [k for k in path if not (isinstance(k, jax.tree_util.GetAttrKey)
                                        and k.name == "value")]
        names.append(".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                              for k in keys))
    return names, [leaf for _, leaf in flat], treedef


@dataclass
class _UF:
    """Union-find over axis nodes, with sizes, structure, reasons and flags."""

    parent: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    struct: dict[int, tuple[str, list[int]]] = field(default_factory=dict)
    fixed: dict[int, list[str]] = field(default_factory=dict)
    active: set[int] = field(default_factory=set)

    def new(self, size: int, fixed: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        if fixed:
            self.fixed[len(self.parent) - 1] = [fixed]
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def fix(self, a: int, why: str) -> None:
        r = self.find(a)
        reasons = self.fixed.setdefault(r, [])
        if why not in reasons:
            reasons.append(why)

    def union(self, a: int, b: int, where: str = "") -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:      # cannot happen for a model that runs
            self.fix(ra, f"joined with an axis of another size {where}")
            self.fix(rb, f"joined with an axis of another size {where}")
            return
        sa, sb = self.struct.pop(ra, None), self.struct.pop(rb, None)
        self.parent[rb] = ra
        for why in self.fixed.pop(rb, []):
            self.fix(ra, why)
        if rb in self.active:
            self.active.add(ra)
        if sa is None or sb is None:
            if sa or sb:
                self.struct[ra] = sa or sb
        elif sa[0] == sb[0] and [self.size[c] for c in sa[1]] == [self.size[c] for c in sb[1]]:
            self.struct[ra] = sa
            for ca, cb in zip(sa[1], sb[1], strict=True):
                self.union(ca, cb, where)
        else:
            self.struct[ra] = sa
            self.fix(ra, f"reshaped in two incompatible ways {where}")

    def product(self, children: Sequence[int]) -> int:
        children = [c for c in children if self.size[c] != 1]
        if len(children) == 1:
            return children[0]
        node = self.new(math.prod(self.size[c] for c in children))
        if children:
            self.struct[node] = ("prod", list(children))
        return node

    def split(self, node: int, sizes: Sequence[int], where: str) -> list[int]:
        """Children of ``node`` with these sizes (size-1 entries get fresh nodes)."""
        big = [s for s in sizes if s != 1]
        r = self.find(node)
        if len(big) <= 1:
            return [node if s != 1 else self.new(1) for s in sizes]
        st = self.struct.get(r)
        if st is None:
            kids = [self.new(s) for s in big]
            if r in self.active:
                self.active.update(kids)
            self.struct[r] = ("prod", kids)
        elif st[0] == "prod" and [self.size[self.find(c)] for c in st[1]] == big:
            kids = st[1]
        else:
            self.fix(r, f"reshaped in two incompatible ways {where}")
            kids = [self.new(s, f"reshaped in two incompatible ways {where}") for s in big]
        it = iter(kids)
        return [next(it) if s != 1 else self.new(1) for s in sizes]


def _reshape_runs(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Match runs of source axes to runs of destination axes with equal products.

    Size-1 axes are left out (a destination size-1 axis gets a fresh node).
    """
    si = [i for i, s in enumerate(src) if s != 1]
    di = [j for j, s in enumerate(dst) if s != 1]
    runs, a, b = [], 0, 0
    while a < len(si) and b < len(di):
        ins, outs = [si[a]], [di[b]]
        pi, pj = src[si[a]], dst[di[b]]
        a, b = a + 1, b + 1
        while pi != pj:
            if pi < pj:
                ins.append(si[a])
                pi *= src[si[a]]
                a += 1
            else:
                outs.append(di[b])
                pj *= dst[di[b]]
                b += 1
        runs.append((ins, outs))
    return runs


class _Val(NamedTuple):
    nodes: tuple[int, ...]
    act: bool


class _Tracer:
    def __init__(self) -> None:
        self.uf = _UF()
        self.roles: dict[int, str] = {}
        self.unfollowed: list[str] = []
        self.seq: dict[int, int] = {}

    def fresh(self, shape: Sequence[int], act: bool) -> _Val:
        nodes = tuple(self.uf.new(s) for s in shape)
        if act:
            self.uf.active.update(nodes)
        return _Val(nodes, act)

    def mark(self, val: _Val) -> _Val:
        if val.act:
            for n in val.nodes:
                self.uf.active.add(self.uf.find(n))
                self.seq.setdefault(n, len(self.seq))
        return val

    def role(self, val: _Val, axes: Sequence[int], role: str) -> None:
        if not val.act:
            for a in axes:
                self.roles.setdefault(val.nodes[a], role)

    # -- the interpreter --------------------------------------------------------------
    def run(self, jaxpr: Any, inputs: Sequence[_Val]) -> list[_Val]:
        env: dict[Any, _Val] = {}
        for v, val in zip(jaxpr.invars, inputs, strict=True):
            env[v] = val

        def read(v: Any) -> _Val:
            if isinstance(v, jcore.Literal):
                return _Val(tuple(self.uf.new(s) for s in np.shape(v.val)), False)
            return env[v]

        for v in getattr(jaxpr, "constvars", ()):
            env[v] = self.fresh(v.aval.shape, False)
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self.eqn(eqn, ins)
            for v, val in zip(eqn.outvars, outs, strict=True):
                env[v] = self.mark(val)
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn: Any, ins: list[_Val]) -> list[_Val]:
        name = eqn.primitive.name
        where = f"({name} at {source_line(eqn)})"
        shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.invars]
        out_shape = tuple(getattr(eqn.outvars[0].aval, "shape", ())) if eqn.outvars else ()
        act = any(v.act for v in ins)
        uf = self.uf
        sub = next((eqn.params[k] for k in _SUBJAXPR_KEYS if k in eqn.params), None)
        if sub is not None and name in _CALLS:
            inner = getattr(sub, "jaxpr", sub)
            if len(inner.invars) == len(ins):
                return self.run(inner, ins)
        if name in ELEMENTWISE:
            nodes = []
            for ax, size in enumerate(out_shape):
                same = [v.nodes[ax] for v, s in zip(ins, shapes, strict=True)
                        if len(s) == len(out_shape) and s[ax] == size]
                if not same:
                    nodes.append(uf.new(size))
                    continue
                for other in same[1:]:
                    uf.union(same[0], other, where)
                if size != 1:
                    for v, s in zip(ins, shapes, strict=True):
                        if len(s) == len(out_shape) and s[ax] == size and not v.act and act:
                            self.role(v, [ax], "affine")
                nodes.append(same[0])
            return [_Val(tuple(nodes), act) for _ in eqn.outvars]
        if name == "broadcast_in_dim":
            (x,), dims = ins, eqn.params["broadcast_dimensions"]
            nodes = [uf.new(s) for s in out_shape]
            for j, d in enumerate(dims):
                if shapes[0][j] == out_shape[d]:
                    nodes[d] = x.nodes[j]
            return [_Val(tuple(nodes), act)]
        if name == "reshape":
            src = shapes[0]
            nodes = [uf.new(s) for s in out_shape]
            for i_axes, o_axes in _reshape_runs(src, out_shape):
                merged = uf.product([ins[0].nodes[i] for i in i_axes])
                parts = uf.split(merged, [out_shape[o] for o in o_axes], where) \
                    if len(o_axes) > 1 else [merged]
                for o, p in zip(o_axes, parts, strict=True):
                    nodes[o] = p
            return [_Val(tuple(nodes), act)]
        if name == "squeeze":
            drop = {d % len(shapes[0]) for d in eqn.params["dimensions"]}
            return [_Val(tuple(n for a, n in enumerate(ins[0].nodes) if a not in drop), act)]
        if name == "transpose":
            perm = eqn.params["permutation"]
            return [_Val(tuple(ins[0].nodes[p] for p in perm), act)]
        if name in ("slice", "dynamic_slice", "pad", "rev") or name.startswith("reduce_window") \
                or name in CUMULATIVE:
            return [self._axiswise(name, eqn, ins[0], shapes[0], out_shape, act, where)]
        if name in REDUCTIONS:
            axes = set(eqn.params["axes"])
            for a in axes:
                uf.fix(ins[0].nodes[a], f"reduced over {where}")
            return [_Val(tuple(n for a, n in enumerate(ins[0].nodes) if a not in axes), act)
                    for _ in eqn.outvars]
        if name == "concatenate":
            d = eqn.params["dimension"]
            nodes = list(ins[0].nodes)
            for v in ins[1:]:
                for a in range(len(out_shape)):
                    if a != d:
                        uf.union(nodes[a], v.nodes[a], where)
            cat = uf.new(out_shape[d])
            uf.struct[cat] = ("cat", [v.nodes[d] for v in ins])
            nodes[d] = cat
            return [_Val(tuple(nodes), act)]
        if name == "split":
            d, sizes = eqn.params["axis"], list(eqn.params["sizes"])
            r = uf.find(ins[0].nodes[d])
            st = uf.struct.get(r)
            if st and st[0] == "cat" and [uf.size[uf.find(c)] for c in st[1]] == sizes:
                kids = st[1]
            else:
                uf.fix(r, f"split into parts {where}")
                kids = [uf.new(s) for s in sizes]
            return [_Val(tuple(k if a == d else n for a, n in enumerate(ins[0].nodes)), act)
                    for k in kids]
        if name == "dot_general":
            return [self._dot(eqn, ins, out_shape, act, where)]
        if name == "conv_general_dilated":
            return [self._conv(eqn, ins, shapes, out_shape, act, where)]
        if name == "iota":
            return [self.fresh(out_shape, False)]
        return self._unknown(eqn, ins, where)

    def _unknown(self, eqn: Any, ins: list[_Val], where: str) -> list[_Val]:
        touched = False
        for v in ins:
            if v.act:
                touched = True
                for n in v.nodes:
                    self.uf.fix(n, f"passes through an op the tracer does not follow {where}")
        if touched:
            self.unfollowed.append(where.strip("()"))
        act = any(v.act for v in ins)
        return [self.fresh(tuple(getattr(o.aval, "shape", ())), act) for o in eqn.outvars]

    def _axiswise(self, name, eqn, x: _Val, src, out_shape, act, where) -> _Val:
        p = eqn.params
        nodes = []
        for a, (si, so) in enumerate(zip(src, out_shape, strict=True)):
            whole = si == so
            if name == "slice":
                stride = (p["strides"] or (1,) * len(src))[a]
                whole = whole and p["start_indices"][a] == 0 and stride == 1
            elif name == "pad":
                whole = whole and tuple(p["padding_config"][a]) == (0, 0, 0)
            elif name == "rev":
                whole = whole and a not in p["dimensions"]
            elif name.startswith("reduce_window"):
                whole = whole and p["window_dimensions"][a] == 1 and p["window_strides"][a] == 1
            elif name in CUMULATIVE:
                whole = a != p["axis"]
            if whole:
                nodes.append(x.nodes[a])
            else:
                if si != 1:
                    self.uf.fix(x.nodes[a], f"sliced, padded or pooled {where}")
                nodes.append(self.uf.new(so))
        return _Val(tuple(nodes), act)

    def _dot(self, eqn, ins, out_shape, act, where) -> _Val:
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lhs, rhs = ins
        for a, b in zip((*lc, *lb), (*rc, *rb), strict=True):
            self.uf.union(lhs.nodes[a], rhs.nodes[b], where)
        for v, c in ((lhs, lc), (rhs, rc)):
            self.role(v, c, "in")
        lfree = [a for a in range(len(lhs.nodes)) if a not in (*lc, *lb)]
        rfree = [a for a in range(len(rhs.nodes)) if a not in (*rc, *rb)]
        self.role(lhs, lfree, "out")
        self.role(rhs, rfree, "out")
        nodes = [lhs.nodes[a] for a in lb] + [lhs.nodes[a] for a in lfree] \
            + [rhs.nodes[a] for a in rfree]
        return _Val(tuple(nodes), act)

    def _conv(self, eqn, ins, shapes, out_shape, act, where) -> _Val:
        p = eqn.params
        dn = p["dimension_numbers"]
        lhs, rhs = ins
        lb, lf, *lsp = dn.lhs_spec
        ro, ri, *rsp = dn.rhs_spec
        ob, of, *osp = dn.out_spec
        uf = self.uf
        if p.get("batch_group_count", 1) != 1 or not act or rhs.act:
            return self._unknown(eqn, ins, where)
        groups = p["feature_group_count"]
        c_in, per_group, c_out = shapes[0][lf], shapes[1][ri], shapes[1][ro]
        self.role(rhs, [ri], "in")
        self.role(rhs, [ro], "out")
        for a in rsp:
            uf.fix(rhs.nodes[a], "a convolution window")
        out_feat = rhs.nodes[ro]
        if groups == 1:
            uf.union(lhs.nodes[lf], rhs.nodes[ri], where)
        elif per_group == 1:                          # depthwise, multiplier c_out / c_in
            if c_out == c_in:
                uf.union(lhs.nodes[lf], out_feat, where)
            else:
                chan, mult = uf.split(out_feat, (groups, c_out // groups), where)
                uf.union(chan, lhs.nodes[lf], where)
                uf.fix(mult, f"the channel multiplier of a depthwise convolution {where}")
        else:                                          # grouped: same slots in every group
            g_in, k_in = uf.split(lhs.nodes[lf], (groups, c_in // groups), where)
            g_out, _ = uf.split(out_feat, (groups, c_out // groups), where)
            uf.union(k_in, rhs.nodes[ri], where)
            for g in (g_in, g_out):
                uf.fix(g, f"the groups of a grouped convolution are kept whole {where}")
        nodes: list[int] = [0] * len(out_shape)
        nodes[ob], nodes[of] = lhs.nodes[lb], out_feat
        for a in osp:
            nodes[a] = uf.new(out_shape[a])
        for a in lsp:
            uf.fix(lhs.nodes[a], "spatial")
        return _Val(tuple(nodes), act)


class ChannelGraph:
    """What :func:`trace` found: the groups, the fixed axes and why, and the slicing.

    Attributes:
        groups: ``{name: Group}`` -- the channel groups that can shrink, in forward order.
        fixed: ``{name: [reasons]}`` -- classes that hold model arrays and carry
            activations but cannot shrink, named like groups.
        unfollowed: ``"primitive at file:line"`` for each op the tracer could not follow.
    """

    def __init__(self, tracer: _Tracer, leaf_nodes: dict[tuple[str, int], int],
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
                if first[0].endswith((".kernel", ".weight")) else first[0]
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
    depthwise conv's ``feature_group_count``), ``num_features`` of the norms, attention's
    head count and size, ``Embed``'s sizes. Then every module that defines
    ``after_resize()`` is called, to update widths it stores itself (the course's models
    re-read their ``.config`` there).
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
                if v is not None and hasattr(v, "shape"):
                    node.num_features = v.shape[-1]
                    break
        elif isinstance(node, nnx.Embed):
            node.num_embeddings, node.features = node.embedding.shape
    for _, node in nnx.iter_graph(model):
        hook = getattr(node, "after_resize", None)
        if isinstance(node, nnx.Module) and callable(hook):
            hook()



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
            "Pass example= a batch the model accepts, e.g. x[:2].") from err


def modules(model: nnx.Module) -> dict[str, nnx.Module]:
    """``{dotted path: submodule}`` of ``model`` (the model itself at ``""``)."""
    return {".".join(str(k) for k in path): node for path, node in nnx.iter_graph(model)
            if isinstance(node, nnx.Module)}


def eval_copy(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` in eval mode (the caller's model and mode are untouched)."""
    copy = nnx.merge(*nnx.split(model))          # new module objects, same arrays
    copy.eval()
    return copy


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
        computes them (``"conv1"``, ``"blocks.0.conv2"``), with ``#k`` for the k-th axis
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
    tracer = _Tracer()
    inputs, leaf_nodes = [], {}
    for path, leaf in zip(paths, leaves, strict=True):
        nodes = tuple(tracer.uf.new(s) for s in np.shape(leaf))
        for axis, n in enumerate(nodes):
            if np.shape(leaf)[axis] > 1:
                leaf_nodes[(path, axis)] = n
        inputs.append(_Val(nodes, False))
    for a in args:
        for leaf in jax.tree.leaves(a):
            inputs.append(_Val(tuple(tracer.uf.new(s, "the model's input")
                                     for s in np.shape(leaf)), True))
    outs = tracer.run(closed.jaxpr, inputs)
    for v in outs:
        for n in v.nodes:
            tracer.uf.fix(n, "the model's output")
    module_of = {p: p.rsplit(".", 1)[0] if "." in p else p for p in paths}
    hook = getattr(model, "channel_group_names", None)
    if names is None and callable(hook):
        names = hook()
    return ChannelGraph(tracer, leaf_nodes, names, module_of)
