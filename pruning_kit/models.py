"""Flax NNX models for the course, with every width a constructor argument.

Later notebooks rebuild smaller copies of these models (fewer neurons, fewer channels),
so each model records the arguments it was built with in ``model.config``; that dict is
what :func:`pruning_kit.train.save_model` stores next to the weights, and
:func:`build` turns it back into a model.

* :class:`MLP` -- LeNet-300-100 (784-300-100-10) and any other widths.
* :class:`SmallCNN` -- two conv stages with BatchNorm, one residual block, a linear head;
  under 100k parameters at the default widths.
* :func:`student_mlp`, :func:`student_cnn` -- the small students of the distillation notebook.

All models take NHWC ``float32`` images (``(N, H, W, C)``) and return logits ``(N, classes)``.
Introduced in ``notebooks/00_compression_and_measurement.ipynb``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pruning_kit import validate

_XLA_CPU_FORMS = contextvars.ContextVar("pruning_kit_xla_cpu_forms", default=True)


@contextlib.contextmanager
def standard_forms() -> Iterator[None]:
    """Inside this block the course's CNNs use the textbook layers at inference too.

    In eval mode :class:`SmallCNN` and :class:`FoldedCNN` run the forms XLA:CPU executes
    fastest (a shifted-add first convolution, strided-slice pooling). Other runtimes have
    their own fast ``Conv`` and ``MaxPool``, so exporters
    (:func:`pruning_kit.export.to_onnx`) trace the models inside this block, where they use
    ``nnx.Conv`` and ``nnx.max_pool``: the same function, to float rounding.

    Examples:
        >>> model = SmallCNN(rngs=nnx.Rngs(0)); model.eval()
        >>> x = jnp.ones((1, 28, 28, 1))
        >>> with standard_forms():
        ...     y = model(x)
        >>> bool(jnp.allclose(y, model(x), atol=1e-5))
        True
    """
    token = _XLA_CPU_FORMS.set(False)
    try:
        yield
    finally:
        _XLA_CPU_FORMS.reset(token)


def _standard_pool(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (2, 2), strides=(2, 2))


class _Configured(nnx.Module):
    """Keeps the constructor arguments as a hashable tuple (so ``nnx.split``'s graphdef
    stays hashable under ``jax.jit``) and exposes them as the ``config`` dict."""

    _config: tuple = ()

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (widths as lists), enough to rebuild the architecture."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._config}


def _check_widths(name: str, widths: Sequence[int], *, allow_empty: bool = False) -> tuple:
    widths = tuple(widths)
    if not widths and not allow_empty:
        raise ValueError(f"{name} needs at least one width, got an empty sequence.")
    for w in widths:
        if not isinstance(w, (int,)) or isinstance(w, bool) or w < 1:
            raise ValueError(f"{name} must be positive integers, got {widths!r}. "
                             "Use e.g. (300, 100); a layer cannot have zero units.")
    return widths


class LowRankLinear(nnx.Module):
    """A dense layer whose ``(in, out)`` kernel is the product ``u @ v`` of rank ``rank``.

    ``rank * (in + out)`` weights instead of ``in * out``: fewer whenever
    ``rank < in * out / (in + out)``. :func:`pruning_kit.structure.low_rank` fills ``u``
    and ``v`` from a trained layer's truncated SVD (notebook 04).

    Examples:
        >>> from flax import nnx
        >>> layer = LowRankLinear(784, 300, 20, rngs=nnx.Rngs(0))
        >>> layer(jnp.ones((2, 784))).shape, layer.u.shape, layer.v.shape
        ((2, 300), (784, 20), (20, 300))
    """

    def __init__(self, in_features: int, out_features: int, rank: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.u = nnx.Param(init(rngs.params(), (in_features, rank)))
        self.v = nnx.Param(init(rngs.params(), (rank, out_features)) / jnp.sqrt(rank))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return (x @ self.u[...]) @ self.v[...] + self.bias[...]


class MLP(_Configured):
    """A fully connected ReLU network; ``MLP()`` is LeNet-300-100.

    Args:
        in_features: flattened input size (784 for 28x28 images, 64 for digits).
        hidden: widths of the hidden layers; may be empty (a linear classifier).
        num_classes: number of output logits.
        ranks: optional, one entry per layer: ``None`` for a dense ``nnx.Linear``, an int
            for a :class:`LowRankLinear` of that rank (made by
            :func:`pruning_kit.structure.low_rank`).
        rngs: ``nnx.Rngs`` used to initialise the weights.

    The layers are ``self.layers[0..L]``, the last one the classifier.

    Examples:
        >>> from flax import nnx
        >>> model = MLP(rngs=nnx.Rngs(0))
        >>> model(jnp.zeros((2, 28, 28, 1))).shape
        (2, 10)
        >>> sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        266610
    """

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (300, 100),
                 num_classes: int = 10, ranks: Sequence[int | None] | None = None, *,
                 rngs: nnx.Rngs):
        in_features = validate.integer("in_features", in_features)
        num_classes = validate.integer("num_classes", num_classes)
        hidden = _check_widths("hidden", hidden, allow_empty=True)
        self._config = (("in_features", in_features), ("hidden", hidden),
                        ("num_classes", num_classes))
        sizes = (in_features, *hidden, num_classes)
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        if ranks is not None:                     # recorded only when used
            ranks = tuple(ranks)
            if len(ranks) != len(pairs) or any(
                    r is not None and (not isinstance(r, int) or r < 1) for r in ranks):
                raise ValueError(f"ranks needs one entry per layer ({len(pairs)}), each None "
                                 f"or a positive int; got {ranks!r}.")
            self._config += (("ranks", ranks),)
        ranks = ranks or (None,) * len(pairs)
        self.layers = nnx.List([
            nnx.Linear(a, b, rngs=rngs) if r is None else LowRankLinear(a, b, r, rngs=rngs)
            for (a, b), r in zip(pairs, ranks, strict=True)])

    def example_input(self) -> jax.Array:
        """Two zero inputs, for tracing the model's channel graph."""
        return jnp.zeros((2, self.config["in_features"]))

    def channel_group_names(self) -> dict[str, str]:
        """Traced group names -> the course's: ``layers/i`` -> ``hidden/i`` (for a low-rank
        layer, ``layers/i/v`` -> ``hidden/i`` and its rank ``layers/i/u`` -> ``rank/i``)."""
        names = {}
        for i in range(len(self.layers)):
            names.update({f"layers/{i}": f"hidden/{i}", f"layers/{i}/v": f"hidden/{i}",
                          f"layers/{i}/u": f"rank/{i}"})
        return names

    def after_resize(self) -> None:
        """Re-read widths and ranks from the arrays after channel removal or low rank."""
        hidden, ranks = [], []
        for layer in self.layers:
            if isinstance(layer, LowRankLinear):
                out, rank = layer.v.shape[1], layer.u.shape[1]
            else:
                out, rank = layer.kernel.shape[1], None
            hidden.append(out)
            ranks.append(rank)
        config = dict(self._config)
        config["hidden"] = tuple(hidden[:-1])
        if any(r is not None for r in ranks):
            config["ranks"] = tuple(ranks)
        self._config = tuple(config.items())

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        if x.shape[1] != self.config["in_features"]:
            raise ValueError(f"MLP expects {self.config['in_features']} input features, got "
                             f"inputs of shape {x.shape}; build it with in_features="
                             f"{x.shape[1]}.")
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 on NHWC input (height and width must be even).

    Same values as ``nnx.max_pool(x, (2, 2), (2, 2))``, written as a reshape and a max:
    on XLA:CPU its gradient is a cheap elementwise mask instead of ``max_pool``'s
    select-and-scatter (``python -m benchmarks.xla_cpu_layers`` times both: 8-12x on 2
    cores). SmallCNN trains with this form.
    """
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def max_pool_2x2_strided(x: jax.Array) -> jax.Array:
    """The same pooling as :func:`max_pool_2x2`, as the maximum of four strided slices.

    Identical values. XLA:CPU fuses it with the convolution, BatchNorm and ReLU before it
    far better at inference (a 4/8-channel SmallCNN forward: about 6 ms instead of 17 ms at
    batch 256), while its gradient is slower; SmallCNN uses it in eval mode.
    """
    return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
                       jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


def conv3x3_single_channel(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A 3x3 ``SAME`` convolution of 1-channel NHWC input, as nine shifted multiply-adds.

    Same values as ``nnx.Conv`` (up to float rounding, ~1e-6) with the same ``(3, 3, 1, C)``
    kernel. XLA:CPU runs a convolution with one input channel through a slow generic path
    (9-11 ms for a batch of 256 28x28 images whatever the output width); this form takes
    0.2-0.9 ms, 10-45x less (``python -m benchmarks.xla_cpu_layers`` times both).

    Examples:
        >>> x = jnp.ones((1, 4, 4, 1)); k = jnp.ones((3, 3, 1, 2))
        >>> conv3x3_single_channel(x, k)[0, :, :, 0]    # 4, 6 or 9 neighbours inside
        Array([[4., 6., 6., 4.],
               [6., 9., 9., 6.],
               [6., 9., 9., 6.],
               [4., 6., 6., 4.]], dtype=float32)
    """
    n, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = xp[:, 0:h, 0:w, :] * kernel[0, 0, 0]
    for i in range(3):
        for j in range(3):
            if i or j:
                out = out + xp[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
    return out


class SmallCNN(_Configured):
    """A small residual CNN with BatchNorm (39,098 parameters at the default widths).

    Layout (28x28x1 input)::

        conv1 3x3 -> bn1 -> relu -> maxpool 2     (28 -> 14, widths[0] channels)
        conv2 3x3 -> bn2 -> relu -> maxpool 2     (14 -> 7,  widths[1] channels)
        res_conv1 3x3 -> res_bn1 -> relu -> res_conv2 3x3 -> res_bn2 (+ skip) -> relu
        flatten -> head (linear)

    The residual add couples ``conv2``/``bn2``'s output channels with ``res_bn2``'s: a
    channel-removal tool must shrink them together (notebook 04).

    Args:
        in_channels: image channels (1 for grey-scale).
        widths: ``(stage1_channels, stage2_channels)``, or with a third entry the channels
            inside the residual block (``res_conv1``'s output; default: stage 2's), which
            channel removal may shrink on their own.
        image_size: input height = width, used to size the head (28 or 8).
        num_classes: number of output logits.
        rngs: ``nnx.Rngs`` for initialisation.

    Call ``model.train()`` before training and ``model.eval()`` for inference (BatchNorm
    uses batch statistics in train mode, running averages in eval mode). Eval mode also
    switches to the layer forms XLA:CPU runs fastest at inference
    (:func:`conv3x3_single_channel` for 1-channel input, :func:`max_pool_2x2_strided`);
    the outputs agree with the train-mode forms to float rounding (~1e-6).

    Examples:
        >>> from flax import nnx
        >>> model = SmallCNN(rngs=nnx.Rngs(0))
        >>> model.eval()
        >>> model(jnp.zeros((2, 28, 28, 1))).shape
        (2, 10)
    """

    #: Layers in forward order (tables and channel-removal tools list them this way).
    LAYER_ORDER = ("conv1", "bn1", "conv2", "bn2", "res_conv1", "res_bn1", "res_conv2",
                   "res_bn2", "head")

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32),
                 image_size: int = 28, num_classes: int = 10, *, rngs: nnx.Rngs):
        in_channels = validate.integer("in_channels", in_channels)
        num_classes = validate.integer("num_classes", num_classes)
        image_size = validate.integer("image_size", image_size)
        widths = _check_widths("widths", widths)
        if len(widths) not in (2, 3):
            raise ValueError(f"SmallCNN takes two widths (stage 1, stage 2) or three (and the "
                             f"residual block's inner width), got {widths!r}.")
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two 2x2 pools), got "
                             f"{image_size}.")
        self._config = (("in_channels", in_channels), ("widths", widths),
                        ("image_size", image_size), ("num_classes", num_classes))
        c1, c2, c_res = (*widths, widths[1])[:3]
        conv = dict(kernel_size=(3, 3), padding="SAME", rngs=rngs)
        bn = dict(momentum=0.9, rngs=rngs)
        self.conv1 = nnx.Conv(in_channels, c1, use_bias=False, **conv)
        self.bn1 = nnx.BatchNorm(c1, **bn)
        self.conv2 = nnx.Conv(c1, c2, use_bias=False, **conv)
        self.bn2 = nnx.BatchNorm(c2, **bn)
        self.res_conv1 = nnx.Conv(c2, c_res, use_bias=False, **conv)
        self.res_bn1 = nnx.BatchNorm(c_res, **bn)
        self.res_conv2 = nnx.Conv(c_res, c2, use_bias=False, **conv)
        self.res_bn2 = nnx.BatchNorm(c2, **bn)
        side = image_size // 4
        self.head = nnx.Linear(side * side * c2, num_classes, rngs=rngs)

    def example_input(self) -> jax.Array:
        """Two zero images, for tracing the model's channel graph."""
        c = self.config
        return jnp.zeros((2, c["image_size"], c["image_size"], c["in_channels"]))

    def channel_group_names(self) -> dict[str, str]:
        """Traced group names (the layer computing a group) -> the course's names."""
        return {"conv1": "stage1", "conv2": "stage2", "res_conv1": "res_inner"}

    def after_resize(self) -> None:
        """Re-read the widths from the kernels after channel removal."""
        config = dict(self._config)
        config["widths"] = (self.conv1.kernel.shape[-1], self.conv2.kernel.shape[-1],
                            self.res_conv1.kernel.shape[-1])
        self._config = tuple(config.items())

    def features(self, x: jax.Array) -> dict[str, jax.Array]:
        """Intermediate activations by name (used for feature distillation)."""
        if x.ndim != 4 or x.shape[-1] != self.config["in_channels"]:
            raise ValueError(f"SmallCNN expects NHWC images with {self.config['in_channels']} "
                             f"channel(s), got shape {x.shape}.")
        out = {}
        # Eval mode runs the forms XLA:CPU executes fastest at inference, train mode the
        # ones with the fastest gradients; they compute the same function.
        inference = bool(self.bn1.use_running_average)
        xla_forms = inference and _XLA_CPU_FORMS.get()
        pool = (max_pool_2x2_strided if xla_forms else
                _standard_pool if inference else max_pool_2x2)
        if xla_forms and self.config["in_channels"] == 1:
            y = conv3x3_single_channel(x, self.conv1.kernel[...])
        else:
            y = self.conv1(x)
        x = pool(jax.nn.relu(self.bn1(y)))
        out["stage1"] = x
        x = pool(jax.nn.relu(self.bn2(self.conv2(x))))
        out["stage2"] = x
        h = jax.nn.relu(self.res_bn1(self.res_conv1(x)))
        x = jax.nn.relu(x + self.res_bn2(self.res_conv2(h)))
        out["residual"] = x
        out["logits"] = self.head(x.reshape((x.shape[0], -1)))
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.features(x)["logits"]


