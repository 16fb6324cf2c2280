"""Interactive explorers for the notebooks (ipywidgets), testable without a browser.

Every explorer measures or computes its answers once, caches them, and only looks them up
when a control moves (``continuous_update=False``), so a slider answers at once. Each one
exposes its controls and a plain-text ``readout`` so tests can set ``.value`` and check the
result headlessly.

Introduced in ``notebooks/00_compression_and_measurement.ipynb``.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pruning_kit import measure


class LatencyExplorer:
    """Latency against batch size for several models, measured once, explored live.

    Args:
        models: display name -> Flax NNX model.
        x: example inputs (tiled when a batch size exceeds their number).
        batch_sizes: the slider's stops.
        runs: timed calls per point (the median is shown).

    Attributes:
        results: ``{(name, batch_size): LatencyResult}``, every measurement made.
        model_dropdown, batch_slider: the controls.
        readout: the text shown under the controls (what the tests check).

    Examples:
        >>> explorer = LatencyExplorer({"mlp": mlp}, x_test)   # doctest: +SKIP
        >>> explorer.batch_slider.value = 256                     # doctest: +SKIP
        >>> explorer.readout                                      # doctest: +SKIP
        'mlp, batch 256: 0.41 ms per batch = 1.6 us per example (624,000 examples/s)'
    """

    def __init__(self, models: dict[str, nnx.Module], x: np.ndarray,
                 batch_sizes: Sequence[int] = (1, 4, 16, 64, 256, 1024), *, runs: int = 20,
                 progress: bool = True):
        if not models:
            raise ValueError("Pass at least one model, e.g. {'MLP': mlp}.")
        batch_sizes = sorted(set(int(b) for b in batch_sizes))
        if batch_sizes[0] < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_sizes}.")
        x = np.asarray(x)
        if len(x) == 0:
            raise ValueError("x is empty; pass some example inputs.")
        self.batch_sizes = batch_sizes
        self.results: dict[tuple[str, int], measure.LatencyResult] = {}
        jobs = [(n, b) for n in models for b in batch_sizes]
        for name, b in tqdm(jobs, desc="measuring latency", disable=not progress, leave=False):
            reps = -(-b // len(x))
            batch = np.concatenate([x] * reps)[:b] if reps > 1 else x[:b]
            self.results[(name, b)] = measure.latency(models[name], batch, runs=runs)
        self.model_dropdown = W.Dropdown(options=list(models), description="model")
        self.batch_slider = W.SelectionSlider(options=batch_sizes, value=batch_sizes[-1],
                                              description="batch size",
                                              continuous_update=False)
        self.label = W.HTML()
        self.output = W.Output()
        self.readout = ""
        self.model_dropdown.observe(self._update, names="value")
        self.batch_slider.observe(self._update, names="value")
        self.widget = W.VBox([W.HBox([self.model_dropdown, self.batch_slider]), self.label,
                              self.output])
        self._update()

    def per_example_us(self, name: str) -> list[float]:
        """Median microseconds per example at each batch size, for model ``name``."""
        return [1000.0 * self.results[(name, b)].median_ms / b for b in self.batch_sizes]

    def _update(self, *_):
        name, b = self.model_dropdown.value, self.batch_slider.value
        r = self.results[(name, b)]
        per_ex_us = 1000.0 * r.median_ms / b
        self.readout = (f"{name}, batch {b}: {r.median_ms:.3g} ms per batch = "
                        f"{per_ex_us:.3g} us per example ({1e6 / per_ex_us:,.0f} examples/s)")
        self.label.value = f"<b>{self.readout}</b>"
        self.output.clear_output(wait=True)
        with self.output:
            fig, ax = plt.subplots(figsize=(6.5, 3.5))
            for other in self.model_dropdown.options:
                ax.plot(self.batch_sizes, self.per_example_us(other), "o-", label=other,
                        alpha=1.0 if other == name else 0.4)
            ax.plot([b], [per_ex_us], "r*", markersize=16, zorder=5)
            ax.set(xscale="log", yscale="log", xlabel="batch size",
                   ylabel="median latency per example (us)",
                   title="Bigger batches amortise per-call overhead")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
            plt.show()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
