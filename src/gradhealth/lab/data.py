"""Data for the lab: what ships, what is read from disk, and what is generated in code.

* :func:`load_digits` -- scikit-learn's bundled 8x8 digits (no download, ever).
* :func:`load_fashion_mnist` -- Fashion-MNIST read from IDX files already on the machine
  (Debian's ``dataset-fashion-mnist`` package, a directory named by the environment
  variable ``GRADHEALTH_FASHION_MNIST``, or torchvision's layout). Nothing is downloaded;
  when no copy is found, :class:`~gradhealth.errors.DataNotFoundError` says where it looked
  and how to get one.
* :func:`synthetic_adding` and :func:`synthetic_temporal_order` -- the long-term-dependency
  problems of Hochreiter & Schmidhuber (1997) as used by Pascanu, Mikolov & Bengio (2013),
  generated from a seed.

Every tensor is batch-first; inputs are ``float32``, class labels ``int64``.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gradhealth.errors import DataNotFoundError, GradHealthError

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "DIGITS_STD_FLOOR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_FILES",
    "IDXFormatError",
    "Split",
    "TEMPORAL_ORDER_SYMBOLS",
    "fashion_mnist_search_dirs",
    "load_digits",
    "load_fashion_mnist",
    "read_idx",
    "synthetic_adding",
    "synthetic_temporal_order",
]

#: Where Debian's (and Ubuntu's) package ``dataset-fashion-mnist`` puts the four files,
#: gzip-compressed and flat: ``/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz``
#: and so on. Read at call time, so tests can monkeypatch it.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Environment variable naming a directory that holds the four IDX files.
FASHION_MNIST_ENV = "GRADHEALTH_FASHION_MNIST"

#: The four IDX files of Fashion-MNIST (each may also be present with a ``.gz`` suffix).
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Smallest standard deviation (in grey levels, the digits' raw scale 0..16) that
#: :func:`load_digits` divides by. Pixels that are constant or nearly constant in the
#: training part (the image border) are then not blown up when a test image inks them.
DIGITS_STD_FLOOR = 1.0


class IDXFormatError(GradHealthError, ValueError):
    """An IDX file exists but is not a valid IDX file of the expected kind (bad magic
    number, wrong dimensions, truncated, corrupt compression). The message names the file."""


@dataclass(frozen=True, eq=False)
class Split:
    """A train/test split, ready for ``TensorDataset``.

    ``x_*`` are ``float32`` with the batch first; ``y_*`` are ``int64`` class indices in
    ``range(n_classes)``. ``source`` says where the data came from (a path, or the
    package that bundles it).
    """

    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    n_classes: int
    name: str
    source: str = ""

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"Split {self.name!r}: x_{part} has {x.shape[0]} rows but y_{part} has "
                    f"{y.shape[0]}; they must match."
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Split(name={self.name!r}, x_train={tuple(self.x_train.shape)}, "
            f"x_test={tuple(self.x_test.shape)}, n_classes={self.n_classes}, "
            f"source={self.source!r})"
        )


# --------------------------------------------------------------------------- digits


def load_digits(*, test_fraction: float = 0.25, seed: int = 0, standardize: bool = True) -> Split:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), split and scaled.

    The split is stratified by class and fixed by ``seed``. With ``standardize=True`` each
    of the 64 pixels is centred and scaled with the mean and standard deviation of the
    *training part only*; the standard deviation is floored at :data:`DIGITS_STD_FLOOR`
    grey levels, so a pixel that is constant in training becomes 0 there and stays finite
    in the test part. With ``standardize=False`` pixels are divided by 16, giving [0, 1].

    ``x_*`` have shape ``(n, 64)``.
    """
    if not isinstance(test_fraction, (int, float)) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(
            f"test_fraction must be a number strictly between 0 and 1; got {test_fraction!r}."
        )
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataNotFoundError(
            "The digits data set ships inside scikit-learn, which is not installed. "
            "Install it with `pip install 'gradhealth[lab]'` (or `pip install scikit-learn`)."
        ) from exc

    bunch = _sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=float(test_fraction), random_state=seed, stratify=y, shuffle=True
    )
    if standardize:
        mean = x_tr.mean(axis=0)
        std = np.maximum(x_tr.std(axis=0), DIGITS_STD_FLOOR)
        x_tr = (x_tr - mean) / std
        x_te = (x_te - mean) / std
    else:
        x_tr = x_tr / 16.0
        x_te = x_te / 16.0
    return Split(
        x_train=torch.from_numpy(np.ascontiguousarray(x_tr, dtype=np.float32)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_tr)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_te, dtype=np.float32)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_te)),
        n_classes=10,
        name="digits",
        source="sklearn.datasets.load_digits",
    )


