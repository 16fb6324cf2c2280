"""The course's plots: weights, accuracy against compression, samples, curves, bars.

Every function draws one new figure and returns the ``matplotlib.figure.Figure``
without showing it; a notebook cell ends with ``plt.show()``. The inputs are what the
rest of the package returns: models or params pytrees, the history of
:func:`pruning_kit.train.fit`, the rows of :func:`pruning_kit.measure.measure`.

Introduced in ``notebooks/00_compression_and_measurement.ipynb``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from pruning_kit import measure as measure_lib
from pruning_kit.tree import SEP

Rows = Sequence[Mapping[str, Any]]

_AXIS_KEYS = {"ratio": "compression", "size": "serialized_bytes"}
#: Row keys holding a fraction in [0, 1], drawn as a percent.
_PERCENT_KEYS = ("accuracy", "sparsity")
_LABELS = {
    "compression": "compression ratio (x, baseline bytes / bytes)",
    "serialized_bytes": "serialized size (kB)", "dense_bytes": "dense float32 size (kB)",
    "sparsity": "sparsity (% of weights zero)", "accuracy": "test accuracy (%)",
    "macs": "multiply-accumulates per example",
}


def _shown(key: str, values: Any) -> np.ndarray:
    """Values of row key ``key`` in the units its axis shows: kB for bytes, percent for
    fractions (accuracy, sparsity), else as they are."""
    values = np.asarray(values, float)
    if key.endswith("bytes"):
        return values / 1000
    return 100 * values if key in _PERCENT_KEYS else values


def _grid(n: int, ncols: int, size: tuple[float, float]) -> tuple[Figure, list]:
    """A figure with exactly ``n`` axes on a grid of ``ncols`` columns."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        fig.delaxes(ax)
    return fig, flat[:n]


def weight_histograms(model_or_tree: Any, *, bins: int = 100, log: bool = True,
                      layers: Sequence[str] | None = None, ncols: int = 3) -> Figure:
    """One histogram per weight matrix or kernel (biases and BatchNorm are skipped).

    Zeros are left out of the histogram (after pruning they would be one tall spike) but
    counted in each title, with the layer's name and shape.

    Args:
        model_or_tree: an NNX model or a params pytree.
        bins: histogram bins.
        log: log-scale counts, so the tails stay visible.
        layers: names to plot (``"layers/0"`` or ``"layers/0/kernel"``); default all.
        ncols: subplots per row.

    Returns:
        The figure, one axis per plotted weight.

    Raises:
        ValueError: no weight matrices, or an unknown name in ``layers``.
    """
    weights = [(n, np.asarray(a)) for n, a in measure_lib.named_params(model_or_tree)
               if np.ndim(a) >= 2]
    if layers is not None:
        wanted = set(layers)
        chosen = [(n, a) for n, a in weights if n in wanted or n.rpartition(SEP)[0] in wanted]
        found = {n for n, _ in chosen} | {n.rpartition(SEP)[0] for n, _ in chosen}
        if wanted - found:
            raise ValueError(f"No weight matrix named {sorted(wanted - found)}; available: "
                             f"{[n for n, _ in weights]}.")
        weights = chosen
    if not weights:
        raise ValueError("Found no weight matrices (arrays with 2 or more dimensions) to plot.")
    fig, axes = _grid(len(weights), ncols, (4.0, 3.0))
    for ax, (name, w) in zip(axes, weights, strict=True):
        values = w[w != 0].ravel()
        sparsity = 1 - values.size / w.size
        if values.size:
            ax.hist(values, bins=bins, color="tab:blue", log=log)
        else:
            ax.text(0.5, 0.5, "all zero", ha="center", va="center", transform=ax.transAxes)
        label = name.removesuffix(f"{SEP}kernel")
        ax.set_title(f"{label} {'x'.join(map(str, w.shape))}\n"
                     f"sparsity {100 * sparsity:.1f}%", fontsize=9)
        ax.set_xlabel("weight value (zeros excluded)")
    axes[0].set_ylabel("count")
    fig.tight_layout()
    return fig


