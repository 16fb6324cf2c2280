"""Distillation as function matching: the teacher and the student see the same view.

"Knowledge distillation: a good teacher is patient and consistent" (Beyer et al., CVPR
2022) found that the recipe matters more than the loss: the student should match the
teacher's function *on the very images it trains on* -- the same augmented view through
both (**consistent**) -- for a long time (**patient**). Precomputing the teacher's logits
once on un-augmented images and then augmenting only the student's input breaks that: the
student is asked to match the teacher on an image the teacher never saw.

On a CPU, running a teacher on every training batch costs more than training the student.
This module keeps the teaching consistent at a fraction of that cost with a **bank of
views**: ``views`` augmented copies of every training image (a random flip and a shift of
up to ``max_shift`` pixels, drawn per image and per view, zero-padded), each paired with
the teacher's logits on exactly that copy. A student trained for ``e`` epochs reads views
``0 .. e-1`` of every image once (:func:`budget`): every image it sees is a view the teacher
labelled, and a control student trained on the labels alone can read the very same
images in the very same order, so the loss is the only difference. (A bank is a finite
sample of the augmentations the paper draws afresh at every step.)

* :func:`augmented_views` -- the views, deterministic in ``seed``.
* :func:`view_bank` -- views + the teacher's logits on them (:class:`ViewBank`), optionally
  averaged over each view and its mirror (:func:`mirror_averaged_logits`), optionally
  blended by mixup (``mixup=``; :meth:`ViewBank.label_logits` gives the plain control its
  mixed labels).
* :func:`budget` -- the first ``epochs`` views of every image, as arrays for ``train.fit``.
* :func:`mixup_views` -- views that blend each image with another (mixup), for models that
  are not shift- or flip-invariant (an MLP): :class:`MixedViews`, whose
  :meth:`~MixedViews.label_logits` give the plain control its mixed labels.

Used by :mod:`pruning_kit.students` (``fm_student``) and ``python -m benchmarks.distillation``.

Examples:
    >>> x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1)
    >>> v = augmented_views(x, 3, seed=0, max_shift=1)
    >>> v.shape                                   # (views, images, height, width, channels)
    (3, 2, 4, 4, 1)
    >>> bool(np.array_equal(v, augmented_views(x, 3, seed=0, max_shift=1)))   # deterministic
    True
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from flax import nnx

from pruning_kit import distill, validate

__all__ = ["MixedViews", "ViewBank", "augmented_views", "budget", "mirror_averaged_logits",
           "mixup_views", "view_bank"]


class ViewBank(NamedTuple):
    """``views`` augmented copies of ``n`` images and the teacher's logits on each.

    ``x``: ``(views, n, H, W, C)`` float32; ``logits``: ``(views, n, classes)`` float32.
    A bank built with ``mixup`` also holds each view's ``partner`` (int) and ``lam``
    (float32), both ``(views, n)``: view ``v`` of image ``i`` is ``lam * a + (1 - lam) * b``
    of the shifted/flipped view ``v`` of image ``i`` (``a``) and of image ``partner`` (``b``),
    and ``mixup``, the Beta concentration the weights were drawn with; all ``None`` without
    mixup.
    """

    x: np.ndarray
    logits: np.ndarray
    partner: np.ndarray | None = None
    lam: np.ndarray | None = None
    mixup: float | None = None

    @property
    def views(self) -> int:
        return int(self.x.shape[0])

    def label_logits(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """The labels of the bank's views as log-probabilities, ``(views, n, num_classes)``:
        one-hot without mixup, ``lam`` on image ``i``'s class and ``1 - lam`` on its
        partner's with it (:meth:`MixedViews.label_logits`).

        The plain control of a distillation on the bank: ``bank._replace(logits=
        bank.label_logits(labels, k))`` in place of the bank, fitted with
        ``distill.distillation_loss(temperature=1.0, alpha=1.0)``, is the cross-entropy
        against these labels (minus a constant), on the same images.

        Raises:
            ValueError: ``labels`` is not one label per image, or a label is outside
                ``[0, num_classes)``.
        """
        views, n = self.x.shape[:2]
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels has shape {labels.shape}; the bank holds {n} images "
                             f"per view, so pass their {n} labels.")
        if self.partner is None:
            partner = np.tile(np.arange(n), (views, 1))
            lam = np.ones((views, n), np.float32)
        else:
            partner, lam = self.partner, self.lam
        return _mixed_label_logits(labels, partner.reshape(-1), lam.reshape(-1),
                                   num_classes).reshape(views, n, num_classes)


def augmented_views(x: np.ndarray, views: int, *, seed: int = 0, max_shift: int = 2
                    ) -> np.ndarray:
    """``views`` augmented copies of the NHWC images ``x``, shape ``(views, *x.shape)``.

    Each copy of each image is flipped left-right with probability 1/2 and shifted by
    ``(dy, dx)``, each uniform in ``[-max_shift, max_shift]``, with zeros shifted in. The
    draws depend only on ``seed`` (and the view), so the same call gives the same bank.

    Raises:
        ValueError: ``x`` is not a batch of NHWC images, or ``views`` / ``max_shift`` are
            not a positive / non-negative integer.
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC images (n, height, width, channels), got shape "
                         f"{x.shape}; reshape flat images first, e.g. x.reshape(-1, 28, 28, 1).")
    views = validate.integer("views", views, minimum=1)
    s = validate.integer("max_shift", max_shift, minimum=0)
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
    out = np.empty((views, *x.shape), np.float32)
    rows = np.arange(n)[:, None, None]
    for v in range(views):
        rng = np.random.default_rng([seed, v])
        flip = rng.random(n) < 0.5
        dy, dx = rng.integers(0, 2 * s + 1, size=(2, n))
        ys = dy[:, None, None] + np.arange(h)[None, :, None]
        xs = dx[:, None, None] + np.arange(w)[None, None, :]
        xs = np.where(flip[:, None, None], dx[:, None, None] + (w - 1 - np.arange(w)), xs)
        out[v] = padded[rows, ys, xs]
    return out


