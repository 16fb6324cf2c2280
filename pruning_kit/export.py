"""Ship a compressed model: ONNX for ONNX Runtime and the runtimes that read ONNX, and
StableHLO for plain JAX (or IREE, or any PJRT runtime) -- files that load and run without
``pruning_kit`` or Flax installed.

**ONNX** (:func:`to_onnx`, :func:`load_onnx`, :func:`describe_onnx`; needs the
``[deploy]`` extra: ``onnx`` and ``onnxruntime``). The model's traced program is
translated op by op (:mod:`pruning_kit.jaxpr_onnx`): float, BatchNorm-folded and
channel-removed models -- the course's and your own NNX classes -- and
:class:`pruning_kit.w8a8.IntegerModel` s, whose int8 kernels are written in the QDQ form
(int8 initializers read through ``DequantizeLinear`` with one scale per output channel,
inputs through ``QuantizeLinear``/``DequantizeLinear`` with the calibrated scales) that
ONNX Runtime runs on its integer kernels. The batch size is symbolic; the file passes
``onnx.checker``. We evaluated ``jax2onnx`` (0.17.1) first and wrote the translator
instead: it adds 28 packages (+160 MB: sympy, netron, orbax-export, Hugging Face hub,
equinox, ...) and pins orbax-checkpoint below Flax's own version; it exports the float
MLP well, but its SmallCNN files fail ``onnx.checker`` (tensor shapes recorded in NHWC
for NCHW tensors) and its max-pool patch breaks ``nnx.max_pool`` called positionally; and
it has no int8 path: an int8 ``dot_general`` becomes an int8 ``Gemm`` that ONNX Runtime
rejects, and it never writes ``QuantizeLinear``/``DequantizeLinear``, so our int8 codes
and calibrated scales could not travel. The package's traced program already gives
everything a translator needs.

:func:`to_stablehlo` serializes a model's inference forward with ``jax.export``: the
weights are embedded as constants, the batch size is symbolic (any batch runs), and the
file records the input shape and dtype it expects. :func:`load_stablehlo` -- or, in a
process that has only ``jax``, the three lines it is made of -- turns the file back into a
function. Anything :mod:`pruning_kit` produces exports: a float, channel-removed or
BatchNorm-folded model (any NNX class, the user's own included), or a
:class:`pruning_kit.w8a8.IntegerModel`, whose int8 codes and int32 accumulation travel
as they are.

The file is ``jax.export``'s serialization (a flatbuffer holding the StableHLO module, its
calling convention and the platforms it was lowered for -- here ``cpu``; pass
``platforms=("cpu", "cuda")`` to lower for both). It is versioned by JAX's StableHLO
compatibility guarantees: a newer JAX loads files written by an older one for months to
years, not the other way round.

Examples:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from flax import nnx
    >>> net = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu,
    ...                      nnx.Linear(8, 3, rngs=nnx.Rngs(1)))
    >>> path = to_stablehlo(net, np.zeros((2, 4), np.float32),
    ...                     Path(tempfile.mkdtemp()) / "net.stablehlo")
    >>> forward = load_stablehlo(path)
    >>> x = np.ones((5, 4), np.float32)                   # another batch size: fine
    >>> bool(np.allclose(forward(x), net(x), atol=1e-6))
    True

Used by ``tests/test_export.py``, which reloads a file in a fresh Python process that never
imports ``pruning_kit``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from pruning_kit import data as data_lib
from pruning_kit import fold as fold_lib
from pruning_kit import jaxpr_onnx, onnx_passes, program
from pruning_kit import models as models_lib

#: What a process with nothing but JAX runs to use an exported file.
LOAD_SNIPPET = """import jax
exported = jax.export.deserialize(open(PATH, "rb").read())
logits = exported.call(x)            # x: an array of the recorded shape (any batch size)
"""


def _forward(model: Any) -> Callable[[jax.Array], jax.Array]:
    if isinstance(model, nnx.Module):
        copy = program.eval_copy(model)          # inference mode; the caller's is kept
        graphdef, state = nnx.split(copy)

        def forward(x):   # fresh Variables per trace: a model may write its own in __call__
            return nnx.merge(graphdef, state, copy=True)(x)

        return forward
    if callable(model):
        return model
    raise ValueError(f"to_stablehlo exports an NNX model or a callable (e.g. a "
                     f"w8a8.IntegerModel), got {type(model).__name__}.")


def to_stablehlo(model: Any, example: Any, path: str | os.PathLike, *,
                 dynamic_batch: bool = True, platforms: Sequence[str] = ("cpu",)) -> Path:
    """Serialize ``model``'s inference forward (weights embedded) to a StableHLO file.

    Args:
        model: an NNX model (exported in eval mode, from a copy) or a callable of one
            array such as a :class:`~pruning_kit.w8a8.IntegerModel`.
        example: a batch of inputs; its shape and dtype (apart from the batch size, with
            ``dynamic_batch``) are what the file accepts.
        path: where to write (written atomically; the folder must exist).
        dynamic_batch: export the first axis as a symbolic size, so any batch runs.
        platforms: lowering platforms (``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: not a model or callable, an empty example, or a model that cannot be
            exported (the JAX error is attached).
        FileNotFoundError: the folder does not exist.
    """
    example = np.asarray(example)
    if example.ndim == 0 or example.shape[0] == 0:
        raise ValueError(f"example must be a non-empty batch, got shape {example.shape}.")
    forward = _forward(model)
    if dynamic_batch:
        shape = jax.export.symbolic_shape(
            ", ".join(["b", *(str(d) for d in example.shape[1:])]))
    else:
        shape = example.shape
    spec = jax.ShapeDtypeStruct(shape, example.dtype)
    try:
        exported = jax.export.export(jax.jit(forward), platforms=tuple(platforms))(spec)
    except Exception as err:
        raise ValueError(f"{type(model).__name__} could not be exported to StableHLO: "
                         f"{type(err).__name__}: {err}") from err
    path = Path(path)
    data_lib.atomic_write(path, bytes(exported.serialize()))
    return path


def load_stablehlo(path: str | os.PathLike) -> Callable[[Any], jax.Array]:
    """The function a :func:`to_stablehlo` file holds (needs only JAX; see LOAD_SNIPPET).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a ``jax.export`` serialization.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No StableHLO file at {path}; write one with to_stablehlo.")
    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception as err:
        raise ValueError(f"{path} is not a jax.export StableHLO file ({type(err).__name__}: "
                         f"{err}); it may be truncated or from another tool.") from err
    return exported.call


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What a file holds: input/output shapes and dtypes, platforms, bytes, op counts."""
    exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    text = exported.mlir_module()
    ops: dict[str, int] = {}
    for line in text.splitlines():
        for token in line.split():
            if token.startswith(("stablehlo.", '"stablehlo.')):
                name = token.strip('"').split("(")[0]
                ops[name] = ops.get(name, 0) + 1
                break
    return {"inputs": [str(a) for a in exported.in_avals],
            "outputs": [str(a) for a in exported.out_avals],
            "platforms": list(exported.platforms), "file_bytes": Path(path).stat().st_size,
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


# ---------------------------------------------------------------------------- ONNX
def _need_onnx() -> Any:
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ImportError("ONNX export needs the [deploy] extra: pip install -e '.[deploy]' "
                          "(onnx and onnxruntime).") from err
    return onnx


def to_onnx(model: Any, example: Any, path: str | os.PathLike, *, fold: bool = True,
            dynamic_batch: bool = True, calib_x: Any = None) -> Path:
    """Write ``model``'s inference forward as an ONNX file (opset 17, weights inside).

    Args:
        model: any Flax NNX model (exported in eval mode, from a copy), or a
            :class:`~pruning_kit.w8a8.IntegerModel` (int8 kernels in QDQ form).
        example: a batch of inputs (two are enough); the file takes that shape and
            dtype, with any batch size when ``dynamic_batch``.
        path: where to write (atomically; the folder must exist).
        fold: fold BatchNorms into the preceding convolutions first (float models).
        calib_x: only with an ``IntegerModel``: calibration inputs (a few hundred to a few
            thousand validation images) with which the file also quantizes each residual
            ``Add`` between quantized layers (see ``onnx_passes.integer_add_plan`` for
            which qualify). The integer model keeps such an add float, and so the
            convolutions feeding it stay float in ONNX Runtime (no lone ``Q`` follows
            them). With ``calib_x`` each input of the add without a quantizer gets one
            (scale: its largest ``|value|`` on ``calib_x`` / 127), the sum takes the scale
            of the next layer's quantizer, and ONNX Runtime runs the add as ``QLinearAdd``
            and those convolutions as ``QLinearConv``. The file then rounds tensors the
            integer model keeps float (the add's inputs as it reads them), so its
            predictions agree with the model's less closely: check them on your data.
            ``None`` (default): the integer model's own quantizers only.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: the ``[deploy]`` extra is not installed.
        jaxpr_onnx.UnsupportedOpError: an op has no ONNX translation (named, with the
            source line); :func:`to_stablehlo` takes any model.
        ValueError: ``calib_x`` with a float model, or not a non-empty finite batch shaped
            like ``example``.

    Examples:
        A convolution and its BatchNorm become one ``Conv`` (the norm folded into it); the
        two ``Transpose`` turn JAX's NHWC input into ONNX's NCHW and back:

        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> from flax import nnx
        >>> rngs = nnx.Rngs(0)
        >>> net = nnx.Sequential(nnx.Conv(1, 4, (3, 3), rngs=rngs),
        ...                      nnx.BatchNorm(4, rngs=rngs), nnx.relu)
        >>> x = np.ones((5, 8, 8, 1), np.float32)
        >>> path = to_onnx(net, x[:2], Path(tempfile.mkdtemp()) / "net.onnx")
        >>> describe_onnx(path)["ops"]
        {'Transpose': 2, 'Conv': 1, 'Relu': 1, 'Identity': 1}
        >>> net.eval()
        >>> bool(np.abs(load_onnx(path)(x) - np.asarray(net(x))).max() < 1e-5)
        True
    """
    onnx = _need_onnx()
    from pruning_kit import w8a8  # local: w8a8 imports fold, fold imports nothing of ours

    example = np.asarray(example)
    if example.ndim == 0 or example.shape[0] == 0:
        raise ValueError(f"example must be a non-empty batch, got shape {example.shape}.")
    quant: dict[str, jaxpr_onnx.Quant] = {}
    if isinstance(model, w8a8.IntegerModel):
        if model.weight_bits != 8 or model.act_bits != 8:
            raise ValueError("ONNX QDQ export writes int8 codes; this model has "
                             f"W{model.weight_bits}A{model.act_bits}. Export a W8A8 model.")
        if any(model.act_zero_points.values()):
            raise ValueError("ONNX QDQ export writes activation zero points of 0; this model "
                             "was built with act_qparams whose zero points are not 0. Build "
                             "it without act_qparams (symmetric activation codes) to export.")
        base = model.model
        for p, scale in model.input_scales.items():
            quant[p] = jaxpr_onnx.Quant(np.asarray(model.codes[p]),
                                        np.asarray(model.weight_scales[p]), scale,
                                        model.kernel_op(p).out_axes,
                                        p in model.unsigned_inputs)
        kind = f"int8 (W8A8, QDQ) of {type(base).__name__}"
    elif isinstance(model, nnx.Module):
        base = (fold_lib.fold_batchnorm_model(model, example[:2])[0] if fold
                else program.eval_copy(model))
        kind = f"float32 {type(model).__name__}" + (" (BatchNorm folded)" if fold else "")
    else:
        raise ValueError(f"to_onnx exports an NNX model or a w8a8.IntegerModel, got "
                         f"{type(model).__name__}.")
    if calib_x is not None:
        if not quant:
            raise ValueError("calib_x quantizes the residual adds of an integer model; a float "
                             "model has no quantizers for them to join. Pass calib_x with a "
                             "w8a8.IntegerModel, or leave it out.")
        calib_x = np.asarray(calib_x)
        if calib_x.ndim != example.ndim or calib_x.shape[1:] != example.shape[1:] \
                or len(calib_x) == 0:
            raise ValueError(f"calib_x must be a non-empty batch shaped like example "
                             f"(*, {', '.join(map(str, example.shape[1:]))}), got shape "
                             f"{calib_x.shape}.")
        if not np.issubdtype(calib_x.dtype, np.number):
            raise ValueError(f"calib_x must hold numbers (inputs like example), got dtype "
                             f"{calib_x.dtype}.")
        if not np.isfinite(calib_x).all():
            raise ValueError("calib_x holds NaN/inf values; calibrate on finite inputs.")
    copy = program.eval_copy(base)
    graphdef, state = nnx.split(copy)
    paths, leaves, treedef = program.leaf_paths(state)
    low = sorted({str(a.dtype) for a in leaves if getattr(a, "dtype", None) in
                  (jax.numpy.bfloat16, jax.numpy.float16)})
    if low:
        raise ValueError(f"{type(base).__name__} holds {'/'.join(low)} arrays: ONNX Runtime's "
                         "CPU kernels do not run such MatMul/Conv, so the file would not load. "
                         "Export a float32 copy (e.g. build the model with param_dtype and "
                         "dtype float32 and load the weights into it).")
    with models_lib.standard_forms():
        outs, t, x = jaxpr_onnx.translate(graphdef, treedef, paths, leaves, example,
                                          quant=quant, dynamic_batch=dynamic_batch,
                                          name=type(base).__name__)
    proto = jaxpr_onnx.build_model(t, x, outs, "input", batch="batch",
                                   producer=type(base).__name__, doc=kind)
    if calib_x is not None:
        adds = _integer_adds(proto, calib_x.astype(example.dtype, copy=False))
        if not adds:
            warnings.warn("calib_x: the graph has no residual Add between quantized layers "
                          "that reaches a quantizer, so the file is what it would be without "
                          "calib_x.", stacklevel=2)
        else:
            proto.doc_string = f"{kind}; with calib_x: {adds} residual add(s) quantized"
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    data_lib.atomic_write(path, proto.SerializeToString())
    return path


def _integer_adds(proto: Any, calib_x: np.ndarray, batch_size: int = 250) -> int:
    """Quantize ``proto``'s residual adds in place (see ``to_onnx``'s ``calib_x``); returns
    how many."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = proto.graph
    nodes, inits = list(g.node), list(g.initializer)
    adds = onnx_passes.integer_add_plan(nodes, inits)
    names = sorted({n for p in adds for kind, n in p["inputs"] if kind == "calibrate"})
    absmax: dict[str, float] = {}
    if names:   # run the file itself, with those tensors as extra outputs
        probe = type(proto)()
        probe.CopyFrom(proto)
        probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                  for n in names if n not in {o.name for o in g.output})
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.x64quantprecision", "1")   # exact sums
        session = ort.InferenceSession(probe.SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        first = g.input[0].type.tensor_type.shape.dim[0]
        fixed = first.dim_value if first.HasField("dim_value") else 0   # dynamic_batch=False
        step = fixed or batch_size
        for start in range(0, len(calib_x), step):
            chunk = calib_x[start:start + step]
            if fixed and len(chunk) < fixed:   # repeat images: ranges stay the same
                chunk = np.resize(chunk, (fixed, *chunk.shape[1:]))
            outs = session.run(names, {g.input[0].name: chunk})
            for n, v in zip(names, outs, strict=True):
                absmax[n] = max(absmax.get(n, 0.0), float(np.abs(v).max()))
    nodes, done = onnx_passes.quantize_adds(nodes, inits, adds, absmax)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits)
    return done


