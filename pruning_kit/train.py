"""Training and evaluation: one jitted optax loop for any NNX model, with a pluggable loss.

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
import functools
import inspect
import numbers
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from pruning_kit import validate

# checkpoints: the format lives in pruning_kit.checkpoint; train.save_model & co stay here
from pruning_kit.checkpoint import host_array as host_array
from pruning_kit.checkpoint import is_key as is_key
from pruning_kit.checkpoint import load_model as load_model
from pruning_kit.checkpoint import read_checkpoint_header as read_checkpoint_header
from pruning_kit.checkpoint import save_model as save_model

LossFn = Callable[[nnx.Module, jax.Array, Any], tuple[jax.Array, jax.Array]]


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


def _is_integer(v: Any) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_positive_number(v: Any) -> bool:
    """A finite real number above 0: a Python, NumPy or JAX scalar (a 0-d array) of an
    integer or float dtype; not a bool."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if not isinstance(v, numbers.Real):
        kind = getattr(getattr(v, "dtype", None), "kind", None)
        if np.shape(v) != () or kind not in ("i", "u", "f"):
            return False
    return bool(np.isfinite(v)) and float(v) > 0


def _check_epochs(epochs: Any) -> None:
    if not _is_integer(epochs) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")


def check_training_args(x: Any, y: Any, *, epochs: Any, lr: Any, batch_size: Any) -> None:
    """Validate the arguments of a training loop (``x``/``y``, epochs, rate, batch size).

    Shared by the loops that cannot use :func:`fit` (fine-tuning codebooks, shared weights).

    Raises:
        ValueError: non-positive or non-integer ``epochs``, a non-positive or non-finite
            ``lr``, a ``batch_size`` outside ``[1, len(x)]``, empty or mismatched data.
    """
    _check_epochs(epochs)
    if not _is_positive_number(lr):
        raise ValueError(f"lr must be a positive number (a float such as 1e-3), got {lr!r}.")
    _check_xy(x, y)
    if not _is_integer(batch_size) or not 1 <= batch_size <= len(x):
        raise ValueError(f"batch_size must be an integer from 1 to {len(x)}, got "
                         f"{batch_size!r}.")


