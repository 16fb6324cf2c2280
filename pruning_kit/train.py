"""Training, evaluation, checkpoints and the cache of trained baselines.

Generic over any Flax NNX classifier: the loss is *handed in* (``loss_fn(model, x, y)
-> (loss, logits)``), so a distillation or sparsity-penalised loss plugs in without this
module knowing about it, and the optimizer is any ``optax.GradientTransformation`` (a
pruning wrapper included).

The training step is the fast functional NNX pattern: ``nnx.split`` the model and
optimizer once, ``jax.jit`` a pure step over their state, ``nnx.update`` at the end.

Introduced in ``notebooks/00_compression_and_measurement.ipynb``.

Examples:
    >>> from pruning_kit import data, models
    >>> ds = data.load_digits()
    >>> model = models.MLP(64, (32,), rngs=nnx.Rngs(0))
    >>> history = fit(model, ds.x_train, ds.y_train, epochs=10, batch_size=32,
    ...               learning_rate=3e-3, progress=False)
    >>> len(history["loss"]), evaluate(model, ds.x_test, ds.y_test) > 0.9
    (10, True)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import io
import json
import os
import platform
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from pruning_kit import data as data_lib
from pruning_kit import models as models_lib

LossFn = Callable[[nnx.Module, jax.Array, Any], tuple[jax.Array, jax.Array]]
CHECKPOINT_DIR = data_lib.DATA_CACHE / "checkpoints"
FORMAT_VERSION = 1


def cross_entropy_loss(model: nnx.Module, x: jax.Array, y: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy on integer labels; returns ``(loss, logits)``."""
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def _labels(y: Any) -> Any:
    """Integer labels from ``y`` (an array, or a tuple whose first item is the labels)."""
    return y[0] if isinstance(y, (tuple, list)) else y


def default_optimizer(learning_rate: float = 1e-3, steps: int | None = None,
                      weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam(W) with cosine decay to zero over ``steps`` (constant rate if ``steps`` is None)."""
    lr = optax.cosine_decay_schedule(learning_rate, steps) if steps else learning_rate
    if weight_decay:
        return optax.adamw(lr, weight_decay=weight_decay)
    return optax.adam(lr)


@functools.partial(jax.jit, static_argnums=(0, 3), donate_argnums=(1,))
def _train_step(graphdef, state, batch, loss_fn):
    x, y = batch
    model, optimizer = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, x, y)
    optimizer.update(model, grads)
    correct = jnp.sum(jnp.argmax(logits, -1) == _labels(y))
    return nnx.state((model, optimizer)), loss, correct


_MODE_ATTRIBUTES = ("deterministic", "use_running_average")


def mode_of(model: nnx.Module) -> list[tuple[nnx.Module, dict[str, Any]]]:
    """The train/eval flags of every submodule (``deterministic``, ``use_running_average``).

    Hand the result to :func:`restore_mode` to put a model back the way it came.
    """
    return [(m, {a: getattr(m, a) for a in _MODE_ATTRIBUTES if hasattr(m, a)})
            for _, m in nnx.iter_modules(model)]


def restore_mode(flags: list[tuple[nnx.Module, dict[str, Any]]]) -> None:
    """Undo any ``model.train()`` / ``model.eval()`` since :func:`mode_of` was taken."""
    for module, attrs in flags:
        for a, v in attrs.items():
            setattr(module, a, v)


@contextlib.contextmanager
def eval_mode(model: nnx.Module):
    """``with eval_mode(model):`` runs in inference mode, then restores the caller's mode.

    Examples:
        >>> m = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Dropout(0.5))
        >>> with eval_mode(m):
        ...     m.layers[1].deterministic
        True
        >>> m.layers[1].deterministic          # back the way it came
        False
    """
    flags = mode_of(model)
    model.eval()
    try:
        yield model
    finally:
        restore_mode(flags)


def own_arrays(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` that shares no array with it (safe to train or donate).

    ``nnx.clone`` and ``nnx.merge`` may hand back arrays that the original still holds;
    training such a copy with buffer donation would delete the original's arrays.

    Examples:
        >>> a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        >>> b = own_arrays(a)
        >>> b.kernel[...] is a.kernel[...], bool((b.kernel[...] == a.kernel[...]).all())
        (False, True)
    """
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(_copy_leaf, state))


def _copy_leaf(a):
    return jnp.array(a, copy=True) if isinstance(a, jax.Array) else a


