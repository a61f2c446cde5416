"""Tied parameters: one storage held under several names (GPT-2's ``lm_head.weight`` is
``transformer.wte.weight``). A remedy that writes one writes all of them, so it treats a
tie as one parameter and says which other names changed with it."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Ties", "storage_key"]


def storage_key(tensor: torch.Tensor) -> tuple:
    """Where a tensor's values live: its storage's address, offset, shape and strides. Two
    tensors with one key are one parameter, whatever their Python identity."""
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
            tuple(tensor.shape), tuple(tensor.stride()))


class Ties:
    """Every parameter name of ``model`` grouped by storage (``named_parameters`` with
    ``remove_duplicate=False``, so a tensor held twice is seen under both names)."""

    def __init__(self, model: nn.Module):
        self._names: dict[tuple, list[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            if param.numel():
                self._names.setdefault(storage_key(param), []).append(name)

    def others(self, name: str, tensor: torch.Tensor) -> list[str]:
        """The names other than ``name`` that hold ``tensor``'s storage."""
        if not tensor.numel():
            return []
        return [n for n in self._names.get(storage_key(tensor), []) if n != name]

    def note(self, name: str, tensor: torch.Tensor) -> str:
        """"; tied to `x` (one tensor: it changed too)", or "" for an untied parameter."""
        others = self.others(name, tensor)
        if not others:
            return ""
        return (f"; tied to {', '.join(f'`{o}`' for o in others)} (one shared tensor: "
                f"{'it' if len(others) == 1 else 'they'} changed too)")