def _check_xy(x, y, name: str = "x") -> None:
    if not hasattr(x, "shape") or np.ndim(x) < 1:
        raise ValueError(f"{name} must be an array with the examples along its first axis "
                         f"(e.g. shape (N, features) or (N, H, W, C)); got "
                         f"{type(x).__name__} of shape {np.shape(x)}. Pass np.asarray(...) "
                         "of a batch of examples.")
    labels = _labels(y)
    if len(x) != len(labels):
        raise ValueError(f"{name} has {len(x)} examples but the labels have {len(labels)}.")
    if isinstance(y, (tuple, list)):
        for k, extra in enumerate(y[1:], start=1):
            if len(extra) != len(x):
                raise ValueError(
                    f"y[{k}] (an extra target handed to the loss, e.g. teacher logits) has "
                    f"{len(extra)} rows but {name} has {len(x)} examples; pass one row per "
                    "example, in the same order.")
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
    _check_epochs(epochs)
    if not _is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if tx is None and not _is_positive_number(learning_rate):
        raise ValueError(f"learning_rate must be a positive finite number (a float, or a "
                         f"NumPy/JAX scalar), got {learning_rate!r} (typical: 1e-3 for Adam).")
    if isinstance(y, (tuple, list)) and loss_fn is cross_entropy_loss:
        raise ValueError(
            f"y is a {type(y).__name__} of {len(y)} arrays (labels plus extra targets, such as "
            "teacher logits), but loss_fn is the default cross-entropy, which takes integer "
            "labels only. Pass the loss that uses the extra targets, e.g. "
            "loss_fn=pruning_kit.distill.distillation_loss(temperature=4.0, alpha=0.9) for "
            "(labels, teacher_logits), or pass only the labels.")
    _check_xy(x, y)
    epochs, batch_size = int(epochs), int(batch_size)
    n = len(x)
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the data set ({n} "
                         f"examples); use batch_size <= {n}.")
    _check_mode_argument(model)
    _warn_half_precision(model, tx_given=tx is not None)
    if tx is None:
        tx = default_optimizer(float(learning_rate), (n // batch_size) * epochs)
    flags = mode_of(model)
    try:
        model.train()
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        graphdef, state = nnx.split((model, optimizer))
        _check_forward(graphdef, state, x[:batch_size], y, loss_fn)
        # donate only arrays made here: other live models may share the model's arrays
        state = jax.tree.map(_copy_leaf, state)
        return _fit_loop(model, optimizer, graphdef, state, x, y, epochs=epochs,
                         batch_size=batch_size, loss_fn=loss_fn, seed=seed,
                         validation=validation, progress=progress, augment=augment)
    finally:   # the caller's mode comes back however training ends (error, Ctrl-C)
        restore_mode(flags)


def _fit_loop(model, optimizer, graphdef, state, x, y, *, epochs, batch_size, loss_fn, seed,
              validation, progress, augment) -> dict[str, list[float]]:
    n = len(x)
    steps_per_epoch = n // batch_size
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
        if not np.isfinite(mean_loss):   # the model keeps its last finite weights
            raise FloatingPointError(
                f"Training diverged at epoch {epoch + 1} (loss {mean_loss}); the model keeps "
                f"the weights it had {'after epoch ' + str(epoch) if epoch else 'before fit'}. "
                "Lower the learning rate or check the inputs and targets for NaN/inf.")
        history["loss"].append(mean_loss)
        history["train_acc"].append(float(correct) / (steps_per_epoch * batch_size))
        history["seconds"].append(time.perf_counter() - start)
        postfix = {"loss": f"{mean_loss:.3f}", "train": f"{history['train_acc'][-1]:.3f}"}
        if validation is not None:   # a copy: the next step donates ``state``
            nnx.update((model, optimizer), jax.tree.map(_copy_leaf, state))
            history["val_acc"].append(evaluate(model, *validation))
            postfix["val"] = f"{history['val_acc'][-1]:.4f}"
        bar.set_postfix(postfix)
    nnx.update((model, optimizer), state)
    return history


def _check_forward(graphdef, state, xb, y, loss_fn) -> None:
    """Trace one loss evaluation on a batch (shapes only: nothing runs or changes) so that a
    wrong input shape or out-of-range labels fail here, with a message, not deep in JAX."""
    labels = np.asarray(_labels(y))
    yb = tuple(a[:len(xb)] for a in y) if isinstance(y, (tuple, list)) else y[:len(xb)]

    def loss_of(st):
        model, _ = nnx.merge(graphdef, st)
        return loss_fn(model, jnp.asarray(xb), yb)

    try:
        _, logits = jax.eval_shape(loss_of, state)
    except ValueError:   # already says what is wrong (the package's losses and layers)
        raise
    except Exception as err:  # noqa: BLE001 - re-raised with what to check
        raise ValueError(
            f"The model (or the loss) cannot run on a training batch of shape "
            f"{tuple(np.shape(xb))}: {type(err).__name__}: {str(err).splitlines()[0][:300]}. "
            "Check that x has the shape the model expects (e.g. (N, 784) for an MLP on "
            "flattened images, (N, 28, 28, 1) for a CNN) and that the extra targets in y "
            "match the loss.") from err
    classes = logits.shape[-1] if getattr(logits, "ndim", 0) >= 1 else None
    if classes is not None and labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"Labels run from {labels.min()} to {labels.max()}, but the model gives {classes} "
            f"logits per example, so a label must lie in 0..{classes - 1}. Check the labels "
            "(or give the model's last layer as many outputs as there are classes).")


def _warn_half_precision(model: nnx.Module, *, tx_given: bool) -> None:
    """Warn that the default Adam's eps (1e-8) underflows in float16 parameters."""
    if tx_given:
        return
    dtypes = {str(v.dtype) for v in jax.tree.leaves(nnx.state(model, nnx.Param))
              if hasattr(v, "dtype")}
    if "float16" in dtypes:
        validate.warn(
            "The model has float16 parameters: the default optimizer's Adam eps (1e-8) "
            "rounds to zero in float16, and training usually diverges. Train in float32 "
            "(cast the model, then cast back), or pass tx=optax.adam(1e-3, eps=1e-4).")


#: Names of a ``__call__`` argument that switches training behaviour (the Flax Linen habit).
_MODE_ARGUMENTS = ("train", "training", "is_training", "deterministic", "use_running_average")


def _check_mode_argument(model: nnx.Module) -> None:
    """Warn when ``model.__call__`` takes a train/eval argument that ``fit`` cannot set
    (raise when it requires one: ``model(x)`` would fail)."""
    try:
        params = inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return
    required = [n for n in _MODE_ARGUMENTS
                if n in params and params[n].default is inspect.Parameter.empty]
    if required:
        raise ValueError(
            f"{type(model).__name__}.__call__ requires {required[0]!r}, but fit calls "
            "model(x) and sets Dropout and BatchNorm with model.train() / model.eval() "
            f"(NNX's modes). Give {required[0]!r} a default of None and let the layers "
            "decide from the mode, or train a wrapper module whose __call__ passes "
            f"{required[0]}=... to the model.")
    # an argument defaulting to None leaves the choice to the layers' own (NNX) mode
    named = [n for n in _MODE_ARGUMENTS if n in params and params[n].default is not None]
    if named:
        validate.warn(
            f"{type(model).__name__}.__call__ takes {named[0]!r}, but fit calls model(x) and "
            "switches Dropout and BatchNorm with model.train() / model.eval() (NNX's modes), "
            f"so {named[0]!r} keeps its default while training. If your layers read it, "
            "pass it on from the mode instead (e.g. let nnx.Dropout and nnx.BatchNorm decide "
            "from model.train()), or train a wrapper module whose __call__ passes "
            f"{named[0]}=... to the model.")


@functools.partial(jax.jit, static_argnums=(0,))
def _forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def predict(model_or_fn: nnx.Module | Callable[[jax.Array], Any], x: np.ndarray, *,
            batch_size: int = 1000) -> np.ndarray:
    """Logits on ``x``, ``batch_size`` examples at a time (bounded memory).

    Args:
        model_or_fn: an NNX model, run in inference mode (BatchNorm uses running averages;
            the model's own mode is left as it was), or any function
            ``fn(x_batch) -> logits`` (a quantized or pruned forward pass, a jitted
            closure...), called on each batch as a ``jax.Array``.
        x: the inputs; their first axis is the examples.
        batch_size: examples per call, ``>= 1``.

    Returns:
        The logits of every example, concatenated, as a NumPy array.

    Raises:
        ValueError: an empty ``x``, a bad ``batch_size``, or neither a model nor a callable.

    Examples:
        >>> predict(lambda xb: xb * 2, np.arange(3.0)[:, None], batch_size=2).ravel().tolist()
        [0.0, 2.0, 4.0]
    """
    if len(x) == 0:
        raise ValueError("x is empty; pass at least one example.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if isinstance(model_or_fn, nnx.Module):
        with eval_mode(model_or_fn):
            graphdef, state = nnx.split(model_or_fn)

        def call(xb):
            return _forward(graphdef, state, xb)
    elif callable(model_or_fn):
        call = model_or_fn
    else:
        raise ValueError(f"Expected an NNX model or a function fn(x_batch) -> logits, got "
                         f"{type(model_or_fn).__name__}.")
    outs = [np.asarray(call(jnp.asarray(x[i:i + batch_size])))
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def evaluate(model_or_fn: nnx.Module | Callable[[jax.Array], Any], x: np.ndarray,
             y: np.ndarray, *, batch_size: int = 1000) -> float:
    """Top-1 accuracy, a fraction in [0, 1], of a model or of ``fn(x_batch) -> logits``.

    Batched as :func:`predict`; multiply by 100 only to display a percent.

    Examples:
        >>> x, y = np.eye(3), np.array([0, 1, 1])
        >>> evaluate(lambda xb: xb, x, y, batch_size=2)   # the identity "predicts" 0, 1, 2
        0.6666666666666666
    """
    _check_xy(x, y)
    return float(np.mean(predict(model_or_fn, x, batch_size=batch_size).argmax(-1)
                         == np.asarray(y)))


# --------------------------------------------------------------------------- baselines
def shift_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and +-2 pixel translation (host side, per batch)."""
    flip = rng.random(len(x)) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    dy, dx = rng.integers(-2, 3, size=2)
    return np.roll(x, (int(dy), int(dx)), axis=(1, 2))
