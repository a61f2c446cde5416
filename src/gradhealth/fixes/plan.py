"""Choose remedies for findings: a pure function from a report to a list of ``Action``.

The choice follows the physics of each finding (docs/science.md#remedies-and-initialisation):
- depth vanishing/exploding: the variance-preserving init for the activation in use -
  He for rectifiers (He et al. 2015), Glorot with the tanh gain for tanh (Glorot &
  Bengio 2010), LeCun for SELU (Klambauer et al. 2017), LSUV when the activation is
  unknown (Mishkin & Matas 2015). Sigmoid nets cannot be rescued by init alone (the
  derivative is at most 1/4), so their sigmoids are swapped for SELU with LeCun init:
  self-normalising, its forward and backward fixed points hold at any depth (Klambauer
  et al. 2017), and unlike ReLU it has no dead units in deep narrow nets (measured on
  digits, 20 layers of 64: SELU 0.95 test accuracy in 200 SGD steps, ReLU+He 0.87-0.89,
  ReLU+He+BatchNorm 0.89-0.90, ELU 0.93, Leaky ReLU 0.2 0.91-0.95).
- saturation: Glorot init of the feeding layers (sigmoids: swap, as above).
- dead units: He init and zero bias for the feeding layer; if units stay dead, Leaky
  ReLU(0.2) (the article's slope) so negative inputs still pass a gradient.
- through time: an LSTM that vanishes gets the forget-gate bias its finding names (chosen
  for the sequence length, ``rules.through_time.forget_bias``); other recurrences
  orthogonal recurrent init (Saxe et al. 2013; Pascanu et al. 2013), and a norm clipper
  for training (it cannot be applied to the model itself).
- when a round of init did not cure the net, BatchNorm before the activations
  (Ioffe & Szegedy 2015).
Non-finite values come from the model's code (log of a negative, 0/0): no module surgery
repairs them, so the plan says so instead of pretending.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradhealth.measure import catalog
from gradhealth.report.report import Report
from gradhealth.rules.finding import Finding

CATEGORIES = ("init", "activation", "norm")


@dataclass(frozen=True)
class Action:
    """One remedy to apply: ``remedy`` names a function in ``gradhealth.fixes``."""

    # "he", "glorot", "lecun", "lsuv", "orthogonal", "forget_bias", "swap_selu",
    # "swap_leaky", "insert_bn"
    remedy: str
    category: str  # one of CATEGORIES
    names: tuple[str, ...] | None  # qualified module names, None for every eligible layer
    reason: str
    forget_bias: float | None = None  # "forget_bias": the LSTM forget-gate bias to set

    def __str__(self) -> str:
        where = "all layers" if self.names is None else ", ".join(self.names[:4]) + (
            f" and {len(self.names) - 4} more" if len(self.names) > 4 else "")
        return f"{self.remedy} on {where}: {self.reason}"


def plan(report: Report, allow: tuple[str, ...], round_: int = 0) -> tuple[list[Action], list[str]]:
    """Actions for the report's findings, and notes on findings no action can cure."""
    actions: list[Action] = []
    notes: list[str] = []
    for f in report.findings:
        if f.severity == "info":
            continue
        chosen, note = _for_finding(report, f, allow, round_)
        actions += chosen
        if note:
            notes.append(note)
    return _dedupe(actions), notes


def _for_finding(report: Report, f: Finding, allow, round_) -> tuple[list[Action], str | None]:
    why = f"{f.kind} in `{f.module}`"
    layer = report.layers.get(f.module)
    if f.kind == "nonfinite":
        return [], (f"{why}: a non-finite value produced by the model's own code; no "
                    f"init/activation/norm change repairs it - {f.remedy}")
    if f.kind in ("vanishing", "exploding") and layer is not None and layer.role == "recurrent":
        # the finding's own remedy: an LSTM's forget bias for its sequence length
        params = f.prescription.params if f.prescription is not None else {}
        bias = (params.get("forget_bias") if f.kind == "vanishing"
                and params.get("cell") == "lstm" else None)
        if bias is not None:  # the remedy itself: the gate, the weights as they are
            return _only(allow, [Action("forget_bias", "init", (f.module,), why, bias)], why)
        return _only(allow, [Action("orthogonal", "init", (f.module,), why)], why)
    if f.kind in ("vanishing", "exploding", "saturation"):
        kind = f.evidence.get("activation")
        if round_ > 0 and "norm" in allow:
            return [Action("insert_bn", "norm", None,
                           why + " persisted after re-initialisation")], None
        return _only(allow, _init_for(kind, why, allow), why)
    if f.kind == "dead_units":
        feeder = f.evidence.get("fed_by")
        if round_ > 0 or feeder is None:
            return _only(allow, [Action("swap_leaky", "activation", (f.module,), why)], why)
        return _only(allow, [Action("he", "init", (feeder,), why)], why)
    return [], f"{why}: no automatic remedy for this kind"


def _init_for(kind: str | None, why: str, allow) -> list[Action]:
    # by the kind's gain family (catalog.gain_family): ReLU6, ELU, GELU... are rectifiers
    # to He init, Hardsigmoid a sigmoid, Hardtanh and Softsign tanh-like
    family = catalog.gain_family(kind)
    if family == "sigmoid":
        if "activation" in allow:
            return [Action("swap_selu", "activation", None, why + ": sigmoid' <= 1/4 whatever "
                           "the init; SELU with LeCun init self-normalises")]
        return [Action("lsuv", "init", None, why + " (init only allowed: the best init can do "
                       "for sigmoid units)")]
    if family in ("relu", "leaky_relu"):
        return [Action("he", "init", None, why)]
    if family == "tanh":
        return [Action("glorot", "init", None, why)]
    if family == "selu":
        return [Action("lecun", "init", None, why)]
    return [Action("lsuv", "init", None, why + " (activation unknown: data-driven init)")]


def _only(allow, actions: list[Action], why: str) -> tuple[list[Action], str | None]:
    kept = [a for a in actions if a.category in allow]
    if kept:
        return kept, None
    return [], f"{why}: its remedy needs {sorted({a.category for a in actions})}, not allowed"


def _dedupe(actions: list[Action]) -> list[Action]:
    """Merge actions on the same remedy; an all-layers action absorbs named ones."""
    merged: dict[str, Action] = {}
    for a in actions:
        prev = merged.get(a.remedy)
        if prev is None:
            merged[a.remedy] = a
        else:
            biases = [b for b in (prev.forget_bias, a.forget_bias) if b is not None]
            bias = max(biases) if biases else None
            if prev.names is None or a.names is None:
                merged[a.remedy] = Action(a.remedy, a.category, None, prev.reason, bias)
            else:
                names = tuple(dict.fromkeys(prev.names + a.names))
                merged[a.remedy] = Action(a.remedy, a.category, names,
                                          prev.reason + "; " + a.reason, bias)
    order = ["swap_selu", "swap_leaky", "insert_bn", "he", "glorot", "lecun", "orthogonal",
             "forget_bias", "lsuv"]
    return sorted(merged.values(), key=lambda a: order.index(a.remedy))
