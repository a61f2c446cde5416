"""Capture and restore everything a forward/backward pass may change outside parameters.

A probe must leave the model bit-identical (docs/architecture.md#the-probes-promise):
train/eval flags of every module, buffers such as BatchNorm running statistics (values and
the tensor objects themselves), and the global RNG state that dropout draws from.
Parameters and ``.grad`` are never written by a probe (it uses ``torch.autograd.grad``),
so they need no copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Snapshot:
    modes: list[tuple[nn.Module, bool]]
    buffers: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]]
    cpu_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None

    @classmethod
    def capture(cls, model: nn.Module) -> Snapshot:
        modes = [(m, m.training) for m in model.modules()]
        buffers = []
        for module in model.modules():
            for key, buf in module._buffers.items():
                buffers.append((module, key, buf, None if buf is None else buf.detach().clone()))
        cuda_rng = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda_rng = torch.cuda.get_rng_state_all()
        return cls(modes, buffers, torch.get_rng_state(), cuda_rng)

    def restore(self) -> None:
        for module, training in self.modes:
            module.training = training
        with torch.no_grad():
            for module, key, original, saved in self.buffers:
                if module._buffers.get(key) is not original:
                    module._buffers[key] = original
                if original is not None and saved is not None:
                    original.copy_(saved)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
