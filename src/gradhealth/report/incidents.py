"""HTML fragments of a run's incidents: one card each, in order of onset, before the
figures and the per-step findings (``rules.incident``). Every string goes through
``blocks.e``."""

from __future__ import annotations

from collections.abc import Sequence

from gradhealth.report.blocks import e, fmt, rich_text
from gradhealth.rules.incident import Incident


def card(i: Incident) -> str:
    span = f"steps {i.onset}–{i.end}" if i.end > i.onset else f"step {i.onset}"
    seen = [v for v in i.reported.values() if v is not None]
    rows = {"course": f"{span} ({i.steps} step{'s' if i.steps > 1 else ''})",
            "findings": f"{i.findings}: {', '.join(i.kinds)}",
            "first reported at step": min(seen) if seen else None,
            "what followed": i.outcome or None,
            **{f"peak {k}": v for k, v in i.peak.items()},
            **{f"{k} before": v for k, v in i.before.items()},
            **{f"{k} after": v for k, v in i.after.items()}}
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(fmt(v))}</td></tr>"
                    for k, v in rows.items() if v is not None)
    return (f'<div class="finding {e(i.severity)}"><h3><span class="badge {e(i.severity)}">'
            f"{e(i.severity)}</span> incident {i.number}: {e(' + '.join(i.kinds))} from step "
            f"{i.onset}</h3><p>{rich_text(i.message)}</p>"
            f'<table class="kv evidence"><caption>course and numbers</caption>{table}</table>'
            f'<p class="remedy"><b>remedy:</b> {rich_text(i.remedy)}</p></div>')


def block(incidents: Sequence[Incident]) -> str:
    """Every incident, in order of onset; a line when there is none."""
    if not incidents:
        return "<p>No incident: nothing at warning or worse happened during the run.</p>"
    return "".join(card(i) for i in sorted(incidents, key=lambda i: (i.onset, i.number)))
