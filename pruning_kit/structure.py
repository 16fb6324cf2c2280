"""Structural optimization: make the model physically smaller, not just sparser.

Unstructured pruning (:mod:`pruning_kit.prune`) leaves every matrix its full size, so
dense hardware does the same work. Here whole units go:

* **Neuron / channel removal.** A *channel group* is one set of units that several arrays
  share: a conv's output channels, its BatchNorm's four vectors, and the next layer's
  input slices -- and, across a residual add, every layer that writes into the same sum.
  :func:`channel_groups` lists them for the course's models; :func:`remove_channels`
  slices every member of a group with the same indices and rebuilds a smaller model
  (``model.config`` records the new widths, so ``train.save_model``/``load_model`` and
  :mod:`pruning_kit.codec` save and reload it).
* **Importance criteria** (:func:`channel_importance`): L1/L2 norm of the weights that
  produce a channel, the BatchNorm scale |gamma|, and the square of the first-order Taylor
  estimate of the loss change when the channel is removed (Molchanov et al., 2019).
* **Low rank** (:func:`low_rank`, from :mod:`pruning_kit.low_rank`): a dense ``(in, out)``
  kernel becomes ``u @ v`` from its truncated SVD -- ``r (in + out)`` weights instead of
  ``in * out``.

Removing a channel computes exactly what zeroing it does: :func:`mask_channels` gives
that same-size reference, and the tests check both agree to float tolerance.

Introduced in ``notebooks/04_structural_optimization.ipynb``.

Examples:
    >>> from pruning_kit import models
    >>> model = models.small_cnn((8, 16), image_size=8)
    >>> keep = select_channels(channel_importance(model, "l1"), 0.5)
    >>> small = remove_channels(model, keep)
    >>> small.config["widths"], models.num_params(model), models.num_params(small)
    ([4, 8, 8], 6594, 1862)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pruning_kit import data as data_lib
from pruning_kit import graph as graph_lib
from pruning_kit import measure, program, tree, validate
from pruning_kit import models as models_lib
from pruning_kit.low_rank import (
    break_even_rank,
    dense_layers,
    layer_path,
    low_rank,
    low_rank_params,
    svd_factors,
)

__all__ = [
    "CRITERIA", "ChannelGroup", "ChannelRemovalError", "Member", "break_even_rank",
    "channel_graph", "channel_groups", "channel_importance", "dense_layers", "layer_path",
    "low_rank", "low_rank_params",
    "mask_channels", "prune_channels", "remove_channels", "search_widths", "select_channels",
    "svd_factors",
]

CRITERIA = ("l1", "l2", "bn_scale", "taylor")

Member = graph_lib.Member
ChannelGroup = graph_lib.Group


def _example(model: nnx.Module, example: Any, x: Any = None) -> Any:
    if example is not None:
        return example
    if x is not None and len(x):
        return np.asarray(x[:2])
    hook = getattr(model, "example_input", None)
    if callable(hook):
        return hook()
    raise ValueError(f"{type(model).__name__}: pass example= a small batch of inputs the model "
                     "accepts (e.g. x_train[:2]); channel groups are traced from one forward "
                     "pass.")


def channel_graph(model: nnx.Module, example: Any = None) -> graph_lib.ChannelGraph:
    """The traced :class:`~pruning_kit.graph.ChannelGraph` of ``model`` (see :mod:`graph`).

    ``example`` is a batch the model accepts; the course's models know their own.
    """
    return graph_lib.trace(model, _example(model, example))


def channel_groups(model: nnx.Module, example: Any = None) -> dict[str, ChannelGroup]:
    """The removable channel groups of any NNX model, traced from its forward pass.

    Each group lists every array axis its channels index (:class:`Member`: the leaf path,
    the axis and its role -- ``"out"`` for the kernel computing a channel, ``"affine"`` for
    biases and BatchNorm vectors, ``"in"`` for the next layers' input rows). Nothing is
    declared by hand: :func:`pruning_kit.graph.trace` follows the model's jaxpr.

    * MLP: ``hidden/0``, ``hidden/1``, ... -- a hidden layer's neurons.
    * SmallCNN: ``stage1``; ``stage2`` -- coupled by the residual add: conv2/bn2 *and*
      res_conv2/res_bn2 outputs, res_conv1's inputs and the head's rows (viewed as
      ``(7, 7, C)``); ``res_inner`` inside the block. (The course's models name their
      groups with ``channel_group_names()``; yours are named after the layer computing
      them.)

    Args:
        model: any Flax NNX model.
        example: a batch of inputs (e.g. ``x[:2]``); optional for the course's models.

    Examples:
        >>> from pruning_kit import models
        >>> g = channel_groups(models.small_cnn())["stage2"]
        >>> g.size, [m.leaf for m in g.consumers]
        (32, ['head/kernel', 'res_conv1/kernel'])
    """
    return channel_graph(model, example).groups


def _member_key(m: Any) -> tuple[str, int]:
    return (m.leaf, int(m.axis))


def _resolve_groups(model: nnx.Module, example: Any, groups: Mapping[str, Any] | None
                    ) -> tuple[graph_lib.ChannelGraph, dict[str, str]]:
    """The traced graph and ``{your group name: traced group name}``.

    Groups declared by hand are checked against the trace: every member must exist, sit
    in the same traced group as the others, and together they must list all of it.
    """
    g = channel_graph(model, example)
    if groups is None:
        return g, {n: n for n in g.groups}
    shapes = {p: np.shape(v) for p, v in zip(*graph_lib.leaf_paths(nnx.state(model))[:2],
                                             strict=True)}
    mapping = {}
    for name, hand in groups.items():
        members = list(getattr(hand, "members", None) or
                       (*getattr(hand, "producers", ()), *getattr(hand, "consumers", ())))
        if not members:
            raise ValueError(f"Group {name!r} lists no members.")
        traced = set()
        for m in members:
            if m.leaf not in shapes:
                raise ValueError(f"Group {name!r} names {m.leaf!r}, which the model does not "
                                 f"have; its arrays are {sorted(shapes)}.")
            if not 0 <= m.axis < len(shapes[m.leaf]):
                raise ValueError(f"Group {name!r}: {m.leaf} has shape {shapes[m.leaf]}, no "
                                 f"axis {m.axis}.")
            hits = [t for t, tg in g.groups.items()
                    if any(_member_key(x) == _member_key(m) for x in tg.members)]
            if not hits:
                raise ValueError(f"Group {name!r}: {m.leaf} axis {m.axis} is in no removable "
                                 f"channel group of the traced model; the groups are:\n"
                                 f"{g.report()}")
            traced.update(hits)
        if len(traced) != 1:
            raise ValueError(f"Group {name!r} mixes channels of traced groups {sorted(traced)};"
                             f" they are sliced independently:\n{g.report()}")
        t = traced.pop()
        if int(hand.size) != g.groups[t].size:
            raise ValueError(f"Group {name!r} says size {hand.size}; the traced group {t!r} "
                             f"has {g.groups[t].size} channels.")
        missing = sorted({_member_key(x) for x in g.groups[t].members}
                         - {_member_key(m) for m in members})
        if missing:
            raise ValueError(f"Group {name!r} misses arrays that index the same channels: "
                             f"{missing}; removing it would leave them the wrong size.")
        mapping[name] = t
    return g, mapping


def _loss_grads(model: nnx.Module, x: np.ndarray, y: np.ndarray, batch_size: int
                ) -> list[dict[str, jax.Array]]:
    """Per-batch gradients of the mean loss, by leaf path (the model is not changed)."""
    copy = graph_lib.eval_copy(model)
    graphdef, params, rest = nnx.split(copy, nnx.Param, ...)

    @jax.jit
    def grad(params, xb, yb):
        def loss(p):
            logits = nnx.merge(graphdef, p, rest)(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return jax.grad(loss)(params)

    out = []
    for xb, yb in data_lib.batches(x, y, batch_size):
        names, leaves, _ = graph_lib.leaf_paths(grad(params, xb, yb))
        out.append(dict(zip(names, leaves, strict=True)))
    return out


def _per_channel(g: graph_lib.ChannelGraph, group: str, m: Member, array: Any,
                 reduce: str) -> np.ndarray:
    """Reduce ``array`` over everything but ``m``'s axis, then sum into the group's channels."""
    a = np.asarray(array, np.float64)
    a = np.moveaxis(a, m.axis, 0).reshape(a.shape[m.axis], -1)
    per_pos = {"l1": np.abs(a).sum(1), "l2": (a ** 2).sum(1), "sum": a.sum(1)}[reduce]
    coords = g.channel_of(_member_key(m), group)
    out = np.zeros(g.groups[group].size)
    np.add.at(out, coords[coords >= 0], per_pos[coords >= 0])
    return out


def channel_importance(model: nnx.Module, criterion: str = "l1", *,
                       x: np.ndarray | None = None, y: np.ndarray | None = None,
                       batch_size: int = 256, groups: Mapping[str, Any] | None = None,
                       example: Any = None) -> dict[str, np.ndarray]:
    """A score per unit of every group; a larger score means "keep".

    Args:
        model: any Flax NNX model.
        criterion: ``"l1"`` / ``"l2"`` -- norm of the kernel slices that *produce* the unit
            (summed over producers, e.g. conv2 and res_conv2 for the residual group);
            ``"bn_scale"`` -- sum of |gamma| of the group's BatchNorms;
            ``"taylor"`` -- ``sum over batches of (sum_i g_i w_i)^2`` over the unit's
            producer parameters: the square of ``-sum_i g_i w_i``, the first-order
            estimate of how much the loss changes when the unit is zeroed (needs ``x`` and
            ``y``; a few thousand examples do).
        x, y: data for ``"taylor"``.
        batch_size: batch size for ``"taylor"``.
        groups: groups declared by hand (checked against the trace; default: traced).
        example: a batch of inputs for tracing (default ``x[:2]``, or the course model's).

    Returns:
        ``{group name: float64 array of length group.size}``.

    Raises:
        ValueError: unknown criterion, ``"taylor"`` without data, ``"bn_scale"`` on a group
            without BatchNorm.

    Examples:
        >>> from pruning_kit import models
        >>> scores = channel_importance(models.MLP(64, (8,), rngs=nnx.Rngs(0)), "l2")
        >>> list(scores), scores["hidden/0"].shape
        (['hidden/0'], (8,))
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    g, mapping = _resolve_groups(model, _example(model, example, x), groups)
    names, arrays, _ = graph_lib.leaf_paths(nnx.state(model))
    leaves = dict(zip(names, arrays, strict=True))
    if criterion == "taylor":
        if x is None or y is None or len(x) == 0:
            raise ValueError("criterion='taylor' needs data: pass x=..., y=... (e.g. 2,000 "
                             "training images).")
        grads = _loss_grads(model, np.asarray(x), np.asarray(y), batch_size)
    types = {path: type(m) for path, m in program.modules(model).items()}
    scores: dict[str, np.ndarray] = {}
    for name, traced in mapping.items():
        grp = g.groups[traced]
        total = np.zeros(grp.size)
        producers = grp.producers
        if criterion in ("l1", "l2"):
            kernels = [m for m in producers if np.ndim(leaves[m.leaf]) >= 2] or producers
            for m in kernels:
                per = _per_channel(g, traced, m, leaves[m.leaf], criterion)
                total += np.sqrt(per) if criterion == "l2" else per
        elif criterion == "bn_scale":
            scales = [m for m in producers if m.leaf.endswith(f"{tree.SEP}scale") and issubclass(
                types.get(m.leaf.rsplit(tree.SEP, 1)[0], object), nnx.BatchNorm)]
            if not scales:
                raise ValueError(f"Group {name!r} has no BatchNorm; use 'l1', 'l2' or "
                                 "'taylor' for this model.")
            for m in scales:
                total += _per_channel(g, traced, m, leaves[m.leaf], "l1")
        else:
            for gb in grads:
                contribution = np.zeros(grp.size)
                for m in producers:
                    if m.leaf in gb:
                        contribution += _per_channel(g, traced, m,
                                                     np.asarray(gb[m.leaf]) * np.asarray(
                                                         leaves[m.leaf]), "sum")
                total += contribution ** 2
        scores[name] = total
    return scores


def _keep_count(size: int, amount: Any, round_to: int, name: str) -> int:
    if isinstance(amount, (int, np.integer)) and not isinstance(amount, bool):
        count = int(amount)
    elif isinstance(amount, float) and 0.0 < amount <= 1.0:
        count = max(1, round(size * amount))
        if round_to > 1:
            count = min(size, max(round_to, round_to * round(count / round_to)))
    else:
        raise ValueError(f"Keep amount for {name!r} must be a fraction in (0, 1] or a "
                         f"channel count, got {amount!r}.")
    if not 1 <= count <= size:
        raise ValueError(f"Group {name!r} has {size} units; cannot keep {count}. A layer "
                         "needs at least one unit -- removing every channel would cut the "
                         "network in two.")
    return count


def select_channels(importance: Mapping[str, np.ndarray], keep: float | Mapping[str, Any],
                    *, round_to: int = 1) -> dict[str, np.ndarray]:
    """Indices (sorted) of the most important units to keep in each group.

    Args:
        importance: from :func:`channel_importance`.
        keep: a fraction in (0, 1] for every group, or ``{group: fraction or count}``
            (groups not named keep everything).
        round_to: round fractional keeps to a multiple of this (XLA:CPU and GPUs run
            convolutions with channel counts that are multiples of 4 or 8 faster; notebook
            04 measures it). Exact counts are never rounded.

    Raises:
        ValueError: an unknown group, a fraction outside (0, 1], or keeping 0 or more units
            than the group has.

    Examples:
        >>> select_channels({"hidden/0": np.array([0.1, 3.0, 2.0, 0.5])}, 0.5)
        {'hidden/0': array([1, 2])}
    """
    round_to = validate.integer("round_to", round_to)
    if isinstance(keep, Mapping):
        unknown = sorted(set(keep) - set(importance))
        if unknown:
            raise ValueError(f"Unknown group(s) {unknown}; the groups are "
                             f"{sorted(importance)}.")
        amounts = {name: keep.get(name, 1.0) for name in importance}
    else:
        amounts = dict.fromkeys(importance, keep)
    out = {}
    for name, scores in importance.items():
        scores = np.asarray(scores)
        count = _keep_count(len(scores), amounts[name], round_to, name)
        order = np.argsort(-scores, kind="stable")       # ties: lower index first
        out[name] = np.sort(order[:count])
    return out


def _check_keep(sizes: Mapping[str, int], keep: Mapping[str, Any]) -> dict[str, np.ndarray]:
    unknown = sorted(set(keep) - set(sizes))
    if unknown:
        raise ValueError(f"Unknown group(s) {unknown}; the groups are {sorted(sizes)}.")
    out = {}
    for name, size in sizes.items():
        idx = np.arange(size) if name not in keep else np.asarray(keep[name])
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"keep[{name!r}] must be a 1-D array of integer indices, got "
                             f"{idx!r:.80}.")
        if idx.size == 0:
            raise ValueError(f"keep[{name!r}] is empty: a layer needs at least one unit -- "
                             "removing every channel would cut the network in two.")
        if idx.min() < 0 or idx.max() >= size or len(np.unique(idx)) != idx.size:
            raise ValueError(f"keep[{name!r}] must hold distinct indices in [0, {size}), "
                             f"got {idx.tolist()!r:.80}.")
        out[name] = np.sort(idx)
    return out


def _apply(model: nnx.Module, masks: Mapping[str, Mapping[int, np.ndarray]], *, zero: bool
           ) -> nnx.Module:
    """A copy (owning its arrays, eval mode) with the masked positions sliced or zeroed."""
    graphdef, state = nnx.split(model)
    names, leaves, treedef = graph_lib.leaf_paths(state)
    out = []
    for name, leaf in zip(names, leaves, strict=True):
        a = jnp.array(leaf, copy=True) if isinstance(leaf, jax.Array) else leaf
        for axis, mask in masks.get(name, {}).items():
            if zero:
                shape = [1] * a.ndim
                shape[axis] = -1
                a = a * jnp.asarray(mask.reshape(shape), a.dtype)
            else:
                a = jnp.take(a, jnp.asarray(np.flatnonzero(mask)), axis=axis)
        out.append(a)
    new = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, out))
    if not zero:
        graph_lib.sync_widths(new)
    new.eval()
    return new


