"""Passes over a finished ONNX graph: fold bias adds into layers, requantize outputs.

:mod:`pruning_kit.jaxpr_onnx` writes one ONNX node (or a few) per traced equation; these
passes then rewrite the node list into the patterns ONNX Runtime runs fastest:

* :func:`fuse_bias` moves a per-channel constant ``Add`` after a ``Conv``/``Gemm`` into
  the layer (as int32 codes for a quantized layer: what ``QLinearConv``/``QGemm`` take);
* :func:`requantize_outputs` quantizes a quantized layer's output right after it with the
  next quantized layer's input scale (ReLU and max-pooling commute with quantization);
* :func:`pool_before_relu` pools a float tensor before its ReLU where a quantizer follows
  (same numbers; keeps ONNX Runtime from pooling uint8 codes with a slow kernel);
* :func:`integer_add_plan` and :func:`quantize_adds` turn a residual ``Add`` between
  quantized layers into an integer ``QLinearAdd`` (``export.to_onnx(..., calib_x=...)``),
  so the layers feeding it run as ``QLinearConv`` too.

Examples:
    >>> from onnx import helper
    >>> nodes = [helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Neg", ["a"], ["b"])]
    >>> [n.op_type for n in topological(nodes)]
    ['Neg', 'Relu']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

try:  # optional: the [deploy] extra
    from onnx import helper, numpy_helper
except ImportError:  # pragma: no cover - checked by export.to_onnx
    helper = numpy_helper = None

__all__ = ["consumers", "fuse_bias", "integer_add_plan", "pool_before_relu", "quantize_adds",
           "requantize_outputs", "topological"]


def consumers(nodes: Sequence[Any]) -> dict[str, list[Any]]:
    """``{tensor name: the nodes that read it}``."""
    users: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return users


def _rewire(nodes: Sequence[Any], old: str, new: str) -> None:
    for n in nodes:
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new


def fuse_bias(nodes: list, inits: list, outputs: Sequence[str]) -> list:
    """Move a per-channel constant ``Add`` after a bias-free ``Conv``/``Gemm`` into it.

    For a quantized layer (both inputs from ``DequantizeLinear``) the bias is stored as
    int32 codes on the grid ``input_scale * weight_scale`` and read through
    ``DequantizeLinear``: the form ONNX Runtime's integer kernels take.
    """
    values = {t.name: numpy_helper.to_array(t) for t in inits}
    users = consumers(nodes)
    producer = {o: n for n in nodes for o in n.output}
    drop: set[int] = set()
    for layer in nodes:
        if layer.op_type not in ("Conv", "Gemm") or len(layer.input) != 2 \
                or layer.output[0] in outputs:
            continue
        after = users.get(layer.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add":
            continue
        add = after[0]
        other = [i for i in add.input if i != layer.output[0]]
        if len(other) != 1 or other[0] not in values:
            continue
        b = values[other[0]]
        channel = 1 if layer.op_type == "Conv" else b.ndim - 1
        if b.ndim < 1 or any(s != 1 for i, s in enumerate(b.shape) if i != channel):
            continue
        b = np.asarray(b, np.float32).reshape(-1)
        name = f"{layer.output[0]}_bias"
        dqs = [producer.get(i) for i in layer.input]
        if all(d is not None and d.op_type == "DequantizeLinear" for d in dqs):
            scale = (values[dqs[0].input[1]] * values[dqs[1].input[1]]).astype(np.float32)
            scale = np.broadcast_to(scale, b.shape).copy()
            codes = np.round(b / scale).astype(np.int32)
            inits += [numpy_helper.from_array(codes, f"{name}_int32"),
                      numpy_helper.from_array(scale, f"{name}_scale"),
                      numpy_helper.from_array(np.zeros_like(codes), f"{name}_zero")]
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int32",
                                                               f"{name}_scale",
                                                               f"{name}_zero"], [name],
                                          axis=0))
        else:
            inits.append(numpy_helper.from_array(b, name))
        layer.input.append(name)
        _rewire(nodes, add.output[0], layer.output[0])
        drop.add(id(add))
    return topological([n for n in nodes if id(n) not in drop])


def topological(nodes: list) -> list:
    """The nodes ordered so every input is produced before it is read."""
    made = {o for n in nodes for o in n.output}
    ready: set[str] = set()
    out, todo = [], list(nodes)
    while todo:
        rest = []
        for n in todo:
            if all(i not in made or i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(todo):
            raise AssertionError("cycle in the exported graph")  # pragma: no cover
        todo = rest
    return out


_COMMUTE = ("Relu", "MaxPool", "Max")


def requantize_outputs(nodes: list, inits: list) -> tuple[list, int]:
    """Quantize a quantized layer's output with the next quantized layer's input scale.

    Follows a quantized ``Conv``/``Gemm``'s output through ReLU / max-pooling to a
    ``QuantizeLinear``; quantizing before those ops gives the same codes (they commute
    with a monotone quantizer), and ``DQ -> Conv -> Q`` is what ONNX Runtime runs as
    ``QLinearConv`` (``QGemm`` for Gemm). A tensor that also feeds float ops (a
    residual connection) is left float, as the package's integer path has it. Returns
    the new node list and how many layers it rewrote.
    """
    users = consumers(nodes)
    producer = {o: n for n in nodes for o in n.output}
    out: list = []
    done = 0
    for n in nodes:
        out.append(n)
        if n.op_type not in ("Conv", "Gemm") or any(
                producer.get(i) is None or producer[i].op_type != "DequantizeLinear"
                for i in n.input[:2]):
            continue
        first = users.get(n.output[0], [])
        if len(first) == 1 and first[0].op_type == "QuantizeLinear":
            continue  # already quantized right after the layer
        cur, q = n.output[0], None
        while True:
            after = users.get(cur, [])
            if len(after) != 1:
                break
            if after[0].op_type == "QuantizeLinear":
                q = after[0]
                break
            if after[0].op_type not in _COMMUTE:
                break
            cur = after[0].output[0]
        if q is None:
            continue
        qn, dqn = f"{n.output[0]}_q", f"{n.output[0]}_dq"
        _rewire(users[n.output[0]], n.output[0], dqn)
        out.append(helper.make_node("QuantizeLinear", [n.output[0], q.input[1], q.input[2]],
                                    [qn]))
        out.append(helper.make_node("DequantizeLinear", [qn, q.input[1], q.input[2]], [dqn]))
        done += 1
    return out, done


def pool_before_relu(nodes: list) -> tuple[list, int]:
    """Swap ``Relu -> MaxPool -> QuantizeLinear`` on a float tensor into ``MaxPool -> Relu``.

    The two commute (max-pooling picks values, ReLU is monotone), so the numbers do not
    change. ONNX Runtime moves a ``QuantizeLinear`` up across a ``MaxPool`` (not across a
    ``Relu``), and then pools the uint8 codes in NCHW with a slow generic kernel (ONNX
    Runtime 1.32, x86). Pooling first keeps the pool on the float layer's blocked layout.
    The pooled float tensor is named after the pool's output (``<pool>_before_relu``), so a
    printed graph reads in the new order. Returns the node list and how many it swapped.
    """
    users = consumers(nodes)
    producer = {o: n for n in nodes for o in n.output}
    done = 0
    for pool in nodes:
        if pool.op_type != "MaxPool":
            continue
        relu = producer.get(pool.input[0])
        after = users.get(pool.output[0], [])
        if relu is None or relu.op_type != "Relu" or len(users.get(relu.output[0], [])) != 1 \
                or [a.op_type for a in after] != ["QuantizeLinear"]:
            continue
        before = producer.get(relu.input[0])
        if before is not None and before.op_type == "DequantizeLinear":
            continue          # codes already: ONNX Runtime's integer chain handles it
        src, out = relu.input[0], pool.output[0]
        mid = out + "_before_relu"      # a name that says what the tensor now holds
        while mid in producer:
            mid += "_"
        pool.input[0], pool.output[0] = src, mid
        relu.input[0], relu.output[0] = mid, out
        done += 1
    return topological(nodes), done


def _scalars(inits: Sequence[Any]) -> dict[str, np.ndarray]:
    """The scalar initializers (per-tensor scales and zero points) as arrays."""
    return {t.name: numpy_helper.to_array(t) for t in inits if not t.dims}


#: ops that map each quantized value to one of their input's values (or clip at zero), so
#: quantizing before them gives the codes quantizing after them gives.
_SELECT = ("Relu", "MaxPool", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
           "Identity")


def integer_add_plan(nodes: list, inits: list) -> list[dict[str, Any]]:
    """Which float ``Add`` of two tensors can run as an integer ``QLinearAdd``.

    An add qualifies when its result reaches a ``QuantizeLinear`` (or several, with one
    scale, and perhaps the next residual ``Add``) through ops of ``_SELECT`` (each with one
    consumer) -- the add's output takes that scale --
    and each of its two inputs is either a tensor the graph already quantizes for another
    layer (the add then reads those codes) or the output of a quantized ``Conv``/``Gemm``
    read by nothing else (it needs a scale: its range on calibration data). ``x + x`` (one
    tensor read twice) does not qualify. A graph output is never on the way: the exporter
    writes outputs through ``Identity``, which is not an ``Add`` or a quantizer. Returns one
    plan per add: ``{"add": node, "inputs": [("codes", dq_name) or ("calibrate", name),
    ...], "output_q": node}``.
    """
    consts = {t.name for t in inits}
    values = _scalars(inits)       # quantizer scales and zero points; weights need no copy
    users = consumers(nodes)
    producer = {o: n for n in nodes for o in n.output}

    def one_quantizer(after: Sequence[Any]) -> Any:
        """The first quantizer among ``after`` if all of them share one scale and zero
        point and every other reader is an ``Add`` (the next residual add, which reads the
        same codes once it is rewritten, or the rounded values if not)."""
        qs = [a for a in after if a.op_type == "QuantizeLinear"]
        if not qs or any(a.op_type != "Add" for a in after if a.op_type != "QuantizeLinear") \
                or any(len(a.input) < 3 or any(i not in values for i in a.input[1:])
                       for a in qs):
            return None
        first = qs[0]
        same = all(np.array_equal(values[a.input[k]], values[first.input[k]])
                   and values[a.input[k]].dtype == values[first.input[k]].dtype
                   for a in qs for k in (1, 2))
        return first if same else None

    def quantized_layer(n: Any) -> bool:
        return n is not None and n.op_type in ("Conv", "Gemm") and all(
            producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
            for i in n.input[:2])

    plans = []
    for add in nodes:
        if add.op_type != "Add" or len(add.input) != 2 or any(i in consts for i in add.input):
            continue
        cur, q = add.output[0], None
        while True:
            after = users.get(cur, [])
            q = one_quantizer(after)       # several layers may read it, on one scale
            if q is not None or len(after) != 1 or after[0].op_type not in _SELECT:
                break
            cur = after[0].output[0]
        if q is None:
            continue
        inputs = []
        for t in add.input:
            codes = [dq.output[0] for qn in users.get(t, []) if qn.op_type == "QuantizeLinear"
                     for dq in users.get(qn.output[0], [])
                     if dq.op_type == "DequantizeLinear"
                     and list(dq.input[1:]) == list(qn.input[1:])]
            if codes:
                inputs.append(("codes", codes[0]))
            elif quantized_layer(producer.get(t)) and len(users.get(t, [])) == 1:
                inputs.append(("calibrate", t))
            else:
                break
        if len(inputs) == 2:
            plans.append({"add": add, "inputs": inputs, "output_q": q})
    return plans


def quantize_adds(nodes: list, inits: list, plans: Sequence[dict[str, Any]],
                  absmax: dict[str, float]) -> tuple[list, int]:
    """Rewrite the adds of :func:`integer_add_plan` into ``DQ, DQ -> Add -> Q -> DQ``.

    An input to calibrate gets a quantizer with scale ``absmax[name] / 127`` and codes of
    the output quantizer's type: uint8 with zero point 128 when that one is uint8 (integer
    ``QLinearAdd``/``QLinearConv`` kernels want one type on all their tensors), int8 with
    zero point 0 otherwise. The add's output is quantized with the scale of the quantizer
    it reaches (the codes that quantizer gives for the rounded sum). Then every quantized
    layer whose output now goes only into a ``QuantizeLinear`` runs as
    ``QLinearConv``/``QGemm`` (:func:`requantize_outputs`).
    Returns the node list and how many adds it rewrote.
    """
    values = _scalars(inits)
    for p in plans:
        add = p["add"]
        for k, (kind, name) in enumerate(p["inputs"]):
            if kind == "codes":
                add.input[k] = name
                continue
            scale = np.float32(max(float(absmax[name]), 1e-8) / 127)
            s, z = f"{name}_add_scale", f"{name}_add_zero"
            unsigned = values[p["output_q"].input[2]].dtype == np.uint8
            zero = np.asarray(128, np.uint8) if unsigned else np.asarray(0, np.int8)
            inits += [numpy_helper.from_array(np.asarray(scale, np.float32), s),
                      numpy_helper.from_array(zero, z)]
            nodes.append(helper.make_node("QuantizeLinear", [name, s, z], [f"{name}_add_q"]))
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}_add_q", s, z],
                                          [f"{name}_add_dq"]))
            add.input[k] = f"{name}_add_dq"
        q, out = p["output_q"], add.output[0]
        users = consumers(nodes)
        _rewire(users[out], out, f"{out}_dq")
        nodes.append(helper.make_node("QuantizeLinear", [out, q.input[1], q.input[2]],
                                      [f"{out}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{out}_q", q.input[1], q.input[2]],
                                      [f"{out}_dq"]))
    nodes, _ = requantize_outputs(topological(nodes), inits)
    return topological(nodes), len(plans)

