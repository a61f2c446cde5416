"""Tests for gradhealth.lab.data: digits, the IDX reader / Fashion-MNIST finder, synthetic tasks."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gradhealth.errors import DataNotFoundError, GradHealthError
from gradhealth.lab.data import (
    DIGITS_STD_FLOOR,
    FASHION_MNIST_ENV,
    FASHION_MNIST_FILES,
    IDXFormatError,
    Split,
    fashion_mnist,
    load_digits,
    load_fashion_mnist,
    read_idx,
    synthetic_adding,
    synthetic_temporal_order,
)

# ----------------------------------------------------------------------------- digits


def test_digits_shapes_and_dtypes():
    s = load_digits()
    assert isinstance(s, Split)
    assert s.name == "digits" and s.n_classes == 10
    assert s.x_train.dtype == torch.float32 and s.x_test.dtype == torch.float32
    assert s.y_train.dtype == torch.int64 and s.y_test.dtype == torch.int64
    assert s.x_train.shape[1:] == (64,) and s.input_shape == (64,)
    assert s.x_train.shape[0] + s.x_test.shape[0] == 1797
    assert s.x_test.shape[0] == pytest.approx(0.25 * 1797, abs=1)
    assert torch.isfinite(s.x_train).all() and torch.isfinite(s.x_test).all()
    assert "digits" in repr(s) and "(1347, 64)" in repr(s)


def test_digits_stratified():
    s = load_digits(test_fraction=0.3, seed=3)
    from sklearn.datasets import load_digits as sk

    overall = np.bincount(sk().target, minlength=10) / 1797
    for y in (s.y_train, s.y_test):
        counts = np.bincount(y.numpy(), minlength=10)
        assert np.all(np.abs(counts - overall * len(y)) <= 1.0), counts


def test_digits_seeded():
    a, b, c = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_digits_standardised_on_train_only():
    from sklearn.datasets import load_digits as sk

    s = load_digits(seed=0)
    raw = load_digits(seed=0, standardize=False)
    assert raw.x_train.min() >= 0 and raw.x_train.max() <= 1
    assert torch.equal(raw.y_train, s.y_train)

    # Recompute the statistics from the raw training part (grey levels 0..16).
    x_tr = raw.x_train.double().numpy() * 16
    x_te = raw.x_test.double().numpy() * 16
    mean = x_tr.mean(0)
    std = np.maximum(x_tr.std(0), DIGITS_STD_FLOOR)
    np.testing.assert_allclose(s.x_train.numpy(), (x_tr - mean) / std, atol=1e-5)
    np.testing.assert_allclose(s.x_test.numpy(), (x_te - mean) / std, atol=1e-5)

    got_mean = s.x_train.double().mean(0).numpy()
    got_std = s.x_train.double().std(0, correction=0).numpy()
    np.testing.assert_allclose(got_mean, 0.0, atol=1e-5)
    wide = x_tr.std(0) >= DIGITS_STD_FLOOR
    assert wide.sum() > 40
    np.testing.assert_allclose(got_std[wide], 1.0, atol=1e-5)
    assert np.all(got_std[~wide] < 1.0)
    constant = x_tr.std(0) == 0
    assert constant.any()
    assert (s.x_train.numpy()[:, constant] == 0).all()
    # The test part was not used for the statistics, so its mean is not exactly zero.
    assert np.abs(s.x_test.double().mean(0).numpy()).max() > 1e-3
    assert sk().data.shape == (1797, 64)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.2"])
def test_digits_bad_fraction(bad):
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=bad)


def test_split_is_frozen_and_checks_lengths():
    s = load_digits()
    with pytest.raises(AttributeError):
        s.name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="rows"):
        Split(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64), torch.zeros(1, 2),
              torch.zeros(1, dtype=torch.int64), n_classes=2, name="bad")


# ----------------------------------------------------------------------------- IDX files


def idx_bytes(array: np.ndarray) -> bytes:
    assert array.dtype == np.uint8
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def fake_fashion(directory: Path, *, n_train=12, n_test=7, side=28, gz=False, seed=0):
    """Write the four Fashion-MNIST IDX files with random content; return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, 0] = 255
    arrays["train-images-idx3-ubyte"][0, 0, 1] = 0
    for name, arr in arrays.items():
        write_idx(directory / name, arr, gz=gz)
    return arrays


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No env var and a Debian location that does not exist: the search is deterministic."""
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    missing = tmp_path / "no-debian" / "fashion-mnist"
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", missing)
    return missing


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x-idx3-ubyte", arr, gz=gz)
    got = read_idx(path, ndim=3)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, arr)


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(IDXFormatError, match="magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, GradHealthError)


def test_read_idx_unknown_type_code(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(IDXFormatError, match="magic"):
        read_idx(path)


def test_read_idx_wrong_ndim(tmp_path):
    path = write_idx(tmp_path / "l-idx1-ubyte", np.zeros(3, np.uint8), gz=False)
    with pytest.raises(IDXFormatError, match="expected 3"):
        read_idx(path, ndim=3)


@pytest.mark.parametrize("cut", [2, 10, 20])
def test_read_idx_truncated(tmp_path, cut):
    path = write_idx(tmp_path / "i-idx3-ubyte", np.ones((2, 4, 4), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-cut] if cut != 10 else path.read_bytes()[:10])
    with pytest.raises(IDXFormatError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_trailing_garbage(tmp_path):
    path = write_idx(tmp_path / "i-idx3-ubyte", np.ones((2, 4, 4), np.uint8), gz=False)
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(IDXFormatError, match="longer"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "i-idx3-ubyte", np.ones((20, 28, 28), np.uint8), gz=True)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(IDXFormatError, match="decompress") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_not_gzip_but_named_gz(tmp_path):
    path = tmp_path / "i-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(IDXFormatError, match=str(path).replace("\\", "\\\\")):
        read_idx(path)


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_root_flat(isolated, tmp_path, gz):
    arrays = fake_fashion(tmp_path / "fm", gz=gz)
    s = load_fashion_mnist(root=tmp_path / "fm")
    assert s.name == "fashion-mnist" and s.n_classes == 10
    assert s.source == str(tmp_path / "fm")
    assert s.x_train.shape == (12, 1, 28, 28) and s.x_test.shape == (7, 1, 28, 28)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert float(s.x_train.min()) >= 0.0 and float(s.x_train.max()) <= 1.0
    assert s.x_train[0, 0, 0, 0] == 1.0 and s.x_train[0, 0, 0, 1] == 0.0
    np.testing.assert_allclose(
        s.x_test.numpy()[:, 0], arrays["t10k-images-idx3-ubyte"].astype(np.float32) / 255
    )
    np.testing.assert_array_equal(s.y_train.numpy(), arrays["train-labels-idx1-ubyte"])


def test_fashion_mixed_compression_and_raw_preferred(isolated, tmp_path):
    d = tmp_path / "fm"
    arrays = fake_fashion(d, gz=False)
    # A gz copy with different content next to the raw one: the raw one is used.
    write_idx(d / "train-labels-idx1-ubyte", (arrays["train-labels-idx1-ubyte"] + 1) % 10, gz=True)
    (d / "t10k-labels-idx1-ubyte").unlink()
    write_idx(d / "t10k-labels-idx1-ubyte", arrays["t10k-labels-idx1-ubyte"], gz=True)
    s = load_fashion_mnist(root=d)
    np.testing.assert_array_equal(s.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(s.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_fashion_torchvision_layout(isolated, tmp_path):
    fake_fashion(tmp_path / "data" / "FashionMNIST" / "raw", gz=True)
    s = load_fashion_mnist(root=tmp_path / "data", flatten=True)
    assert s.x_train.shape == (12, 784) and s.input_shape == (784,)
    assert s.source == str(tmp_path / "data" / "FashionMNIST" / "raw")


@pytest.mark.parametrize("nested", [False, True])
def test_fashion_env_var(isolated, tmp_path, monkeypatch, nested):
    base = tmp_path / "env"
    fake_fashion(base / "FashionMNIST" / "raw" if nested else base, gz=not nested)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(base))
    s = load_fashion_mnist(limit=5)
    assert s.x_train.shape == (5, 1, 28, 28) and s.x_test.shape == (5, 1, 28, 28)


def test_fashion_env_var_before_debian(tmp_path, monkeypatch):
    fake_fashion(tmp_path / "env", n_train=3)
    fake_fashion(tmp_path / "debian", n_train=4)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "env"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    assert load_fashion_mnist().x_train.shape[0] == 3
    monkeypatch.delenv(FASHION_MNIST_ENV)
    assert load_fashion_mnist().x_train.shape[0] == 4


def test_fashion_explicit_root_is_not_replaced(tmp_path, monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    fake_fashion(tmp_path / "debian")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="none of the four IDX files") as info:
        load_fashion_mnist(root=tmp_path / "empty")
    looked = str(info.value).split("To get the data")[0]
    assert f"{tmp_path / 'empty'}: none of the four" in looked
    assert f"{tmp_path / 'debian'}:" not in looked
    assert "root was given" in looked


def test_fashion_limit_larger_than_data(isolated, tmp_path):
    fake_fashion(tmp_path / "fm")
    s = load_fashion_mnist(root=tmp_path / "fm", limit=10_000)
    assert s.x_train.shape[0] == 12 and s.x_test.shape[0] == 7


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_fashion_bad_limit(isolated, tmp_path, bad):
    fake_fashion(tmp_path / "fm")
    with pytest.raises(ValueError, match="limit"):
        load_fashion_mnist(root=tmp_path / "fm", limit=bad)


def test_fashion_not_found_message(isolated, tmp_path, monkeypatch):
    partial = tmp_path / "partial"
    fake_fashion(partial)
    (partial / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setenv(FASHION_MNIST_ENV, str(partial))
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist()
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for place in (partial, partial / "FashionMNIST" / "raw", isolated,
                  isolated / "FashionMNIST" / "raw"):
        assert str(place) in msg
    assert "missing t10k-labels-idx1-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert FASHION_MNIST_ENV in msg
    assert "FashionMNIST/raw" in msg
    assert "never downloads" in msg
    for name in FASHION_MNIST_FILES:
        assert name in msg


def test_fashion_not_found_without_env(isolated):
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist()
    msg = str(info.value)
    assert f"{FASHION_MNIST_ENV} is not set" in msg
    assert str(isolated) in msg and "no such directory" in msg


def test_fashion_corrupt_file_named(isolated, tmp_path):
    d = tmp_path / "fm"
    fake_fashion(d, gz=True)
    bad = d / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(IDXFormatError) as info:
        load_fashion_mnist(root=d)
    assert str(bad) in str(info.value)


def test_fashion_count_mismatch(isolated, tmp_path):
    d = tmp_path / "fm"
    fake_fashion(d)
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(11, np.uint8), gz=False)
    with pytest.raises(IDXFormatError, match="12 images"):
        load_fashion_mnist(root=d)


def test_fashion_label_out_of_range(isolated, tmp_path):
    d = tmp_path / "fm"
    fake_fashion(d)
    write_idx(d / "t10k-labels-idx1-ubyte", np.full(7, 10, np.uint8), gz=False)
    with pytest.raises(IDXFormatError, match="outside 0..9"):
        load_fashion_mnist(root=d)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian package dataset-fashion-mnist not installed "
    "(apt-get install -y dataset-fashion-mnist)",
)
def test_fashion_debian_package(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR",
                        Path("/usr/share/datasets/fashion-mnist"))
    s = load_fashion_mnist(limit=1000)
    assert s.source == "/usr/share/datasets/fashion-mnist"
    assert s.x_train.shape == (1000, 1, 28, 28) and s.x_test.shape == (1000, 1, 28, 28)
    assert s.n_classes == 10
    assert set(s.y_train.tolist()) == set(range(10))
    counts = torch.bincount(s.y_train, minlength=10)
    assert counts.min() >= 70 and counts.max() <= 130  # first 1000 are roughly balanced
    assert 0.0 <= float(s.x_train.min()) and float(s.x_train.max()) == 1.0


# ----------------------------------------------------------------------------- synthetic tasks


@pytest.mark.parametrize("T", [2, 3, 10, 51, 200])
def test_adding_problem(T):
    x, y = synthetic_adding(256, T, seed=4)
    assert x.shape == (256, T, 2) and x.dtype == torch.float32
    assert y.shape == (256, 1) and y.dtype == torch.float32
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    half = T // 2
    assert (markers[:, :half].sum(1) == 1).all()
    assert (markers[:, half:].sum(1) == 1).all()
    assert torch.equal((values * markers).sum(1, keepdim=True), y)  # exact: two terms


def test_adding_positions_cover_halves():
    x, _ = synthetic_adding(4000, 20, seed=0)
    pos = x[..., 1].nonzero()[:, 1].view(-1, 2)
    assert set(pos[:, 0].tolist()) == set(range(10))
    assert set(pos[:, 1].tolist()) == set(range(10, 20))


def test_adding_seeded():
    a, b = synthetic_adding(8, 30, seed=1), synthetic_adding(8, 30, seed=1)
    c = synthetic_adding(8, 30, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("T", [10, 11, 37, 100, 250])
def test_temporal_order(T):
    x, y = synthetic_temporal_order(512, T, seed=5)
    assert x.shape == (512, T, 8) and x.dtype == torch.float32
    assert y.shape == (512,) and y.dtype == torch.int64
    assert (x.sum(-1) == 1).all()  # one-hot
    sym = x.argmax(-1)
    E, B, X, Y = 4, 5, 6, 7
    assert (sym[:, 0] == E).all() and (sym[:, -1] == B).all()
    assert ((sym[:, 1:-1] < 4) | (sym[:, 1:-1] >= X)).all()
    relevant = sym >= X
    assert (relevant.sum(1) == 2).all()
    pos = relevant.nonzero()[:, 1].view(-1, 2)
    assert ((pos[:, 0] >= T // 10) & (pos[:, 0] <= 2 * T // 10)).all()
    assert ((pos[:, 1] >= 5 * T // 10) & (pos[:, 1] <= 6 * T // 10)).all()
    rows = torch.arange(512)
    first_is_y = (sym[rows, pos[:, 0]] == Y).long()
    second_is_y = (sym[rows, pos[:, 1]] == Y).long()
    assert torch.equal(y, 2 * first_is_y + second_is_y)
    assert set(y.tolist()) == {0, 1, 2, 3}


def test_temporal_order_paper_positions_at_T100():
    x, _ = synthetic_temporal_order(3000, 100, seed=0)
    pos = (x.argmax(-1) >= 6).nonzero()[:, 1].view(-1, 2)
    assert set(pos[:, 0].tolist()) == set(range(10, 21))
    assert set(pos[:, 1].tolist()) == set(range(50, 61))


def test_temporal_order_seeded():
    a, b = synthetic_temporal_order(16, 40, seed=9), synthetic_temporal_order(16, 40, seed=9)
    c = synthetic_temporal_order(16, 40, seed=10)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "fn, n, T",
    [(synthetic_adding, 0, 10), (synthetic_adding, 4, 1), (synthetic_adding, 4, 2.0),
     (synthetic_temporal_order, 4, 9), (synthetic_temporal_order, -1, 20)],
)
def test_synthetic_bad_sizes(fn, n, T):
    with pytest.raises(ValueError):
        fn(n, T, seed=0)


def test_synthetic_seed_is_keyword_only():
    with pytest.raises(TypeError):
        synthetic_adding(4, 10, 0)  # type: ignore[misc]