def _masks(model: nnx.Module, keep: Mapping[str, Any], example: Any,
           groups: Mapping[str, Any] | None):
    g, mapping = _resolve_groups(model, example, groups)
    keep = _check_keep({n: g.groups[t].size for n, t in mapping.items()}, keep)
    return g, g.axis_masks({mapping[n]: k for n, k in keep.items()})


def remove_channels(model: nnx.Module, keep: Mapping[str, Any], *,
                    groups: Mapping[str, Any] | None = None, example: Any = None,
                    check: bool = True) -> nnx.Module:
    """A new, smaller model of the same class holding only the kept units of each group.

    Every array axis of a group (traced by :func:`pruning_kit.graph.trace`) is sliced with
    the same indices, so the kept units compute exactly what they did (the removed ones
    contributed nothing once zeroed -- compare :func:`mask_channels`). BatchNorm
    statistics travel with their channels; Flax layers' stored widths (``in_features``,
    ``num_features``, a depthwise conv's ``feature_group_count``, attention heads) follow
    the arrays, and a module of yours that stores a width itself may define
    ``after_resize()`` to update it. The original model is not changed.

    Args:
        model: any Flax NNX model.
        keep: ``{group name: indices to keep}``, e.g. from :func:`select_channels`;
            groups not named are kept whole.
        groups: groups declared by hand (checked against the trace; default: traced).
        example: a batch of inputs for tracing (the course's models know their own).
        check: run the smaller model and the masked reference on ``example`` and raise if
            they differ -- the proof that the slicing was complete.

    Returns:
        A model of the same class in eval mode that owns its arrays (the course's models
        record the new widths in ``.config``).

    Raises:
        ValueError: unknown group, empty ``keep`` (every channel removed), repeated or
            out-of-range indices; :class:`ChannelRemovalError` (a ``ValueError`` naming
            the groups at fault, ``.groups``) when the smaller model does not compute what
            the masked one does.

    Examples:
        >>> from pruning_kit import models
        >>> mlp = models.MLP(64, (32, 16), rngs=nnx.Rngs(0))
        >>> remove_channels(mlp, {"hidden/0": np.arange(10)}).config["hidden"]
        [10, 16]
    """
    example = _example(model, example)
    _, masks = _masks(model, keep, example, groups)
    small = _apply(model, masks, zero=False)
    if check:
        problem = _removal_problem(model, small, masks, example)
        if problem is not None:
            # name the groups that fail on their own (the rest can go)
            bad = [n for n in keep if _removal_problem(
                model, None, _masks(model, {n: keep[n]}, example, groups)[1], example)
                ] if len(keep) > 1 else []
            raise ChannelRemovalError(bad or sorted(keep), problem, type(model).__name__)
    return small


