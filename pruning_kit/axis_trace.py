"""Follow every axis of every array through a traced program (the engine of ``graph.trace``).

Every axis of every value in the jaxpr gets a *node*; :class:`AxisClasses` joins the nodes
of axes that must be sliced together (union-find), records how a node is made of others
(a flatten is a *product*, a concatenation a *cat*), and keeps, for each class, the
reasons it can never shrink. :class:`AxisTracer` walks the program equation by equation
and applies the rules listed in :mod:`pruning_kit.graph`'s docstring; the channel groups
are read off the result by :class:`pruning_kit.graph.ChannelGraph`.

Examples:
    >>> reshape_runs((2, 3, 4), (6, 4))        # (2, 3) flatten into 6; 4 stays
    [([0, 1], [0]), ([2], [1])]
    >>> classes = AxisClasses()
    >>> a, b = classes.new(8), classes.new(8)
    >>> classes.union(a, b)
    >>> classes.find(b) == classes.find(a)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from jax.extend import core as jcore

from pruning_kit.program import CALL_PRIMITIVES, SUBJAXPR_KEYS, source_line

ELEMENTWISE = frozenset("""
add sub mul div max min pow atan2 rem and or xor not ne eq gt ge lt le select_n clamp
neg exp exp2 log log1p expm1 tanh logistic sin cos tan abs sign floor ceil round sqrt rsqrt
cbrt integer_pow erf erfc erf_inv is_finite convert_element_type reduce_precision copy
copy_p stop_gradient square lgamma digamma nextafter asinh acosh atanh sinh cosh asin acos
atan real imag conj population_count shift_left shift_right_logical shift_right_arithmetic
""".split())
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or "
                       "reduce_xor argmax argmin".split())
#: Ops whose k-th output is their k-th operand, unchanged.
PASS_THROUGH = frozenset("sharding_constraint optimization_barrier device_put".split())
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())


@dataclass
class AxisClasses:
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


def reshape_runs(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]]:
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


class Value(NamedTuple):
    """A traced value: one axis node per dimension; ``act``: it carries activations."""

    nodes: tuple[int, ...]
    act: bool


class AxisTracer:
    """Walks a jaxpr, joining the axes that must be sliced together (see the module)."""

    def __init__(self) -> None:
        self.uf = AxisClasses()
        self.roles: dict[int, str] = {}
        self.unfollowed: list[str] = []
        self.seq: dict[int, int] = {}

    def fresh(self, shape: Sequence[int], act: bool) -> Value:
        nodes = tuple(self.uf.new(s) for s in shape)
        if act:
            self.uf.active.update(nodes)
        return Value(nodes, act)

    def mark(self, val: Value) -> Value:
        if val.act:
            for n in val.nodes:
                self.uf.active.add(self.uf.find(n))
                self.seq.setdefault(n, len(self.seq))
        return val

    def role(self, val: Value, axes: Sequence[int], role: str) -> None:
        if not val.act:
            for a in axes:
                self.roles.setdefault(val.nodes[a], role)

    # -- the interpreter --------------------------------------------------------------
    def run(self, jaxpr: Any, inputs: Sequence[Value]) -> list[Value]:
        env: dict[Any, Value] = {}
        for v, val in zip(jaxpr.invars, inputs, strict=True):
            env[v] = val

        def read(v: Any) -> Value:
            if isinstance(v, jcore.Literal):
                return Value(tuple(self.uf.new(s) for s in np.shape(v.val)), False)
            return env[v]

        for v in getattr(jaxpr, "constvars", ()):
            env[v] = self.fresh(v.aval.shape, False)
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self.eqn(eqn, ins)
            for v, val in zip(eqn.outvars, outs, strict=True):
                env[v] = self.mark(val)
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn: Any, ins: list[Value]) -> list[Value]:
        name = eqn.primitive.name
        where = f"({name} at {source_line(eqn) or 'a line inside a library function'})"
        shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.invars]
        out_shape = tuple(getattr(eqn.outvars[0].aval, "shape", ())) if eqn.outvars else ()
        act = any(v.act for v in ins)
        uf = self.uf
        sub = next((eqn.params[k] for k in SUBJAXPR_KEYS if k in eqn.params), None)
        if sub is not None and name in CALL_PRIMITIVES:
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
            return [Value(tuple(nodes), act) for _ in eqn.outvars]
        if name == "broadcast_in_dim":
            (x,), dims = ins, eqn.params["broadcast_dimensions"]
            nodes = [uf.new(s) for s in out_shape]
            for j, d in enumerate(dims):
                if shapes[0][j] == out_shape[d]:
                    nodes[d] = x.nodes[j]
            return [Value(tuple(nodes), act)]
        if name == "reshape":
            src = shapes[0]
            nodes = [uf.new(s) for s in out_shape]
            for i_axes, o_axes in reshape_runs(src, out_shape):
                merged = uf.product([ins[0].nodes[i] for i in i_axes])
                parts = uf.split(merged, [out_shape[o] for o in o_axes], where) \
                    if len(o_axes) > 1 else [merged]
                for o, p in zip(o_axes, parts, strict=True):
                    nodes[o] = p
            return [Value(tuple(nodes), act)]
        if name == "squeeze":
            drop = {d % len(shapes[0]) for d in eqn.params["dimensions"]}
            return [Value(tuple(n for a, n in enumerate(ins[0].nodes) if a not in drop), act)]
        if name == "transpose":
            perm = eqn.params["permutation"]
            return [Value(tuple(ins[0].nodes[p] for p in perm), act)]
        if name in ("slice", "dynamic_slice", "pad", "rev") or name.startswith("reduce_window") \
                or name in CUMULATIVE:
            return [self._axiswise(name, eqn, ins[0], shapes[0], out_shape, act, where)]
        if name in REDUCTIONS:
            axes = set(eqn.params["axes"])
            for a in axes:
                uf.fix(ins[0].nodes[a], f"reduced over {where}")
            return [Value(tuple(n for a, n in enumerate(ins[0].nodes) if a not in axes), act)
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
            return [Value(tuple(nodes), act)]
        if name == "split":
            d, sizes = eqn.params["axis"], list(eqn.params["sizes"])
            r = uf.find(ins[0].nodes[d])
            st = uf.struct.get(r)
            if st and st[0] == "cat" and [uf.size[uf.find(c)] for c in st[1]] == sizes:
                kids = st[1]
            else:
                uf.fix(r, f"split into parts {where}")
                kids = [uf.new(s) for s in sizes]
            return [Value(tuple(k if a == d else n for a, n in enumerate(ins[0].nodes)), act)
                    for k in kids]
        if name == "dot_general":
            return [self._dot(eqn, ins, out_shape, act, where)]
        if name == "conv_general_dilated":
            return [self._conv(eqn, ins, shapes, out_shape, act, where)]
        if name == "iota":
            return [self.fresh(out_shape, False)]
        if name in PASS_THROUGH:         # each output is its operand, axis for axis
            return list(ins[:len(eqn.outvars)])
        if name == "gather" and self._is_lookup(eqn, shapes, out_shape):
            # an embedding lookup table[ids]: each output row is a row of the table, so the
            # output's last axis is the table's feature axis; the rows are picked by value
            table, ids = ins
            uf.fix(table.nodes[0], f"rows picked by index {where}")
            return [Value((*ids.nodes[:-1], table.nodes[1]), act)]
        return self._unknown(eqn, ins, where)

    @staticmethod
    def _is_lookup(eqn: Any, shapes: list, out_shape: tuple) -> bool:
        dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
        return (len(shapes) == 2 and len(shapes[0]) == 2 and shapes[1][-1:] == (1,)
                and tuple(dn.collapsed_slice_dims) == (0,)
                and tuple(dn.start_index_map) == (0,)
                and tuple(dn.offset_dims) == (len(out_shape) - 1,)
                and not getattr(dn, "operand_batching_dims", ())
                and tuple(sizes) == (1, shapes[0][1]))

    def _unknown(self, eqn: Any, ins: list[Value], where: str) -> list[Value]:
        # every input's axes stay whole, a model array's too: the output's axes are not
        # linked to them, so nothing read through this op could be resized with it
        for v in ins:
            for n in v.nodes:
                self.uf.fix(n, f"passes through an op the tracer does not follow {where}")
        if ins:
            self.unfollowed.append(where.strip("()"))
        act = any(v.act for v in ins)
        outs = [self.fresh(tuple(getattr(o.aval, "shape", ())), act) for o in eqn.outvars]
        if ins:        # nor its outputs' axes: what they meet cannot be resized either
            for n in (n for v in outs for n in v.nodes):
                self.uf.fix(n, f"comes out of an op the tracer does not follow {where}")
        return outs

    def _axiswise(self, name, eqn, x: Value, src, out_shape, act, where) -> Value:
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
        return Value(tuple(nodes), act)

    def _dot(self, eqn, ins, out_shape, act, where) -> Value:
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
        return Value(tuple(nodes), act)

    def _conv(self, eqn, ins, shapes, out_shape, act, where) -> Value:
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
        return Value(tuple(nodes), act)
