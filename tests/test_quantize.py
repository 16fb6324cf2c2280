"""Quantization: the numeric core (quantize), BN folding and integer inference (quant_infer)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pruning_kit import codebook as cb
from pruning_kit import deep_compression, fold, models, qat, train, w8a8
from pruning_kit import quant_infer as qi
from pruning_kit import quant_storage as qs
from pruning_kit import quantize as qz

FAST = settings(max_examples=25, deadline=None)
FLOATS = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)


def normal(seed, shape):
    """Random float32 data from numpy (no per-shape compile of jax.random)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# --------------------------------------------------------------------------- core
@FAST
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
                    elements=FLOATS),
       bits=st.integers(2, 16), symmetric=st.booleans(), per_channel=st.booleans(),
       data=st.data())
def test_round_trip_within_half_a_step(x, bits, symmetric, per_channel, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1)) if per_channel else None
    qp = qz.compute_qparams(x, bits, axis=axis, symmetric=symmetric)
    err = np.abs(np.asarray(qz.dequantize(qz.quantize(x, qp), qp)) - x)
    scale = np.asarray(qp.scale)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    # half a step, plus float32 rounding of x / scale (at most ~2^bits ulps of a step)
    assert np.all(err <= scale * (0.5 + 2.0**bits * 3e-7) + 1e-6 * np.abs(x).max())


@FAST
@given(bits=st.integers(2, 16), symmetric=st.booleans(), lo=st.floats(-5, -0.1),
       hi=st.floats(0.1, 5))
def test_explicit_clip_range_bound_inside_and_clipped_outside(bits, symmetric, lo, hi):
    x = np.linspace(2 * lo, 2 * hi, 301, dtype=np.float32)
    qp = qz.compute_qparams(x, bits, symmetric=symmetric, clip=(lo, hi))
    deq = np.asarray(qz.dequantize(qz.quantize(x, qp), qp))
    qmin, qmax = qz.int_range(bits, symmetric)
    zp = 0 if qp.zero_point is None else int(qp.zero_point)
    s = float(qp.scale)
    inside = (x >= (qmin - zp) * s) & (x <= (qmax - zp) * s)
    assert np.all(np.abs(deq - x)[inside] <= s * (0.5 + 2.0**bits * 3e-7))
    assert np.all(deq <= (qmax - zp) * s * (1 + 1e-6)) and np.all(deq >= (qmin - zp) * s * 1.000001)


@pytest.mark.parametrize("bits, symmetric", [(b, s) for b in range(1, 17) for s in (True, False)
                                               if b > 1 or not s])   # symmetric 1-bit: error
def test_codes_use_exactly_the_integer_range(bits, symmetric):
    x = normal(bits, (4000,)) * 3
    qp = qz.compute_qparams(x, bits, symmetric=symmetric, clip=1.0)   # many values clipped
    q = np.asarray(qz.quantize(x, qp)).astype(np.int64)
    qmin, qmax = qz.int_range(bits, symmetric)
    expected = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    assert (qmin, qmax) == expected
    assert q.min() == qmin and q.max() == qmax
    want = {(True, 8): np.int8, (False, 8): np.uint8, (True, 16): np.int16,
            (False, 16): np.uint16}[(symmetric, 8 if bits <= 8 else 16)]
    assert qz.quantize(x, qp).dtype == want


@pytest.mark.parametrize("axis, channels", [(0, 3), (1, 4), (2, 5), (-1, 5), (-2, 4), (-3, 3)])
def test_per_channel_scales_follow_the_axis(axis, channels):
    x = normal(0, (3, 4, 5))
    x = x * jnp.arange(1, 1 + x.shape[axis]).reshape([-1 if a == axis % 3 else 1
                                                      for a in range(3)])
    qp = qz.compute_qparams(x, 8, axis=axis)
    assert qp.scale.shape == (channels,) and qp.axis == axis % 3
    reduce = tuple(a for a in range(3) if a != axis % 3)
    np.testing.assert_allclose(qp.scale, jnp.abs(x).max(reduce) / 127, rtol=1e-6)
    qa = qz.compute_qparams(x, 4, axis=axis, symmetric=False)
    assert qa.zero_point.shape == (channels,) and qa.zero_point.dtype == jnp.int32


