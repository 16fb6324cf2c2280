"""The package's one on-disk format for arrays: an ``.npz`` with a JSON header beside them.

Every file :func:`write` makes is a NumPy ``.npz`` (a zip of ``.npy`` arrays, readable with
``np.load`` alone) whose member ``__header__`` holds a small JSON object as ``uint8``
bytes: the format version, what the file is, and whatever its writer records. Arrays are
named by leaf path (``"layers/0/kernel"``, :mod:`pruning_kit.tree`). Files are written to a
temporary name and renamed (:func:`pruning_kit.data.atomic_write`), so an interrupted save
never leaves half a file.

Two writers use it:

* model checkpoints -- :func:`save_model`, :func:`load_model`,
  :func:`read_checkpoint_header` (also importable from :mod:`pruning_kit.train`): the
  weights, BatchNorm statistics and RNG state of a registered model, with its class name
  and ``config`` so its widths can be rebuilt;
* sparse params -- :func:`pruning_kit.sparse_storage.save_sparse` (header
  ``kind = "pruning_kit.sparse"``).

The compressed models of :mod:`pruning_kit.codec` use their own binary format.

Examples:
    >>> import tempfile
    >>> path = write(Path(tempfile.mkdtemp()) / "demo.npz", {"layers/0/kernel": np.eye(2)},
    ...              {"kind": "demo"})
    >>> arrays, header = read(path, kind="demo")
    >>> list(arrays), header
    (['layers/0/kernel'], {'kind': 'demo', 'format_version': 1})
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruning_kit import data as data_lib
from pruning_kit import models as models_lib
from pruning_kit import tree as tree_lib

__all__ = ["FORMAT_VERSION", "HEADER_KEY", "host_array", "is_key", "load_model", "read",
           "read_checkpoint_header", "read_header", "save_model", "write"]

FORMAT_VERSION = 1
HEADER_KEY = "__header__"
_CODEC_MAGIC = b"\x89PKC"          # the first bytes of a pruning_kit.codec file
_UNREADABLE = (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError)
_TRAIN_FIRST = ("Train the model first (pruning_kit.zoo.baseline trains and caches the "
                "course's baselines) or save one with train.save_model.")


def is_key(a: Any) -> bool:
    """Whether ``a`` is a typed PRNG key array (the RNG state of Dropout and friends)."""
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def host_array(a: Any) -> np.ndarray:
    """``a`` as a NumPy array; a PRNG key becomes its raw ``uint32`` key data.

    Examples:
        >>> host_array(jax.random.key(0)).dtype
        dtype('uint32')
    """
    return np.asarray(jax.random.key_data(a)) if is_key(a) else np.asarray(a)


# --------------------------------------------------------------------------- the format
def write(path: str | os.PathLike, arrays: Mapping[str, Any], header: Mapping[str, Any], *,
          create_parent: bool = False) -> Path:
    """Write ``arrays`` and the JSON ``header`` to one ``.npz`` at ``path``, atomically.

    Args:
        path: the file to write (replaced if it exists).
        arrays: ``{name: array}``; JAX arrays and PRNG keys are copied to the host
            (:func:`host_array`).
        header: JSON-serialisable; ``format_version`` is added if it is missing.
        create_parent: create a missing folder (else ``FileNotFoundError``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: an array named ``__header__``, or a header JSON cannot hold.
        FileNotFoundError: the folder does not exist and ``create_parent`` is off.
    """
    if HEADER_KEY in arrays:
        raise ValueError(f"{HEADER_KEY!r} is the header's name; rename that array.")
    try:
        text = json.dumps({**header, "format_version": header.get("format_version",
                                                                  FORMAT_VERSION)})
    except (TypeError, ValueError) as err:
        raise ValueError(f"The header must be JSON (numbers, strings, lists, dicts): {err}."
                         ) from err
    buf = io.BytesIO()
    np.savez(buf, **{HEADER_KEY: np.frombuffer(text.encode(), dtype=np.uint8)},
             **{name: host_array(a) for name, a in arrays.items()})
    path = Path(path)
    data_lib.atomic_write(path, buf.getvalue(), create_parent=create_parent)
    return path


def _exists(path: Path, what: str, how: str) -> None:
    """The checks every reader makes before ``np.load``: a file, and not a codec file."""
    if not path.is_file():
        raise FileNotFoundError(f"No {what} at {path}. {how}")
    with open(path, "rb") as f:
        if f.read(4) == _CODEC_MAGIC:
            raise ValueError(f"{path} is a compressed-model file written by "
                             f"pruning_kit.codec.save, not a {what}. Load it with "
                             "pruning_kit.codec.load(path).")


def _check(path: Path, header: Any, kind: str | None, what: str) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a pruning_kit {what}: its header is not a JSON object.")
    if kind is not None and header.get("kind") != kind:
        raise ValueError(f"{path} is not a pruning_kit {what} (its header says kind "
                         f"{header.get('kind')!r}, expected {kind!r}).")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has {what} format {header.get('format_version')}, this "
                         f"pruning_kit reads format {FORMAT_VERSION}; upgrade pruning_kit.")
    return header


def _load(path: Path, what: str, how: str, *, arrays: bool) -> tuple[dict, Any]:
    _exists(path, what, how)
    try:
        with np.load(path) as f:
            header = json.loads(bytes(f[HEADER_KEY]).decode())
            out = {k: f[k] for k in f.files if k != HEADER_KEY} if arrays else {}
    except _UNREADABLE as err:
        raise ValueError(f"{path} is not a readable pruning_kit {what} ({err}); it may be "
                         "truncated. Delete it and save it again.") from err
    return out, header


def read_header(path: str | os.PathLike, *, kind: str | None = None, what: str = "file",
                how: str = "") -> dict[str, Any]:
    """The JSON header of a :func:`write` file, without loading its arrays.

    Args:
        path: the file.
        kind: if given, the header's ``kind`` must equal it.
        what, how: the file's name and how to make one, for the error messages.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: truncated or corrupt, a codec file, another kind or a newer format.
    """
    path = Path(path)
    _, header = _load(path, what, how, arrays=False)
    return _check(path, header, kind, what)


def read(path: str | os.PathLike, *, kind: str | None = None, what: str = "file",
         how: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, header)`` of a :func:`write` file; arrays as NumPy, in file order.

    Arguments and errors as :func:`read_header`.
    """
    path = Path(path)
    arrays, header = _load(path, what, how, arrays=True)
    return arrays, _check(path, header, kind, what)


# --------------------------------------------------------------------------- model checkpoints
def save_model(model: nnx.Module, path: str | os.PathLike, *,
               metadata: dict[str, Any] | None = None, create_parent: bool = False) -> Path:
    """Save weights, BatchNorm statistics and the model's widths to one ``.npz`` file.

    The model's class name and ``model.config`` travel with the weights, so
    :func:`load_model` can rebuild a model whose widths differ from the defaults (a pruned
    one, say). The file is written to a temporary name and renamed: an interrupted save
    never leaves a half-written checkpoint. A missing folder raises
    ``FileNotFoundError`` unless ``create_parent=True``.

    Examples:
        >>> import tempfile
        >>> m = models_lib.MLP(64, (8,), rngs=nnx.Rngs(0))
        >>> p = save_model(m, Path(tempfile.mkdtemp()) / "m.npz", metadata={"note": "demo"})
        >>> load_model(p).config["hidden"]
        [8]
    """
    kind = type(model).__name__
    if models_lib.MODEL_CLASSES.get(kind) is not type(model) or not hasattr(model, "config"):
        raise ValueError(f"{kind} is not one of the registered model classes with a .config "
                         f"({sorted(models_lib.MODEL_CLASSES)}; a class of your own is not, "
                         "even under the same name): save it with codec.save(path, model) and "
                         "load it with codec.load(path, like=an_instance), or register it in "
                         "pruning_kit.models.MODEL_CLASSES.")
    header = {"format_version": FORMAT_VERSION, "class": kind, "config": model.config,
              "metadata": metadata or {}}
    return write(path, tree_lib.flatten_dict(nnx.to_pure_dict(nnx.state(model))), header,
                 create_parent=create_parent)


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header (class, config, metadata) of a checkpoint, without the weights."""
    return read_header(path, what="checkpoint", how=_TRAIN_FIRST)


def load_model(path: str | os.PathLike) -> nnx.Module:
    """Rebuild a model saved by :func:`save_model`, in eval mode.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated/corrupt, from a newer format, or its arrays do
            not match the stored widths.
    """
    path = Path(path)
    flat, header = read(path, what="checkpoint", how=_TRAIN_FIRST)
    # Build an abstract model (shapes only, no random initialisation to compile), then
    # fill it with the stored arrays.
    model = nnx.eval_shape(lambda: models_lib.build(header["class"], header["config"]))
    state = nnx.state(model)
    expected = tree_lib.flatten_dict(nnx.to_pure_dict(state))
    if set(expected) != set(flat):
        differ = sorted(set(expected) ^ set(flat))
        raise ValueError(f"{path} does not match a {header['class']} with config "
                         f"{header['config']}: arrays differ ({differ}).")
    for k, v in expected.items():
        if is_key(v):  # RNG state is stored as its raw key data
            flat[k] = jax.random.wrap_key_data(flat[k])
        elif tuple(v.shape) != flat[k].shape:
            raise ValueError(f"{path}: array {k} has shape {flat[k].shape}, the model expects "
                             f"{tuple(v.shape)}.")
    nnx.replace_by_pure_dict(state, tree_lib.unflatten_dict(
        {k: jnp.asarray(v) for k, v in flat.items()}))
    nnx.update(model, state)  # in place: the module keeps its definition order
    model.eval()
    return model
