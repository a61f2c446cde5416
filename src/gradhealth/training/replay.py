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
negative base, division by ~0) shows up as "finite gradient in, non-finite out". What
the replays measured is judged by ``gradhealth.rules.producer``, which also falls back
on the step's own weight gradients when no replay names a producer.

Before any replay, the batch itself is looked at (``measure.batch``): a NaN/Inf in the
inputs is the batch's, whichever module it reaches first. The forward replay also
records which operation turned finite inputs into NaN/Inf, and where in the model's
source (``measure.operations``: a check per torch call, on this failure path only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gradhealth.measure import batch, distributed
from gradhealth.measure.backward import BackwardOperations
from gradhealth.measure.fetch import Fetch
from gradhealth.measure.layer import LayerStats
from gradhealth.measure.operations import Operations
from gradhealth.measure.records import build_layers
from gradhealth.measure.snapshot import Snapshot
from gradhealth.measure.taps import Taps, floating_leaves
from gradhealth.rules import producer as rules_producer
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
    def capture(cls, args: tuple, kwargs: dict, device: torch.device) -> LastCall:
        cuda_rng = None
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            cuda_rng = (index, torch.cuda.get_rng_state(index))
        kind = device.type
        autocast = ((kind, torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind)
                    else None)
        return cls(args, kwargs, torch.get_rng_state(), cuda_rng, autocast)


def producer(target: nn.Module, last: LastCall | None, step: int,
             grad_norms: Sequence[float] | None, param_owners: Sequence[str], *,
             replay_ok: bool = True, ranks: bool = False, here: bool = True) -> Finding:
    """The ``nonfinite`` finding for ``step``: look at the last batch, replay it forward,
    then backward, and let ``rules.producer`` judge what each replay measured.

    ``replay_ok=False``: the forward runs collectives (an FSDP2 forward all-gathers), only
    the batch and the weight gradients are read. ``ranks``: under torchrun, every rank
    calls this on a step the ranks agreed to skip for a NaN/Inf; ``here`` says whether
    this rank saw it itself (only those judge); the verdicts are gathered
    (``distributed.gather``, one collective) and ``rules.producer.from_ranks`` keeps the
    one of a rank that saw it.
    """
    found = (_judged(target, last, step, grad_norms, param_owners, replay_ok)
             if here or not ranks else None)
    if not ranks or not distributed.is_distributed():
        return found if found is not None else rules_producer.from_ranks(step, [])
    return rules_producer.from_ranks(step, distributed.gather(found))


def _judged(target: nn.Module, last: LastCall | None, step: int,
            grad_norms: Sequence[float] | None, param_owners: Sequence[str],
            replay_ok: bool) -> Finding:
    order: dict[str, int] = {}
    if last is not None:
        bad = batch.nonfinite(batch.arguments(batch.parameter_names(target.forward),
                                              last.args, last.kwargs))
        if bad:
            return rules_producer.from_batch(step, bad)
    if last is not None and replay_ok:
        for backward in (False, True):
            replayed = replay(target, last, backward)
            if replayed is None:  # a replay that fails names nothing; training goes on
                continue
            layers, operations = replayed
            order = {name: s.order for name, s in layers.items()}
            found = rules_producer.from_replay(layers, backward, step, operations)
            if found is not None:
                return found
    return rules_producer.from_weight_grads(step, grad_norms, param_owners, order,
                                            replayed=last is not None and replay_ok)


def replay(target: nn.Module, last: LastCall, backward: bool,
           ) -> tuple[dict[str, LayerStats], list[dict]] | None:
    """Per-module numbers of the last forward replayed with ``Taps`` (and of a surrogate
    backward from dL/d(output) = 1), with the operations the forward replay saw make
    NaN/Inf; None when the replay itself fails."""
    snapshot = Snapshot.capture(target)
    taps = Taps(target)
    ops: Operations | BackwardOperations = (BackwardOperations(target) if backward
                                           else Operations(target))
    params = [p for p in target.parameters() if p.requires_grad]
    try:
        torch.set_rng_state(last.cpu_rng)
        if last.cuda_rng is not None:
            torch.cuda.set_rng_state(last.cuda_rng[1], last.cuda_rng[0])
        amp = (torch.autocast(last.autocast[0], dtype=last.autocast[1]) if last.autocast
               else contextlib.nullcontext())
        grads: dict[int, torch.Tensor | None] = {}
        try:
            with torch.set_grad_enabled(backward), amp, taps, snapshot.watching(), ops:
                output = target(*last.args, **last.kwargs)
                if backward:  # under ``ops``: it names the node that made the NaN/Inf
                    outs = [t for t in floating_leaves(output) if t.requires_grad]
                    if not outs:
                        return None
                    got = torch.autograd.grad(outs[0], params, torch.ones_like(outs[0]),
                                              allow_unused=True)
                    grads = {id(p): g for p, g in zip(params, got)}
        except Exception:
            return None
        finally:
            if isinstance(ops, BackwardOperations):
                ops.remove()
        found = ops.found
        return build_layers(target, taps.calls, grads, Fetch()), found
    finally:
        taps.remove()
        taps.release()
        snapshot.restore()
