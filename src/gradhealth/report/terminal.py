"""Render a ``Report`` in the terminal with rich: gradient flow at a glance, then verdicts.

One row per weight layer (and activation) in forward order, with a log-scale bar of the
gradient norm each layer receives relative to the largest, so a geometric collapse reads
as a staircase; sick layers are marked, and each finding lists its evidence and remedy.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gradhealth.measure.layer import LayerStats
from gradhealth.rules.finding import SEVERITY_ORDER, Finding
from gradhealth.rules.incident import Incident


class Report(Protocol):
    """What is rendered: ``gradhealth.report.report.Report`` (which renders itself here)."""

    # read-only properties, so that a class whose attribute is a subtype (``list[Finding]``)
    # conforms: a settable protocol attribute would have to match its type exactly
    @property
    def findings(self) -> Sequence[Finding]: ...

    @property
    def meta(self) -> dict[str, Any]: ...

    @property
    def ok(self) -> bool: ...

    @property
    def incidents(self) -> Sequence[Incident]: ...

    def ordered(self) -> list[LayerStats]: ...

BAR_WIDTH = 16
DECADES = 8  # the bar spans 1e-8 .. 1 of the largest gradient norm
SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}
MAX_ROWS = 40


def _fmt(value: float | None, spec: str = ".2e") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def bar(value: float | None, top: float | None) -> Text:
    """A log-scale bar: full at ``top``, empty DECADES orders of magnitude below."""
    if value is None or top is None or top <= 0 or not math.isfinite(value):
        return Text("?" if value is not None else "", style="red")
    if value <= 0:
        return Text("·", style="dim")
    level = 1.0 + math.log10(max(value / top, 10.0 ** -DECADES)) / DECADES
    filled = max(1, round(level * BAR_WIDTH))
    style = "green" if level > 0.75 else "yellow" if level > 0.5 else "red"
    return Text("█" * filled, style=style)


NOTABLE = 0.05  # show an activation's row only when this much of it is saturated or dead


def _rows(report: Report, marked: set[str]) -> list[LayerStats]:
    """Weight layers in forward order, plus activations that are flagged or notable."""
    rows = []
    for s in report.ordered():
        if not s.calls:
            continue
        notable = max(s.saturation or 0.0, s.dead_fraction or 0.0) > NOTABLE
        if s.role in ("layer", "recurrent") or s.name in marked or (
                s.role == "activation" and notable):
            rows.append(s)
    return rows


def flow_table(report: Report) -> Table:
    marks: dict[str, list[Finding]] = {}
    for f in report.findings:
        for name in f.modules or (f.module,):
            marks.setdefault(name, []).append(f)
    rows = _rows(report, set(marks))
    hidden = max(len(rows) - MAX_ROWS, 0)
    if hidden:  # keep both ends of a very deep network: that is where the story is
        rows = rows[: MAX_ROWS // 2] + rows[-(MAX_ROWS // 2):]
    top = max((s.grad_norm for s in rows if s.grad_norm and math.isfinite(s.grad_norm)),
              default=None)
    table = Table(title=f"gradient flow, input first: |dL/d(out)|, log bar over {DECADES} "
                        f"decades", title_justify="left", box=None, pad_edge=False)
    table.add_column("", no_wrap=True)
    table.add_column("layer", no_wrap=True, overflow="fold")
    table.add_column("type", no_wrap=True, max_width=16)
    table.add_column("out rms", justify="right", no_wrap=True)
    table.add_column("grad", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, min_width=BAR_WIDTH)
    table.add_column("notes", overflow="fold")
    for i, s in enumerate(rows):
        if hidden and i == MAX_ROWS // 2:
            table.add_row("", Text(f"... {hidden} more layers ...", style="dim"))
        flags = []
        if s.saturation is not None and s.saturation > NOTABLE:
            flags.append(f"sat {s.saturation:.0%}")
        if s.dead_fraction is not None and s.dead_fraction > NOTABLE:
            flags.append(f"dead {s.dead_fraction:.0%}")
        if s.nonfinite_params:
            flags.append(f"NaN/Inf in weights {s.nonfinite_params}")
        if s.nonfinite_out or s.nonfinite_grad:
            flags.append(f"NaN/Inf out {s.nonfinite_out} grad {s.nonfinite_grad}")
        sick = marks.get(s.name, [])
        if sick:  # the kind once; a nonfinite kind is said by the counts beside it
            kinds = sorted({f.kind for f in sick} - ({"nonfinite"} if s.nonfinite_out
                           or s.nonfinite_grad or s.nonfinite_params else set()))
            if kinds:
                flags.insert(0, ",".join(kinds))
        worst = max(sick, key=lambda f: SEVERITY_ORDER[f.severity]).severity if sick else None
        table.add_row(Text("✗", style=SEVERITY_STYLE[worst]) if worst else "",
                      Text(s.name or "<model>", style=SEVERITY_STYLE[worst] if worst else ""),
                      Text(s.type), _fmt(s.out_rms, ".2g"), _fmt(s.grad_norm, ".1e"),
                      bar(s.grad_norm, top), Text("; ".join(flags)))
    return table


def _pairs(values: dict) -> str:
    """``key=value, ...`` with floats to 3 significant digits."""
    return ", ".join(f"{k}={_fmt(v, '.3g') if isinstance(v, float) else v}"
                     for k, v in values.items())


def finding_panel(f: Finding) -> Panel:
    body = Text()
    if f.message:
        body.append(f.message + "\n")
    shown = {k: v for k, v in f.evidence.items() if v is not None}
    body.append("evidence: ", style="bold")
    body.append(_pairs(shown) + "\n")
    body.append("remedy: ", style="bold")
    body.append(f.remedy)
    title = (f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/] {f.kind} in "
             f"`{escape(f.module or '<model>')}`")
    return Panel(body, title=title, title_align="left", border_style=SEVERITY_STYLE[f.severity])


def incident_panel(i: Incident) -> Panel:
    """One incident: what happened and what followed, its numbers, one remedy."""
    body = Text(i.message + "\n")
    span = f"steps {i.onset}-{i.end}" if i.end > i.onset else f"step {i.onset}"
    seen = [v for v in i.reported.values() if v is not None]
    body.append("course: ", style="bold")
    body.append(f"{span}; {i.findings} finding(s): {', '.join(i.kinds)}"
                + (f"; first reported at step {min(seen)}" if seen else "") + "\n")
    numbers = {**{f"peak {k}": v for k, v in i.peak.items()},
               **{f"{k} before": v for k, v in i.before.items()},
               **{f"{k} after": v for k, v in i.after.items()}}
    if numbers:
        body.append("numbers: ", style="bold")
        body.append(_pairs(numbers) + "\n")
    body.append("remedy: ", style="bold")
    body.append(i.remedy)
    title = (f"[{SEVERITY_STYLE[i.severity]}]{i.severity}[/] incident {i.number}: "
             f"{escape(' + '.join(i.kinds))} from step {i.onset}")
    return Panel(body, title=title, title_align="left", border_style=SEVERITY_STYLE[i.severity])


def _loose(report: Report) -> tuple[list[Finding], list[Finding]]:
    """(findings no incident holds, shown one by one; information-only spikes, counted)."""
    free = [f for f in report.findings if not any(i.holds(f) for i in report.incidents)]
    quiet = [f for f in free if f.kind == "spike" and f.severity == "info"]
    return [f for f in free if f not in quiet], quiet


def render_report(report: Report) -> Iterator[RenderableType]:
    meta = report.meta
    blind = any(f.kind == "inconclusive" for f in report.findings)
    verdict = Text("healthy: no findings" if report.ok and not report.findings else
                   "inconclusive for part of the model (see below)" if report.ok and blind
                   else "healthy (info only)" if report.ok else
                   f"{sum(f.severity != 'info' for f in report.findings)} problem(s) found",
                   style="bold green" if report.ok else "bold red")
    verb = "watch" if "steps" in meta else "probe"
    named = f" ({meta['loss_name']})" if meta.get("loss_name") else ""
    yield Text(f"gradhealth {verb} of {meta.get('model', 'model')}: loss "
               f"{_fmt(meta.get('loss'), '.4g')}{named}, {meta.get('n_params', 0):,} trainable "
               f"parameters, {meta.get('device', '')} {meta.get('dtype', '')}")
    yield verdict
    if report.incidents:
        yield Text("incidents, in order of onset (their per-step findings are in the store):",
                   style="bold")
        for incident in report.incidents:
            yield incident_panel(incident)
    yield flow_table(report)
    shown, quiet = _loose(report)
    for f in shown:
        yield finding_panel(f)
    if quiet:
        steps = ", ".join(str(f.evidence.get("step")) for f in quiet[:10])
        more = f" and {len(quiet) - 10} more" if len(quiet) > 10 else ""
        yield Text(f"{len(quiet)} information-only spike(s), at step(s) {steps}{more}: under "
                   f"10x the run's level, clipped, or followed by no rise of the loss.",
                   style=SEVERITY_STYLE["info"])


def to_text(report: Report, width: int = 120) -> str:
    """The terminal rendering as plain text (no colour codes)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, record=False)
    console.print(Group(*render_report(report)))
    return buffer.getvalue()
