"""Where to prune: how much each layer alone can lose, and a per-layer plan from it.

:func:`layer_sensitivity` prunes one layer at a time by magnitude (no fine-tuning) and
records the accuracy at each sparsity; :func:`sparsity_from_sensitivity` turns those
curves into per-layer sparsities reaching an overall target, pruning the insensitive
layers most. Its output is a ``{leaf name: sparsity}`` dict that
:func:`pruning_kit.masks.magnitude_masks` takes as is.

Introduced in ``notebooks/03_pruning.ipynb`` (re-exported by :mod:`pruning_kit.prune`).

Examples:
    >>> sens = {"big": [0.98, 0.97], "small": [0.9, 0.5]}
    >>> sparsity_from_sensitivity(sens, (0.5, 0.9), 0.8, {"big": 900, "small": 100})
    {'big': 0.9, 'small': 0.0}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruning_kit import train as train_lib
from pruning_kit import validate
from pruning_kit.masks import Filter, apply_masks, default_filter, magnitude_masks, selected_leaves

__all__ = ["layer_sensitivity", "sparsity_from_sensitivity"]


def layer_sensitivity(model: nnx.Module, x: Any, y: Any,
                      sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95), *,
                      filter: Filter = default_filter) -> dict[str, list[float]]:
    """Accuracy when only one layer is magnitude-pruned, for each layer and sparsity.

    No fine-tuning. The pruning is one jitted function of a traced per-layer sparsity
    vector and the forward pass is :func:`pruning_kit.train.evaluate`'s, so everything
    compiles once. ``model`` is not changed.

    Returns:
        ``{leaf name: [accuracy at each sparsity]}`` (fractions in ``[0, 1]``).

    Examples:
        >>> from pruning_kit import models
        >>> x, y = np.ones((4, 64), np.float32), np.arange(4)
        >>> sens = layer_sensitivity(models.MLP(64, (16,), rngs=nnx.Rngs(0)), x, y, (0.5, 0.9))
        >>> list(sens), len(sens["layers/0/kernel"])
        (['layers/0/kernel', 'layers/1/kernel'], 2)
    """
    if not isinstance(model, nnx.Module):
        raise ValueError(f"layer_sensitivity needs an NNX model, got {type(model).__name__}.")
    levels = [validate.sparsity(s) for s in sparsities]
    if not levels:
        raise ValueError("sparsities is empty; pass e.g. (0.5, 0.9).")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    names = list(selected_leaves(params, filter))
    prune = jax.jit(lambda p, sv: apply_masks(p, magnitude_masks(
        p, dict(zip(names, sv, strict=True)), filter=filter)))
    out: dict[str, list[float]] = {}
    for i, name in enumerate(names):
        out[name] = []
        for s in levels:
            sv = np.zeros(len(names), np.float32)
            sv[i] = s
            pruned = nnx.merge(graphdef, prune(params, jnp.asarray(sv)), rest)
            out[name].append(train_lib.evaluate(pruned, x, y))
    return out


def sparsity_from_sensitivity(sensitivity: Mapping[str, Sequence[float]],
                              sparsities: Sequence[float], target_overall: float,
                              layer_sizes: Mapping[str, int] | Any, *,
                              max_drop: float | None = None, baseline: float | None = None
                              ) -> dict[str, float]:
    """Per-layer sparsities reaching ``target_overall``, pruning insensitive layers most.

    Greedy: every layer starts dense; repeatedly raise the layer whose next level (in
    ``sparsities``) costs the least accuracy per weight removed -- cost =
    ``max(acc_now - acc_next, 0) / weights removed``, ties to the step removing more weights
    -- until the weighted sparsity ``sum(size * s) / sum(size)`` reaches the target (the last
    step may overshoot: levels are discrete). With ``max_drop``, no layer goes to a level
    whose single-layer accuracy is more than ``max_drop`` below ``baseline``.

    Args:
        sensitivity: :func:`layer_sensitivity`'s output.
        sparsities: the increasing levels it was measured at.
        target_overall: overall sparsity over these layers, in ``[0, 1)``.
        layer_sizes: ``{name: number of weights}``, or the params tree to count them in.
        max_drop: optional largest accuracy drop allowed for any layer alone.
        baseline: dense accuracy; default the best accuracy in ``sensitivity``.

    Raises:
        ValueError: inconsistent inputs, or the target cannot be reached.
    """
    levels = [validate.sparsity(s) for s in sparsities]
    if not levels or any(b <= a for a, b in zip(levels, levels[1:], strict=False)) \
            or levels[0] <= 0:
        raise ValueError(f"sparsities must be increasing levels in (0, 1), got {sparsities!r}.")
    target = validate.sparsity(target_overall, name="target_overall")
    if not isinstance(layer_sizes, Mapping) or not all(
            isinstance(v, (int, np.integer)) for v in layer_sizes.values()):
        layer_sizes = {n: int(np.size(w)) for n, w in selected_leaves(
            layer_sizes, None, what="count").items()}
    sizes = {n: int(layer_sizes[n]) for n in sensitivity if n in layer_sizes}
    if len(sizes) != len(sensitivity) or not sizes:
        raise ValueError(f"layer_sizes lacks {sorted(set(sensitivity) - set(sizes))}; give "
                         "the number of weights of every layer in sensitivity.")
    for name, accs in sensitivity.items():
        if len(accs) != len(levels):
            raise ValueError(f"sensitivity[{name!r}] has {len(accs)} accuracies for "
                             f"{len(levels)} sparsities; pass the levels it was measured at.")
    base = max(max(a) for a in sensitivity.values()) if baseline is None else float(baseline)
    acc = lambda n, j: base if j < 0 else float(sensitivity[n][j])  # noqa: E731
    lvl = lambda j: 0.0 if j < 0 else levels[j]  # noqa: E731
    level = dict.fromkeys(sizes, -1)
    total, removed = sum(sizes.values()), 0.0
    while removed < target * total - 1e-9:
        steps = []
        for n, j in level.items():
            if j + 1 == len(levels) or (max_drop is not None and base - acc(n, j + 1) > max_drop):
                continue
            gain = sizes[n] * (lvl(j + 1) - lvl(j))
            steps.append((max(acc(n, j) - acc(n, j + 1), 0.0) / gain, -gain, n))
        if not steps:
            raise ValueError(f"Cannot reach {target:.1%} overall sparsity: stopped at "
                             f"{removed / total:.1%}. Lower the target, raise max_drop or "
                             "measure higher sparsities.")
        _, neg_gain, n = min(steps)
        level[n] += 1
        removed -= neg_gain
    return {n: lvl(j) for n, j in level.items()}