def _load_proto(path: str | os.PathLike, **kw: Any) -> Any:
    """``onnx.load``, with a clear error for a file that is not (or no longer) ONNX."""
    onnx = _need_onnx()
    if not Path(path).is_file():
        raise FileNotFoundError(f"No ONNX file at {path}; write one with to_onnx.")
    try:
        return onnx.load(str(path), **kw)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and kin
        raise ValueError(f"{path} is not a readable ONNX file ({type(err).__name__}: {err}); "
                         "it may be truncated or corrupt: write it again with "
                         "export.to_onnx.") from err


def _has_signed_activations(path: Path) -> bool:
    """Does the file feed int8 activation codes to a Conv/Gemm/MatMul (a QuantizeLinear with
    an int8 zero point whose DequantizeLinear feeds one)? Codes that only enter an ``Add``
    never reach the uint8 x int8 kernels ``exact_int8`` is about."""
    onnx = _need_onnx()
    proto = _load_proto(path, load_external_data=False)
    int8 = {t.name for t in proto.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and not t.dims}
    users = onnx_passes.consumers(proto.graph.node)
    return any(n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in int8
               and any(u.op_type in ("Conv", "Gemm", "MatMul")
                       for dq in users.get(n.output[0], []) if dq.op_type == "DequantizeLinear"
                       for u in users.get(dq.output[0], []))
               for n in proto.graph.node)


