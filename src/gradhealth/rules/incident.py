"""``Incident``: one thing that went wrong in a run, told once.

A bad batch at step 200 makes the spike rule fire on ten steps in a row, and what it did
to the network (units that died, a loss that never came back, NaN) shows up later, in
other rules. Reported finding by finding that is ten warnings with the same remedy and,
separately, a dead layer. An incident gathers them: its onset and its last anomalous
step, its peak numbers, the level before, what followed, and one remedy
(``rules.tracker`` decides which findings belong together;
docs/science.md#training-time-verdicts). This module holds the record and its wording:
pure functions of the findings in it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradhealth.measure.layer import jsonable
from gradhealth.rules.finding import SEVERITY_ORDER, Finding, Severity
from gradhealth.rules.remedy import Remedy, render

EVENT_KINDS = ("spike", "nonfinite")
"""Findings about one step: consecutive ones are one event, whatever module they name."""

PEAK_KEYS = {  # evidence key -> the incident's peak key, largest kept
    "global_norm": "global_norm", "loss": "loss", "loss_peak": "loss",
    "dead_fraction": "dead_fraction", "saturated_fraction": "saturated_fraction",
}


@dataclass(frozen=True)
class Incident:
    """One incident (see the module doc). ``kinds`` lists the kinds of its findings, the
    lead's first; ``onsets`` and ``reported`` give, per kind, the step it began and the
    step at which the watch first reported it. ``before``/``after`` hold the loss level
    before the onset and after the last anomalous step (``rules.tracker.SETTLE_STEPS``
    each way); ``outcome`` says in words what followed."""

    number: int
    kind: str
    module: str
    severity: Severity
    onset: int
    end: int
    kinds: tuple[str, ...]
    outcome: str
    message: str
    remedy: str
    peak: dict[str, float] = field(default_factory=dict)
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    onsets: dict[str, int] = field(default_factory=dict)
    reported: dict[str, int | None] = field(default_factory=dict)
    modules: tuple[str, ...] = ()
    findings: int = 1
    members: tuple[tuple[str, str, int | None], ...] = ()  # (kind, module, step) of each
    prescription: Remedy | None = field(default=None, compare=False)

    def holds(self, finding: Finding) -> bool:
        """Whether ``finding`` is one of this incident's: a step event by its kind, module
        and step (``evidence["step"]``), a condition by its kind and module."""
        if finding.kind in EVENT_KINDS:
            return (finding.kind, finding.module, finding.evidence.get("step")) in self.members
        return any(k == finding.kind and m == finding.module for k, m, _ in self.members)

    @property
    def steps(self) -> int:
        """How many steps it lasted, onset to last anomalous step."""
        return self.end - self.onset + 1

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("prescription")
        data["kinds"], data["modules"] = list(self.kinds), list(self.modules)
        data["members"] = [list(m) for m in self.members]
        return jsonable(data)


def worded(incident: Incident, framework: str) -> Incident:
    """``incident`` with its remedy worded for ``framework`` ("torch" or "keras"); one read
    from a store (no prescription) is returned as is."""
    if incident.prescription is None:
        return incident
    return dataclasses.replace(incident, remedy=render(incident.prescription, framework))


def from_record(data: Mapping[str, Any]) -> Incident:
    """An incident read back from where ``Incident.to_dict`` put it (a run store)."""
    return Incident(**{**data, "kinds": tuple(data["kinds"]),
                       "modules": tuple(data["modules"]),
                       "members": tuple(tuple(m) for m in data.get("members", ()))})


def onset_of(finding: Finding, step: int | None) -> int:
    """Where a finding's problem began: its evidence's ``onset_step`` (a dead-unit verdict
    names the first sample of its span, a divergence its first block), else its step."""
    onset = finding.evidence.get("onset_step", finding.evidence.get("span_first"))
    if isinstance(onset, int) and not isinstance(onset, bool):
        return onset
    return step if step is not None else 0


def peaks(members: Sequence[Finding]) -> dict[str, float]:
    """The largest of each number the findings' evidence holds (``PEAK_KEYS``), and the
    largest ratio of a spike to the run's long-term level."""
    out: dict[str, float] = {}
    for f in members:
        for key, name in PEAK_KEYS.items():
            value = _value(f.evidence.get(key))
            if value is not None and (name not in out or value > out[name]):
                out[name] = value
        level = _value(f.evidence.get("global_norm_level"))
        norm = _value(f.evidence.get("global_norm"))
        if level is not None and norm is not None and level > 0:
            out["scale"] = max(out.get("scale", 0.0), norm / level)
    return out