class ChannelRemovalError(ValueError):
    """Removing ``groups`` does not give the model the masked reference computes."""

    def __init__(self, groups: list[str], problem: str, model: str):
        self.groups, self.problem = list(groups), problem
        super().__init__(
            f"Removing channels of {self.groups} from {model} does not work: {problem}. "
            "Something in the forward depends on the number of those channels (a scale "
            "computed from a shape, a statistic over them, or a width a module stores: a "
            "module of yours can update it in an after_resize() method, or use -1 in its "
            "reshapes; a Flax layer's, such as nnx.MultiHeadAttention's head size, cannot "
            "change). Keep those groups whole (leave them out of keep), or pass check=False "
            "to accept the change.")


def _removal_problem(model: nnx.Module, small: nnx.Module | None, masks: Any,
                     example: Any) -> str | None:
    """Why ``small`` (made from ``masks`` if None) differs from the masked reference."""
    args = example if isinstance(example, tuple) else (example,)
    try:
        small = _apply(model, masks, zero=False) if small is None else small
        got = np.asarray(small(*args))
    except Exception as err:  # noqa: BLE001 - reported with the groups that cause it
        return f"the smaller model fails on the example input ({type(err).__name__}: {err})"
    want = np.asarray(_apply(model, masks, zero=True)(*args))
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else np.inf
    if not diff <= 1e-4 * max(1.0, float(np.abs(want).max())):
        return f"it does not compute what masking them does (max |diff| {diff:.3g})"
    return None


