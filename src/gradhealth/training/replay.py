"""Name the module that produced a step's first NaN/Inf, after the fact.

While guarding, the watch keeps a reference to the last training batch (the arguments
of the root module's forward, the RNG state and the autocast setting it ran under): a
few pointer copies per forward, no tensor copy. Only when a step turns out non-finite is
that forward replayed, eagerly, under ``torch.no_grad`` with ``Taps`` armed; the probe's
non-finite rule then names the innermost module that turned finite inputs into
non-finite outputs. The model is left as it was (``Snapshot``: modes, buffers, RNG).

When the forward is clean the NaN came from a backward pass, whose loss and targets are
the training loop's. The replay then runs the backward from a surrogate upstream
gradient, dL/d(output) = 1, through ``torch.autograd.grad`` (``.grad`` is never written):
an operation whose backward is NaN/Inf by itself (sqrt or norm at 0, pow with a
negative base, division by ~0) is named by the probe's rule, "finite gradient in,
non-finite out". If that does not reproduce it (the overflow needs the real upstream
gradient), the step's own per-parameter gradient norms stand in: the backward pass
reaches the modules in reverse forward order, so the module latest in forward order
whose weight gradients are non-finite is where the NaN/Inf first appears (it, or a
parameter-free module just after it, produced it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from gradhealth.measure.fetch import Fetch
from gradhealth.measure.records import build_layers
from gradhealth.measure.snapshot import Snapshot
from gradhealth.measure.taps import Taps, floating_leaves
from gradhealth.rules import nonfinite
from gradhealth.rules.finding import Finding


@dataclass
class LastCall:
    """The last training forward's inputs (references), RNG state and autocast setting."""

    args: tuple
    kwargs: dict
    cpu_rng: torch.Tensor
    cuda_rng: tuple[int, torch.Tensor] | None
    autocast: tuple[str, torch.dtype] | None

    @classmethod
    def capture(cls, args: tuple, kwargs: dict, device: torch.device) -> "LastCall":
        cuda_rng = None
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            cuda_rng = (index, torch.cuda.get_rng_state(index))
        kind = device.type
        autocast = ((kind, torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind)
                    else None)
        return cls(args, kwargs, torch.get_rng_state(), cuda_rng, autocast)


def producer(target: nn.Module, last: LastCall | None, step: int,
             grad_norms: Sequence[float] | None, param_owners: Sequence[str]) -> Finding:
    """The ``nonfinite`` finding for ``step``, naming the producer as well as it can."""
    order: dict[str, int] = {}
    if last is not None:
        for backward in (False, True):
            found, order = _replay(target, last, backward)
            if found is not None:
                method = ("backward replay from dL/d(output) = 1" if backward
                          else "forward replay of the batch")
                evidence = {**found.evidence, "step": step, "method": method}
                return Finding(kind="nonfinite", module=found.module, severity="critical",
                               evidence=evidence, remedy=found.remedy, modules=found.modules,
                               message=f"step {step}: {found.message}")
    return _from_weight_grads(step, grad_norms, param_owners, order, replayed=last is not None)


def _replay(target: nn.Module, last: LastCall,
            backward: bool) -> tuple[Finding | None, dict[str, int]]:
    """Replay the last forward with ``Taps`` (and a surrogate backward); the rule's verdict."""
    snapshot = Snapshot.capture(target)
    taps = Taps(target)
    params = [p for p in target.parameters() if p.requires_grad]
    try:
        torch.set_rng_state(last.cpu_rng)
        if last.cuda_rng is not None:
            torch.cuda.set_rng_state(last.cuda_rng[1], last.cuda_rng[0])
        amp = (torch.autocast(last.autocast[0], dtype=last.autocast[1]) if last.autocast
               else contextlib.nullcontext())
        grads: dict[int, torch.Tensor | None] = {}
        try:
            with torch.set_grad_enabled(backward), amp, taps:
                output = target(*last.args, **last.kwargs)
            if backward:
                outs = [t for t in floating_leaves(output) if t.requires_grad]
                if not outs:
                    return None, {}
                got = torch.autograd.grad(outs[0], params, torch.ones_like(outs[0]),
                                          allow_unused=True)
                grads = {id(p): g for p, g in zip(params, got)}
        except Exception:  # a replay that fails names nothing; training goes on
            return None, {}
        layers = build_layers(target, taps.calls, grads, Fetch())
    finally:
        taps.remove()
        taps.release()
        snapshot.restore()
    order = {name: s.order for name, s in layers.items()}
    wanted = "backward" if backward else "forward"
    found = [f for f in nonfinite.check(layers, {"loss": None})
             if f.evidence.get("pass") == wanted and f.module]
    return (found[0] if found else None), order


_UNNAMED = (" The replay could not reproduce the NaN: the batch was changed in place after "
            "the forward, the model draws randomness the RNG state does not cover, or the "
            "NaN comes from the loss; run gh.probe(model, batch, targets) on that batch.")


def _from_weight_grads(step: int, grad_norms: Sequence[float] | None, owners: Sequence[str],
                       order: dict[str, int], replayed: bool) -> Finding:
    sick: list[str] = []
    if grad_norms is not None:
        bad = ~np.isfinite(np.asarray(grad_norms, dtype=np.float64))
        sick = list(dict.fromkeys(o for o, b in zip(owners, bad) if b))
    model_order = {name: i for i, name in enumerate(dict.fromkeys(owners))}
    if not sick or len(sick) == len(model_order):  # everything non-finite: no gradient clue
        return Finding(
            kind="nonfinite", module="", severity="critical",
            evidence={"step": step, "pass": "unknown", "replayed": replayed,
                      "modules_nonfinite_weight_grads": len(sick)},
            remedy=nonfinite.FORWARD_REMEDY.format(m="the model") + _UNNAMED,
            message=(f"step {step}: non-finite loss or gradients in every layer; the replay "
                     f"of the last batch did not reproduce it, so no module is named"))
    last = max(sick, key=lambda n: (order.get(n, -1), model_order.get(n, -1)))
    method = ("forward replay clean; weight gradients of the step" if replayed
              else "weight gradients of the step")
    return Finding(
        kind="nonfinite", module=last, severity="critical",
        evidence={"step": step, "pass": "backward", "method": method,
                  "modules_nonfinite_weight_grads": sick[:20], "count": len(sick)},
        remedy=nonfinite.BACKWARD_REMEDY.format(m=last),
        modules=(last,),
        message=(f"step {step}: the backward pass first produced NaN/Inf at `{last}` (or a "
                 f"parameter-free module just after it); {len(sick)} module(s) got "
                 f"non-finite weight gradients"))
