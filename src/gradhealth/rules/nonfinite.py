"""NaN/Inf: name the module that *produced* the first non-finite value.

Parameters: a module whose own weights already hold NaN/Inf is named as their holder
(restore, find the step that wrote them), not as an operation that produced them.
Batch: when the inputs (or, with finite outputs, the targets) hold NaN/Inf themselves,
every module only passed them on: the finding names the argument and the positions
(``meta["nonfinite_inputs"]``/``["nonfinite_targets"]``, from ``measure.batch``).
Forward: a producer received only finite inputs and returned a non-finite output, and
none of its own submodules did so first (children finish before parents, so the
innermost producer is the one to name); the root module (``""``) when its own forward
made it between its children. When a second pass recorded the operations
(``meta["operations"]``, from ``measure.operations``), the finding names the operation
and the line. Backward: a producer received a finite dL/d(output) but passed on a
non-finite gradient to its inputs or its weights. A non-finite forward value that never
reaches the loss or a gradient (an attention mask of -inf absorbed by a softmax) is
reported as ``info`` only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy


def forward_remedy(module: str | None, *after: Remedy, op: Mapping[str, Any] | None = None,
                   ) -> Remedy:
    """Fix the operation in ``module`` (None: somewhere in the model; ``op``: the one a
    replay recorded), guard the steps, then ``after``."""
    guard = Remedy("guard", params={"on": "non-finite", "names_producer": False})
    params = {} if not op else {"operation": op["operation"], "where": where(op)}
    return Remedy("nonfinite-forward", () if module is None else (module,), params,
                  then=(guard, *after))


def batch_finding(part: str, bad: list[dict[str, Any]], absorbed: bool = False) -> Finding:
    """The ``inputs`` (or ``targets``) hold NaN/Inf themselves: ``bad`` is
    ``measure.batch.nonfinite``'s description of each argument."""
    arguments = ", ".join(f"`{b['argument']}`" for b in bad)
    return Finding(
        kind="nonfinite", module="", severity="info" if absorbed else "critical",
        evidence={"pass": "input" if part == "inputs" else "targets", "arguments": bad},
        prescription=Remedy("nonfinite-batch", params={"part": part, "arguments": arguments}),
        message=(f"the {'input batch' if part == 'inputs' else 'targets'} "
                 f"{'is' if part == 'inputs' else 'are'} non-finite: "
                 + "; ".join(described(b) for b in bad)
                 + ("; every module only passed it on" if part == "inputs"
                    else "; the model's outputs are finite")))


def described(bad: Mapping[str, Any]) -> str:
    """``x`` has 1 NaN and 2 Inf of 256 value(s), first at x[3, 5], x[7, 0]."""
    kinds = [f"{bad[k]} {w}" for k, w in (("nan", "NaN"), ("inf", "Inf")) if bad.get(k)]
    text = (f"`{bad['argument']}` has {' and '.join(kinds) or str(bad['count']) + ' NaN/Inf'}"
            f" of {bad['numel']} value(s)")
    if bad.get("first"):
        shown = ", ".join(f"{bad['argument']}[{', '.join(map(str, p))}]" for p in bad["first"])
        text += f", first at {shown}" + (", ..." if bad["count"] > len(bad["first"]) else "")
    return text


def where(op: Mapping[str, Any]) -> str:
    """``model.py:42 in feat`` (the file's name, not its directory; the function's name
    when the line is inside one)."""
    at = f"{os.path.basename(op['file'])}:{op['line']}"
    function = op.get("function")
    return at + (f" in {function}" if function and not function.startswith("<") else "")