#: ONNX Runtime's input type names and the numpy dtypes fed to them.
_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
              "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(uint8)": "uint8",
              "tensor(int8)": "int8", "tensor(float16)": "float16"}


class OnnxModel:
    """An ONNX file in an ONNX Runtime session: call it on a batch, get logits (NumPy).

    ``threads`` pins ONNX Runtime's intra-op threads (default: its own choice);
    ``optimize=False`` turns its graph optimizations off (to see what they buy);
    ``spinning=False`` stops its threads from busy-waiting between calls (they otherwise
    keep the cores busy for a while, which slows whatever runs next: switch it off when
    timing it against other code on the same cores). ``exact_int8`` sets ONNX Runtime's
    ``session.x64quantprecision``: on x86 CPUs without VNNI its uint8 x int8 kernels add
    products in pairs in 16 bits (``VPMADDUBSW``), which saturates when activation codes
    pass 127 -- as signed int8 inputs shifted to uint8 do (a layer after a LayerNorm: up
    to 0.4 logits off here); the precise mode avoids it but is 2-3x slower. The default
    (``None``) turns it on only for files that quantize some input to int8: inputs after
    a ReLU are uint8 with codes in 0..127 within the calibrated range and do not saturate.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
                 optimize: bool = True, spinning: bool = True,
                 exact_int8: bool | None = None):
        _need_onnx()
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No ONNX file at {path}; write one with to_onnx.")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if exact_int8 is None:
            exact_int8 = _has_signed_activations(path)
        if exact_int8:
            opts.add_session_config_entry("session.x64quantprecision", "1")
        self.exact_int8 = bool(exact_int8)
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(str(path), opts,
                                            providers=["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        #: the dtype the file declares for its input (float32, or int32 for token models)
        self.input_dtype = np.dtype(_ORT_TYPES.get(first.type, "float32"))

    #: tells :func:`pruning_kit.timing.compare_latency` and ``latency`` to call this as it
    #: is, not to ``jax.jit`` it
    runs_outside_jax = True

    def __call__(self, x: Any) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, self.input_dtype))
        return self.session.run(None, {self.input_name: x})[0]

    def predict(self, x: Any, *, batch_size: int = 1000) -> np.ndarray:
        """Predicted classes for ``x``, in batches."""
        x = np.asarray(x)
        return np.concatenate([self(x[i:i + batch_size]).argmax(-1)
                               for i in range(0, len(x), batch_size)])

    def evaluate(self, x: Any, y: Any, *, batch_size: int = 1000) -> float:
        """Accuracy (a fraction) on ``(x, y)``."""
        return float((self.predict(x, batch_size=batch_size) == np.asarray(y)).mean())


def load_onnx(path: str | os.PathLike, *, threads: int | None = None,
              optimize: bool = True, spinning: bool = True,
              exact_int8: bool | None = None) -> OnnxModel:
    """An :class:`OnnxModel` for the file at ``path`` (ONNX Runtime, CPU)."""
    return OnnxModel(path, threads=threads, optimize=optimize, spinning=spinning,
                     exact_int8=exact_int8)


def describe_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """What an ONNX file holds: op counts, initializer bytes by dtype, input/output, size."""
    _need_onnx()
    from onnx import numpy_helper

    proto = _load_proto(path)
    ops: dict[str, int] = {}
    for n in proto.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    weights: dict[str, int] = {}
    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t)
        weights[str(a.dtype)] = weights.get(str(a.dtype), 0) + a.nbytes

    def shape(v: Any) -> list:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {"ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
            "initializer_bytes": weights,
            "inputs": {v.name: shape(v) for v in proto.graph.input},
            "outputs": {v.name: shape(v) for v in proto.graph.output},
            "opset": proto.opset_import[0].version, "file_bytes": Path(path).stat().st_size,
            "doc": proto.doc_string}
