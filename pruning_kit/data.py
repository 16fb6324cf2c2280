"""Real data sets for the course: Fashion-MNIST, scikit-learn's digits and MNIST.

Every loader returns a :class:`Dataset` with the same conventions, so any notebook or
technique works on any of them:

* images are ``float32`` in ``[0, 1]``, shape ``(N, H, W, 1)`` (NHWC, one channel);
* labels are ``int32`` in ``[0, num_classes)``, shape ``(N,)``;
* three named parts, so a choice can never be made on the wrong one: ``train`` (models
  learn from it), ``validation`` (every choice -- calibration, bits, sparsity, T/alpha,
  widths, epochs -- is made on it; no model ever trains on it) and ``test`` (only
  reported). The test set is the data set's official one; the validation set is a fixed,
  stratified sample of the official training set (Fashion-MNIST and MNIST: 5,000 of the
  60,000 images, 500 per class, chosen with ``numpy.random.default_rng(0)``; digits: a
  fixed stratified split of scikit-learn's 1,797 images). ``Dataset.split`` names the
  split (sizes and a SHA-256 of the validation indices) and is recorded in every
  checkpoint, so a model trained on another split is recognised.

Fashion-MNIST is looked for, in order, in ``data_dir`` (argument or the
``PRUNING_KIT_DATA`` environment variable), the project cache ``data/fashion-mnist/``,
the files of the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/``), and finally downloaded from the official source
into the project cache, checked against its SHA-256 and written atomically.

Introduced in ``notebooks/00_compression_and_measurement.ipynb``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_CACHE = PROJECT_ROOT / "data"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGIT_CLASSES = tuple(str(i) for i in range(10))

# SHA-256 of the official gzipped IDX files.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URLS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


VALIDATION_SIZE = 5000  #: Fashion-MNIST / MNIST validation images (500 per class)
VALIDATION_SEED = 0     #: seeds the stratified choice of the validation images


class Split(NamedTuple):
    """Which examples of the official training set are ``train`` and which ``validation``.

    ``val_indices`` index the official training set (digits: its non-test images),
    sorted; ``train`` is the rest.
    ``id`` (the first 16 hex digits of the SHA-256 of ``val_indices`` as ``int64``) is what
    checkpoints record.
    """

    train: int
    validation: int
    test: int
    val_indices: np.ndarray

    @property
    def id(self) -> str:
        return hashlib.sha256(np.asarray(self.val_indices, np.int64).tobytes()).hexdigest()[:16]

    def describe(self) -> dict:
        """The JSON-able record stored in checkpoints."""
        return {"train": self.train, "validation": self.validation, "test": self.test,
                "validation_sha256": self.id}


class Dataset(NamedTuple):
    """Train / validation / test parts with the course's conventions (module docstring).

    Fit on ``x_train``; make every choice on ``x_val``; only report ``x_test``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    split: Split

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(28, 28, 1)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}: train {self.x_train.shape} validation "
                f"{self.x_val.shape} test {self.x_test.shape}, {self.num_classes} classes, "
                f"{self.x_train.dtype} in [0, 1])")


# --------------------------------------------------------------------------- IDX files
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a NumPy array.

    The format is a 4-byte magic number (two zero bytes, a dtype code, the number of
    dimensions), one big-endian ``uint32`` per dimension, then the values.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not IDX, is truncated or has trailing bytes; the message
            names the file and says how to replace it.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "tiny-idx1-ubyte"
        >>> write_idx(p, np.array([3, 1, 4], dtype=np.uint8))
        >>> read_idx(p)
        array([3, 1, 4], dtype=uint8)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"IDX file {path} does not exist.")
    fix = (f"Delete {path} and fetch it again (pruning_kit.data.load_fashion_mnist() "
           "downloads and checks it), or point data_dir at a good copy.")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ValueError(f"{path} is not a readable gzip file ({err}). {fix}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r}). {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path} has a truncated IDX header. {fix}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise ValueError(
            f"{path} is {what}: header shape {shape} needs {expected} data bytes, "
            f"found {got}. {fix}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(
        dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped if ``path`` ends in ``.gz``), atomically."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use uint8, int8, int16, "
                         "int32, float32 or float64.")
    big = native.newbyteorder(">")
    payload = bytes([0, 0, codes[native], array.ndim])
    payload += struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array.astype(big)).tobytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    atomic_write(Path(path), payload)


