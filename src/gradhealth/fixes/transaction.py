"""All-or-nothing model surgery: undo every edit of every round if the fix fails."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class Transaction:
    """Remember the module tree and every tensor's value; ``rollback`` restores both.

    Remedies replace children (activation swap, BatchNorm insertion) and overwrite
    parameters in place (initialisers); the original module objects are never mutated by
    a swap, so restoring each module's ``_modules``, ``_parameters`` and ``_buffers``
    mappings and the tensors' values brings the model back exactly. A tensor held by two
    modules (tied weights: GPT-2's ``lm_head`` and ``wte``) is saved once, by identity, and
    stays one tensor held by both: the tie survives a rollback.
    """

    def __init__(self, model: nn.Module):
        modules = list(model.modules())
        self._children = {m: OrderedDict(m._modules) for m in modules}
        self._params = {m: OrderedDict(m._parameters) for m in modules}
        self._buffers = {m: OrderedDict(m._buffers) for m in modules}
        seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in modules:
            for t in list(m._parameters.values()) + list(m._buffers.values()):
                if t is not None and id(t) not in seen:
                    seen[id(t)] = (t, t.detach().clone())
        self._tensors = list(seen.values())

    def rollback(self) -> None:
        for module, children in self._children.items():
            module._modules = children
        for module, params in self._params.items():
            module._parameters = params
        for module, buffers in self._buffers.items():
            module._buffers = buffers
        with torch.no_grad():
            for tensor, saved in self._tensors:
                tensor.copy_(saved)
