"""BatchNorm folding for any NNX model: the pairs are found in the traced forward.

At inference a BatchNorm after a dense or convolution layer is an affine map per
channel, ``y = gamma (z - mu) / sqrt(var + eps) + beta``, so it folds into the kernel and
a bias (:func:`pruning_kit.quant_infer.fold_batchnorm` has the algebra):

    W' = W * gamma / sqrt(var + eps),        b' = (b - mu) * gamma / sqrt(var + eps) + beta

:func:`fold_batchnorm_model` finds every ``Linear``/``Conv`` -> ``BatchNorm`` pair in the
model's traced program (the norm's mean is subtracted from the kernel op's output, with
at most the layer's bias in between, and nothing else reads that output), folds it, and
leaves the norm as a pure bias add (mean 0, variance ``1 - eps``, scale 1, bias ``b'``),
so the result is the user's own class, saves and loads like the original, and computes
the same function (checked on the example). Integer inference (:mod:`pruning_kit.w8a8`)
quantizes the folded kernels.

Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> class Net(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.conv = nnx.Conv(1, 4, (3, 3), use_bias=False, rngs=rngs)
    ...         self.bn = nnx.BatchNorm(4, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.bn(self.conv(x)).mean(axis=(1, 2))
    >>> folded, pairs = fold_batchnorm_model(Net(nnx.Rngs(0)), jnp.ones((2, 5, 5, 1)))
    >>> pairs
    {'bn': 'conv/kernel'}
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend import core as jcore

from pruning_kit import interpret, program
from pruning_kit.tree import SEP

_SHAPE_OPS = frozenset("reshape broadcast_in_dim convert_element_type squeeze copy "
                       "copy_p slice".split())


def kernel_biases(fwd: interpret.Forward) -> dict[str, str]:
    """``{kernel path: bias path}`` for each dense/conv layer whose output gets a bias added
    right after (``nnx.Linear``/``nnx.Conv`` with ``use_bias``), read from the trace."""
    return {k: b for k, b in _dataflow(fwd, {})[0].values() if b is not None}


def find_pairs(fwd: interpret.Forward, model: nnx.Module) -> dict[str, tuple[str, str | None]]:
    """``{batchnorm path: (kernel path, kernel's bias path or None)}`` foldable pairs."""
    return _dataflow(fwd, program.modules(model))[1]


def _dataflow(fwd: interpret.Forward, modules: dict[str, nnx.Module]) -> tuple[dict, dict]:
    jaxpr = fwd.program.jaxpr
    uses: dict[Any, int] = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not isinstance(v, jcore.Literal):
                uses[v] = uses.get(v, 0) + 1
    for v in jaxpr.outvars:
        if not isinstance(v, jcore.Literal):
            uses[v] = uses.get(v, 0) + 1
    leafish = {v: p for v, p in zip(jaxpr.invars, fwd.paths, strict=False)}
    kout: dict[Any, tuple[str, str | None]] = {}
    pairs: dict[str, tuple[str, str | None]] = {}
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        ins = [None if isinstance(v, jcore.Literal) else v for v in eqn.invars]
        op = fwd.kernel_op_of(eqn)
        if op is not None:
            kout[eqn.outvars[0]] = (op.path, None)
        elif name in _SHAPE_OPS and ins[0] in leafish:
            leafish[eqn.outvars[0]] = leafish[ins[0]]
        elif name == "mul" and len(ins) == 2:
            # a kernel applied elementwise (a convolution written as shifted multiply-adds):
            # the product is linear in that kernel, channel by channel
            for a, b in (ins, ins[::-1]):
                if b in leafish and a not in leafish and a not in kout \
                        and leafish[b].endswith((f"{SEP}kernel", f"{SEP}weight")):
                    kout[eqn.outvars[0]] = (leafish[b], None)
        elif name == "add" and len(ins) == 2:
            a, b = ins
            if a in kout and b in kout and kout[a] == kout[b] and kout[a][1] is None \
                    and uses.get(a) == 1 and uses.get(b) == 1:
                kout[eqn.outvars[0]] = kout[a]        # sum of terms linear in one kernel
            for a, b in (ins, ins[::-1]):
                if a in kout and kout[a][1] is None and uses.get(a) == 1 and b in leafish \
                        and leafish[b].endswith(f"{SEP}bias"):
                    kout[eqn.outvars[0]] = (kout[a][0], leafish[b])
        elif name == "sub" and len(ins) == 2 and ins[0] in kout and ins[1] in leafish:
            mean = leafish[ins[1]]
            bn_path = mean.rsplit(SEP, 1)[0] if mean.endswith(f"{SEP}mean") else None
            bn = modules.get(bn_path)
            if isinstance(bn, nnx.BatchNorm) and uses.get(ins[0]) == 1 \
                    and bn_path not in pairs:
                pairs[bn_path] = kout[ins[0]]
    return kout, pairs


def _identity_var(eps: float) -> np.float32:
    """The float32 ``v`` with ``v + eps == 1`` exactly, so ``rsqrt(v + eps)`` is 1."""
    v = np.float32(1.0) - np.float32(eps)
    for _ in range(8):
        total = np.float32(v + np.float32(eps))
        if total == 1:
            return v
        v = np.nextafter(v, np.float32(2 if total < 1 else 0), dtype=np.float32)
    return v


def fold_batchnorm_model(model: nnx.Module, example: Any, *, check: bool = True
                         ) -> tuple[nnx.Module, dict[str, str]]:
    """Fold every BatchNorm that follows a dense/conv layer into that layer.

    Args:
        model: any Flax NNX model (not changed).
        example: a batch of inputs the model accepts (e.g. ``x[:2]``).
        check: compare the folded model with the original on ``example`` and raise if
            they differ beyond float rounding.

    Returns:
        ``(folded copy in eval mode, {batchnorm path: kernel path})``. A BatchNorm that
        does not directly follow a kernel (or whose kernel output is read elsewhere too)
        is left as it is and not listed.

    Raises:
        ValueError: the folded model does not compute what the original does.
    """
    fwd = interpret.Forward(model, example)
    copy = program.eval_copy(model)
    pairs = find_pairs(fwd, copy)
    modules = program.modules(copy)
    leaves = dict(zip(fwd.paths, fwd.leaves, strict=True))
    new: dict[str, jax.Array] = {}
    for bn_path, (k_path, b_path) in pairs.items():
        bn = modules[bn_path]
        kernel = jnp.asarray(leaves[k_path], jnp.float32)
        c = kernel.shape[-1]
        if bn.num_features != c:
            continue
        gamma = bn.scale[...] if bn.scale is not None else jnp.ones(c)
        beta = bn.bias[...] if bn.bias is not None else jnp.zeros(c)
        factor = gamma / jnp.sqrt(bn.var[...] + bn.epsilon)
        bias = leaves[b_path] if b_path else jnp.zeros(c)
        new[k_path] = kernel * factor
        if b_path:
            new[b_path] = jnp.zeros_like(leaves[b_path])
        new[f"{bn_path}{SEP}mean"] = jnp.zeros(c)
        new[f"{bn_path}{SEP}var"] = jnp.full(c, _identity_var(bn.epsilon))
        if bn.scale is not None:
            new[f"{bn_path}{SEP}scale"] = jnp.ones(c)
        shift = (bias - bn.mean[...]) * factor + beta
        if bn.bias is not None:
            new[f"{bn_path}{SEP}bias"] = shift
        elif b_path:
            new[b_path] = shift
        else:
            pairs[bn_path] = None                 # nowhere to put the shift: leave it
            for key in [k for k in new if k.startswith((bn_path + SEP, k_path))]:
                new.pop(key)
    pairs = {k: v for k, v in pairs.items() if v is not None}
    graphdef, state = nnx.split(copy)
    names, arrays, treedef = program.leaf_paths(state)
    arrays = [jnp.array(new.get(n, a), copy=True) if isinstance(a, jax.Array) else a
              for n, a in zip(names, arrays, strict=True)]
    folded = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, arrays))
    folded.eval()
    if check and pairs:
        args = example if isinstance(example, tuple) else (example,)
        want = np.asarray(fwd(*args))
        got = np.asarray(folded(*args))
        diff = float(np.abs(got - want).max())
        if not diff <= 1e-4 * max(1.0, float(np.abs(want).max())):
            raise ValueError(f"Folding BatchNorm changed the outputs (max |diff| {diff:.3g}); "
                             f"the pairs found were {pairs}. The kernels may not keep their "
                             "output channels on the last axis. Pass check=False here to "
                             "inspect, or fold=False to w8a8.quantize_model to quantize "
                             "without folding.")
    return folded, {bn: kb[0] for bn, kb in pairs.items()}