def mask_channels(model: nnx.Module, keep: Mapping[str, Any], *,
                  groups: Mapping[str, Any] | None = None, example: Any = None) -> nnx.Module:
    """A same-size copy with every removed unit zeroed: the reference for removal.

    Every array axis of a group is zeroed at the dropped positions (the kernels and
    BatchNorm vectors computing a unit, and the next layers' rows reading it), so the
    dropped units contribute nothing; :func:`remove_channels` must give the same outputs.
    """
    _, masks = _masks(model, keep, _example(model, example), groups)
    return _apply(model, masks, zero=True)


def prune_channels(model: nnx.Module, keep: float | Mapping[str, Any], *,
                   criterion: str = "l1", x: np.ndarray | None = None,
                   y: np.ndarray | None = None, round_to: int = 1, example: Any = None
                   ) -> tuple[nnx.Module, dict[str, np.ndarray]]:
    """Score, select and remove in one call: ``(smaller model, kept indices)``.

    Examples:
        >>> from pruning_kit import models
        >>> small, kept = prune_channels(models.small_cnn(), {"stage1": 0.5, "stage2": 0.5},
        ...                              criterion="bn_scale", round_to=4)
        >>> small.config["widths"]
        [8, 16, 32]
    """
    example = _example(model, example, x)
    scores = channel_importance(model, criterion, x=x, y=y, example=example)
    if not scores:
        validate.warn(
            f"prune_channels: no channel group of {type(model).__name__} can be pruned, so "
            "the model is returned unchanged (as a copy). channel_graph(model, example)"
            ".report() says why each group is kept whole (e.g. a LayerNorm or a reshape "
            "reads all its channels).")
    kept = select_channels(scores, keep, round_to=round_to)
    try:
        return remove_channels(model, kept, example=example), kept
    except ChannelRemovalError as err:
        if set(err.groups) >= set(kept):
            raise
        validate.warn(f"prune_channels: {err.groups} kept whole ({err.problem}); the other "
                      "groups are pruned. Leave them out of keep to silence this.")
        kept = {k: v for k, v in kept.items() if k not in err.groups}
        return remove_channels(model, kept, example=example), kept