def mirror_averaged_logits(teacher: nnx.Module, x: np.ndarray, *, batch_size: int = 1000
                           ) -> np.ndarray:
    """The mean of ``teacher``'s logits on the NHWC images ``x`` and on their mirror images.

    Test-time augmentation with a left-right flip: a classifier trained with random flips
    answers a little differently on an image and its mirror, and the mean of the two answers
    is usually more accurate than either (two forward passes instead of one). Runs on an
    eval-mode copy, like ``distill.teacher_logits``.

    Raises:
        ValueError: ``x`` is not a batch of NHWC images, or ``teacher`` not an NNX module.

    Examples:
        >>> from pruning_kit import models
        >>> t = models.small_cnn((2, 4), image_size=8, seed=0)
        >>> x = np.random.default_rng(0).random((3, 8, 8, 1), np.float32)
        >>> bool(np.allclose(mirror_averaged_logits(t, x),
        ...                  mirror_averaged_logits(t, x[:, :, ::-1]), atol=1e-5))
        True
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC images (n, height, width, channels), got shape "
                         f"{x.shape}; reshape flat images first, e.g. x.reshape(-1, 28, 28, 1).")
    return 0.5 * (distill.teacher_logits(teacher, x, batch_size=batch_size)
                  + distill.teacher_logits(teacher, np.ascontiguousarray(x[:, :, ::-1]),
                                           batch_size=batch_size))


def view_bank(teacher: nnx.Module, x: np.ndarray, views: int, *, seed: int = 0,
              max_shift: int = 2, mirror_average: bool = False,
              mixup: float | None = None, batch_size: int = 1000) -> ViewBank:
    """:func:`augmented_views` of ``x`` and ``teacher``'s logits on every one of them.

    The teacher runs once per view over the images (twice with ``mirror_average``: its
    answer is then :func:`mirror_averaged_logits`), in eval mode on a copy (its own mode
    and arrays are left as they are).

    With ``mixup`` (a Beta concentration, e.g. 0.4) every shifted/flipped view is then
    blended with the same view of a partner image, as :func:`mixup_views` blends images
    (a new permutation and new weights per view, deterministic in ``seed`` and drawn from
    random streams of their own): the more aggressive augmentation of Beyer et al. (2022).
    The first views of a bank do not depend on how many views it holds, with or without
    mixup.

    Raises:
        ValueError: ``mixup`` is not a positive number (``True`` is refused: pass the
            concentration).

    Examples:
        >>> from pruning_kit import models
        >>> t = models.small_cnn((2, 4), image_size=8, seed=0)
        >>> x = np.random.default_rng(0).random((5, 8, 8, 1), np.float32)
        >>> bank = view_bank(t, x, 2, max_shift=1)
        >>> bank.x.shape, bank.logits.shape
        ((2, 5, 8, 8, 1), (2, 5, 10))
    """
    xs = augmented_views(x, views, seed=seed, max_shift=max_shift)
    partner = lam = None
    if mixup is not None:
        if isinstance(mixup, bool):
            raise ValueError("mixup is the Beta concentration of the blend weights (e.g. "
                             "0.4), not a switch; students.fm_bank takes mixup=True.")
        mixup = validate.number("mixup", mixup, 0.0, low_open=True)
        partner = np.empty(xs.shape[:2], np.int64)
        lam = np.empty(xs.shape[:2], np.float32)
        for v in range(views):          # streams apart from augmented_views' ([seed, v])
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11, v)))
            xs[v], partner[v], lam[v] = _blend(xs[v], rng, mixup)
    answer = mirror_averaged_logits if mirror_average else distill.teacher_logits
    logits = np.stack([answer(teacher, xv, batch_size=batch_size) for xv in xs])
    return ViewBank(xs, logits.astype(np.float32), partner, lam, mixup)


def _blend(x: np.ndarray, rng: np.random.Generator, concentration: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image of ``x`` blended with a partner drawn by a permutation, its weight
    ``lam = max(b, 1 - b)``, ``b ~ Beta(concentration, concentration)``:
    ``(blends, partner, lam)``."""
    n = len(x)
    partner = rng.permutation(n)
    b = rng.beta(concentration, concentration, n).astype(np.float32)
    lam = np.maximum(b, 1.0 - b)
    w = lam.reshape((n,) + (1,) * (x.ndim - 1))
    return w * x + (1.0 - w) * x[partner], partner, lam