def atomic_write(path: Path, payload: bytes, *, create_parent: bool = False) -> None:
    """Write ``payload`` to ``path`` via a temporary file, fsync and rename.

    A missing parent folder is an error (a typo in a path should not silently create
    folders) unless ``create_parent`` (the package's own caches) is set.
    """
    path = Path(path)
    if not path.parent.is_dir():
        if not create_parent:
            raise FileNotFoundError(
                f"Folder {path.parent} does not exist, so {path.name} was not written. "
                f"Create it first (pathlib.Path({str(path.parent)!r}).mkdir(parents=True)) "
                "or save into a folder that exists.")
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, expected_sha256: str, *,
             timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying its SHA-256 before it lands.

    Nothing is left at ``dest`` unless the checksum matches.

    Raises:
        ValueError: the downloaded bytes do not have ``expected_sha256``.
        OSError: the network request failed (message says how to place the file by hand).
    """
    dest = Path(dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except OSError as err:
        raise OSError(
            f"Could not download {url} ({err}). Download it by hand and put it at {dest}, "
            "or pass data_dir= pointing at a folder that holds it.") from err
    digest = hashlib.sha256(payload).hexdigest()
    if digest != expected_sha256:
        raise ValueError(f"Download of {url} has SHA-256 {digest}, expected "
                         f"{expected_sha256}; nothing was written. Try again later or "
                         "fetch the file by hand.")
    atomic_write(dest, payload, create_parent=True)
    return dest


def _find_idx_set(name: str, files: dict[str, str], candidates: list[Path],
                  urls: tuple[str, ...], cache: Path, download_ok: bool) -> dict[str, Path]:
    """Return a folder's four IDX paths: the first candidate folder that has them all."""
    for folder in candidates:
        found = {}
        for fname in files:
            for variant in (fname, fname[:-3]):  # gzipped or already unpacked
                if (folder / variant).exists():
                    found[fname] = folder / variant
                    break
        if len(found) == len(files):
            for fname, path in found.items():
                if path.suffix == ".gz" and sha256(path) != files[fname]:
                    raise ValueError(
                        f"{path} is corrupt or not the official {name} file: its SHA-256 "
                        f"{sha256(path)} is not {files[fname]}. Delete it and run the "
                        "loader again to re-download, or reinstall the Debian package.")
            return found
        if found and folder.is_dir():
            missing = sorted(set(files) - set(found))
            raise FileNotFoundError(
                f"{folder} holds only part of {name}: missing {', '.join(missing)}. "
                f"Add the missing files (official source: {urls[0]}) or remove the folder.")
    if not download_ok:
        searched = "\n  ".join(str(c) for c in candidates)
        raise FileNotFoundError(
            f"{name} IDX files ({', '.join(files)}) not found in any of:\n  {searched}\n"
            f"Download them from {urls[0]} into {cache}, pass data_dir=, or call the "
            "loader with download=True.")
    out = {}
    for fname, digest in files.items():
        dest = cache / fname
        if not dest.exists():
            last_err: Exception | None = None
            for base in urls:
                try:
                    download(base + fname, dest, digest)
                    last_err = None
                    break
                except (OSError, ValueError) as err:
                    last_err = err
            if last_err is not None:
                raise last_err
        out[fname] = dest
    return out