# --------------------------------------------------------------------------- IDX files

# IDX type codes (third byte of the magic number) -> numpy dtype, big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise IDXFormatError(
                f"{path}: cannot decompress ({type(exc).__name__}: {exc}). The file is "
                "truncated or corrupt; replace it with a fresh copy."
            ) from exc
    return path.read_bytes()


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally ``.gz``) into a numpy array.

    Checks the magic number (two zero bytes, a known type code, the number of
    dimensions), that ``ndim`` matches when given, and that the payload holds exactly as
    many items as the header announces. Any mismatch raises :class:`IDXFormatError`
    naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(
            f"{path}: {len(data)} bytes, too short for an IDX header; the file is truncated."
        )
    zero, type_code, dims = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_DTYPES:
        raise IDXFormatError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()}; expected 0x0000TTNN with a "
            f"type code TT in {sorted(f'{c:02x}' for c in _IDX_DTYPES)}. This is not an IDX "
            "file (or it is compressed without a .gz suffix)."
        )
    if ndim is not None and dims != ndim:
        raise IDXFormatError(
            f"{path}: IDX file has {dims} dimension(s); expected {ndim} "
            f"(magic 0x{data[:4].hex()})."
        )
    header_len = 4 + 4 * dims
    if len(data) < header_len:
        raise IDXFormatError(
            f"{path}: header announces {dims} dimensions but the file ends after "
            f"{len(data)} bytes; the file is truncated."
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header_len
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says (corrupt)"
        raise IDXFormatError(
            f"{path}: header says shape {shape} ({expected} bytes of data) but the file "
            f"holds {got}; the file is {what}."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


# --------------------------------------------------------------------------- Fashion-MNIST


def fashion_mnist_search_dirs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The directories :func:`load_fashion_mnist` looks in, in order.

    With ``root``: ``root`` and ``root/FashionMNIST/raw`` only (an explicit choice is
    never silently replaced by another copy). Without: the directory in
    ``$GRADHEALTH_FASHION_MNIST`` (and its ``FashionMNIST/raw``), then Debian's
    :data:`DEBIAN_FASHION_MNIST_DIR`.
    """
    bases: list[Path] = []
    if root is not None:
        bases.append(Path(root).expanduser())
    else:
        env = os.environ.get(FASHION_MNIST_ENV, "").strip()
        if env:
            bases.append(Path(env).expanduser())
        bases.append(Path(DEBIAN_FASHION_MNIST_DIR))
    dirs: list[Path] = []
    for base in bases:
        for candidate in (base, base / "FashionMNIST" / "raw"):
            if candidate not in dirs:
                dirs.append(candidate)
    return dirs


def _find_files(directory: Path) -> tuple[dict[str, Path] | None, str]:
    """Map each of the four names to an existing file (raw preferred over .gz), or say
    what is missing."""
    if not directory.is_dir():
        return None, "not a directory" if directory.exists() else "no such directory"
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in FASHION_MNIST_FILES:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            missing.append(name)
    if missing:
        if not found:
            return None, "none of the four IDX files"
        return None, "missing " + ", ".join(f"{m}[.gz]" for m in missing)
    return found, ""


def _not_found_message(looked: list[tuple[Path, str]], root: object) -> str:
    lines = ["Fashion-MNIST was not found; gradhealth never downloads data. Looked in:"]
    lines += [f"  - {d}: {why}" for d, why in looked]
    if root is not None:
        lines.append(
            f"  (root was given, so {FASHION_MNIST_ENV} and {DEBIAN_FASHION_MNIST_DIR} "
            "were not searched)"
        )
    elif not os.environ.get(FASHION_MNIST_ENV, "").strip():
        lines.append(f"  (environment variable {FASHION_MNIST_ENV} is not set)")
    files = ", ".join(f"{n}[.gz]" for n in FASHION_MNIST_FILES)
    lines += [
        "To get the data, do one of:",
        "  - on Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` "
        f"(installs the files under {DEBIAN_FASHION_MNIST_DIR});",
        f"  - set {FASHION_MNIST_ENV} to a directory holding the four IDX files ({files});",
        "  - pass root=DIR where DIR holds those files directly or in torchvision's layout "
        "DIR/FashionMNIST/raw/ (as left by torchvision.datasets.FashionMNIST(DIR, "
        "download=True)).",
    ]
    return "\n".join(lines)


def load_fashion_mnist(
    *,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    flatten: bool = False,
) -> Split:
    """Fashion-MNIST (60 000 train / 10 000 test 28x28 grey images, 10 classes) from disk.

    Looks in :func:`fashion_mnist_search_dirs` order and uses the first directory that
    holds all four IDX files (each raw or ``.gz``; raw wins when both exist). Pixels are
    divided by 255 into [0, 1] ``float32``, as the article's Keras model does. ``x_*``
    have shape ``(n, 1, 28, 28)``, or ``(n, 784)`` with ``flatten=True``.

    ``limit=N`` keeps the first N examples of the training part and the first N of the
    test part (the files are already shuffled, so classes stay roughly balanced).

    Raises :class:`~gradhealth.errors.DataNotFoundError` listing every place looked at
    and how to get the data, and :class:`IDXFormatError` (a ``ValueError``) naming the
    file when one is corrupt.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None; got {limit!r}.")

    looked: list[tuple[Path, str]] = []
    files: dict[str, Path] | None = None
    chosen: Path | None = None
    for directory in fashion_mnist_search_dirs(root):
        files, why = _find_files(directory)
        if files is not None:
            chosen = directory
            break
        looked.append((directory, why))
    if files is None or chosen is None:
        raise DataNotFoundError(_not_found_message(looked, root))

    def part(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        img_path = files[f"{kind}-images-idx3-ubyte"]
        lab_path = files[f"{kind}-labels-idx1-ubyte"]
        images = read_idx(img_path, ndim=3)
        labels = read_idx(lab_path, ndim=1)
        for path, arr in ((img_path, images), (lab_path, labels)):
            if arr.dtype != np.uint8:
                raise IDXFormatError(f"{path}: expected unsigned bytes, got {arr.dtype}.")
        if images.shape[0] != labels.shape[0]:
            raise IDXFormatError(
                f"{img_path} holds {images.shape[0]} images but {lab_path} holds "
                f"{labels.shape[0]} labels; they must match."
            )
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise IDXFormatError(
                f"{lab_path}: label {int(labels.max())} is outside 0..9; not Fashion-MNIST."
            )
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0))
        x = x.reshape(x.shape[0], -1) if flatten else x.unsqueeze(1)
        return x, torch.from_numpy(labels.astype(np.int64))

    x_train, y_train = part("train")
    x_test, y_test = part("t10k")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise IDXFormatError(
            f"{chosen}: training images have shape {tuple(x_train.shape[1:])} but test "
            f"images {tuple(x_test.shape[1:])}; they must match."
        )
    return Split(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        n_classes=len(FASHION_MNIST_CLASSES),
        name="fashion-mnist",
        source=str(chosen),
    )


# --------------------------------------------------------------------------- synthetic tasks


def _check_n_t(n: int, T: int, min_t: int) -> None:
    for label, value, low in (("n", n, 1), ("T", T, min_t)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an int >= {low}; got {value!r}.")


def synthetic_adding(n: int, T: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Pascanu et al. 2013 variant).

    Returns ``(x, y)``: ``x`` of shape ``(n, T, 2)`` ``float32`` -- channel 0 holds values
    drawn from U[0, 1], channel 1 is a marker that is 1 at exactly two time steps, one in
    the first half ``[0, T//2)`` and one in the second half ``[T//2, T)``, and 0 elsewhere;
    ``y`` of shape ``(n, 1)`` ``float32`` is the sum of the two marked values (so it fits
    a ``Linear(hidden, 1)`` head under ``MSELoss`` without broadcasting). Predicting the
    constant 1.0 gives a mean squared error of about 1/6, the baseline to beat.
    """
    _check_n_t(n, T, 2)
    rng = np.random.default_rng(seed)
    values = rng.random((n, T), dtype=np.float32)
    half = T // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    markers = np.zeros((n, T), dtype=np.float32)
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = (values[rows, first] + values[rows, second]).astype(np.float32)
    x = np.stack([values, markers], axis=-1)
    return torch.from_numpy(x), torch.from_numpy(target.reshape(n, 1))


#: Symbols of the temporal-order problem, in one-hot channel order.
TEMPORAL_ORDER_SYMBOLS = ("a", "b", "c", "d", "E", "B", "X", "Y")


def synthetic_temporal_order(n: int, T: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-symbol temporal-order problem, Hochreiter & Schmidhuber (1997) Experiment 6a.

    Exactly this variant: each sequence has fixed length ``T`` (the paper draws it from
    100..110; a fixed ``T`` lets sequences batch). Time step 0 is the start symbol ``E``,
    step ``T-1`` the end symbol ``B``; every other step is a distractor drawn uniformly
    from ``{a, b, c, d}``, except two steps ``t1`` and ``t2`` that hold ``X`` or ``Y``
    (each with probability 1/2). ``t1`` is uniform on ``[T//10, 2*T//10]`` and ``t2`` on
    ``[5*T//10, 6*T//10]`` (both inclusive, 0-based) -- for ``T = 100`` exactly the
    paper's 10..20 and 50..60, and the 10-20 % / 50-60 % positions of Martens & Sutskever
    (2011) and Pascanu et al. (2013). The class, read at the end, is the order of the two
    relevant symbols: ``XX -> 0, XY -> 1, YX -> 2, YY -> 3`` (the paper's Q, R, S, U).

    Returns ``(x, y)``: ``x`` of shape ``(n, T, 8)`` ``float32``, one-hot over
    :data:`TEMPORAL_ORDER_SYMBOLS` (``a b c d E B X Y``); ``y`` of shape ``(n,)``
    ``int64`` in ``range(4)``. Requires ``T >= 10``.
    """
    _check_n_t(n, T, 10)
    rng = np.random.default_rng(seed)
    a, e_sym, b_sym, x_sym = 0, 4, 5, 6  # indices into TEMPORAL_ORDER_SYMBOLS
    symbols = rng.integers(a, a + 4, size=(n, T))  # distractors a..d
    symbols[:, 0] = e_sym
    symbols[:, T - 1] = b_sym
    t1 = rng.integers(T // 10, 2 * T // 10 + 1, size=n)
    t2 = rng.integers(5 * T // 10, 6 * T // 10 + 1, size=n)
    is_y = rng.integers(0, 2, size=(n, 2))  # 0 -> X, 1 -> Y
    rows = np.arange(n)
    symbols[rows, t1] = x_sym + is_y[:, 0]
    symbols[rows, t2] = x_sym + is_y[:, 1]
    x = np.eye(len(TEMPORAL_ORDER_SYMBOLS), dtype=np.float32)[symbols]
    y = (2 * is_y[:, 0] + is_y[:, 1]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)
