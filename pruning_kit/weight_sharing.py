"""k-means weight sharing of a model's kernels and the fine-tuning of the shared values.

Deep Compression's "trained quantization" (Han et al., 2016) in three steps:

1. :func:`kmeans_codebooks` -- one k-means codebook per kernel
   (:func:`pruning_kit.codebook.kmeans_codebook`): ``2^bits`` shared values and an index
   per weight. With ``keep_zeros=True`` (the default) only the non-zero weights are
   clustered and the zeros get the index ``-1``, so a pruned kernel stays exactly as
   sparse; ``keep_zeros=False`` clusters every weight (zeros included).
2. :func:`shared_model` -- a copy of the model whose kernels are ``codebook[index]``.
3. Centroid fine-tuning as an optax transformation that :func:`pruning_kit.train.fit`
   runs: :func:`shared_gradients` replaces each shared weight's gradient by the sum of
   the gradients of its cluster (the gradient of the centroid) and keeps the ``-1``
   positions at zero gradient. All weights of a cluster start equal and then receive the
   same update from any element-wise optimizer (SGD, Adam), so they stay exactly equal:
   training the weights *is* training the centroids. :func:`finetune_shared` wraps the
   three with Adam and a cosine decay; :func:`codebooks_of` reads the trained centroids
   back.

Leaves are named ``"layers/0/kernel"`` (:mod:`pruning_kit.tree`).

Introduced in ``notebooks/01_quantization.ipynb`` (every weight shared) and used by
:mod:`pruning_kit.deep_compression` (``notebooks/05_full_pipeline.ipynb``).

Examples:
    >>> import optax
    >>> from pruning_kit import models, train
    >>> model = models.MLP(4, (8,), 3, rngs=nnx.Rngs(0))
    >>> cbs, idx = kmeans_codebooks(model, 1)             # two shared values per kernel
    >>> shared = shared_model(model, cbs, idx)
    >>> len(np.unique(np.asarray(shared.layers[0].kernel[...])))
    2
    >>> x, y = np.ones((8, 4), np.float32), np.zeros(8, np.int32)
    >>> tx = optax.chain(shared_gradients(idx), optax.adam(1e-2))
    >>> _ = train.fit(shared, x, y, epochs=2, batch_size=4, tx=tx, progress=False)
    >>> len(np.unique(np.asarray(shared.layers[0].kernel[...])))   # still shared
    2
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pruning_kit import train as train_lib
from pruning_kit import tree
from pruning_kit.codebook import codebook_lookup, kmeans_codebook

__all__ = ["centroid_optimizer", "codebooks_of", "finetune_shared", "kmeans_codebooks",
           "shared_gradients", "shared_model"]

Codebooks = dict[str, jax.Array]


def _params(model: nnx.Module) -> dict[str, jax.Array]:
    return tree.named_leaves(nnx.state(model, nnx.Param))



# --------------------------------------------------------------------------- codebooks
def kmeans_codebooks(model: nnx.Module, bits: int | Mapping[str, int], *,
                     keep_zeros: bool = True, init: str = "linear", iters: int = 30
                     ) -> tuple[Codebooks, Codebooks]:
    """One k-means codebook per kernel of an NNX model (weight sharing).

    Args:
        model: any NNX model, dense or pruned (not changed).
        bits: ``2^bits`` shared values per kernel (1..8): one int for every kernel
            (parameter with ndim >= 2) or ``{"layers/0/kernel": 3, ...}`` naming the
            kernels to share (the others stay float).
        keep_zeros: cluster only the non-zero weights and give the zeros the index ``-1``
            (they stay exactly zero: for pruned models). ``False`` clusters every weight;
            on a sparse kernel the zeros then take centroids and may become non-zero.
        init: ``"linear"`` (Han et al.'s choice: centroids evenly spaced between the
            smallest and the largest weight, which keeps the rare large weights) or
            ``"density"`` (at evenly spaced quantiles), see
            :func:`pruning_kit.codebook.kmeans_codebook`.
        iters: Lloyd iterations.

    Returns:
        ``(codebooks, indices)`` by kernel name: float32 ``(2^bits,)`` centroids and int32
        indices of the kernel's shape (``-1`` at the zeros when ``keep_zeros``). Stored
        bytes per kernel: :func:`pruning_kit.codebook.codebook_nbytes`.

    Raises:
        ValueError: a name in ``bits`` that is not a kernel, a kernel with no non-zero
            weight (``keep_zeros``), bad ``bits``/``init``/``iters``, NaN weights.

    Examples:
        >>> from pruning_kit import models
        >>> model = models.MLP(4, (8,), 3, rngs=nnx.Rngs(0))
        >>> model.layers[0].kernel[...] = model.layers[0].kernel[...].at[0].set(0.0)
        >>> cbs, idx = kmeans_codebooks(model, {"layers/0/kernel": 2})
        >>> cbs["layers/0/kernel"].shape, int((idx["layers/0/kernel"] == -1).sum())
        ((4,), 8)
    """
    kernels = {n: v for n, v in _params(model).items() if tree.is_kernel(n, v)}
    if isinstance(bits, Mapping):
        unknown = sorted(set(bits) - set(kernels))
        if unknown:
            raise ValueError(f"bits names {unknown}, which are not kernels of the model; "
                             f"kernels: {sorted(kernels)}.")
        chosen = dict(bits)
    else:
        chosen = {n: bits for n in kernels}
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no kernel (parameter with ndim >= 2) "
                         "to share.")
    codebooks, indices = {}, {}
    for name, b in chosen.items():
        w = np.asarray(kernels[name])
        keep = w != 0 if keep_zeros else np.ones(w.shape, bool)
        if not keep.any():
            raise ValueError(
                f"{name} has no non-zero weight (all {w.size} are zero: an untrained or fully "
                "pruned layer?), so there is nothing to cluster. Pass bits as a dict without "
                f"{name!r} (e.g. {{k: {b} for k in kernels if k != {name!r}}}), or train the "
                "model first.")
        try:
            cb, idx = kmeans_codebook(w[keep], b, iters=iters, init=init)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
        full = np.full(w.shape, -1, np.int32)
        full[keep] = np.asarray(idx, np.int32)
        codebooks[name], indices[name] = cb, jnp.asarray(full)
    return codebooks, indices


def _check_shared(model: nnx.Module, codebooks: Mapping, indices: Mapping) -> None:
    params = _params(model)
    if set(codebooks) != set(indices) or set(codebooks) - set(params):
        raise ValueError(f"codebooks {sorted(codebooks)} and indices {sorted(indices)} must "
                         f"name the same kernels of the model ({sorted(params)}); make them "
                         "with kmeans_codebooks(model, bits).")
    for name in codebooks:
        cb, idx = jnp.asarray(codebooks[name]), jnp.asarray(indices[name])
        if cb.ndim != 1 or idx.shape != params[name].shape or (
                idx.size and not -1 <= int(idx.min()) <= int(idx.max()) < cb.size):
            raise ValueError(f"{name}: codebook {cb.shape} and indices {idx.shape} do not fit "
                             f"the kernel {params[name].shape} (indices in -1..len-1).")


def shared_model(model: nnx.Module, codebooks: Mapping[str, Any],
                 indices: Mapping[str, Any]) -> nnx.Module:
    """A copy of ``model`` whose kernels are ``codebook[indices]`` (zero where ``-1``).

    The copy owns its arrays (``model`` is not changed) and is in ``model``'s mode.

    Raises:
        ValueError: codebooks/indices that do not fit the model.
    """
    _check_shared(model, codebooks, indices)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    dtypes = {n: a.dtype for n, a in tree.named_leaves(params).items()}   # kept as they were
    kernels = {n: codebook_lookup(jnp.asarray(cb, jnp.float32), jnp.asarray(indices[n]))
               .astype(dtypes.get(n, jnp.float32)) for n, cb in codebooks.items()}
    return train_lib.own_arrays(nnx.merge(graphdef, tree.replace_leaves(params, kernels),
                                          rest))


def codebooks_of(model: nnx.Module, codebooks: Mapping[str, Any],
                 indices: Mapping[str, Any]) -> Codebooks:
    """The shared values a weight-shared model holds now (e.g. after fine-tuning).

    Entry ``k`` of a kernel's codebook is the value of its weights with index ``k``; an
    unused entry keeps its value from ``codebooks``.

    Raises:
        ValueError: codebooks/indices that do not fit, or weights of one cluster that are
            no longer equal (an optimizer that is not element-wise, e.g. weight decay on
            the zeros, or gradients that did not go through :func:`shared_gradients`).
    """
    _check_shared(model, codebooks, indices)
    params = _params(model)
    out = {}
    for name, cb in codebooks.items():
        cb = np.array(cb, np.float32)
        idx, w = np.asarray(indices[name]).ravel(), np.asarray(params[name]).ravel()
        used = idx >= 0
        cb[idx[used]] = w[used]
        if not np.array_equal(cb[idx[used]], w[used]) or np.any(w[~used] != 0):
            raise ValueError(f"{name}: the weights of a cluster differ (or a '-1' weight is "
                             "not zero): the sharing was broken. Train with "
                             "optax.chain(shared_gradients(indices), <element-wise optimizer>).")
        out[name] = jnp.asarray(cb)
    return out


# --------------------------------------------------------------------------- fine-tuning
def shared_gradients(indices: Mapping[str, Any]) -> optax.GradientTransformation:
    """Each shared weight's gradient becomes the sum of its cluster's gradients.

    The sum over the weights with index ``k`` is the gradient of centroid ``k`` (Han et
    al.); weights with index ``-1`` (pruned zeros) get gradient zero. Chain it before an
    element-wise optimizer -- ``optax.chain(shared_gradients(indices), optax.adam(lr))`` --
    and every cluster, starting from equal values, receives one update and stays shared.
    Parameters not named in ``indices`` pass through unchanged.

    Args:
        indices: ``{name: int indices}`` from :func:`kmeans_codebooks`.

    Returns:
        A stateless ``optax.GradientTransformation`` (its state is ``optax.EmptyState``).

    Raises:
        ValueError: at ``init``, a name in ``indices`` that the parameters do not have, or
            indices of another shape than their parameter.

    Examples:
        >>> tx = shared_gradients({"w": jnp.array([0, 1, 1, -1])})
        >>> updates, _ = tx.update({"w": jnp.array([1.0, 2.0, 3.0, 4.0])}, tx.init(None))
        >>> updates["w"].tolist()
        [1.0, 5.0, 5.0, 0.0]
    """
    idx = {n: jnp.asarray(i, jnp.int32) for n, i in indices.items()}
    sizes = {n: int(i.max()) + 1 if i.size else 1 for n, i in idx.items()}

    def init_fn(params: Any) -> optax.EmptyState:
        if params is not None:
            leaves = tree.named_leaves(params)
            bad = sorted(n for n in idx if n not in leaves
                         or np.shape(leaves[n]) != idx[n].shape)
            if bad:
                raise ValueError(f"shared_gradients: indices {bad} name no parameter of that "
                                 f"shape; parameters: {sorted(leaves)}.")
        return optax.EmptyState()

    def summed(name: str, g: Any) -> Any:
        if name not in idx:
            return g
        i = idx[name]
        used = i >= 0
        sums = jax.ops.segment_sum(jnp.where(used, g, 0).ravel(), jnp.maximum(i, 0).ravel(),
                                   sizes[name])
        return jnp.where(used, sums[jnp.maximum(i, 0)], 0).astype(g.dtype)

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None):
        return tree.map_named(summed, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def centroid_optimizer(indices: Mapping[str, Any], learning_rate: float, steps: int, *,
                       train_others: bool = True) -> optax.GradientTransformation:
    """Adam with a cosine decay over ``steps`` on the centroids, as ``train.fit``'s ``tx``.

    ``optax.chain(shared_gradients(indices), train.default_optimizer(learning_rate,
    steps))``; with ``train_others=False`` the parameters not in ``indices`` (biases,
    unshared kernels) are frozen by ``optax.multi_transform`` with ``optax.set_to_zero``.
    """
    tx = optax.chain(shared_gradients(indices),
                     train_lib.default_optimizer(learning_rate, steps))
    if train_others:
        return tx

    def labels(params: Any) -> Any:
        return tree.map_named(lambda name, _: "shared" if name in indices else "frozen",
                              params)

    return optax.multi_transform({"shared": tx, "frozen": optax.set_to_zero()}, labels)


def finetune_shared(model: nnx.Module, codebooks: Mapping[str, Any],
                    indices: Mapping[str, Any], x: np.ndarray, y: Any, *,
                    loss_fn: train_lib.LossFn = train_lib.cross_entropy_loss,
                    epochs: int = 3, lr: float = 3e-4, batch_size: int = 128,
                    train_others: bool = True, seed: int = 0, progress: bool = False
                    ) -> tuple[Codebooks, nnx.Module]:
    """Train the shared values (and, by default, the other parameters); indices fixed.

    :func:`shared_model` trained by :func:`pruning_kit.train.fit` with
    :func:`centroid_optimizer` (Adam, cosine decay of ``lr`` to zero): each centroid moves
    by the sum of the gradients of the weights that share it, the zeros stay zeros.

    Args:
        model: the model the codebooks were made from (not changed).
        codebooks, indices: from :func:`kmeans_codebooks`.
        x, y: training data (not the test set); ``y`` the labels or a tuple ``(labels,
            extra...)`` handed to ``loss_fn`` as in :func:`pruning_kit.train.fit`
            (``y = (labels, teacher_logits)`` with ``distill.recovery_loss()``).
        loss_fn: ``loss_fn(model, x, y) -> (loss, logits)``.
        epochs: passes over the data, >= 1.
        lr: peak learning rate, > 0.
        batch_size: examples per step (the last partial batch is dropped).
        train_others: also train every parameter that is not a shared kernel (biases);
            ``False`` trains the centroids alone.
        seed: shuffling seed.
        progress: a ``tqdm`` bar over epochs.

    Returns:
        ``(codebooks, shared)``: the trained codebooks and the weight-shared model (in
        eval mode) that holds them.

    Raises:
        ValueError: codebooks that do not fit, bad ``epochs``/``lr``/``batch_size``, empty
            or mismatched data.
        FloatingPointError: the loss diverged.
    """
    _check_shared(model, codebooks, indices)
    train_lib.check_training_args(x, y, epochs=epochs, lr=lr, batch_size=batch_size)
    shared = shared_model(model, codebooks, indices)
    tx = centroid_optimizer(indices, float(lr), (len(x) // batch_size) * epochs,
                            train_others=train_others)
    train_lib.fit(shared, x, y, epochs=epochs, batch_size=batch_size, tx=tx, loss_fn=loss_fn,
                  seed=seed, progress=progress)
    shared.eval()
    return codebooks_of(shared, codebooks, indices), shared