def test_constant_and_zero_tensors_give_finite_scales():
    for x in (jnp.zeros((3, 4)), jnp.full((3, 4), 2.5), jnp.full((3, 4), -1.0)):
        for sym in (True, False):
            qp = qz.compute_qparams(x, 8, axis=-1, symmetric=sym)
            assert np.all(np.isfinite(qp.scale)) and np.all(qp.scale >= qz.SCALE_FLOOR)
            np.testing.assert_allclose(qz.dequantize(qz.quantize(x, qp), qp), x, atol=1e-6)


def test_fake_quant_ste_gradient():
    x = normal(1, (50,))
    w = normal(2, (50,))
    grad = jax.grad(lambda v: jnp.sum(w * qz.fake_quant(v, 4)))(x)
    np.testing.assert_array_equal(grad, w)                      # identity inside the range
    out = jax.grad(lambda v: jnp.sum(qz.fake_quant(v, 4, clip=1.0)))(x)
    clipped = np.abs(np.asarray(x)) > 1.0 + 0.5 / 7             # rounds outside [-7, 7]
    assert np.all(np.asarray(out)[clipped] == 0) and np.all(np.asarray(out)[~clipped] == 1)
    assert clipped.any() and (~clipped).any()
    # the forward value is the quantized one
    qp = qz.compute_qparams(x, 4)
    np.testing.assert_allclose(qz.fake_quant(x, 4), qz.dequantize(qz.quantize(x, qp), qp))


def test_fake_quant_traced_bits_compiles_once():
    traces = []

    @jax.jit
    def f(x, bits):
        traces.append(1)
        return qz.fake_quant(x, bits, axis=-1), qz.fake_quant(x, bits, symmetric=False)

    x = normal(3, (16, 8))
    for bits in (2, 3, 4, 8, 12):
        got = f(x, bits)
        np.testing.assert_allclose(got[0], qz.fake_quant(x, bits, axis=-1), rtol=1e-6,
                                   atol=1e-7)
        np.testing.assert_allclose(got[1], qz.fake_quant(x, bits, symmetric=False), rtol=1e-6,
                                   atol=1e-7)
    assert len(traces) == 1 and f._cache_size() == 1
    assert not np.allclose(f(x, 2)[0], f(x, 8)[0])


def test_bad_input_raises_clear_errors():
    w = jnp.ones((3, 4))
    for bits in (0, 17, 2.5, True, "8"):
        with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 16\]"):
            qz.compute_qparams(w, bits)
    with pytest.raises(ValueError, match="symmetric quantization needs bits >= 2"):
        qz.fake_quant(w, 1)
    with pytest.raises(ValueError, match="axis 5 does not exist for a 2-D tensor"):
        qz.compute_qparams(w, 8, axis=5)
    with pytest.raises(ValueError, match="axis -3 does not exist"):
        qs.quantize_tensor(w, 8, axis=-3)
    with pytest.raises(ValueError, match="1 NaN/inf value"):
        qz.compute_qparams(w.at[1, 2].set(jnp.nan), 8)
    with pytest.raises(ValueError, match="NaN/inf"):
        qs.quantize_tree({"k": w.at[0, 0].set(jnp.inf)}, 8)
    with pytest.raises(ValueError, match="x is empty"):
        qz.compute_qparams(jnp.zeros((0, 4)), 8)
    with pytest.raises(ValueError, match="lo > hi"):
        qz.compute_qparams(w, 8, clip=(1.0, -1.0))
    with pytest.raises(ValueError, match="per-channel along axis 1 with 4 channels"):
        qz.quantize(jnp.ones((4, 3)), qz.compute_qparams(w, 8, axis=1))
    for empty in ([], np.zeros((0, 5))):
        with pytest.raises(ValueError, match="calibration set is empty"):
            qz.calibrate(empty, 8)
    with pytest.raises(ValueError, match="All 100 calibration values equal 0.3"):
        qz.calibrate(np.full(100, 0.3), 8)
    with pytest.raises(ValueError, match="method must be"):
        qz.calibrate(np.arange(5.0), 8, "entropy")


