"""scikit-learn's bundled 8x8 handwritten digits, split and scaled (no download, ever)."""

from __future__ import annotations

import numpy as np
import torch

from gradhealth.errors import DataNotFoundError
from gradhealth.lab.data.split import Split

__all__ = ["DIGITS_STD_FLOOR", "load_digits"]

#: Smallest standard deviation (in grey levels, the digits' raw scale 0..16) that
#: :func:`load_digits` divides by. Pixels that are constant or nearly constant in the
#: training part (the image border) are then not blown up when a test image inks them.
DIGITS_STD_FLOOR = 1.0


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
