"""Which module produced a training step's first NaN/Inf, judged after the fact.

During training the watch sees a non-finite step only through its numbers: the global
gradient norm and each parameter's gradient norm. When guarding, it also replays the
step's batch (``gradhealth.training.replay``) and hands the replay's per-module numbers
here, where the probe's non-finite rule names the producer (``rules.nonfinite``: finite
inputs in, non-finite outputs out; or, in a backward replay from dL/d(output) = 1, a
finite gradient in and a non-finite one out).

When no replay names it, the step's own weight gradients do: the backward pass reaches
the modules in reverse forward order, so the module latest in forward order whose weight
gradients are non-finite is where the NaN/Inf first appears (it, or a parameter-free
module just after it, produced it). When every module's gradients are non-finite there
is no clue left, and the finding says so (docs/science.md#non-finite-values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from gradhealth.measure.layer import LayerStats
from gradhealth.rules import nonfinite
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy


def from_batch(step: int, bad: list[dict[str, Any]]) -> Finding:
    """The step's batch itself held NaN/Inf (``measure.batch.nonfinite``'s description)."""
    f = nonfinite.batch_finding("inputs", bad)
    return replace(f, evidence={**f.evidence, "step": step, "method": "the step's batch"},
                   message=f"step {step}: {f.message}")


def from_replay(layers: Mapping[str, LayerStats], backward: bool, step: int,
                operations: Sequence[Mapping[str, Any]] = ()) -> Finding | None:
    """The producer a forward (or backward) replay of the step's batch names (the root
    module ``""`` when its own forward made the NaN), or None. ``operations``: those the
    forward replay recorded (``measure.operations``), or the nodes the backward replay
    saw make it (``measure.backward``)."""
    wanted = "backward" if backward else "forward"
    recorded = "backward_operations" if backward else "operations"
    found = [f for f in nonfinite.check(layers, {"loss": None, recorded: operations})
             if f.evidence.get("pass") == wanted]
    if not found:
        return None
    f = found[0]
    method = "backward replay from dL/d(output) = 1" if backward else "forward replay of the batch"
    return Finding(kind="nonfinite", module=f.module, severity="critical",
                   evidence={**f.evidence, "step": step, "method": method},
                   prescription=f.prescription, modules=f.modules,
                   message=f"step {step}: {f.message}")


def from_weight_grads(step: int, grad_norms: Sequence[float] | None, owners: Sequence[str],
                      order: Mapping[str, int], replayed: bool) -> Finding:
    """The producer the step's per-parameter gradient norms point at (see the module doc).

    ``owners``: the module owning each parameter; ``order``: forward order of the modules
    as a replay saw it (empty without one; the owners' order stands in).
    """
    sick: list[str] = []
    if grad_norms is not None:
        bad = ~np.isfinite(np.asarray(grad_norms, dtype=np.float64))
        sick = list(dict.fromkeys(o for o, b in zip(owners, bad) if b))
        if not sick and len(bad):  # every gradient finite: the guard skipped for the loss
            return Finding(
                kind="nonfinite", module="", severity="critical",
                evidence={"step": step, "pass": "loss", "replayed": replayed},
                prescription=Remedy("nonfinite-loss"),
                message=(f"step {step}: the loss is non-finite although every gradient is "
                         f"finite" + ("; the replayed forward made no NaN/Inf" if replayed
                                      else "")))
    model_order = {name: i for i, name in enumerate(dict.fromkeys(owners))}
    if not sick or len(sick) == len(model_order):  # everything non-finite: no gradient clue
        return Finding(
            kind="nonfinite", module="", severity="critical",
            evidence={"step": step, "pass": "unknown", "replayed": replayed,
                      "modules_nonfinite_weight_grads": len(sick)},
            prescription=nonfinite.forward_remedy(
                None, Remedy("replay-missed", params={"step": step})),
            message=(f"step {step}: non-finite loss or gradients in every layer; "
                     + ("the replay of the last batch did not reproduce it in the model (its "
                        "forward, and its backward from a finite output gradient, are "
                        "clean), so no module is named: it likely came in through the loss "
                        "(non-finite targets, or the loss function itself)" if replayed
                        else "no replay of the batch, so no module is named")))
    last = max(sick, key=lambda n: (order.get(n, -1), model_order.get(n, -1)))
    method = ("forward replay clean; weight gradients of the step" if replayed
              else "weight gradients of the step")
    return Finding(
        kind="nonfinite", module=last, severity="critical",
        evidence={"step": step, "pass": "backward", "method": method,
                  "modules_nonfinite_weight_grads": sick[:20], "count": len(sick)},
        prescription=nonfinite.backward_remedy(last),
        modules=(last,),
        message=(f"step {step}: the backward pass first produced NaN/Inf at `{last}` (or a "
                 f"parameter-free module just after it); {len(sick)} module(s) got "
                 f"non-finite weight gradients"))


def unguarded(step: int, module_norms: Sequence[float], modules: Sequence[str],
              steps_nonfinite: int) -> Finding:
    """Non-finite gradients reached the optimizer of an unguarded run (reported once: later
    steps only propagate it). ``module_norms``: each module's gradient norm at ``step``."""
    sick = [m for m, v in zip(modules, module_norms) if not math.isfinite(v)]
    return Finding(
        kind="nonfinite", module="", severity="critical",
        evidence={"step": step, "pass": "unknown", "steps_nonfinite": steps_nonfinite,
                  "modules_nonfinite_weight_grads": sick[:20]},
        prescription=Remedy("guard", params={"on": "non-finite", "names_producer": True}),
        message=(f"step {step}: non-finite gradients in {len(sick)} module(s); "
                 f"{steps_nonfinite} step(s) of this window were non-finite"))


def from_ranks(step: int, verdicts: Sequence[Finding | None]) -> Finding:
    """One verdict for a step skipped on every rank (``verdicts``: each rank's own, in rank
    order; None from a rank whose step was finite): the first rank's that names what made
    the NaN/Inf, else the first rank's that saw it, with the rank in the evidence."""
    seen = [(rank, f) for rank, f in enumerate(verdicts) if f is not None]
    if not seen:  # cannot happen: the skip was agreed because some rank saw it
        return from_weight_grads(step, None, [], {}, replayed=False)
    rank, f = next(((r, v) for r, v in seen if v.evidence.get("pass") != "unknown"), seen[0])
    prefix = f"step {step}: "
    text = f.message[len(prefix):] if f.message.startswith(prefix) else f.message
    ranks = [r for r, _ in seen]
    return replace(f, evidence={**f.evidence, "rank": rank, "ranks_nonfinite": ranks},
                   message=f"step {step}, on rank {rank}: {text}")