def stratified_indices(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` examples of ``y``, the same count of each class.

    Examples:
        >>> stratified_indices(np.array([0, 0, 1, 1, 0, 1]), 2, seed=0).size
        2
    """
    classes = np.unique(y)
    if n % len(classes):
        raise ValueError(f"n={n} is not a multiple of the {len(classes)} classes.")
    rng = np.random.default_rng(seed)
    per = n // len(classes)
    picked = [rng.choice(np.flatnonzero(y == c), per, replace=False) for c in classes]
    return np.sort(np.concatenate(picked))


def _with_validation(name: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray,
                     y_test: np.ndarray, classes: tuple[str, ...], val_idx: np.ndarray
                     ) -> Dataset:
    train_mask = np.ones(len(x), bool)
    train_mask[val_idx] = False
    split = Split(int(train_mask.sum()), len(val_idx), len(x_test), val_idx)
    return Dataset(name, x[train_mask], y[train_mask], x[val_idx], y[val_idx],
                   x_test, y_test, classes, split)


def _idx_dataset(name: str, paths: dict[str, Path], classes: tuple[str, ...]) -> Dataset:
    arrays = {k: read_idx(p) for k, p in paths.items()}
    def images(a):
        return (a.astype(np.float32) / 255.0)[..., None]
    x = images(arrays["train-images-idx3-ubyte.gz"])
    y = arrays["train-labels-idx1-ubyte.gz"].astype(np.int32)
    if len(y) >= 2 * VALIDATION_SIZE:
        val_idx = stratified_indices(y, VALIDATION_SIZE, VALIDATION_SEED)
    else:  # a small stand-in set (tests): a random twelfth, at least one image
        rng = np.random.default_rng(VALIDATION_SEED)
        val_idx = np.sort(rng.permutation(len(y))[:max(1, len(y) // 12)])
    return _with_validation(
        name, x, y, images(arrays["t10k-images-idx3-ubyte.gz"]),
        arrays["t10k-labels-idx1-ubyte.gz"].astype(np.int32), classes, val_idx)


def _candidates(data_dir, subdir: str, extra: tuple[Path, ...] = ()) -> list[Path]:
    out = []
    user = data_dir if data_dir is not None else os.environ.get("PRUNING_KIT_DATA")
    if user is not None:
        user = Path(user).expanduser()
        if not user.is_dir():
            raise FileNotFoundError(
                f"data_dir {user} does not exist. Create it and put the IDX files there, "
                "or leave data_dir unset to use the project cache.")
        out += [user, user / subdir]
    return out + [DATA_CACHE / subdir, *extra]


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, *,
                       download: bool = True) -> Dataset:
    """Fashion-MNIST (Xiao et al., 2017): 55,000 train, 5,000 validation, 10,000 test.

    The official 60,000 training images are split into ``train`` (55,000) and a fixed,
    stratified ``validation`` set (5,000; see the module docstring); the official 10,000
    test images are ``test``.

    Args:
        data_dir: a folder holding the four official ``*-ubyte.gz`` files (or unpacked
            ones); defaults to ``$PRUNING_KIT_DATA``, then the project cache and Debian's.
        download: if nothing is found, fetch from the official source into
            ``data/fashion-mnist/`` (checked against SHA-256, written atomically).

    Returns:
        A :class:`Dataset`; images ``float32`` in [0, 1] with shape ``(N, 28, 28, 1)``.

    Examples:
        >>> ds = load_fashion_mnist()
        >>> ds.x_train.shape, ds.x_val.shape, ds.y_test.shape, ds.classes[9]
        ((55000, 28, 28, 1), (5000, 28, 28, 1), (10000,), 'Ankle boot')
    """
    paths = _find_idx_set("Fashion-MNIST", FASHION_MNIST_FILES,
                          _candidates(data_dir, "fashion-mnist", (DEBIAN_FASHION_DIR,)),
                          (FASHION_MNIST_URL,), DATA_CACHE / "fashion-mnist", download)
    return _idx_dataset("fashion_mnist", paths, FASHION_CLASSES)


def load_mnist(data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Dataset:
    """MNIST handwritten digits (LeCun et al.), same IDX format as Fashion-MNIST.

    Looked for in ``data_dir``/``$PRUNING_KIT_DATA`` and ``data/mnist/``, else downloaded
    (SHA-256 checked, atomic write). No system package ships it.
    """
    paths = _find_idx_set("MNIST", MNIST_FILES, _candidates(data_dir, "mnist"),
                          MNIST_URLS, DATA_CACHE / "mnist", download)
    return _idx_dataset("mnist", paths, DIGIT_CLASSES)


def load_digits(test_fraction: float = 0.3, seed: int = 0, *,
                val_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), stratified splits.

    Pixel values 0..16 are scaled to [0, 1]; images have shape ``(8, 8, 1)``. The test set
    is ``test_fraction`` of the images; ``val_fraction`` of the rest is the validation set.
    Both are stratified and fixed by ``seed``, so every notebook sees the same parts.

    Examples:
        >>> ds = load_digits()
        >>> ds.x_train.shape, ds.x_val.shape, ds.x_test.shape
        ((1005, 8, 8, 1), (252, 8, 8, 1), (540, 8, 8, 1))
    """
    for name, frac in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {frac}.")
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                      stratify=y, random_state=seed)
    idx_tr = np.sort(idx_tr)
    _, idx_val = train_test_split(np.arange(len(idx_tr)), test_size=val_fraction,
                                  stratify=y[idx_tr], random_state=seed)
    return _with_validation("digits", x[idx_tr], y[idx_tr], x[idx_te], y[idx_te],
                            DIGIT_CLASSES, np.sort(idx_val))


LOADERS = {"fashion_mnist": load_fashion_mnist, "digits": load_digits, "mnist": load_mnist}


def load(name: str, **kwargs) -> Dataset:
    """Load a data set by name: ``"fashion_mnist"``, ``"digits"`` or ``"mnist"``."""
    if name not in LOADERS:
        raise ValueError(f"Unknown data set {name!r}; choose one of {sorted(LOADERS)}.")
    return LOADERS[name](**kwargs)


# --------------------------------------------------------------------------- batching
def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int | None = None,
            drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x, y)`` mini-batches; shuffled reproducibly when ``seed`` is given.

    Args:
        x, y: arrays with the same first dimension.
        batch_size: examples per batch, ``>= 1``.
        seed: shuffle with ``np.random.default_rng(seed)``; ``None`` keeps the order.
        drop_last: drop a final batch smaller than ``batch_size`` (keeps shapes static
            under ``jit``; the training loop uses it).

    Examples:
        >>> xs, ys = np.arange(10.0), np.arange(10)
        >>> [len(b) for b, _ in batches(xs, ys, 4)]
        [4, 4, 2]
        >>> [len(b) for b, _ in batches(xs, ys, 4, seed=0, drop_last=True)]
        [4, 4]
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}; they must match.")
    if len(x) == 0:
        raise ValueError("Cannot batch an empty data set.")
    order = (np.random.default_rng(seed).permutation(len(x)) if seed is not None
             else np.arange(len(x)))
    stop = len(x) - (len(x) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def holdout(x: np.ndarray, y: np.ndarray, n: int, *, seed: int = 0
            ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Split off ``n`` random examples (e.g. a calibration or validation set).

    Returns ``((x_rest, y_rest), (x_held, y_held))``; the same seed gives the same split.
    """
    if not 0 < n < len(x):
        raise ValueError(f"n must be between 1 and {len(x) - 1}, got {n}.")
    order = np.random.default_rng(seed).permutation(len(x))
    keep, held = order[n:], order[:n]
    return (x[keep], y[keep]), (x[held], y[held])


def main() -> None:
    """``python -m pruning_kit.data``: find (or download and verify) every local data set."""
    for name in ("fashion_mnist", "digits"):
        print(load(name))
    try:
        print(load_mnist(download=False))
    except FileNotFoundError:
        print("mnist: not present (optional; load_mnist() downloads and verifies it)")


if __name__ == "__main__":
    main()