class FoldedCNN(_Configured):
    """:class:`~pruning_kit.models.SmallCNN` for inference, BatchNorm folded into the convs.

    The same layers without BatchNorm: each conv has a bias, and the forward pass uses the
    forms XLA:CPU runs fastest (shifted-add first conv for 1-channel input, strided
    pooling). Build one from a trained SmallCNN with
    :func:`pruning_kit.deep_compression.fold_cnn_model`; it is registered in :data:`MODEL_CLASSES`,
    so ``codec.save``/``codec.load`` handle it (notebook 05).
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32), image_size: int = 28,
                 num_classes: int = 10, *, rngs: nnx.Rngs):
        widths = _check_widths("widths", widths)
        if len(widths) not in (2, 3):
            raise ValueError(f"FoldedCNN takes two or three widths, got {widths!r}.")
        self._config = (("in_channels", in_channels), ("widths", widths),
                        ("image_size", image_size), ("num_classes", num_classes))
        c1, c2, c_res = (*widths, widths[1])[:3]
        conv = dict(kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.conv1 = nnx.Conv(in_channels, c1, **conv)
        self.conv2 = nnx.Conv(c1, c2, **conv)
        self.res_conv1 = nnx.Conv(c2, c_res, **conv)
        self.res_conv2 = nnx.Conv(c_res, c2, **conv)
        self.head = nnx.Linear((image_size // 4) ** 2 * c2, num_classes, rngs=rngs)

    @classmethod
    def from_folded(cls, folded: SmallCNN) -> FoldedCNN:
        """The BatchNorm-free CNN holding a SmallCNN whose norms were folded into its convs
        (``fold.fold_batchnorm_model``: each norm left as a pure bias add)."""
        c = folded.config
        out = cls(c["in_channels"], c["widths"], c["image_size"], c["num_classes"],
                  rngs=nnx.Rngs(0))
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("res_conv1", "res_bn1"),
                         ("res_conv2", "res_bn2")):
            norm = getattr(folded, bn)
            if float(jnp.abs(norm.mean[...]).max()) != 0 or float(
                    jnp.abs(norm.scale[...] - 1).max()) != 0:
                raise ValueError(f"{bn} is not folded (mean 0, scale 1); fold the model with "
                                 "fold.fold_batchnorm_model first.")
            getattr(out, conv).kernel[...] = jnp.array(getattr(folded, conv).kernel[...])
            getattr(out, conv).bias[...] = jnp.array(norm.bias[...])
        out.head.kernel[...] = jnp.array(folded.head.kernel[...])
        out.head.bias[...] = jnp.array(folded.head.bias[...])
        out.eval()
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        xla_forms = _XLA_CPU_FORMS.get()
        pool = max_pool_2x2_strided if xla_forms else _standard_pool
        if xla_forms and self.config["in_channels"] == 1:
            y = conv3x3_single_channel(x, self.conv1.kernel[...]) \
                + self.conv1.bias[...]
        else:
            y = self.conv1(x)
        x = pool(jax.nn.relu(y))
        x = pool(jax.nn.relu(self.conv2(x)))
        h = jax.nn.relu(self.res_conv1(x))
        x = jax.nn.relu(x + self.res_conv2(h))
        return self.head(x.reshape((x.shape[0], -1)))




MODEL_CLASSES: dict[str, type[nnx.Module]] = {"MLP": MLP, "SmallCNN": SmallCNN,
                                              "FoldedCNN": FoldedCNN}


def lenet_300_100(in_features: int = 784, num_classes: int = 10, *, seed: int = 0) -> MLP:
    """The 784-300-100-10 MLP of LeCun et al. (1998) and Han et al. (2015)."""
    return MLP(in_features, (300, 100), num_classes, rngs=nnx.Rngs(seed))


def small_cnn(widths: Sequence[int] = (16, 32), *, image_size: int = 28,
              num_classes: int = 10, seed: int = 0) -> SmallCNN:
    """The course's baseline CNN (see :class:`SmallCNN`)."""
    return SmallCNN(1, widths, image_size, num_classes, rngs=nnx.Rngs(seed))


