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
from typing import Any, Mapping

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import Finding

FORWARD_REMEDY = (
    "Find the operation in `{m}` that turns finite inputs into NaN/Inf (log or sqrt of a "
    "non-positive value, division by ~0, exp overflow, fp16 overflow past 65504); guard it "
    "(clamp the argument, add an epsilon, compute in float32), and let gradhealth's guard "
    "skip such steps during training instead of writing NaN into the weights."
)
BACKWARD_REMEDY = (
    "The backward pass of `{m}` turns a finite gradient into NaN/Inf (sqrt/pow/norm at 0, "
    "division by a tiny value, overflow of a large gradient): add an epsilon inside the "
    "operation, clamp its input, or clip the gradient norm before the step."
)


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

    forward = _innermost_first([s for s in all_layers if s.nonfinite_out > 0 and s.nonfinite_in == 0])
    if forward is not None:
        absorbed = loss_finite and grads_finite
        return [Finding(
            kind="nonfinite", module=forward.name,
            severity="info" if absorbed else "critical",
            evidence={"pass": "forward", "nonfinite_outputs": forward.nonfinite_out,
                      "nonfinite_inputs": 0, "loss": loss, "absorbed_downstream": absorbed},
            remedy=FORWARD_REMEDY.format(m=forward.name), modules=(forward.name,),
            message=(f"`{forward.name}` produced {forward.nonfinite_out} non-finite value(s) "
                     f"from finite inputs" + (" (absorbed before the loss)" if absorbed else "")))]

    if loss is not None and not loss_finite:
        return [Finding(
            kind="nonfinite", module="", severity="critical",
            evidence={"pass": "loss", "loss": loss},
            remedy=("The model's outputs are finite but the loss is not: check the targets "
                    "and the loss (log of 0, probabilities outside [0, 1]); use "
                    "F.cross_entropy on logits rather than log(softmax)."),
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
                remedy=BACKWARD_REMEDY.format(m="loss_fn"), modules=("",),
                message="the loss's own backward pass returned a non-finite gradient")]
        backward = _innermost_first([s for s in all_layers
                                     if s.nonfinite_grad > 0 or s.nonfinite_weight_grad > 0])
    if backward is None:
        return []
    return [Finding(
        kind="nonfinite", module=backward.name, severity="critical",
        evidence={"pass": "backward", "nonfinite_weight_grads": backward.nonfinite_weight_grad,
                  "inputs_from": list(backward.inputs_from)},
        remedy=BACKWARD_REMEDY.format(m=backward.name), modules=(backward.name,),
        message=f"`{backward.name}` turned a finite gradient into NaN/Inf in the backward pass")]
