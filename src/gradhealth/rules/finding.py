"""``Finding``: one diagnosis of one module, with its evidence and remedy."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from gradhealth.measure.layer import jsonable
from gradhealth.rules.remedy import Remedy, render

Severity = Literal["info", "warning", "critical"]
KINDS = ("vanishing", "exploding", "saturation", "dead_units", "nonfinite", "spike",
         "divergence", "stuck", "attention_logit_growth", "logit_divergence", "adam_epsilon",
         "update_ratio", "inconclusive", "zero_head")
SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Finding:
    """One diagnosis.

    ``module`` is the qualified name from ``model.named_modules()`` of the module the
    finding is about (``""`` is the root model); ``modules`` lists every module the
    finding covers when it spans several layers (the first entry is ``module``).
    ``evidence`` holds the numbers that triggered it and the threshold they crossed.
    ``prescription`` is the remedy as data (``rules.remedy.Remedy``) and ``remedy`` its
    wording, PyTorch's unless ``worded`` chose another framework; a rule gives the data
    and the wording is rendered from it. Findings read back from a run store carry the
    wording only.
    """

    kind: str
    module: str
    severity: Severity
    evidence: dict[str, Any]
    remedy: str = ""
    message: str = ""
    modules: tuple[str, ...] = ()
    # not compared: a finding equals its copy read back from a store, which has no data
    prescription: Remedy | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.prescription is not None and not self.remedy:
            object.__setattr__(self, "remedy", render(self.prescription, "torch"))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["modules"] = list(self.modules)
        data["evidence"] = jsonable(self.evidence)
        data["prescription"] = jsonable(data["prescription"])
        return data


def worded(finding: Finding, framework: str) -> Finding:
    """``finding`` with its remedy worded for ``framework`` ("torch" or "keras"), rendered
    from its prescription; a finding without one (read from a store) is returned as is."""
    if finding.prescription is None:
        return finding
    return dataclasses.replace(finding, remedy=render(finding.prescription, framework))


def worst(findings: Iterable[Finding]) -> Severity | None:
    items = list(findings)
    if not items:
        return None
    return max(items, key=lambda f: SEVERITY_ORDER[f.severity]).severity


def from_record(kind: str, module: str, severity: Severity, evidence: dict[str, Any],
                remedy: str, message: str, modules: Iterable[str]) -> Finding:
    """A finding read back from where ``Finding.to_dict`` put it (a run store's row)."""
    return Finding(kind=kind, module=module, severity=severity, evidence=evidence,
                   remedy=remedy, message=message, modules=tuple(modules))
