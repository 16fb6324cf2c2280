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
  produce a channel, the BatchNorm scale |gamma|, and the first-order Taylor estimate of
  the loss change when the channel is removed (Molchanov et al., 2019).
* **Low rank** (:func:`low_rank`): a dense ``(in, out)`` kernel becomes ``u @ v`` from its
  truncated SVD -- ``r (in + out)`` weights instead of ``in * out``.

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

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pruning_kit import data as data_lib
from pruning_kit import measure
from pruning_kit import models as models_lib

CRITERIA = ("l1", "l2", "bn_scale", "taylor")


class Member(NamedTuple):
    """One array axis that indexes a group's channels.

    ``leaf`` is a dotted state path (``"conv2.kernel"``, ``"bn1.mean"``); ``view`` is an
    optional reshape applied before slicing ``axis`` (the CNN head's rows are
    ``(7, 7, C)`` flattened).
    """

    leaf: str
    axis: int
    view: tuple[int, ...] | None = None


class ChannelGroup(NamedTuple):
    """Units that must be kept or removed together.

    ``producers`` compute the units (kernels' output axes, biases, BatchNorm vectors);
    ``consumers`` read them (the next layers' input axes). ``size`` is the current width.
    """

    name: str
    size: int
    producers: tuple[Member, ...]
    consumers: tuple[Member, ...]


def _bn(name: str) -> tuple[Member, ...]:
    return tuple(Member(f"{name}.{v}", 0) for v in ("scale", "bias", "mean", "var"))


def channel_groups(model: nnx.Module) -> dict[str, ChannelGroup]:
    """The removable unit groups of an :class:`~pruning_kit.models.MLP` or ``SmallCNN``.

    * MLP: ``hidden.0``, ``hidden.1``, ... -- a hidden layer's neurons: its kernel's
      columns and bias entries, and the next kernel's rows.
    * SmallCNN: ``stage1`` (conv1/bn1 outputs, conv2 inputs); ``stage2`` -- coupled by the
      residual add ``x + res_bn2(res_conv2(h))``: conv2/bn2 *and* res_conv2/res_bn2 outputs,
      res_conv1's inputs and the head's rows; ``res_inner`` (res_conv1/res_bn1 outputs,
      res_conv2 inputs).

    Raises:
        ValueError: another model type, or an MLP with low-rank layers (remove neurons
            first, then factorize).

    Examples:
        >>> from pruning_kit import models
        >>> g = channel_groups(models.small_cnn())["stage2"]
        >>> g.size, [m.leaf for m in g.consumers]
        (32, ['res_conv1.kernel', 'head.kernel'])
    """
    if isinstance(model, models_lib.MLP):
        if "ranks" in model.config:
            raise ValueError("This MLP has low-rank layers; remove neurons from the dense "
                             "model first, then call low_rank().")
        hidden = model.config["hidden"]
        return {f"hidden.{i}": ChannelGroup(
            f"hidden.{i}", width,
            (Member(f"layers.{i}.kernel", 1), Member(f"layers.{i}.bias", 0)),
            (Member(f"layers.{i + 1}.kernel", 0),)) for i, width in enumerate(hidden)}
    if isinstance(model, models_lib.SmallCNN):
        c1, c2, *rest = model.config["widths"]
        c_res = rest[0] if rest else c2
        side = model.config["image_size"] // 4
        head_view = (side, side, c2, model.config["num_classes"])
        return {
            "stage1": ChannelGroup("stage1", c1, (Member("conv1.kernel", 3), *_bn("bn1")),
                                   (Member("conv2.kernel", 2),)),
            "stage2": ChannelGroup(
                "stage2", c2,
                (Member("conv2.kernel", 3), *_bn("bn2"), Member("res_conv2.kernel", 3),
                 *_bn("res_bn2")),
                (Member("res_conv1.kernel", 2), Member("head.kernel", 2, head_view))),
            "res_inner": ChannelGroup("res_inner", c_res,
                                      (Member("res_conv1.kernel", 3), *_bn("res_bn1")),
                                      (Member("res_conv2.kernel", 2),)),
        }
    raise ValueError(f"channel_groups knows MLP and SmallCNN, not {type(model).__name__}. "
                     "For your own model, list its groups as ChannelGroup/Member tuples "
                     "and pass them as groups=..., with new_config=... to remove_channels.")


