"""Interactive explorers for the notebooks (ipywidgets), testable without a browser.

Every explorer measures or computes its answers once, caches them, and only looks them up
when a control moves (``continuous_update=False``), so a slider answers at once. Each one
exposes its controls and a plain-text ``readout`` so tests can set ``.value`` and check the
result headlessly. Displayed, each one is the live widget plus, in the same output, a PNG of
its figure and readout for readers of a saved notebook (GitHub, PDF): see ``_Explorer``.

Accuracies in ``results`` are fractions in [0, 1], as everywhere in the package; the readouts
and figures show them in percent.

Introduced in ``notebooks/00_compression_and_measurement.ipynb``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from pruning_kit import graph, measure, train


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"x and y must be non-empty and equally long, got {len(x)} and "
                         f"{len(y)}.")
    return np.asarray(x), np.asarray(y)


def _accuracy_axis(ax, xs: Sequence, curves: dict[str, tuple[list[float], str]],
                   baseline: tuple[str, float] | None, star: tuple[float, float], xlabel: str,
                   title: str) -> None:
    """Accuracy curves (fractions, drawn in percent), a dotted baseline and a red star."""
    for label, (accs, style) in curves.items():
        ax.plot(xs, 100 * np.asarray(accs, float), style, label=label)
    if baseline is not None:
        ax.axhline(100 * baseline[1], color="k", ls=":", label=baseline[0])
    ax.plot([star[0]], [100 * star[1]], "r*", markersize=15, zorder=5)
    ax.set(xlabel=xlabel, ylabel="accuracy (%) on the data given", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


class _Explorer:
    """What every explorer shares: its layout, its update cycle and how it is displayed.

    A subclass builds its controls and calls :meth:`_start`, which puts them above a bold
    readout and an output for the figure, redraws on every change of a control's value, and
    draws the first state. Each redraw calls the subclass's :meth:`_render` (compute or look
    up the answer, draw one figure, return the readout text) and records ``readout`` and
    ``last_update_ms`` (wall time of the update: computation and drawing).

    Displayed, the explorer is one output whose bundle holds the widget view, an
    ``image/png`` of the figure as it is (with the readout under it) and a ``text/plain``
    line, for readers of a saved notebook (GitHub, nbconvert HTML without widget state,
    PDF). A live JupyterLab renders only its preferred type, the widget, so there is no
    duplicate picture; a renderer without widgets falls back to the PNG.
    """

    widget: W.Widget
    readout: str = ""
    last_update_ms: float = float("nan")
    _figure = None          # the figure of the last update (set by ``_update``)

    def _start(self, *controls: W.Widget) -> None:
        """Lay out ``controls`` (one row) above the readout and figure; draw the first state."""
        self.label, self.output = W.HTML(), W.Output()
        for control in controls:
            control.observe(self._update, names="value")
        top = controls[0] if len(controls) == 1 else W.HBox(list(controls))
        self.widget = W.VBox([top, self.label, self.output])
        self._update()

    def _render(self) -> tuple[str, Figure]:
        """The readout and the figure for the controls' current values."""
        raise NotImplementedError

    def _update(self, *_) -> None:
        start = time.perf_counter()
        self.output.clear_output(wait=True)
        if self._figure is not None:    # one figure per explorer: backends that keep shown
            plt.close(self._figure)     # figures open (ipympl, Agg) would pile them up
        with self.output:
            self.readout, self._figure = self._render()
            plt.show()
        self.label.value = f"<b>{self.readout}</b>"
        self.last_update_ms = 1000 * (time.perf_counter() - start)

    def _static_png(self) -> bytes | None:
        """The last update's figure with the readout under it, as PNG bytes."""
        import io
        import textwrap

        fig = self._figure
        if fig is None:
            return None
        note = fig.text(0.5, 0.0, textwrap.fill(self.readout, 120), ha="center", va="top",
                        fontsize=9)
        try:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", bbox_inches="tight")
        finally:
            note.remove()
        return buf.getvalue()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        import base64

        bundle = dict(self.widget._repr_mimebundle_())
        bundle["text/plain"] = (f"{type(self).__name__}: {self.readout}\n(an interactive "
                                "explorer: run the notebook in JupyterLab to use its controls)")
        png = self._static_png()
        if png is not None:
            bundle["image/png"] = base64.b64encode(png).decode("ascii")
        return bundle

    def _ipython_display_(self):
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)


