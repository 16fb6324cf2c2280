"""Knowledge distillation: the KD loss, loss factories for train.fit, hints, recovery."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from pruning_kit import distill, models, train


def _normal(seed, shape, scale=1.0):
    # numpy, not jax.random: an eager jax.random call compiles once per shape
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _logits(seed, shape=(8, 10), scale=3.0):
    return _normal(seed, shape, scale)


@pytest.fixture(scope="module")
def mlp_teacher(digits):
    teacher = models.MLP(64, (64,), rngs=nnx.Rngs(0))
    train.fit(teacher, digits.x_train, digits.y_train, epochs=10, batch_size=32,
              learning_rate=3e-3, progress=False)
    assert train.evaluate(teacher, digits.x_test, digits.y_test) > 0.9
    return teacher


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
    with pytest.raises(ValueError, match="no .features"):
        distill.StudentWithAdapter(models.MLP(64, (16,), rngs=nnx.Rngs(0)),
                                   distill.Adapter(8, 8, rngs=nnx.Rngs(0)))


# --------------------------------------------------------------------------- with train.fit
def test_distillation_trains_a_student(digits, mlp_teacher):
    assert distill.distillation_loss(temperature=4.0, alpha=0.7) is \
        distill.distillation_loss(temperature=4.0, alpha=0.7)  # one compiled step per (T, a)
    assert distill.recovery_loss(temperature=4.0, alpha=0.7) is \
        distill.distillation_loss(temperature=4.0, alpha=0.7)
    y_kd = (digits.y_train, distill.teacher_logits(mlp_teacher, digits.x_train))
    student = models.MLP(64, (16,), rngs=nnx.Rngs(1))
    hist = train.fit(student, digits.x_train, y_kd, epochs=15, batch_size=32,
                     learning_rate=3e-3, progress=False,
                     loss_fn=distill.distillation_loss(temperature=4.0, alpha=0.7))
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert train.evaluate(student, digits.x_test, digits.y_test) > 0.85  # chance is 0.1


def test_online_distillation_matches_precomputed_and_leaves_teacher_alone(digits, mlp_teacher):
    before = jax.tree.map(np.array, nnx.state(mlp_teacher))
    x, y = digits.x_train[:64], digits.y_train[:64]
    student = models.MLP(64, (16,), rngs=nnx.Rngs(2))
    online = distill.online_distillation_loss(mlp_teacher, temperature=3.0, alpha=0.5)
    pre = distill.distillation_loss(temperature=3.0, alpha=0.5)
    l_online, _ = online(student, jnp.asarray(x), jnp.asarray(y))
    l_pre, _ = pre(student, jnp.asarray(x), (y, distill.teacher_logits(mlp_teacher, x)))
    np.testing.assert_allclose(l_online, l_pre, rtol=1e-5)

    # the teacher's parameters get no gradient through the KD loss
    xb = jnp.asarray(x)
    grads = nnx.grad(lambda t: distill.kd_loss(student(xb), t(xb), jnp.asarray(y)))(mlp_teacher)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))

    hist = train.fit(student, digits.x_train, digits.y_train, epochs=3, batch_size=64,
                     learning_rate=3e-3, progress=False, loss_fn=online)
    assert hist["loss"][-1] < hist["loss"][0]
    after = nnx.state(mlp_teacher)
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
def test_kd_wrap_distils_through_the_wrapped_forward(digits, mlp_teacher):
    from pruning_kit import qat

    x, y = jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64])
    qat_loss = qat.qat_mlp_loss(2, None)
    t_logits = distill.teacher_logits(mlp_teacher, digits.x_train[:64])
    # alpha = 0: exactly the wrapped loss; the logits are the fake-quantized model's
    plain, q_logits = qat_loss(mlp_teacher, x, y)
    got, logits = distill.kd_wrap(qat_loss, alpha=0.0)(mlp_teacher, x, (y, t_logits))
    np.testing.assert_allclose(got, plain, rtol=1e-6)
    np.testing.assert_array_equal(logits, q_logits)
    assert not np.allclose(q_logits, t_logits)  # 2-bit weights change the logits
    # alpha = 1: the KD term against the teacher, the same online and precomputed
    want = distill.kd_loss(q_logits, t_logits, y, temperature=2.0, alpha=1.0)
    pre = distill.kd_wrap(qat_loss, temperature=2.0, alpha=1.0)(mlp_teacher, x, (y, t_logits))
    online = distill.kd_wrap(qat_loss, mlp_teacher, temperature=2.0, alpha=1.0)(
        mlp_teacher, x, y)
    np.testing.assert_allclose(pre[0], want, rtol=1e-6)
    np.testing.assert_allclose(online[0], want, rtol=1e-5)
    with pytest.raises(ValueError, match="loss_fn must be a function"):
        distill.kd_wrap("cross_entropy")
    with pytest.raises(ValueError, match="alpha"):
        distill.kd_wrap(qat_loss, alpha=2.0)
    with pytest.raises(ValueError, match=r"y = \(labels, teacher_logits\)"):
        distill.kd_wrap(qat_loss)(mlp_teacher, x, y)
