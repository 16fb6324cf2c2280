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

import optax
from flax import nnx

from pruning_kit import data as data_lib
from pruning_kit import distill, prune, structure
from pruning_kit import models as models_lib
from pruning_kit import train as train_lib

#: Gradual magnitude pruning of the MLP. ``final_sparsity`` is set so that 90 % of all
#: weights (biases included) end up zero; ``ramp_fraction`` is the candidate of
#: :data:`GMP_RAMP_CANDIDATES` with the best validation accuracy on seed 0.
GMP_MLP = dict(final_sparsity=0.905, epochs=20, batch_size=128, learning_rate=1e-3,
               scope="global", ramp_fraction=0.7, update_every=100)
GMP_RAMP_CANDIDATES = (0.5, 0.7, 0.9)

#: Channel removal of the CNN: the fastest <= half-MAC widths that
#: ``structure.search_widths`` found on a 2-core CPU, BatchNorm-scale importance, and
#: fine-tuning with the dense model as online teacher. ``epochs`` is the candidate of
#: :data:`HALF_MAC_EPOCH_CANDIDATES` with the best validation accuracy on seed 0
#: (``python -m pruning_kit.recipes`` prints the choice).
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
        best = max(candidates, key=lambda v: round(scores[v], 4))
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


if __name__ == "__main__":
    main()