def search_widths(model: nnx.Module, candidates: list[Mapping[str, Any]], x: np.ndarray, *,
                  max_mac_ratio: float = 0.5, runs: int = 15, repeats: int = 3
                  ) -> list[dict[str, Any]]:
    """Time smaller configurations of ``model`` and rank them by measured latency.

    MACs do not predict latency on real hardware: XLA:CPU picks a convolution algorithm
    per shape, and some channel counts run far slower than their MACs suggest (notebook 04
    shows a 2x fewer-MAC model that is no faster). So choose the widths by *measuring*
    them -- the idea of hardware-aware pruning (NetAdapt, Yang et al., 2018) -- then remove
    channels to the fastest one. Timing uses fresh weights (values do not change speed).

    Args:
        model: the model to shrink (any NNX model; not changed).
        candidates: each either channel counts by group, ``{"conv_a": 16, "conv_b": 24}``
            (any model: the first channels of each group are kept -- values do not change
            speed), or for a model with a ``.config`` (the course's) config overrides,
            ``{"widths": [16, 16, 16]}``.
        x: a batch to time on (its size is the batch size that matters to you).
        max_mac_ratio: keep candidates with at most this fraction of ``model``'s MACs.
        runs, repeats: each candidate's time is the best of ``repeats`` medians of ``runs``
            calls (robust to other jobs on a shared machine).

    Returns:
        Rows ``{"config", "macs", "mac_ratio", "latency_ms", "speedup"}``, fastest first,
        ``speedup`` relative to ``model`` timed the same way.

    Raises:
        ValueError: no candidate within ``max_mac_ratio``, or a config that does not fit.
    """
    kind = type(model).__name__

    def timed(m: nnx.Module) -> float:
        return min(measure.latency(m, x, runs=runs).median_ms for _ in range(repeats))

    base_macs = measure.cost(model, x)["macs"]
    rows = []
    groups = None
    for override in candidates:
        config = getattr(model, "config", None)
        registered = models_lib.MODEL_CLASSES.get(kind) is type(model)
        if registered and isinstance(config, Mapping) and set(override) <= set(config):
            config = dict(config, **override)
            cand = models_lib.build(kind, config)
        else:
            groups = channel_groups(model, x[:2]) if groups is None else groups
            unknown = sorted(set(override) - set(groups))
            if unknown:
                raise ValueError(f"Candidate {dict(override)} names {unknown}: neither config "
                                 f"keys nor channel groups (the groups are {sorted(groups)}).")
            config = dict(override)
            cand = remove_channels(model, {g: np.arange(int(n)) for g, n in override.items()},
                                   example=x[:2], check=False)
        cand.eval()
        macs = measure.cost(cand, x)["macs"]
        if macs <= max_mac_ratio * base_macs:
            rows.append({"config": config, "macs": macs, "mac_ratio": macs / base_macs,
                         "model": cand})
    if not rows:
        raise ValueError(f"No candidate has <= {max_mac_ratio} of the model's MACs; add "
                         "narrower candidates or raise max_mac_ratio.")
    base_ms = timed(graph_lib.eval_copy(model))         # the caller's model keeps its mode
    for row in rows:
        row["latency_ms"] = timed(row.pop("model"))
        row["speedup"] = base_ms / row["latency_ms"]
    return sorted(rows, key=lambda r: r["latency_ms"])
