"""Knowledge distillation: the KD loss, loss factories for train.fit, hints, recovery."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from pruning_kit import capture, distill, models, train


def _normal(seed, shape, scale=1.0):
    # numpy, not jax.random: an eager jax.random call compiles once per shape
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _logits(seed, shape=(8, 10), scale=3.0):
    return _normal(seed, shape, scale)


# --------------------------------------------------------------------------- kd_loss
@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_alpha_zero_is_cross_entropy(temperature):
    s, t = _logits(0), _logits(1)
    y = jnp.arange(8) % 10
    ce = optax.softmax_cross_entropy_with_integer_labels(s, y).mean()
    got = distill.kd_loss(s, t, y, temperature=temperature, alpha=0.0)
    np.testing.assert_allclose(got, ce, rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_equal_logits_at_alpha_one_give_zero(temperature):
    s = _logits(2)
    loss = distill.kd_loss(s, s, jnp.zeros(8, jnp.int32), temperature=temperature, alpha=1.0)
    assert abs(float(loss)) < 1e-6


def test_soft_term_gradient_is_exactly_t_times_probability_gap():
    s, t = _logits(3), _logits(4)
    y = jnp.zeros(8, jnp.int32)
    for temperature in (1.0, 4.0, 8.0):
        g = jax.grad(distill.kd_loss)(s, t, y, temperature=temperature, alpha=1.0)
        want = temperature * (jax.nn.softmax(s / temperature) - jax.nn.softmax(t / temperature))
        np.testing.assert_allclose(g, want / len(s), atol=1e-6)


def test_t_squared_keeps_soft_term_constant_in_t_for_small_logits():
    # For small logit gaps, KL(p_t^T || p_s^T) ~ Var(t - s) / (2 T^2): the T^2 factor
    # cancels it, so value and gradient are about the same at T = 4 and T = 8, while the
    # unscaled KL (and its gradient) drop by 4x.
    s, t = _logits(5, scale=0.05), _logits(6, scale=0.05)
    y = jnp.zeros(8, jnp.int32)

    def soft(temperature):
        return distill.kd_loss(s, t, y, temperature=temperature, alpha=1.0)

    def grad_norm(temperature):
        g = jax.grad(distill.kd_loss)(s, t, y, temperature=temperature, alpha=1.0)
        return float(jnp.linalg.norm(g))

    assert abs(float(soft(4.0)) / float(soft(8.0)) - 1) < 0.1
    assert abs(grad_norm(4.0) / grad_norm(8.0) - 1) < 0.1
    unscaled = (float(soft(4.0)) / 16) / (float(soft(8.0)) / 64)
    assert abs(unscaled - 4) < 0.4


@settings(max_examples=30, deadline=None)
@given(alpha=st.floats(0.0, 1.0), temperature=st.floats(0.1, 20.0), seed=st.integers(0, 99))
def test_kd_loss_is_at_least_the_weighted_cross_entropy(alpha, temperature, seed):
    s, t = _logits(seed, (4, 5)), _logits(seed + 1000, (4, 5))
    y = jnp.arange(4) % 5
    loss = float(distill.kd_loss(s, t, y, temperature=temperature, alpha=alpha))
    ce = float(optax.softmax_cross_entropy_with_integer_labels(s, y).mean())
    assert np.isfinite(loss)
    assert loss >= (1 - alpha) * ce - 1e-5  # the KL term is never negative


def test_traced_temperature_and_alpha_match_eager():
    s, t, y = _logits(7), _logits(8), jnp.arange(8) % 10
    jitted = jax.jit(lambda T, a: distill.kd_loss(s, t, y, temperature=T, alpha=a))
    for temperature, alpha in [(2.0, 0.3), (6.0, 0.9)]:
        np.testing.assert_allclose(jitted(temperature, alpha),
                                   distill.kd_loss(s, t, y, temperature=temperature,
                                                   alpha=alpha), rtol=1e-5)


def test_teacher_logits_get_no_gradient():
    s, t, y = _logits(9), _logits(10), jnp.arange(8) % 10
    g = jax.grad(distill.kd_loss, argnums=1)(s, t, y, temperature=3.0, alpha=0.7)
    assert not np.any(np.asarray(g))


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature must be in"),
    (dict(temperature=-2.0), "T > 0"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(alpha=1.5), r"alpha must be in \[0.0, 1.0\]"),
    (dict(alpha=-0.1), "alpha"),
    (dict(alpha="high"), "alpha must be a number"),
])
def test_bad_temperature_or_alpha(kwargs, match):
    s = _logits(0)
    y = jnp.zeros(8, jnp.int32)
    with pytest.raises(ValueError, match=match):
        distill.kd_loss(s, s, y, **kwargs)
    with pytest.raises(ValueError, match=match):
        distill.distillation_loss(**{"temperature": 4.0, "alpha": 0.5, **kwargs})


def test_bad_shapes_and_labels():
    s = _logits(0)
    y = jnp.zeros(8, jnp.int32)
    with pytest.raises(ValueError, match="differ in shape"):
        distill.kd_loss(s, _logits(1, (8, 5)), y)
    with pytest.raises(ValueError, match="differ in shape"):
        distill.kd_loss(s, _logits(1, (4, 10)), y)
    with pytest.raises(ValueError, match="one integer class per example"):
        distill.kd_loss(s, s, jax.nn.one_hot(y, 10))
    with pytest.raises(ValueError, match="integer class indices"):
        distill.kd_loss(s, s, y.astype(jnp.float32))
    with pytest.raises(ValueError, match="differ in shape"):  # checked under jit too
        jax.jit(distill.kd_loss)(s, _logits(1, (8, 5)), y)
    with pytest.raises(ValueError, match=r"y = \(labels, teacher_logits\)"):
        distill.distillation_loss()(models.MLP(64, (16,), rngs=nnx.Rngs(0)),
                                    jnp.zeros((8, 8, 8, 1)), y)
    with pytest.raises(ValueError, match="beta"):
        distill.feature_distillation_loss(beta=-1.0)
    with pytest.raises(ValueError, match="positive integer"):
        distill.Adapter(0, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="student must be a Flax NNX module"):
        distill.StudentWithAdapter("mlp", distill.Adapter(8, 8, rngs=nnx.Rngs(0)))
    # any model is a valid student now (layers by path); features() only if it has one
    wrapper = distill.StudentWithAdapter(models.MLP(64, (16,), rngs=nnx.Rngs(0)),
                                         distill.Adapter(8, 8, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"no .features\(x\); read its layers by submodule"):
        wrapper.features(jnp.zeros((2, 64)))


# --------------------------------------------------------------------------- with train.fit
def test_distillation_trains_a_student(digits, trained_mlp):
    assert distill.distillation_loss(temperature=4.0, alpha=0.7) is \
        distill.distillation_loss(temperature=4.0, alpha=0.7)  # one compiled step per (T, a)
    assert distill.recovery_loss(temperature=4.0, alpha=0.7) is \
        distill.distillation_loss(temperature=4.0, alpha=0.7)
    y_kd = (digits.y_train, distill.teacher_logits(trained_mlp, digits.x_train))
    student = models.MLP(64, (16,), rngs=nnx.Rngs(1))
    hist = train.fit(student, digits.x_train, y_kd, epochs=15, batch_size=32,
                     learning_rate=3e-3, progress=False,
                     loss_fn=distill.distillation_loss(temperature=4.0, alpha=0.7))
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert train.evaluate(student, digits.x_test, digits.y_test) > 0.85  # chance is 0.1


def test_online_distillation_matches_precomputed_and_leaves_teacher_alone(digits, trained_mlp):
    before = jax.tree.map(np.array, nnx.state(trained_mlp))
    x, y = digits.x_train[:64], digits.y_train[:64]
    student = models.MLP(64, (16,), rngs=nnx.Rngs(2))
    online = distill.online_distillation_loss(trained_mlp, temperature=3.0, alpha=0.5)
    pre = distill.distillation_loss(temperature=3.0, alpha=0.5)
    l_online, _ = online(student, jnp.asarray(x), jnp.asarray(y))
    l_pre, _ = pre(student, jnp.asarray(x), (y, distill.teacher_logits(trained_mlp, x)))
    np.testing.assert_allclose(l_online, l_pre, rtol=1e-5)

    # the teacher's parameters get no gradient through the KD loss
    xb = jnp.asarray(x)
    grads = nnx.grad(lambda t: distill.kd_loss(student(xb), t(xb), jnp.asarray(y)))(trained_mlp)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))

    hist = train.fit(student, digits.x_train, digits.y_train, epochs=3, batch_size=64,
                     learning_rate=3e-3, progress=False, loss_fn=online)
    assert hist["loss"][-1] < hist["loss"][0]
    after = nnx.state(trained_mlp)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, after))


# --------------------------------------------------------------------------- hints
def test_hint_loss_pools_the_larger_map_and_rejects_mismatches():
    # Every adapter and CNN in this file is 8 -> 8 / widths (4, 8): weight initialisation
    # compiles once per shape, so shared shapes keep the file fast.
    adapter = distill.Adapter(8, 8, rngs=nnx.Rngs(0))
    s = _normal(0, (2, 4, 4, 8))
    t = _normal(1, (2, 2, 2, 8))
    pooled = adapter(s).reshape(2, 2, 2, 2, 2, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(distill.hint_loss(s, t, adapter),
                               jnp.mean((pooled - t) ** 2), rtol=1e-5)
    t_big = _normal(2, (2, 8, 8, 8))  # teacher side pooled
    t_big_pooled = t_big.reshape(2, 4, 2, 4, 2, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(distill.hint_loss(s, t_big, adapter),
                               jnp.mean((adapter(s) - t_big_pooled) ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="cannot be average-pooled"):
        distill.hint_loss(s, jnp.zeros((2, 3, 3, 8)), adapter)
    with pytest.raises(ValueError, match=r"Adapter\(8, 7\)"):
        distill.hint_loss(s, jnp.zeros((2, 4, 4, 7)), adapter)
    with pytest.raises(ValueError, match="expects 8 channels"):
        distill.hint_loss(jnp.zeros((2, 4, 4, 6)), t, adapter)
    with pytest.raises(ValueError, match="rank or batch"):
        distill.hint_loss(s, jnp.zeros((3, 2, 2, 8)), adapter)


def test_feature_distillation_trains_student_and_adapter_with_fit(digits):
    # Same widths as the student (see above); a wider teacher only changes the adapter.
    teacher = models.SmallCNN(widths=(4, 8), image_size=8, rngs=nnx.Rngs(0))
    teacher.eval()
    student = models.SmallCNN(widths=(4, 8), image_size=8, rngs=nnx.Rngs(1))
    model = distill.StudentWithAdapter(student, distill.Adapter(8, 8, rngs=nnx.Rngs(2)))
    x = digits.x_train
    y = (digits.y_train, distill.teacher_logits(teacher, x),
         distill.teacher_features(teacher, x, "stage2"))
    loss_fn = distill.feature_distillation_loss(beta=1.0, temperature=2.0, alpha=0.5)

    xb, yb = jnp.asarray(x[:128]), tuple(jnp.asarray(a[:128]) for a in y)
    online = distill.feature_distillation_loss(teacher, beta=1.0, temperature=2.0, alpha=0.5)
    np.testing.assert_allclose(online(model, xb, digits.y_train[:128])[0],
                               loss_fn(model, xb, yb)[0], rtol=1e-5)

    def hint():
        model.eval()
        return float(distill.hint_loss(model.features(xb)["stage2"], yb[2], model.adapter))

    hint_before = hint()
    adapter_before = np.array(model.adapter.proj.kernel[...])
    hist = train.fit(model, x, y, epochs=4, batch_size=64, learning_rate=3e-3,
                     progress=False, loss_fn=loss_fn)
    assert hist["loss"][-1] < hist["loss"][0]
    assert not np.allclose(model.adapter.proj.kernel[...], adapter_before)
    assert hint() < hint_before
    assert train.evaluate(model.student, digits.x_test, digits.y_test) > 0.3  # chance 0.1

    with pytest.raises(ValueError, match="StudentWithAdapter"):
        loss_fn(student, xb, yb)
    with pytest.raises(ValueError, match="Unknown teacher layer 'stage9'"):
        distill.teacher_features(teacher, x[:4], "stage9")


# --------------------------------------------------------------------------- kd_wrap
def test_kd_wrap_distils_through_the_wrapped_forward(digits, trained_mlp):
    from pruning_kit import qat

    x, y = jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64])
    qat_loss = qat.qat_loss(2, None)
    t_logits = distill.teacher_logits(trained_mlp, digits.x_train[:64])
    # alpha = 0: exactly the wrapped loss; the logits are the fake-quantized model's
    plain, q_logits = qat_loss(trained_mlp, x, y)
    got, logits = distill.kd_wrap(qat_loss, alpha=0.0)(trained_mlp, x, (y, t_logits))
    np.testing.assert_allclose(got, plain, rtol=1e-6)
    np.testing.assert_array_equal(logits, q_logits)
    assert not np.allclose(q_logits, t_logits)  # 2-bit weights change the logits
    # alpha = 1: the KD term against the teacher, the same online and precomputed
    want = distill.kd_loss(q_logits, t_logits, y, temperature=2.0, alpha=1.0)
    pre = distill.kd_wrap(qat_loss, temperature=2.0, alpha=1.0)(trained_mlp, x, (y, t_logits))
    online = distill.kd_wrap(qat_loss, trained_mlp, temperature=2.0, alpha=1.0)(
        trained_mlp, x, y)
    np.testing.assert_allclose(pre[0], want, rtol=1e-6)
    np.testing.assert_allclose(online[0], want, rtol=1e-5)
    with pytest.raises(ValueError, match="loss_fn must be a function"):
        distill.kd_wrap("cross_entropy")
    with pytest.raises(ValueError, match="alpha"):
        distill.kd_wrap(qat_loss, alpha=2.0)
    with pytest.raises(ValueError, match=r"y = \(labels, teacher_logits\)"):
        distill.kd_wrap(qat_loss)(trained_mlp, x, y)


# --------------------------------------------------------------------------- any model, by path
class _UserCNN(nnx.Module):
    """Written the way a user writes one: own layer names, Dropout, no features()."""

    def __init__(self, widths=(4, 8), *, rngs):
        self.conv1 = nnx.Conv(1, widths[0], (3, 3), rngs=rngs)
        self.norm1 = nnx.BatchNorm(widths[0], rngs=rngs)
        self.conv2 = nnx.Conv(widths[0], widths[1], (3, 3), strides=2, rngs=rngs)
        self.norm2 = nnx.BatchNorm(widths[1], rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.classifier = nnx.Linear(widths[1], 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm1(self.conv1(x)))
        x = nnx.relu(self.norm2(self.conv2(x)))
        return self.classifier(self.drop(x.mean(axis=(1, 2))))


def _user_sequential(seed=0):
    rngs = nnx.Rngs(seed)
    return nnx.Sequential(nnx.Conv(1, 4, (3, 3), rngs=rngs), nnx.BatchNorm(4, rngs=rngs),
                          nnx.relu, lambda x: x.mean(axis=(1, 2)), nnx.Linear(4, 10, rngs=rngs))


def _images(n=6, seed=0):
    return _normal(seed, (n, 8, 8, 1))


def test_capture_returns_a_user_models_layer_outputs():
    model = _UserCNN(rngs=nnx.Rngs(0))
    model.eval()
    x = _images()
    assert capture.layer_paths(model) == ["conv1", "norm1", "conv2", "norm2", "drop",
                                          "classifier"]
    out, acts = capture.capture(model, x, ["conv2", "norm1"])
    h1 = model.norm1(model.conv1(x))
    np.testing.assert_allclose(acts["norm1"], h1, rtol=1e-6)
    np.testing.assert_allclose(acts["conv2"], model.conv2(nnx.relu(h1)), rtol=1e-6)
    np.testing.assert_allclose(out, model(x), rtol=1e-6)
    assert capture.shapes(model, x)["conv2"] == (6, 4, 4, 8)

    seq = _user_sequential()
    seq.eval()
    assert capture.layer_paths(seq) == ["layers/0", "layers/1", "layers/4"]
    assert list(capture.shapes(seq, x)) == ["layers/0", "layers/1", "layers/4"]
    out, acts = capture.capture(seq, x, "layers/1")
    np.testing.assert_allclose(acts["layers/1"], seq.layers[1](seq.layers[0](x)), rtol=1e-6)
    np.testing.assert_allclose(out, seq(x), rtol=1e-6)


def test_capture_under_jit_and_grad_of_traced_params():
    model = _UserCNN(rngs=nnx.Rngs(0))
    model.eval()
    x = _images()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def hint(params):
        m = nnx.merge(graphdef, params, rest)
        return jnp.sum(capture.capture(m, x, "conv2")[1]["conv2"] ** 2)

    def by_hand(params):
        m = nnx.merge(graphdef, params, rest)
        return jnp.sum(m.conv2(nnx.relu(m.norm1(m.conv1(x)))) ** 2)

    np.testing.assert_allclose(jax.jit(hint)(params), by_hand(params), rtol=1e-5)
    got, want = jax.jit(jax.grad(hint))(params), jax.grad(by_hand)(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, want)
    assert np.any(np.asarray(got["conv1"]["kernel"][...]))       # flows through conv1
    assert not np.any(np.asarray(got["classifier"]["kernel"][...]))  # after the layer
    # a model closed over by jax.jit works too
    jitted = jax.jit(lambda x: capture.capture(model, x, ["norm2"])[1]["norm2"])
    np.testing.assert_allclose(jitted(x), capture.capture(model, x, "norm2")[1]["norm2"],
                               rtol=1e-5, atol=1e-6)     # XLA fuses differently under jit


def test_capture_leaves_the_model_and_its_mode_as_they_came():
    model = _UserCNN(rngs=nnx.Rngs(0))
    x = _images()
    model.eval()
    before = jax.tree.map(train.host_array, nnx.state(model))
    capture.capture(model, x, ["conv2", "norm2"])
    capture.shapes(model, x)
    after = jax.tree.map(train.host_array, nnx.state(model))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    assert type(model.conv2) is nnx.Conv and type(model.norm2) is nnx.BatchNorm
    assert model.norm1.use_running_average and model.drop.deterministic

    # train mode: the same effect on the model as model(x), no more; still in train mode
    model.train()
    twin = nnx.clone(model)
    out, _ = capture.capture(model, x, ["conv1", "norm1", "drop"])
    np.testing.assert_allclose(out, twin(x), rtol=1e-6)            # same Dropout mask
    jax.tree.map(np.testing.assert_array_equal, nnx.state(twin, nnx.BatchStat),
                 nnx.state(model, nnx.BatchStat))
    assert not np.allclose(model.norm1.mean[...], before["norm1"]["mean"][...])
    assert not model.norm1.use_running_average and not model.drop.deterministic
    stats = jax.tree.map(train.host_array, nnx.state(model))
    capture.shapes(model, x)                                       # abstract: no update
    after = jax.tree.map(train.host_array, nnx.state(model))
    jax.tree.map(np.testing.assert_array_equal, stats, after)


def test_capture_bad_paths_say_what_to_pick():
    model = _UserCNN(rngs=nnx.Rngs(0))
    x = _images(2)
    with pytest.raises(ValueError, match=r"no submodule at path 'conv3'.*'conv1', 'norm1'"):
        capture.capture(model, x, "conv3")
    with pytest.raises(ValueError, match="not methods"):
        capture.capture(model, x, "relu")
    with pytest.raises(ValueError, match="list of them"):
        capture.capture(model, x, [1])
    with pytest.raises(ValueError, match=r"container.*'layers/0'"):
        capture.capture(_user_sequential(), x, "layers")
    with pytest.raises(ValueError, match="Flax NNX module"):
        capture.capture(lambda x: x, x, "conv1")

    class Twice(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 4, rngs=rngs)
            self.unused = nnx.Linear(4, 4, rngs=rngs)

        def __call__(self, x):
            return self.fc(self.fc(x))

    twice = Twice(nnx.Rngs(0))
    with pytest.raises(ValueError, match="called it 2 times"):
        capture.capture(twice, jnp.ones((1, 4)), "fc")
    with pytest.raises(ValueError, match="never called it"):
        capture.capture(twice, jnp.ones((1, 4)), "unused")
    assert capture.shapes(twice, jnp.ones((1, 4))) == {}


def test_teacher_features_by_path_keeps_the_teachers_mode():
    teacher = _UserCNN(rngs=nnx.Rngs(0))                   # left in train mode
    x = np.asarray(_images(5))
    feats = distill.teacher_features(teacher, x, "conv2", batch_size=2)
    assert feats.shape == (5, 4, 4, 8)
    assert not teacher.norm1.use_running_average and not teacher.drop.deterministic
    twin = nnx.clone(teacher)
    twin.eval()
    np.testing.assert_allclose(feats, capture.capture(twin, x, "conv2")[1]["conv2"],
                               rtol=1e-5, atol=1e-6)
    distill.teacher_logits(teacher, x)
    distill.online_distillation_loss(teacher)
    distill.feature_distillation_loss(teacher, student_layer="conv2", teacher_layer="conv2")
    assert not teacher.norm1.use_running_average and not teacher.drop.deterministic
    with pytest.raises(ValueError, match=r"Unknown teacher layer 'stage2'.*'conv1', 'norm1'"):
        distill.teacher_features(teacher, x, "stage2")
    cnn = models.SmallCNN(widths=(4, 8), image_size=8, rngs=nnx.Rngs(0))  # features() keys
    with pytest.raises(ValueError, match=r"neither a key of features\(x\) \['stage1'"):
        distill.teacher_features(cnn, x, "conv9")


def _user_mlp(hidden, seed):
    rngs = nnx.Rngs(seed)
    return nnx.Sequential(lambda x: x.reshape((x.shape[0], -1)), nnx.Linear(64, hidden, rngs=rngs),
                          nnx.BatchNorm(hidden, rngs=rngs), nnx.relu,
                          nnx.Dropout(0.1, rngs=rngs), nnx.Linear(hidden, 10, rngs=rngs))


def test_feature_distillation_by_layer_paths_with_fit(digits):
    # nnx.Sequential MLPs (they compile fastest); "layers/2" is the BatchNorm of each
    teacher = _user_mlp(16, 0)
    model = distill.StudentWithAdapter(_user_mlp(8, 1), distill.Adapter(8, 16, rngs=nnx.Rngs(2)))
    x, labels = digits.x_train[:256], digits.y_train[:256]
    y = (labels, distill.teacher_logits(teacher, x),
         distill.teacher_features(teacher, x, "layers/2"))
    kw = dict(student_layer="layers/2", temperature=2.0, alpha=0.5)
    pre = distill.feature_distillation_loss(beta=1.0, **kw)
    online = distill.feature_distillation_loss(teacher, teacher_layer="layers/2", beta=1.0, **kw)
    no_hint = distill.feature_distillation_loss(teacher, teacher_layer="layers/2", beta=0.0,
                                                **kw)

    @nnx.jit
    def losses_and_grads(model, xb, yb):
        grads = [nnx.grad(lambda m, f=f: f(m, xb, yb[0])[0])(model).student.layers[1].kernel[...]
                 for f in (online, no_hint)]
        return online(model, xb, yb[0])[0], pre(model, xb, yb)[0], grads

    model.eval()
    l_online, l_pre, grads = losses_and_grads(model, jnp.asarray(x[:64]),
                                              tuple(jnp.asarray(a[:64]) for a in y))
    np.testing.assert_allclose(l_online, l_pre, rtol=1e-5)
    assert not np.allclose(grads[0], grads[1])  # the hint reaches the student's first layer
    model.train()
    hist = train.fit(model, x, y, epochs=1, batch_size=64, progress=False, loss_fn=pre)
    assert np.isfinite(hist["loss"]).all()
    assert type(model.student.layers[2]) is nnx.BatchNorm
    assert not model.student.layers[4].deterministic          # fit left it in train mode
    with pytest.raises(ValueError, match="Unknown student layer 'stage2'"):
        distill.feature_distillation_loss(student_layer="stage2")(model, x[:4], y)
