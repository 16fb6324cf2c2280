"""Structural optimization: removal equals masking, save/load, low rank, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruning_kit import models, structure, train


def _randomize_bn(model: models.SmallCNN, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    rng = np.random.default_rng(seed)
    for name in ("bn1", "bn2", "res_bn1", "res_bn2"):
        bn = getattr(model, name)
        n = bn.mean[...].shape[0]
        bn.mean[...] = jnp.asarray(rng.normal(0, 0.5, n), jnp.float32)
        bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)
        bn.scale[...] = jnp.asarray(rng.normal(1, 0.3, n), jnp.float32)
        bn.bias[...] = jnp.asarray(rng.normal(0, 0.3, n), jnp.float32)


@pytest.fixture
def cnn() -> models.SmallCNN:
    model = models.small_cnn((8, 16), image_size=8, seed=1)
    _randomize_bn(model)
    model.eval()
    return model


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale"])
def test_removed_cnn_equals_masked_original(cnn, images, criterion):
    keep = structure.select_channels(structure.channel_importance(cnn, criterion),
                                     {"stage1": 0.5, "stage2": 0.75, "res_inner": 3})
    small = structure.remove_channels(cnn, keep)
    masked = structure.mask_channels(cnn, keep)
    assert small.config["widths"] == [4, 12, 3]
    assert models.num_params(small) < models.num_params(cnn)
    np.testing.assert_allclose(small(images), masked(images), rtol=1e-5, atol=1e-5)
    # the kept channels carry their own values: the stage-2 activations match channel by channel
    feats_small = small.features(images)["residual"]
    feats_masked = masked.features(images)["residual"]
    np.testing.assert_allclose(feats_small, feats_masked[..., keep["stage2"]], atol=1e-5)


def test_removing_nothing_changes_nothing(cnn, images):
    same = structure.remove_channels(cnn, {})
    np.testing.assert_allclose(same(images), cnn(images), atol=1e-6)


def test_removed_mlp_equals_masked_and_survives_save_load(tmp_path):
    mlp = models.MLP(64, (32, 16), rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).random((8, 64), dtype=np.float32)
    keep = structure.select_channels(structure.channel_importance(mlp, "l2"),
                                     {"hidden/0": 10, "hidden/1": 0.5})
    small = structure.remove_channels(mlp, keep)
    assert small.config["hidden"] == [10, 8]
    np.testing.assert_allclose(small(x), structure.mask_channels(mlp, keep)(x), atol=1e-5)
    path = train.save_model(small, tmp_path / "small.npz")
    reloaded = train.load_model(path)
    assert reloaded.config["hidden"] == [10, 8]
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(small(x)))


def test_cnn_save_load_round_trip_is_identical(cnn, images, tmp_path):
    small, _ = structure.prune_channels(cnn, 0.5, criterion="l1")
    reloaded = train.load_model(train.save_model(small, tmp_path / "cnn.npz"))
    reloaded.eval()
    np.testing.assert_array_equal(np.asarray(reloaded(images)), np.asarray(small(images)))


def test_original_model_is_untouched(cnn, images):
    before = np.asarray(cnn(images))
    structure.remove_channels(cnn, {"stage2": np.arange(4)})
    structure.mask_channels(cnn, {"stage2": np.arange(4)})
    np.testing.assert_array_equal(np.asarray(cnn(images)), before)


def test_training_the_smaller_model_leaves_the_original_usable(digits):
    mlp = models.MLP(64, (16,), rngs=nnx.Rngs(0))
    before = np.asarray(mlp(digits.x_test[:4]))
    small = structure.remove_channels(mlp, {"hidden/0": np.arange(8)})
    train.fit(small, digits.x_train, digits.y_train, epochs=1, batch_size=64, progress=False)
    np.testing.assert_array_equal(np.asarray(mlp(digits.x_test[:4])), before)


def test_taylor_importance_ranks_a_dead_unit_last(digits, trained_mlp):
    mlp = nnx.clone(trained_mlp)                     # changed below: the session's copy stays
    mlp.layers[0].kernel[...] = mlp.layers[0].kernel[...].at[:, 3].set(0.0)
    mlp.layers[0].bias[...] = mlp.layers[0].bias[...].at[3].set(0.0)
    scores = structure.channel_importance(mlp, "taylor", x=digits.x_train[:512],
                                          y=digits.y_train[:512])["hidden/0"]
    assert scores.shape == (32,) and scores[3] == 0.0 and scores.max() > 0
    assert np.asarray(trained_mlp.layers[0].kernel[...])[:, 3].any()   # the session's is intact


def test_select_channels_rounds_and_breaks_ties_by_index():
    kept = structure.select_channels({"g": np.ones(10)}, 0.5)
    np.testing.assert_array_equal(kept["g"], [0, 1, 2, 3, 4])
    assert len(structure.select_channels({"g": np.arange(32.0)}, 0.4, round_to=8)["g"]) == 16
    assert len(structure.select_channels({"g": np.arange(32.0)}, 0.01, round_to=8)["g"]) == 8


def test_low_rank_full_rank_is_exact_and_truncation_is_optimal():
    mlp = models.MLP(64, (32,), rngs=nnx.Rngs(0))
    x = np.random.default_rng(2).random((8, 64), dtype=np.float32)
    full = structure.low_rank(mlp, {0: 32})
    np.testing.assert_allclose(full(x), mlp(x), atol=1e-4)
    w = mlp.layers[0].kernel[...]
    s = np.linalg.svd(np.asarray(w), compute_uv=False)
    u, v = structure.svd_factors(w, 5)
    err = float(jnp.linalg.norm(w - u @ v))
    assert err == pytest.approx(float(np.sqrt((s[5:] ** 2).sum())), rel=1e-3)
    assert structure.low_rank_params(784, 300, None) == 235500
    assert structure.low_rank_params(784, 300, 216) < 235500 < structure.low_rank_params(
        784, 300, 217)


def test_low_rank_model_saves_and_reloads(tmp_path):
    small = structure.low_rank(models.MLP(64, (32, 16), rngs=nnx.Rngs(0)), [8, None, None])
    x = np.ones((2, 64), np.float32)
    again = train.load_model(train.save_model(small, tmp_path / "lr.npz"))
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(small(x)))


@pytest.mark.parametrize("keep, message", [
    ({"stage1": np.array([], dtype=int)}, "at least one unit"),
    ({"nope": np.arange(2)}, "Unknown group"),
    ({"stage1": np.array([0, 8])}, r"distinct indices in \[0, 8\)"),
    ({"stage1": np.array([1, 1])}, "distinct"),
    ({"stage1": np.array([0.5])}, "integer indices"),
])
def test_remove_channels_rejects_bad_keep(cnn, keep, message):
    with pytest.raises(ValueError, match=message):
        structure.remove_channels(cnn, keep)


def test_bad_input_messages(cnn):
    scores = structure.channel_importance(cnn, "l1")
    with pytest.raises(ValueError, match="at least one unit"):
        structure.select_channels(scores, {"stage1": 0})
    with pytest.raises(ValueError, match="fraction"):
        structure.select_channels(scores, 1.5)
    with pytest.raises(ValueError, match="criterion"):
        structure.channel_importance(cnn, "l0")
    with pytest.raises(ValueError, match="needs data"):
        structure.channel_importance(cnn, "taylor")
    mlp = models.MLP(16, (8,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no BatchNorm"):
        structure.channel_importance(mlp, "bn_scale")
    with pytest.raises(ValueError, match="rank must be"):
        structure.low_rank(mlp, {0: 9})
    with pytest.raises(ValueError, match="does not exist"):
        structure.low_rank(mlp, {5: 2})
    with pytest.raises(ValueError, match="not a dense layer"):
        structure.low_rank(mlp, {"head": 2})
    with pytest.raises(ValueError, match="already low rank"):
        structure.low_rank(structure.low_rank(mlp, {0: 2}), {0: 1})
    # a low-rank MLP's rank axis is a group of its own; a lone layer has none (its
    # outputs are the model's outputs), and a model needs an example input to be traced
    assert list(structure.channel_groups(structure.low_rank(mlp, {0: 2}))) == [
        "rank/0", "hidden/0"]
    linear = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pass example="):
        structure.channel_groups(linear)
    assert structure.channel_groups(linear, np.zeros((2, 2), np.float32)) == {}
    assert jax.tree.leaves(nnx.state(cnn))   # untouched
