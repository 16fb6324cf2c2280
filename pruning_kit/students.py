"""The distilled students of notebook 02 and the KD-recovered 2-bit MLP, cached.

Made by ``python -m benchmarks.distillation --retrain`` (:data:`STUDENTS_COMMAND`) and cached
with :func:`pruning_kit.zoo.cached` like every trained model of the course; plain and
distilled students share one budget (:data:`STUDENT_BUDGET`), so the loss is the only
difference between them. Settings are chosen on the validation split.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from pruning_kit import data as data_lib
from pruning_kit import distill, function_matching, qat, validate
from pruning_kit import models as models_lib
from pruning_kit import train as train_lib
from pruning_kit.zoo import baseline, cached

#: The students of notebook 02 and ``benchmarks.distillation``. Plain and distilled runs of
#: one architecture share this budget (epochs, batch size, Adam with a cosine decay of the
#: learning rate, seed, no augmentation), so the loss is the only difference between them.
#: The MLP student trains longer: an epoch of it costs a fraction of the CNN student's.
STUDENT_BUDGET = {"cnn": dict(epochs=5, batch_size=128, learning_rate=3e-3),
                  "mlp": dict(epochs=10, batch_size=128, learning_rate=3e-3)}
#: The (temperature, alpha) cells scored on the validation split by :func:`kd_grid`
#: (seed 0 only: each cell is a 5-epoch CNN student, about a minute on 2 CPU cores).
KD_GRID = tuple((t, a) for a in (0.5, 0.9) for t in (2.0, 4.0))
#: FitNets hint of :func:`hint_student`: the student's ``stage2`` (8 channels) mapped by a
#: 1x1 adapter onto the teacher's ``stage2`` (32 channels), weighted by ``beta``.
HINT = dict(layer="stage2", beta=0.5)
#: The one command that (re)makes every cached student of notebook 02 (the grid on seed 0,
#: plain and distilled CNN students on seeds 0, 1, 2, the hinted student on seed 0, the
#: recovery fine-tunings on seeds 0, 1, 2, the function-matching students of :data:`FM`
#: and, on seed 0, of :data:`FM_WIDTHS` and of the mixup-blended views, :data:`FM_MIXUP`):
#: about 2 h 05 min on 2 CPU cores (estimated from the checkpoints' recorded times).
STUDENTS_COMMAND = "python -m benchmarks.distillation --retrain"

#: The stronger teacher: the course's residual SmallCNN at twice the width (32/64 channels,
#: 124,266 parameters, 3.2x the baseline), trained longer with flips and +-2 pixel shifts
#: (``train.shift_augment``), Adam with a cosine decay. Trained once (seed 0) by
#: :data:`TEACHER_COMMAND`; about 23 minutes on 2 CPU cores.
TEACHER = dict(widths=(32, 64), epochs=20, batch_size=128, learning_rate=2e-3)
TEACHER_COMMAND = "python -m benchmarks.distillation --teacher"
#: The teacher answers with the mean of its logits on an image and on its mirror image
#: (``function_matching.mirror_averaged_logits``: two passes): chosen on validation, where
#: it beats the single pass (``python -m benchmarks.distillation`` prints both).
TEACHER_MIRROR_AVERAGE = True

#: Patient and consistent distillation (:mod:`pruning_kit.function_matching`) from the
#: stronger teacher into a SmallCNN of ``widths`` (8/16: 13,794 parameters, 9x fewer than
#: the teacher): a bank of ``views`` augmented copies of every training image with the
#: teacher's answer on each; a student trained for ``e`` epochs reads views ``0 .. e-1``
#: once (the first ``e`` views do not depend on the bank's size), and its plain control
#: reads the same images in the same order. ``epochs``: the reported budget, fixed before
#: the longer budgets were run; it is run on every seed, and :data:`FM_GRID` is scored on
#: validation there (seed 0). ``curve``: the budgets of the accuracy-vs-budget curve
#: (seed 0), up to the bank's size.
FM = dict(widths=(8, 16), views=32, epochs=16, curve=(4, 8, 16, 32), batch_size=128,
          learning_rate=3e-3)
#: Student widths compared at the reported budget ``FM["epochs"]`` (seed 0, validation):
#: plain against the chosen (T, alpha) -- how the gain depends on the room the student has
#: to learn.
FM_WIDTHS = ((6, 12), (8, 16), (10, 20))
#: The (temperature, alpha) cells of the function-matching student scored on validation.
#: Beyer et al. (2022) distil with the KL term alone (alpha = 1).
FM_GRID = ((1.0, 1.0), (2.0, 1.0), (4.0, 1.0), (2.0, 0.5))
#: More aggressive views (Beyer et al. distil on mixup blends): the bank's shifted and
#: flipped views each blended with the same view of another image, weights from
#: Beta(FM_MIXUP, FM_MIXUP) (the concentration :data:`RECOVERY_FM` chose for the 2-bit
#: recovery), the plain control on the mixed labels. Scored on validation against the plain
#: views at the reported budget (seed 0, plain and every :data:`FM_GRID` cell). With
#: ``alpha < 1`` the hard-label term on a blend uses the label of the image with the larger
#: weight (the teacher's term sees the blend as it is).
FM_MIXUP = 0.4
#: Whether the reported students read the mixup blends: they would if a blended student
#: (distilled, and plain for the control) scored best on validation; on the committed run
#: the plain views win both (``python -m benchmarks.distillation`` prints the table and
#: checks this choice).
FM_MIXUP_CHOSEN = False


def strong_teacher(seed: int = 0, *, retrain: bool = False,
                   dataset: data_lib.Dataset | None = None, progress: bool = True
                   ) -> nnx.Module:
    """The stronger teacher (:data:`TEACHER`), cached as ``cnn_fashion_teacher``.

    Trained on the 55,000 training images with the validation accuracy of every epoch kept
    in the checkpoint's metadata; the test set is only reported.
    """
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()
    recipe = {k: list(v) if isinstance(v, tuple) else v for k, v in TEACHER.items()}
    info: dict[str, Any] = {"recipe": {**recipe, "augment": "train.shift_augment"},
                            "command": TEACHER_COMMAND}

    def make() -> nnx.Module:
        model = models_lib.small_cnn(TEACHER["widths"], seed=seed)
        history = train_lib.fit(model, ds.x_train, ds.y_train, epochs=TEACHER["epochs"],
                                batch_size=TEACHER["batch_size"],
                                learning_rate=TEACHER["learning_rate"], seed=seed,
                                augment=train_lib.shift_augment,
                                validation=(ds.x_val, ds.y_val), progress=progress)
        info["history"] = {k: [round(v, 5) for v in vs] for k, vs in history.items()}
        model.eval()
        info["test_accuracy"] = train_lib.evaluate(model, ds.x_test, ds.y_test)
        return model

    return cached("cnn_fashion_teacher", seed, make, retrain=retrain, metadata=info,
                  dataset=ds)


def teacher_answer(teacher: nnx.Module, x: Any) -> np.ndarray:
    """The stronger teacher's logits on the NHWC images ``x`` as the students see them.

    Averaged over each image and its mirror (``function_matching.mirror_averaged_logits``)
    when :data:`TEACHER_MIRROR_AVERAGE`, else one pass (``distill.teacher_logits``); the
    teacher's mode and arrays are left as they are.

    Examples:
        >>> t = models_lib.small_cnn((2, 4), image_size=8, seed=0)
        >>> teacher_answer(t, np.zeros((3, 8, 8, 1), np.float32)).shape
        (3, 10)
    """
    if TEACHER_MIRROR_AVERAGE:
        return function_matching.mirror_averaged_logits(teacher, x)
    return distill.teacher_logits(teacher, x)


def fm_bank(teacher: nnx.Module, x: Any, views: int = FM["views"], *, mixup: bool = False
            ) -> function_matching.ViewBank:
    """The bank of views :func:`fm_student` reads: ``function_matching.view_bank`` with the
    teacher answering as in :func:`teacher_answer`; with ``mixup`` the views are blended
    (``view_bank(..., mixup=FM_MIXUP)``).

    ``views`` copies of every image of ``x``: for the 55,000 training images and 32 views
    about 16 minutes on 2 CPU cores (the teacher runs twice per view with the mirror
    average) and 5.5 GB of memory.

    Examples:
        >>> t = models_lib.small_cnn((2, 4), image_size=8, seed=0)
        >>> bank = fm_bank(t, np.zeros((5, 8, 8, 1), np.float32), views=2)
        >>> bank.x.shape, bank.logits.shape
        ((2, 5, 8, 8, 1), (2, 5, 10))
    """
    return function_matching.view_bank(teacher, x, views,
                                       mirror_average=TEACHER_MIRROR_AVERAGE,
                                       mixup=FM_MIXUP if mixup else None)


def fm_name(epochs: int, temperature: float | None = None, alpha: float | None = None,
            *, widths: tuple[int, int] | None = None, mixup: bool = False) -> str:
    """The cache name of :func:`fm_student`: plain without ``temperature``/``alpha``,
    distilled with both. A teacher answering in one pass (``TEACHER_MIRROR_AVERAGE`` off)
    gets its own names, so the committed students are never mistaken for its students.
    ``widths`` defaults to ``FM["widths"]``; students of mixup blends are ``..._fmmix...``
    (with ``_c<concentration>`` if :data:`FM_MIXUP` is not that of the committed files).

    Examples:
        >>> fm_name(16), fm_name(16, 1.0, 1.0)
        ('student_cnn8x16_fm_plain_e16', 'student_cnn8x16_fm_kd_T1_a1_e16')
        >>> fm_name(4, widths=(6, 12)), fm_name(16, mixup=True)
        ('student_cnn6x12_fm_plain_e4', 'student_cnn8x16_fmmix_plain_e16')

    Raises:
        ValueError: only one of ``temperature`` and ``alpha`` is given.
    """
    if (temperature is None) != (alpha is None):
        raise ValueError("pass both temperature and alpha (distilled) or neither (plain).")
    arch = _fm_arch(widths)
    tail = f"_e{epochs}" + ("" if TEACHER_MIRROR_AVERAGE else "_onepass")
    if mixup and FM_MIXUP != _MIX_CONCENTRATION_OF_NAME:
        tail += f"_c{FM_MIXUP:g}"
    kind = "fmmix" if mixup else "fm"
    if temperature is None:
        return f"student_{arch}_{kind}_plain{tail}"
    return f"student_{arch}_{kind}_kd_T{float(temperature):g}_a{float(alpha):g}{tail}"


def _fm_widths(widths: Any) -> tuple[int, int]:
    if widths is None:
        return tuple(FM["widths"])
    w = tuple(widths)
    ok = all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c > 0 for c in w)
    if len(w) != 2 or not ok:
        raise ValueError(f"widths must be two positive channel counts like (8, 16), got "
                         f"{widths!r}.")
    return tuple(int(c) for c in w)


def _fm_arch(widths: Any = None) -> str:
    return "cnn{}x{}".format(*_fm_widths(widths))


def fm_student(seed: int = 0, *, epochs: int, temperature: float | None = None,
               alpha: float | None = None, bank: Callable[[], Any] | None = None,
               widths: tuple[int, int] | None = None, mixup: bool = False,
               retrain: bool = False, dataset: data_lib.Dataset | None = None,
               progress: bool = True) -> nnx.Module:
    """The CNN student (``widths``, default ``FM["widths"]``) trained on the first ``epochs``
    views of the bank, cached.

    With ``temperature``/``alpha``: distilled from :func:`strong_teacher` on exactly the
    views it reads (``distill.distillation_loss`` against the bank's logits); without:
    the plain control on the same views, batches and seed. ``bank`` is called (once) only
    if the model must be trained: ``lambda: fm_bank(strong_teacher(), ds.x_train)``, or
    ``fm_bank(..., mixup=True)`` for ``mixup`` (views blended by mixup, :data:`FM_MIXUP`;
    the plain control learns the mixed labels, ``ViewBank.label_logits``).
    Cached as ``student_cnn<w0>x<w1>_fm_{plain|kd_T<T>_a<alpha>}_e<epochs>`` (``_fmmix_``
    with ``mixup``)
    (:func:`fm_name`); the recorded ``views`` is the size of the bank it was drawn from
    (``recipe["views"]`` in the earlier checkpoints), and the student reads the bank's first
    ``epochs`` views, which do not depend on that size.
    """
    name = fm_name(epochs, temperature, alpha, widths=widths, mixup=mixup)   # both/neither
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()
    kd = temperature is not None
    recipe = {**{k: v for k, v in FM.items() if k in ("batch_size", "learning_rate")},
              "epochs": epochs, "arch": _fm_arch(widths),
              "mirror_average": TEACHER_MIRROR_AVERAGE}
    if kd:
        recipe.update(loss="distillation_loss", temperature=float(temperature),
                      alpha=float(alpha))
    else:
        recipe.update(loss="cross-entropy on the mixed labels" if mixup else "cross-entropy")
    if mixup:
        recipe.update(mixup=FM_MIXUP)
    info: dict[str, Any] = {"recipe": recipe, "command": STUDENTS_COMMAND, "views": FM["views"],
                            "from": "teacher cnn_fashion_teacher seed 0, same views"}

    def make() -> nnx.Module:
        if bank is None:
            raise ValueError(f"{name} seed {seed} is not cached; pass bank= (see docstring) "
                             "to train it.")
        views = bank()
        if mixup != (views.partner is not None):
            raise ValueError(f"{name} reads a bank {'with' if mixup else 'without'} mixup; "
                             f"pass bank=lambda: fm_bank(teacher, x, mixup={mixup}).")
        if mixup and views.mixup != FM_MIXUP:
            raise ValueError(f"the bank was blended with concentration {views.mixup:g}, but "
                             f"FM_MIXUP is {FM_MIXUP:g} (the recipe {name} records); build it "
                             "with fm_bank(teacher, x, mixup=True).")
        info["views"] = views.views
        if mixup and not kd:            # the control learns the mixed labels
            views = views._replace(logits=views.label_logits(ds.y_train, len(ds.classes)))
        x, labels, logits = function_matching.budget(views, ds.y_train, epochs)
        model = models_lib.small_cnn(_fm_widths(widths), seed=seed)
        y = (labels, logits) if kd or mixup else labels
        loss = (distill.distillation_loss(temperature=float(temperature), alpha=float(alpha))
                if kd else distill.distillation_loss(temperature=1.0, alpha=1.0) if mixup
                else train_lib.cross_entropy_loss)
        history = train_lib.fit(model, x, y, epochs=1, batch_size=FM["batch_size"],
                                learning_rate=FM["learning_rate"], loss_fn=loss, seed=seed,
                                progress=progress)
        info["history"] = {k: [round(v, 5) for v in vs] for k, vs in history.items()}
        model.eval()
        return model

    return cached(name, seed, make, retrain=retrain, metadata=info, dataset=ds)


def fm_grid(seed: int = 0, *, bank: Callable[[], Any] | None = None, mixup: bool = False,
            retrain: bool = False, dataset: data_lib.Dataset | None = None,
            progress: bool = True) -> dict[Any, float]:
    """Validation accuracy of :func:`fm_student` at ``FM["epochs"]``: the plain control
    and each cell of :data:`FM_GRID` (fractions, like :func:`kd_grid`; pick with
    :func:`kd_choice`), on the plain views or, with ``mixup``, the blended ones. The test
    set is not looked at."""
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()
    kw = dict(epochs=FM["epochs"], bank=bank, mixup=mixup, retrain=retrain, dataset=ds,
              progress=progress)
    return _validation_scores(ds, lambda: fm_student(seed, **kw), FM_GRID,
                              lambda t, a: fm_student(seed, temperature=t, alpha=a, **kw))


def _student(arch: str, seed: int) -> nnx.Module:
    if arch == "cnn":
        return models_lib.student_cnn(seed=seed)
    if arch == "mlp":
        return models_lib.student_mlp(seed=seed)
    raise ValueError(f"arch must be 'cnn' (SmallCNN 4/8) or 'mlp' (784-32-10), got {arch!r}.")


def _student_budget(arch: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The budget of ``arch`` with ``overrides`` applied, and the cache-name suffix."""
    if arch not in STUDENT_BUDGET:
        _student(arch, 0)                       # raises the ValueError naming the choices
    unknown = set(overrides) - set(STUDENT_BUDGET[arch])
    if unknown:
        raise ValueError(f"unknown student budget entries {sorted(unknown)}; change "
                         f"{sorted(STUDENT_BUDGET[arch])}.")
    suffix = "".join(f"_{k}{v:g}" for k, v in sorted(overrides.items()))
    return {**STUDENT_BUDGET[arch], **overrides}, suffix


def _fit_student(model: nnx.Module, ds: data_lib.Dataset, y: Any, budget: dict[str, Any],
                 loss_fn: Any, seed: int, progress: bool, info: dict[str, Any]) -> None:
    """Train ``model`` with ``budget``; the per-epoch history goes into ``info``."""
    history = train_lib.fit(model, ds.x_train, y, epochs=budget["epochs"],
                            batch_size=budget["batch_size"],
                            learning_rate=budget["learning_rate"], loss_fn=loss_fn, seed=seed,
                            validation=(ds.x_val, ds.y_val), progress=progress)
    info["history"] = {k: [round(v, 5) for v in vs] for k, vs in history.items()}
    model.eval()


def plain_student(seed: int = 0, *, arch: str = "cnn", retrain: bool = False,
                  dataset: data_lib.Dataset | None = None, progress: bool = True,
                  **overrides: Any) -> nnx.Module:
    """The student trained on the labels only: the control of notebook 02, cached.

    ``models.student_cnn(seed=seed)`` (``arch="cnn"``, 5,462 parameters) or
    ``models.student_mlp(seed=seed)`` (``arch="mlp"``) trained from scratch on
    ``ds.x_train`` with :data:`STUDENT_BUDGET`. The per-epoch validation accuracy is kept in
    the checkpoint's metadata (``train.read_checkpoint_header(path)["metadata"]["history"]``).
    ``overrides`` change budget entries (e.g. ``epochs=10``), cached under their own name.
    All students are made by ``python -m benchmarks.distillation --retrain``.
    """
    budget, suffix = _student_budget(arch, overrides)
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()
    info: dict[str, Any] = {"recipe": {**budget, "loss": "cross-entropy", "arch": arch},
                            "command": STUDENTS_COMMAND}

    def make() -> nnx.Module:
        model = _student(arch, seed)
        _fit_student(model, ds, ds.y_train, budget, train_lib.cross_entropy_loss, seed,
                     progress, info)
        return model

    return cached(f"student_{arch}_plain{suffix}", seed, make, retrain=retrain,
                            metadata=info, dataset=ds)


def kd_student(seed: int = 0, *, temperature: float, alpha: float, arch: str = "cnn",
               retrain: bool = False, dataset: data_lib.Dataset | None = None,
               progress: bool = True, **overrides: Any) -> nnx.Module:
    """The same student as :func:`plain_student`, distilled from ``cnn_fashion`` seed ``seed``.

    Same architecture, initialisation, budget and batches as the plain student; the loss is
    ``distill.distillation_loss(temperature=T, alpha=alpha)`` against the teacher's logits,
    computed once on the (un-augmented) training images. Cached per ``(T, alpha)`` as
    ``student_<arch>_kd_T<T>_a<alpha>``; :func:`kd_grid` scores the cells of
    :data:`KD_GRID` on the validation split and :func:`kd_choice` picks the best one.
    """
    budget, suffix = _student_budget(arch, overrides)
    t, a = float(temperature), float(alpha)
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()
    info: dict[str, Any] = {"recipe": {**budget, "loss": "distillation_loss", "arch": arch,
                                       "temperature": t, "alpha": a},
                            "from": f"teacher cnn_fashion seed {seed}",
                            "command": STUDENTS_COMMAND}

    def make() -> nnx.Module:
        teacher = baseline("cnn_fashion", seed, progress=progress, dataset=ds)
        targets = (ds.y_train, distill.teacher_logits(teacher, ds.x_train))
        model = _student(arch, seed)
        _fit_student(model, ds, targets, budget,
                     distill.distillation_loss(temperature=t, alpha=a), seed, progress, info)
        return model

    return cached(f"student_{arch}_kd_T{t:g}_a{a:g}{suffix}", seed, make,
                            retrain=retrain, metadata=info, dataset=ds)


def kd_grid(seed: int = 0, *, arch: str = "cnn", retrain: bool = False,
            dataset: data_lib.Dataset | None = None, progress: bool = True
            ) -> dict[Any, float]:
    """Validation accuracy of the plain student and of the distilled one at each KD cell.

    Returns ``{"plain": acc, (T, alpha): acc, ...}`` (fractions) for the cells of
    :data:`KD_GRID`, every model made on ``seed`` with :func:`plain_student` /
    :func:`kd_student` (cached) and scored on ``ds.x_val``; the test set is not looked at.
    """
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()
    kw = dict(arch=arch, retrain=retrain, dataset=ds, progress=progress)
    return _validation_scores(ds, lambda: plain_student(seed, **kw), KD_GRID,
                              lambda t, a: kd_student(seed, temperature=t, alpha=a, **kw))


def _validation_scores(ds: data_lib.Dataset, plain: Callable[[], nnx.Module], cells: Any,
                       distilled: Callable[[float, float], nnx.Module]) -> dict[Any, float]:
    """``{"plain": acc, (T, alpha): acc, ...}`` on the validation split (fractions)."""
    scores = {"plain": train_lib.evaluate(plain(), ds.x_val, ds.y_val)}
    for t, a in cells:
        scores[(t, a)] = train_lib.evaluate(distilled(t, a), ds.x_val, ds.y_val)
    return scores


def kd_choice(scores: dict[Any, float]) -> tuple[float, float]:
    """The ``(T, alpha)`` of :func:`kd_grid`'s scores with the best validation accuracy.

    Ties (accuracies equal to 4 decimals) go to the first cell of the scores (the order of
    :data:`KD_GRID` or :data:`FM_GRID`).
    """
    cells = [c for c in scores if c != "plain"]
    if not cells:
        raise ValueError("scores holds no (T, alpha) cell; pass the result of kd_grid().")
    return max(cells, key=lambda c: round(scores[c], 4))


def hint_student(seed: int = 0, *, temperature: float, alpha: float, retrain: bool = False,
                 dataset: data_lib.Dataset | None = None, progress: bool = True
                 ) -> nnx.Module:
    """The CNN student trained with logit KD plus a FitNets hint (:data:`HINT`), cached.

    ``distill.feature_distillation_loss(beta=HINT["beta"], temperature=T, alpha=alpha)`` on
    a ``distill.StudentWithAdapter``; the teacher's logits and ``HINT["layer"]`` features
    are computed once on the training images. Same budget and seed as
    :func:`kd_student`; only the student (not its adapter) is kept.
    """
    budget = STUDENT_BUDGET["cnn"]
    t, a = float(temperature), float(alpha)
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()
    info: dict[str, Any] = {"recipe": {**budget, **HINT, "loss": "feature_distillation_loss",
                                       "arch": "cnn", "temperature": t, "alpha": a},
                            "from": f"teacher cnn_fashion seed {seed}",
                            "command": STUDENTS_COMMAND}

    def make() -> nnx.Module:
        teacher = baseline("cnn_fashion", seed, progress=progress, dataset=ds)
        targets = (ds.y_train, distill.teacher_logits(teacher, ds.x_train),
                   distill.teacher_features(teacher, ds.x_train, HINT["layer"]))
        student = _student("cnn", seed)
        student.eval()                          # read the channel count without BN updates
        s_ch = student.features(ds.x_train[:1])[HINT["layer"]].shape[-1]
        model = distill.StudentWithAdapter(
            student, distill.Adapter(s_ch, targets[2].shape[-1], rngs=nnx.Rngs(seed)))
        _fit_student(model, ds, targets, budget, distill.feature_distillation_loss(
            student_layer=HINT["layer"], beta=HINT["beta"], temperature=t, alpha=a),
            seed, progress, info)
        student.eval()
        return student

    return cached(f"student_cnn_hint_T{t:g}_a{a:g}", seed, make, retrain=retrain,
                            metadata=info, dataset=ds)


#: KD as a recovery tool (notebook 02, section 7): the ``mlp_fashion`` baseline fine-tuned
#: with 2-bit-weight QAT (per-channel, MSE-clipped grid, float activations) on a small set
#: of training images, where plain fine-tuning leaves a clear gap to the float model.
RECOVERY = dict(weight_bits=2, weight_method="mse", images=3000, epochs=10, batch_size=128,
                learning_rate=3e-4)


#: Patient and consistent recovery (notebook 02, section 8): the float model labels
#: ``views`` mixup blends (``function_matching.mixup_views``) of each recovery image, and the
#: 2-bit copy is fine-tuned once over all of them with the KD loss at ``(temperature,
#: alpha)``, with :data:`RECOVERY`'s batch and learning rate. ``benchmarks.distillation``
#: checks this choice on validation: it fine-tunes this recipe and every cell of its
#: ``RECOVERY_FM_GRID`` (other views, concentrations and temperatures, and the plain recipes)
#: on the machine it runs on, for seeds 0, 1 and 2, and keeps this recipe unless another
#: leads it in mean validation accuracy by more than one standard error over the seeds (one
#: seed's grid moves by tenths of a point between machines; it prints them all).
RECOVERY_FM = dict(views=40, concentration=0.4, temperature=1.0, alpha=1.0)
#: The concentration of the committed ``_mix<views>`` and ``_fmmix_`` files; another one is
#: cached with a ``_c<concentration>`` suffix, so a changed recipe never loads the old models.
_MIX_CONCENTRATION_OF_NAME = 0.4


def recovery_images(seed: int, dataset: data_lib.Dataset) -> Any:
    """Indices into ``dataset.x_train`` of :func:`recovered_mlp`'s fine-tuning set."""
    return np.random.default_rng([seed, 4]).permutation(len(dataset.x_train))[
        :RECOVERY["images"]]


def recovery_finetune(model: nnx.Module, x: Any, y: Any, *, teacher_logits: Any = None,
                      temperature: float | None = None, alpha: float | None = None,
                      epochs: int = RECOVERY["epochs"], seed: int = 0,
                      progress: bool = False) -> nnx.Module:
    """Fine-tune ``model`` in place with 2-bit QAT (:data:`RECOVERY`): QAT's cross-entropy,
    or, with ``teacher_logits`` (aligned with ``x``) and ``temperature``/``alpha``, the
    distillation loss through QAT's fake-quantized forward (``distill.kd_wrap``)."""
    loss = qat.qat_loss(RECOVERY["weight_bits"], None, weight_method=RECOVERY["weight_method"])
    if teacher_logits is not None:
        y = (y, teacher_logits)
        loss = distill.kd_wrap(loss, temperature=temperature, alpha=alpha)
    train_lib.fit(model, x, y, epochs=epochs, batch_size=RECOVERY["batch_size"],
                  learning_rate=RECOVERY["learning_rate"], loss_fn=loss, seed=seed,
                  progress=progress)
    return model


def mixup_recovery_set(dense: nnx.Module, seed: int, dataset: data_lib.Dataset, *,
                       views: int = RECOVERY_FM["views"],
                       concentration: float = RECOVERY_FM["concentration"], kd: bool = True
                       ) -> tuple[Any, Any, Any]:
    """Mixup views of :func:`recovery_images` for one pass of :func:`recovery_finetune`.

    Args:
        dense: the float model; with ``kd`` its logits on every blend are the targets (it is
            run on an eval-mode copy and left as it is).
        seed: picks the recovery images and the blends.
        dataset: the split the images come from.
        views: blends of each image (``function_matching.mixup_views``).
        concentration: of the Beta distribution of the blend weights.
        kd: ``False`` for the plain control: the targets are the mixed labels as
            log-probabilities (``MixedViews.label_logits``). Fit both with the KD loss
            (``T = alpha = 1`` for the control: the cross-entropy against the mixed labels).

    Returns:
        ``(x, labels, targets)`` with ``views * 3,000`` rows: pass as ``recovery_finetune(
        model, x, labels, teacher_logits=targets, temperature=..., alpha=..., epochs=1)``.
    """
    pick = recovery_images(seed, dataset)
    mixed = function_matching.mixup_views(dataset.x_train[pick], views, seed=seed,
                                          concentration=concentration)
    labels = np.tile(dataset.y_train[pick], views)
    targets = (distill.teacher_logits(dense, mixed.x) if kd else
               mixed.label_logits(dataset.y_train[pick], len(dataset.classes)))
    return mixed.x, labels, targets


def recovery_recipe(seed: int, dataset: data_lib.Dataset, *, temperature: float | None = None,
                    alpha: float | None = None, epochs: int = RECOVERY["epochs"],
                    mixup_views: int | None = None,
                    concentration: float = RECOVERY_FM["concentration"],
                    progress: bool = False) -> nnx.Module:
    """The seed's float ``mlp_fashion`` fine-tuned with 2-bit QAT by one recipe, not cached.

    Plain (no ``temperature``/``alpha``) or distilled from the float model; on the
    :func:`recovery_images` for ``epochs`` epochs, or, with ``mixup_views``, one pass over
    that many blends of each (:func:`mixup_recovery_set`: the float model's logits, or the
    mixed labels for the plain recipe). :func:`recovered_mlp` caches the course's recipes;
    ``benchmarks.distillation`` scores the others on validation with this.
    """
    dense = baseline("mlp_fashion", seed, progress=progress, dataset=dataset)
    kd = temperature is not None
    if mixup_views is not None:
        x, y, targets = mixup_recovery_set(dense, seed, dataset, views=mixup_views,
                                           concentration=concentration, kd=kd)
        t, a = (temperature, alpha) if kd else (1.0, 1.0)     # plain: CE on mixed labels
        return recovery_finetune(dense, x, y, teacher_logits=targets, temperature=t, alpha=a,
                                 epochs=1, seed=seed, progress=progress)
    pick = recovery_images(seed, dataset)
    x = dataset.x_train[pick]
    logits = distill.teacher_logits(dense, x) if kd else None
    return recovery_finetune(dense, x, dataset.y_train[pick], teacher_logits=logits,
                             temperature=temperature, alpha=alpha, epochs=epochs, seed=seed,
                             progress=progress)


def recovered_mlp(seed: int = 0, *, temperature: float | None = None,
                  alpha: float | None = None, mixup_views: int | None = None,
                  retrain: bool = False, dataset: data_lib.Dataset | None = None,
                  progress: bool = True) -> nnx.Module:
    """``mlp_fashion`` fine-tuned with 2-bit QAT (:data:`RECOVERY`), plainly or with KD, cached.

    Without ``temperature``/``alpha`` the loss is QAT's own cross-entropy
    (``qat.qat_loss``); with them, ``distill.kd_wrap`` keeps QAT's fake-quantized
    forward pass and replaces its loss by the distillation loss against the float model's
    logits (the same seed's baseline). Both fine-tune on the same :func:`recovery_images`
    with the same epochs, batch, learning rate and seed. With ``mixup_views`` (KD only):
    one pass over that many mixup blends of each image with the float model's logits on
    each (:func:`mixup_recovery_set`, :data:`RECOVERY_FM`), cached with a ``_mix<views>``
    suffix. Measure the result as deployed:
    ``qat.evaluate_deployed_mlp(model, x, y, weight_bits=2, act_bits=None,
    weight_method="mse")``.
    """
    if (temperature is None) != (alpha is None):
        raise ValueError("give both temperature and alpha (KD fine-tuning) or neither "
                         "(plain fine-tuning).")
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()
    kd = temperature is not None
    recipe: dict[str, Any] = {**RECOVERY, "loss": "kd_wrap(qat_loss)" if kd
                              else "qat_loss"}
    if kd:
        recipe.update(temperature=float(temperature), alpha=float(alpha))
    name = (f"mlp_fashion_w2_kd_T{float(temperature):g}_a{float(alpha):g}" if kd
            else "mlp_fashion_w2_plain")
    if mixup_views is not None:
        if not kd:
            raise ValueError("mixup_views is for KD fine-tuning: pass temperature and alpha "
                             "too (the plain control's best recipe is the one without views).")
        mixup_views = validate.integer("mixup_views", mixup_views, minimum=1)
        recipe.update(views=mixup_views, concentration=RECOVERY_FM["concentration"], epochs=1)
        name += f"_mix{mixup_views}"
        if RECOVERY_FM["concentration"] != _MIX_CONCENTRATION_OF_NAME:
            name += f"_c{RECOVERY_FM['concentration']:g}"

    def make() -> nnx.Module:
        return recovery_recipe(seed, ds, temperature=temperature, alpha=alpha,
                               mixup_views=mixup_views, progress=progress)

    return cached(name, seed, make, retrain=retrain, dataset=ds,
                            metadata={"recipe": recipe, "from": f"mlp_fashion seed {seed}",
                                      "command": STUDENTS_COMMAND})
