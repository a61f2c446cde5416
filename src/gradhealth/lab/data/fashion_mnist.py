"""Fashion-MNIST read from IDX files already on the machine; nothing is downloaded.

Looked for in Debian's ``dataset-fashion-mnist`` package, a directory named by the
environment variable ``GRADHEALTH_FASHION_MNIST``, or torchvision's layout under a given
root. When no copy is found, :class:`~gradhealth.errors.DataNotFoundError` says where it
looked and how to get one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from gradhealth.errors import DataNotFoundError
from gradhealth.lab.data.idx import IDXFormatError, read_idx
from gradhealth.lab.data.split import Split

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_FILES",
    "fashion_mnist_search_dirs",
    "load_fashion_mnist",
]

#: Where Debian's (and Ubuntu's) package ``dataset-fashion-mnist`` puts the four files,
#: gzip-compressed and flat: ``/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz``
#: and so on. Read at call time, so tests can monkeypatch it (on this module:
#: ``gradhealth.lab.data`` only re-exports it).
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
