"""The course's trained models, cached: the baselines and the compressed models made from them.

Every model a notebook uses is made once by the code here and cached in
``data/checkpoints/<name>_seed<S>.npz`` (``$PRUNING_KIT_CHECKPOINTS`` overrides the folder),
with how it was made, on which machine, its data split and its validation accuracy in the
file's header (``train.read_checkpoint_header``). Notebooks load them, so a lesson that
would fine-tune for minutes on 2 CPU cores runs in seconds; ``retrain=True`` remakes one.
Every setting below was chosen on the validation split; the test set is only reported.

* Baselines (:data:`BASELINES`, :func:`baseline`): LeNet-300-100 and the residual SmallCNN on
  Fashion-MNIST, an MLP on sklearn's digits. ``python -m pruning_kit.zoo baselines NAME
  --seed S`` retrains one.
* :func:`gmp_mlp` -- LeNet-300-100 pruned to 90.5% sparsity with gradual magnitude pruning
  (notebook 03, ``python -m benchmarks.pruning``).
* :func:`small_dense_mlp` -- a dense MLP with as many weights as the pruned one keeps.
* :func:`half_mac_cnn` -- the SmallCNN with the residual stage cut from 32 to 16 channels
  (2.3x fewer MACs), fine-tuned with the dense CNN as teacher (notebook 04).
* ``python -m pruning_kit.zoo compressed`` chooses the settings in :data:`CHOICES` on
  validation and remakes the compressed models for seeds 0, 1, 2 (about 30 minutes on 2 CPU
  cores).

The distilled students of notebook 02 live in :mod:`pruning_kit.students`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optax
from flax import nnx

from pruning_kit import data as data_lib
from pruning_kit import distill, measure, prune, structure, validate
from pruning_kit import models as models_lib
from pruning_kit import train as train_lib

CHECKPOINT_DIR = data_lib.DATA_CACHE / "checkpoints"

BASELINES: dict[str, dict[str, Any]] = {
    "mlp_fashion": dict(dataset="fashion_mnist",
                        build=lambda s: models_lib.lenet_300_100(seed=s),
                        epochs=20, batch_size=128, learning_rate=1e-3, augment=None),
    "cnn_fashion": dict(dataset="fashion_mnist", build=lambda s: models_lib.small_cnn(seed=s),
                        epochs=15, batch_size=128, learning_rate=2e-3,
                        augment=train_lib.shift_augment),
    "mlp_digits": dict(dataset="digits",
                       build=lambda s: models_lib.MLP(64, (128, 64), rngs=nnx.Rngs(s)),
                       epochs=60, batch_size=32, learning_rate=1e-3, augment=None),
}


def checkpoint_path(name: str, seed: int = 0) -> Path:
    """Where the cached baseline ``name`` (a key of :data:`BASELINES`) for ``seed`` lives.

    The folder is ``$PRUNING_KIT_CHECKPOINTS`` when set, else ``data/checkpoints/``.
    """
    folder = Path(os.environ.get("PRUNING_KIT_CHECKPOINTS", CHECKPOINT_DIR))
    return folder / f"{name}_seed{seed}.npz"


def train_baseline(name: str, seed: int = 0, *, dataset: data_lib.Dataset | None = None,
                   progress: bool = True, save: bool = True) -> nnx.Module:
    """Train the baseline ``name`` from its recipe with ``seed`` and (by default) cache it."""
    if name not in BASELINES:
        raise ValueError(f"Unknown baseline {name!r}; choose one of {sorted(BASELINES)}.")
    recipe = BASELINES[name]
    ds = dataset if dataset is not None else data_lib.load(recipe["dataset"])
    model = recipe["build"](seed)
    start = time.perf_counter()
    history = train_lib.fit(model, ds.x_train, ds.y_train, epochs=recipe["epochs"],
                  batch_size=recipe["batch_size"], learning_rate=recipe["learning_rate"],
                  seed=seed, augment=recipe["augment"], progress=progress)
    seconds = time.perf_counter() - start
    acc = train_lib.evaluate(model, ds.x_test, ds.y_test)
    if save:
        meta = {"baseline": name, "seed": seed, "dataset": recipe["dataset"],
                "split": ds.split.describe(),
                "val_accuracy": train_lib.evaluate(model, ds.x_val, ds.y_val),
                "test_accuracy": acc, "epochs": recipe["epochs"],
                "train_seconds": round(seconds, 1), "final_loss": history["loss"][-1],
                "history": {k: [round(v, 5) for v in vs] for k, vs in history.items()},
                "trained_on": trained_on(),
                "date": _dt.date.today().isoformat(),
                "command": f"python -m pruning_kit.zoo baselines {name} --seed {seed}"}
        train_lib.save_model(model, checkpoint_path(name, seed), metadata=meta, create_parent=True)
    return model


def trained_on() -> str:
    """Where a checkpoint is being made, for its header: CPU, vector instructions, cores, JAX.

    Floating-point rounding differs between CPUs (AVX2 against AVX-512 kernels), so the same
    recipe trained on two machines gives two slightly different models; the header says
    which machine made the committed one.
    """
    i = measure.machine_info()
    return (f"{i['cpu']} [{i['isa']}] ({i['cores']} cores, {i['machine']}), "
            f"{i['backend']}, jax {i['jax']}")


def baseline(name: str, seed: int = 0, *, retrain: bool = False, progress: bool = True,
             dataset: data_lib.Dataset | None = None) -> nnx.Module:
    """Load the cached baseline ``name`` for ``seed``, training and caching it if missing.

    The settings in :data:`BASELINES` are the single definition of how each baseline is made;
    ``python -m pruning_kit.zoo baselines NAME --seed S`` reproduces a committed checkpoint.

    Examples:
        >>> model = baseline("mlp_digits")            # loads data/checkpoints/..., or trains
        >>> type(model).__name__, model.config["hidden"]
        ('MLP', [128, 64])
    """
    path = checkpoint_path(name, seed)
    if name not in BASELINES:
        raise ValueError(f"Unknown baseline {name!r}; choose one of {sorted(BASELINES)}.")
    if path.exists() and not retrain:
        ds = dataset if dataset is not None else data_lib.load(BASELINES[name]["dataset"])
        check_split(path, ds, command=f"python -m pruning_kit.zoo baselines {name} --seed {seed}")
        return train_lib.load_model(path)
    return train_baseline(name, seed, dataset=dataset, progress=progress)


class RecipeMismatchWarning(UserWarning):
    """A cached checkpoint records another recipe than the one asked for."""


def _plain(value: Any) -> Any:
    """``value`` as its checkpoint header stores it (JSON: tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


def check_recipe(path: str | os.PathLike, recipe: Any) -> bool:
    """Whether the checkpoint at ``path`` records ``recipe`` (``None``: nothing to check).

    Compared as the header stores it (JSON), so ``(8, 16)`` matches ``[8, 16]``. A dict
    recipe matches when every entry asked for is recorded with that value (a checkpoint may
    record more, e.g. facts that do not change the model). On a difference this warns
    (:class:`RecipeMismatchWarning`) with the entries that differ.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "m.npz"
        >>> model = models_lib.MLP(4, (2,), rngs=nnx.Rngs(0))
        >>> _ = train_lib.save_model(model, path, metadata={"recipe": {"epochs": 3, "w": (8, 16)}})
        >>> check_recipe(path, {"epochs": 3, "w": [8, 16]}), check_recipe(path, {"epochs": 3})
        (True, True)
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     check_recipe(path, {"epochs": 5, "w": (8, 16)})
        False
        >>> str(caught[0].message).split("npz ")[1]
        'was made with another recipe (epochs: 3 recorded, 5 asked for); it is remade.'
    """
    if recipe is None:
        return True
    recorded = train_lib.read_checkpoint_header(path).get("metadata", {}).get("recipe")
    want = _plain(recipe)
    if isinstance(recorded, dict) and isinstance(want, dict):
        wrong = [k for k in want if k not in recorded or recorded[k] != want[k]]
        if not wrong:
            return True
        diff = ", ".join(f"{k}: {recorded.get(k, '(none)')} recorded, {want[k]} asked for"
                         for k in wrong)
    elif recorded == want:
        return True
    else:
        diff = f"{recorded!r} recorded, {want!r} asked for"
    validate.warn(f"{path} was made with another recipe ({diff}); it is remade.",
                  RecipeMismatchWarning)
    return False


class SplitMismatchWarning(UserWarning):
    """A checkpoint was trained on another train/validation split than the data set's."""


def check_split(path: str | os.PathLike, dataset: data_lib.Dataset, *,
                command: str | None = None) -> bool:
    """Whether the checkpoint at ``path`` was trained on ``dataset``'s train split.

    Checkpoints record the split they were trained on (sizes and a hash of the validation
    indices, :meth:`pruning_kit.data.Split.describe`). A checkpoint that records another
    split, or none, may have trained on today's validation images, so choices made on
    them would be biased: this warns (:class:`SplitMismatchWarning`) with what to run.

    Returns:
        True when the recorded split is ``dataset.split``.
    """
    recorded = train_lib.read_checkpoint_header(path).get("metadata", {}).get("split")
    expected = dataset.split.describe()
    if recorded == expected:
        return True
    how = f"Retrain it ({command})" if command else "Retrain it"
    validate.warn(
        f"{path} was trained on split {recorded or '(not recorded)'}, not on {dataset.name}'s "
        f"current split {expected}: it may have seen the validation images. {how}.",
        SplitMismatchWarning)
    return False


def cached(name: str, seed: int, make: Callable[[], nnx.Module], *, retrain: bool = False,
           metadata: dict[str, Any] | None = None,
           dataset: data_lib.Dataset | None = None) -> nnx.Module:
    """Load the checkpoint ``name``/``seed`` if it exists, else ``make()`` it and save it.

    For models derived from a baseline (pruned and fine-tuned, distilled, ...) that take
    minutes to make: the benchmark makes them once, notebooks load them. ``metadata``
    (say, the recipe and the command that made it) is stored with the weights; read it
    back with ``train.read_checkpoint_header``. With ``dataset``, its split and validation
    accuracy are recorded, and a cached file trained on another split is remade (with a
    :class:`SplitMismatchWarning` saying so). A cached file whose recorded
    ``metadata["recipe"]`` differs from the one asked for is remade too (with a
    :class:`RecipeMismatchWarning` naming the entries that differ), so a changed recipe
    never loads a model made by the old one.

    Examples:
        >>> import tempfile
        >>> os.environ["PRUNING_KIT_CHECKPOINTS"] = tempfile.mkdtemp()
        >>> make = lambda: models_lib.MLP(4, (2,), rngs=nnx.Rngs(0))
        >>> cached("tiny", 0, make).config["hidden"]        # made and saved
        [2]
        >>> checkpoint_path("tiny").exists()
        True
        >>> del os.environ["PRUNING_KIT_CHECKPOINTS"]
    """
    path = checkpoint_path(name, seed)
    if path.exists() and not retrain:
        if ((dataset is None or check_split(path, dataset))
                and check_recipe(path, (metadata or {}).get("recipe"))):
            return train_lib.load_model(path)
        # trained on another split or by another recipe (warned above): remade
    start = time.perf_counter()
    model = make()
    meta = {"name": name, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
            "date": _dt.date.today().isoformat(), "trained_on": trained_on(),
            **(metadata or {})}
    if dataset is not None:
        meta["dataset"] = dataset.name
        meta["split"] = dataset.split.describe()
        meta["val_accuracy"] = train_lib.evaluate(model, dataset.x_val, dataset.y_val)
    train_lib.save_model(model, path, metadata=meta, create_parent=True)
    return model


#: Gradual magnitude pruning of the MLP. ``final_sparsity`` (of the kernels; biases are
#: never pruned) is set so that at least 90 % of all parameters, biases included, end up
#: zero (90.36 %; 0.9 of the kernels would leave 89.86 %); ``ramp_fraction`` was compared
#: with the other :data:`GMP_RAMP_CANDIDATES` on validation (seed 0) and no candidate beat
#: it beyond noise (:func:`pick`).
GMP_MLP = dict(final_sparsity=0.905, epochs=20, batch_size=128, learning_rate=1e-3,
               scope="global", ramp_fraction=0.5, update_every=100)
GMP_RAMP_CANDIDATES = (0.5, 0.7, 0.9)

#: Channel removal of the CNN: the fastest <= half-MAC widths that
#: ``structure.search_widths`` found on a 2-core CPU, BatchNorm-scale importance, and
#: fine-tuning with the dense model as online teacher. ``epochs`` is compared with the
#: other :data:`HALF_MAC_EPOCH_CANDIDATES` on validation (seed 0) and kept unless one beats
#: it beyond noise (:func:`pick`; ``python -m pruning_kit.zoo compressed`` prints the scores).
HALF_MAC_CNN = dict(keep={"stage2": 16, "res_inner": 16}, criterion="bn_scale", epochs=10,
                    batch_size=128, learning_rate=2e-3, temperature=2.0, alpha=0.5)
HALF_MAC_EPOCH_CANDIDATES = (6, 10)


def _variant(settings: dict[str, Any], name: str, overrides: dict[str, Any],
             dataset: data_lib.Dataset | None) -> tuple[dict[str, Any], str, data_lib.Dataset]:
    """Settings with ``overrides`` applied, the cache name of that variant, the data set.

    A changed setting is cached under its own name, so it never overwrites the course's
    checkpoint: ``mlp_fashion_gmp_ramp_fraction0.7``.
    """
    unknown = set(overrides) - set(settings)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; change {sorted(settings)}.")
    if overrides:
        name += "_" + "_".join(f"{k}{v}" for k, v in sorted(overrides.items()))
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()
    return {**settings, **overrides}, name, ds


def gmp_mlp(seed: int = 0, *, retrain: bool = False, dataset: data_lib.Dataset | None = None,
            progress: bool = True, **overrides: Any) -> nnx.Module:
    """The ``mlp_fashion`` baseline pruned while fine-tuning (:data:`GMP_MLP`), cached.

    The sparsity rises along Zhu & Gupta's cubic schedule over the first
    ``ramp_fraction`` of the steps, then the surviving weights keep training.
    ``overrides`` change :data:`GMP_MLP` entries (a changed recipe is cached under its own
    name, so it never overwrites the course's checkpoint).
    """
    recipe, name, ds = _variant(GMP_MLP, "mlp_fashion_gmp", overrides, dataset)

    def make() -> nnx.Module:
        model = baseline("mlp_fashion", seed, progress=progress)
        steps = recipe["epochs"] * (len(ds.x_train) // recipe["batch_size"])
        schedule = prune.polynomial_schedule(recipe["final_sparsity"], 0,
                                             int(recipe["ramp_fraction"] * steps))
        tx = prune.gradual_pruning(
            optax.adam(optax.cosine_decay_schedule(recipe["learning_rate"], steps)),
            schedule, update_every=recipe["update_every"], scope=recipe["scope"])
        train_lib.fit(model, ds.x_train, ds.y_train, epochs=recipe["epochs"],
                      batch_size=recipe["batch_size"], tx=tx, seed=seed, progress=progress)
        return model

    return cached(name, seed, make, retrain=retrain, dataset=ds,
                            metadata={"recipe": recipe, "from": f"mlp_fashion seed {seed}"})


def oneshot_mlp(seed: int = 0, *, retrain: bool = False,
                dataset: data_lib.Dataset | None = None, progress: bool = True) -> nnx.Module:
    """The control of :func:`gmp_mlp`: pruned in one shot, then fine-tuned, cached.

    The ``mlp_fashion`` baseline gets a global magnitude mask at :data:`GMP_MLP`'s
    ``final_sparsity`` at once, then trains with that mask fixed (``prune.keep_masked``) for
    the same epochs, batch, learning rate and schedule as :func:`gmp_mlp`. Only *when* the
    weights are removed differs, so the pair separates gradualness from retraining.
    """
    ds = dataset if dataset is not None else data_lib.load_fashion_mnist()
    recipe = {k: GMP_MLP[k] for k in ("final_sparsity", "epochs", "batch_size",
                                      "learning_rate", "scope")}

    def make() -> nnx.Module:
        model = baseline("mlp_fashion", seed, progress=progress)
        params = nnx.state(model, nnx.Param)
        masks = prune.magnitude_masks(params, recipe["final_sparsity"], scope=recipe["scope"])
        nnx.update(model, prune.apply_masks(params, masks))
        steps = recipe["epochs"] * (len(ds.x_train) // recipe["batch_size"])
        tx = prune.keep_masked(
            optax.adam(optax.cosine_decay_schedule(recipe["learning_rate"], steps)), masks)
        train_lib.fit(model, ds.x_train, ds.y_train, epochs=recipe["epochs"],
                      batch_size=recipe["batch_size"], tx=tx, seed=seed, progress=progress)
        return model

    return cached("mlp_fashion_oneshot_ft", seed, make, retrain=retrain, dataset=ds,
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

    return cached("mlp_fashion_small_dense", seed, make, retrain=retrain, dataset=ds,
                            metadata={"recipe": "784-32-11-10, 40 epochs, Adam 1e-3 cosine"})


def half_mac_cnn(seed: int = 0, *, retrain: bool = False,
                 dataset: data_lib.Dataset | None = None, progress: bool = True,
                 **overrides: Any) -> nnx.Module:
    """The ``cnn_fashion`` baseline with channels removed (:data:`HALF_MAC_CNN`), cached.

    ``overrides`` change :data:`HALF_MAC_CNN` entries (cached under their own name).
    """
    recipe, name, ds = _variant(HALF_MAC_CNN, "cnn_fashion_half", overrides, dataset)

    def make() -> nnx.Module:
        teacher = baseline("cnn_fashion", seed, progress=progress)
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

    return cached(name, seed, make, retrain=retrain, dataset=ds,
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
        >>> pick({0.5: 0.9032, 0.9: 0.9044}, 0.5, 5000)   # 0.12 pt: noise
        0.5
        >>> pick({6: 0.880, 10: 0.900}, 6, 5000)         # 2 pt: real
        10
    """
    best = max(scores, key=scores.get)
    p = scores[current]
    se = measure.accuracy_standard_error(p, n_val)
    return best if scores[best] - scores[current] > se else current


#: What :func:`main` chooses on validation: recipe, entry, candidates, current value.
CHOICES = (
    (gmp_mlp, "ramp_fraction", GMP_RAMP_CANDIDATES, "GMP_MLP"),
    (half_mac_cnn, "epochs", HALF_MAC_EPOCH_CANDIDATES, "HALF_MAC_CNN"),
)


def make_compressed() -> None:
    """Choose the settings in :data:`CHOICES` on validation, then make every compressed model."""
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
        for make in (gmp_mlp, oneshot_mlp, small_dense_mlp, half_mac_cnn):
            model = make(seed, dataset=ds, progress=False)
            print(f"{make.__name__} seed {seed}: validation "
                  f"{100 * train_lib.evaluate(model, ds.x_val, ds.y_val):.2f}%")


def main(argv: list[str] | None = None) -> None:
    """``python -m pruning_kit.zoo baselines NAME [--seed S]`` or ``... zoo compressed``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    base = sub.add_parser("baselines", help="(re)train and cache baselines")
    base.add_argument("names", nargs="+", choices=sorted(BASELINES))
    base.add_argument("--seed", type=int, nargs="+", default=[0])
    sub.add_parser("compressed", help="choose settings on validation, remake compressed models")
    args = parser.parse_args(argv)
    if args.what == "compressed":
        make_compressed()
        return
    for name in args.names:
        for seed in args.seed:
            model = train_baseline(name, seed)
            meta = train_lib.read_checkpoint_header(checkpoint_path(name, seed))["metadata"]
            print(f"{name} seed {seed}: test accuracy {100 * meta['test_accuracy']:.2f}% "
                  f"in {meta['train_seconds']} s -> {checkpoint_path(name, seed)}")
            del model


if __name__ == "__main__":
    main()