# --------------------------------------------------------------------------- calibration
def test_calibration_methods():
    acts = jax.nn.relu(normal(4, (20000,)))
    batches = [acts[:5000], acts[5000:].reshape(-1, 3, 5)]
    mm = qz.calibrate(batches, 4)
    assert int(mm.zero_point) == 0 and not mm.symmetric
    np.testing.assert_allclose(mm.scale * 15, acts.max(), rtol=1e-6)
    pc = qz.calibrate(acts, 4, "percentile", percentile=99.0)
    np.testing.assert_allclose(pc.scale * 15, jnp.percentile(acts, 99.0), rtol=1e-5)
    mse = qz.calibrate(acts, 4, "mse")

    def err(qp):
        return float(jnp.mean((qz.dequantize(qz.quantize(acts, qp), qp) - acts) ** 2))

    assert err(mse) < err(mm) and mse.scale < mm.scale
    sym = qz.calibrate(acts - 0.5, 8, "mse", symmetric=True)
    assert sym.symmetric and sym.zero_point is None


# --------------------------------------------------------------------------- packing
@FAST
@given(bits=st.integers(1, 16), signed=st.booleans(), n=st.integers(0, 67), data=st.data())
def test_pack_unpack_round_trip(bits, signed, n, data):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    values = data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
    q = jnp.asarray(np.array(values, np.int64).reshape(-1), qz.storage_dtype(bits, signed))
    packed = qs.pack(q, bits, signed=signed)
    assert packed.dtype == jnp.uint8 and packed.shape == (qs.packed_nbytes(n, bits),)
    back = qs.unpack(packed, bits, (n,), signed)
    assert back.dtype == qz.storage_dtype(bits, signed)
    np.testing.assert_array_equal(back, q)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_pack_layout_and_errors(bits):
    q = jnp.arange(2**bits, dtype=jnp.uint8)
    packed = qs.pack(q, bits)
    assert packed.size == 2**bits * bits // 8 or packed.size == 1
    q2 = jnp.arange(-3, 4, dtype=jnp.int8).reshape(7, 1)
    if bits >= 4:
        np.testing.assert_array_equal(qs.unpack(qs.pack(q2, bits), bits, (7, 1), True), q2)
    with pytest.raises(ValueError, match="do not fit"):
        qs.pack(jnp.array([2**bits], jnp.int32), bits, signed=False)
    with pytest.raises(ValueError, match="truncated"):
        qs.unpack(packed[:-1], bits, q.shape, False)
    with pytest.raises(ValueError, match="integer codes"):
        qs.pack(jnp.ones(3), bits)


def test_quantized_tensor_bytes_are_what_is_stored():
    w = normal(5, (512, 256))
    for bits, sym in ((2, True), (4, False), (8, True), (12, False)):
        qt = qs.quantize_tensor(w, bits, axis=-1, symmetric=sym)
        assert qt.data.dtype == jnp.uint8 and qt.data.size == 512 * 256 * bits // 8
        expected = qt.data.size + 256 * 4 + (0 if sym else 256 * 4)   # + scales, zero points
        assert qt.nbytes == expected
        assert abs(qt.nbytes / w.nbytes - bits / 32) < 0.01
        err = np.abs(np.asarray(qt.dequantize()) - np.asarray(w))
        assert np.all(err <= np.asarray(qt.qparams.scale) * (0.5 + 2.0**bits * 3e-7))


