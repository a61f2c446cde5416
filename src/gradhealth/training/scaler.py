"""A tap on ``torch.amp.GradScaler``: see the steps it skips, read its scale without a sync.

``GradScaler.step`` calls ``optimizer.step()`` only when the unscaled gradients are
finite, so the optimizer's hooks never see the steps it skips (normal while the loss
scale calibrates at start-up). The tap wraps the scaler's ``update()`` (an instance
attribute, deleted again by ``remove``): an ``update`` with no optimizer step since the
last one is such a skip, reported through ``on_skip`` before GradScaler lowers the
scale. The scale is read from the scaler's device tensor (``get_scale()`` would sync).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradhealth.errors import ConfigError


class ScalerTap:
    def __init__(self, scaler: Any, on_skip: Callable[[], None]):
        if not hasattr(scaler, "update") or not hasattr(scaler, "is_enabled"):
            raise ConfigError(f"scaler= expects a torch.amp.GradScaler, got "
                              f"{type(scaler).__name__}")
        if "update" in vars(scaler):
            raise ConfigError("this GradScaler is already watched (its update() is wrapped); "
                              "close the other watch first")
        self.scaler = scaler
        self.stepped = False  # set by the watch when the optimizer's step runs
        original = scaler.update

        def update(new_scale=None):
            if not self.stepped and scaler.is_enabled():
                on_skip()
            self.stepped = False
            return original(new_scale)

        scaler.update = update

    def scale(self) -> torch.Tensor | None:
        """The current loss scale as a device tensor (None when disabled or not yet used)."""
        if not self.scaler.is_enabled():
            return None
        scale = getattr(self.scaler, "_scale", None)  # GradScaler's own; get_scale() syncs
        return scale if isinstance(scale, torch.Tensor) else None

    def remove(self) -> None:
        vars(self.scaler).pop("update", None)
