"""The long-term-dependency problems of Hochreiter & Schmidhuber (1997), generated from a seed.

The adding and the temporal-order problem, as used by Pascanu, Mikolov & Bengio (2013).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TEMPORAL_ORDER_SYMBOLS", "synthetic_adding", "synthetic_temporal_order"]


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
