"""The train/test split every lab data loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Split"]


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

    def tensors(self, device: torch.device | str) -> tuple[torch.Tensor, ...]:
        """``(x_train, y_train, x_test, y_test)`` on ``device``."""
        return tuple(t.to(device) for t in (self.x_train, self.y_train, self.x_test,
                                            self.y_test))

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
