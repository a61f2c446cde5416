"""Render a ``FixResult``: before and after side by side, what changed and why."""

from __future__ import annotations

import io
from collections.abc import Iterator

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradhealth.report.terminal import render_report


def _summary(report) -> str:
    alarms = [f for f in report.findings if f.severity != "info"]
    if not alarms:
        return "healthy"
    return ", ".join(f"{f.kind} in `{f.module}`" for f in alarms)


def group_changes(changes) -> list[tuple[list[str], str, str]]:
    """Changes that say the same thing for many modules, listed once with all the names."""
    groups: dict[tuple[str, str], list[str]] = {}
    for c in changes:
        what = c.what.split(", std ")[0]  # per-layer numbers differ; the action does not
        groups.setdefault((what, c.why.split(": ")[0]), []).append(c.module)
    return [(modules, what, why) for (what, why), modules in groups.items()]


def render_fix(result) -> Iterator[RenderableType]:
    table = Table(title="gradhealth fix", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("before", Text(_summary(result.before)))
    table.add_row("after" if not result.dry_run else "after (dry run)",
                  Text(_summary(result.after)))
    table.add_row("rounds", str(result.rounds))
    yield table
    if result.plan:
        yield Text("plan:", style="bold")
        for action in result.plan:
            yield Text(f"  - {action}")
    if result.changes:
        yield Text(f"changes ({len(result.changes)}):", style="bold")
        for modules, what, why in group_changes(result.changes):
            shown = ", ".join(f"`{m or '<model>'}`" for m in modules[:6])
            more = f" and {len(modules) - 6} more" if len(modules) > 6 else ""
            yield Text(f"  - {shown}{more}: {what} ({why})")
    for note in result.notes:
        yield Text(f"note: {note}", style="yellow")
    if not result.dry_run and result.changes:
        yield Text("re-probe after the fix:", style="bold")
        yield from render_report(result.after)


def fix_text(result, width: int = 120) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None)
    console.print(Group(*render_fix(result)))
    return buffer.getvalue()
