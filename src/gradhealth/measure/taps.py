"""Hooks on a model, held as handles, that measure every module call on device.

``Taps`` is a context manager: entering registers forward pre-hooks and forward hooks on
every module, leaving removes every one of them, also when the forward pass raised.
Gradient statistics come from hooks on the *output tensors* of each call (they live and
die with the autograd graph, so nothing is left on the model), which also works when a
later module modifies that output in place (the hook sees dL/d(value before the in-place
op)). Every statistic stays a device tensor; nothing here synchronises with the host.

What a call measures beyond the moments (saturation, dead units, percentiles) depends on
what was called, described once per module by ``Measured`` from the catalog. Another
framework's layers are measured by the same routine: ``KerasTaps`` (in
``gradhealth.integrations.keras.taps``) hooks Keras layers with ``Measured`` built from
its own entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from gradhealth.measure import catalog, stats
from gradhealth.measure.attention import AttentionTap
from gradhealth.measure.catalog import Band
from gradhealth.measure.logz import OutputLogZ


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
    out_q: torch.Tensor | None = None  # stats.QUANTILES of the primary output (leaves only)
    grad_q: torch.Tensor | None = None  # the same for dL/d(primary output)
    # stats.quantile_sample of each, until ``records.settle_quantiles`` sorts the samples
    # of every call together and fills ``out_q``/``grad_q``
    out_sample: torch.Tensor | None = field(default=None, repr=False)
    grad_sample: torch.Tensor | None = field(default=None, repr=False)
    input_grad_time: torch.Tensor | None = None  # recurrent modules: RMS of dL/dx_t per t
    time_steps: int | None = None
    input_ids: tuple[int, ...] = ()
    output_ref: torch.Tensor | None = field(default=None, repr=False)
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
    counts = [(~torch.isfinite(t.detach())).sum(dtype=torch.float32) for t in tensors]
    return torch.stack(counts).sum() if len(counts) > 1 else counts[0]


class Taps:
    """Measure every call of every module of ``model`` while the context is open.

    ``calls`` lists the calls in forward completion order; ``stack`` names the modules
    whose forward is in progress (after an exception, its last entry is the innermost
    module that raised). ``time_leaves`` holds the recurrent inputs that were made
    differentiable so dL/dx_t can be measured; pass them to ``torch.autograd.grad``.
    ``signals`` holds what a pass measures beyond its calls (a torch model's attention
    logits and output log Z, ``measure.attention`` and ``measure.logz``), for
    ``records.LayerPlan``; ``forward_done`` ends their watch over the forward early.
    A subclass hooks other things through ``_hook`` (name, object, ``Measured``).
    """

    def __init__(self, model: nn.Module, *, lean: bool = False):
        """``lean=True`` measures what a sampled training step needs (``gh.watch``) at a
        fraction of the cost: leaf modules only, ``stats.lean_sums`` (two passes over each
        tensor; a non-finite entry is flagged, not counted), no non-finite scan of inputs
        and outputs, and percentiles of activation outputs only, from a
        ``stats.LEAN_QUANTILE_SAMPLE``-entry sample."""
        self.model = model
        self.lean = lean
        self.calls: list[Call] = []
        self.stack: list[tuple[str, Any]] = []
        self.time_leaves: list[torch.Tensor] = []
        self._handles: list[Any] = []
        self._last_layer: Measured | None = None  # the last weighted leaf measured
        self.signals: list[Any] = []  # AttentionTap, OutputLogZ (a torch model's)

    # -- context management -------------------------------------------------------
    def __enter__(self) -> Taps:
        try:
            for name, module in self.model.named_modules():
                if self.lean and any(True for _ in module.children()):
                    continue
                self._hook(module, name, Measured.of(module))
            self.signals = [OutputLogZ(self.model), AttentionTap(self.model)]
            for signal in self.signals:
                signal.start()  # the attention mode last: it is pushed, the rest hooked
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def forward_done(self) -> None:
        """The forward pass is over: stop observing attention (its mode and hooks)."""
        for signal in self.signals:
            if isinstance(signal, AttentionTap):
                signal.stop()

    def _hook(self, module: nn.Module, name: str, what: Measured) -> None:
        self._handles.append(module.register_forward_pre_hook(
            self._pre_hook(name, what), with_kwargs=True))
        self._handles.append(module.register_forward_hook(
            self._post_hook(name, what), with_kwargs=True))

    def remove(self) -> None:
        for signal in reversed(self.signals):
            signal.stop()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def release(self) -> None:
        """Drop references to activations so their memory can be freed."""
        for call in self.calls:
            call.output_ref = None
        self.time_leaves.clear()

    @property
    def failing_module(self) -> str | None:
        return self.stack[-1][0] if self.stack else None

    # -- hooks --------------------------------------------------------------------
    def _pre_hook(self, name: str, what: Measured):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            inputs = floating_leaves((args, kwargs))
            info: dict[str, Any] = {"in_nonfinite": None, "ids": tuple(id(t) for t in inputs),
                                    "error": None}
            self.stack.append((name, info))
            try:
                info["in_nonfinite"] = None if self.lean else nonfinite_count(inputs)
                if what.recurrent and args and _is_dense(args[0]):
                    new_x = self._watch_time(module, args[0], info)
                    return (new_x,) + tuple(args[1:]), kwargs
            except Exception as err:  # a statistic must never break the user's model
                info["error"] = f"{type(err).__name__}: {err}"
            return None

        return hook

    def _post_hook(self, name: str, what: Measured):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any):
            _, info = self.stack.pop() if self.stack else (name, {})
            self._record(name, module, what, info, output)
            return None

        return hook

    def _record(self, name: str, module: Any, what: Measured, info: dict, output: Any) -> None:
        call = Call(name=name, module=module, index=len(self.calls), leaf=what.leaf,
                    lean=self.lean, in_nonfinite=info.get("in_nonfinite"),
                    input_ids=info.get("ids", ()), error=info.get("error"))
        call.time_steps = info.get("time_steps")
        info["call"] = call  # the recurrent input's gradient hook fills it in backward
        self.calls.append(call)
        try:
            self._measure(call, what, output)
        except Exception as err:
            call.error = f"{type(err).__name__}: {err}"

    # -- measurement --------------------------------------------------------------
    def _measure(self, call: Call, what: Measured, output: Any) -> None:
        outs = floating_leaves(output)
        if not outs:
            return
        primary = outs[0]
        call.output_ref = primary
        moments = stats.lean_sums if self.lean else stats.moment_sums
        call.out = moments(primary)
        call.out_numel = primary.numel()
        if not self.lean:  # lean: the flag of the sums stands for every output
            call.out_nonfinite = nonfinite_count(outs)
        if what.band is not None:
            call.saturated = stats.saturated_count(primary, what.band)
        if what.rectifier and primary.dim() >= 2:
            # the units are channels when the layer before was a conv (or a channels_first
            # Keras layer): the axis comes from the last weighted leaf, or its own
            owner = what if what.own_axis else self._last_layer
            channels_first = owner is not None and owner.channels_first
            call.alive = stats.unit_alive(primary, stats.unit_axis(primary, channels_first))
        if what.weighted:
            self._last_layer = what
        if call.leaf and not self.lean:
            call.out_sample = stats.quantile_sample(primary)
        elif call.leaf and what.activation:
            call.out_sample = stats.quantile_sample(primary, stats.LEAN_QUANTILE_SAMPLE)
        if primary.requires_grad:
            def grad_hook(grad: torch.Tensor, call: Call = call) -> None:
                call.grad = moments(grad)
                if call.leaf and not self.lean:
                    call.grad_sample = stats.quantile_sample(grad)
            primary.register_hook(grad_hook)

    def _watch_time(self, module: nn.Module, x: torch.Tensor, info: dict) -> torch.Tensor:
        if x.requires_grad:
            new_x = x.view_as(x)
        else:
            new_x = x.detach().requires_grad_(True)
            self.time_leaves.append(new_x)
        time_axis = 1 if (getattr(module, "batch_first", False) and x.dim() == 3) else 0
        info["time_steps"] = x.shape[time_axis]

        def grad_hook(grad: torch.Tensor) -> None:
            call = info.get("call")
            if call is not None:
                call.input_grad_time = stats.time_rms(grad, time_axis)

        new_x.register_hook(grad_hook)
        return new_x


def _is_dense(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()