def _operation(name: str, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    return next((op for op in meta.get("operations") or () if op["module"] == name), None)


def backward_remedy(module: str | None, op: Mapping[str, Any] | None = None) -> Remedy:
    """Fix the backward of ``module`` (None: the loss function's own; ``op``: the node a
    backward replay recorded, ``measure.backward``)."""
    params = {} if not op else {"operation": op["operation"],
                                **({"where": where(op)} if op.get("file") else {})}
    return Remedy("nonfinite-backward", () if module is None else (module,), params)


def _contains_sick(candidates: list[LayerStats], sick: list[LayerStats]) -> LayerStats | None:
    """The innermost module with a finite dL/d(output) holding a module whose gradients
    are not: the NaN/Inf was made in its own forward's operations between its children
    (a functional normalisation, a custom autograd.Function), not by the child below."""
    holders = [c for c in candidates
               if any(s.name != c.name and (c.name == "" or s.name.startswith(c.name + "."))
                      for s in sick)]
    return _innermost_first(holders)


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

    if meta.get("nonfinite_inputs"):
        return [batch_finding("inputs", meta["nonfinite_inputs"], loss_finite and grads_finite)]
    holders = sorted((s for s in all_layers if s.nonfinite_params > 0), key=lambda s: s.order)
    if holders:  # a weight that holds NaN/Inf: no operation produced it, a step wrote it
        return [_parameter_finding(s, loss_finite and grads_finite) for s in holders]
    forward = _innermost_first([s for s in all_layers
                                if s.nonfinite_out > 0 and s.nonfinite_in == 0])
    if forward is not None:
        return [_forward_finding(forward, meta, absorbed=loss_finite and grads_finite)]

    if loss is not None and not loss_finite:
        if meta.get("nonfinite_targets"):
            return [batch_finding("targets", meta["nonfinite_targets"])]
        outputs_finite = all(s.nonfinite_out == 0 for s in all_layers)
        return [Finding(
            kind="nonfinite", module="", severity="critical",
            evidence={"pass": "loss", "loss": loss},
            prescription=Remedy("nonfinite-loss"),
            message=("the loss is non-finite although every module output is finite"
                     if outputs_finite else "the loss is non-finite and no module turned "
                     "finite inputs into NaN/Inf"))]

    def backward_producer(s: LayerStats) -> bool:
        if s.nonfinite_grad > 0:
            return False
        upstream = any(layers[n].nonfinite_grad > 0 for n in s.inputs_from if n in layers)
        return upstream or s.nonfinite_weight_grad > 0

    recorded = [op for op in meta.get("backward_operations") or () if op["module"] in layers]
    if recorded:
        return [_backward_finding(layers[recorded[0]["module"]], recorded[0])]
    backward = _innermost_first([s for s in all_layers if backward_producer(s)])
    if backward is None and not grads_finite:
        root = layers.get("")
        if root is not None and root.nonfinite_grad > 0:
            return [Finding(
                kind="nonfinite", module="", severity="critical",
                evidence={"pass": "backward", "where": "loss"},
                prescription=backward_remedy(None), modules=("",),
                message="the loss's own backward pass returned a non-finite gradient")]
        sick = [s for s in all_layers if s.nonfinite_grad > 0 or s.nonfinite_weight_grad > 0]
        backward = (_contains_sick([s for s in all_layers if s.nonfinite_grad == 0], sick)
                    or _innermost_first(sick))
    if backward is None:
        return []
    return [_backward_finding(backward, None)]


def _backward_finding(backward: LayerStats, op: Mapping[str, Any] | None) -> Finding:
    evidence: dict[str, Any] = {
        "pass": "backward", "nonfinite_weight_grads": backward.nonfinite_weight_grad,
        "inputs_from": list(backward.inputs_from)}
    at = ""
    if op is not None:
        evidence.update({k: op[k] for k in ("operation", "file", "line", "function", "code")
                         if k in op})
        if op.get("file"):
            code = f": {op['code']}" if op.get("code") else ""
            at = f", at {op['operation']} ({where(op)}{code})"
        else:
            at = f", in the backward of its own {op['operation']} (an autograd.Function)"
    who = (f"`{backward.name}`" if backward.name
           else f"the forward of `{backward.type}` itself (outside its submodules)")
    return Finding(
        kind="nonfinite", module=backward.name, severity="critical", evidence=evidence,
        prescription=backward_remedy(backward.name, op), modules=(backward.name,),
        message=f"{who} turned a finite gradient into NaN/Inf in the backward pass{at}")


def _parameter_finding(holder: LayerStats, absorbed: bool) -> Finding:
    return Finding(
        kind="nonfinite", module=holder.name, severity="info" if absorbed else "critical",
        evidence={"pass": "parameters", "nonfinite_parameters": holder.nonfinite_params,
                  "nonfinite_outputs": holder.nonfinite_out},
        prescription=Remedy("nonfinite-parameter", (holder.name,),
                            {"count": holder.nonfinite_params}),
        modules=(holder.name,),
        message=(f"`{holder.name}`'s own parameters hold {holder.nonfinite_params} NaN/Inf "
                 f"value(s)" + (f", so its output has {holder.nonfinite_out}"
                                if holder.nonfinite_out else "")
                 + ": an earlier step wrote them, no operation of this pass made them"))


def _forward_finding(forward: LayerStats, meta: Mapping[str, Any], absorbed: bool) -> Finding:
    op = _operation(forward.name, meta)
    evidence: dict[str, Any] = {
        "pass": "forward", "nonfinite_outputs": forward.nonfinite_out, "nonfinite_inputs": 0,
        "loss": meta.get("loss"), "absorbed_downstream": absorbed}
    who = (f"`{forward.name}`" if forward.name else
           f"the forward of `{forward.type}` itself (outside its submodules)")
    at = ""
    if op is not None:
        evidence.update(operation=op["operation"], file=op["file"], line=op["line"],
                        code=op["code"])
        code = f": {op['code']}" if op["code"] else ""
        at = f", at {op['operation']} ({where(op)}{code})"
    return Finding(
        kind="nonfinite", module=forward.name, severity="info" if absorbed else "critical",
        evidence=evidence, prescription=forward_remedy(forward.name, op=op),
        modules=(forward.name,),
        message=(f"{who} produced {forward.nonfinite_out} non-finite value(s) from finite "
                 f"inputs{at}" + (" (absorbed before the loss)" if absorbed else "")))