def check_training_args(x: Any, y: Any, *, epochs: Any, lr: Any, batch_size: Any) -> None:
    """Validate the arguments of a training loop (``x``/``y``, epochs, rate, batch size).

    Shared by the loops that cannot use :func:`fit` (fine-tuning codebooks, shared weights).

    Raises:
        ValueError: non-positive or non-integer ``epochs``, a non-positive or non-finite
            ``lr``, a ``batch_size`` outside ``[1, len(x)]``, empty or mismatched data.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}.")
    _check_xy(x, y)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
            or not 1 <= batch_size <= len(x):
        raise ValueError(f"batch_size must be an integer from 1 to {len(x)}, got "
                         f"{batch_size!r}.")


def _check_xy(x, y, name: str = "x") -> None:
    labels = _labels(y)
    if len(x) != len(labels):
        raise ValueError(f"{name} has {len(x)} examples but the labels have {len(labels)}.")
    if len(x) == 0:
        raise ValueError(f"{name} is empty; pass at least one example.")
    labels = np.asarray(labels) if not hasattr(labels, "dtype") else labels
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        hint = (" They look one-hot: pass y.argmax(-1)." if labels.ndim == 2 else
                " Convert them with y.astype(np.int32) if they are whole numbers.")
        raise ValueError(
            f"Labels must be integer class indices of shape (N,); got {labels.dtype} with "
            f"shape {tuple(labels.shape)}.{hint}")


def fit(model: nnx.Module, x: np.ndarray, y: Any, *, epochs: int = 10,
        batch_size: int = 128, tx: optax.GradientTransformation | None = None,
        learning_rate: float = 1e-3, loss_fn: LossFn = cross_entropy_loss, seed: int = 0,
        validation: tuple[np.ndarray, np.ndarray] | None = None, progress: bool = True,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        ) -> dict[str, list[float]]:
    """Train ``model`` in place with mini-batch gradient descent.

    Args:
        model: any Flax NNX module mapping a batch of ``x`` to logits.
        x: inputs, first axis = examples.
        y: integer labels, or a tuple ``(labels, extra, ...)`` of arrays aligned with ``x``
            that is handed whole to ``loss_fn`` (e.g. precomputed teacher logits).
        epochs: passes over the data, ``>= 1``.
        batch_size: examples per step; the last partial batch is dropped so the step
            compiles once.
        tx: optimizer; default Adam with a cosine decay of ``learning_rate`` to zero.
        learning_rate: used only when ``tx`` is None.
        loss_fn: ``loss_fn(model, x, y) -> (scalar loss, logits)``.
        seed: seeds the shuffling (the model's initialisation is seeded by its ``rngs``).
        validation: optional ``(x_val, y_val)`` evaluated after each epoch.
        progress: show a ``tqdm`` bar over epochs.
        augment: optional ``augment(x_batch, rng) -> x_batch`` run on the host per batch.

    Returns:
        History dict with per-epoch ``loss``, ``train_acc``, ``seconds`` and, with
        ``validation``, ``val_acc``.

    The model trains in train mode and comes back in the mode it came in. Its arrays are
    copied before the jitted step donates them, so a model that shares arrays with this
    one (an ``nnx.clone``, say) is never left holding deleted arrays.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if isinstance(y, (tuple, list)) and loss_fn is cross_entropy_loss:
        raise ValueError(
            f"y is a {type(y).__name__} of {len(y)} arrays (labels plus extra targets, such as "
            "teacher logits), but loss_fn is the default cross-entropy, which takes integer "
            "labels only. Pass the loss that uses the extra targets, e.g. "
            "loss_fn=pruning_kit.distill.distillation_loss(temperature=4.0, alpha=0.9) for "
            "(labels, teacher_logits), or pass only the labels.")
    _check_xy(x, y)
    n = len(x)
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the data set ({n} "
                         f"examples); use batch_size <= {n}.")
    steps_per_epoch = n // batch_size
    if tx is None:
        tx = default_optimizer(learning_rate, steps_per_epoch * epochs)
    flags = mode_of(model)
    model.train()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    # donate only arrays made here: other live models may share the model's arrays
    state = jax.tree.map(_copy_leaf, state)
    ys = tuple(y) if isinstance(y, (tuple, list)) else (y,)
    history: dict[str, list[float]] = {"loss": [], "train_acc": [], "seconds": []}
    if validation is not None:
        history["val_acc"] = []
    bar = tqdm(range(epochs), desc="epochs", disable=not progress, leave=False)
    rng = np.random.default_rng(seed)
    for epoch in bar:
        start = time.perf_counter()
        order = np.random.default_rng([seed, epoch]).permutation(n)
        losses, correct = [], 0
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb = x[idx]
            if augment is not None:
                xb = augment(xb, rng)
            yb = tuple(a[idx] for a in ys)
            batch = (jnp.asarray(xb), yb if len(yb) > 1 else yb[0])
            state, loss, c = _train_step(graphdef, state, batch, loss_fn)
            losses.append(loss)
            correct += c
        mean_loss = float(jnp.mean(jnp.stack(losses)))
        if not np.isfinite(mean_loss):
            nnx.update((model, optimizer), state)
            restore_mode(flags)
            raise FloatingPointError(
                f"Training diverged at epoch {epoch + 1} (loss {mean_loss}). Lower the "
                "learning rate or check the inputs for NaN/inf.")
        history["loss"].append(mean_loss)
        history["train_acc"].append(float(correct) / (steps_per_epoch * batch_size))
        history["seconds"].append(time.perf_counter() - start)
        postfix = {"loss": f"{mean_loss:.3f}", "train": f"{history['train_acc'][-1]:.3f}"}
        if validation is not None:
            nnx.update((model, optimizer), state)
            history["val_acc"].append(evaluate(model, *validation))
            postfix["val"] = f"{history['val_acc'][-1]:.4f}"
        bar.set_postfix(postfix)
    nnx.update((model, optimizer), state)
    restore_mode(flags)
    return history


@functools.partial(jax.jit, static_argnums=(0,))
def _forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def predict(model: nnx.Module, x: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
    """Logits of ``model`` on ``x`` in inference mode (BatchNorm uses running averages).

    The model's own mode is left as it was.
    """
    if len(x) == 0:
        raise ValueError("x is empty; pass at least one example.")
    with eval_mode(model):
        graphdef, state = nnx.split(model)
    outs = [np.asarray(_forward(graphdef, state, jnp.asarray(x[i:i + batch_size])))
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def evaluate(model: nnx.Module, x: np.ndarray, y: np.ndarray, *,
             batch_size: int = 1000) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on ``(x, y)``."""
    _check_xy(x, y)
    return float(np.mean(predict(model, x, batch_size=batch_size).argmax(-1) == np.asarray(y)))


# --------------------------------------------------------------------------- checkpoints
def is_key(a: Any) -> bool:
    """Whether ``a`` is a typed PRNG key array (the RNG state of Dropout and friends)."""
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def host_array(a: Any) -> np.ndarray:
    """``a`` as a NumPy array; a PRNG key becomes its raw ``uint32`` key data.

    Examples:
        >>> host_array(jax.random.key(0)).dtype
        dtype('uint32')
    """
    return np.asarray(jax.random.key_data(a)) if is_key(a) else np.asarray(a)


def _flatten(tree: dict, prefix: str = "", *, to_numpy: bool = True) -> dict[str, Any]:
    """``{"layers/0/kernel": array, ...}`` from a nested dict of arrays."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name, to_numpy=to_numpy))
        else:
            out[name] = host_array(value) if to_numpy else value
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(int(p) if p.isdigit() else p, {})
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return tree


def save_model(model: nnx.Module, path: str | os.PathLike, *,
               metadata: dict[str, Any] | None = None, create_parent: bool = False) -> Path:
    """Save weights, BatchNorm statistics and the model's widths to one ``.npz`` file.

    The model's class name and ``model.config`` travel with the weights, so
    :func:`load_model` can rebuild a model whose widths differ from the defaults (a pruned
    one, say). The file is written to a temporary name and renamed: an interrupted save
    never leaves a half-written checkpoint. A missing folder raises
    ``FileNotFoundError`` unless ``create_parent=True``.

    Examples:
        >>> import tempfile
        >>> m = models_lib.MLP(64, (8,), rngs=nnx.Rngs(0))
        >>> p = save_model(m, Path(tempfile.mkdtemp()) / "m.npz", metadata={"note": "demo"})
        >>> load_model(p).config["hidden"]
        [8]
    """
    kind = type(model).__name__
    if kind not in models_lib.MODEL_CLASSES or not hasattr(model, "config"):
        raise ValueError(f"{kind} is not a registered model with a .config; register it in "
                         "pruning_kit.models.MODEL_CLASSES to save it.")
    arrays = _flatten(nnx.to_pure_dict(nnx.state(model)))
    header = {"format_version": FORMAT_VERSION, "class": kind, "config": model.config,
              "metadata": metadata or {}}
    buf = io.BytesIO()
    np.savez(buf, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
             **arrays)
    path = Path(path)
    data_lib._atomic_write(path, buf.getvalue(), create_parent=create_parent)
    return path


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header (class, config, metadata) of a checkpoint, without the weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {path} does not exist. Train the model first "
                                "(pruning_kit.train.baseline trains and caches baselines).")
    with open(path, "rb") as f:
        if f.read(4) == b"\x89PKC":
            raise ValueError(
                f"{path} is a compressed-model file written by pruning_kit.codec.save, not a "
                "checkpoint. Load it with pruning_kit.codec.load(path).")
    try:
        with np.load(path) as f:
            return json.loads(bytes(f["__header__"]).decode())
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable pruning_kit checkpoint ({err}). It may "
                         "be truncated; delete it and save or train again.") from err


def load_model(path: str | os.PathLike) -> nnx.Module:
    """Rebuild a model saved by :func:`save_model`, in eval mode.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated/corrupt, from a newer format, or its arrays do
            not match the stored widths.
    """
    path = Path(path)
    header = read_checkpoint_header(path)
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {header.get('format_version')}, this "
                         f"pruning_kit reads format {FORMAT_VERSION}; upgrade pruning_kit.")
    # Build an abstract model (shapes only, no random initialisation to compile), then
    # fill it with the stored arrays.
    model = nnx.eval_shape(lambda: models_lib.build(header["class"], header["config"]))
    state = nnx.state(model)
    try:
        with np.load(path) as f:
            flat = {k: f[k] for k in f.files if k != "__header__"}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is corrupt ({err}); delete it and save again.") from err
    expected = _flatten(nnx.to_pure_dict(state), to_numpy=False)
    if set(expected) != set(flat):
        differ = sorted(set(expected) ^ set(flat))
        raise ValueError(f"{path} does not match a {header['class']} with config "
                         f"{header['config']}: arrays differ ({differ}).")
    for k, v in expected.items():
        if is_key(v):  # RNG state is stored as its raw key data
            flat[k] = jax.random.wrap_key_data(flat[k])
        elif tuple(v.shape) != flat[k].shape:
            raise ValueError(f"{path}: array {k} has shape {flat[k].shape}, the model expects "
                             f"{tuple(v.shape)}.")
    nnx.replace_by_pure_dict(state, _unflatten({k: jnp.asarray(v) for k, v in flat.items()}))
    nnx.update(model, state)  # in place: the module keeps its definition order
    model.eval()
    return model


