"""The verdicts: ``Finding`` (one sick module) and ``Report`` (all of a probe's output)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

Severity = Literal["info", "warning", "critical"]
KINDS = ("vanishing", "exploding", "saturation", "dead_units", "nonfinite", "spike")
SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Finding:
    """One diagnosis.

    ``module`` is the qualified name from ``model.named_modules()`` of the module the
    finding is about (``""`` is the root model); ``modules`` lists every module the
    finding covers when it spans several layers (the first entry is ``module``).
    ``evidence`` holds the numbers that triggered it and the threshold they crossed.
    """

    kind: str
    module: str
    severity: Severity
    evidence: dict[str, Any]
    remedy: str
    message: str = ""
    modules: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["modules"] = list(self.modules)
        data["evidence"] = _jsonable(self.evidence)
        return data


@dataclass(frozen=True)
class LayerStats:
    """Per-module numbers measured by a probe (``None`` where not applicable)."""

    name: str
    type: str
    order: int  # position in forward execution order (first call)
    calls: int
    leaf: bool
    n_params: int
    out_mean: float | None = None
    out_std: float | None = None
    out_rms: float | None = None
    grad_rms: float | None = None  # RMS of dL/d(output)
    grad_norm: float | None = None  # L2 norm of dL/d(output) over the whole batch
    weight_norm: float | None = None
    weight_grad_norm: float | None = None
    grad_to_weight: float | None = None
    fan_in: int | None = None
    fan_out: int | None = None
    weight_var_fan_in: float | None = None  # n_in * Var(W): 1 LeCun, 2 He, 1/3 torch default
    saturation: float | None = None  # bounded activations only
    dead_fraction: float | None = None  # rectifiers only
    nonfinite_in: int = 0
    nonfinite_out: int = 0
    nonfinite_grad: int = 0
    nonfinite_weight_grad: int = 0
    activation: str | None = None  # this module's activation kind ("relu", "tanh", ...)
    activation_after: str | None = None  # qualified name of the activation that follows
    inputs_from: tuple[str, ...] = ()  # modules whose outputs this module consumed
    time_grad_rms: tuple[float, ...] | None = None  # recurrent modules: dL/dx_t RMS per step
    out_quantiles: tuple[float, ...] | None = None  # at stats.QUANTILES (2/15/50/85/98 %)
    grad_quantiles: tuple[float, ...] | None = None  # of dL/d(output), same levels
    role: str = "other"  # "layer", "norm", "activation", "recurrent", "container", "other"
    error: str | None = None  # a statistic that could not be computed for this module

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return _jsonable(data)


@dataclass
class Report:
    """What ``gh.probe`` returns: per-layer statistics and the findings drawn from them."""

    layers: dict[str, LayerStats]
    findings: list[Finding] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

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
            "layers": {name: s.to_dict() for name, s in self.layers.items()},
            "meta": _jsonable(self.meta),
        }

    def __rich_console__(self, console, options):  # pragma: no cover - exercised via render
        from gradhealth.report.terminal import render_report

        yield from render_report(self)

    def __str__(self) -> str:
        from gradhealth.report.terminal import to_text

        return to_text(self)


def _jsonable(value: Any) -> Any:
    """Plain JSON types only; non-finite floats become strings so json.dumps is strict-safe."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def worst(findings: Iterable[Finding]) -> Severity | None:
    items = list(findings)
    if not items:
        return None
    return max(items, key=lambda f: SEVERITY_ORDER[f.severity]).severity
