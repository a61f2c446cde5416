"""``Report``: what ``gh.probe`` (and ``Watch.report()``) returns, and how it renders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gradhealth.measure.layer import LayerStats, jsonable
from gradhealth.report.terminal import render_report, to_text
from gradhealth.rules.finding import SEVERITY_ORDER, Finding
from gradhealth.rules.incident import Incident


@dataclass
class Report:
    """Per-layer statistics and the findings drawn from them; a watch's report also has
    its ``incidents`` in order of onset (the findings grouped into what went wrong)."""

    layers: dict[str, LayerStats]
    findings: list[Finding] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    incidents: list[Incident] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no finding is a warning or worse."""
        return not any(SEVERITY_ORDER[f.severity] >= 1 for f in self.findings)

    def by_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def flow(self) -> list[LayerStats]:
        """Weight layers (and recurrent modules) that ran, in forward order: the depth axis."""
        return [s for s in self.ordered() if s.role in ("layer", "recurrent") and s.calls]

    def ordered(self) -> list[LayerStats]:
        return sorted(self.layers.values(), key=lambda s: s.order)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "incidents": [i.to_dict() for i in self.incidents],
            "layers": {name: s.to_dict() for name, s in self.layers.items()},
            "meta": jsonable(self.meta),
        }

    def __rich_console__(self, console, options):  # pragma: no cover - exercised via render
        yield from render_report(self)

    def __str__(self) -> str:
        return to_text(self)
