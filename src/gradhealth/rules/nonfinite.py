"""NaN/Inf: name the module that *produced* the first non-finite value.

Forward: a producer received only finite inputs and returned a non-finite output, and
none of its own submodules did so first (children finish before parents, so the
innermost producer is the one to name). Backward: a producer received a finite
dL/d(output) but passed on a non-finite gradient to its inputs or its weights. A
non-finite forward value that never reaches the loss or a gradient (an attention mask of
-inf absorbed by a softmax) is reported as ``info`` only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy


def forward_remedy(module: str | None, *after: Remedy) -> Remedy:
    """Fix the operation in ``module`` (None: somewhere in the model), guard the steps, then
    ``after``."""
    guard = Remedy("guard", params={"on": "non-finite", "names_producer": False})
    return Remedy("nonfinite-forward", () if module is None else (module,), then=(guard, *after))


def backward_remedy(module: str | None) -> Remedy:
    """Fix the backward of ``module`` (None: the loss function's own)."""
    return Remedy("nonfinite-backward", () if module is None else (module,))


def _has_descendant(name: str, candidates: list[LayerStats]) -> bool:
    prefix = "" if name == "" else name + "."
    return any(c.name != name and c.name.startswith(prefix) for c in candidates)


def _innermost_first(candidates: list[LayerStats]) -> LayerStats | None:
    pure = [c for c in candidates if not _has_descendant(c.name, candidates)]
    return min(pure, key=lambda s: s.order) if pure else None


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    all_layers = list(layers.values())
    loss = meta.get("loss")
    loss_finite = loss is not None and math.isfinite(loss)
    grads_finite = all(s.nonfinite_grad == 0 and s.nonfinite_weight_grad == 0 for s in all_layers)

    forward = _innermost_first([s for s in all_layers
                                if s.nonfinite_out > 0 and s.nonfinite_in == 0])
    if forward is not None:
        absorbed = loss_finite and grads_finite
        return [Finding(
            kind="nonfinite", module=forward.name,
            severity="info" if absorbed else "critical",
            evidence={"pass": "forward", "nonfinite_outputs": forward.nonfinite_out,
                      "nonfinite_inputs": 0, "loss": loss, "absorbed_downstream": absorbed},
            prescription=forward_remedy(forward.name), modules=(forward.name,),
            message=(f"`{forward.name}` produced {forward.nonfinite_out} non-finite value(s) "
                     f"from finite inputs" + (" (absorbed before the loss)" if absorbed else "")))]

    if loss is not None and not loss_finite:
        return [Finding(
            kind="nonfinite", module="", severity="critical",
            evidence={"pass": "loss", "loss": loss},
            prescription=Remedy("nonfinite-loss"),
            message="the loss is non-finite although every module output is finite")]

    def backward_producer(s: LayerStats) -> bool:
        if s.nonfinite_grad > 0:
            return False
        upstream = any(layers[n].nonfinite_grad > 0 for n in s.inputs_from if n in layers)
        return upstream or s.nonfinite_weight_grad > 0

    backward = _innermost_first([s for s in all_layers if backward_producer(s)])
    if backward is None and not grads_finite:
        root = layers.get("")
        if root is not None and root.nonfinite_grad > 0:
            return [Finding(
                kind="nonfinite", module="", severity="critical",
                evidence={"pass": "backward", "where": "loss"},
                prescription=backward_remedy(None), modules=("",),
                message="the loss's own backward pass returned a non-finite gradient")]
        backward = _innermost_first([s for s in all_layers
                                     if s.nonfinite_grad > 0 or s.nonfinite_weight_grad > 0])
    if backward is None:
        return []
    return [Finding(
        kind="nonfinite", module=backward.name, severity="critical",
        evidence={"pass": "backward", "nonfinite_weight_grads": backward.nonfinite_weight_grad,
                  "inputs_from": list(backward.inputs_from)},
        prescription=backward_remedy(backward.name), modules=(backward.name,),
        message=f"`{backward.name}` turned a finite gradient into NaN/Inf in the backward pass")]