def budget(bank: ViewBank, labels: np.ndarray, epochs: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``epochs`` views of every image, flattened for one pass of ``train.fit``:
    ``(x, labels, teacher_logits)`` with ``epochs * n`` rows.

    ``train.fit(student, x, (labels, logits), epochs=1, loss_fn=distill.distillation_loss(
    ...))`` distils consistently; ``train.fit(student, x, labels, epochs=1)`` is the
    control on the same images (``fit`` shuffles rows with its seed, so with the same seed
    the batches are the same). For a mixup bank the control learns the mixed labels: take
    the targets from ``budget(bank._replace(logits=bank.label_logits(labels, k)), ...)``
    and fit with ``distill.distillation_loss(temperature=1.0, alpha=1.0)``.

    Raises:
        ValueError: ``epochs`` is not in ``1 .. bank.views``, or ``labels`` does not match
            the bank's images.
    """
    epochs = validate.integer("epochs", epochs, minimum=1)
    if epochs > bank.views:
        raise ValueError(f"the bank holds {bank.views} views per image, so at most "
                         f"{bank.views} epochs of distinct views; build it with "
                         f"view_bank(..., views={epochs}) or lower epochs.")
    labels = np.asarray(labels)
    n = bank.x.shape[1]
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {labels.shape}; the bank holds {n} images per "
                         f"view, so pass their {n} labels.")
    x = bank.x[:epochs].reshape(epochs * n, *bank.x.shape[2:])
    return x, np.tile(labels, epochs), bank.logits[:epochs].reshape(epochs * n, -1)


class MixedViews(NamedTuple):
    """``views`` mixup copies of ``n`` images, flattened to ``views * n`` rows.

    Row ``v * n + i`` is ``lam * x[i] + (1 - lam) * x[partner]`` for that row's ``lam`` (in
    ``[0.5, 1]``: image ``i`` dominates) and ``partner``. ``x`` keeps the images' trailing
    shape; ``partner``: int, ``lam``: float32, both ``(views * n,)``.
    """

    x: np.ndarray
    partner: np.ndarray
    lam: np.ndarray

    def label_logits(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Log-probabilities of the mixed labels: ``lam`` on image ``i``'s class, ``1 - lam``
        on its partner's, ``(views * n, num_classes)`` float32.

        The plain control of a distillation on these views: passed as "teacher logits" to
        ``distill.distillation_loss(temperature=1.0, alpha=1.0)``, the loss is the
        cross-entropy against the mixed labels minus their (constant) entropy -- mixup's
        usual loss, with the same gradients.

        Raises:
            ValueError: ``labels`` is not one integer label in ``[0, num_classes)`` per image.
        """
        labels = np.asarray(labels)
        if (labels.ndim != 1 or not len(labels) or len(self.x) % len(labels)
                or self.partner.max() >= len(labels)):
            raise ValueError(f"labels must hold one label per image (the {len(self.x)} rows "
                             f"are views of the images), got shape {labels.shape}.")
        return _mixed_label_logits(labels, self.partner, self.lam, num_classes)


