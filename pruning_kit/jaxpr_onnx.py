"""Translate a model's traced JAX program into an ONNX graph, op by op.

:func:`pruning_kit.export.to_onnx` is the public entry; this module holds the translator.
It reads the same traced program the rest of the package reads (``program.program``: the
model's eval-mode forward as a jaxpr, the arrays as inputs), with a symbolic batch size,
and writes one ONNX node (or a few) per equation:

* the model's arrays, and everything computed from them alone (BatchNorm's
  ``scale / sqrt(var + eps)``, reshaped biases), are folded into initializers;
* JAX's NHWC images become ONNX's NCHW *without* a transpose per layer: every ONNX tensor
  remembers the permutation of the JAX array it holds, convolutions and pooling take the
  layout they need from their dimension numbers, elementwise ops follow their operands,
  and a ``Transpose`` is written only where a reshape or matmul needs JAX's order
  (once, before the flatten of a CNN's head);
* ``dot_general`` becomes ``MatMul`` (``Einsum`` when it has batch dimensions, e.g.
  attention), ``conv_general_dilated`` becomes ``Conv`` (grouped and depthwise included),
  ``reduce_window_max`` ``MaxPool``, ``reduce_*`` the ``Reduce*`` ops; calls (``jit``,
  ``custom_jvp`` such as ``relu``) are inlined;
* for an integer model, each quantized kernel is stored as int8 codes and read through
  ``DequantizeLinear`` (one scale per output channel), and its input goes through
  ``QuantizeLinear``/``DequantizeLinear`` with the calibrated scale: the QDQ form that
  ONNX Runtime rewrites into its integer kernels. Where a convolution's output flows only
  through a bias, ReLU and max-pooling into the next quantized layer, the output is
  requantized right after the convolution with that layer's input scale -- the same
  numbers (quantization commutes with ReLU and max), and the pattern ONNX Runtime turns
  into ``QLinearConv``.

An equation it cannot translate raises :class:`UnsupportedOpError` naming the primitive and
the source line that produced it. :func:`build_model` assembles the ``onnx.ModelProto``
after the graph passes of :mod:`pruning_kit.onnx_passes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.extend import core as jcore

from pruning_kit import interpret, program
from pruning_kit.onnx_passes import fuse_bias, pool_before_relu, requantize_outputs

try:  # optional: the [deploy] extra
    import onnx
    from onnx import helper, numpy_helper
except ImportError:  # pragma: no cover - checked by export.to_onnx
    onnx = None

OPSET = 17


class UnsupportedOpError(ValueError):
    """A traced operation has no ONNX translation here (the message names it)."""


class Quant(NamedTuple):
    """How one kernel is stored and fed in an integer export."""

    codes: np.ndarray          # int8 codes, the kernel's own layout
    scales: np.ndarray         # one float32 scale per output channel
    input_scale: float         # the calibrated scale of the activation it multiplies
    out_axes: tuple[int, ...]  # the kernel axes the scales run along
    unsigned: bool = False     # its input is never negative (after a ReLU): uint8 codes


class _C(NamedTuple):
    """A value known at export time (a model array or something computed from them)."""

    value: np.ndarray
    path: str | None = None


class _T(NamedTuple):
    """An ONNX tensor holding the JAX value ``v`` as ``v.transpose(perm)``."""

    name: str
    perm: tuple[int, ...]
    shape: tuple
    dtype: Any


def _static(d: Any) -> bool:
    return isinstance(d, (int, np.integer))


def _ident(n: int) -> tuple[int, ...]:
    return tuple(range(n))


_UNARY = {"neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid",
          "sqrt": "Sqrt", "abs": "Abs", "erf": "Erf", "sign": "Sign", "floor": "Floor",
          "ceil": "Ceil", "not": "Not", "sin": "Sin", "cos": "Cos",
          "round": "Round"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max",
           "min": "Min", "pow": "Pow", "gt": "Greater", "ge": "GreaterOrEqual",
           "lt": "Less", "le": "LessOrEqual", "eq": "Equal", "and": "And", "or": "Or",
           "rem": "Mod"}
_ALIAS = ("stop_gradient", "copy", "copy_p", "reduce_precision", "optimization_barrier")
_REDUCE = {"reduce_max": "ReduceMax", "reduce_min": "ReduceMin", "reduce_sum": "ReduceSum",
           "reduce_prod": "ReduceProd"}


class Translator:
    """Builds the ONNX graph of one traced program (see the module docstring)."""

    def __init__(self, quant: Mapping[str, Quant] | None = None):
        self.quant = dict(quant or {})
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.used_quant: set[str] = set()
        self._n = 0
        self._calls: list[str] = []

    # ------------------------------------------------------------------ building blocks
    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def node(self, op: str, inputs: Sequence[str], hint: str | None = None, **attrs: Any
             ) -> str:
        out = self.fresh(hint or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def const(self, value: Any, hint: str = "c") -> str:
        name = self.fresh(hint)
        a = np.asarray(value)
        a = np.ascontiguousarray(a) if a.ndim else a      # (ascontiguousarray makes 0-d 1-d)
        self.inits.append(numpy_helper.from_array(a, name))
        return name

    def name(self, v: _C | _T, perm: Sequence[int] | None = None) -> str:
        """The ONNX name of ``v`` in layout ``perm`` (JAX's order when None)."""
        if isinstance(v, _C):
            a = np.asarray(v.value)
            if perm is not None and a.ndim == len(perm) and a.ndim > 1:
                a = np.transpose(a, perm)
            return self.const(a)
        perm = _ident(len(v.perm)) if perm is None else tuple(perm)
        if v.perm == perm:
            return v.name
        q = [v.perm.index(p) for p in perm]
        return self.node("Transpose", [v.name], perm=q)

    def shape_const(self, shape: Sequence[Any], where: str) -> str:
        dims = [int(d) if _static(d) else -1 for d in shape]
        if dims.count(-1) > 1:
            raise UnsupportedOpError(f"a reshape to {tuple(shape)} has more than one "
                                     f"batch-dependent size ({where}); export with "
                                     "dynamic_batch=False.")
        return self.const(np.asarray(dims, np.int64), "shape")

    # ------------------------------------------------------------------ the walk
    def run(self, jaxpr: Any, consts: Sequence[Any], args: Sequence[_C | _T]) -> list:
        env: dict[Any, _C | _T] = {}

        def read(v: Any) -> _C | _T:
            if isinstance(v, jcore.Literal):
                return _C(np.asarray(v.val, dtype=v.aval.dtype))
            return env[v]

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = _C(np.asarray(c))
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            sub = program.sub_jaxpr(eqn)
            if sub is not None:
                self._calls.append(program.source_line(eqn))
                try:
                    outs = self.run(sub[0], sub[1], ins)
                finally:
                    self._calls.pop()
            elif all(isinstance(x, _C) for x in ins) and all(
                    all(_static(d) for d in getattr(o.aval, "shape", ())) for o in eqn.outvars):
                vals = interpret.runner(eqn)(*[x.value for x in ins])
                vals = vals if eqn.primitive.multiple_results else [vals]
                outs = [_C(np.asarray(val)) for val in vals]
            else:
                outs = self.eqn(eqn, ins)
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn: Any, ins: list) -> list:
        prim = eqn.primitive.name
        line = program.source_line(eqn) or next(
            (c for c in reversed(self._calls) if c), "?")   # inside jnp's own jit: the call
        where = f"{prim} at {line}"
        aval = eqn.outvars[0].aval
        out_shape, dtype = tuple(aval.shape), np.dtype(aval.dtype)
        p = eqn.params
        if prim in _ALIAS:
            return [ins[0]]
        if prim in _UNARY:
            x = ins[0]
            return [_T(self.node(_UNARY[prim], [x.name]), x.perm, out_shape, dtype)]
        if prim == "rsqrt":
            x = ins[0]
            s = self.node("Sqrt", [x.name])
            return [_T(self.node("Reciprocal", [s]), x.perm, out_shape, dtype)]
        if prim == "square" or (prim == "integer_pow" and p["y"] == 2):
            x = ins[0]
            return [_T(self.node("Mul", [x.name, x.name]), x.perm, out_shape, dtype)]
        if prim == "integer_pow":
            x = ins[0]
            e = self.const(np.asarray(p["y"], dtype))
            return [_T(self.node("Pow", [x.name, e]), x.perm, out_shape, dtype)]
        if prim == "convert_element_type":
            x = ins[0]
            if np.dtype(x.dtype) == dtype:
                return [x]
            to = helper.np_dtype_to_tensor_dtype(dtype)
            return [_T(self.node("Cast", [x.name], to=to), x.perm, out_shape, dtype)]
        if prim in _BINARY or prim == "ne":
            return [self._elementwise(_BINARY.get(prim, "Equal"), ins, out_shape, dtype,
                                      negate=prim == "ne")]
        if prim == "select_n":
            if len(ins) != 3:
                raise UnsupportedOpError(f"select_n with {len(ins) - 1} cases ({where})")
            pred, f, t = ins
            return [self._elementwise("Where", [pred, t, f], out_shape, dtype)]
        if prim == "clamp":
            lo, x, hi = ins
            return [self._elementwise("Max", [self._elementwise("Min", [x, hi], out_shape,
                                                                dtype), lo], out_shape, dtype)]
        if prim == "transpose":
            x, perm = ins[0], p["permutation"]
            return [_T(x.name, tuple(perm.index(d) for d in x.perm), out_shape, dtype)]
        if prim == "reshape":
            x = ins[0]
            return [_T(self.node("Reshape", [self.name(x), self.shape_const(out_shape, where)]),
                       _ident(len(out_shape)), out_shape, dtype)]
        if prim == "squeeze":
            x, dims = ins[0], tuple(p["dimensions"])
            axes = self.const(np.asarray([x.perm.index(d) for d in dims], np.int64))
            perm = tuple(d - sum(e < d for e in dims) for d in x.perm if d not in dims)
            return [_T(self.node("Squeeze", [x.name, axes]), perm, out_shape, dtype)]
        if prim == "expand_dims":
            x = ins[0]
            return [_T(self.node("Reshape", [self.name(x), self.shape_const(out_shape, where)]),
                       _ident(len(out_shape)), out_shape, dtype)]
        if prim == "broadcast_in_dim":
            return [self._broadcast(ins[0], out_shape, p["broadcast_dimensions"], dtype)]
        if prim == "dot_general":
            return [self._dot(eqn, ins, out_shape, dtype, where)]
        if prim == "conv_general_dilated":
            return [self._conv(eqn, ins, out_shape, dtype, where)]
        if prim in _REDUCE or prim in ("argmax", "argmin"):
            return [self._reduce(prim, ins[0], tuple(p["axes"]), out_shape, dtype)]
        if prim in ("reduce_window_max", "reduce_window_sum"):
            return [self._pool(prim, ins[0], p, out_shape, dtype, where)]
        if prim == "concatenate":
            return [self._concat(ins, p["dimension"], out_shape, dtype)]
        if prim == "pad":
            return [self._pad(ins, p["padding_config"], out_shape, dtype, where)]
        if prim == "slice":
            x = ins[0]
            strides = p["strides"] or (1,) * len(out_shape)
            axes = range(len(out_shape))
            args = [x.name, self.const(np.asarray([p["start_indices"][a] for a in x.perm])),
                    self.const(np.asarray([p["limit_indices"][a] for a in x.perm])),
                    self.const(np.asarray(list(axes))),
                    self.const(np.asarray([strides[a] for a in x.perm]))]
            if not all(_static(d) for d in (*p["limit_indices"],)):
                raise UnsupportedOpError(f"a slice of a batch-dependent size ({where})")
            return [_T(self.node("Slice", args), x.perm, out_shape, dtype)]
        if prim == "split":
            x, axis = ins[0], p["axis"]
            sizes = self.const(np.asarray(p["sizes"], np.int64))
            outs = [self.fresh("split") for _ in p["sizes"]]
            self.nodes.append(helper.make_node("Split", [x.name, sizes], outs,
                                               axis=x.perm.index(axis)))
            return [_T(o, x.perm, tuple(v.aval.shape), dtype)
                    for o, v in zip(outs, eqn.outvars, strict=True)]
        if prim == "gather":
            return [self._gather(ins, p, out_shape, dtype, where)]
        raise UnsupportedOpError(
            f"ONNX export does not translate `{prim}` ({where}). Rewrite that part of the "
            "model with common ops, or export to StableHLO (export.to_stablehlo), which "
            "takes every JAX op.")

    # ------------------------------------------------------------------ op families
    def _elementwise(self, op: str, ins: list, out_shape: tuple, dtype: Any, *,
                     negate: bool = False) -> _T:
        n = len(out_shape)
        lead = next((x for x in ins if isinstance(x, _T) and len(x.perm) == n), None)
        perm = lead.perm if lead is not None else _ident(n)
        if op == "Max" and len(ins) == 2 and lead is not None:
            other = ins[1] if ins[0] is lead else ins[0]
            if isinstance(other, _C) and np.ndim(other.value) == 0 and other.value == 0:
                return _T(self.node("Relu", [lead.name]), perm, out_shape, dtype)
        if op in ("Add", "Sub", "Mul", "Div") and len(ins) == 2 and isinstance(ins[0], _T) \
                and isinstance(ins[1], _C) and lead is ins[0]:
            neutral = 0 if op in ("Add", "Sub") else 1
            if np.all(np.asarray(ins[1].value) == neutral):   # BatchNorm left after folding
                return ins[0]
        names = [self.name(x, perm) if isinstance(x, _T) or np.ndim(x.value) == n
                 else self.name(x) for x in ins]
        out = self.node(op, names)
        if negate:
            out = self.node("Not", [out])
        return _T(out, perm, out_shape, dtype)

    def _broadcast(self, x: _C | _T, shape: tuple, dims: Sequence[int], dtype: Any) -> _C | _T:
        expanded = [1] * len(shape)
        for i, d in enumerate(dims):
            expanded[d] = x.shape[i] if isinstance(x, _T) else np.shape(x.value)[i]
        if isinstance(x, _C):      # keep a broadcastable constant; ONNX ops broadcast
            value = np.reshape(x.value, expanded)
            if all(_static(d) for d in shape):
                value = np.broadcast_to(value, shape)
            return _C(np.asarray(value))
        y = self.node("Reshape", [self.name(x), self.shape_const(expanded, "broadcast")])
        target = [int(d) if _static(d) else 1 for d in shape]
        if target != [int(e) if _static(e) else 1 for e in expanded]:
            y = self.node("Expand", [y, self.const(np.asarray(target, np.int64))])
        return _T(y, _ident(len(shape)), shape, dtype)

    def _quantized_input(self, x: _T | _C, perm: Sequence[int] | None, qt: Quant) -> str:
        # Zero point 0 either way: int8 holds the symmetric codes; for an input that is
        # never negative uint8 holds the same codes, and x86 integer kernels want uint8
        # activations (u8 x s8); values past the calibrated range then go up to 255.
        s = self.const(np.asarray(qt.input_scale, np.float32), "x_scale")
        z = self.const(np.asarray(0, np.uint8 if qt.unsigned else np.int8), "x_zero")
        q = self.node("QuantizeLinear", [self.name(x, perm), s, z], "xq")
        return self.node("DequantizeLinear", [q, s, z], "xdq")

    def _dequantized_kernel(self, qt: Quant, perm: Sequence[int]) -> str:
        codes = np.transpose(qt.codes, perm)
        axis = list(perm).index(qt.out_axes[0])
        w = self.const(codes.astype(np.int8), "w_int8")
        s = self.const(np.asarray(qt.scales, np.float32).reshape(-1), "w_scale")
        z = self.const(np.zeros(np.size(qt.scales), np.int8), "w_zero")
        return self.node("DequantizeLinear", [w, s, z], "wdq", axis=axis)

    def _kernel_quant(self, rhs: Any, where: str) -> Quant | None:
        if isinstance(rhs, _C) and rhs.path in self.quant:
            qt = self.quant[rhs.path]
            if len(qt.out_axes) != 1:
                raise UnsupportedOpError(f"kernel {rhs.path} has {len(qt.out_axes)} output "
                                         f"axes; integer export takes one ({where}).")
            self.used_quant.add(rhs.path)
            return qt
        return None

    def _dot(self, eqn: Any, ins: list, out_shape: tuple, dtype: Any, where: str) -> _T:
        lhs, rhs = ins
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        qt = self._kernel_quant(rhs, where)
        n_l = len(lhs.shape) if isinstance(lhs, _T) else np.ndim(lhs.value)
        n_r = len(rhs.shape) if isinstance(rhs, _T) else np.ndim(rhs.value)
        if isinstance(lhs, _T) and not lb and n_r == 2 and tuple(lc) == (n_l - 1,) \
                and tuple(rc) in ((0,), (1,)):
            perm = (0, 1) if tuple(rc) == (0,) else (1, 0)
            if qt is not None:
                x = self._quantized_input(lhs, None, qt)
                w = self._dequantized_kernel(qt, perm)
                op = "Gemm" if n_l == 2 else "MatMul"   # Gemm: takes the bias (QGemm)
            else:
                x, w, op = self.name(lhs), self.name(rhs, perm), "MatMul"
            return _T(self.node(op, [x, w]), _ident(len(out_shape)), out_shape, dtype)
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        ls = [next(letters) for _ in range(n_l)]
        rs = [next(letters) for _ in range(n_r)]
        for a, b in (*zip(lc, rc, strict=True), *zip(lb, rb, strict=True)):
            rs[b] = ls[a]
        out = [ls[a] for a in lb] + [ls[a] for a in range(n_l) if a not in (*lc, *lb)] + \
              [rs[a] for a in range(n_r) if a not in (*rc, *rb)]
        eq = f"{''.join(ls)},{''.join(rs)}->{''.join(out)}"
        if qt is not None:
            x = self._quantized_input(lhs, None, qt)
            w = self._dequantized_kernel(qt, _ident(n_r))
        else:
            x, w = self.name(lhs), self.name(rhs)
        return _T(self.node("Einsum", [x, w], equation=eq), _ident(len(out_shape)),
                  out_shape, dtype)

    def _conv(self, eqn: Any, ins: list, out_shape: tuple, dtype: Any, where: str) -> _T:
        p = eqn.params
        lhs, rhs = ins
        dn = p["dimension_numbers"]
        if any(d != 1 for d in p["lhs_dilation"]):
            raise UnsupportedOpError(f"a transposed convolution (lhs_dilation "
                                     f"{p['lhs_dilation']}, {where})")
        if p["batch_group_count"] != 1:
            raise UnsupportedOpError(f"batch_group_count {p['batch_group_count']} ({where})")
        pads = [int(lo) for lo, _ in p["padding"]] + [int(hi) for _, hi in p["padding"]]
        if min(pads) < 0:
            raise UnsupportedOpError(f"negative convolution padding ({where})")
        qt = self._kernel_quant(rhs, where)
        if qt is not None:
            x = self._quantized_input(lhs, dn.lhs_spec, qt)
            w = self._dequantized_kernel(qt, dn.rhs_spec)
        else:
            x, w = self.name(lhs, dn.lhs_spec), self.name(rhs, dn.rhs_spec)
        spatial = len(dn.lhs_spec) - 2
        y = self.node("Conv", [x, w], strides=list(p["window_strides"]), pads=pads,
                      dilations=list(p["rhs_dilation"]), group=int(p["feature_group_count"]),
                      kernel_shape=[int(np.shape(rhs.value)[d]) if isinstance(rhs, _C)
                                    else int(rhs.shape[d]) for d in dn.rhs_spec[2:]][:spatial])
        return _T(y, tuple(dn.out_spec), out_shape, dtype)

    def _reduce(self, prim: str, x: _T, axes: tuple, out_shape: tuple, dtype: Any) -> _T:
        onnx_axes = [x.perm.index(a) for a in axes]
        perm = tuple(d - sum(a < d for a in axes) for d in x.perm if d not in axes)
        if prim in ("argmax", "argmin"):
            y = self.node("ArgMax" if prim == "argmax" else "ArgMin", [x.name],
                          axis=onnx_axes[0], keepdims=0)
            y = self.node("Cast", [y], to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
        elif prim == "reduce_sum":
            y = self.node("ReduceSum", [x.name, self.const(np.asarray(onnx_axes, np.int64))],
                          keepdims=0)
        else:
            y = self.node(_REDUCE[prim], [x.name], axes=onnx_axes, keepdims=0)
        return _T(y, perm, out_shape, dtype)

    def _pool(self, prim: str, x: _T, p: Mapping, out_shape: tuple, dtype: Any,
              where: str) -> _T:
        win, strides, pad = p["window_dimensions"], p["window_strides"], p["padding"]
        if any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"])):
            raise UnsupportedOpError(f"a dilated pooling window ({where})")
        flat = [d for d in range(len(win)) if win[d] == 1 and strides[d] == 1
                and tuple(pad[d]) == (0, 0)]
        if len(flat) < 2:
            raise UnsupportedOpError(f"pooling over {len(win) - len(flat)} of {len(win)} axes: "
                                     f"ONNX pools all but two (batch, channels) ({where})")
        first = [d for d in x.perm if d in flat][:2]
        spatial = [d for d in range(len(win)) if d not in first]
        perm = (*first, *spatial)
        kw = dict(kernel_shape=[int(win[d]) for d in spatial],
                  strides=[int(strides[d]) for d in spatial],
                  pads=[int(pad[d][0]) for d in spatial] + [int(pad[d][1]) for d in spatial])
        if prim == "reduce_window_max":
            y = self.node("MaxPool", [self.name(x, perm)], **kw)
        else:
            y = self.node("AveragePool", [self.name(x, perm)], count_include_pad=1, **kw)
            y = self.node("Mul", [y, self.const(np.asarray(
                np.prod([win[d] for d in spatial]), np.dtype(dtype)))])
        return _T(y, perm, out_shape, dtype)

    def _concat(self, ins: list, dim: int, out_shape: tuple, dtype: Any) -> _T:
        lead = next((x for x in ins if isinstance(x, _T)), None)
        perm = lead.perm if lead is not None else _ident(len(out_shape))
        y = self.node("Concat", [self.name(x, perm) for x in ins], axis=perm.index(dim))
        return _T(y, perm, out_shape, dtype)

    def _pad(self, ins: list, config: Sequence, out_shape: tuple, dtype: Any,
             where: str) -> _T:
        x, value = ins
        if any(int(i) for _, _, i in config) or any(int(lo) < 0 or int(hi) < 0
                                                      for lo, hi, _ in config):
            raise UnsupportedOpError(f"interior or negative padding ({where})")
        pads = [int(config[d][0]) for d in x.perm] + [int(config[d][1]) for d in x.perm]
        y = self.node("Pad", [x.name, self.const(np.asarray(pads, np.int64)),
                              self.name(value)], mode="constant")
        return _T(y, x.perm, out_shape, dtype)

    def _gather(self, ins: list, p: Mapping, out_shape: tuple, dtype: Any, where: str) -> _T:
        table, idx = ins
        dn = p["dimension_numbers"]
        rank = np.ndim(table.value) if isinstance(table, _C) else len(table.shape)
        if tuple(dn.collapsed_slice_dims) == (0,) and tuple(dn.start_index_map) == (0,) \
                and isinstance(idx, _T) and idx.shape[-1] == 1 \
                and tuple(dn.offset_dims) == tuple(range(len(out_shape) - rank + 1,
                                                         len(out_shape))):
            ids = self.node("Squeeze", [self.name(idx),
                                        self.const(np.asarray([len(idx.shape) - 1]))])
            y = self.node("Gather", [self.name(table), ids], axis=0)
            return _T(y, _ident(len(out_shape)), out_shape, dtype)
        if isinstance(table, _T) and isinstance(idx, _C):
            y = self._constant_gather(table, idx, p, out_shape, dtype)
            if y is not None:
                return y
        raise UnsupportedOpError(
            f"a gather other than a table lookup along axis 0 or a slice at indices fixed "
            f"at export time ({where}). If it comes from indexing with a value computed "
            "from the input, it cannot be exported; if it is a slice that JAX traced as a "
            "gather under a symbolic batch size, export with dynamic_batch=False (the file "
            "then takes the example's batch size).")

    def _constant_gather(self, x: _T, idx: _C, p: Mapping, out_shape: tuple,
                         dtype: Any) -> _T | None:
        """A gather at indices known at export time: a slice, then a squeeze.

        Under a symbolic batch size JAX traces ``h[:, 0]`` or ``h[:, -1]`` (a transformer's
        class token) as a gather at a constant index; ONNX gets ``Slice`` + ``Squeeze``.
        Returns None for any other gather."""
        dn, sizes = p["dimension_numbers"], p["slice_sizes"]
        starts, rank = np.asarray(idx.value).reshape(-1), len(x.shape)
        collapsed, index_map = tuple(dn.collapsed_slice_dims), tuple(dn.start_index_map)
        kept = [d for d in range(rank) if d not in collapsed]
        if (np.ndim(idx.value) != 1 or len(starts) != len(index_map)
                or getattr(dn, "operand_batching_dims", ()) or
                tuple(dn.offset_dims) != tuple(range(len(kept)))
                or any(sizes[d] != x.shape[d] for d in range(rank) if d not in index_map)):
            return None
        begin, end = [], []
        for k, d in enumerate(index_map):
            if not (_static(sizes[d]) and _static(x.shape[d])):
                return None
            s = int(starts[k])
            if "FILL" in str(p.get("mode")) and not 0 <= s <= x.shape[d] - sizes[d]:
                return None            # out of bounds would be filled, not clipped
            s = min(max(s, 0), x.shape[d] - sizes[d])   # JAX clips a start into range
            begin.append(s)
            end.append(s + int(sizes[d]))
        axes = [x.perm.index(d) for d in index_map]
        y = self.node("Slice", [x.name, self.const(np.asarray(begin, np.int64)),
                                self.const(np.asarray(end, np.int64)),
                                self.const(np.asarray(axes, np.int64))])
        if collapsed:
            y = self.node("Squeeze", [y, self.const(np.asarray(
                [x.perm.index(d) for d in collapsed], np.int64))])
        perm = tuple(kept.index(d) for d in x.perm if d not in collapsed)
        return _T(y, perm, out_shape, dtype)


def build_model(translator: Translator, input_t: _T, outputs: Sequence[_C | _T],
                input_name: str, *, batch: str | int, producer: str,
                doc: str = "") -> Any:
    """Assemble the ``onnx.ModelProto`` from a finished translation."""
    out_names = []
    for k, o in enumerate(outputs):
        name = "logits" if len(outputs) == 1 else f"output_{k}"
        src = translator.name(o) if isinstance(o, _T) else translator.const(o.value)
        translator.nodes.append(helper.make_node("Identity", [src], [name]))
        out_names.append((name, o))
    nodes = fuse_bias(translator.nodes, translator.inits, [n for n, _ in out_names])
    if translator.quant:
        nodes, _ = requantize_outputs(nodes, translator.inits)
        nodes, _ = pool_before_relu(nodes)

    used = {i for n in nodes for i in n.input}
    translator.inits[:] = [t for t in translator.inits if t.name in used]   # folded away

    def vi(name: str, shape: tuple, dtype: Any) -> Any:
        dims = [int(d) if _static(d) else batch for d in shape]
        return helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims)

    graph = helper.make_graph(
        nodes, producer, [vi(input_name, input_t.shape, input_t.dtype)],
        [vi(n, o.shape if isinstance(o, _T) else np.shape(o.value),
            o.dtype if isinstance(o, _T) else o.value.dtype) for n, o in out_names],
        translator.inits)
    model = helper.make_model(graph, producer_name="pruning_kit",
                              opset_imports=[helper.make_opsetid("", OPSET)], doc_string=doc)
    model.ir_version = 8
    return model