def _named_leaves(tree: Any) -> list[tuple[str, Any]]:
    """``(dotted path, leaf)`` pairs, named as :func:`pruning_kit.measure.named_params`."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
            path = path[:-1]
        out.append((".".join(measure._key_name(k) for k in path), leaf))
    return out


def _flat_state(model: nnx.Module) -> dict[str, jax.Array]:
    return dict(_named_leaves(nnx.state(model)))


def _check_groups(model: nnx.Module, groups: Mapping[str, ChannelGroup] | None
                  ) -> dict[str, ChannelGroup]:
    groups = dict(channel_groups(model) if groups is None else groups)
    leaves = _flat_state(model)
    for g in groups.values():
        for m in (*g.producers, *g.consumers):
            if m.leaf not in leaves:
                raise ValueError(f"Group {g.name!r} names {m.leaf!r}, which the model does "
                                 f"not have; its arrays are {sorted(leaves)}.")
    return groups


def _take(array: jax.Array, member: Member, index: np.ndarray) -> jax.Array:
    a = jnp.asarray(array)
    shape = a.shape
    if member.view is not None:
        a = a.reshape(member.view)
    a = jnp.take(a, jnp.asarray(index), axis=member.axis)
    if member.view is not None:
        a = a.reshape((-1, *shape[1:]))
    return a


def _slices(array: jax.Array, member: Member) -> jax.Array:
    """``array`` with the member's channel axis first, everything else flattened."""
    a = jnp.asarray(array)
    if member.view is not None:
        a = a.reshape(member.view)
    return jnp.moveaxis(a, member.axis, 0).reshape(a.shape[member.axis], -1)


def _loss_grads(model: nnx.Module, x: np.ndarray, y: np.ndarray, batch_size: int
                ) -> dict[str, jax.Array]:
    """Per-batch ``(sum over the group of g * w)`` needs g: the gradient of the mean loss."""
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def grad(params, xb, yb):
        def loss(p):
            logits = nnx.merge(graphdef, p, rest)(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return jax.grad(loss)(params)

    out = []
    for xb, yb in data_lib.batches(x, y, batch_size):
        out.append(dict(measure.named_params(grad(params, xb, yb))))
    return out


def channel_importance(model: nnx.Module, criterion: str = "l1", *,
                       x: np.ndarray | None = None, y: np.ndarray | None = None,
                       batch_size: int = 256, groups: Mapping[str, ChannelGroup] | None = None
                       ) -> dict[str, np.ndarray]:
    """A score per unit of every group; a larger score means "keep".

    Args:
        model: an MLP or SmallCNN (or any model with ``groups``).
        criterion: ``"l1"`` / ``"l2"`` -- norm of the kernel slices that *produce* the unit
            (summed over producers, e.g. conv2 and res_conv2 for the residual group);
            ``"bn_scale"`` -- sum of |gamma| of the group's BatchNorms (CNN only);
            ``"taylor"`` -- ``sum over batches of (sum_i g_i w_i)^2`` over the unit's
            producer parameters, the first-order estimate of how much the loss changes
            when the unit is zeroed (needs ``x`` and ``y``; a few thousand examples do).
        x, y: data for ``"taylor"``.
        batch_size: batch size for ``"taylor"``.
        groups: override :func:`channel_groups`.

    Returns:
        ``{group name: float64 array of length group.size}``.

    Raises:
        ValueError: unknown criterion, ``"taylor"`` without data, ``"bn_scale"`` on a model
            without BatchNorm.

    Examples:
        >>> from pruning_kit import models
        >>> scores = channel_importance(models.MLP(64, (8,), rngs=nnx.Rngs(0)), "l2")
        >>> list(scores), scores["hidden.0"].shape
        (['hidden.0'], (8,))
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    groups = _check_groups(model, groups)
    leaves = _flat_state(model)
    scores: dict[str, np.ndarray] = {}
    if criterion == "taylor":
        if x is None or y is None or len(x) == 0:
            raise ValueError("criterion='taylor' needs data: pass x=..., y=... (e.g. 2,000 "
                             "training images).")
        grads = _loss_grads(model, np.asarray(x), np.asarray(y), batch_size)
    for name, g in groups.items():
        total = np.zeros(g.size)
        if criterion in ("l1", "l2"):
            for m in g.producers:
                if leaves[m.leaf].ndim < 2:
                    continue                      # norms of kernels only
                s = _slices(leaves[m.leaf], m)
                total += np.asarray(jnp.abs(s).sum(1) if criterion == "l1"
                                    else jnp.sqrt((s ** 2).sum(1)))
        elif criterion == "bn_scale":
            scales = [m for m in g.producers if m.leaf.endswith(".scale")]
            if not scales:
                raise ValueError(f"Group {name!r} has no BatchNorm; use 'l1', 'l2' or "
                                 "'taylor' for this model.")
            for m in scales:
                total += np.abs(np.asarray(leaves[m.leaf]))
        else:
            params = {k for k, _ in measure.named_params(model)}
            for gb in grads:
                contribution = np.zeros(g.size)
                for m in g.producers:
                    if m.leaf in params:
                        contribution += np.asarray(
                            (_slices(gb[m.leaf], m) * _slices(leaves[m.leaf], m)).sum(1))
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
        >>> select_channels({"hidden.0": np.array([0.1, 3.0, 2.0, 0.5])}, 0.5)
        {'hidden.0': array([1, 2])}
    """
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}.")
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


