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

The code lives in one module per noun (:mod:`.split`, :mod:`.digits`, :mod:`.idx`,
:mod:`.fashion_mnist`, :mod:`.synthetic`); this package re-exports their public names.
"""

from __future__ import annotations

from gradhealth.lab.data.digits import DIGITS_STD_FLOOR, load_digits
from gradhealth.lab.data.fashion_mnist import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    FASHION_MNIST_FILES,
    fashion_mnist_search_dirs,
    load_fashion_mnist,
)
from gradhealth.lab.data.idx import IDXFormatError, read_idx
from gradhealth.lab.data.split import Split
from gradhealth.lab.data.synthetic import (
    TEMPORAL_ORDER_SYMBOLS,
    synthetic_adding,
    synthetic_temporal_order,
)

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
