"""Which operation of the model's forward made a NaN/Inf in the backward pass.

A NaN made only in backward (``sqrt`` at 0 in a hand-written normalisation: an infinite
derivative times a zero; a custom ``autograd.Function`` whose backward divides by its
input) leaves every forward value finite, and module hooks only see the gradients at
module outputs. ``BackwardOperations`` is a ``TorchFunctionMode`` entered around a
forward (with gradients on) and the backward after it: each torch call of the forward
claims the autograd nodes it created (from its outputs' ``grad_fn`` down to its inputs'),
each module call then claims the nodes left in its own forward (a custom
``autograd.Function``'s node, which no torch call created), and a hook on every claimed
node records the ones that received a finite gradient and passed on a non-finite one:
``found``, in the order the backward reached them, each a dict of ``module``
(qualified name, ``""`` the root), ``operation`` (the torch call, or the node's name for
a module's own node), and for a torch call ``file``, ``line``, ``function``, ``code``.

Every hook synchronises with the device, so it only runs on a failure path: a probe's
or a guard replay's second pass once the first one saw a non-finite gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gradhealth.measure import operations
from gradhealth.measure.operations import MAX_RECORDED, caller, source
from gradhealth.measure.taps import floating_leaves

operations.MACHINERY.add(__file__)


class BackwardOperations(TorchFunctionMode):
    """While entered (``with BackwardOperations(model):`` around the forward, the
    backward run after it), record the nodes that turned a finite gradient non-finite."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.found: list[dict[str, Any]] = []
        self._stack: list[tuple[str, set]] = []  # (module, its inputs' nodes)
        self._claimed: dict[Any, dict[str, Any]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> BackwardOperations:
        try:
            for name, module in self.model.named_modules():
                self._handles.append(module.register_forward_pre_hook(self._enter(name),
                                                                      with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._leave))
        except BaseException:
            self.remove()
            raise
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)

    def remove(self) -> None:
        """Remove the module hooks (the node hooks die with the graph)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _enter(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            with torch._C.DisableTorchFunction():
                self._stack.append((name, _nodes((args, kwargs))))
        return hook

    def _leave(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._stack:
            return
        name, inputs = self._stack.pop()
        try:
            with torch._C.DisableTorchFunction():
                self._claim(output, inputs, lambda node: {"module": name,
                                                          "operation": node.name()})
        except Exception:  # naming the producer is a bonus: never break the forward
            pass

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = _nodes((args, kwargs)) if self._stack else set()
        out = func(*args, **kwargs)
        if self._stack and len(self._claimed) < 100_000:
            try:
                frame = caller()
                if frame is not None:
                    what = {"module": self._stack[-1][0], "operation": operations._name(func),
                            **source(frame)}
                    with torch._C.DisableTorchFunction():
                        self._claim(out, inputs, lambda node: what)
            except Exception:
                pass
        return out

    def _claim(self, output: Any, stop: set, describe: Any) -> None:
        """Claim the unclaimed nodes from ``output``'s down to ``stop``, hooking each (the
        walk goes on through nodes claimed before: a module's own node may lie under its
        children's)."""
        frontier: list[Any] = [t.grad_fn for t in floating_leaves(output)
                               if t.grad_fn is not None]
        seen: set = set()
        while frontier:
            node = frontier.pop()
            if node is None or node in stop or node in seen \
                    or type(node).__name__ == "AccumulateGrad":
                continue
            seen.add(node)
            if node not in self._claimed:
                self._claimed[node] = describe(node)
                node.register_hook(self._check(node))
            frontier.extend(n for n, _ in node.next_functions)

    def _check(self, node: Any):
        def hook(grad_inputs: tuple, grad_outputs: tuple) -> None:
            if len(self.found) >= MAX_RECORDED:
                return
            try:
                if _finite(grad_outputs) and not _finite(grad_inputs):
                    what = self._claimed[node]
                    if not self.found or self.found[-1] is not what:
                        self.found.append(what)
            except Exception:
                pass
        return hook


def _nodes(value: Any) -> set:
    return {t.grad_fn for t in floating_leaves(value) if t.grad_fn is not None}


def _finite(grads: tuple) -> bool:
    return all(bool(torch.isfinite(g).all()) for g in grads if isinstance(g, torch.Tensor))
