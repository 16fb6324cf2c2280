"""Knowledge distillation: logit KD, FitNets-style hint losses, and KD as a recovery tool.

A *teacher* (a big trained model) supervises a *student* (a small one) with its softened
output distribution (Hinton et al., 2015)::

    loss = (1 - alpha) * CE(labels, student)
           + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The temperature ``T > 1`` flattens both distributions so that the teacher's small
probabilities for *wrong* classes ("this shirt looks a bit like a pullover", the dark
knowledge) carry signal. The gradient of the soft term with respect to a student logit is
``(softmax(student / T) - softmax(teacher / T)) / T``, which for large ``T`` is about
``(student - teacher) / (K * T^2)`` for ``K`` classes: it shrinks as ``1 / T^2``. The
``T^2`` factor undoes that, so the soft and hard terms keep their relative weight when
``T`` changes and ``alpha`` means the same thing at every temperature.

Everything here is a pure function or a loss factory for :func:`pruning_kit.train.fit`
(``loss_fn(model, x, y) -> (loss, logits)``); ``train`` never imports this module.

* :func:`kd_loss` -- the loss above on logits (optax cross-entropy and KL).
* :func:`distillation_loss` + :func:`teacher_logits` -- teacher logits computed once and
  passed as ``y = (labels, teacher_logits)``: the cheap, recommended way.
* :func:`online_distillation_loss` -- the teacher runs inside each step (for ``augment``).
* :func:`feature_distillation_loss` -- logit KD plus a FitNets hint: a student layer
  regresses a teacher layer through an :class:`Adapter` (:mod:`pruning_kit.hints`, whose
  :class:`Adapter`, :class:`StudentWithAdapter`, :func:`hint_loss` and
  :func:`teacher_features` are re-exported here). A layer is a key of the model's
  ``features(x)`` (the course's :class:`~pruning_kit.models.SmallCNN`: ``"stage2"``) or,
  for any model, a submodule path such as ``"blocks/0/conv2"``, read by
  :func:`pruning_kit.capture.capture`.
* :func:`recovery_loss` -- the dense model supervises its own pruned or quantized copy.
* :func:`kd_wrap` -- the same for a technique's own loss (e.g. a QAT loss whose logits
  come from the fake-quantized forward pass).

Introduced in ``notebooks/02_distillation.ipynb``.

Examples:
    >>> teacher = jnp.array([[4.0, 1.0, 0.0]])
    >>> labels = jnp.array([0])
    >>> round(float(kd_loss(teacher, teacher, labels, alpha=1.0)), 6)   # same logits: no KD loss
    0.0
    >>> [round(p, 3) for p in jax.nn.softmax(teacher[0] / 1.0).tolist()]   # T = 1: ~one-hot
    [0.936, 0.047, 0.017]
    >>> [round(p, 3) for p in jax.nn.softmax(teacher[0] / 4.0).tolist()]   # T = 4: runner-up
    [0.543, 0.257, 0.2]
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pruning_kit import program, validate
from pruning_kit import train as train_lib
from pruning_kit.hints import (
    Adapter,
    StudentWithAdapter,
    hint_loss,
    layer_forward,
    resolve_layer,
    teacher_features,
)

__all__ = [
    "Adapter", "StudentWithAdapter", "distillation_loss", "feature_distillation_loss",
    "hint_loss", "kd_loss", "kd_wrap", "online_distillation_loss", "recovery_loss",
    "teacher_features", "teacher_logits",
]


# --------------------------------------------------------------------------- validation
def _check_temperature_alpha(temperature: Any, alpha: Any) -> tuple[Any, Any]:
    """Both as floats when concrete (traced values pass unchanged: nothing to check)."""
    t = validate.number("temperature", temperature, 0.0, low_open=True,
                        hint="Use T > 0; T = 1 is the plain softmax, T = 2..8 is typical for KD.")
    a = validate.number("alpha", alpha, 0.0, 1.0,
                        hint="alpha is the weight of the soft (teacher) term: 0 = plain "
                             "cross-entropy, 1 = teacher only, 0.5..0.9 is typical.")
    return t, a


def _split_targets(y: Any, n: int, what: str) -> tuple:
    if not isinstance(y, (tuple, list)) or len(y) != n:
        got = f"a tuple of {len(y)}" if isinstance(y, (tuple, list)) else type(y).__name__
        want = ("(labels, teacher_logits)" if n == 2
                else "(labels, teacher_logits, teacher_features)")
        extra = ", teacher_features(teacher, x_train, layer)" if n == 3 else ""
        raise ValueError(f"{what} expects y = {want}, got {got}. Pass fit(model, x_train, "
                         f"(y_train, teacher_logits(teacher, x_train){extra}), ...), or give "
                         "the teacher module to run it inside each step.")
    return tuple(y)


# --------------------------------------------------------------------------- logit KD
def kd_loss(student_logits: jax.typing.ArrayLike, teacher_logits: jax.typing.ArrayLike,
            labels: jax.typing.ArrayLike, *, temperature: Any = 4.0, alpha: Any = 0.9
            ) -> jax.Array:
    """Hinton's distillation loss, mean over the batch.

    ``(1 - alpha) * CE(labels, student) + alpha * T^2 * KL(p_teacher^T || p_student^T)``
    with ``p^T = softmax(logits / T)``. The ``T^2`` keeps the soft term's gradient, which
    scales as ``1 / T^2``, comparable with the hard term's for every ``T`` (see the module
    docstring). The teacher's logits pass through ``jax.lax.stop_gradient``: the teacher
    never learns from this loss.

    Args:
        student_logits: ``(..., classes)``.
        teacher_logits: same shape as ``student_logits``.
        labels: integer classes, shape ``student_logits.shape[:-1]``.
        temperature: ``T > 0``; may be a traced value (then it is not checked).
        alpha: weight of the soft term in ``[0, 1]``; may be traced.

    Returns:
        The scalar loss.

    Raises:
        ValueError: ``T <= 0``, ``alpha`` outside ``[0, 1]``, logits of different shapes,
            or labels that are not integer classes of the batch's shape.

    Examples:
        >>> s, t = jnp.array([[2.0, 0.0, -1.0]]), jnp.array([[3.0, 1.0, -2.0]])
        >>> y = jnp.array([0])
        >>> ce = optax.softmax_cross_entropy_with_integer_labels(s, y).mean()
        >>> bool(jnp.isclose(kd_loss(s, t, y, alpha=0.0), ce))        # alpha = 0: plain CE
        True
    """
    temperature, alpha = _check_temperature_alpha(temperature, alpha)
    s = jnp.asarray(student_logits)
    t = jnp.asarray(teacher_logits)
    labels = jnp.asarray(labels)
    if s.shape != t.shape:
        raise ValueError(f"student logits {s.shape} and teacher logits {t.shape} differ in "
                         "shape; both must be (batch, classes) for the same batch and the "
                         "same classes (compute the teacher's logits on the same x).")
    if s.ndim < 1 or s.shape[-1] < 2:
        raise ValueError(f"logits must have shape (..., classes) with >= 2 classes, got "
                         f"{s.shape}.")
    if labels.shape != s.shape[:-1]:
        raise ValueError(f"labels have shape {labels.shape} but the logits {s.shape} need "
                         f"{s.shape[:-1]}: one integer class per example (not one-hot; "
                         "use labels.argmax(-1) for one-hot labels).")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}; "
                         "cast with labels.astype(int) (use argmax(-1) for one-hot).")
    if not jnp.issubdtype(s.dtype, jnp.floating):
        s, t = s.astype(jnp.float32), t.astype(jnp.float32)
    t = jax.lax.stop_gradient(t)
    hard = optax.softmax_cross_entropy_with_integer_labels(s, labels).mean()
    log_p_student = jax.nn.log_softmax(s / temperature, axis=-1)
    log_p_teacher = jax.nn.log_softmax(t / temperature, axis=-1)
    soft = optax.losses.kl_divergence_with_log_targets(log_p_student, log_p_teacher).mean()
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


# --------------------------------------------------------------------------- teachers
def teacher_logits(teacher: nnx.Module, x: np.ndarray, *, batch_size: int = 1000
                   ) -> np.ndarray:
    """The teacher's logits on ``x``, once, in eval mode: ``y = (labels, these)`` for fit.

    Same as :func:`pruning_kit.train.predict`, run on an eval-mode copy (the teacher keeps
    its mode): returns ``(len(x), classes)`` float32 logits aligned with ``x``.
    """
    if not isinstance(teacher, nnx.Module):
        raise ValueError(f"teacher must be a Flax NNX module, got {type(teacher).__name__}.")
    return train_lib.predict(program.eval_copy(teacher), x, batch_size=batch_size)


@functools.lru_cache(maxsize=64)
def _precomputed_kd(temperature: float, alpha: float):
    def loss_fn(model: nnx.Module, x: jax.Array, y: Any) -> tuple[jax.Array, jax.Array]:
        labels, t_logits = _split_targets(y, 2, "distillation_loss")
        logits = model(x)
        return kd_loss(logits, t_logits, labels, temperature=temperature, alpha=alpha), logits
    loss_fn.__doc__ = f"KD loss (T={temperature}, alpha={alpha}) on y = (labels, teacher logits)."
    return loss_fn


def distillation_loss(*, temperature: float = 4.0, alpha: float = 0.9) -> train_lib.LossFn:
    """A ``loss_fn`` for :func:`pruning_kit.train.fit` with precomputed teacher logits.

    ``fit`` slices every array of ``y = (labels, teacher_logits)`` with the batch, so the
    teacher runs once over the data (:func:`teacher_logits`) instead of once per step. Use
    :func:`online_distillation_loss` when ``fit`` augments the inputs (precomputed logits
    belong to the un-augmented images). ``fit`` compiles its step per loss function: the same
    ``(temperature, alpha)`` returns the same function and reuses the compiled step.

    Args:
        temperature: ``T > 0`` (a Python number: it is baked into the training step).
        alpha: weight of the teacher term in ``[0, 1]``.

    Returns:
        ``loss_fn(model, x, (labels, teacher_logits)) -> (loss, student_logits)``.

    Examples:
        The teacher runs once, before training; ``fit`` then calls the loss on each batch
        (``fit(student, x_train, y_kd, loss_fn=loss_fn)``; notebook 02 trains with it):

        >>> from pruning_kit import models
        >>> teacher = models.MLP(64, (32,), rngs=nnx.Rngs(0))
        >>> student = models.MLP(64, (8,), rngs=nnx.Rngs(1))
        >>> x, labels = np.ones((4, 64), np.float32), np.zeros(4, np.int32)
        >>> y_kd = (labels, teacher_logits(teacher, x))
        >>> loss_fn = distillation_loss(temperature=4.0, alpha=0.7)
        >>> loss, logits = loss_fn(student, x, y_kd)
        >>> logits.shape, loss_fn is distillation_loss(temperature=4.0, alpha=0.7)
        ((4, 10), True)
    """
    t, a = _check_temperature_alpha(temperature, alpha)
    return _precomputed_kd(t, a)


def _frozen(teacher: nnx.Module):
    """A copy of ``teacher`` in eval mode, to rebuild inside a step as constants."""
    if not isinstance(teacher, nnx.Module):
        raise ValueError(f"teacher must be a Flax NNX module, got {type(teacher).__name__}; "
                         "for precomputed logits use distillation_loss() instead.")
    graphdef, state = nnx.split(program.eval_copy(teacher))   # the caller's keeps its mode
    # Copy the arrays: later training of ``teacher`` (or buffer donation) cannot reach them.
    state = jax.tree.map(lambda a: jnp.array(a, copy=True), state)

    def rebuild() -> nnx.Module:
        return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))
    return rebuild


def online_distillation_loss(teacher: nnx.Module, *, temperature: float = 4.0,
                             alpha: float = 0.9) -> train_lib.LossFn:
    """A ``loss_fn`` for ``fit`` that runs the teacher inside every training step.

    The teacher is snapshotted now (eval mode, weights copied) and rebuilt inside the
    compiled step with its weights as constants under ``stop_gradient``: it gets no
    gradient, its BatchNorm statistics never move, and ``fit`` never updates it.

    Trade-off against :func:`distillation_loss`: each step pays a teacher forward pass
    (and the teacher's weights are compiled into the step, fine for small teachers), but
    the targets follow whatever ``fit``'s ``augment`` did to the batch. Without
    augmentation, precompute.

    Args:
        teacher: the trained teacher module (run in eval mode on a copy; the module
            itself keeps its mode).
        temperature: ``T > 0``.
        alpha: weight of the teacher term in ``[0, 1]``.

    Returns:
        ``loss_fn(model, x, y) -> (loss, student_logits)`` where ``y`` is the labels (or a
        tuple whose first item is the labels).
    """
    t, a = _check_temperature_alpha(temperature, alpha)
    rebuild = _frozen(teacher)

    def loss_fn(model: nnx.Module, x: jax.Array, y: Any) -> tuple[jax.Array, jax.Array]:
        labels = y[0] if isinstance(y, (tuple, list)) else y
        logits = model(x)
        return kd_loss(logits, rebuild()(x), labels, temperature=t, alpha=a), logits
    return loss_fn


def recovery_loss(teacher: nnx.Module | None = None, *, temperature: float = 4.0,
                  alpha: float = 0.9) -> train_lib.LossFn:
    """KD for recovering a compressed model: the dense model teaches its pruned/quantized copy.

    The compressed copy is fine-tuned with ``fit`` (with the technique's own optimizer
    wrapper, e.g. one that keeps pruned weights at zero, as ``tx``) while the *dense*
    original supplies soft targets: richer than the labels alone, so the copy recovers
    more of the accuracy that compression cost. This is :func:`distillation_loss`
    (``teacher=None``: ``y = (labels, teacher_logits(dense, x))``) or
    :func:`online_distillation_loss` (``teacher=dense``, e.g. with augmentation).

    Examples:
        >>> from pruning_kit import models
        >>> dense = models.MLP(64, (16,), rngs=nnx.Rngs(0))
        >>> loss_fn = recovery_loss(temperature=2.0, alpha=0.5)   # y = (labels, dense logits)
        >>> loss_fn is distillation_loss(temperature=2.0, alpha=0.5)
        True
        >>> online = recovery_loss(dense)                        # teacher inside each step
    """
    if teacher is None:
        return distillation_loss(temperature=temperature, alpha=alpha)
    return online_distillation_loss(teacher, temperature=temperature, alpha=alpha)


def kd_wrap(loss_fn: train_lib.LossFn, teacher: nnx.Module | None = None, *,
            temperature: float = 4.0, alpha: float = 0.9) -> train_lib.LossFn:
    """Distil into the logits of another ``loss_fn``: its loss is replaced by :func:`kd_loss`.

    A compression technique often trains through its own forward pass -- QAT's loss
    (:func:`pruning_kit.qat.qat_loss`) returns the logits of the *fake-quantized*
    model. ``kd_wrap`` keeps that forward pass and its logits, drops its cross-entropy,
    and puts the distillation loss against the teacher in its place, so the dense model
    supervises its compressed copy through the technique's own forward.

    Args:
        loss_fn: ``loss_fn(model, x, labels) -> (loss, logits)``; only the logits are used.
        teacher: ``None`` for precomputed targets, ``y = (labels, teacher_logits)``
            (:func:`teacher_logits`); or the teacher module, run inside each step as in
            :func:`online_distillation_loss` (then ``y`` is the labels).
        temperature: ``T > 0``.
        alpha: weight of the teacher term in ``[0, 1]``.

    Returns:
        ``loss_fn(model, x, y) -> (kd loss, logits of the wrapped loss_fn)``.

    Raises:
        ValueError: ``loss_fn`` not callable, bad ``temperature``/``alpha``.

    Examples:
        >>> from pruning_kit import models
        >>> model = models.MLP(4, (8,), 3, rngs=nnx.Rngs(0))
        >>> x, y = jnp.ones((5, 4)), jnp.zeros(5, jnp.int32)
        >>> loss_fn = kd_wrap(train_lib.cross_entropy_loss, alpha=0.0)   # alpha = 0: plain CE
        >>> bool(jnp.isclose(loss_fn(model, x, (y, jnp.zeros((5, 3))))[0],
        ...                  train_lib.cross_entropy_loss(model, x, y)[0]))
        True
    """
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function loss_fn(model, x, labels) -> (loss, "
                         f"logits), got {type(loss_fn).__name__}.")
    t, a = _check_temperature_alpha(temperature, alpha)
    rebuild = _frozen(teacher) if teacher is not None else None

    def wrapped(model: nnx.Module, x: jax.Array, y: Any) -> tuple[jax.Array, jax.Array]:
        if rebuild is None:
            labels, t_logits = _split_targets(y, 2, "kd_wrap")
        else:
            labels = y[0] if isinstance(y, (tuple, list)) else y
            t_logits = rebuild()(x)
        _, logits = loss_fn(model, x, labels)
        return kd_loss(logits, t_logits, labels, temperature=t, alpha=a), logits
    return wrapped


# --------------------------------------------------------------------------- hints
def feature_distillation_loss(teacher: nnx.Module | None = None, *,
                              student_layer: str = "stage2", teacher_layer: str = "stage2",
                              beta: float = 1.0, temperature: float = 4.0,
                              alpha: float = 0.9) -> train_lib.LossFn:
    """Logit KD plus ``beta *`` a FitNets hint, for a :class:`StudentWithAdapter`.

    ``loss = kd_loss(student, teacher, labels) + beta * hint_loss(student[student_layer],
    teacher[teacher_layer], model.adapter)``.

    Picking layers: a layer is a key of the model's ``features(x)`` if it has that method
    (the course's :class:`~pruning_kit.models.SmallCNN`: ``"stage2"``), or else the
    path of any submodule, for any model (``"conv2"``, ``"blocks/0/conv2"``,
    ``"layers/1"``), whose output is captured from the ordinary forward pass
    (:func:`pruning_kit.capture.capture`; ``capture.shapes(model, x)`` lists the paths with
    their output shapes). A natural pair is the same stage of both networks (same spatial
    size), the adapter mapping the student's channel count to the teacher's. FitNets hints
    a *middle* layer (``"stage2"``): an early one (``"stage1"``) constrains too little of
    the student, the last one (``"residual"``) feeds the head directly, little beyond what
    KD matches. Spatial sizes that divide one another are average-pooled
    (:func:`hint_loss`).

    Args:
        teacher: ``None`` for precomputed targets, ``y = (labels, teacher_logits,
            teacher_features)`` (:func:`teacher_logits`, :func:`teacher_features`); or the
            teacher module, run in eval mode inside each step as in
            :func:`online_distillation_loss`.
        student_layer: key of the student's ``features(x)`` or a submodule path of the
            student (relative to ``model.student``).
        teacher_layer: key of the teacher's ``features(x)`` or a submodule path of the
            teacher (online only; precomputed features are whichever layer was handed to
            :func:`teacher_features`).
        beta: weight of the hint term, ``>= 0``.
        temperature: ``T > 0`` of the logit term.
        alpha: weight of the soft logit term in ``[0, 1]``.

    Returns:
        ``loss_fn(model, x, y) -> (loss, student_logits)``. Unknown layers raise a
        ``ValueError`` (listing the keys and paths) when the loss first runs.

    Examples:
        >>> from pruning_kit import models
        >>> teacher = models.SmallCNN(widths=(8, 16), image_size=8, rngs=nnx.Rngs(0))
        >>> teacher.eval()
        >>> {k: v.shape[1:] for k, v in teacher.features(jnp.zeros((1, 8, 8, 1))).items()}
        {'stage1': (4, 4, 8), 'stage2': (2, 2, 16), 'residual': (2, 2, 16), 'logits': (10,)}
        >>> student = models.SmallCNN(widths=(4, 8), image_size=8, rngs=nnx.Rngs(1))
        >>> model = StudentWithAdapter(student, Adapter(8, 16, rngs=nnx.Rngs(2)))  # 8 -> 16
        >>> x, labels = np.zeros((2, 8, 8, 1), np.float32), np.zeros(2, np.int32)
        >>> y = (labels, teacher_logits(teacher, x), teacher_features(teacher, x, "stage2"))
        >>> loss, logits = feature_distillation_loss(beta=0.5)(model, x, y)   # one fit step's
        >>> logits.shape
        (2, 10)

        Any model, layers by submodule path (here the student's second Linear against the
        teacher's second, ``16 -> 32`` features, the teacher run inside each step):

        >>> t_mlp = models.MLP(64, (64, 32), rngs=nnx.Rngs(0))
        >>> s_mlp = StudentWithAdapter(models.MLP(64, (16, 16), rngs=nnx.Rngs(1)),
        ...                            Adapter(16, 32, rngs=nnx.Rngs(2)))
        >>> loss_fn = feature_distillation_loss(t_mlp, student_layer="layers/1",
        ...                                     teacher_layer="layers/1")
        >>> loss, _ = loss_fn(s_mlp, np.ones((2, 64), np.float32), np.zeros(2, np.int32))
        >>> bool(jnp.isfinite(loss))
        True
    """
    t, a = _check_temperature_alpha(temperature, alpha)
    b = validate.number("beta", beta, 0.0, hint="beta weighs the hint term; try 0.1..10.")
    rebuild = _frozen(teacher) if teacher is not None else None

    def loss_fn(model: nnx.Module, x: jax.Array, y: Any) -> tuple[jax.Array, jax.Array]:
        if not isinstance(getattr(model, "adapter", None), Adapter):
            raise ValueError(f"feature_distillation_loss trains a StudentWithAdapter, got "
                             f"{type(model).__name__}; wrap it: StudentWithAdapter(student, "
                             "Adapter(student_channels, teacher_channels, rngs=...)).")
        student = model.student if isinstance(getattr(model, "student", None), nnx.Module) \
            else model
        logits, s_feat = layer_forward(
            student, x, student_layer, resolve_layer(student, x, student_layer, "student"))
        if rebuild is None:
            labels, t_logits, t_feat = _split_targets(y, 3, "feature_distillation_loss")
        else:
            labels = y[0] if isinstance(y, (tuple, list)) else y
            frozen = rebuild()
            t_logits, t_feat = layer_forward(
                frozen, x, teacher_layer, resolve_layer(frozen, x, teacher_layer, "teacher"))
        loss = kd_loss(logits, t_logits, labels, temperature=t, alpha=a)
        return loss + b * hint_loss(s_feat, t_feat, model.adapter), logits
    return loss_fn
