"""Passes over a finished ONNX graph: fold bias adds into layers, requantize outputs.

:mod:`pruning_kit.jaxpr_onnx` writes one ONNX node (or a few) per traced equation; these
passes then rewrite the node list into the patterns ONNX Runtime runs fastest:

* :func:`fuse_bias` moves a per-channel constant ``Add`` after a ``Conv``/``Gemm`` into
  the layer (as int32 codes for a quantized layer: what ``QLinearConv``/``QGemm`` take);
* :func:`requantize_outputs` quantizes a quantized layer's output right after it with the
  next quantized layer's input scale (ReLU and max-pooling commute with quantization).

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

__all__ = ["fuse_bias", "requantize_outputs", "topological"]


def _consumers(nodes: Sequence[Any]) -> dict[str, list[Any]]:
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
    users = _consumers(nodes)
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
    users = _consumers(nodes)
    producer = {o: n for n in nodes for o in n.output}
    out: list = []
    done = 0
    for n in nodes:
        out.append(n)
        if n.op_type not in ("Conv", "Gemm") or any(
                producer.get(i) is None or producer[i].op_type != "DequantizeLinear"
                for i in n.input[:2]):
            continue
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
