"""What pruning saves on disk: sparse formats, their byte counts, and a file for them.

Zeroed weights still cost 4 bytes each in a dense file. Stored sparsely, a pruned leaf
keeps only its non-zero values plus *where* they are:

* ``"bitmap"`` -- one bit per weight (``np.packbits`` of the mask);
* ``"coo"`` -- the flat index of each non-zero (uint16 up to 65536 entries, else int32).

:func:`sparse_nbytes` gives the bytes of each format (and of ``"dense"``) for one array;
:func:`save_sparse` writes a whole params tree that way in the package's ``.npz`` format
(:mod:`pruning_kit.checkpoint`) and :func:`load_sparse` reads it back dense.

Introduced in ``notebooks/03_pruning.ipynb`` (re-exported by :mod:`pruning_kit.prune`).

Examples:
    >>> w = jnp.zeros(1000).at[:100].set(1.0)             # 90% sparse float32
    >>> [sparse_nbytes(w, f) for f in ("dense", "bitmap", "coo")]
    [4000, 525, 600]
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruning_kit import checkpoint, validate
from pruning_kit import tree as tree_lib
from pruning_kit.masks import Filter, default_filter, selected_leaves

__all__ = ["SPARSE_KIND", "load_sparse", "save_sparse", "sparse_nbytes"]

SPARSE_KIND = "pruning_kit.sparse"
_WHAT, _HOW = "sparse params file", "Write one with prune.save_sparse."


def sparse_nbytes(w: Any, format: str = "bitmap") -> int:
    """Bytes to store ``w`` sparsely: its non-zero values plus where they are.

    * ``"bitmap"``: ``ceil(n / 8)`` bytes of 1-bit mask + ``nnz * itemsize``;
    * ``"coo"``: ``nnz * (index bytes + itemsize)``, uint16 indices if ``n <= 65536``
      else int32;
    * ``"dense"``: ``n * itemsize``.

    Per float32 weight a bitmap costs ``1 + 32 * density`` bits against 32, so it beats
    dense only above ~3% sparsity; int32 COO (64 bits per non-zero) only above 50% (uint16:
    above 33%).
    """
    w = np.asarray(w)
    n, nnz, item = w.size, int(np.count_nonzero(w)), w.dtype.itemsize
    if format == "bitmap":
        return math.ceil(n / 8) + nnz * item
    if format == "coo":
        return nnz * ((2 if n <= 1 << 16 else 4) + item)
    if format == "dense":
        return n * item
    raise ValueError(f"format must be 'bitmap', 'coo' or 'dense', got {format!r}.")


def _sparse_arrays(name: str, w: np.ndarray, keep: np.ndarray, format: str) -> dict:
    """The arrays of one sparsely stored leaf: its kept values and their positions."""
    out = {f"{name}/values": w.reshape(-1)[keep]}
    if format == "bitmap":
        out[f"{name}/bitmap"] = np.packbits(keep)
    else:
        idx = np.uint16 if w.size <= 1 << 16 else np.int32
        out[f"{name}/indices"] = np.flatnonzero(keep).astype(idx)
    return out


def save_sparse(path: str | os.PathLike, params: Any, masks: Any | None = None, *,
                format: str = "bitmap", filter: Filter = default_filter) -> Path:
    """Write ``params`` to an ``.npz`` with the selected leaves stored sparsely.

    Per selected leaf: ``np.packbits`` of its mask (``"bitmap"``) or its flat indices
    (``"coo"``: uint16, or int32 above 65536 entries), and its kept values in their own
    dtype; every other leaf dense, plus a small JSON header. A model is saved with its
    ``nnx.Param`` and ``nnx.BatchStat`` leaves. A leaf's mask is its entry in ``masks``
    (applied first; ``masks`` may cover only some leaves, e.g. a model's ``nnx.Param``
    ones) or else ``w != 0``. Written to a temporary file then renamed, never half-written.
    The file is :func:`sparse_nbytes` per leaf plus a few hundred bytes of zip/npy headers.

    Examples:
        >>> import tempfile
        >>> p = {"dense": {"kernel": jnp.zeros((64, 64)).at[0].set(1.0), "bias": jnp.ones(64)}}
        >>> f = save_sparse(Path(tempfile.mkdtemp()) / "p.npz", p)
        >>> bool((load_sparse(f)["dense"]["kernel"] == p["dense"]["kernel"]).all())
        True
    """
    if format not in ("bitmap", "coo"):
        raise ValueError(f"format must be 'bitmap' or 'coo', got {format!r}.")
    validate.path_then_model("save_sparse(path, params)", path, params, what="the params",
                             accepts=(nnx.State, dict))
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Any(nnx.Param, nnx.BatchStat))
    named = tree_lib.named_leaves(params)
    mask_of = tree_lib.named_leaves(masks) if masks is not None else {}
    unknown = sorted(set(mask_of) - set(named))
    if unknown:
        raise ValueError(f"masks name leaves that params lacks: {unknown[:5]}; build the "
                         "masks from these params.")
    chosen = selected_leaves(params, filter, what="store sparsely")
    arrays, leaves = {}, {}
    for name, w in named.items():
        w = np.asarray(w)
        if name in mask_of:
            if np.shape(mask_of[name]) != w.shape:
                raise ValueError(f"mask of {name} has shape {np.shape(mask_of[name])}, the "
                                 f"leaf {w.shape}.")
            w = np.where(np.asarray(mask_of[name]) != 0, w, np.zeros((), w.dtype))
        info = {"shape": list(w.shape), "dtype": w.dtype.str, "storage": "dense"}
        if w.dtype.kind == "V":   # bfloat16 & co (ml_dtypes): stored as raw bits, named
            info["dtype"] = w.dtype.name
            w = w.view(np.dtype(f"u{w.dtype.itemsize}"))
        if name in chosen:
            keep = (np.asarray(mask_of[name]) != 0 if name in mask_of else w != 0).reshape(-1)
            arrays.update(_sparse_arrays(name, w, keep, format))
            info["storage"] = format
        else:
            arrays[name] = w
        leaves[name] = info
    header = {"format_version": checkpoint.FORMAT_VERSION, "kind": SPARSE_KIND,
              "leaves": leaves}
    return checkpoint.write(path, arrays, header)


def _dense(arrays: dict, name: str, info: dict) -> np.ndarray:
    """One leaf of a sparse file, dense again."""
    shape, dtype = tuple(info["shape"]), jnp.dtype(info["dtype"])   # jnp knows "bfloat16"
    raw = dtype.kind == "V"                       # stored as raw bits of the same width

    def typed(a):
        a = np.asarray(a)
        return a.view(dtype) if raw else a

    if info["storage"] == "dense":
        return typed(arrays[name]).reshape(shape)
    n = math.prod(shape)
    w, values = np.zeros(n, dtype), typed(arrays[f"{name}/values"])
    if info["storage"] == "bitmap":
        pos = np.flatnonzero(np.unpackbits(arrays[f"{name}/bitmap"], count=n))
    else:
        pos = arrays[f"{name}/indices"].astype(np.int64)
    if len(pos) != len(values) or (len(pos) and pos.max() >= n):
        raise ValueError(f"{len(values)} values for {len(pos)} positions")
    w[pos] = values
    return w.reshape(shape)


def load_sparse(path: str | os.PathLike) -> dict:
    """Read :func:`save_sparse`'s file back into a nested dict of dense ``jax.Array``.

    Digit path components become int keys, so ``nnx.replace_by_pure_dict(state,
    load_sparse(path))`` refills an ``nnx.State`` of the same model.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a sparse params file, or truncated/corrupt.
    """
    arrays, header = checkpoint.read(path, kind=SPARSE_KIND, what=_WHAT, how=_HOW)
    flat = {}
    for name, info in header["leaves"].items():
        try:
            flat[name] = jnp.asarray(_dense(arrays, name, info))
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: leaf {name} is corrupt ({err}); save it again.") from err
    return tree_lib.unflatten_dict(flat)
