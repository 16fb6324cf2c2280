"""Models, the training loop, checkpoints and the committed baselines."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pruning_kit import checkpoint, data, measure, models, train, zoo


def test_model_sizes_and_shapes():
    assert models.num_params(models.lenet_300_100()) == 266_610
    cnn = models.small_cnn()
    assert models.num_params(cnn) < 100_000
    cnn.eval()
    assert cnn(jnp.zeros((3, 28, 28, 1))).shape == (3, 10)
    digits_cnn = models.small_cnn(image_size=8)
    digits_cnn.eval()
    assert digits_cnn(jnp.zeros((2, 8, 8, 1))).shape == (2, 10)
    assert models.num_params(models.student_mlp()) * 5 <= models.num_params(cnn) * 5
    assert 5 * models.num_params(models.student_cnn()) <= models.num_params(cnn)


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden=(300, 0)), "positive integers"),
    (dict(hidden=(300, -5)), "positive integers"),
    (dict(hidden=(30.5,)), "positive integers"),
    (dict(in_features=0), "in_features"),
])
def test_bad_mlp_widths(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.MLP(**kwargs, rngs=nnx.Rngs(0))


def test_bad_cnn_arguments():
    with pytest.raises(ValueError, match="two widths"):
        models.SmallCNN(widths=(8, 16, 32, 4), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible by 4"):
        models.SmallCNN(image_size=30, rngs=nnx.Rngs(0))
    cnn = models.small_cnn()
    with pytest.raises(ValueError, match="NHWC"):
        cnn(jnp.zeros((2, 1, 28, 28)))
    with pytest.raises(ValueError, match="in_features=64"):
        models.lenet_300_100()(jnp.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="Unknown model class"):
        models.build("ResNet50", {})
    with pytest.raises(ValueError, match="does not fit"):
        models.build("MLP", {"widths": [3]})


def test_fit_learns_digits_and_is_reproducible(digits):
    def run():
        model = models.MLP(64, (32,), rngs=nnx.Rngs(1))
        hist = train.fit(model, digits.x_train, digits.y_train, epochs=6, batch_size=32,
                         learning_rate=3e-3, seed=5, progress=False,
                         validation=(digits.x_test, digits.y_test))
        return model, hist
    m1, h1 = run()
    m2, h2 = run()
    assert h1["loss"][-1] < h1["loss"][0]
    assert h1["val_acc"][-1] > 0.85
    assert h1["loss"] == h2["loss"]
    for a, b in zip(jax.tree.leaves(nnx.state(m1)), jax.tree.leaves(nnx.state(m2)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_with_custom_loss_tuple_targets_and_optimizer(digits):
    """A loss handed in gets the extra aligned arrays; any optax optimizer works."""
    soft = np.eye(10, dtype=np.float32)[digits.y_train]

    def soft_loss(model, x, y):
        labels, targets = y
        logits = model(x)
        return optax.softmax_cross_entropy(logits, targets).mean(), logits

    model = models.MLP(64, (32,), rngs=nnx.Rngs(0))
    hist = train.fit(model, digits.x_train, (digits.y_train, soft), epochs=3, batch_size=64,
                     loss_fn=soft_loss, tx=optax.sgd(0.1, momentum=0.9), progress=False)
    assert hist["train_acc"][-1] > 0.8


def test_cnn_batchnorm_statistics_update(digits):
    model = models.small_cnn(image_size=8, widths=(4, 8))
    before = np.asarray(model.bn1.mean[...]).copy()
    train.fit(model, digits.x_train, digits.y_train, epochs=1, batch_size=64, progress=False)
    assert not np.allclose(before, model.bn1.mean[...])
    assert not model.bn1.use_running_average  # fit restores the mode it came in (train)


def test_fit_bad_input(digits):
    model = models.MLP(64, (8,), rngs=nnx.Rngs(0))
    x, y = digits.x_train, digits.y_train
    with pytest.raises(ValueError, match="batch_size"):
        train.fit(model, x, y, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="larger than the data set"):
        train.fit(model, x[:10], y[:10], batch_size=32, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train.fit(model, x, y, epochs=0, progress=False)
    with pytest.raises(ValueError, match="labels have"):
        train.fit(model, x, y[:-1], progress=False)
    with pytest.raises(FloatingPointError, match="diverged"):
        train.fit(model, x * np.nan, y, epochs=1, progress=False)


def test_save_load_round_trip_keeps_widths_and_outputs(tmp_path, digits):
    model = models.SmallCNN(widths=(3, 5), image_size=8, rngs=nnx.Rngs(2))
    train.fit(model, digits.x_train, digits.y_train, epochs=1, batch_size=64, progress=False)
    path = train.save_model(model, tmp_path / "cnn.npz", metadata={"note": "x"})
    back = train.load_model(path)
    assert back.config == model.config
    np.testing.assert_array_equal(train.predict(model, digits.x_test),
                                  train.predict(back, digits.x_test))
    assert train.read_checkpoint_header(path)["metadata"] == {"note": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["cnn.npz"]  # no temp files left


def test_truncated_or_missing_checkpoint(tmp_path):
    model = models.MLP(64, (8,), rngs=nnx.Rngs(0))
    path = train.save_model(model, tmp_path / "m.npz")
    raw = path.read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 3):
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="m.npz"):
            train.load_model(path)
    with pytest.raises(FileNotFoundError, match="Train the model first"):
        train.load_model(tmp_path / "none.npz")


def test_checkpoint_format_round_trip_and_refusals(tmp_path):
    path = checkpoint.write(tmp_path / "a.npz", {"layers/0/kernel": jnp.eye(2),
                                                  "rng": jax.random.key(3)},
                            {"kind": "demo", "note": [1, 2]})
    arrays, header = checkpoint.read(path, kind="demo")
    assert header == {"kind": "demo", "note": [1, 2], "format_version": 1}
    np.testing.assert_array_equal(arrays["layers/0/kernel"], np.eye(2))
    np.testing.assert_array_equal(arrays["rng"], jax.random.key_data(jax.random.key(3)))
    assert checkpoint.read_header(path) == header
    with np.load(path) as f:                                   # a plain .npz
        assert f.files == ["__header__", "layers/0/kernel", "rng"]
    with pytest.raises(ValueError, match="kind 'demo', expected 'other'"):
        checkpoint.read(path, kind="other")
    newer = checkpoint.write(tmp_path / "v2.npz", {}, {"format_version": 2})
    with pytest.raises(ValueError, match="format 2, this pruning_kit reads format 1"):
        checkpoint.read_header(newer)
    with pytest.raises(ValueError, match="header's name"):
        checkpoint.write(tmp_path / "b.npz", {"__header__": np.ones(1)}, {})
    with pytest.raises(ValueError, match="must be JSON"):
        checkpoint.write(tmp_path / "b.npz", {}, {"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "v2.npz"]  # nothing half
    with pytest.raises(FileNotFoundError, match="No widget file at .*none.npz. Make one."):
        checkpoint.read(tmp_path / "none.npz", what="widget file", how="Make one.")
    (tmp_path / "m.pkc").write_bytes(b"\x89PKC\r\n\x1a\n" + bytes(40))
    with pytest.raises(ValueError, match=r"codec\.load\(path\)"):
        train.read_checkpoint_header(tmp_path / "m.pkc")


def test_committed_checkpoint_saves_back_bit_identical(tmp_path):
    path = zoo.checkpoint_path("mlp_digits", 0)
    if not path.exists():
        pytest.skip(f"{path} not present")
    again = train.save_model(train.load_model(path), tmp_path / "again.npz",
                             metadata=train.read_checkpoint_header(path)["metadata"])
    with np.load(path) as a, np.load(again) as b:
        assert a.files == b.files
        for k in a.files:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_checkpoint_from_another_split_says_so(tmp_path, digits):
    model = zoo.BASELINES["mlp_digits"]["build"](0)
    path = train.save_model(model, tmp_path / "m.npz", metadata={"split": {"train": 1}})
    with pytest.warns(zoo.SplitMismatchWarning, match="validation images"):
        assert not zoo.check_split(path, digits)
    train.save_model(model, path, metadata={"split": digits.split.describe()})
    assert zoo.check_split(path, digits)


def test_cached_remakes_a_checkpoint_made_by_another_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_KIT_CHECKPOINTS", str(tmp_path))
    made = []

    def make():
        made.append(1)
        return models.MLP(4, (3,), rngs=nnx.Rngs(len(made)))

    zoo.cached("m", 0, make, metadata={"recipe": {"epochs": 3, "widths": (8, 16)}})
    zoo.cached("m", 0, make, metadata={"recipe": {"epochs": 3, "widths": [8, 16]}})
    assert len(made) == 1                                     # same recipe: loaded
    with pytest.warns(zoo.RecipeMismatchWarning, match="epochs: 3 recorded, 5 asked for"):
        zoo.cached("m", 0, make, metadata={"recipe": {"epochs": 5, "widths": (8, 16)}})
    assert len(made) == 2                                     # another recipe: remade
    header = train.read_checkpoint_header(zoo.checkpoint_path("m", 0))["metadata"]
    assert header["recipe"] == {"epochs": 5, "widths": [8, 16]}
    info = measure.machine_info()                            # which CPU made this model
    assert header["trained_on"] == zoo.trained_on()
    assert info["cpu"] in header["trained_on"] and info["isa"] in header["trained_on"]
    zoo.cached("m", 0, make, metadata={"recipe": {"epochs": 5}})   # a subset is enough
    with pytest.warns(zoo.RecipeMismatchWarning, match="'a' recorded, 'b' asked for"):
        zoo.check_recipe(train.save_model(made and make(), tmp_path / "s.npz",
                                          metadata={"recipe": "a"}), "b")
    assert len(made) == 3


def test_unknown_baseline():
    with pytest.raises(ValueError, match="Unknown baseline"):
        zoo.baseline("vgg16")


# Committed checkpoints are only trusted because this test re-measures them.
TARGETS = {"mlp_fashion": 0.890, "cnn_fashion": 0.910, "mlp_digits": 0.970}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_committed_baselines_reach_their_accuracy(name):
    paths = [zoo.checkpoint_path(name, s) for s in range(3)]
    if not all(p.exists() for p in paths):
        pytest.skip(f"{name} checkpoints not present; run "
                    f"python -m pruning_kit.zoo baselines {name}")
    ds = data.load(zoo.BASELINES[name]["dataset"])
    accs = []
    for p in paths:
        model = train.load_model(p)
        acc = train.evaluate(model, ds.x_test, ds.y_test)
        meta = train.read_checkpoint_header(p)["metadata"]
        assert acc == pytest.approx(meta["test_accuracy"], abs=1e-4), \
            "checkpoint differs from its record"
        assert meta["split"] == ds.split.describe(), (
            f"{p.name} was trained on another split; retrain: python -m pruning_kit.zoo baselines "
            f"{name} --seed 0 1 2")
        assert zoo.check_split(p, ds)
        accs.append(acc)
    assert np.mean(accs) >= TARGETS[name]


def test_fit_warns_when_the_model_takes_a_train_argument_it_cannot_set(digits):
    class LinenStyle(nnx.Module):           # mode by argument, not by model.train()
        def __init__(self):
            self.fc = nnx.Linear(64, 10, rngs=nnx.Rngs(0))
            self.drop = nnx.Dropout(0.5, rngs=nnx.Rngs(1))

        def __call__(self, x, train: bool = False):
            return self.drop(self.fc(x), deterministic=not train)

    x, y = digits.x_train[:64].reshape(64, -1), digits.y_train[:64]
    with pytest.warns(UserWarning, match=r"LinenStyle.__call__ takes 'train'.*keeps its default"
                      ) as rec:
        train.fit(LinenStyle(), x, y, epochs=1, batch_size=32, progress=False)
    assert rec[0].filename == __file__
    class NNXStyle(LinenStyle):              # None: the layers decide from the mode
        def __call__(self, x, deterministic: bool | None = None):
            return self.drop(self.fc(x), deterministic=deterministic)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.fit(models.MLP(64, (8,), rngs=nnx.Rngs(0)), x, y, epochs=1, batch_size=32,
                  progress=False)
        train.fit(NNXStyle(), x, y, epochs=1, batch_size=32, progress=False)
