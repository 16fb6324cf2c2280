"""Small classifiers written the way users write their own models (not the course's classes).

Eight architectures written the way users write them, none of them the course's classes,
used by ``tests/test_structure_any.py`` and ``python -m benchmarks.structure_any`` to show
that every technique works on your own model. They carry no ``.config`` and use ordinary
layer names; each takes ``rngs`` only, maps digits images ``(N, 8, 8, 1)`` (NHWC, values in
[0, 1]) to ``(N, 10)`` logits, and trains in a few seconds on a CPU.

The eight:
    * ``VGGNet``: conv-BN-relu stack, a 2x2 max pool, flatten, one Linear head.
    * ``ResNet``: stem, an identity ``BasicBlock`` and a projection ``BasicBlock``, GAP.
    * ``LayerNormMLP``: pre-norm LayerNorm on the input, two Linear-relu-Dropout layers.
    * ``DenseNet``: a dense block whose layers read the concatenation of all earlier maps.
    * ``MobileNet``: depthwise-separable block, then a depthwise conv with multiplier 2.
    * ``GroupedConvNet``: a grouped 3x3 conv (4 groups) between plain convs, GAP.
    * ``sequential_net``: an ``nnx.Sequential`` of a flatten function, Linears and relus.
    * ``TinyTransformer``: image rows as tokens, hand-written multi-head attention, MLP.

Attributes:
    BUILDERS: name -> builder taking ``nnx.Rngs`` and returning an untrained model.
    EPOCHS: name -> epochs that take the model past 85% validation accuracy with
        ``LEARNING_RATE`` and ``BATCH_SIZE`` (``train.fit``'s default Adam with cosine decay).
    INPUT_SHAPE: one example's shape, ``(8, 8, 1)``.

Examples:
    >>> import jax.numpy as jnp
    >>> model = BUILDERS["resnet"](nnx.Rngs(0))
    >>> model(jnp.zeros((2, *INPUT_SHAPE))).shape
    (2, 10)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

INPUT_SHAPE = (8, 8, 1)
LEARNING_RATE = 3e-3
BATCH_SIZE = 32


def flatten(x: jax.Array) -> jax.Array:
    """``(N, ...) -> (N, features)``."""
    return x.reshape(x.shape[0], -1)


class VGGNet(nnx.Module):
    """Two conv-BN-relu layers, 2x2 max pool, one more conv-BN-relu, flatten, Linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.conv3 = nnx.Conv(16, 16, (3, 3), rngs=rngs)
        self.bn3 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.fc = nnx.Linear(4 * 4 * 16, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.bn3(self.conv3(x)))
        x = x.reshape(x.shape[0], -1)
        return self.fc(x)


class BasicBlock(nnx.Module):
    """conv-BN-relu-conv-BN plus a shortcut (identity, or 1x1 conv + BN), then relu."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_channels, out_channels, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(out_channels, out_channels, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs)
        if in_channels != out_channels:
            self.shortcut_conv = nnx.Conv(in_channels, out_channels, (1, 1), rngs=rngs)
            self.shortcut_bn = nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs)
        else:
            self.shortcut_conv = None
            self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut_conv is not None:
            x = self.shortcut_bn(self.shortcut_conv(x))
        return nnx.relu(out + x)


class ResNet(nnx.Module):
    """Stem conv, an identity block (8->8), a projection block (8->16), GAP, Linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.stem_bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.blocks = nnx.List([BasicBlock(8, 8, rngs=rngs), BasicBlock(8, 16, rngs=rngs)])
        self.fc = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        x = x.mean(axis=(1, 2))
        return self.fc(x)