def translate(graphdef: Any, treedef: Any, paths: Sequence[str], leaves: Sequence[Any],
              example: np.ndarray, *, quant: Mapping[str, Quant] | None = None,
              dynamic_batch: bool = True, name: str = "model",
              trace: Callable[..., Any] = program.program) -> tuple[list, Translator, _T]:
    """Trace ``merge(graphdef, leaves)`` on ``example``'s shape and translate it.

    Returns ``(outputs, translator, input)``; :func:`build_model` makes the ONNX model.
    """
    if dynamic_batch:
        b = jax.export.symbolic_shape("batch")[0]
        shape = (b, *example.shape[1:])
    else:
        shape = tuple(example.shape)
    spec = jax.ShapeDtypeStruct(shape, example.dtype)
    closed = trace(graphdef, treedef, list(leaves), (spec,), name)
    t = Translator(quant)
    args = [_C(a if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else np.asarray(a), p)
            for p, a in zip(paths, leaves, strict=True)]           # RNG keys stay JAX arrays
    x = _T("input", _ident(len(shape)), shape, np.dtype(example.dtype))
    outs = t.run(closed.jaxpr, closed.consts, [*args, x])
    missing = sorted(set(t.quant) - t.used_quant)
    if missing:
        raise UnsupportedOpError(f"integer kernels {missing} were not found as dense/conv "
                                 "ops in the traced program; cannot export them as int8.")
    return outs, t, x