def outcome(members: Sequence[Finding], kinds: Sequence[str], before: Mapping[str, float],
            after: Mapping[str, float], recovered: bool | None, settled: bool) -> str:
    """What followed, in words: units that died, NaN, a loss that stayed above its level
    or came back to it (``recovered``), or, before it ``settled``, that it is too early
    to say."""
    lead = kinds[0]
    said = []
    dead: dict[str, float] = {}
    for f in members[1:]:
        if f.kind == "dead_units":
            fraction = _value(f.evidence.get("dead_fraction")) or 0.0
            dead[f.module] = max(dead.get(f.module, 0.0), fraction)
            said.append("dead")
        elif f.kind == "nonfinite" and lead != "nonfinite":
            said.append(f"NaN/Inf from step {f.evidence.get('step', '?')}")
        elif f.kind == "divergence" and lead != "divergence":
            said.append("the loss left its level for good")
    words = [died(dead) if w == "dead" else w for w in dict.fromkeys(said)]
    if lead in ("spike", "divergence") or (lead == "nonfinite" and len(members) == 1):
        b, a = before.get("loss"), after.get("loss")
        if recovered is not None and b is not None and a is not None:
            words.append(f"the loss {'came back to' if recovered else 'stayed above'} its "
                         f"level ({a:.3g} after, {b:.3g} before)")
        elif not settled and lead != "nonfinite":
            words.append("too early to say whether the loss comes back")
    return "; ".join(words)


def died(dead: Mapping[str, float], shown: int = 3) -> str:
    """``units died in 5 layers: `11` 100%, `5` 93%, `3` 89% and 2 more``."""
    worst = sorted(dead.items(), key=lambda kv: -kv[1])
    listed = ", ".join(f"`{m}` {_pct(v)}" for m, v in worst[:shown])
    more = f" and {len(worst) - shown} more" if len(worst) > shown else ""
    where = "1 layer" if len(worst) == 1 else f"{len(worst)} layers"
    return f"units died in {where}: {listed}{more}"


def message(members: Sequence[Finding], onset: int, end: int, peak: Mapping[str, float],
            result: str) -> str:
    """The incident in one paragraph: its lead's course and numbers, then what followed."""
    lead = members[0]
    if lead.kind == "spike":
        span = f", {end - onset + 1} steps" if end > onset else ""
        numbers = []
        if "global_norm" in peak:
            scale = f" ({peak['scale']:.3g}x the run's level)" if "scale" in peak else ""
            numbers.append(f"global norm peaked at {peak['global_norm']:.4g}{scale}")
        if "loss" in peak:
            numbers.append(f"loss at {peak['loss']:.4g}")
        head = f"spike from step {onset}{span}: " + ", ".join(numbers or ["see the findings"])
    else:
        head = lead.message
    return head + (f". Then: {result}." if result else ".")


def remedy(members: Sequence[Finding]) -> tuple[str, Remedy | None]:
    """One remedy for the incident: the lead's, then the further steps the findings that
    followed prescribe (each scheme once). Findings read back from a store carry only
    their wording: then the distinct wordings, joined."""
    prescriptions = [f.prescription for f in members]
    if all(p is not None for p in prescriptions):
        lead = prescriptions[0]
        assert lead is not None
        seen = {r.scheme for r in (lead, *lead.then)}
        extra = []
        for p in prescriptions[1:]:
            assert p is not None
            for r in (dataclasses.replace(p, then=()), *p.then):
                if r.scheme not in seen:
                    seen.add(r.scheme)
                    extra.append(r)
        chained = dataclasses.replace(lead, then=(*lead.then, *extra))
        return render(chained), chained
    texts = list(dict.fromkeys(f.remedy for f in members if f.remedy))
    return " ".join(texts), None


def build(number: int, members: Sequence[Finding], onsets: Mapping[str, int],
          reported: Mapping[str, int | None], end: int, before: Mapping[str, float],
          after: Mapping[str, float], recovered: bool | None, settled: bool,
          steps: Sequence[int | None] = ()) -> Incident:
    """The incident made of ``members`` (lead first), recorded at ``steps``."""
    kinds = tuple(dict.fromkeys(f.kind for f in members))
    onset = min(onsets.values())
    peak = peaks(members)
    result = outcome(members, kinds, before, after, recovered, settled)
    text, prescription = remedy(members)
    worst = max(members, key=lambda f: SEVERITY_ORDER[f.severity]).severity
    modules = tuple(dict.fromkeys(m for f in members for m in (f.modules or (f.module,)) if m))
    return Incident(number=number, kind=kinds[0], module=members[0].module, severity=worst,
                    onset=onset, end=max(end, onset), kinds=kinds, outcome=result,
                    message=message(members, onset, max(end, onset), peak, result),
                    remedy=text, peak=peak, before=dict(before), after=dict(after),
                    onsets=dict(onsets), reported=dict(reported), modules=modules,
                    findings=len(members),
                    members=tuple((f.kind, f.module, at) for f, at in zip(members, steps)),
                    prescription=prescription)


def _value(value: Any) -> float | None:
    """A finite number from evidence as a float; None for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _pct(value: Any) -> str:
    return f"{value:.0%}" if _value(value) is not None else "most"
