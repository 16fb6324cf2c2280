"""FitNets hints: a student layer learns to regress a teacher layer (Romero et al., 2015).

A middle layer of the student, mapped by a learned 1x1 :class:`Adapter` to the teacher's
channel count, is pulled towards the same stage of the teacher by :func:`hint_loss`, the
mean squared difference. A layer is named one of two ways:

* a key of the model's ``features(x)`` -- the course's
  :class:`~pruning_kit.models.SmallCNN` has ``"stage1"``, ``"stage2"``, ``"residual"``;
* for any model, a submodule path such as ``"blocks/0/conv2"``
  (:func:`pruning_kit.capture.layer_paths`), whose output is captured from the ordinary
  forward pass.

:func:`teacher_features` computes the teacher's targets once; the loss that trains the
student and its adapter together is :func:`pruning_kit.distill.feature_distillation_loss`
(logit KD plus ``beta`` times the hint). Introduced in ``notebooks/02_distillation.ipynb``.

Examples:
    >>> adapter = Adapter(4, 8, rngs=nnx.Rngs(0))
    >>> student_map, teacher_map = jnp.ones((2, 14, 14, 4)), jnp.zeros((2, 7, 7, 8))
    >>> float(hint_loss(student_map, teacher_map, adapter)) > 0     # 14x14 pooled to 7x7
    True
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruning_kit import capture as capture_lib
from pruning_kit import program, validate

__all__ = ["Adapter", "StudentWithAdapter", "hint_loss", "layer_forward", "resolve_layer",
           "teacher_features"]


# --------------------------------------------------------------------------- layers
def resolve_layer(model: nnx.Module, x: Any, layer: Any, who: str) -> str:
    """How ``model`` exposes ``layer``: ``"features"`` -- a key of ``model.features(x)``
    (which must also return ``"logits"``), or ``"path"`` -- a submodule path
    (:mod:`pruning_kit.capture`). Otherwise a ``ValueError`` listing both; ``who``
    (``"student"``/``"teacher"``) names the side in the messages."""
    if not isinstance(layer, str):
        raise ValueError(f"{who}_layer must be a string (a features(x) key or a submodule "
                         f"path like 'conv2' or 'layers/1'), got {layer!r}.")
    keys: list[str] = []
    if callable(getattr(model, "features", None)):
        graphdef, state = nnx.split(model)

        def features(state: Any, x: Any) -> Any:
            feats = nnx.merge(graphdef, state).features(x)
            keys.extend(feats if isinstance(feats, dict) else [])  # in the model's order
            return feats

        jax.eval_shape(features, state, x)   # abstract, on fresh variables: no side effects
        if layer in keys:
            if "logits" not in keys:
                raise ValueError(f"{type(model).__name__}.features(x) has {keys} but no "
                                 "'logits'; hints need the logits from the same forward pass. "
                                 f"Name the {who} layer by its submodule path instead "
                                 f"(capture.layer_paths: {capture_lib.layer_paths(model)}).")
            return "features"
    paths = capture_lib.layer_paths(model)
    if layer not in paths:
        named = f"neither a key of features(x) {keys} nor" if keys else "not"
        raise ValueError(f"Unknown {who} layer {layer!r}: it is {named} a submodule path of "
                         f"{type(model).__name__}. Submodule paths: {paths}; "
                         "capture.shapes(model, x) prints each one's output shape.")
    return "path"


def layer_forward(model: nnx.Module, x: jax.Array, layer: str, kind: str
                  ) -> tuple[jax.Array, jax.Array]:
    """One forward pass of ``model``: ``(logits, activation of layer)``; ``kind`` is
    :func:`resolve_layer`'s answer."""
    if kind == "features":
        feats = model.features(x)
        return feats["logits"], feats[layer]
    out, acts = capture_lib.capture(model, x, [layer])
    return out, acts[layer]


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _teacher_forward(graphdef, state, x, layer, kind):
    return layer_forward(nnx.merge(graphdef, state), x, layer, kind)[1]