def _mixed_label_logits(labels: np.ndarray, partner: np.ndarray, lam: np.ndarray,
                        num_classes: int) -> np.ndarray:
    """Log-probabilities of mixed labels for rows ``v * n + i``: ``lam`` on ``labels[i]``,
    ``1 - lam`` on ``labels[partner]``."""
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got {labels.min()} .. "
                         f"{labels.max()}; pass the number of classes as num_classes.")
    own = np.tile(labels, len(partner) // len(labels))
    probs = np.zeros((len(own), num_classes), np.float32)
    rows = np.arange(len(own))
    probs[rows, own] += lam
    probs[rows, labels[partner]] += 1.0 - lam
    return np.log(np.maximum(probs, 1e-6))


def mixup_views(x: np.ndarray, views: int, *, seed: int = 0, concentration: float = 0.4
                ) -> MixedViews:
    """``views`` mixup copies of the images ``x`` (any shape ``(n, ...)``), flattened.

    For view ``v`` every image ``i`` is blended with a partner drawn by a random
    permutation: ``lam * x[i] + (1 - lam) * x[partner]`` with ``lam = max(b, 1 - b)``,
    ``b ~ Beta(concentration, concentration)`` (Zhang et al., 2018; small concentrations
    keep most views close to one image). Unlike flips and shifts, a blend is as meaningful
    to an MLP as to a CNN, and a teacher's answer on it is far richer than the two labels:
    Beyer et al. (2022) distil on such views. Deterministic in ``seed``.

    Returns:
        :class:`MixedViews` with ``views * n`` rows, view by view: pass ``.x`` to
        ``distill.teacher_logits`` for the teacher's answers, and
        ``np.tile(labels, views)`` as the labels.

    Raises:
        ValueError: ``x`` holds fewer than two images, ``views`` is not a positive integer
            or ``concentration`` is not positive.

    Examples:
        >>> x = np.eye(3, dtype=np.float32)                # three "images" of 3 pixels
        >>> m = mixup_views(x, 2, seed=0)
        >>> m.x.shape, m.partner.shape
        ((6, 3), (6,))
        >>> bool(np.allclose(m.x.sum(axis=1), 1.0))        # blends of two images
        True
        >>> np.round(np.exp(m.label_logits(np.array([0, 1, 2]), 3)).sum(axis=1), 3)
        array([1., 1., 1., 1., 1., 1.], dtype=float32)
    """
    x = np.asarray(x, np.float32)
    if x.ndim < 2 or len(x) < 2:
        raise ValueError(f"x must hold at least two images along its first axis, got shape "
                         f"{x.shape}.")
    views = validate.integer("views", views, minimum=1)
    concentration = validate.number("concentration", concentration, 0.0, low_open=True)
    blends, partners, lams = zip(*(_blend(x, np.random.default_rng([seed, 7, v]),
                                          concentration) for v in range(views)), strict=True)
    return MixedViews(np.concatenate(blends), np.concatenate(partners), np.concatenate(lams))
