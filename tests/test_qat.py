"""Quantization-aware training and mixed precision (the shared digits MLP)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruning_kit import data, models, qat, train
from pruning_kit import mixed_precision as mp
from pruning_kit import quant_infer as qi
from pruning_kit import quant_storage as qs
from pruning_kit import quantize as qz


@pytest.fixture(scope="module")
def split(digits):
    """(train, validation) held out from the digits training set."""
    return data.holdout(digits.x_train, digits.y_train, 300, seed=0)


@pytest.fixture(scope="module")
def trained(trained_mlp):
    """The session's trained digits MLP; shared, so read it only (nnx.clone to change it)."""
    return trained_mlp


# --------------------------------------------------------------------------- QAT
def test_qat_loss_trains_and_gradients_flow(split, trained):
    (x, y), (xv, yv) = split
    clips = qat.calibrate_inputs(trained, xv, 4)
    assert len(clips) == 2 and all(c.bits == 4 and not c.symmetric for c in clips)
    loss_fn = qat.qat_loss(4, 4, act_clips=clips)
    model = nnx.clone(trained)
    grads = nnx.grad(lambda m: loss_fn(m, jnp.asarray(x[:64]), jnp.asarray(y[:64]))[0])(model)
    for layer in grads.layers.values():
        g = np.asarray(layer["kernel"][...])
        assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0
    pairs = qat.fake_quant_model(model, xv, weight_bits=8, act_bits=4,
                               act_clips=[(float(c.scale) * -int(c.zero_point),
                                           float(c.scale) * (15 - int(c.zero_point)))
                                          for c in clips])      # (lo, hi) pairs work too
    np.testing.assert_allclose(pairs, qat.fake_quant_model(model, xv, weight_bits=8, act_bits=4,
                                                         act_clips=clips), atol=1e-4)
    # from scratch so the loss has room to fall; it must fall over a few epochs
    fresh = models.MLP(64, (32,), rngs=nnx.Rngs(1))
    history = train.fit(fresh, x, y, epochs=4, batch_size=32, learning_rate=3e-3,
                        loss_fn=qat.qat_loss(4, 4, act_clips=clips), progress=False)
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    # deployed through the integer pipeline with the ranges it trained with
    acc = qat.evaluate_deployed_mlp(fresh, xv, yv, weight_bits=4, act_bits=4,
                                    act_clips=clips, calib_x=xv)
    assert acc > 0.7


@pytest.mark.parametrize("bits, method", [(2, "minmax"), (2, "mse"), (3, "mse"), (4, "minmax")])
def test_qat_forward_uses_at_most_2_to_the_bits_weights_per_channel(trained, bits, method):
    # one linear layer: the logits on the identity matrix are the fake-quantized kernel
    model = models.MLP(64, (), 10, rngs=nnx.Rngs(0))
    model.layers[0].kernel[...] = trained.layers[0].kernel[...][:, :10]
    eye = jnp.eye(64)
    kernel = qat.fake_quant_model(model, eye, weight_bits=bits, weight_method=method) \
        - model.layers[0].bias[...]
    kernel = np.round(np.asarray(kernel), 6)
    for column in kernel.T:
        assert len(np.unique(column)) <= 2**bits
    assert len(np.unique(kernel)) > 2**bits          # but the scales differ per channel
    loss, logits = qat.qat_loss(bits, None, weight_method=method)(
        model, eye, jnp.zeros(64, jnp.int32))
    np.testing.assert_allclose(logits, kernel + np.asarray(model.layers[0].bias[...]),
                               atol=1e-5)


def test_deployed_int8_close_to_float(split, trained):
    _, (xv, yv) = split
    float_acc = train.evaluate(trained, xv, yv)
    acc = qat.evaluate_deployed_mlp(trained, xv, yv, weight_bits=8, act_bits=8, calib_x=xv,
                                    method="minmax")
    assert abs(acc - float_acc) <= 0.02
    w2 = qat.evaluate_deployed_mlp(trained, xv, yv, weight_bits=2, act_bits=None,
                                   weight_method="mse")
    assert 0.0 <= w2 <= 1.0


def test_quantize_mlp_output_bits_and_fixed_act_qparams(split, trained):
    _, (xv, _) = split
    clips = qat.calibrate_inputs(trained, xv, 4, method="minmax")
    qm = qi.quantize_mlp(trained, xv, act_bits=4, output_bits=8, act_qparams=clips)
    assert qm.acts[:-1] == clips and qm.acts[-1].bits == 8
    assert qi.quantize_mlp(trained, xv, act_bits=4).acts[-1].bits == 4   # default unchanged
    with pytest.raises(ValueError, match="one QParams per layer input"):
        qi.quantize_mlp(trained, xv, act_bits=4, act_qparams=clips[:1])
    with pytest.raises(ValueError, match="unsigned 8-bit"):
        qi.quantize_mlp(trained, xv, act_bits=8, act_qparams=clips)