def _check_keep(groups: Mapping[str, ChannelGroup], keep: Mapping[str, Any]
                ) -> dict[str, np.ndarray]:
    unknown = sorted(set(keep) - set(groups))
    if unknown:
        raise ValueError(f"Unknown group(s) {unknown}; the groups are {sorted(groups)}.")
    out = {}
    for name, g in groups.items():
        idx = np.arange(g.size) if name not in keep else np.asarray(keep[name])
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"keep[{name!r}] must be a 1-D array of integer indices, got "
                             f"{idx!r:.80}.")
        if idx.size == 0:
            raise ValueError(f"keep[{name!r}] is empty: a layer needs at least one unit -- "
                             "removing every channel would cut the network in two.")
        if idx.min() < 0 or idx.max() >= g.size or len(np.unique(idx)) != idx.size:
            raise ValueError(f"keep[{name!r}] must hold distinct indices in [0, {g.size}), "
                             f"got {idx.tolist()!r:.80}.")
        out[name] = np.sort(idx)
    return out


def _new_config(model: nnx.Module, sizes: Mapping[str, int]) -> dict[str, Any]:
    config = dict(model.config)
    if isinstance(model, models_lib.MLP):
        config["hidden"] = [sizes[f"hidden.{i}"] for i in range(len(config["hidden"]))]
    else:
        config["widths"] = [sizes["stage1"], sizes["stage2"], sizes["res_inner"]]
    return config


def _rebuild(model: nnx.Module, config: Mapping[str, Any], leaves: Mapping[str, jax.Array]
             ) -> nnx.Module:
    kind = type(model).__name__
    new = nnx.eval_shape(lambda: models_lib.build(kind, dict(config)))
    state = nnx.state(new)
    paths, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [name for name, _ in _named_leaves(state)]
    for (_, shaped), name in zip(paths, names, strict=True):
        if tuple(leaves[name].shape) != tuple(shaped.shape):
            raise ValueError(f"Internal shape mismatch at {name}: {leaves[name].shape} vs "
                             f"{shaped.shape}; the groups do not describe this model.")
    # copies: the new model must not share buffers with the original (training donates them)
    copies = [jnp.array(leaves[n], copy=True) for n in names]
    nnx.update(new, jax.tree_util.tree_unflatten(treedef, copies))
    new.eval()
    return new


