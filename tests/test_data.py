"""Data loaders: IDX parsing, lookup order, corrupt/missing files, batching."""

import gzip
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pruning_kit import data


def _write_fake_set(folder, n_train=12, n_test=5, gz=True):
    """Write a tiny IDX data set in the official file layout."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    data.write_idx(folder / f"train-images-idx3-ubyte{suffix}",
                   rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    data.write_idx(folder / f"train-labels-idx1-ubyte{suffix}",
                   rng.integers(0, 10, n_train, dtype=np.uint8))
    data.write_idx(folder / f"t10k-images-idx3-ubyte{suffix}",
                   rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    data.write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}",
                   rng.integers(0, 10, n_test, dtype=np.uint8))


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64]),
                  hnp.array_shapes(min_dims=1, max_dims=4, max_side=5)),
       st.booleans())
def test_idx_round_trip(tmp_path_factory, array, gz):
    path = tmp_path_factory.mktemp("idx") / ("a-idx.gz" if gz else "a-idx")
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(back, array)


def test_idx_truncated_and_bad_magic(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    data.write_idx(path, np.zeros((3, 4, 4), np.uint8))
    raw = path.read_bytes()
    path.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated.*Delete"):
        data.read_idx(path)
    path.write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match="longer than its header"):
        data.read_idx(path)
    path.write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(path)
    gzpath = tmp_path / "y-idx3-ubyte.gz"
    gzpath.write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(ValueError, match="y-idx3-ubyte.gz"):
        data.read_idx(gzpath)
    with pytest.raises(FileNotFoundError):
        data.read_idx(tmp_path / "missing")


def test_load_from_user_dir_unpacked_files(tmp_path):
    _write_fake_set(tmp_path, gz=False)
    ds = data.load_mnist(data_dir=tmp_path, download=False)
    assert ds.x_train.shape == (11, 28, 28, 1) and ds.x_val.shape == (1, 28, 28, 1)
    assert ds.x_test.shape == (5, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_gz_files_with_wrong_checksum_are_rejected(tmp_path):
    _write_fake_set(tmp_path, gz=True)  # valid IDX, but not the official bytes
    with pytest.raises(ValueError, match="SHA-256"):
        data.load_mnist(data_dir=tmp_path, download=False)


def test_missing_files_name_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_CACHE", tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.load_mnist(data_dir=tmp_path, download=False)
    _write_fake_set(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        data.load_mnist(data_dir=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_mnist(data_dir=tmp_path / "nope")


def test_download_verifies_checksum_and_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    dest = tmp_path / "out" / "file.gz"
    with pytest.raises(ValueError, match="expected"):
        data.download(src.as_uri(), dest, "0" * 64)
    assert not dest.exists()
    assert not dest.parent.exists() or not any(dest.parent.iterdir())  # no partial download
    good = data.sha256(src)
    assert data.download(src.as_uri(), dest, good).read_bytes() == b"hello"


def test_download_fallback_from_empty_cache(tmp_path, monkeypatch):
    """With no local copy, the loader downloads each file, verifies it, caches it."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _write_fake_set(mirror, gz=True)
    files = {f: data.sha256(mirror / f) for f in data.MNIST_FILES}
    monkeypatch.setattr(data, "MNIST_FILES", files)
    monkeypatch.setattr(data, "MNIST_URLS", (mirror.as_uri() + "/",))
    monkeypatch.setattr(data, "DATA_CACHE", tmp_path / "cache")
    monkeypatch.delenv("PRUNING_KIT_DATA", raising=False)
    ds = data.load_mnist()
    assert len(ds.x_train) + len(ds.x_val) == 12
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(files)


@pytest.mark.skipif(not data.DEBIAN_FASHION_DIR.exists() and
                    not (data.DATA_CACHE / "fashion-mnist").exists(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_files():
    ds = data.load_fashion_mnist(download=False)
    assert ds.x_train.shape == (55000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_val.shape == (5000, 28, 28, 1)
    assert np.bincount(ds.y_train).tolist() == [5500] * 10
    assert np.bincount(ds.y_val).tolist() == [500] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.num_classes == 10
    assert ds.split.describe() == {"train": 55000, "validation": 5000, "test": 10000,
                                   "validation_sha256": ds.split.id}
    assert len(ds.split.val_indices) == 5000 == len(set(ds.split.val_indices.tolist()))


def test_split_is_fixed_and_disjoint(digits):
    again = data.load_digits()
    assert digits.split.id == again.split.id
    np.testing.assert_array_equal(digits.x_val, again.x_val)
    n = len(digits.x_train) + len(digits.x_val)
    val = digits.split.val_indices
    # distinct, sorted indices into the pool of n; the training part is the rest of it
    assert np.all(np.diff(val) > 0) and 0 <= val[0] and val[-1] < n
    assert len(val) == len(digits.x_val) == digits.split.validation
    assert digits.split.train == len(digits.x_train) == n - len(val) > 0
    assert len(digits.x_test) == 540 and digits.split.test == 540
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_digits(val_fraction=1.5)


def test_fashion_mnist_corrupt_copy_in_user_dir(tmp_path):
    src = data.DEBIAN_FASHION_DIR
    if not src.exists():
        pytest.skip("needs the Debian dataset-fashion-mnist package")
    for f in data.FASHION_MNIST_FILES:
        shutil.copy(src / f, tmp_path / f)
    raw = bytearray((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    raw[100] ^= 0xFF
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        data.load_fashion_mnist(data_dir=tmp_path)


def test_digits_split_is_fixed_and_stratified(digits):
    again = data.load_digits()
    np.testing.assert_array_equal(digits.y_test, again.y_test)
    counts = np.bincount(digits.y_test)
    assert counts.min() >= 50 and counts.max() <= 56
    assert digits.x_train.shape[1:] == (8, 8, 1) and digits.x_train.max() <= 1.0
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.5)


def test_batches_cover_everything_once_and_are_seeded():
    x, y = np.arange(103.0), np.arange(103)
    seen = np.concatenate([b for b, _ in data.batches(x, y, 10, seed=3)])
    assert sorted(seen.tolist()) == x.tolist()
    again = np.concatenate([b for b, _ in data.batches(x, y, 10, seed=3)])
    np.testing.assert_array_equal(seen, again)
    assert all(len(b) == 10 for b, _ in data.batches(x, y, 10, seed=1, drop_last=True))
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            list(data.batches(x, y, bad))
    with pytest.raises(ValueError, match="must match"):
        list(data.batches(x, y[:-1], 4))


def test_holdout_and_unknown_name(digits):
    (xr, yr), (xh, yh) = data.holdout(digits.x_train, digits.y_train, 100, seed=1)
    assert len(xh) == 100 and len(xr) == len(digits.x_train) - 100
    with pytest.raises(ValueError, match="n must be"):
        data.holdout(digits.x_train, digits.y_train, 0)
    with pytest.raises(ValueError, match="Unknown data set"):
        data.load("cifar")
