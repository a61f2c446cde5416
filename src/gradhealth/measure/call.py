"""What the taps record of one call (``Call``), what they need to know of the thing called
(``Measured``), and the floating tensors of a call's arguments or output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from gradhealth.measure import catalog, stats
from gradhealth.measure.catalog import Band


@dataclass
class Call:
    """One call of one module during the tapped forward pass (and its backward)."""

    name: str
    module: nn.Module
    index: int  # completion order of the forward call
    leaf: bool
    lean: bool = False  # ``out``/``grad`` hold stats.lean_sums, not stats.moment_sums
    # moment_sums of the primary output (lean: the stats.lean_sums pair)
    out: torch.Tensor | tuple[torch.Tensor, ...] | None = None
    out_numel: int = 0  # entries of the primary output (and of its gradient)
    out_nonfinite: torch.Tensor | None = None  # over every floating output
    in_nonfinite: torch.Tensor | None = None  # over every floating input
    saturated: torch.Tensor | None = None
    alive: torch.Tensor | None = None  # per-unit "non-zero somewhere in the batch"
    grad: torch.Tensor | tuple[torch.Tensor, ...] | None = None  # the same, dL/d(output)
    # stats.QUANTILES of the primary output: activations and weight layers only
    out_q: torch.Tensor | None = None
    grad_q: torch.Tensor | None = None  # the same for dL/d(primary output)
    # stats.quantile_sample of each, until ``records.settle_quantiles`` sorts the samples
    # of every call together and fills ``out_q``/``grad_q``
    out_sample: torch.Tensor | None = field(default=None, repr=False)
    grad_sample: torch.Tensor | None = field(default=None, repr=False)
    input_grad_time: torch.Tensor | None = None  # recurrent modules: RMS of dL/dx_t per t
    time_steps: int | None = None
    input_ids: tuple[int, ...] = ()
    output_ref: torch.Tensor | None = field(default=None, repr=False)
    # calls of containers that returned this call's very output: they get its gradient
    aliases: list[Call] = field(default_factory=list, repr=False)
    function: str | None = None  # a functional call's kind (``measure.functional``)
    in_grad: Any = None  # a stack head's dL/d(first input), as ``grad``
    error: str | None = None  # a statistic that could not be computed (never raised)


@dataclass(frozen=True)
class Measured:
    """What measuring a call needs to know of the thing called: a torch module
    (``Measured.of``), a Keras layer or a Keras layer's fused activation (built from the
    shared catalog by ``gradhealth.integrations.keras.catalog``). Built once per thing
    when the taps are armed, not per call."""

    leaf: bool
    activation: bool = False  # an activation: lean steps keep its percentiles
    band: Band | None = None  # the saturated region of a bounded activation's output
    rectifier: bool = False  # units can die: per-unit liveness is measured
    weighted: bool = False  # a leaf with parameters: a rectifier after it reads its layout
    channels_first: bool = False  # its output's units are on axis 1 (a torch conv)
    own_axis: bool = False  # a rectifier reads its own ``channels_first`` (a fused one)
    recurrent: bool = False  # torch RNN/LSTM/GRU: dL/dx_t per time step is measured
    stack_head: bool = False  # the first block of a stack: dL/d(its input) is measured

    @classmethod
    def of(cls, module: nn.Module) -> Measured:
        leaf = not any(True for _ in module.children())
        kind = catalog.activation_kind(module)
        return cls(leaf=leaf, activation=kind is not None, band=catalog.saturation_band(module),
                   rectifier=kind in catalog.RECTIFIERS,
                   weighted=leaf and any(True for _ in module.parameters(recurse=False)),
                   channels_first=isinstance(module, catalog.CONVS),
                   recurrent=isinstance(module, catalog.RECURRENT))


def floating_leaves(value: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    _collect(value, out)
    return out


def _collect(value: Any, out: list[torch.Tensor]) -> None:
    # Plain tensors, tuples, lists and dicts directly (the common case, and ~10x faster
    # than a pytree walk per module call); any other container through torch's pytree.
    kind = type(value)
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            out.append(value)
    elif kind is tuple or kind is list:
        for v in value:
            _collect(v, out)
    elif kind is dict:
        for v in value.values():
            _collect(v, out)
    elif value is not None and not isinstance(value, (int, float, bool, str)):
        out.extend(t for t in tree_leaves(value)
                   if isinstance(t, torch.Tensor) and t.is_floating_point())


def nonfinite_count(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    if not tensors:
        return None
    counts = [stats.nonfinite_count(t) for t in tensors]
    return torch.stack(counts).sum() if len(counts) > 1 else counts[0]