def test_method_sets_the_logits_range_even_with_act_clips(split, trained):
    # evaluate_deployed_mlp's docstring: act_clips fix the layers' inputs; the logits' range
    # is calibrated with `method` either way, so the same clips with two methods differ.
    _, (xv, _) = split
    clips = qat.calibrate_inputs(trained, xv, 4, method="percentile")
    by_method = {m: qi.quantize_mlp(trained, xv, act_bits=4, output_bits=8, act_qparams=clips,
                                    method=m) for m in ("minmax", "mse")}
    assert all(qm.acts[:-1] == clips for qm in by_method.values())
    assert float(by_method["minmax"].acts[-1].scale) != float(by_method["mse"].acts[-1].scale)


# --------------------------------------------------------------------------- mixed precision
def test_allocate_bits_prefers_the_sensitive_layer_and_fits_the_budget():
    sens = {"big": {2: 0.60, 4: 0.89, 8: 0.90}, "small": {2: 0.85, 4: 0.899, 8: 0.90}}
    shapes = {"big": (256, 64), "small": (256, 64)}
    budget = mp.layer_bytes((256, 64), 4) + mp.layer_bytes((256, 64), 2)
    bits = mp.allocate_bits(sens, shapes, budget)
    assert bits == {"big": 4, "small": 2}
    assert mp.stored_bytes(shapes, bits) <= budget
    assert mp.allocate_bits(sens, shapes, 10**9) == {"big": 8, "small": 8}
    with pytest.raises(ValueError, match="Even 2 bits for every layer needs"):
        mp.allocate_bits(sens, shapes, budget // 4)


def test_greedy_allocation_respects_the_budget(monkeypatch):
    rng = np.random.default_rng(0)
    sens = {f"l{i}": dict(zip((2, 4, 8), np.sort(rng.uniform(0.3, 0.9, 3)), strict=True))
            for i in range(5)}
    shapes = {name: (int(rng.integers(16, 200)), 32) for name in sens}
    budget = mp.stored_bytes(shapes, {n: 4 for n in sens})
    exact = mp.allocate_bits(sens, shapes, budget)
    monkeypatch.setattr(mp, "EXACT_MAX_LAYERS", 0)
    greedy = mp.allocate_bits(sens, shapes, budget)
    assert mp.stored_bytes(shapes, greedy) <= budget
    total = {name: lambda b, n=name: max(sens[n].values()) - sens[n][b] for name in sens}
    loss = {k: sum(total[n](b) for n, b in v.items()) for k, v in
            (("exact", exact), ("greedy", greedy))}
    assert loss["exact"] <= loss["greedy"] + 1e-12


def test_sensitivity_scan_and_stored_bytes_match_quantize_tree(split, trained):
    _, (xv, yv) = split
    sens = mp.sensitivity_scan(trained, xv, yv, (2, 8))
    float_acc = train.evaluate(trained, xv, yv)
    assert set(sens) == {"layers/0/kernel", "layers/1/kernel"}
    for row in sens.values():
        assert abs(row[8] - float_acc) <= 0.02 and row[2] <= row[8]
    shapes = mp.kernel_shapes(trained)
    assert shapes == {"layers/0/kernel": (64, 32), "layers/1/kernel": (32, 10)}
    budget = mp.stored_bytes(shapes, {"layers/0/kernel": 2, "layers/1/kernel": 8})
    bits = mp.allocate_bits(sens, shapes, budget)
    qtree = qs.quantize_tree(trained, bits)
    biases = 4 * (32 + 10)
    assert qs.tree_nbytes(qtree) - biases == mp.stored_bytes(shapes, bits) <= budget


# --------------------------------------------------------------------------- helpers
def test_mse_weight_clipping_beats_minmax_at_low_bits(trained):
    w = trained.layers[0].kernel[...]
    for bits in (2, 3, 4):
        err = {m: float(jnp.mean((qs.quantize_tensor(w, bits, axis=-1, method=m).dequantize()
                                  - w) ** 2)) for m in ("minmax", "mse")}
        assert err["mse"] < err["minmax"]
    lo, hi = qz.mse_clip(w, 3, axis=-1)
    assert lo.shape == hi.shape == (32,) and np.all(np.asarray(hi) <= np.abs(w).max(0))
    np.testing.assert_array_equal(lo, -hi)
    copy = qs.dequantized_model(trained, qs.quantize_tree(trained, 8))
    assert copy is not trained and train.predict(copy, np.ones((2, 64))).shape == (2, 10)


# --------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(split, trained):
    (x, y), (xv, yv) = split
    clips = qat.calibrate_inputs(trained, xv, 4)
    for bits in (1, 9, 2.0):
        with pytest.raises(ValueError, match=r"weight_bits must be an integer in \[2, 8\]"):
            qat.qat_loss(bits, None)
    with pytest.raises(ValueError, match=r"act_bits must be an integer in \[1, 8\]"):
        qat.qat_loss(8, 9, act_clips=clips)
    with pytest.raises(ValueError, match="needs act_clips"):
        qat.qat_loss(8, 4)
    with pytest.raises(ValueError, match="act_bits is None"):
        qat.qat_loss(8, None, act_clips=clips)
    with pytest.raises(ValueError, match="unsigned 8-bit"):
        qat.qat_loss(8, 8, act_clips=clips)
    with pytest.raises(ValueError, match="1 ranges but the model has 2 dense/conv layers"):
        qat.qat_loss(8, 4, act_clips=clips[:1])(trained, jnp.asarray(xv[:4]), yv[:4])
    with pytest.raises(ValueError, match="not a single QParams"):
        qat.qat_loss(8, 4, act_clips=clips[0])
    with pytest.raises(ValueError, match="weight_method"):
        qat.qat_loss(8, None, weight_method="kmeans")
    with pytest.raises(ValueError, match="calib_x must be a non-empty"):
        qat.calibrate_inputs(trained, xv[:0], 4)
    with pytest.raises(ValueError, match="calibration values equal"):
        qat.calibrate_inputs(trained, np.zeros((10, 64)), 4)
    with pytest.raises(ValueError, match="calib_x is needed"):
        qat.evaluate_deployed_mlp(trained, xv, yv, act_bits=8)
    with pytest.raises(ValueError, match="weight_method='minmax'"):
        qat.evaluate_deployed_mlp(trained, xv, yv, act_bits=8, calib_x=xv,
                                  weight_method="mse")
    with pytest.raises(ValueError, match="bits_options is empty"):
        mp.sensitivity_scan(trained, xv, yv, ())
    with pytest.raises(ValueError, match="each of bits_options must be an integer"):
        mp.sensitivity_scan(trained, xv, yv, (2, 17))
    with pytest.raises(ValueError, match="no accuracy for bits"):
        mp.allocate_bits({"a": {2: 0.5}}, {"a": (4, 4)}, 100, (2, 4))
    with pytest.raises(ValueError, match="kernel shape such as"):
        mp.layer_bytes(784 * 300, 4)
    with pytest.raises(ValueError, match="different layers"):
        mp.allocate_bits({"a": {2: 0.5}}, {"b": (4, 4)}, 100)
    with pytest.raises(ValueError, match="method must be"):
        qs.quantize_tensor(jnp.ones((4, 4)), 4, method="percentile")
    with pytest.raises(ValueError, match="not both"):
        qs.quantize_tensor(jnp.ones((4, 4)), 4, method="mse", clip=1.0)
    assert jax.tree.leaves(nnx.state(trained))   # the model's arrays were not consumed


def test_qat_runs_on_your_own_conv_model(digits):
    """QAT is not bound to the course's MLP: a user CNN with BatchNorm, by its traced layers."""
    class UserCNN(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 8, (3, 3), use_bias=False, rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.fc = nnx.Linear(8 * 8 * 8, 10, rngs=rngs)

        def __call__(self, x):
            return self.fc(nnx.relu(self.bn(self.conv(x))).reshape(x.shape[0], -1))

    model = UserCNN(nnx.Rngs(0))
    train.fit(model, digits.x_train, digits.y_train, epochs=2, batch_size=32, progress=False)
    clips = qat.calibrate_inputs(model, digits.x_train[:256], 8)
    assert len(clips) == 2                                   # conv's input, fc's input
    before = train.evaluate(model, digits.x_val, digits.y_val)
    mode = model.bn.use_running_average
    fq = qat.fake_quant_model(model, digits.x_val, weight_bits=8, act_bits=8, act_clips=clips)
    assert abs(float((np.asarray(fq).argmax(-1) == digits.y_val).mean()) - before) < 0.03
    train.fit(model, digits.x_train, digits.y_train, epochs=1, batch_size=32,
              learning_rate=1e-4, loss_fn=qat.qat_loss(4, 8, act_clips=clips), progress=False)
    assert model.bn.use_running_average == mode
    assert train.evaluate(model, digits.x_val, digits.y_val) > 0.5
