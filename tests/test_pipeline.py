"""Tests of pruning_kit.pipeline on sklearn digits (fast)."""

import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruning_kit import codec, distill, models, pipeline, prune, train
from pruning_kit.quant_storage import dequantized_model, quantize_tree


@pytest.fixture(scope="module")
def pruned(digits):
    model = models.MLP(64, (32,), rngs=nnx.Rngs(0))
    train.fit(model, digits.x_train, digits.y_train, epochs=8, batch_size=32,
              learning_rate=3e-3, progress=False)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, prune.apply_masks(params, prune.magnitude_masks(params, 0.6)))
    return model


def _kernels(model):
    return [np.asarray(layer.kernel[...]) for layer in model.layers]


def test_kmeans_nonzero_keeps_zeros_and_counts(pruned):
    cbs, idx = pipeline.kmeans_nonzero(pruned, {"layers/0/kernel": 2, "layers/1/kernel": 3})
    shared = pipeline.shared_model(pruned, cbs, idx)
    for before, after, bits in zip(_kernels(pruned), _kernels(shared), (2, 3), strict=True):
        np.testing.assert_array_equal(before == 0, after == 0)
        assert len(np.unique(after[after != 0])) <= 2**bits
    assert int((np.asarray(idx["layers/0/kernel"]) == -1).sum()) == \
        int((_kernels(pruned)[0] == 0).sum())


def test_finetune_keeps_zeros_and_values(pruned, digits):
    cbs, idx = pipeline.kmeans_nonzero(pruned, 2)
    y = (digits.y_train, distill.teacher_logits(pruned, digits.x_train))
    new_cbs, shared = pipeline.finetune_shared(pruned, cbs, idx, digits.x_train, y,
                                               loss_fn=distill.recovery_loss(), epochs=1,
                                               batch_size=32)
    assert not np.allclose(new_cbs["layers/0/kernel"], cbs["layers/0/kernel"])
    for before, after in zip(_kernels(pruned), _kernels(shared), strict=True):
        np.testing.assert_array_equal(before == 0, after == 0)
        assert len(np.unique(after[after != 0])) <= 4
    assert not np.array_equal(shared.layers[0].bias[...], pruned.layers[0].bias[...])


def test_deep_compression_file_reloads_identically(pruned, digits):
    c = pipeline.deep_compression(pruned, digits.x_train, digits.y_train, 3, epochs=1,
                                  batch_size=32)
    path = codec.save(Path(tempfile.mkdtemp()) / "m.pkc", c.model, quantized=c.quantized)
    encodings = {r["leaf"]: r["encoding"] for r in codec.inspect(path)["streams"]}
    assert encodings["layers/0/kernel"] == "sparse-codebook"
    assert encodings["layers/0/bias"].startswith("int")
    back = codec.load(path)
    np.testing.assert_array_equal(train.predict(back, digits.x_test),
                                  train.predict(c.model, digits.x_test))


def test_errors(pruned):
    with pytest.raises(ValueError, match="not kernels"):
        pipeline.kmeans_nonzero(pruned, {"layers/0/bias": 2})
    empty = models.MLP(4, (3,), rngs=nnx.Rngs(0))
    empty.layers[0].kernel[...] = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="no non-zero"):
        pipeline.kmeans_nonzero(empty, 2)
    cbs, idx = pipeline.kmeans_nonzero(pruned, 2)
    with pytest.raises(ValueError, match="same kernels"):
        pipeline.shared_model(pruned, cbs, {})
    with pytest.raises(ValueError, match="epochs"):
        pipeline.finetune_shared(pruned, cbs, idx, np.zeros((4, 64)), np.zeros(4, int),
                                 epochs=0)


def test_folded_cnn_int8_roundtrip():
    cnn = models.SmallCNN(widths=(4, 8), rngs=nnx.Rngs(0))
    cnn.eval()
    x = np.random.default_rng(0).random((8, 28, 28, 1), np.float32)
    folded = pipeline.fold_cnn_model(cnn)
    np.testing.assert_allclose(folded(jnp.asarray(x)), cnn(jnp.asarray(x)), atol=1e-5)
    qtree = quantize_tree(folded, 8)
    compressed = dequantized_model(folded, qtree)
    path = codec.save(Path(tempfile.mkdtemp()) / "c.pkc", compressed, quantized=qtree)
    back = codec.load(path)
    assert isinstance(back, pipeline.FoldedCNN)
    np.testing.assert_array_equal(train.predict(back, x), train.predict(compressed, x))
    with pytest.raises(ValueError):
        pipeline.fold_cnn_model(models.MLP(4, (3,), rngs=nnx.Rngs(0)))
