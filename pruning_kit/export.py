"""Ship a compressed model as StableHLO: one file that plain JAX (or IREE, or any PJRT
runtime) loads and runs, without ``pruning_kit`` or Flax installed.

:func:`to_stablehlo` serializes a model's inference forward with ``jax.export``: the
weights are embedded as constants, the batch size is symbolic (any batch runs), and the
file records the input shape and dtype it expects. :func:`load_stablehlo` -- or, in a
process that has only ``jax``, the three lines it is made of -- turns the file back into a
function. Anything :mod:`pruning_kit` produces exports: a float, channel-removed or
BatchNorm-folded model (any NNX class, the user's own included), or a
:class:`pruning_kit.w8a8.IntegerModel`, whose int8 codes and int32 accumulation travel
as they are.

The file is ``jax.export``'s serialization (a flatbuffer holding the StableHLO module, its
calling convention and the platforms it was lowered for -- here ``cpu``; pass
``platforms=("cpu", "cuda")`` to lower for both). It is versioned by JAX's StableHLO
compatibility guarantees: a newer JAX loads files written by an older one for months to
years, not the other way round.

Examples:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from flax import nnx
    >>> net = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu,
    ...                      nnx.Linear(8, 3, rngs=nnx.Rngs(1)))
    >>> path = to_stablehlo(net, np.zeros((2, 4), np.float32),
    ...                     Path(tempfile.mkdtemp()) / "net.stablehlo")
    >>> forward = load_stablehlo(path)
    >>> x = np.ones((5, 4), np.float32)                   # another batch size: fine
    >>> bool(np.allclose(forward(x), net(x), atol=1e-6))
    True

Used by ``tests/test_export.py``, which reloads a file in a fresh Python process that never
imports ``pruning_kit``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from pruning_kit import data as data_lib
from pruning_kit import graph as graph_lib

#: What a process with nothing but JAX runs to use an exported file.
LOAD_SNIPPET = """import jax
exported = jax.export.deserialize(open(PATH, "rb").read())
logits = exported.call(x)            # x: an array of the recorded shape (any batch size)
"""


def _forward(model: Any) -> Callable[[jax.Array], jax.Array]:
    if isinstance(model, nnx.Module):
        copy = graph_lib.eval_copy(model)          # inference mode; the caller's is kept
        graphdef, state = nnx.split(copy)

        def forward(x):
            return nnx.merge(graphdef, state)(x)

        return forward
    if callable(model):
        return model
    raise ValueError(f"to_stablehlo exports an NNX model or a callable (e.g. a "
                     f"w8a8.IntegerModel), got {type(model).__name__}.")


def to_stablehlo(model: Any, example: Any, path: str | os.PathLike, *,
                 dynamic_batch: bool = True, platforms: Sequence[str] = ("cpu",)) -> Path:
    """Serialize ``model``'s inference forward (weights embedded) to a StableHLO file.

    Args:
        model: an NNX model (exported in eval mode, from a copy) or a callable of one
            array such as a :class:`~pruning_kit.w8a8.IntegerModel`.
        example: a batch of inputs; its shape and dtype (apart from the batch size, with
            ``dynamic_batch``) are what the file accepts.
        path: where to write (written atomically; the folder must exist).
        dynamic_batch: export the first axis as a symbolic size, so any batch runs.
        platforms: lowering platforms (``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: not a model or callable, an empty example, or a model that cannot be
            exported (the JAX error is attached).
        FileNotFoundError: the folder does not exist.
    """
    example = np.asarray(example)
    if example.ndim == 0 or example.shape[0] == 0:
        raise ValueError(f"example must be a non-empty batch, got shape {example.shape}.")
    forward = _forward(model)
    if dynamic_batch:
        shape = jax.export.symbolic_shape(
            ", ".join(["b", *(str(d) for d in example.shape[1:])]))
    else:
        shape = example.shape
    spec = jax.ShapeDtypeStruct(shape, example.dtype)
    try:
        exported = jax.export.export(jax.jit(forward), platforms=tuple(platforms))(spec)
    except Exception as err:
        raise ValueError(f"{type(model).__name__} could not be exported to StableHLO: "
                         f"{type(err).__name__}: {err}") from err
    path = Path(path)
    data_lib._atomic_write(path, bytes(exported.serialize()))
    return path


def load_stablehlo(path: str | os.PathLike) -> Callable[[Any], jax.Array]:
    """The function a :func:`to_stablehlo` file holds (needs only JAX; see LOAD_SNIPPET).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a ``jax.export`` serialization.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No StableHLO file at {path}; write one with to_stablehlo.")
    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception as err:
        raise ValueError(f"{path} is not a jax.export StableHLO file ({type(err).__name__}: "
                         f"{err}); it may be truncated or from another tool.") from err
    return exported.call


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What a file holds: input/output shapes and dtypes, platforms, bytes, op counts."""
    exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    text = exported.mlir_module()
    ops: dict[str, int] = {}
    for line in text.splitlines():
        for token in line.split():
            if token.startswith(("stablehlo.", '"stablehlo.')):
                name = token.strip('"').split("(")[0]
                ops[name] = ops.get(name, 0) + 1
                break
    return {"inputs": [str(a) for a in exported.in_avals],
            "outputs": [str(a) for a in exported.out_avals],
            "platforms": list(exported.platforms), "file_bytes": Path(path).stat().st_size,
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}