def remove_channels(model: nnx.Module, keep: Mapping[str, Any], *,
                    groups: Mapping[str, ChannelGroup] | None = None,
                    new_config: Mapping[str, Any] | None = None) -> nnx.Module:
    """A new, smaller model holding only the kept units of each group.

    Every member array of a group is sliced with the same indices, so the kept units
    compute exactly what they did (the removed ones contributed nothing once zeroed --
    compare :func:`mask_channels`). BatchNorm statistics travel with their channels.
    The original model is not changed.

    Args:
        model: an MLP or SmallCNN (or your own model with ``groups`` and ``new_config``).
        keep: ``{group name: indices to keep}``, e.g. from :func:`select_channels`;
            groups not named are kept whole.
        groups: override :func:`channel_groups`.
        new_config: the smaller model's config (needed only with your own ``groups``).

    Returns:
        A model of the same class in eval mode, with the new widths in ``.config``.

    Raises:
        ValueError: unknown group, empty ``keep`` (every channel removed), repeated or
            out-of-range indices.

    Examples:
        >>> from pruning_kit import models
        >>> mlp = models.MLP(64, (32, 16), rngs=nnx.Rngs(0))
        >>> remove_channels(mlp, {"hidden.0": np.arange(10)}).config["hidden"]
        [10, 16]
    """
    groups = _check_groups(model, groups)
    keep = _check_keep(groups, keep)
    leaves = _flat_state(model)
    for name, g in groups.items():
        for m in (*g.producers, *g.consumers):
            leaves[m.leaf] = _take(leaves[m.leaf], m, keep[name])
    if new_config is None:
        if groups is not None and not isinstance(model, (models_lib.MLP, models_lib.SmallCNN)):
            raise ValueError("Pass new_config=... (the smaller model's config) with your "
                             "own groups.")
        new_config = _new_config(model, {n: len(k) for n, k in keep.items()})
    return _rebuild(model, new_config, leaves)


def mask_channels(model: nnx.Module, keep: Mapping[str, Any], *,
                  groups: Mapping[str, ChannelGroup] | None = None) -> nnx.Module:
    """A same-size copy with every removed unit zeroed: the reference for removal.

    Producers and consumers of the dropped units are set to zero (BatchNorm variance to
    one), so the dropped units contribute nothing; :func:`remove_channels` must give the
    same outputs.
    """
    groups = _check_groups(model, groups)
    keep = _check_keep(groups, keep)
    leaves = _flat_state(model)
    for name, g in groups.items():
        drop = np.setdiff1d(np.arange(g.size), keep[name])
        for m in (*g.producers, *g.consumers):
            a = jnp.asarray(leaves[m.leaf])
            shape = a.shape
            if m.view is not None:
                a = a.reshape(m.view)
            index = [slice(None)] * a.ndim
            index[m.axis] = jnp.asarray(drop, dtype=jnp.int32)
            fill = 1.0 if m.leaf.endswith(".var") else 0.0
            leaves[m.leaf] = a.at[tuple(index)].set(fill).reshape(shape)
    return _rebuild(model, model.config, leaves)


def prune_channels(model: nnx.Module, keep: float | Mapping[str, Any], *,
                   criterion: str = "l1", x: np.ndarray | None = None,
                   y: np.ndarray | None = None, round_to: int = 1
                   ) -> tuple[nnx.Module, dict[str, np.ndarray]]:
    """Score, select and remove in one call: ``(smaller model, kept indices)``.

    Examples:
        >>> from pruning_kit import models
        >>> small, kept = prune_channels(models.small_cnn(), {"stage1": 0.5, "stage2": 0.5},
        ...                              criterion="bn_scale", round_to=4)
        >>> small.config["widths"]
        [8, 16, 32]
    """
    scores = channel_importance(model, criterion, x=x, y=y)
    kept = select_channels(scores, keep, round_to=round_to)
    return remove_channels(model, kept), kept


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
        model: the model to shrink (its class and config are the starting point).
        candidates: config overrides, e.g. ``[{"widths": [16, 16, 16]}, ...]``.
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
    for override in candidates:
        config = dict(model.config, **override)
        cand = models_lib.build(kind, config)
        cand.eval()
        macs = measure.cost(cand, x)["macs"]
        if macs <= max_mac_ratio * base_macs:
            rows.append({"config": config, "macs": macs, "mac_ratio": macs / base_macs,
                         "model": cand})
    if not rows:
        raise ValueError(f"No candidate has <= {max_mac_ratio} of the model's MACs; add "
                         "narrower candidates or raise max_mac_ratio.")
    model.eval()
    base_ms = timed(model)
    for row in rows:
        row["latency_ms"] = timed(row.pop("model"))
        row["speedup"] = base_ms / row["latency_ms"]
    return sorted(rows, key=lambda r: r["latency_ms"])


