"""Tests for pruning_kit.plots: each function returns a Figure with the expected axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pruning_kit import models, plots  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


ROWS = [
    {"name": "dense", "accuracy": 0.90, "serialized_bytes": 4000, "compression": 1.0,
     "sparsity": 0.0, "latency_b256_ms": 2.0},
    {"name": "pruned", "accuracy": 0.895, "serialized_bytes": 1000, "compression": 4.0,
     "sparsity": 0.75, "latency_b256_ms": 1.0},
]


def test_weight_histograms_one_axis_per_kernel():
    fig = plots.weight_histograms(models.lenet_300_100())
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert fig.axes[0].get_title().startswith("layers/0 784x300")
    cnn = models.small_cnn(image_size=8)
    assert len(plots.weight_histograms(cnn).axes) == 5  # 4 convs + head; no BatchNorm
    fig = plots.weight_histograms(cnn, layers=["conv1", "head/kernel"], log=False)
    assert [ax.get_title().split()[0] for ax in fig.axes] == ["conv1", "head"]
    with pytest.raises(ValueError, match="No weight matrix named"):
        plots.weight_histograms(cnn, layers=["conv9"])


def test_weight_histograms_counts_zeros_in_title():
    w = np.ones((10, 10), np.float32)
    w[:5] = 0
    fig = plots.weight_histograms({"w": w, "b": np.zeros(10)})
    assert len(fig.axes) == 1 and "sparsity 50.0%" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="no weight matrices"):
        plots.weight_histograms({"b": np.zeros(10)})


def test_accuracy_vs_compression_series_and_baseline():
    fig = plots.accuracy_vs_compression(
        {"magnitude": ROWS, "random": [(1.0, 0.90), (4.0, 0.80), (2.0, 0.88)]},
        baseline=ROWS[0], labels=True)
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and ax.get_xscale() == "log"
    assert len(ax.lines) == 3  # two series and the baseline
    np.testing.assert_array_equal(ax.lines[1].get_xdata(), [1.0, 2.0, 4.0])  # sorted by x
    # accuracies are fractions, drawn in percent
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [90.0, 88.0, 80.0])
    np.testing.assert_allclose(ax.lines[2].get_ydata(), [90.0, 90.0])
    fig = plots.accuracy_vs_compression(ROWS, x="sparsity", baseline=0.9, band=False)
    assert fig.axes[0].get_xscale() == "linear"
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), [0.0, 75.0])
    with pytest.raises(ValueError, match="no 'macs'"):
        plots.accuracy_vs_compression({"a": ROWS}, x="macs")
    with pytest.raises(ValueError, match="at least one point"):
        plots.accuracy_vs_compression({"a": []})


def test_sample_grid_marks_wrong_predictions_red(digits):
    ds = digits
    x, y = ds.x_test[:20], ds.y_test[:20]
    fig = plots.sample_grid(x, y, ds.classes, n=10, ncols=4)
    assert len(fig.axes) == 10
    wrong = (y + 1) % 10
    fig = plots.sample_grid(x, y, ds.classes, n=6, predictions=wrong)
    colors = {matplotlib.colors.to_hex(ax.title.get_color()) for ax in fig.axes}
    assert colors == {"#ff0000"}
    with pytest.raises(ValueError, match="n must be between 1 and 20"):
        plots.sample_grid(x, y, ds.classes, n=21)


def test_training_curves_two_axes():
    history = {"loss": [1.0, 0.5, 0.3], "train_acc": [0.5, 0.8, 0.9], "val_acc": [0.5, 0.7, 0.8],
               "seconds": [1.0, 1.0, 1.0]}
    fig = plots.training_curves(history)
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 2
    assert fig.axes[1].lines[0].get_ydata()[-1] == pytest.approx(90.0)
    with pytest.raises(ValueError, match="'loss'"):
        plots.training_curves({})


def test_measurement_bars_one_axis_per_metric():
    fig = plots.measurement_bars(ROWS)
    assert len(fig.axes) == 3
    assert [b.get_height() for b in fig.axes[1].patches] == [4.0, 1.0]  # kB
    np.testing.assert_allclose([b.get_height() for b in fig.axes[0].patches], [90.0, 89.5])
    assert len(plots.measurement_bars(ROWS, metrics=("sparsity",)).axes) == 1
    with pytest.raises(ValueError, match="'macs' is missing"):
        plots.measurement_bars(ROWS, metrics=("macs",))