def _points(series: Any, x_key: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    xs, ys, names = [], [], []
    for i, item in enumerate(series):
        if isinstance(item, Mapping):
            if x_key not in item or "accuracy" not in item:
                raise ValueError(f"Row {i} has no {x_key!r} or 'accuracy' (keys: "
                                 f"{sorted(item)}); use compare() rows for x='ratio'.")
            xs.append(_shown(x_key, item[x_key]))
            ys.append(_shown("accuracy", item["accuracy"]))
            names.append(str(item.get("name", "")))
        else:
            x, y = item
            xs.append(x)
            ys.append(_shown("accuracy", y))
            names.append("")
    return np.asarray(xs, float), np.asarray(ys, float), names


def accuracy_vs_compression(results: Mapping[str, Any] | Rows, *, x: str = "ratio",
                            baseline: float | Mapping[str, Any] | None = None,
                            band: bool = True, log_x: bool | None = None,
                            labels: bool = False, xlabel: str | None = None,
                            title: str | None = None) -> Figure:
    """Accuracy against compression, one line per technique.

    Args:
        results: ``{series name: points}`` (or one list of points), each point an
            ``(x, accuracy)`` pair or a row from :func:`~pruning_kit.measure.measure` /
            :func:`~pruning_kit.measure.compare`; accuracies are fractions in [0, 1],
            drawn as percents.
        x: for rows, the key on the x axis: ``"ratio"`` (``compression``), ``"size"``
            (``serialized_bytes``, plotted in kB), ``"sparsity"`` (a fraction, plotted in
            percent) or any numeric key.
        baseline: the baseline accuracy (a fraction), or its row; drawn dashed.
        band: shade the band down to one point below the baseline.
        log_x: log-scale x; default on for ``"ratio"`` and ``"size"``.
        labels: write each row's ``name`` next to its point.
        xlabel, title: override the axis label / add a title.

    Returns:
        The figure (one axis).

    Raises:
        ValueError: no points, or rows lacking the x key or ``accuracy``.
    """
    x_key = _AXIS_KEYS.get(x, x)
    if not isinstance(results, Mapping):
        results = {"": results}
    if not results or not any(len(v) for v in results.values()):
        raise ValueError("accuracy_vs_compression needs at least one point.")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, series in results.items():
        xs, ys, names = _points(series, x_key)
        order = np.argsort(xs)
        ax.plot(xs[order], ys[order], marker="o", label=name or None)
        if labels:
            for xi, yi, ni in zip(xs, ys, names, strict=True):
                ax.annotate(ni, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if baseline is not None:
        acc = float(_shown("accuracy", baseline["accuracy"] if isinstance(baseline, Mapping)
                           else baseline))
        ax.axhline(acc, color="black", ls="--", lw=1, label=f"baseline {acc:.2f}%")
        if band:
            ax.axhspan(acc - 1, acc, color="tab:green", alpha=0.12, label="within 1 point")
    if log_x if log_x is not None else x in _AXIS_KEYS:
        ax.set_xscale("log")
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 2, 5, 10 rather than 10^0
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel(xlabel or _LABELS.get(x_key, x_key))
    ax.set_ylabel(_LABELS["accuracy"])
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sample_grid(x: np.ndarray, y: np.ndarray, classes: Sequence[str], *, n: int = 16,
                seed: int = 0, predictions: np.ndarray | None = None,
                ncols: int = 8) -> Figure:
    """A grid of ``n`` random images titled with their class (red where mispredicted).

    Args:
        x: images ``(N, H, W)`` or ``(N, H, W, 1)``.
        y: integer labels.
        classes: class names indexed by label.
        n: images to show, at most ``N``.
        seed: picks the images (same seed, same images).
        predictions: optional predicted labels ``(N,)`` or logits ``(N, classes)``;
            titles become ``prediction (true label)``.
        ncols: images per row.

    Raises:
        ValueError: ``n`` outside ``[1, N]`` or mismatched lengths.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels.")
    if not 1 <= n <= len(x):
        raise ValueError(f"n must be between 1 and {len(x)} (the number of images), got {n}.")
    if predictions is not None:
        predictions = np.asarray(predictions)
        predictions = predictions.argmax(-1) if predictions.ndim == 2 else predictions
        if len(predictions) != len(x):
            raise ValueError(f"predictions has {len(predictions)} entries, x has {len(x)}.")
    idx = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    fig, axes = _grid(n, ncols, (1.5, 1.7))
    for ax, i in zip(axes, idx, strict=True):
        ax.imshow(x[i].squeeze(), cmap="gray")
        true = classes[int(y[i])]
        if predictions is None:
            ax.set_title(true, fontsize=8)
        else:
            wrong = int(predictions[i]) != int(y[i])
            ax.set_title(f"{classes[int(predictions[i])]} ({true})" if wrong else true,
                         fontsize=8, color="red" if wrong else "black")
        ax.axis("off")
    fig.tight_layout()
    return fig


def training_curves(history: Mapping[str, Sequence[float]]) -> Figure:
    """Loss and accuracy per epoch from the history of :func:`pruning_kit.train.fit`.

    Raises:
        ValueError: the history has no ``loss``.
    """
    if not history.get("loss"):
        raise ValueError(f"history needs a non-empty 'loss' list (the dict fit() returns); "
                         f"got keys {sorted(history)}.")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax_loss.plot(epochs, history["loss"], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    for key, label in (("train_acc", "train"), ("val_acc", "validation")):
        if history.get(key):
            ax_acc.plot(np.arange(1, len(history[key]) + 1), 100 * np.asarray(history[key]),
                        marker="o", label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def measurement_bars(rows: Rows, metrics: Sequence[str] = ("accuracy", "serialized_bytes",
                                                           "latency_b256_ms")) -> Figure:
    """Side-by-side bar charts comparing rows of :func:`~pruning_kit.measure.measure`.

    One subplot per metric, one bar per row (labelled by its ``name``); bytes are shown
    in kB and each bar carries its value in the units of :class:`~pruning_kit.measure.Table`.

    Raises:
        ValueError: no rows, no metrics, or a metric missing from a row.
    """
    rows = list(rows)
    if not rows or not metrics:
        raise ValueError("measurement_bars needs at least one row and one metric.")
    for m in metrics:
        missing = [str(r.get("name", i)) for i, r in enumerate(rows) if m not in r]
        if missing:
            raise ValueError(f"Metric {m!r} is missing from rows {missing}; available: "
                             f"{sorted(rows[0])}.")
    names = [str(r.get("name", i)) for i, r in enumerate(rows)]
    fig, axes = _grid(len(metrics), len(metrics), (3.6, 3.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes, metrics, strict=True):
        values = np.array([float(r[m]) for r in rows])
        shown = _shown(m, values)
        bars = ax.bar(names, shown, color=[colors[i % len(colors)] for i in range(len(rows))])
        ax.bar_label(bars, [measure_lib.format_value(m, v) for v in values], fontsize=7)
        ax.set_title(_LABELS.get(m, m.replace("_", " ")), fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        if m == "accuracy":
            low = np.nanmin(shown)
            ax.set_ylim(max(0.0, low - 5), min(100.0, np.nanmax(shown) + 2))
    fig.tight_layout()
    return fig