def teacher_features(teacher: nnx.Module, x: np.ndarray, layer: str, *,
                     batch_size: int = 1000) -> np.ndarray:
    """The teacher's activations at ``layer`` on ``x``, in eval mode (targets for hints).

    ``layer`` is a key of ``teacher.features(x)`` when the teacher has such a method (as
    :class:`~pruning_kit.models.SmallCNN`: ``"stage2"``), or else the path of any
    submodule (``"conv2"``, ``"blocks/0/conv2"``, ``"layers/1"``; see
    :func:`pruning_kit.capture.layer_paths`): its output is captured from the forward pass.
    The teacher runs in eval mode on a copy; its own mode and arrays are left as they came.
    Returns a numpy array aligned with ``x`` (e.g. ``(N, 7, 7, 32)``: 376 MB for 60k
    Fashion-MNIST images, where the online loss is leaner).

    Raises:
        ValueError: ``teacher`` not an NNX module, an unknown ``layer`` (the message lists
            the feature keys and submodule paths), a submodule the forward pass does not
            call once, empty ``x`` or a bad ``batch_size``.

    Examples:
        >>> class Net(nnx.Module):          # no features() method: layers by path
        ...     def __init__(self, rngs):
        ...         self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        ...         self.bn = nnx.BatchNorm(4, rngs=rngs)
        ...         self.head = nnx.Linear(4, 10, rngs=rngs)
        ...     def __call__(self, x):
        ...         return self.head(nnx.relu(self.bn(self.conv(x))).mean((1, 2)))
        >>> teacher_features(Net(nnx.Rngs(0)), np.zeros((5, 8, 8, 1)), "bn").shape
        (5, 8, 8, 4)
    """
    if not isinstance(teacher, nnx.Module):
        raise ValueError(f"teacher must be a Flax NNX module, got {type(teacher).__name__}.")
    if len(x) == 0:
        raise ValueError("x is empty; pass at least one example.")
    batch_size = validate.integer("batch_size", batch_size)
    kind = resolve_layer(teacher, jnp.asarray(x[:1]), layer, "teacher")  # abstract: no effect
    graphdef, state = nnx.split(program.eval_copy(teacher))
    outs = [np.asarray(_teacher_forward(graphdef, state, jnp.asarray(x[i:i + batch_size]),
                                        layer, kind)) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


# --------------------------------------------------------------------------- adapter and loss
class Adapter(nnx.Module):
    """A learned 1x1 convolution (a linear map over the last, channel axis).

    Maps ``in_features`` student channels to ``out_features`` teacher channels, for NHWC
    feature maps or ``(N, features)`` vectors alike (``nnx.Linear`` acts on the last axis).

    Args:
        in_features: channels of the student layer.
        out_features: channels of the teacher layer.
        use_bias: learn a per-channel offset too.
        rngs: ``nnx.Rngs`` for the initial weights.
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 rngs: nnx.Rngs):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Adapter {name} must be a positive integer (a channel "
                                 f"count), got {v!r}.")
        self.in_features = in_features
        self.proj = nnx.Linear(in_features, out_features, use_bias=use_bias, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Adapter expects {self.in_features} channels on the last axis, "
                             f"got shape {x.shape}; build Adapter({x.shape[-1]}, ...).")
        return self.proj(x)


class StudentWithAdapter(nnx.Module):
    """The student plus its hint adapter, trained together by one ``fit``.

    ``student`` is any Flax NNX model: :func:`feature_distillation_loss` reads its hint
    layer by ``features(x)`` key or by submodule path (relative to the student, e.g.
    ``"conv2"``, not ``"student.conv2"``). ``__call__`` returns the student's logits (so
    ``fit``, ``evaluate`` and ``predict`` work unchanged); ``fit``'s optimizer
    (``wrt=nnx.Param``) covers both sub-modules. After training, keep (and save)
    ``wrapper.student``; the adapter is discarded.

    Raises:
        ValueError: ``student`` or ``adapter`` is not a Flax NNX module.
    """

    def __init__(self, student: nnx.Module, adapter: Adapter):
        for name, v in (("student", student), ("adapter", adapter)):
            if not isinstance(v, nnx.Module):
                raise ValueError(f"StudentWithAdapter {name} must be a Flax NNX module, got "
                                 f"{type(v).__name__}; e.g. StudentWithAdapter(student, "
                                 "Adapter(student_channels, teacher_channels, rngs=...)).")
        self.student = student
        self.adapter = adapter

    def features(self, x: jax.Array) -> dict[str, jax.Array]:
        """The student's named activations, for a student with a ``features(x)`` method.

        For any other student, read a layer by path:
        ``capture.capture(wrapper.student, x, ["conv2"])``.
        """
        if not callable(getattr(self.student, "features", None)):
            raise ValueError(f"{type(self.student).__name__} has no .features(x); read its "
                             "layers by submodule path with pruning_kit.capture.capture("
                             f"wrapper.student, x, paths) (paths: "
                             f"{capture_lib.layer_paths(self.student)}).")
        return self.student.features(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.student(x)


def _avg_pool_to(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, hw[0], h // hw[0], hw[1], w // hw[1], c).mean(axis=(2, 4))


def hint_loss(student_feat: jax.Array, teacher_feat: jax.Array, adapter: Adapter
              ) -> jax.Array:
    """FitNets hint: ``mean((adapter(student_feat) - teacher_feat)^2)``.

    NHWC maps of different spatial size are average-pooled, the larger to the smaller,
    when one size divides the other (a 14x14 student map against a 7x7 teacher map);
    otherwise a ``ValueError`` asks for layers of compatible size. Pooling after the 1x1
    adapter equals pooling before it (both are linear). The teacher side is under
    ``stop_gradient``.

    Raises:
        ValueError: batch or spatial sizes that cannot be matched, or the adapter's output
            channels differ from the teacher's.
    """
    s = adapter(jnp.asarray(student_feat))
    t = jax.lax.stop_gradient(jnp.asarray(teacher_feat))
    if s.ndim != t.ndim or s.shape[0] != t.shape[0]:
        raise ValueError(f"student feature {tuple(student_feat.shape)} and teacher feature "
                         f"{t.shape} differ in rank or batch size; pick layers of the same "
                         "kind (both NHWC maps or both vectors) on the same x.")
    if s.ndim == 4 and s.shape[1:3] != t.shape[1:3]:
        (hs, ws), (ht, wt) = s.shape[1:3], t.shape[1:3]
        if hs % ht == 0 and ws % wt == 0:
            s = _avg_pool_to(s, (ht, wt))
        elif ht % hs == 0 and wt % ws == 0:
            t = _avg_pool_to(t, (hs, ws))
        else:
            raise ValueError(f"Spatial sizes {hs}x{ws} (student) and {ht}x{wt} (teacher) "
                             "cannot be average-pooled to each other; pick layers whose "
                             "sizes divide one another (e.g. both 'stage2').")
    if s.shape != t.shape:
        raise ValueError(f"adapted student feature {s.shape} does not match the teacher's "
                         f"{t.shape}; build Adapter({student_feat.shape[-1]}, "
                         f"{t.shape[-1]}) for these layers.")
    return jnp.mean((s - t) ** 2)
