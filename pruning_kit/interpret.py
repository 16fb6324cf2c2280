"""Re-run any NNX model's forward with a hook on every dense and convolution layer.

Integer inference, fake quantization and activation capture need to change what a
``Linear`` or ``Conv`` computes without knowing the model's layout. :class:`Forward`
traces the model once (``jax.make_jaxpr`` of its eval-mode forward, the arrays as
inputs) and evaluates that program again, calling ``hook`` at each *kernel op*: a
``dot_general`` or ``conv_general_dilated`` one of whose operands is a model array (its
kernel). Everything else -- BatchNorm, activations, pooling, residual adds, attention's
activation-by-activation products -- runs as traced. It is the approach qwix takes with
rules by module path, read here from the traced program, so it works for any model
whose compute layers are dense or convolutions.

Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> fwd = Forward(layer, jnp.zeros((1, 3)))
    >>> [(op.path, op.primitive) for op in fwd.kernel_ops]
    [('kernel', 'dot_general')]
    >>> doubled = fwd(jnp.ones((1, 3)), hook=lambda op, x, w, run: 2 * run(x, w))
    >>> bool(jnp.allclose(doubled, 2 * layer(jnp.ones((1, 3))) - layer.bias[...]))
    True

Used by :mod:`pruning_kit.fold` (BatchNorm folding), :mod:`pruning_kit.w8a8` (integer
inference for any model) and notebook 04's "your own model" section.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.extend import core as jcore

from pruning_kit import program, validate
from pruning_kit.program import sub_jaxpr

__all__ = ["KERNEL_PRIMITIVES", "FloatLayersWarning", "Forward", "Hook", "KernelOp",
           "check_kernel_ops", "per_channel_absmax", "runner", "scales_shape", "sub_jaxpr",
           "warn_indirect"]

KERNEL_PRIMITIVES = ("dot_general", "conv_general_dilated")
#: Ops that pass a model array on unchanged in value (a cast, a transpose, a reshape):
#: a kernel reaching its matmul through them is not a kernel op (:attr:`Forward.indirect`).
_PASS_THROUGH = ("convert_element_type", "transpose", "reshape", "copy", "copy_p", "squeeze",
                 "expand_dims")


class KernelOp(NamedTuple):
    """One dense/convolution op of the forward, found in the traced program.

    ``path`` is the kernel's state path (``"blocks/0/conv1/kernel"``), ``index`` its
    position in the forward, ``out_axes`` the kernel axes that are output features (one
    scale per output channel quantizes along them), ``out_dims`` where those features sit
    in the op's result, and ``where`` the source line that called it.
    """

    path: str
    index: int
    primitive: str
    params: Any
    out_axes: tuple[int, ...]
    out_dims: tuple[int, ...]
    where: str


Hook = Callable[[KernelOp, jax.Array, jax.Array, Callable[..., jax.Array]], jax.Array]


def _kernel_op(eqn: Any, kernel_path: str, index: int) -> KernelOp:
    p = eqn.params
    if eqn.primitive.name == "dot_general":
        (_, rc), (_, rb) = p["dimension_numbers"]
        n_rhs = len(eqn.invars[1].aval.shape)
        n_out = len(eqn.outvars[0].aval.shape)
        free = tuple(a for a in range(n_rhs) if a not in (*rc, *rb))
        dims = tuple(range(n_out - len(free), n_out))
    else:
        dn = p["dimension_numbers"]
        free, dims = (dn.rhs_spec[0],), (dn.out_spec[1],)
    return KernelOp(kernel_path, index, eqn.primitive.name, p, free, dims,
                    program.source_line(eqn))


class Forward:
    """The traced forward of ``model``; call it with a hook on the kernel ops.

    Args:
        model: any Flax NNX model (traced in eval mode on a copy; the caller's model
            is not changed).
        example: a batch of inputs the model accepts (two examples are enough).

    Attributes:
        paths: the state paths of the model's arrays, in the order of ``leaves``.
        leaves: the arrays (the copy's), the program's first inputs.
        kernel_ops: every dense/conv op whose kernel is a model array, in forward order.
        uses: ``{path: number of ops reading that array}``.
        indirect: paths of model arrays that reach a dense/conv op only through a cast,
            transpose or reshape (bfloat16 parameters computed in float32, ``x @ w.T``):
            not kernel ops, so the techniques built on them leave those layers float
            (:func:`warn_indirect` says so).
    """

    def __init__(self, model: nnx.Module, example: Any):
        copy = program.eval_copy(model)
        graphdef, state = nnx.split(copy)
        self.paths, self.leaves, self._treedef = program.leaf_paths(state)
        self._graphdef = graphdef
        args = example if isinstance(example, tuple) else (example,)
        self._name = type(model).__name__
        self._cache: dict[Any, tuple] = {}
        (self._closed, self._ops_by_eqn, self.kernel_ops, self.uses,
         self.indirect) = self._trace(args)

    def _trace(self, args: Sequence[Any]) -> tuple:
        """The program for inputs of these shapes (a jaxpr is shape-specialised)."""
        key = tuple((np.shape(a), str(getattr(a, "dtype", type(a))))
                    for a in jax.tree.leaves(args))
        if key in self._cache:
            return self._cache[key]
        closed = program.program(self._graphdef, self._treedef, self.leaves, args, self._name)
        self.kernel_ops, self.uses, self._ops_by_eqn = [], {}, {}
        self._indirect: dict[str, None] = {}
        jaxpr = closed.jaxpr
        self._scan(jaxpr, {v: p for v, p in zip(jaxpr.invars, self.paths, strict=False)}, {})
        kernels = {op.path for op in self.kernel_ops}
        self.indirect = [p for p in self._indirect if p not in kernels]
        self._cache[key] = (closed, self._ops_by_eqn, self.kernel_ops, self.uses,
                            self.indirect)
        return self._cache[key]

    def _scan(self, jaxpr: Any, leafvars: dict[Any, str], passed: dict[Any, str]) -> None:
        def var(v: Any) -> bool:
            return not isinstance(v, jcore.Literal)

        for eqn in jaxpr.eqns:
            for v in eqn.invars:
                if var(v) and v in leafvars:
                    self.uses[leafvars[v]] = self.uses.get(leafvars[v], 0) + 1
            sub = sub_jaxpr(eqn)
            if sub is not None:
                inner, consts = sub
                pairs = list(zip(inner.invars, eqn.invars, strict=True))
                self._scan(inner, {iv: leafvars[ov] for iv, ov in pairs
                                   if var(ov) and ov in leafvars},
                           {iv: passed[ov] for iv, ov in pairs if var(ov) and ov in passed})
                continue
            name = eqn.primitive.name
            if name in _PASS_THROUGH and len(eqn.invars) == 1 and var(eqn.invars[0]):
                src = leafvars.get(eqn.invars[0], passed.get(eqn.invars[0]))
                if src is not None:
                    passed[eqn.outvars[0]] = src
            if name in KERNEL_PRIMITIVES:
                lhs, rhs = eqn.invars
                if var(rhs) and rhs in leafvars and not (var(lhs) and lhs in leafvars):
                    op = _kernel_op(eqn, leafvars[rhs], len(self.kernel_ops))
                    self.kernel_ops.append(op)
                    self._ops_by_eqn[id(eqn)] = op
                else:
                    for v in (lhs, rhs):
                        if var(v) and v in passed:
                            self._indirect[passed[v]] = None

    @property
    def program(self) -> Any:
        """The closed jaxpr traced for the example's shapes (arrays first, then inputs)."""
        return self._closed

    def kernel_op_of(self, eqn: Any) -> KernelOp | None:
        """The :class:`KernelOp` of a traced equation, or None if it is not one."""
        return self._ops_by_eqn.get(id(eqn))

    def module(self) -> nnx.Module:
        """The traced (eval-mode) copy of the model, as a module (e.g. to export it)."""
        return nnx.merge(self._graphdef,
                         jax.tree_util.tree_unflatten(self._treedef, list(self.leaves)))

    def leaf(self, path: str) -> jax.Array:
        """The traced copy's array at ``path``."""
        return self.leaves[self.paths.index(path)]

    def __call__(self, *args: Any, leaves: Sequence[Any] | None = None,
                 hook: Hook | None = None) -> Any:
        """Evaluate the forward on ``args`` (with other ``leaves`` if given).

        ``hook(op, x, kernel, run)`` replaces each kernel op; ``run(x, kernel)`` computes
        the op as traced (with whatever operands it is given). Jit the call for speed:
        ``jax.jit(lambda x: fwd(x, hook=h))``.
        """
        leaves = self.leaves if leaves is None else list(leaves)
        closed, ops, *_ = self._trace(args)
        flat_args = [a for arg in args for a in jax.tree.leaves(arg)]
        outs = self._eval(closed.jaxpr, list(closed.consts), [*leaves, *flat_args], hook, ops)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _eval(self, jaxpr: Any, consts: list, args: list, hook: Hook | None,
              ops: dict[int, KernelOp]) -> list:
        env: dict[Any, Any] = {}

        def read(v: Any) -> Any:
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for v, val in zip(jaxpr.constvars, consts, strict=True):
            env[v] = val
        for v, val in zip(jaxpr.invars, args, strict=True):
            env[v] = val
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            sub = sub_jaxpr(eqn)
            if sub is not None:
                outs = self._eval(sub[0], sub[1], invals, hook, ops)
            else:
                op = ops.get(id(eqn))
                run = runner(eqn)
                if op is not None and hook is not None:   # in the program's dtype (bf16)
                    outs = [jax.numpy.asarray(hook(op, invals[0], invals[1], run)).astype(
                        eqn.outvars[0].aval.dtype)]
                else:
                    outs = [run(*invals)] if not eqn.primitive.multiple_results \
                        else run(*invals)
            for v, val in zip(eqn.outvars, outs, strict=True):
                env[v] = val
        return [read(v) for v in jaxpr.outvars]


class FloatLayersWarning(UserWarning):
    """Some dense/conv layers of a model are left float by a quantization technique."""


def check_kernel_ops(fwd: Forward, what: str) -> None:
    """Raise ValueError when ``fwd`` has no kernel op for ``what`` (e.g. ``"quantize_model"``)
    to work on, naming the kernels it cannot see; else :func:`warn_indirect`."""
    if not fwd.kernel_ops:
        raise ValueError(f"{fwd._name} has no dense or convolution layer whose kernel is a "
                         f"model array, so {what} has nothing to work on"
                         + (f" ({', '.join(fwd.indirect)} reach theirs through a cast or "
                            "transpose: keep float32 parameters laid out (inputs, outputs))."
                            if fwd.indirect else "."))
    warn_indirect(fwd, what)


def warn_indirect(fwd: Forward, what: str) -> None:
    """Warn (:class:`FloatLayersWarning`) when ``fwd.indirect`` is not empty: ``what`` (e.g.
    ``"fake_quant_model"``) leaves those layers float."""
    if fwd.indirect:
        validate.warn(
            f"{fwd._name}: {', '.join(fwd.indirect)} "
            f"{'reaches its' if len(fwd.indirect) == 1 else 'reach their'} matmul/convolution "
            "through a cast, transpose or reshape (bfloat16 parameters computed in float32, "
            f"x @ w.T, ...), so {what} leaves those layers float. Keep float32 parameters "
            "and kernels laid out (inputs, outputs) as nnx.Linear and nnx.Conv do.",
            FloatLayersWarning)


def runner(eqn: Any) -> Callable[..., Any]:
    """``run(*invals, **param_overrides)``: evaluate one traced equation again."""
    bound = eqn.primitive.get_bind_params(eqn.params)
    subfuns, params = bound if isinstance(bound, tuple) else ((), bound)  # jax < 0.7: a pair

    def run(*invals: Any, **overrides: Any) -> Any:
        with eqn.ctx.manager:
            return eqn.primitive.bind(*subfuns, *invals, **{**params, **overrides})

    return run


def scales_shape(op: KernelOp, ndim: int, kernel_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape that broadcasts a per-output-channel array of ``op`` onto its result."""
    shape = [1] * ndim
    for a, d in zip(op.out_axes, op.out_dims, strict=True):
        shape[d] = kernel_shape[a]
    return tuple(shape)


def per_channel_absmax(kernel: Any, op: KernelOp) -> np.ndarray:
    """max |w| over everything but the output axes (shape: the output axes' sizes)."""
    k = np.abs(np.asarray(kernel, np.float32))
    other = tuple(a for a in range(k.ndim) if a not in op.out_axes)
    return k.max(axis=other)
