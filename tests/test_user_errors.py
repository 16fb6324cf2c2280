"""What a user gets wrong, and what the toolkit then does: a clear ``ValueError`` before
any work, the caller's model left as it came (mode, arrays), no file that cannot be read.

Models are written the way users write them (own layer names, BatchNorm, Dropout)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pruning_kit import (
    codec,
    deep_compression,
    prune,
    quant_storage,
    sparse_storage,
    structure,
    train,
    w8a8,
)


class EncHead(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, features: int = 8, classes: int = 3):
        self.enc = nnx.Linear(features, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.head = nnx.Linear(16, classes, rngs=rngs)

    def __call__(self, x):
        return self.head(self.drop(nnx.relu(self.bn(self.enc(x)))))


def _data(n=256, features=8, classes=3):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, features)).astype(np.float32),
            rng.integers(0, classes, n).astype(np.int32))


def _mode(m):
    return m.bn.use_running_average, m.drop.deterministic


def _host(state):
    def conv(a):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a = jax.random.key_data(a)
        return np.array(a, copy=True)
    return jax.tree.map(conv, state)


def _same(state, snap):
    return all(jax.tree.leaves(jax.tree.map(
        lambda a, b: np.array_equal(_host(a), b), state, snap)))


@pytest.mark.parametrize("case", ["width", "labels", "rate", "short_targets", "list"])
def test_fit_refuses_bad_input_before_training_and_keeps_the_mode(case):
    x, y = _data()
    model = EncHead(nnx.Rngs(0))
    model.eval()
    snap = _host(nnx.state(model))
    kw, match = {}, None
    if case == "width":
        x, match = x[:, :5], "cannot run on a training batch of shape"
    elif case == "labels":
        y, match = y + 5, "must lie in 0..2"
    elif case == "rate":
        kw, match = {"learning_rate": -1.0}, "learning_rate must be a positive"
    elif case == "short_targets":
        y = (y, np.zeros((10, 3), np.float32))
        kw = {"loss_fn": lambda m, a, b: (jnp.mean(m(a)), m(a))}
        match = r"y\[1\] .* has 10 rows"
    else:
        x, match = list(x), "must be an array"
    with pytest.raises(ValueError, match=match):
        train.fit(model, x, y, epochs=1, batch_size=64, progress=False, **kw)
    assert _mode(model) == (True, True)
    assert _same(nnx.state(model), snap)


def test_fit_takes_numpy_scalars_for_its_numbers_and_refuses_bools():
    x, y = _data()
    model = EncHead(nnx.Rngs(0))
    hist = train.fit(model, x, y, epochs=np.int64(1), batch_size=np.int32(64),
                     learning_rate=np.float32(3e-3), progress=False)
    assert len(hist["loss"]) == 1 and np.isfinite(hist["loss"][0])
    train.fit(model, x, y, epochs=1, batch_size=64, learning_rate=jnp.float32(1e-3),
              progress=False)                                   # a JAX scalar too
    for kw, match in [({"learning_rate": True}, "learning_rate must be"),
                      ({"learning_rate": np.True_}, "learning_rate must be"),
                      ({"learning_rate": np.array([1e-3])}, "learning_rate must be"),
                      ({"learning_rate": "1e-3"}, "learning_rate must be"),
                      ({"epochs": np.True_}, "epochs must be"),
                      ({"learning_rate": np.float32("nan")}, "learning_rate must be"),
                      ({"epochs": True}, "epochs must be"),
                      ({"batch_size": 64.0}, "batch_size must be")]:
        args = {"epochs": 1, "batch_size": 64, **kw}
        with pytest.raises(ValueError, match=match):
            train.fit(model, x, y, progress=False, **args)
    with pytest.raises(ValueError, match="lr must be"):
        train.check_training_args(x, y, epochs=1, lr=np.float32(-1), batch_size=8)
    train.check_training_args(x, y, epochs=np.int64(2), lr=np.float32(1e-3),
                              batch_size=np.int64(8))


def test_fit_gives_back_the_mode_when_the_loop_raises():
    x, y = _data()
    model = EncHead(nnx.Rngs(0))
    model.eval()

    def broken_augment(batch, rng):
        raise RuntimeError("augmentation failed")

    with pytest.raises(RuntimeError, match="augmentation failed"):
        train.fit(model, x, y, epochs=1, batch_size=64, progress=False, augment=broken_augment)
    assert _mode(model) == (True, True)
    assert np.isfinite(train.predict(model, x)).all()


def test_a_diverging_fit_leaves_the_last_finite_weights():
    x, y = _data()
    model = EncHead(nnx.Rngs(0))
    train.fit(model, x, y, epochs=1, batch_size=64, progress=False, validation=(x, y))
    snap = _host(nnx.state(model, nnx.Param))
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(FloatingPointError, match="keeps the weights it had before fit"):
        train.fit(model, bad, y, epochs=1, batch_size=64, progress=False)
    assert _same(nnx.state(model, nnx.Param), snap)


def test_fit_warns_that_adam_underflows_in_float16():
    x, y = _data()
    model = nnx.Linear(8, 3, rngs=nnx.Rngs(0), param_dtype=jnp.float16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            train.fit(model, x.astype(np.float16), y, epochs=1, batch_size=64, progress=False)
        except FloatingPointError:
            pass
    assert any("float16" in str(w.message) for w in caught)


def test_a_dequantized_copy_shares_nothing_with_the_model():
    x, y = _data()
    model = EncHead(nnx.Rngs(0))
    model.eval()
    snap = _host(nnx.state(model))
    copy = quant_storage.dequantized_model(model, quant_storage.quantize_tree(model, 4))
    assert copy.bn.mean is not model.bn.mean
    train.fit(copy, x, y, epochs=1, batch_size=64, progress=False)
    assert _same(nnx.state(model), snap) and _mode(model) == (True, True)


def test_w8a8_refuses_nan_calibration_and_nan_weights():
    x, _ = _data()
    model = nnx.Sequential(nnx.Linear(8, 16, rngs=nnx.Rngs(0)), nnx.relu,
                           nnx.Linear(16, 3, rngs=nnx.Rngs(1)))
    with pytest.raises(ValueError, match="NaN/inf"):
        w8a8.quantize_model(model, np.where(x > 2, np.inf, x))
    model.layers[0].kernel[...] = model.layers[0].kernel[...].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"layers/0/kernel.*NaN/inf"):
        w8a8.quantize_model(model, x)


def test_bfloat16_sparse_files_round_trip(tmp_path):
    w = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.bfloat16)
    w = w * (jnp.abs(w) > 0.5)
    params = {"dense": {"kernel": w, "bias": jnp.ones(4, jnp.bfloat16)}}
    back = sparse_storage.load_sparse(sparse_storage.save_sparse(tmp_path / "b.npz", params))
    assert back["dense"]["kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(back["dense"]["kernel"], np.float32),
                                  np.asarray(w, np.float32))


def test_saving_with_swapped_or_wrong_arguments_says_so(tmp_path):
    model = EncHead(nnx.Rngs(0))
    with pytest.raises(ValueError, match="Swap the two arguments"):
        codec.save(model, tmp_path / "m.pkc")
    with pytest.raises(ValueError, match="Pass the model itself"):
        codec.save(tmp_path / "m.pkc", nnx.state(model))
    with pytest.raises(ValueError, match="Swap the two arguments"):
        sparse_storage.save_sparse(model, tmp_path / "m.npz")
    assert not list(tmp_path.iterdir())


def test_prune_channels_says_when_no_group_can_shrink():
    class Normed(nnx.Module):                # LayerNorm reads every channel of `enc`
        def __init__(self, rngs):
            self.enc = nnx.Linear(8, 16, rngs=rngs)
            self.norm = nnx.LayerNorm(16, rngs=rngs)
            self.head = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(self.norm(self.enc(x)))

    x, _ = _data()
    with pytest.warns(UserWarning, match="no channel group of Normed can be pruned"):
        small, kept = structure.prune_channels(Normed(nnx.Rngs(0)), 0.5, example=x[:2])
    assert kept == {} and small.enc.kernel.shape == (8, 16)


def test_deep_compression_of_a_bias_free_model():
    class NoBias(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(8, 16, use_bias=False, rngs=rngs)
            self.b = nnx.Linear(16, 3, use_bias=False, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    x, y = _data()
    out = deep_compression.deep_compression(NoBias(nnx.Rngs(0)), x, y, 2, epochs=1,
                                            batch_size=64, progress=False)
    assert out.quantized is None
    assert len(np.unique(np.asarray(out.model.a.kernel[...]))) <= 4


class _Attention(nnx.Module):                 # Flax's own attention: its head size is fixed
    def __init__(self, rngs):
        self.emb = nnx.Embed(50, 16, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=16, qkv_features=16,
                                           decode=False, rngs=rngs)
        self.cls = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, tok):
        return self.cls(self.attn(self.emb(tok)).mean(axis=1))


def test_channel_removal_names_the_groups_that_cannot_shrink():
    model = _Attention(nnx.Rngs(0))
    tokens = np.random.default_rng(0).integers(0, 50, (4, 6)).astype(np.int32)
    scores = structure.channel_importance(model, "l1", example=tokens[:2])
    keep = structure.select_channels(scores, 0.5)
    with pytest.raises(structure.ChannelRemovalError) as info:
        structure.remove_channels(model, keep, example=tokens[:2])
    assert info.value.groups and set(info.value.groups) < set(keep)
    assert all(g in str(info.value) for g in info.value.groups)
    with pytest.warns(UserWarning, match="kept whole"):
        small, kept = structure.prune_channels(model, 0.5, example=tokens[:2])
    assert not set(kept) & set(info.value.groups) and kept
    assert structure.models_lib.num_params(small) < structure.models_lib.num_params(model)


def test_a_required_train_argument_and_missing_masks_are_named():
    class LinenStyle(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x, train):
            return self.fc(x)

    x, y = _data()
    with pytest.raises(ValueError, match="requires 'train'"):
        train.fit(LinenStyle(nnx.Rngs(0)), x, y, epochs=1, batch_size=64, progress=False)
    with pytest.raises(ValueError, match="keep_masked needs the masks"):
        prune.keep_masked(optax.adam(1e-3), None)