def student_mlp(in_features: int = 784, num_classes: int = 10, *, seed: int = 0) -> MLP:
    """A narrow student MLP (784-32-10, about 25k parameters)."""
    return MLP(in_features, (32,), num_classes, rngs=nnx.Rngs(seed))


def student_cnn(*, image_size: int = 28, num_classes: int = 10, seed: int = 0) -> SmallCNN:
    """A tiny student CNN (4/8 channels, 5,462 parameters: 7x fewer than the baseline)."""
    return SmallCNN(1, (4, 8), image_size, num_classes, rngs=nnx.Rngs(seed))


def build(kind: str, config: dict[str, Any], *, seed: int = 0) -> nnx.Module:
    """Rebuild a model from its class name and ``model.config`` (fresh weights).

    Examples:
        >>> m = build("MLP", {"in_features": 64, "hidden": [32], "num_classes": 10})
        >>> m.config["hidden"]
        [32]
    """
    if kind not in MODEL_CLASSES:
        raise ValueError(f"Unknown model class {kind!r}; known: {sorted(MODEL_CLASSES)}. "
                         "Register your own in pruning_kit.models.MODEL_CLASSES.")
    try:
        return MODEL_CLASSES[kind](**config, rngs=nnx.Rngs(seed))
    except TypeError as err:
        raise ValueError(f"Config {config!r} does not fit {kind}: {err}") from err


def num_params(model: nnx.Module) -> int:
    """Number of trainable parameters (``nnx.Param`` leaves) in ``model``."""
    return int(sum(jnp.size(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))