class LayerNormMLP(nnx.Module):
    """Flatten, LayerNorm on the input, two Linear-relu-Dropout layers, Linear head."""

    def __init__(self, rngs: nnx.Rngs):
        self.inp_norm = nnx.LayerNorm(64, rngs=rngs)
        self.fc1 = nnx.Linear(64, 48, rngs=rngs)
        self.fc2 = nnx.Linear(48, 32, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.out = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.inp_norm(x.reshape(x.shape[0], -1))
        x = self.drop(nnx.relu(self.fc1(x)))
        x = self.drop(nnx.relu(self.fc2(x)))
        return self.out(x)


class DenseNet(nnx.Module):
    """Stem, 2x2 max pool, a two-layer dense block (16 -> 24 -> 32), 1x1 transition, GAP."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.stem_bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        growth = 8
        self.dense1 = nnx.Conv(16, growth, (3, 3), rngs=rngs)
        self.dense2 = nnx.Conv(16 + growth, growth, (3, 3), rngs=rngs)
        self.transition = nnx.Conv(16 + 2 * growth, 16, (1, 1), rngs=rngs)
        self.fc = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem(x)))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        features = [x]
        for layer in (self.dense1, self.dense2):
            new = nnx.relu(layer(jnp.concatenate(features, axis=-1)))
            features.append(new)
        x = nnx.relu(self.transition(jnp.concatenate(features, axis=-1)))
        x = x.mean(axis=(1, 2))
        return self.fc(x)


class MobileNet(nnx.Module):
    """Stem, 2x2 max pool, depthwise-separable block, depthwise conv (multiplier 2), GAP."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.stem_bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.dw = nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=rngs)
        self.dw_bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.pw = nnx.Conv(8, 16, (1, 1), rngs=rngs)
        self.pw_bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.dw2 = nnx.Conv(16, 32, (3, 3), feature_group_count=16, rngs=rngs)
        self.fc = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem(x)))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.dw_bn(self.dw(x)))
        x = nnx.relu(self.pw_bn(self.pw(x)))
        x = nnx.relu(self.dw2(x))
        x = x.mean(axis=(1, 2))
        return self.fc(x)


class GroupedConvNet(nnx.Module):
    """conv3x3, 2x2 max pool, a grouped conv3x3 (4 groups) + BN, conv1x1, GAP, Linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.grouped = nnx.Conv(16, 16, (3, 3), feature_group_count=4, rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.conv3 = nnx.Conv(16, 16, (1, 1), rngs=rngs)
        self.fc = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv1(x))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.bn(self.grouped(x)))
        x = nnx.relu(self.conv3(x))
        x = x.mean(axis=(1, 2))
        return self.fc(x)


def sequential_net(rngs: nnx.Rngs) -> nnx.Sequential:
    """An ``nnx.Sequential``: flatten, Linear(64->32), relu, Linear(32->32), relu, Linear.

    The flatten step is the plain module-level function :func:`flatten` (``nnx.Sequential``
    takes any callable); a named function rather than a lambda keeps the model picklable
    and its graph definition equal across builds.
    """
    return nnx.Sequential(
        flatten,
        nnx.Linear(64, 32, rngs=rngs),
        nnx.relu,
        nnx.Linear(32, 32, rngs=rngs),
        nnx.relu,
        nnx.Linear(32, 10, rngs=rngs),
    )


class TinyTransformer(nnx.Module):
    """Rows as tokens, one pre-norm encoder block with hand-written attention, mean, Linear.

    Attention reshapes with ``-1`` heads, so removing whole heads (``head_dim`` output
    features of ``q``, ``k`` and ``v`` at a time) leaves a model that still runs.
    """

    def __init__(self, rngs: nnx.Rngs):
        dim, tokens, self.head_dim = 32, 8, 8
        self.scale = self.head_dim ** -0.5
        self.embed = nnx.Linear(8, dim, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (tokens, dim)))
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.q = nnx.Linear(dim, dim, rngs=rngs)
        self.k = nnx.Linear(dim, dim, rngs=rngs)
        self.v = nnx.Linear(dim, dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp_in = nnx.Linear(dim, 2 * dim, rngs=rngs)
        self.mlp_out = nnx.Linear(2 * dim, dim, rngs=rngs)
        self.head = nnx.Linear(dim, 10, rngs=rngs)

    def attention(self, x: jax.Array) -> jax.Array:
        """Multi-head self-attention over the token axis."""
        n, t, _ = x.shape
        q = self.q(x).reshape(n, t, -1, self.head_dim)
        k = self.k(x).reshape(n, t, -1, self.head_dim)
        v = self.v(x).reshape(n, t, -1, self.head_dim)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * self.scale
        weights = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(n, t, -1)
        return self.proj(out)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], 8, 8)
        x = self.embed(x) + self.pos[...]
        x = x + self.attention(self.norm1(x))
        x = x + self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(x))))
        return self.head(x.mean(axis=1))


BUILDERS: dict[str, Callable[[nnx.Rngs], nnx.Module]] = {
    "vgg": VGGNet,
    "resnet": ResNet,
    "layernorm_mlp": LayerNormMLP,
    "densenet": DenseNet,
    "mobilenet": MobileNet,
    "grouped": GroupedConvNet,
    "sequential": sequential_net,
    "transformer": TinyTransformer,
}

EPOCHS: dict[str, int] = {
    "vgg": 6,
    "resnet": 10,
    "layernorm_mlp": 10,
    "densenet": 20,
    "mobilenet": 30,
    "grouped": 25,
    "sequential": 10,
    "transformer": 10,
}