# --------------------------------------------------------------------------- baselines
def shift_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and +-2 pixel translation (host side, per batch)."""
    flip = rng.random(len(x)) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    dy, dx = rng.integers(-2, 3, size=2)
    return np.roll(x, (int(dy), int(dx)), axis=(1, 2))


RECIPES: dict[str, dict[str, Any]] = {
    "mlp_fashion": dict(dataset="fashion_mnist",
                        build=lambda s: models_lib.lenet_300_100(seed=s),
                        epochs=20, batch_size=128, learning_rate=1e-3, augment=None),
    "cnn_fashion": dict(dataset="fashion_mnist", build=lambda s: models_lib.small_cnn(seed=s),
                        epochs=15, batch_size=128, learning_rate=2e-3, augment=shift_augment),
    "mlp_digits": dict(dataset="digits",
                       build=lambda s: models_lib.MLP(64, (128, 64), rngs=nnx.Rngs(s)),
                       epochs=60, batch_size=32, learning_rate=1e-3, augment=None),
}


def checkpoint_path(name: str, seed: int = 0) -> Path:
    """Where the cached baseline ``name`` (a key of :data:`RECIPES`) for ``seed`` lives.

    The folder is ``$PRUNING_KIT_CHECKPOINTS`` when set, else ``data/checkpoints/``.
    """
    folder = Path(os.environ.get("PRUNING_KIT_CHECKPOINTS", CHECKPOINT_DIR))
    return folder / f"{name}_seed{seed}.npz"


def train_baseline(name: str, seed: int = 0, *, dataset: data_lib.Dataset | None = None,
                   progress: bool = True, save: bool = True) -> nnx.Module:
    """Train the baseline ``name`` from its recipe with ``seed`` and (by default) cache it."""
    if name not in RECIPES:
        raise ValueError(f"Unknown baseline {name!r}; choose one of {sorted(RECIPES)}.")
    recipe = RECIPES[name]
    ds = dataset if dataset is not None else data_lib.load(recipe["dataset"])
    model = recipe["build"](seed)
    start = time.perf_counter()
    history = fit(model, ds.x_train, ds.y_train, epochs=recipe["epochs"],
                  batch_size=recipe["batch_size"], learning_rate=recipe["learning_rate"],
                  seed=seed, augment=recipe["augment"], progress=progress)
    seconds = time.perf_counter() - start
    acc = evaluate(model, ds.x_test, ds.y_test)
    if save:
        meta = {"baseline": name, "seed": seed, "dataset": recipe["dataset"],
                "split": ds.split.describe(),
                "val_accuracy": evaluate(model, ds.x_val, ds.y_val),
                "test_accuracy": acc, "epochs": recipe["epochs"],
                "train_seconds": round(seconds, 1), "final_loss": history["loss"][-1],
                "history": {k: [round(v, 5) for v in vs] for k, vs in history.items()},
                "trained_on": f"{platform.machine()} {jax.default_backend()} "
                              f"({os.cpu_count()} CPUs), jax {jax.__version__}",
                "date": _dt.date.today().isoformat(),
                "command": f"python -m pruning_kit.train {name} --seed {seed}"}
        save_model(model, checkpoint_path(name, seed), metadata=meta, create_parent=True)
    return model


def baseline(name: str, seed: int = 0, *, retrain: bool = False, progress: bool = True,
             dataset: data_lib.Dataset | None = None) -> nnx.Module:
    """Load the cached baseline ``name`` for ``seed``, training and caching it if missing.

    The recipes (:data:`RECIPES`) are the single definition of how each baseline is made;
    ``python -m pruning_kit.train NAME --seed S`` reproduces a committed checkpoint.

    Examples:
        >>> model = baseline("mlp_digits")            # loads data/checkpoints/..., or trains
        >>> type(model).__name__, model.config["hidden"]
        ('MLP', [128, 64])
    """
    path = checkpoint_path(name, seed)
    if name not in RECIPES:
        raise ValueError(f"Unknown baseline {name!r}; choose one of {sorted(RECIPES)}.")
    if path.exists() and not retrain:
        ds = dataset if dataset is not None else data_lib.load(RECIPES[name]["dataset"])
        check_split(path, ds, command=f"python -m pruning_kit.train {name} --seed {seed}")
        return load_model(path)
    return train_baseline(name, seed, dataset=dataset, progress=progress)


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
    recorded = read_checkpoint_header(path).get("metadata", {}).get("split")
    expected = dataset.split.describe()
    if recorded == expected:
        return True
    how = f"Retrain it ({command})" if command else "Retrain it"
    warnings.warn(
        f"{path} was trained on split {recorded or '(not recorded)'}, not on {dataset.name}'s "
        f"current split {expected}: it may have seen the validation images. {how}.",
        SplitMismatchWarning, stacklevel=2)
    return False


def cached(name: str, seed: int, make: Callable[[], nnx.Module], *, retrain: bool = False,
           metadata: dict[str, Any] | None = None,
           dataset: data_lib.Dataset | None = None) -> nnx.Module:
    """Load the checkpoint ``name``/``seed`` if it exists, else ``make()`` it and save it.

    For models derived from a baseline (pruned and fine-tuned, distilled, ...) that take
    minutes to make: the benchmark makes them once, notebooks load them. ``metadata``
    (say, the recipe and the command that made it) is stored with the weights; read it
    back with :func:`read_checkpoint_header`. With ``dataset``, its split and validation
    accuracy are recorded, and a cached file trained on another split is remade (with a
    :class:`SplitMismatchWarning` saying so).

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
        if dataset is None or check_split(path, dataset):
            return load_model(path)
        # trained on another split (warned above): a stale cache entry is remade
    start = time.perf_counter()
    model = make()
    meta = {"name": name, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
            "date": _dt.date.today().isoformat(), **(metadata or {})}
    if dataset is not None:
        meta["dataset"] = dataset.name
        meta["split"] = dataset.split.describe()
        meta["val_accuracy"] = evaluate(model, dataset.x_val, dataset.y_val)
    save_model(model, path, metadata=meta, create_parent=True)
    return model


def main(argv: list[str] | None = None) -> None:
    """``python -m pruning_kit.train NAME [--seed S]``: (re)train and cache a baseline."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("names", nargs="+", choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    for name in args.names:
        for seed in args.seed:
            model = train_baseline(name, seed)
            meta = read_checkpoint_header(checkpoint_path(name, seed))["metadata"]
            print(f"{name} seed {seed}: test accuracy {100 * meta['test_accuracy']:.2f}% "
                  f"in {meta['train_seconds']} s -> {checkpoint_path(name, seed)}")
            del model


if __name__ == "__main__":
    main()
