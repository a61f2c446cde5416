"""The LSTM forget gate: the bias that lets the cell carry its gradient through time."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from gradhealth.errors import ConfigError
from gradhealth.fixes.change import Change
from gradhealth.fixes.init import targets

__all__ = ["forget_bias_"]


def forget_bias_(model: nn.Module, bias: float, *,
                 names: Iterable[str] | None = None) -> list[Change]:
    """Set the forget-gate bias of every ``nn.LSTM`` (or the ``names=`` subset) to ``bias``.

    torch's LSTM computes f = sigmoid(W_if x + b_if + W_hf h + b_hf), gates in the order
    i, f, g, o: ``bias_ih`` block 2 becomes ``bias`` and ``bias_hh`` block 2 zero, so the
    gate starts near sigmoid(bias) and dc_T/dc_0 near sigmoid(bias)^T (Gers et al. 2000;
    Jozefowicz et al. 2015 use 1; ``rules.through_time.forget_bias`` chooses it from the
    sequence length, docs/science.md#the-forget-gate). The weights are left as they are.
    """
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
        raise ConfigError(f"Expected a finite number for the forget-gate bias (e.g. 1.0 or "
                          f"the finding's value), got {bias!r}.")
    changes = []
    for name, module in targets(model, names, (nn.LSTM,)):
        if not module.bias:
            raise ConfigError(f"Expected an LSTM with biases, got '{name}' built with "
                              "bias=False: it has no forget-gate bias to set. The model is "
                              "unchanged.")
    for name, module in targets(model, names, (nn.LSTM,)):
        with torch.no_grad():
            for pname, param in module.named_parameters(recurse=False):
                if pname.startswith("bias_ih"):
                    param.chunk(4)[1].fill_(bias)
                elif pname.startswith("bias_hh"):
                    param.chunk(4)[1].zero_()
        p = 1.0 / (1.0 + math.exp(-bias))
        changes.append(Change(name, f"forget-gate bias = {bias:g} (bias_ih block 2; bias_hh's "
                                    f"0): the gate starts near {p:.4g}",
                              "an open forget gate carries the cell's gradient through time "
                              "(Gers et al. 2000; Jozefowicz et al. 2015)"))
    return changes