class LatencyExplorer(_Explorer):
    """Latency against batch size for several models, measured once, explored live.

    Args:
        models: display name -> Flax NNX model.
        x: example inputs (tiled when a batch size exceeds their number).
        batch_sizes: the slider's stops.
        runs: timed calls per point (the median is shown).

    Attributes:
        results: ``{(name, batch_size): LatencyResult}``, every measurement made.
        model_dropdown, batch_slider: the controls.
        readout: the text shown under the controls (what the tests check);
        last_update_ms: wall time of the last update.

    Example (in a notebook; ``explorer`` as the cell's last line shows the widget)::

        explorer = LatencyExplorer({"MLP": mlp, "CNN": cnn}, fashion.x_test)
        explorer.batch_slider.value = 256      # what moving the slider does
        explorer.readout   # 'MLP, batch 256: 1.15 ms per batch = 4.49 us per example (...)'
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
        self._start(self.model_dropdown, self.batch_slider)

    def per_example_us(self, name: str) -> list[float]:
        """Median microseconds per example at each batch size, for model ``name``."""
        return [1000.0 * self.results[(name, b)].median_ms / b for b in self.batch_sizes]

    def _render(self) -> tuple[str, Figure]:
        name, b = self.model_dropdown.value, self.batch_slider.value
        r = self.results[(name, b)]
        per_ex_us = 1000.0 * r.median_ms / b
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
        return (f"{name}, batch {b}: {r.median_ms:.3g} ms per batch = {per_ex_us:.3g} us per "
                f"example ({1e6 / per_ex_us:,.0f} examples/s)"), fig


class BitWidthExplorer(_Explorer):
    """Weight-only quantization of a model, explored with a bit-width slider.

    For each setting (bits, per-tensor or per-channel) the explorer quantizes every kernel
    (symmetric, round-to-nearest), measures the accuracy on ``x, y`` with the quantized
    weights, counts the bytes :func:`pruning_kit.quant_storage.quantize_tree` really stores
    (packed codes plus scales), and draws the distribution of the rounding error. Results
    are cached, so a setting seen once answers immediately; the first visit costs one
    evaluation (``bits`` is a traced value, so no setting recompiles the model). A slider
    invites choosing a bit-width, so give it the validation split (notebook 01 does) and
    keep the test set for reporting.

    Args:
        model: a trained Flax NNX classifier.
        x, y: the evaluation set (the validation split when choosing).
        bits_options: the slider's stops.

    Attributes:
        results: ``{(bits, per_channel): {"accuracy", "bytes", "errors"}}`` (accuracy a
            fraction); ``float_accuracy``: the float32 model's.
        bits_slider, per_channel_toggle: the controls; ``readout``: the text shown.
        last_update_ms: wall time of the last update (computation + drawing).
    """

    def __init__(self, model: nnx.Module, x: np.ndarray, y: np.ndarray,
                 bits_options: Sequence[int] = (2, 3, 4, 5, 6, 8), *, precompute: bool = True,
                 progress: bool = True):
        import jax

        from pruning_kit import quant_storage, quantize

        self._x, self._y = _check_xy(x, y)
        bits_options = sorted(set(int(b) for b in bits_options))
        if bits_options[0] < 2 or bits_options[-1] > 16:
            raise ValueError(f"bits must be between 2 and 16, got {bits_options}.")
        self._q = quant_storage
        model = graph.eval_copy(model)            # the caller's model keeps its mode
        self._graphdef, self._params, self._rest = nnx.split(model, nnx.Param, ...)
        self._fp32_bytes = 4 * sum(int(np.size(a)) for a in jax.tree.leaves(self._params))

        def logits(params, bits, x, per_channel):
            axis = -1 if per_channel else None
            qparams = jax.tree.map(  # kernels only; biases stay float
                lambda v: quantize.fake_quant(v, bits, axis=axis) if v.ndim >= 2 else v, params)
            return nnx.merge(self._graphdef, qparams, self._rest)(x)

        self._logits = jax.jit(logits, static_argnums=(3,))
        self.results: dict[tuple[int, bool], dict] = {}
        self.bits_options = bits_options
        self.float_accuracy = train.evaluate(model, self._x, self._y)
        if precompute:
            jobs = [(b, pc) for b in bits_options for pc in (True, False)]
            for b, pc in tqdm(jobs, desc="quantizing", disable=not progress, leave=False):
                self.result(b, pc)
        self.bits_slider = W.SelectionSlider(options=bits_options, value=bits_options[-1],
                                             description="bits", continuous_update=False)
        self.per_channel_toggle = W.ToggleButtons(options=[("per-channel", True),
                                                           ("per-tensor", False)],
                                                  value=True, description="scales")
        self._start(self.bits_slider, self.per_channel_toggle)

    def _accuracy(self, bits: int, per_channel: bool) -> float:
        import jax.numpy as jnp

        return train.evaluate(
            lambda xb: self._logits(self._params, jnp.int32(bits), xb, per_channel),
            self._x, self._y, batch_size=2000)

    def result(self, bits: int, per_channel: bool) -> dict:
        """Accuracy (fraction), stored bytes and rounding errors for one setting (cached)."""
        import jax

        key = (int(bits), bool(per_channel))
        if key not in self.results:
            axis = -1 if per_channel else None
            qtree = self._q.quantize_tree(self._params, bits, axis=axis)
            deq = self._q.dequantize_tree(qtree)
            errors = np.concatenate([
                (np.asarray(d) - np.asarray(w)).ravel()
                for w, d in zip(jax.tree.leaves(self._params), jax.tree.leaves(deq),
                                strict=True) if np.ndim(w) >= 2])
            self.results[key] = {"accuracy": self._accuracy(bits, per_channel),
                                 "bytes": self._q.tree_nbytes(qtree), "errors": errors}
        return self.results[key]

    def _render(self) -> tuple[str, Figure]:
        bits, pc = self.bits_slider.value, self.per_channel_toggle.value
        r = self.result(bits, pc)
        mode = "per-channel" if pc else "per-tensor"
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.3))
        _accuracy_axis(ax1, self.bits_options, {
            name: ([self.results[(b, on)]["accuracy"] if (b, on) in self.results else np.nan
                    for b in self.bits_options], style)
            for name, on, style in (("per-channel", True, "o-"), ("per-tensor", False, "s--"))},
            ("float32", self.float_accuracy), (bits, r["accuracy"]), "weight bits", "accuracy")
        ax2.hist(r["errors"], bins=80, color="tab:orange")
        ax2.set(xlabel="quantized - original weight", ylabel="count", yscale="log",
                title=f"rounding error, {bits}-bit {mode}")
        return (f"{bits}-bit {mode}: accuracy {100 * r['accuracy']:.2f}% "
                f"({100 * (r['accuracy'] - self.float_accuracy):+.2f} pt), "
                f"{measure.format_bytes(r['bytes'])} stored "
                f"({self._fp32_bytes / r['bytes']:.1f}x smaller than float32)"), fig


class TemperatureExplorer(_Explorer):
    """A teacher's softened probabilities ``softmax(z / T)`` for chosen images, live in T.

    At ``T = 1`` a confident teacher puts nearly all its mass on one class; as ``T`` grows,
    the small probabilities it gives to the *wrong* classes become visible -- which classes
    it thinks an image resembles ("dark knowledge"), the signal a distilled student learns
    from. Computing a softmax of 10 logits is instant, so nothing needs caching.

    Args:
        logits: the teacher's logits for the images, shape ``(n, classes)``.
        images: the images, ``(n, H, W, 1)``, shown beside the bars.
        labels: true labels, ``(n,)``.
        classes: class names.
        temperatures: the slider's stops.

    Attributes:
        temperature_slider, image_dropdown: the controls; ``readout``: the text shown.

    Example (in a notebook)::

        explorer = TemperatureExplorer(teacher_logits[:8], x_test[:8], y_test[:8],
                                       fashion.classes)
        explorer.temperature_slider.value = 8
    """

    def __init__(self, logits: np.ndarray, images: np.ndarray, labels: np.ndarray,
                 classes: Sequence[str], temperatures: Sequence[float] = (1, 2, 4, 8, 16, 32)):
        logits = np.asarray(logits, np.float64)
        if logits.ndim != 2 or logits.shape[1] != len(classes):
            raise ValueError(f"logits must have shape (n, {len(classes)}), got "
                             f"{logits.shape}.")
        if not (len(logits) == len(images) == len(labels)) or len(logits) == 0:
            raise ValueError("logits, images and labels must be non-empty and equally long.")
        temperatures = sorted(float(t) for t in temperatures)
        if temperatures[0] <= 0:
            raise ValueError(f"temperatures must be > 0, got {temperatures}.")
        self.logits, self.images, self.labels = logits, np.asarray(images), np.asarray(labels)
        self.classes = list(classes)
        self.temperature_slider = W.SelectionSlider(
            options=temperatures, value=temperatures[0], description="T",
            continuous_update=False)
        self.image_dropdown = W.Dropdown(
            options=[(f"#{i}: {self.classes[int(y)]}", i) for i, y in enumerate(self.labels)],
            value=0, description="image")
        self._start(self.image_dropdown, self.temperature_slider)

    def probabilities(self, index: int, temperature: float) -> np.ndarray:
        """``softmax(logits[index] / temperature)`` (computed stably in float64)."""
        z = self.logits[index] / temperature
        e = np.exp(z - z.max())
        return e / e.sum()

    def _render(self) -> tuple[str, Figure]:
        i, t = self.image_dropdown.value, self.temperature_slider.value
        p = self.probabilities(i, t)
        order = np.argsort(p)[::-1]
        entropy = float(-(p * np.log2(np.clip(p, 1e-300, None))).sum())
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3),
                                       gridspec_kw={"width_ratios": [1, 3]})
        ax1.imshow(self.images[i][..., 0], cmap="gray_r")
        ax1.set_title(f"true: {self.classes[int(self.labels[i])]}", fontsize=9)
        ax1.axis("off")
        colors = ["tab:green" if k == int(self.labels[i]) else "tab:blue" for k in range(len(p))]
        ax2.bar(range(len(p)), p, color=colors)
        ax2.set_xticks(range(len(p)), self.classes, rotation=45, ha="right", fontsize=8)
        ax2.set(ylim=(0, 1), ylabel="probability", title=f"teacher's softmax(z / T) at T = {t:g}")
        return (f"T = {t:g}: {self.classes[order[0]]} {p[order[0]]:.3f}, then "
                f"{self.classes[order[1]]} {p[order[1]]:.3f} and "
                f"{self.classes[order[2]]} {p[order[2]]:.3f}; entropy "
                f"{entropy:.2f} bits (uniform: {np.log2(len(p)):.2f})"), fig


class RankExplorer(_Explorer):
    """Low-rank factorization of one MLP layer, explored with a rank slider.

    The layer's kernel ``W`` is factorized once by SVD; rank ``r`` keeps the ``r`` largest
    singular values (:func:`pruning_kit.structure.svd_factors`). Accuracy is computed with
    ``r`` as a *traced* value (singular values beyond ``r`` are masked), so no rank
    recompiles; latency is measured once per rank on the real factorized model
    (``u @ v`` as two matmuls) -- what a deployed model would run.

    Args:
        model: a trained model with ``nnx.Linear`` layers (any NNX model; not changed).
        x, y: evaluation set.
        layer: the dense layer to factorize: an index into
            :func:`pruning_kit.structure.dense_layers` (default 0, the first: LeNet's
            784x300) or its path.
        ranks: the slider's stops.
        batch_size: the batch latency is measured at.
        runs: timed calls per latency measurement (the median is shown).

    Attributes:
        results: ``{rank: {"accuracy", "params", "latency_ms"}}`` (``rank`` None = dense;
            accuracy a fraction); ``dense_accuracy``.
        rank_slider: the control; ``readout``: the text shown; ``last_update_ms``.
    """

    def __init__(self, model, x: np.ndarray, y: np.ndarray, *, layer: int = 0,
                 ranks: Sequence[int] = (4, 8, 16, 32, 64, 128, 216), batch_size: int = 256,
                 runs: int = 20, progress: bool = True):
        import jax
        import jax.numpy as jnp

        from pruning_kit import models as models_lib
        from pruning_kit import structure

        path = structure.layer_path(model, layer)
        dense = structure.dense_layers(model)[path]
        if isinstance(dense, models_lib.LowRankLinear):
            raise ValueError(f"Layer {path} is already low rank; explore the dense model.")
        self._x, self._y = _check_xy(x, y)
        kernel_shape = dense.kernel.shape                # a 1x1 conv's is (1, 1, in, out)
        kernel = dense.kernel[...].reshape(kernel_shape[-2:])
        full = min(kernel.shape)
        ranks = sorted(set(int(r) for r in ranks))
        if ranks[0] < 1 or ranks[-1] > full:
            raise ValueError(f"ranks must be in [1, {full}] for a {kernel.shape} kernel, got "
                             f"{ranks}.")
        model = graph.eval_copy(model)           # the caller's model keeps its mode
        self.model, self.layer, self.ranks, self._runs = model, path, ranks, runs
        self.shape = tuple(kernel.shape)
        u, s, vt = jnp.linalg.svd(kernel, full_matrices=False)
        self.singular_values = np.asarray(s)
        graphdef, state = nnx.split(model)

        def logits(state, r, xb):
            m = nnx.merge(graphdef, state)
            keep = (jnp.arange(s.shape[0]) < r).astype(s.dtype)
            structure.dense_layers(m)[path].kernel[...] = ((u * (s * keep)) @ vt).reshape(
                kernel_shape)
            return m(xb)

        self._logits = jax.jit(logits)
        self._state = state
        self.results: dict = {}
        self._batch = np.resize(self._x, (batch_size, *self._x.shape[1:]))
        jobs = [None, *ranks]
        for r in tqdm(jobs, desc="factorizing", disable=not progress, leave=False):
            self.result(r)
        self.dense_accuracy = self.results[None]["accuracy"]
        self.rank_slider = W.SelectionSlider(options=ranks, value=ranks[len(ranks) // 2],
                                             description="rank", continuous_update=False)
        self._start(self.rank_slider)

    def _accuracy(self, rank: int) -> float:
        import jax.numpy as jnp

        return train.evaluate(lambda xb: self._logits(self._state, jnp.int32(rank), xb),
                              self._x, self._y, batch_size=2500)

    def result(self, rank: int | None) -> dict:
        """Accuracy (fraction), layer parameters and measured latency for ``rank`` (cached)."""
        from pruning_kit import structure

        if rank not in self.results:
            n_in, n_out = self.shape
            if rank is None:
                acc, model = self._accuracy(min(self.shape)), self.model
            else:
                acc, model = self._accuracy(rank), structure.low_rank(self.model,
                                                                      {self.layer: rank})
            self.results[rank] = {
                "accuracy": acc, "params": structure.low_rank_params(n_in, n_out, rank),
                "latency_ms": measure.latency(model, self._batch, runs=self._runs).median_ms}
        return self.results[rank]

    def _render(self) -> tuple[str, Figure]:
        r = self.rank_slider.value
        res, dense = self.result(r), self.results[None]
        energy = float((self.singular_values[:r] ** 2).sum() / (self.singular_values ** 2).sum())
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.2))
        # log10 on linear axes: matplotlib's log scales cost ~0.1 s per redraw
        ax1.plot(np.log10(self.singular_values), color="tab:gray")
        ax1.axvline(r, color="r", ls="--")
        ax1.set(xlabel="index", ylabel="log10 singular value",
                title=f"spectrum of layer {self.layer} {self.shape}")
        pos = np.arange(len(self.ranks))
        _accuracy_axis(ax2, pos, {"rank-r model": ([self.results[k]["accuracy"]
                                                    for k in self.ranks], "o-")},
                       ("dense", self.dense_accuracy), (self.ranks.index(r), res["accuracy"]),
                       "rank", "accuracy without fine-tuning")
        ax2.set_xticks(pos, [str(k) for k in self.ranks])
        return (f"rank {r}: accuracy {100 * res['accuracy']:.2f}% "
                f"({100 * (res['accuracy'] - self.dense_accuracy):+.2f} pt), layer "
                f"{res['params']:,} params ({dense['params'] / res['params']:.1f}x fewer), "
                f"{energy:.1%} of the spectrum's energy, model "
                f"{res['latency_ms']:.2f} ms vs {dense['latency_ms']:.2f} ms dense "
                f"at batch {len(self._batch)}"), fig


class SparsityExplorer(_Explorer):
    """Magnitude pruning of a trained model, explored with a sparsity slider.

    Each setting prunes every kernel by magnitude (:func:`pruning_kit.prune.magnitude_masks`,
    per layer or global) *without* fine-tuning and shows the accuracy on ``x, y``, the
    sparsity each layer ends up with, and the histogram of the surviving weights.
    ``sparsity`` is a traced value in one jitted function, so no setting recompiles; results
    are cached. A slider invites choosing a sparsity, so give it the validation split
    (notebook 03 does) and keep the test set for reporting.

    Args:
        model: a trained Flax NNX classifier.
        x, y: the evaluation set: the validation split when the explorer helps choose.
        sparsities: the slider's stops (each in [0, 1)).

    Attributes:
        results: ``{(sparsity, scope): {"accuracy", "layers", "kept", "hist"}}`` (accuracy a
            fraction; ``kept``: number of surviving kernel weights; ``hist``: their
            histogram); ``dense_accuracy``.
        sparsity_slider, scope_toggle: the controls; ``readout``; ``last_update_ms``.
    """

    def __init__(self, model: nnx.Module, x: np.ndarray, y: np.ndarray,
                 sparsities: Sequence[float] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
                 *, precompute: bool = True, progress: bool = True):
        import jax

        from pruning_kit import prune

        self._x, self._y = _check_xy(x, y)
        sparsities = sorted(set(float(s) for s in sparsities))
        if sparsities[0] < 0 or sparsities[-1] >= 1:
            raise ValueError(f"sparsities must be in [0, 1), got {sparsities}.")
        self._prune = prune
        model = graph.eval_copy(model)            # the caller's model keeps its mode
        self._graphdef, self._params, self._rest = nnx.split(model, nnx.Param, ...)

        def logits(params, s, xb, scope):
            masks = prune.magnitude_masks(params, s, scope=scope)
            return nnx.merge(self._graphdef, prune.apply_masks(params, masks), self._rest)(xb)

        self._logits = jax.jit(logits, static_argnums=(3,))
        self.sparsities = sparsities
        self.results: dict[tuple[float, str], dict] = {}
        if precompute:
            jobs = [(s, sc) for s in sparsities for sc in ("layer", "global")]
            for s, sc in tqdm(jobs, desc="pruning", disable=not progress, leave=False):
                self.result(s, sc)
        self.dense_accuracy = self.result(0.0, "layer")["accuracy"]
        self.sparsity_slider = W.SelectionSlider(
            options=[(f"{s:.0%}", s) for s in sparsities], value=sparsities[len(sparsities) // 2],
            description="sparsity", continuous_update=False)
        self.scope_toggle = W.ToggleButtons(options=[("layer-wise", "layer"),
                                                     ("global", "global")],
                                            value="layer", description="scope")
        self._start(self.sparsity_slider, self.scope_toggle)

    def result(self, sparsity: float, scope: str) -> dict:
        """Accuracy (fraction), per-layer sparsity and surviving weights for one setting
        (cached)."""
        import jax.numpy as jnp

        key = (float(sparsity), scope)
        if key not in self.results:
            accuracy = train.evaluate(
                lambda xb: self._logits(self._params, jnp.float32(sparsity), xb, scope),
                self._x, self._y, batch_size=2500)
            masks = self._prune.magnitude_masks(self._params, float(sparsity), scope=scope)
            pruned = self._prune.apply_masks(self._params, masks)
            kept = np.concatenate([np.asarray(w)[np.asarray(w) != 0].ravel()
                                   for n, w in measure.named_params(pruned)
                                   if self._prune.default_filter(n, w)])
            counts, edges = np.histogram(kept, bins=80)
            self.results[key] = {"accuracy": accuracy,
                                 "layers": self._prune.layer_sparsity(pruned),
                                 "kept": len(kept), "hist": (counts, edges)}
        return self.results[key]

    def _render(self) -> tuple[str, Figure]:
        s, scope = self.sparsity_slider.value, self.scope_toggle.value
        r = self.result(s, scope)
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(11, 2.8), gridspec_kw={"wspace": 0.5})
        _accuracy_axis(ax1, self.sparsities, {
            sc: ([self.results[(v, sc)]["accuracy"] if (v, sc) in self.results else np.nan
                  for v in self.sparsities], style)
            for sc, style in (("layer", "o-"), ("global", "s--"))},
            None, (s, r["accuracy"]), "sparsity", "one-shot pruning")
        names = list(r["layers"])
        ax2.barh(names, [r["layers"][n] for n in names], color="tab:purple")
        ax2.set(xlim=(0, 1), xlabel="fraction pruned", title="per-layer sparsity")
        counts, edges = r["hist"]
        ax3.stairs(counts, edges, fill=True, color="tab:green")
        ax3.set(xlabel="weight value", ylabel="count",   # a log scale costs 0.1 s a draw
                title=f"{r['kept']:,} surviving weights")
        return (f"{s:.0%} {scope}: accuracy {100 * r['accuracy']:.2f}% "
                f"({100 * (r['accuracy'] - self.dense_accuracy):+.2f} pt, no fine-tuning); "
                + ", ".join(f"{n} {v:.0%}" for n, v in r["layers"].items())), fig
