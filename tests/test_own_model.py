"""A model written the way a user writes one: other layer names, Dropout, BatchNorm, no
``.config``. The toolkit must train a copy without destroying the original, measure and
save models that carry RNG state, and leave the caller's mode alone."""

import jax
import numpy as np
import pytest
from flax import nnx

from pruning_kit import codec, measure, program, train


class UserNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc_in = nnx.Linear(64, 32, rngs=rngs)
        self.norm = nnx.BatchNorm(32, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.head(self.drop(nnx.relu(self.norm(self.fc_in(x)))))


def _modes(model):
    return model.drop.deterministic, model.norm.use_running_average


def test_training_a_clone_leaves_the_original_usable(digits):
    original = UserNet(nnx.Rngs(0))
    before = train.predict(original, digits.x_val)
    clone = nnx.clone(original)
    train.fit(clone, digits.x_train, digits.y_train, epochs=1, batch_size=32, progress=False)
    np.testing.assert_array_equal(train.predict(original, digits.x_val), before)
    assert not np.array_equal(train.predict(clone, digits.x_val), before)


def test_own_arrays_copy_is_independent(digits):
    original = UserNet(nnx.Rngs(0))
    before = train.predict(original, digits.x_val)
    copy = train.own_arrays(original)
    assert copy.fc_in.kernel[...] is not original.fc_in.kernel[...]
    train.fit(copy, digits.x_train[:256], digits.y_train[:256], epochs=1, batch_size=32,
              progress=False)
    # the original's arrays were not donated away: it still predicts exactly as before
    np.testing.assert_array_equal(train.predict(original, digits.x_val), before)
    assert not np.array_equal(train.predict(copy, digits.x_val), before)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_inference_and_training_leave_the_mode_as_it_came(digits, mode):
    model = UserNet(nnx.Rngs(1))
    getattr(model, mode)()
    expected = _modes(model)
    train.evaluate(model, digits.x_val, digits.y_val)
    assert _modes(model) == expected
    train.fit(model, digits.x_train[:64], digits.y_train[:64], epochs=1, batch_size=32,
              progress=False)
    assert _modes(model) == expected
    measure.measure(model, digits.x_test, digits.y_test, batch_sizes=(1,), runs=2)
    assert _modes(model) == expected


def test_models_with_rng_state_measure_and_serialize(digits):
    model = UserNet(nnx.Rngs(2))
    assert measure.serialized_bytes(model) > 4 * measure.count_params(model) * 0.9
    row = measure.measure(model, digits.x_test, digits.y_test, batch_sizes=(1,), runs=2)
    assert row["params"] == measure.count_params(model)


def test_first_hour_errors_say_what_to_do(digits, tmp_path):
    from pruning_kit import codec, models
    model = models.MLP(64, (8,), rngs=nnx.Rngs(0))
    x, y = digits.x_train[:64], digits.y_train[:64]
    with pytest.raises(ValueError, match="loss_fn=pruning_kit.distill.distillation_loss"):
        train.fit(model, x, (y, np.zeros((64, 10), np.float32)), epochs=1, progress=False)
    with pytest.raises(ValueError, match="one-hot: pass y.argmax"):
        train.fit(model, x, np.eye(10, dtype=np.float32)[y], epochs=1, progress=False)
    with pytest.raises(ValueError, match="integer class indices"):
        train.evaluate(model, x, y.astype(np.float32))
    pkc = codec.save(tmp_path / "m.pkc", model)
    with pytest.raises(ValueError, match=r"codec.load\(path\)"):
        train.load_model(pkc)
    for save in (lambda p: train.save_model(model, p), lambda p: codec.save(p, model)):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            save(tmp_path / "no_such_folder" / "m.npz")
        assert not (tmp_path / "no_such_folder").exists()


def test_mirror_averaged_teacher_and_views_on_a_users_model(digits):
    from pruning_kit import function_matching
    model = UserNet(nnx.Rngs(0))
    model.train()
    x = digits.x_val[:16].reshape(16, 8, 8, 1)
    before = train.predict(nnx.clone(model), x)
    logits = function_matching.mirror_averaged_logits(model, x)
    np.testing.assert_allclose(logits, function_matching.mirror_averaged_logits(model, x))
    bank = function_matching.view_bank(model, x, 2, max_shift=1, mirror_average=True)
    assert logits.shape == (16, 10) and bank.logits.shape == (2, 16, 10)
    assert _modes(model) == (False, False)                 # still training, as it came
    np.testing.assert_array_equal(train.predict(nnx.clone(model), x), before)


def _arrays(model):
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model))
            if hasattr(a, "dtype") and not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)]


def test_codec_load_like_only_lends_its_structure(tmp_path):
    saved, mine = UserNet(nnx.Rngs(1)), UserNet(nnx.Rngs(0))
    before = _arrays(mine)
    back = codec.load(codec.save(tmp_path / "net.pkc", saved), like=mine)
    for a, b in zip(_arrays(mine), before, strict=True):       # like= is left as it came
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(back.fc_in.kernel[...]),
                                  np.asarray(saved.fc_in.kernel[...]))


