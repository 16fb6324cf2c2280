"""The course's compressed models: how each is made, in one place, cached like baselines.

Each recipe starts from a cached baseline (:func:`pruning_kit.train.baseline`), applies a
technique with the settings the benchmarks chose, and caches the result with
:func:`pruning_kit.train.cached` (``data/checkpoints/<name>_seed<S>.npz``, with the
recipe in its metadata). Benchmarks make them; notebooks load them, so a notebook that
fine-tunes for minutes on 2 CPU cores still runs in seconds. ``retrain=True`` remakes one.
Every recipe trains on ``ds.x_train`` only, records the data split and its validation
accuracy in the checkpoint, and every setting below was chosen on the validation split.
``python -m pruning_kit.recipes`` remakes all of them for seeds 0, 1, 2 (about 30 minutes
on 2 CPU cores) after choosing the settings in :data:`CHOICES` on validation.

* :func:`gmp_mlp` -- LeNet-300-100 pruned to 90.5% sparsity with gradual magnitude pruning
  (notebook 03, ``python -m benchmarks.pruning``).
* :func:`small_dense_mlp` -- a dense MLP with as many weights as the pruned one keeps.
* :func:`half_mac_cnn` -- the SmallCNN with the residual stage cut from 32 to 16 channels
  (2.3x fewer MACs), fine-tuned with the dense CNN as teacher (notebook 04).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optax
from flax import nnx

from pruning_kit import data as data_lib
from pruning_kit import distill, prune, qat, structure
from pruning_kit import models as models_lib
from pruning_kit import train as train_lib

#: Gradual magnitude pruning of the MLP. ``final_sparsity`` is set so that 90 % of all
#: weights (biases included) end up zero; ``ramp_fraction`` was compared with the other
#: :data:`GMP_RAMP_CANDIDATES` on validation (seed 0) and no candidate beat it beyond
#: noise (:func:`pick`).
GMP_MLP = dict(final_sparsity=0.905, epochs=20, batch_size=128, learning_rate=1e-3,
               scope="global", ramp_fraction=0.5, update_every=100)
GMP_RAMP_CANDIDATES = (0.5, 0.7, 0.9)

#: Channel removal of the CNN: the fastest <= half-MAC widths that
#: ``structure.search_widths`` found on a 2-core CPU, BatchNorm-scale importance, and
#: fine-tuning with the dense model as online teacher. ``epochs`` is compared with the
#: other :data:`HALF_MAC_EPOCH_CANDIDATES` on validation (seed 0) and kept unless one beats
#: it beyond noise (:func:`pick`; ``python -m pruning_kit.recipes`` prints the scores).
HALF_MAC_CNN = dict(keep={"stage2": 16, "res_inner": 16}, criterion="bn_scale", epochs=10,
                    batch_size=128, learning_rate=2e-3, temperature=2.0, alpha=0.5)
HALF_MAC_EPOCH_CANDIDATES = (6, 10)


def gmp_mlp(seed: int = 0, *, retrain: bool = False, dataset: data_lib.Dataset | None = None,
            progress: bool = True, **overrides: Any) -> nnx.Module:
    """The ``mlp_fashion`` baseline pruned while fine-tuning (:data:`GMP_MLP`), cached.

    The sparsity rises along Zhu & Gupta's cubic schedule over the first
    ``ramp_fraction`` of the steps, then the surviving weights keep training.
    ``overrides`` change :data:`GMP_MLP` entries (a changed recipe is cached under its own
    name, so it never overwrites the course's checkpoint).
    """
    recipe = {**GMP_MLP, **overrides}
    name = "mlp_fashion_gmp" if not overrides else "mlp_fashion_gmp_" + "_".join(
        f"{k}{v}" for k, v in sorted(overrides.items()))
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()

    def make() -> nnx.Module:
        model = train_lib.baseline("mlp_fashion", seed, progress=progress)
        steps = recipe["epochs"] * (len(ds.x_train) // recipe["batch_size"])
        schedule = prune.polynomial_schedule(recipe["final_sparsity"], 0,
                                             int(recipe["ramp_fraction"] * steps))
        tx = prune.gradual_pruning(
            optax.adam(optax.cosine_decay_schedule(recipe["learning_rate"], steps)),
            schedule, update_every=recipe["update_every"], scope=recipe["scope"])
        train_lib.fit(model, ds.x_train, ds.y_train, epochs=recipe["epochs"],
                      batch_size=recipe["batch_size"], tx=tx, seed=seed, progress=progress)
        return model

    return train_lib.cached(name, seed, make, retrain=retrain, dataset=ds,
                            metadata={"recipe": recipe, "from": f"mlp_fashion seed {seed}"})


def small_dense_mlp(seed: int = 0, *, retrain: bool = False,
                    dataset: data_lib.Dataset | None = None, progress: bool = True
                    ) -> nnx.Module:
    """A dense 784-32-11-10 MLP (25,603 weights, as many as :func:`gmp_mlp` keeps), cached.

    Trained from scratch for 40 epochs -- the baseline's 20 plus GMP's 20 -- so the
    large-sparse vs small-dense comparison gives both the same training budget.
    """
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()

    def make() -> nnx.Module:
        model = models_lib.MLP(784, (32, 11), 10, rngs=nnx.Rngs(seed))
        train_lib.fit(model, ds.x_train, ds.y_train, epochs=40, batch_size=128,
                      learning_rate=1e-3, seed=seed, progress=progress)
        return model

    return train_lib.cached("mlp_fashion_small_dense", seed, make, retrain=retrain, dataset=ds,
                            metadata={"recipe": "784-32-11-10, 40 epochs, Adam 1e-3 cosine"})


def half_mac_cnn(seed: int = 0, *, retrain: bool = False,
                 dataset: data_lib.Dataset | None = None, progress: bool = True,
                 **overrides: Any) -> nnx.Module:
    """The ``cnn_fashion`` baseline with channels removed (:data:`HALF_MAC_CNN`), cached.

    ``overrides`` change :data:`HALF_MAC_CNN` entries (cached under their own name).
    """
    recipe = {**HALF_MAC_CNN, **overrides}
    name = "cnn_fashion_half" if not overrides else "cnn_fashion_half_" + "_".join(
        f"{k}{v}" for k, v in sorted(overrides.items()))
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()

    def make() -> nnx.Module:
        teacher = train_lib.baseline("cnn_fashion", seed, progress=progress)
        small, _ = structure.prune_channels(teacher, recipe["keep"],
                                            criterion=recipe["criterion"])
        loss = distill.online_distillation_loss(teacher, temperature=recipe["temperature"],
                                                alpha=recipe["alpha"])
        train_lib.fit(small, ds.x_train, ds.y_train, epochs=recipe["epochs"],
                      batch_size=recipe["batch_size"], learning_rate=recipe["learning_rate"],
                      loss_fn=loss, augment=train_lib.shift_augment, seed=seed,
                      progress=progress)
        small.eval()
        return small

    return train_lib.cached(name, seed, make, retrain=retrain, dataset=ds,
                            metadata={"recipe": recipe, "from": f"cnn_fashion seed {seed}"})


def choose_on_validation(make, key: str, candidates, *, default, seed: int = 0,
                         progress: bool = True) -> dict[Any, float]:
    """Validation accuracy of the recipe ``make`` for each candidate value of ``key``.

    Each candidate is made (and cached under its own name) on ``seed`` with only ``key``
    changed and scored on the validation split; the test set is not looked at. The
    recipe's setting should be the best of them (ties: the first candidate).

    Args:
        make: :func:`gmp_mlp` or :func:`half_mac_cnn` (anything taking ``**overrides``).
        key: the recipe entry to vary, e.g. ``"epochs"``.
        candidates: the values to try.
        default: the recipe's current value (made without an override, so the course's
            own checkpoint is reused).
    """
    ds = data_lib.load_fashion_mnist()
    out = {}
    for value in candidates:
        kw = {} if value == default else {key: value}
        model = make(seed, dataset=ds, progress=progress, **kw)
        out[value] = train_lib.evaluate(model, ds.x_val, ds.y_val)
    return out


def pick(scores: dict[Any, float], current: Any, n_val: int) -> Any:
    """The candidate to use: the current one unless another beats it beyond noise.

    A validation accuracy ``p`` on ``n_val`` images has a standard error of
    ``sqrt(p (1 - p) / n_val)`` (0.4 pt at 90 % on 5,000 images); a candidate replaces the
    current setting only when it is better by more than that, so the recipe does not
    chase noise from one retraining to the next.

    Examples:
        >>> pick({0.5: 0.9028, 0.9: 0.9044}, 0.5, 5000)   # 0.16 pt: noise
        0.5
        >>> pick({6: 0.880, 10: 0.900}, 6, 5000)         # 2 pt: real
        10
    """
    best = max(scores, key=scores.get)
    p = scores[current]
    se = (p * (1 - p) / n_val) ** 0.5
    return best if scores[best] - scores[current] > se else current


#: What :func:`main` chooses on validation: recipe, entry, candidates, current value.
CHOICES = (
    (gmp_mlp, "ramp_fraction", GMP_RAMP_CANDIDATES, "GMP_MLP"),
    (half_mac_cnn, "epochs", HALF_MAC_EPOCH_CANDIDATES, "HALF_MAC_CNN"),
)


def main() -> None:
    """``python -m pruning_kit.recipes``: choose settings on validation, make every recipe."""
    ds = data_lib.load_fashion_mnist()
    for make, key, candidates, table in CHOICES:
        current = globals()[table][key]
        scores = choose_on_validation(make, key, candidates, default=current)
        best = pick(scores, current, len(ds.y_val))
        for value in candidates:
            print(f"{make.__name__}: {key}={value}: validation accuracy "
                  f"{100 * scores[value]:.2f}%" + ("  <- chosen" if value == best else ""))
        if best != current:
            print(f"{table}[{key!r}] is {current}; set it to {best} and run this again.")
            return
    for seed in (0, 1, 2):
        for make in (gmp_mlp, small_dense_mlp, half_mac_cnn):
            model = make(seed, dataset=ds, progress=False)
            print(f"{make.__name__} seed {seed}: validation "
                  f"{100 * train_lib.evaluate(model, ds.x_val, ds.y_val):.2f}%")


# --------------------------------------------------------------------------- students
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
#: recovery fine-tunings on seeds 0, 1, 2): about 8 minutes on 2 CPU cores.
STUDENTS_COMMAND = "python -m benchmarks.distillation --retrain"


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

    return train_lib.cached(f"student_{arch}_plain{suffix}", seed, make, retrain=retrain,
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
        teacher = train_lib.baseline("cnn_fashion", seed, progress=progress, dataset=ds)
        targets = (ds.y_train, distill.teacher_logits(teacher, ds.x_train))
        model = _student(arch, seed)
        _fit_student(model, ds, targets, budget,
                     distill.distillation_loss(temperature=t, alpha=a), seed, progress, info)
        return model

    return train_lib.cached(f"student_{arch}_kd_T{t:g}_a{a:g}{suffix}", seed, make,
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
    scores = {"plain": train_lib.evaluate(plain_student(seed, **kw), ds.x_val, ds.y_val)}
    for t, a in KD_GRID:
        model = kd_student(seed, temperature=t, alpha=a, **kw)
        scores[(t, a)] = train_lib.evaluate(model, ds.x_val, ds.y_val)
    return scores


def kd_choice(scores: dict[Any, float]) -> tuple[float, float]:
    """The ``(T, alpha)`` of :func:`kd_grid`'s scores with the best validation accuracy.

    Ties (accuracies equal to 4 decimals) go to the first cell of :data:`KD_GRID`.
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
        teacher = train_lib.baseline("cnn_fashion", seed, progress=progress, dataset=ds)
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

    return train_lib.cached(f"student_cnn_hint_T{t:g}_a{a:g}", seed, make, retrain=retrain,
                            metadata=info, dataset=ds)