def test_quantize_tree_on_a_model():
    model = models.MLP(64, (32,), rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    qtree = qs.quantize_tree(params, 4)
    assert isinstance(qtree["layers"][0]["kernel"], qs.QuantizedTensor)
    assert qtree["layers"][0]["kernel"].qparams.scale.shape == (32,)
    assert not isinstance(qtree["layers"][0]["bias"], qs.QuantizedTensor)
    back = qs.dequantize_tree(qtree)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    k = params["layers"][1]["kernel"]
    step = qtree["layers"][1]["kernel"].qparams.scale
    assert np.all(np.abs(back["layers"][1]["kernel"] - k) <= step * 0.5001)
    kernels = (64 * 32 + 32 * 10) // 2 + 4 * (32 + 10)
    assert qs.tree_nbytes(qtree) == kernels + 4 * (32 + 10)
    mixed = qs.quantize_tree(model, {"layers/0/kernel": 2, "layers/1/kernel": 8}, axis=None)
    assert mixed["layers"][0]["kernel"].qparams.bits == 2
    assert mixed["layers"][1]["kernel"].qparams.scale.shape == ()
    with pytest.raises(ValueError, match="no entry for"):
        qs.quantize_tree(params, {"layers/0/kernel": 4})
    qtree_jit = jax.jit(qs.dequantize_tree)(qtree)   # QuantizedTensor crosses jit
    np.testing.assert_allclose(qtree_jit["layers"][0]["kernel"], back["layers"][0]["kernel"])


# --------------------------------------------------------------------------- k-means
def test_kmeans_codebook():
    w = normal(6, (64, 32))
    for bits in (1, 3):
        c0, i0 = cb.kmeans_codebook(w, bits, iters=0)
        c, idx = cb.kmeans_codebook(w, bits, iters=15)
        assert c.shape == (2**bits,) and c.dtype == jnp.float32 and idx.shape == w.shape
        assert idx.dtype == jnp.uint8 and int(idx.max()) < 2**bits and int(idx.min()) >= 0
        np.testing.assert_allclose(c0, jnp.linspace(w.min(), w.max(), 2**bits), rtol=1e-6)
        e0 = float(jnp.mean((c0[i0] - w) ** 2))
        e = float(jnp.mean((cb.codebook_lookup(c, idx) - w) ** 2))
        assert e < e0
        c2, idx2 = cb.kmeans_codebook(w, bits, iters=15)
        np.testing.assert_array_equal(c, c2)
        np.testing.assert_array_equal(idx, idx2)
    cd, _ = cb.kmeans_codebook(w, 2, init="density")
    assert np.all(np.diff(np.asarray(cd)) > 0)
    const, ci = cb.kmeans_codebook(jnp.full((64, 32), 0.5), 3)
    assert np.all(np.isfinite(const)) and np.allclose(const[ci], 0.5)
    grad = jax.grad(lambda book: jnp.sum(cb.codebook_lookup(book, idx) * w))(c)
    np.testing.assert_allclose(grad, jax.ops.segment_sum(w.ravel(), idx.ravel(), c.shape[0]),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"bits must be an integer in \[1, 8\]"):
        cb.kmeans_codebook(w, 9)
    np.testing.assert_array_equal(cb.codebook_lookup(c, jnp.array([[-1, 0]])), [[0.0, c[0]]])
    with pytest.raises(ValueError, match="NaN/inf"):
        cb.kmeans_codebook(w.at[0, 0].set(jnp.nan), 2)


# --------------------------------------------------------------------------- BN folding
def _random_cnn(seed=0):
    """A small SmallCNN with random weights and non-trivial BatchNorm statistics, in eval
    mode (filled from numpy: no initialiser compiles, so the test stays fast)."""
    abstract = nnx.eval_shape(lambda: models.SmallCNN(widths=(4, 8), image_size=8,
                                                      rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif "var" in name:
            value = rng.uniform(0.3, 2.0, size=leaf.shape)
        elif "scale" in name:
            value = 1 + 0.3 * rng.normal(size=leaf.shape)
        else:
            value = 0.2 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    model = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
    model.eval()
    return model


def test_fold_batchnorm_matches_conv_then_bn():
    kernel, x = normal(7, (3, 3, 2, 4)), normal(8, (5, 6, 6, 2))
    gamma, beta, mean = 1 + normal(9, (4,)), normal(10, (4,)), normal(11, (4,))
    var = jnp.abs(normal(12, (4,))) + 0.1
    conv = jax.jit(lambda a, k: jax.lax.conv_general_dilated(
        a, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    for bias in (None, normal(13, (4,))):
        y = conv(x, kernel) + (0 if bias is None else bias)
        ref = (y - mean) / jnp.sqrt(var + 1e-5) * gamma + beta
        fk, fb = qi.fold_batchnorm(kernel, bias, gamma, beta, mean, var, 1e-5)
        np.testing.assert_allclose(conv(x, fk) + fb, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        qi.fold_batchnorm(kernel, None, gamma[:3], beta, mean, var)
    with pytest.raises(ValueError, match="bn_var \\+ eps must be positive"):
        qi.fold_batchnorm(kernel, None, gamma, beta, mean, -var)


def test_fold_cnn_matches_model_in_eval_mode(digits):
    cnn = _random_cnn(0)
    x = digits.x_test[:64]
    folded, pairs = fold.fold_batchnorm_model(cnn, x[:2])
    # every norm is found in the trace -- bn1 too, after the shifted-add first conv
    assert pairs == {"bn1": "conv1/kernel", "bn2": "conv2/kernel",
                     "res_bn1": "res_conv1/kernel", "res_bn2": "res_conv2/kernel"}
    np.testing.assert_allclose(folded(x), train.predict(cnn, x), atol=1e-5, rtol=1e-5)
    no_bn = deep_compression.fold_cnn_model(cnn)
    np.testing.assert_allclose(no_bn(x), train.predict(cnn, x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="SmallCNN"):
        deep_compression.fold_cnn_model(models.MLP(64, (8,), rngs=nnx.Rngs(0)))


# --------------------------------------------------------------------------- integer path
def _dot_and_conv_dtypes(jaxpr):
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            found.append((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars),
                          str(eqn.outvars[0].aval.dtype)))
        for p in eqn.params.values():
            sub = getattr(p, "jaxpr", p)
            if hasattr(sub, "eqns"):
                found += _dot_and_conv_dtypes(sub)
    return found


def test_integer_mlp_equals_fake_quant_within_one_step(digits, trained_mlp):
    float_acc = train.evaluate(trained_mlp, digits.x_test, digits.y_test)
    assert float_acc > 0.7
    for act_bits, method in ((8, "minmax"), (4, "mse")):
        qm = qi.quantize_mlp(trained_mlp, digits.x_train[:256], act_bits=act_bits,
                             method=method)
        assert qm.names == ("layers/0", "layers/1")
        assert all(layer.kernel.dtype == jnp.int8 for layer in qm.dense)
        assert all(layer.bias.dtype == jnp.int32 for layer in qm.dense)
        got = jax.jit(qi.int_forward)(qm, digits.x_test)
        ref = jax.jit(qi.fake_quant_forward)(qm, digits.x_test)
        step = float(qm.acts[-1].scale)
        assert float(jnp.abs(got - ref).max()) <= step * 1.001
        acc = float(np.mean(np.argmax(got, -1) == digits.y_test))
        if act_bits == 8:
            assert abs(acc - float_acc) <= 0.02
    ops = _dot_and_conv_dtypes(jax.make_jaxpr(qi.int_forward)(qm, digits.x_test[:4]).jaxpr)
    assert ops and all(o == ("dot_general", ("int8", "int8"), "int32") for o in ops)
    with pytest.raises(ValueError, match="64 input features"):
        qi.int_forward(qm, jnp.zeros((2, 10)))
    with pytest.raises(ValueError, match=r"act_bits must be an integer in \[1, 8\]"):
        qi.quantize_mlp(trained_mlp, digits.x_train[:16], act_bits=9)
    with pytest.raises(ValueError, match="calib_x must be a non-empty"):
        qi.quantize_mlp(trained_mlp, digits.x_train[:0])


def test_quantize_mlp_reads_any_dense_chain(digits, trained_mlp):
    """A user's nnx.Sequential MLP is the same chain; a CNN is refused with directions."""
    seq = nnx.Sequential(lambda x: x.reshape(x.shape[0], -1),
                         nnx.Linear(64, 32, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(32, 10, rngs=nnx.Rngs(1)))
    seq.layers[1].kernel[...] = trained_mlp.layers[0].kernel[...]
    seq.layers[1].bias[...] = trained_mlp.layers[0].bias[...]
    seq.layers[3].kernel[...] = trained_mlp.layers[1].kernel[...]
    seq.layers[3].bias[...] = trained_mlp.layers[1].bias[...]
    a = qi.quantize_mlp(seq, digits.x_train[:256])
    b = qi.quantize_mlp(trained_mlp, digits.x_train[:256])
    assert a.names == ("layers/1", "layers/3")
    np.testing.assert_array_equal(qi.int_forward(a, digits.x_test),
                                  qi.int_forward(b, digits.x_test))
    with pytest.raises(ValueError, match="w8a8.quantize_model"):
        qi.quantize_mlp(_random_cnn(1), digits.x_train[:16])


def test_integer_cnn_runs_int8_convolutions(digits):
    """The SmallCNN goes through the any-model integer path (w8a8): folded, int8 x int8."""
    cnn = _random_cnn(1)
    qm = w8a8.quantize_model(cnn, digits.x_train[:128])
    assert set(qm.folded) == {"bn1", "bn2", "res_bn1", "res_bn2"}
    x = digits.x_test[:200]
    got = np.asarray(qm(x))
    assert float(np.mean(np.argmax(got, -1) == np.argmax(train.predict(cnn, x), -1))) > 0.8
    ops = _dot_and_conv_dtypes(jax.make_jaxpr(qm.__call__)(x[:2]).jaxpr)
    assert {o[0] for o in ops if o[1] == ("int8", "int8")} == {"dot_general",
                                                              "conv_general_dilated"}
    assert all(o[2] == "int32" for o in ops if o[1] == ("int8", "int8"))


def test_w4a4_integer_model_of_a_qat_mlp_matches_its_fake_quant_forward(digits, trained_mlp):
    """QAT's fake-quant forward and w8a8's integer path share one grid at 4 bits (per-channel
    symmetric weights, unsigned activations with a zero point), so QAT's gain carries over."""
    model = nnx.clone(trained_mlp)
    clips = qat.calibrate_inputs(model, digits.x_train, 4, method="mse")
    train.fit(model, digits.x_train, digits.y_train, epochs=2, batch_size=32,
              learning_rate=1e-3, loss_fn=qat.qat_loss(4, 4, act_clips=clips), progress=False)
    fq = np.asarray(qat.fake_quant_model(model, digits.x_test, weight_bits=4, act_bits=4,
                                         act_clips=clips))
    qm = w8a8.quantize_model(model, digits.x_train[:256], weight_bits=4, act_bits=4,
                             act_qparams=clips)
    got = np.asarray(qm(digits.x_test))
    assert np.mean(got.argmax(-1) == fq.argmax(-1)) >= 0.99
    np.testing.assert_allclose(got, fq, atol=1e-4)
    ops = _dot_and_conv_dtypes(jax.make_jaxpr(qm.__call__)(digits.x_test[:2]).jaxpr)
    assert ops and all(o == ("dot_general", ("int8", "int8"), "int32") for o in ops)
    with pytest.raises(ValueError, match="one per layer"):
        w8a8.quantize_model(model, digits.x_train[:16], weight_bits=4, act_bits=4,
                            act_qparams=clips[:1])
    with pytest.raises(ValueError, match="unsigned 4-bit"):
        w8a8.quantize_model(model, digits.x_train[:16], weight_bits=4, act_bits=4,
                            act_qparams=qat.calibrate_inputs(model, digits.x_train, 8))
