"""Pruning while training: optax wrappers that keep pruned weights exactly zero.

* :func:`gradual_pruning` raises the sparsity along :func:`polynomial_schedule` (Zhu &
  Gupta, 2017), re-ranking the weights every ``update_every`` steps by a score (``|w|``
  by default; any ``score_fn(w, grad)``, the way jaxpruner's algorithms override their
  scores);
* :func:`keep_masked` trains with fixed masks (fine-tuning a one-shot pruned net,
  retraining a lottery ticket). Not ``optax.masked``, which picks the parameters a
  transformation *updates* and leaves the others as they are: ``keep_masked`` keeps the
  masked-out weights at zero.

Both return an ``optax.GradientTransformation`` whose state is a :class:`PruningState`;
:func:`masks_from_state` reads its masks. Both need the params in ``update`` (as
``nnx.Optimizer`` and :func:`pruning_kit.train.fit` pass them).

The one-shot side lives in its own modules, re-exported here so that ``prune.X`` finds
every pruning tool: :mod:`pruning_kit.masks` (magnitude/random/N:M masks, applying and
measuring them), :mod:`pruning_kit.sensitivity` (per-layer sensitivity and sparsities
from it) and :mod:`pruning_kit.sparse_storage` (sparse formats on disk).

Introduced in ``notebooks/03_pruning.ipynb``.

Examples:
    >>> params = {"dense": {"kernel": jnp.array([[0.1, -2.0], [0.5, 0.0]]), "bias": jnp.ones(2)}}
    >>> masks = magnitude_masks(params, 0.5)
    >>> tx = keep_masked(optax.sgd(0.1), masks)      # train the survivors only
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    >>> [[round(v, 2) for v in row] for row in optax.apply_updates(params, updates)[
    ...     "dense"]["kernel"].tolist()]
    [[0.0, -2.1], [0.4, 0.0]]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pruning_kit import tree as tree_lib
from pruning_kit import validate
from pruning_kit.masks import (
    Filter,
    apply_masks,
    check_nm,
    check_scope,
    default_filter,
    layer_sparsity,
    magnitude_masks,
    match_masks,
    nm_masks,
    nonzero_masks,
    random_masks,
    score_masks,
    selected_leaves,
    sparsity,
)
from pruning_kit.sensitivity import layer_sensitivity, sparsity_from_sensitivity
from pruning_kit.sparse_storage import load_sparse, save_sparse, sparse_nbytes

__all__ = [
    # this module: pruning while training
    "PruningState", "gradual_pruning", "keep_masked", "magnitude_score", "masks_from_state",
    "polynomial_schedule",
    # pruning_kit.masks
    "apply_masks", "check_nm", "default_filter", "layer_sparsity", "magnitude_masks",
    "nm_masks", "nonzero_masks", "random_masks", "score_masks", "sparsity",
    # pruning_kit.sensitivity
    "layer_sensitivity", "sparsity_from_sensitivity",
    # pruning_kit.sparse_storage
    "load_sparse", "save_sparse", "sparse_nbytes",
]

Params = Any
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def polynomial_schedule(final_sparsity: float, begin_step: int, end_step: int, *,
                        initial_sparsity: float = 0.0, power: float = 3
                        ) -> Callable[[Any], jax.Array]:
    """Zhu & Gupta (2017): sparsity rising fast, then slowly, from ``begin`` to ``end``.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** power`` for
    ``t_0 <= t <= t_end``; ``s_i`` before, ``s_f`` after. Works on traced steps.

    Raises:
        ValueError: sparsities outside ``[0, 1)`` or ``initial > final``, steps not
            ``0 <= begin_step < end_step``, ``power <= 0``.

    Examples:
        >>> sched = polynomial_schedule(0.9, 100, 1100)
        >>> [round(float(sched(t)), 3) for t in (0, 100, 350, 600, 1100, 5000)]
        [0.0, 0.0, 0.52, 0.787, 0.9, 0.9]
    """
    s_f = validate.sparsity(final_sparsity, name="final_sparsity")
    s_i = validate.sparsity(initial_sparsity, name="initial_sparsity")
    if s_i > s_f:
        raise ValueError(f"initial_sparsity {s_i} is above final_sparsity {s_f}; pruning only "
                         "removes weights, so the schedule must not decrease.")
    validate.integer("begin_step", begin_step, 0)
    validate.integer("end_step", end_step, 0)
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be after begin_step ({begin_step}).")
    if isinstance(power, bool):
        raise ValueError(f"power must be a positive number (3 in Zhu & Gupta), got {power!r}.")
    validate.number("power", power, 0.0, low_open=True, hint="Zhu & Gupta use 3.")

    def schedule(step: Any) -> jax.Array:
        t = jnp.clip((jnp.asarray(step, jnp.float32) - begin_step) / (end_step - begin_step),
                     0.0, 1.0)
        w = (1.0 - t) ** power      # 1 at begin, 0 at end: both end points exact
        return (s_i * w + s_f * (1.0 - w)).astype(jnp.float32)

    return schedule


class PruningState(NamedTuple):
    """State of :func:`gradual_pruning` and :func:`keep_masked`.

    Attributes:
        count: int32 number of updates done so far (saturating, ``optax.safe_int32_increment``).
        masks: current bool masks, the structure of the params (``Variable`` wrappers
            removed).
        inner_state: the wrapped optimizer's state.
    """

    count: jax.Array
    masks: Params
    inner_state: optax.OptState


def magnitude_score(w: jax.Array, grad: jax.Array) -> jax.Array:
    """``|w|``: the default score of :func:`gradual_pruning` (the gradient is not used).

    Examples:
        >>> magnitude_score(jnp.array([-2.0, 0.5]), jnp.zeros(2)).tolist()
        [2.0, 0.5]
    """
    del grad
    return jnp.abs(w)


def _need_params(params: Any, who: str) -> Params:
    if params is None:
        raise ValueError(f"{who} needs the current params: call tx.update(grads, state, "
                         "params) (nnx.Optimizer and pruning_kit.train.fit do).")
    return nnx.as_pure(params)


def _masked_step(inner: optax.GradientTransformation, grads: Params, inner_state: Any,
                 params: Params, masks: Params) -> tuple[Params, Any]:
    """Masked grads in, ``mask * (params + update) - params`` out."""
    grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros((), g.dtype)),
                         grads, masks)
    updates, inner_state = inner.update(grads, inner_state, params)
    updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype),
                           updates, params, masks)
    return updates, inner_state


def gradual_pruning(inner: optax.GradientTransformation,
                    schedule: Callable[[Any], Any] | float, *, update_every: int = 100,
                    scope: str = "layer", filter: Filter = default_filter,
                    score_fn: ScoreFn = magnitude_score) -> optax.GradientTransformation:
    """Wrap an optimizer so that it prunes while it trains, by magnitude unless told otherwise.

    Every ``update_every`` updates (counting from 0) the masks are recomputed at sparsity
    ``schedule(count)``, keeping the weights with the highest ``score_fn(w, grad)`` (the
    current params and this step's gradient, leaf by leaf) -- inside ``jax.lax.cond``, so
    the ranking costs nothing on the other steps. Gradients of pruned weights are zeroed
    before ``inner`` sees them (their Adam moments decay instead of growing) and the
    update is ``mask * (params + inner_update) - params``: after every step pruned
    weights, including those just pruned, are exactly zero. The final sparsity is reached
    at the first mask update at or after the schedule's ``end_step``.

    Args:
        inner: the optimizer, e.g. ``optax.adam(1e-3)``.
        schedule: ``schedule(step) -> sparsity`` (e.g. :func:`polynomial_schedule`) or one
            float (prune once at step 0, keep the masks).
        update_every: steps between mask updates.
        scope, filter: as in :func:`pruning_kit.masks.magnitude_masks`.
        score_fn: ``score_fn(w, grad) -> scores`` of ``w``'s shape, higher = keep; finite
            floats of any sign. :func:`magnitude_score` (``|w|``) by default; e.g.
            ``lambda w, g: jnp.abs(w * g)`` for first-order (Taylor) saliency. Called on
            traced arrays, so it must be a JAX function. Pruned weights are zero, so a
            score that vanishes at ``w = 0`` keeps them pruned.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`PruningState`. Its masks:
        :func:`masks_from_state`; after :func:`pruning_kit.train.fit`:
        :func:`pruning_kit.masks.nonzero_masks`.

    Examples:
        >>> tx = gradual_pruning(optax.sgd(0.1), polynomial_schedule(0.5, 0, 2), update_every=1)
        >>> params = {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]])}
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> [[round(v, 2) for v in row] for row in params["kernel"].tolist()]   # 0.9, 0.4 pruned
        [[0.0, -2.3], [2.7, 0.0]]
    """
    check_scope(scope)
    validate.integer("update_every", update_every, 1)
    if not callable(score_fn):
        raise ValueError(f"score_fn must be a function score_fn(w, grad) -> scores, got "
                         f"{score_fn!r}.")
    if not callable(schedule):
        constant = validate.sparsity(schedule)
        schedule = lambda step: constant  # noqa: E731

    def init_fn(params):
        pure = nnx.as_pure(params)
        selected_leaves(pure, filter)
        masks = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), pure)
        return PruningState(jnp.zeros((), jnp.int32), masks, inner.init(params))

    def update_fn(updates, state, params=None):
        params = _need_params(params, "gradual_pruning")
        grads = nnx.as_pure(updates)
        masks = jax.lax.cond(state.count % update_every == 0,
                             lambda: score_masks(params, jax.tree.map(score_fn, params, grads),
                                                 schedule(state.count), scope=scope,
                                                 filter=filter),
                             lambda: state.masks)
        updates, inner_state = _masked_step(inner, grads, state.inner_state, params, masks)
        return updates, PruningState(optax.safe_int32_increment(state.count), masks,
                                     inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


def keep_masked(inner: optax.GradientTransformation, masks: Params
                ) -> optax.GradientTransformation:
    """Wrap an optimizer so that it trains only the weights ``masks`` keeps.

    For fine-tuning a one-shot pruned net or retraining a lottery ticket: the same
    guarantee as :func:`gradual_pruning` (masked-out weights are exactly zero after every
    update), with fixed masks. State :class:`PruningState`. (Not ``optax.masked``, which
    chooses the parameters a transformation applies to and leaves the others unchanged.)

    Examples:
        >>> params = {"kernel": jnp.array([[1.0, 2.0]])}
        >>> tx = keep_masked(optax.adam(0.1), {"kernel": jnp.array([[True, False]])})
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"kernel": jnp.ones((1, 2))}, state, params)
        >>> [round(v, 3) for v in optax.apply_updates(params, updates)["kernel"][0].tolist()]
        [0.9, 0.0]
    """
    if masks is None:
        raise ValueError("keep_masked needs the masks to keep, e.g. "
                         "magnitude_masks(params, sparsity); got None.")

    def init_fn(params):
        pure = nnx.as_pure(params)
        ms = match_masks(pure, masks)
        fixed = tree_lib.map_named(lambda n, w: jnp.ones(jnp.shape(w), bool) if ms[n] is None
                                   else jnp.array(ms[n], dtype=bool, copy=True), pure)
        # a copy: train.fit donates the optimizer state, and the caller's masks must survive
        return PruningState(jnp.zeros((), jnp.int32), fixed, inner.init(params))

    def update_fn(updates, state, params=None):
        params = _need_params(params, "keep_masked")
        updates, inner_state = _masked_step(inner, nnx.as_pure(updates), state.inner_state,
                                            params, state.masks)
        return updates, PruningState(optax.safe_int32_increment(state.count), state.masks,
                                     inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


def masks_from_state(opt_state: Any) -> Params:
    """The current masks inside an optimizer state (or an ``nnx.Optimizer``).

    Finds every :class:`PruningState` in a nested/chained state; several are combined
    with a logical AND (a weight survives only if every wrapper keeps it).

    Raises:
        ValueError: no :class:`PruningState` in ``opt_state``.

    Examples:
        >>> tx = optax.chain(optax.clip(1.0), keep_masked(optax.sgd(0.1),
        ...                                               {"w": jnp.array([False])}))
        >>> masks_from_state(tx.init({"w": jnp.ones(1)}))
        {'w': Array([False], dtype=bool)}
    """
    if isinstance(opt_state, nnx.Optimizer):
        opt_state = opt_state.opt_state
    is_state = lambda x: isinstance(x, PruningState)  # noqa: E731
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(s)]
    if not found:
        raise ValueError("No PruningState in this optimizer state; build the optimizer with "
                         "gradual_pruning(...) or keep_masked(...). After train.fit use "
                         "nonzero_masks(model).")
    masks = [nnx.as_pure(s.masks) for s in found]
    return functools.reduce(lambda a, b: jax.tree.map(jnp.logical_and, a, b), masks)

