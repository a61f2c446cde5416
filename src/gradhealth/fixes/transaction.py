"""All-or-nothing model surgery: undo every edit if any remedy fails."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class Transaction:
    """Remember the module tree and every tensor's value; ``rollback`` restores both.

    Remedies replace children (activation swap, BatchNorm insertion) and overwrite
    parameters in place (initialisers); the original module objects are never mutated by
    a swap, so restoring each module's ``_modules`` mapping and the tensors' values brings
    the model back exactly.
    """

    def __init__(self, model: nn.Module):
        self._children = {m: OrderedDict(m._modules) for m in model.modules()}
        self._tensors = [(t, t.detach().clone()) for m in model.modules()
                         for t in list(m._parameters.values()) + list(m._buffers.values())
                         if t is not None]

    def rollback(self) -> None:
        for module, children in self._children.items():
            module._modules = children
        with torch.no_grad():
            for tensor, saved in self._tensors:
                tensor.copy_(saved)