#: KD as a recovery tool (notebook 02, section 7): the ``mlp_fashion`` baseline fine-tuned
#: with 2-bit-weight QAT (per-channel, MSE-clipped grid, float activations) on a small set
#: of training images, where plain fine-tuning leaves a clear gap to the float model.
RECOVERY = dict(weight_bits=2, weight_method="mse", images=3000, epochs=10, batch_size=128,
                learning_rate=3e-4)


def recovery_images(seed: int, dataset: data_lib.Dataset) -> Any:
    """Indices into ``dataset.x_train`` of :func:`recovered_mlp`'s fine-tuning set."""
    return np.random.default_rng([seed, 4]).permutation(len(dataset.x_train))[
        :RECOVERY["images"]]


def recovered_mlp(seed: int = 0, *, temperature: float | None = None,
                  alpha: float | None = None, retrain: bool = False,
                  dataset: data_lib.Dataset | None = None, progress: bool = True
                  ) -> nnx.Module:
    """``mlp_fashion`` fine-tuned with 2-bit QAT (:data:`RECOVERY`), plainly or with KD, cached.

    Without ``temperature``/``alpha`` the loss is QAT's own cross-entropy
    (``qat.qat_loss``); with them, ``distill.kd_wrap`` keeps QAT's fake-quantized
    forward pass and replaces its loss by the distillation loss against the float model's
    logits (the same seed's baseline). Both fine-tune on the same :func:`recovery_images`
    with the same epochs, batch, learning rate and seed. Measure the result as deployed:
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

    def make() -> nnx.Module:
        dense = train_lib.baseline("mlp_fashion", seed, progress=progress, dataset=ds)
        pick = recovery_images(seed, ds)
        x, y = ds.x_train[pick], ds.y_train[pick]
        loss = qat.qat_loss(RECOVERY["weight_bits"], None,
                                weight_method=RECOVERY["weight_method"])
        if kd:
            y = (y, distill.teacher_logits(dense, x))
            loss = distill.kd_wrap(loss, temperature=temperature, alpha=alpha)
        train_lib.fit(dense, x, y, epochs=RECOVERY["epochs"],
                      batch_size=RECOVERY["batch_size"],
                      learning_rate=RECOVERY["learning_rate"], loss_fn=loss, seed=seed,
                      progress=progress)
        return dense

    return train_lib.cached(name, seed, make, retrain=retrain, dataset=ds,
                            metadata={"recipe": recipe, "from": f"mlp_fashion seed {seed}",
                                      "command": STUDENTS_COMMAND})


if __name__ == "__main__":
    main()