# --------------------------------------------------------------------------- low rank

def svd_factors(kernel: jax.typing.ArrayLike, rank: int) -> tuple[jax.Array, jax.Array]:
    """``(u, v)`` with ``u @ v`` the best rank-``rank`` approximation of ``kernel``.

    Truncated SVD (Eckart-Young: no rank-r matrix is closer in Frobenius norm), with the
    singular values split evenly: ``u = U_r sqrt(S_r)``, ``v = sqrt(S_r) V_r^T``.

    Examples:
        >>> w = jnp.outer(jnp.arange(1.0, 4.0), jnp.ones(5))      # rank one
        >>> u, v = svd_factors(w, 1)
        >>> u.shape, v.shape, bool(jnp.allclose(u @ v, w, atol=1e-5))
        ((3, 1), (1, 5), True)
    """
    kernel = jnp.asarray(kernel, jnp.float32)
    if kernel.ndim != 2:
        raise ValueError(f"svd_factors needs a 2-D kernel, got shape {kernel.shape}.")
    if not isinstance(rank, (int, np.integer)) or not 1 <= rank <= min(kernel.shape):
        raise ValueError(f"rank must be an integer in [1, {min(kernel.shape)}] for a kernel "
                         f"of shape {kernel.shape}, got {rank!r}.")
    u, s, vt = jnp.linalg.svd(kernel, full_matrices=False)
    root = jnp.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def low_rank_params(in_features: int, out_features: int, rank: int | None) -> int:
    """Weights of a layer (bias included): dense if ``rank`` is None, else factorized."""
    if rank is None:
        return in_features * out_features + out_features
    return rank * (in_features + out_features) + out_features


def break_even_rank(in_features: int, out_features: int) -> int:
    """The largest rank that still stores fewer weights than the dense layer.

    Examples:
        >>> break_even_rank(784, 300)         # 784 * 300 / 1084 = 216.97
        216
    """
    return math.ceil(in_features * out_features / (in_features + out_features)) - 1


def low_rank(model: models_lib.MLP, ranks: Mapping[int, int] | list[int | None]
             ) -> models_lib.MLP:
    """A copy of ``model`` with the chosen layers replaced by truncated-SVD factors.

    Args:
        model: a dense :class:`~pruning_kit.models.MLP`.
        ranks: ``{layer index: rank}`` or one entry per layer (``None`` = keep dense).

    Returns:
        An MLP whose ``config["ranks"]`` records the ranks (save/load rebuild it).

    Raises:
        ValueError: not a dense MLP, a wrong number of entries, a rank outside
            ``[1, min(in, out)]``.

    Examples:
        >>> from pruning_kit import models
        >>> mlp = models.lenet_300_100()
        >>> small = low_rank(mlp, {0: 32})
        >>> small.config["ranks"], models.num_params(small)
        ([32, None, None], 66098)
    """
    if not isinstance(model, models_lib.MLP) or "ranks" in model.config:
        raise ValueError("low_rank needs a dense MLP (models.MLP without ranks); got "
                         f"{type(model).__name__} with config {getattr(model, 'config', {})}.")
    n = len(model.layers)
    if isinstance(ranks, Mapping):
        bad = sorted(i for i in ranks if not isinstance(i, int) or not 0 <= i < n)
        if bad:
            raise ValueError(f"Layer indices {bad} do not exist; the MLP has layers 0..{n - 1}.")
        ranks = [ranks.get(i) for i in range(n)]
    ranks = list(ranks)
    if len(ranks) != n:
        raise ValueError(f"ranks needs one entry per layer ({n}), got {len(ranks)}.")
    leaves = _flat_state(model)
    for i, r in enumerate(ranks):
        if r is None:
            continue
        u, v = svd_factors(leaves.pop(f"layers.{i}.kernel"), r)
        leaves[f"layers.{i}.u"], leaves[f"layers.{i}.v"] = u, v
    config = dict(model.config, ranks=ranks)
    return _rebuild(model, config, leaves)
