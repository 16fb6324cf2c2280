"""ONNX export: float and int8 files that ONNX Runtime runs, for the course's and users' models."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from flax import nnx

from pruning_kit import export, jaxpr_onnx, models, user_models, w8a8

X = np.random.default_rng(0).random((48, 8, 8, 1), dtype=np.float32)


def _arrays(model):
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.Param))]


def _optimized_ops(path, tmp_path):
    """Op types of the graph ONNX Runtime actually runs (after its rewrites)."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}


@pytest.mark.parametrize("name", sorted(user_models.BUILDERS))
def test_every_user_style_model_exports_float_and_int8(name, tmp_path):
    model = user_models.BUILDERS[name](nnx.Rngs(0))
    model.train()                                   # the caller's mode must survive
    before = _arrays(model)
    path = export.to_onnx(model, X[:2], tmp_path / f"{name}.onnx")    # batch 2 ...
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    model.eval()
    got = export.load_onnx(path)(X)                                    # ... runs batch 48
    np.testing.assert_allclose(got, np.asarray(model(X)), atol=1e-4)
    q = w8a8.quantize_model(model, X)
    path8 = export.to_onnx(q, X[:2], tmp_path / f"{name}_int8.onnx")
    info = export.describe_onnx(path8)
    assert info["initializer_bytes"].get("int8", 0) > 0 and "QuantizeLinear" in info["ops"]
    # ONNX Runtime's integer kernels compute what the package's integer path computes
    np.testing.assert_allclose(export.load_onnx(path8)(X), np.asarray(q(X)), atol=0.05)
    for a, b in zip(before, _arrays(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_course_cnn_exports_textbook_layers_and_same_logits(tmp_path):
    model = models.SmallCNN(1, (4, 8), image_size=8, rngs=nnx.Rngs(0))
    model.eval()
    path = export.to_onnx(model, X[:2], tmp_path / "cnn.onnx")
    ops = export.describe_onnx(path)["ops"]
    # eval mode's XLA:CPU forms (shifted adds, strided slices) are exported as Conv, MaxPool
    assert ops["Conv"] == 4 and ops["MaxPool"] == 2 and "Slice" not in ops and "Pad" not in ops
    assert "BatchNormalization" not in ops and ops["Transpose"] <= 2   # folded; NCHW kept
    np.testing.assert_allclose(export.load_onnx(path)(X), np.asarray(model(jnp.asarray(X))),
                               atol=1e-4)
    assert model.bn1.use_running_average                                 # mode unchanged


def test_int8_files_run_on_integer_kernels(tmp_path):
    mlp = user_models.BUILDERS["sequential"](nnx.Rngs(0))
    path = export.to_onnx(w8a8.quantize_model(mlp, X), X[:2], tmp_path / "mlp.onnx")
    ops = _optimized_ops(path, tmp_path)
    assert "QGemm" in ops and "MatMul" not in ops and "Gemm" not in ops
    vgg = user_models.BUILDERS["vgg"](nnx.Rngs(0))
    path = export.to_onnx(w8a8.quantize_model(vgg, X), X[:2], tmp_path / "vgg.onnx")
    assert "QLinearConv" in _optimized_ops(path, tmp_path)


class _Sorts(nnx.Module):
    def __init__(self):
        self.fc = nnx.Linear(64, 10, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return jnp.sort(self.fc(x.reshape((x.shape[0], -1))), axis=-1)


def test_unsupported_op_is_named_with_its_source_line(tmp_path):
    with pytest.raises(jaxpr_onnx.UnsupportedOpError, match=r"`sort`.*test_onnx_export"):
        export.to_onnx(_Sorts(), X[:2], tmp_path / "sorts.onnx")
    assert not (tmp_path / "sorts.onnx").exists()                    # nothing half-written


def test_bad_input(tmp_path):
    model = user_models.BUILDERS["vgg"](nnx.Rngs(0))
    with pytest.raises(ValueError, match="W8A8"):
        export.to_onnx(w8a8.quantize_model(model, X, weight_bits=4, act_bits=4), X[:2],
                       tmp_path / "w4.onnx")
    with pytest.raises(ValueError, match="NNX model or a w8a8.IntegerModel"):
        export.to_onnx(lambda x: x, X[:2], tmp_path / "f.onnx")
    with pytest.raises(ValueError, match="non-empty batch"):
        export.to_onnx(model, X[:0], tmp_path / "e.onnx")
    with pytest.raises(FileNotFoundError, match="No ONNX file"):
        export.load_onnx(tmp_path / "missing.onnx")


def _optimized_graph(path, tmp_path):
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized_graph.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return onnx.load(opts.optimized_model_filepath).graph


def test_calib_x_runs_the_residual_add_and_its_convolutions_on_integers(tmp_path):
    model = models.SmallCNN(1, (4, 8), image_size=8, rngs=nnx.Rngs(0))
    q = w8a8.quantize_model(model, X)
    plain = export.to_onnx(q, X[:2], tmp_path / "plain.onnx")
    full = export.to_onnx(q, X[:2], tmp_path / "full.onnx", calib_x=X)
    plain_g = _optimized_graph(plain, tmp_path)
    plain_ops = Counter(n.op_type for n in plain_g.node)
    # without calib_x the two convolutions feeding the float add stay float, and so does
    # the stem (shifted adds in the W8A8 model) ...
    assert plain_ops["QLinearConv"] == 1 and "QLinearAdd" not in plain_ops
    # ... whose pool runs before its ReLU (same numbers), so it never pools uint8 codes
    made_by = {o: n.op_type for n in plain_g.node for o in n.output}
    assert not any(n.op_type == "MaxPool" and made_by.get(n.input[0]) == "QuantizeLinear"
                   for n in plain_g.node)
    # and the swapped nodes' tensors are named for what they now hold
    written = {n.output[0]: n for n in onnx.load(str(plain)).graph.node}
    pooled = [n for n in written.values() if n.op_type == "MaxPool"
              and n.output[0].endswith("_before_relu")]
    assert pooled and all(written[p.output[0].removesuffix("_before_relu")].op_type == "Relu"
                          for p in pooled)
    # with calib_x every quantized layer runs on integers; the float stem stays float
    ops = Counter(n.op_type for n in _optimized_graph(full, tmp_path).node)
    assert ops["QLinearConv"] == 3 and ops["QLinearAdd"] == 1 and ops["QGemm"] == 1
    assert ops["Conv"] + ops["FusedConv"] == 1 and ops["MatMul"] + ops["Gemm"] == 0
    assert "with calib_x: 1 residual add(s) quantized" in onnx.load(str(full)).doc_string
    # the add's inputs are rounded, unlike in the integer model: close, not identical
    ref, got = np.asarray(q(X)), export.load_onnx(full)(X)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    np.testing.assert_allclose(export.load_onnx(plain)(X), ref, atol=0.05)
    assert not export.load_onnx(full).exact_int8   # add codes never reach a uint8 x int8 kernel


def test_calib_x_on_a_users_resnet_and_bad_calib_x(tmp_path):
    net = user_models.BUILDERS["resnet"](nnx.Rngs(0))
    q = w8a8.quantize_model(net, X)
    path = export.to_onnx(q, X[:2], tmp_path / "resnet.onnx", calib_x=X)
    assert "1 residual add(s) quantized" in onnx.load(str(path)).doc_string
    assert "QLinearAdd" in _optimized_ops(path, tmp_path)
    ref = np.asarray(q(X))
    assert np.abs(export.load_onnx(path)(X) - ref).max() < 0.05 * np.abs(ref).max()
    mlp = w8a8.quantize_model(user_models.BUILDERS["sequential"](nnx.Rngs(0)), X)
    with pytest.warns(UserWarning, match="no residual Add"):
        export.to_onnx(mlp, X[:2], tmp_path / "mlp.onnx", calib_x=X)
    with pytest.raises(ValueError, match="float model has no quantizers"):
        export.to_onnx(net, X[:2], tmp_path / "f.onnx", calib_x=X)
    with pytest.raises(ValueError, match=r"shaped like example \(\*, 8, 8, 1\)"):
        export.to_onnx(q, X[:2], tmp_path / "bad.onnx", calib_x=X[:, :4])
    bad = X.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        export.to_onnx(q, X[:2], tmp_path / "nan.onnx", calib_x=bad)
    assert not any((tmp_path / n).exists() for n in ("f.onnx", "bad.onnx", "nan.onnx"))


class _IdentityBlocks(nnx.Module):
    """A stem and two identity residual blocks: each block's sum feeds the next block's
    first convolution *and* its add."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.stem = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.convs = nnx.List([nnx.Conv(8, 8, (3, 3), rngs=rngs) for _ in range(4)])
        self.head = nnx.Linear(8 * 8 * 8, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem(x))
        for k in (0, 2):
            x = nnx.relu(x + self.convs[k + 1](nnx.relu(self.convs[k](x))))
        return self.head(x.reshape((x.shape[0], -1)))


def test_calib_x_quantizes_a_chain_of_identity_blocks_and_a_fixed_batch(tmp_path):
    q = w8a8.quantize_model(_IdentityBlocks(), X)
    path = export.to_onnx(q, X[:2], tmp_path / "blocks.onnx", calib_x=X)
    assert "2 residual add(s) quantized" in onnx.load(str(path)).doc_string
    ops = Counter(n.op_type for n in _optimized_graph(path, tmp_path).node)
    assert ops["QLinearAdd"] == 2 and ops["QLinearConv"] == 5 and ops["Conv"] == 0
    ref = np.asarray(q(X))
    assert np.abs(export.load_onnx(path)(X) - ref).max() < 0.05 * np.abs(ref).max()
    # a file of fixed batch size calibrates in batches of that size (47 images: one short)
    fixed = export.to_onnx(q, X[:4], tmp_path / "fixed.onnx", calib_x=X[:47],
                           dynamic_batch=False)
    np.testing.assert_allclose(export.load_onnx(fixed)(X[:4]), export.load_onnx(path)(X[:4]),
                               atol=0.05 * np.abs(ref).max())
    with pytest.raises(ValueError, match="must hold numbers"):
        export.to_onnx(q, X[:2], tmp_path / "s.onnx", calib_x=X.astype(str))


def test_onnx_runtime_sessions_are_timed_beside_jax_models(tmp_path):
    from pruning_kit import measure
    model = models.SmallCNN(1, (4, 8), image_size=8, rngs=nnx.Rngs(0))
    model.eval()
    session = export.load_onnx(export.to_onnx(model, X[:2], tmp_path / "cnn.onnx"))
    r = measure.compare_latency({"jax": model, "ort": session}, X, rounds=2, runs=1)
    assert r.names == ("jax", "ort") and r["ort"].median_ms > 0
    assert measure.latency(session, X, runs=2).batch_size == len(X)
    r = measure.compare_latency({"ort": session, "again": session},
                                {"ort": jnp.asarray(X), "again": X}, rounds=2, runs=1,
                                jit=False)                  # a JAX batch reaches it as NumPy
    assert r.names == ("ort", "again")
    from pruning_kit import timing
    with pytest.raises(ValueError, match="runs outside JAX"):
        timing.compiled_forward(session)[1](X)


class _TokenPick(nnx.Module):
    """Rows of the image as tokens; the first and last token and a slice of the middle."""

    def __init__(self, rngs):
        self.embed = nnx.Linear(8, 16, rngs=rngs)
        self.head = nnx.Linear(3 * 16, 10, rngs=rngs)

    def __call__(self, x):
        t = self.embed(x.reshape(x.shape[0], 8, 8))
        mid = t[:, 2:5, 1:2].mean(1).repeat(16, -1)
        return self.head(jnp.concatenate([t[:, 0], t[:, -1], mid], -1))


def test_constant_index_gathers_export_with_a_symbolic_batch(tmp_path):
    # under a symbolic batch size JAX traces t[:, 0] and t[:, -1] as gathers at constant
    # indices: they become Slice + Squeeze, and the file runs any batch size
    model = _TokenPick(nnx.Rngs(0))
    path = export.to_onnx(model, X[:2], tmp_path / "pick.onnx")
    ops = export.describe_onnx(path)["ops"]
    assert "Gather" not in ops and ops["Slice"] >= 2 and ops["Squeeze"] >= 2
    np.testing.assert_allclose(export.load_onnx(path)(X), np.asarray(model(jnp.asarray(X))),
                               atol=1e-5)


def test_constant_gathers_on_a_channels_first_map_and_out_of_range_indices(tmp_path):
    class MapPick(nnx.Module):          # a conv's map is held NCHW in the file
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.head = nnx.Linear(2 * 8 * 4, 10, rngs=rngs)

        def __call__(self, x):
            y = self.conv(x)                                # (N, 8, 8, 4) in JAX
            rows = jnp.concatenate([y[:, 0], y[:, -1]], 1)  # (N, 16, 4)
            return self.head(rows.reshape(rows.shape[0], -1))

    model = MapPick(nnx.Rngs(0))
    path = export.to_onnx(model, X[:2], tmp_path / "map.onnx")
    np.testing.assert_allclose(export.load_onnx(path)(X), np.asarray(model(jnp.asarray(X))),
                               atol=1e-5)

    class Clipped(nnx.Module):          # an index past the end: JAX clips it
        def __init__(self, rngs):
            self.head = nnx.Linear(8, 10, rngs=rngs)

        def __call__(self, x):
            return self.head(jnp.take(x.reshape(x.shape[0], 8, 8), 11, axis=1, mode="clip"))

    model = Clipped(nnx.Rngs(0))
    path = export.to_onnx(model, X[:2], tmp_path / "clip.onnx")
    np.testing.assert_allclose(export.load_onnx(path)(X), np.asarray(model(jnp.asarray(X))),
                               atol=1e-5)

    class Filled(Clipped):              # ... or fills it: not a slice, refused
        def __call__(self, x):
            return self.head(jnp.take(x.reshape(x.shape[0], 8, 8), 11, axis=1, mode="fill"))

    with pytest.raises(jaxpr_onnx.UnsupportedOpError, match="fixed at export time"):
        export.to_onnx(Filled(nnx.Rngs(0)), X[:2], tmp_path / "fill.onnx")
    assert not (tmp_path / "fill.onnx").exists()
