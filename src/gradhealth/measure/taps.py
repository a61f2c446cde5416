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

import re
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from gradhealth.measure import stats
from gradhealth.measure.attention import AttentionTap
from gradhealth.measure.call import Call, Measured, floating_leaves, nonfinite_count
from gradhealth.measure.logz import OutputLogZ

__all__ = ["Call", "Measured", "Taps", "floating_leaves", "nonfinite_count"]


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

    def __init__(self, model: nn.Module, *, lean: bool = False, fast: bool = False):
        """``lean=True`` measures what a sampled training step needs (``gh.watch``) at a
        fraction of the cost: leaf modules only, ``stats.lean_sums`` (two passes over each
        tensor; a non-finite entry is flagged, not counted), no non-finite scan of inputs
        and outputs, and percentiles of activation outputs only, from a
        ``stats.LEAN_QUANTILE_SAMPLE``-entry sample.

        ``fast=True`` (``gh.probe``'s first pass) measures every module as usual but with
        ``stats.lean_sums`` and no non-finite scan of inputs and outputs: on a pass that
        is finite everywhere (a flag that the sums carry) the counts are all 0 anyway,
        and a pass that is not is measured again exactly; no percentiles of gradients
        (nothing draws them; sorting them cost more than the rest of the statistics). A
        container whose output is the very tensor its last child returned shares that
        child's numbers."""
        self.model = model
        self.lean = lean
        self.fast = fast
        self._moments = stats.lean_sums if (lean or fast) else stats.moment_sums
        # id of a primary output -> (the call that measured it, the tensor's version then)
        self._measured: dict[int, tuple[Call, int]] = {}
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
                what = Measured.of(module)
                if not self.lean and not what.leaf and _FIRST.search(name):
                    what = replace(what, stack_head=True)
                self._hook(module, name, what)
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
        self._measured.clear()

    @property
    def failing_module(self) -> str | None:
        return self.stack[-1][0] if self.stack else None

    # -- hooks --------------------------------------------------------------------
    def _pre_hook(self, name: str, what: Measured):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            with _ours():
                inputs = floating_leaves((args, kwargs))
            info: dict[str, Any] = {"in_nonfinite": None, "ids": tuple(id(t) for t in inputs),
                                    "error": None, "what": what}
            self.stack.append((name, info))
            try:
                if not (self.lean or self.fast):
                    with _ours():
                        info["in_nonfinite"] = nonfinite_count(inputs)
                if what.stack_head and inputs and inputs[0].requires_grad:
                    self._watch_input(inputs[0], info)
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
            with _ours():
                if info.get("functions"):
                    _keep_returned(self.calls, info["functions"], what, output)
                self._record(name, module, what, info, output)
            return None

        return hook

    def record_function(self, name: str, kind: str, what: Measured, inputs: list[torch.Tensor],
                        output: Any) -> Call | None:
        """Measure a functional call (``measure.functional``) as a unit ``name`` inside the
        innermost module running; None outside any module."""
        if not self.stack:
            return None
        info = self.stack[-1][1]
        call = Call(name=name, module=None, index=len(self.calls), leaf=True,  # type: ignore[arg-type]
                    lean=self.lean or self.fast, input_ids=tuple(id(t) for t in inputs),
                    function=kind, in_nonfinite=None if self.lean or self.fast
                    else nonfinite_count(inputs))
        self.calls.append(call)
        info.setdefault("functions", []).append(call)
        try:
            self._measure(call, what, output)
        except Exception as err:
            call.error = f"{type(err).__name__}: {err}"
        return call

    def _record(self, name: str, module: Any, what: Measured, info: dict, output: Any) -> None:
        call = Call(name=name, module=module, index=len(self.calls), leaf=what.leaf,
                    lean=self.lean or self.fast, in_nonfinite=info.get("in_nonfinite"),
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
        moments = self._moments
        call.out_numel = primary.numel()
        if self._shared(call, what, primary):
            return
        call.out = moments(primary)
        if not (self.lean or self.fast):  # else the flag of the sums stands for every output
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
        # percentiles of what the report draws (activations, weight layers' outputs)
        sampled = call.leaf and (what.activation or what.weighted)
        if sampled and not self.lean:
            call.out_sample = stats.quantile_sample(primary)
        elif call.leaf and what.activation:
            call.out_sample = stats.quantile_sample(primary, stats.LEAN_QUANTILE_SAMPLE)
        if primary.requires_grad:
            def grad_hook(grad: torch.Tensor, call: Call = call) -> None:
                call.grad = moments(grad)
                for alias in call.aliases:
                    alias.grad = call.grad
                if sampled and not (self.lean or self.fast):
                    call.grad_sample = stats.quantile_sample(grad)
            primary.register_hook(grad_hook)
        self._measured[id(primary)] = (call, primary._version)

    def _shared(self, call: Call, what: Measured, primary: torch.Tensor) -> bool:
        """A container returning the tensor a call inside it measured (unchanged since)
        takes that call's numbers, its gradient's included: one measurement, not two."""
        if what.leaf or what.recurrent or not self.fast:
            return False
        seen = self._measured.get(id(primary))
        if seen is None or seen[0].output_ref is not primary or seen[1] != primary._version:
            return False
        first = seen[0]
        call.out, call.out_nonfinite = first.out, first.out_nonfinite
        first.aliases.append(call)
        return True

    def _watch_input(self, x: torch.Tensor, info: dict) -> None:
        """dL/dx of a stack head's first input (the residual stream's start: rules.stream)."""
        def grad_hook(grad: torch.Tensor) -> None:
            call = info.get("call")
            if call is not None:
                with _ours():
                    call.in_grad = self._moments(grad)

        x.register_hook(grad_hook)

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


_FIRST = re.compile(r"(^|[._])0$")
"""The first of a numbered stack of blocks: ``layers.0``, ``h.0``, ``encoder_layer_0``."""


def _keep_returned(calls: list[Call], functions: list[Call], what: Measured,
                   output: Any) -> None:
    """Inside a parameter-free leaf module (a custom activation: ``x * torch.sigmoid(x)``,
    a tanh-approximated GELU) only the functional call whose output the module returns is
    the activation; the others are its parts, and a part's saturation means nothing."""
    if not what.leaf or what.weighted:
        return
    returned = {id(t) for t in floating_leaves(output)}
    dropped = {id(c) for c in functions
               if c.output_ref is None or id(c.output_ref) not in returned}
    if dropped:
        calls[:] = [c for c in calls if id(c) not in dropped]


def _ours() -> Any:
    """Our own statistics run outside any ``TorchFunctionMode`` the pass is under (the
    probe's copy-on-write of weights, the replay's operation recorder): under a mode,
    every torch call written in Python (``Tensor.__getitem__``, ``F.*``) takes the slow
    dispatch path, and none of ours writes a weight or belongs to the model."""
    return torch._C.DisableTorchFunction()


def _is_dense(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()