def test_eval_copy_is_a_copy_training_it_leaves_the_caller_alone(digits):
    original = UserNet(nnx.Rngs(0))
    before, modes = train.predict(original, digits.x_val), _modes(original)
    copy = program.eval_copy(original)
    train.fit(copy, digits.x_train, digits.y_train, epochs=1, batch_size=32, progress=False)
    np.testing.assert_array_equal(train.predict(original, digits.x_val), before)
    assert _modes(original) == modes


class MLP(nnx.Module):                     # a user's own class under a course class's name
    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(64, 10, rngs=rngs)
        self.config = {"in_features": 64, "hidden": [], "num_classes": 10}

    def __call__(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


def test_a_class_of_your_own_named_like_a_course_class(tmp_path, digits):
    model = MLP(nnx.Rngs(0))
    assert measure.serialized_bytes(model) > 4 * 650          # measured, not refused
    with pytest.raises(ValueError, match=r"codec\.save\(path, model\)"):
        train.save_model(model, tmp_path / "m.npz")


class _TorchStyle(nnx.Module):             # kernel stored (out, in), used as x @ w.T
    def __init__(self, rngs: nnx.Rngs):
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (10, 64)) * 0.1)
        self.head = nnx.Linear(10, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(x.reshape(x.shape[0], -1) @ self.weight[...].T)


class _Bf16Params(nnx.Module):             # bfloat16 storage, float32 compute
    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(64, 10, param_dtype=jax.numpy.bfloat16, rngs=rngs)

    def __call__(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


def test_layers_quantization_cannot_see_are_named_not_silently_left_float(digits):
    from pruning_kit import interpret, qat, w8a8

    x = digits.x_val[:64]
    with pytest.warns(interpret.FloatLayersWarning, match=r"weight reaches its matmul"):
        q = w8a8.quantize_model(_TorchStyle(nnx.Rngs(0)), x)
    assert list(q.codes) == ["head/kernel"]
    with pytest.warns(interpret.FloatLayersWarning, match="fc/kernel .* fake_quant_model"):
        qat.fake_quant_model(_Bf16Params(nnx.Rngs(0)), x, weight_bits=2)
    with pytest.raises(ValueError, match="fc/kernel reach theirs through a cast"):
        qat.calibrate_inputs(_Bf16Params(nnx.Rngs(0)), x)


class _TokenNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(17, 16, rngs=rngs)
        self.out = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, tokens):
        return self.out(self.embed(tokens).mean(axis=1))


def test_token_inputs_stay_integers(tmp_path):
    from pruning_kit import export, qat

    model = _TokenNet(nnx.Rngs(0))
    tokens = np.random.default_rng(0).integers(0, 17, (32, 16)).astype(np.int32)
    onnx = export.load_onnx(export.to_onnx(model, tokens[:2], tmp_path / "t.onnx"))
    assert onnx.input_dtype == np.int32
    np.testing.assert_allclose(onnx(tokens), np.asarray(model(tokens)), atol=1e-5)
    assert len(qat.calibrate_inputs(model, tokens, 8)) == 1          # the Linear's input
    assert qat.fake_quant_model(model, tokens, weight_bits=8).shape == (32, 10)


class _Bf16Compute(nnx.Module):            # bfloat16 storage and compute
    def __init__(self, rngs: nnx.Rngs):
        kw = dict(param_dtype=jax.numpy.bfloat16, dtype=jax.numpy.bfloat16, rngs=rngs)
        self.fc1, self.out = nnx.Linear(64, 32, **kw), nnx.Linear(32, 10, **kw)

    def __call__(self, x):
        return self.out(nnx.relu(self.fc1(x.reshape(x.shape[0], -1))))


def test_bfloat16_models_quantize_and_refuse_onnx_clearly(digits, tmp_path):
    from pruning_kit import export, w8a8

    model, x = _Bf16Compute(nnx.Rngs(0)), digits.x_val[:64]
    q = np.asarray(w8a8.quantize_model(model, x)(x), np.float32)
    ref = np.asarray(model(x), np.float32)
    assert np.abs(q - ref).max() < 0.1 * np.abs(ref).max()
    with pytest.raises(ValueError, match="bfloat16 arrays: ONNX Runtime"):
        export.to_onnx(model, x[:2], tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_compressed_copies_keep_the_parameters_dtype():
    from pruning_kit import quant_storage, structure, weight_sharing

    model = _Bf16Compute(nnx.Rngs(0))

    def dtypes(m):
        return {str(a.dtype) for a in jax.tree.leaves(nnx.state(m, nnx.Param))}

    assert dtypes(quant_storage.dequantized_model(
        model, quant_storage.quantize_tree(model, 8))) == {"bfloat16"}
    assert dtypes(weight_sharing.shared_model(
        model, *weight_sharing.kmeans_codebooks(model, 4))) == {"bfloat16"}
    assert dtypes(structure.low_rank(model, {"fc1": 8})) == {"bfloat16"}
