"""The HTML report: one self-contained file, readable offline and safe to open.

Self-contained: figures are inline PNG (``data:`` URIs), the style sheet is inline, there
is no script and no external URL; the page's Content-Security-Policy (``default-src
'none'``) makes the browser refuse any fetch or script all the same. Every name from the
model is escaped (``report.blocks``).

- ``render_probe_html(report)``: one ``gh.probe`` report.
- ``render_run_html(run, report=None)``: a run store (``gradhealth.load``), with an
  optional ``Report`` (a pre-flight probe or ``Watch.report()``) for the per-layer views
  a store does not hold (activation percentiles).
- ``render_comparison_html(before, after)``: two ``Section``s (a report and/or a run
  each), e.g. a sick network and the same network after ``gh.fix``.
- ``write_html(path, text)``: atomic write (temporary file + ``os.replace``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gradhealth._version import __version__
from gradhealth.report import blocks, incidents, plots, rundata
from gradhealth.report.blocks import e
from gradhealth.report.report import Report
from gradhealth.rules.finding import Finding
from gradhealth.store.reader import Run

__all__ = ["Section", "render_probe_html", "render_run_html", "render_comparison_html",
           "write_html"]

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
GENERATOR = '<meta name="generator" content="gradhealth">'
"""In every page's head: how ``gradhealth report`` knows a page it may replace."""
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 color:#1d2329;background:#fff;margin:0}
main{max-width:1180px;margin:0 auto;padding:18px 28px 60px}
h1{font-size:1.6em;margin:.3em 0}h2{font-size:1.25em;margin:1.6em 0 .5em;
 border-bottom:1px solid #dde1e5;padding-bottom:.2em}h3{font-size:1.02em;margin:.2em 0 .4em}
nav{font-size:.9em;color:#555}nav a{color:#1f5fa8;margin-right:1em}
.verdict{font-size:1.15em;font-weight:600;padding:.45em .8em;border-radius:6px;display:inline-block}
.verdict.ok{background:#e6f4ea;color:#1e6b34}.verdict.bad{background:#fdecea;color:#b3261e}
table{border-collapse:collapse;font-size:.92em}th,td{padding:3px 10px;text-align:left;
 vertical-align:top}table.kv th{color:#555;font-weight:500}
table.layers th{background:#f3f5f7;position:sticky;top:0}
table.layers td{border-top:1px solid #eceff1}tr.critical td{background:#fdecea}
tr.warning td{background:#fff4e5}.scroll{max-height:560px;overflow:auto;border:1px solid #e3e6e9}
.finding{border:1px solid #e3e6e9;border-left:6px solid #0277bd;border-radius:4px;
 padding:8px 14px;margin:10px 0}.finding.critical{border-left-color:#c62828}
.finding.warning{border-left-color:#ef6c00}.evidence caption{text-align:left;color:#555;
 font-size:.9em}.remedy{background:#f6f8fa;padding:6px 10px;border-radius:4px}
.badge{display:inline-block;font-size:.78em;font-weight:700;text-transform:uppercase;
 padding:1px 7px;border-radius:10px;color:#fff;background:#0277bd}
.badge.critical{background:#c62828}.badge.warning{background:#ef6c00}
code{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.9em;
 background:#f1f3f5;padding:0 3px;border-radius:3px;word-break:break-all}
figure{margin:14px 0}figure img{max-width:100%;height:auto;border:1px solid #eceff1}
figcaption{color:#555;font-size:.88em}.small{font-size:.85em;color:#555}
.columns{display:grid;grid-template-columns:1fr 1fr;gap:20px}
footer{margin-top:40px;color:#777;font-size:.85em}
h2.side{font-size:1.45em;background:#eef2f6;padding:.35em .6em;border:0;margin-top:2.2em}
"""


@dataclass(frozen=True)
class Section:
    """One side of a comparison: a probe ``report``, a ``run`` store, or both, and notes
    (e.g. the changes ``gh.fix`` made)."""

    label: str
    report: Report | None = None
    run: Run | None = None
    notes: Sequence[str] = field(default_factory=tuple)
    clip_threshold: float | None = None


def _page(title: str, body: list[str], nav: Sequence[tuple[str, str]]) -> str:
    links = "".join(f'<a href="#{e(anchor)}">{e(text)}</a>' for anchor, text in nav)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">{GENERATOR}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{e(title)}</h1><nav>{links}</nav>{''.join(body)}"
            f"<footer>gradhealth {e(__version__)} · {stamp} · "
            f"a self-contained file: nothing was fetched to show it.</footer>"
            f"</main></body></html>\n")


def _h2(anchor: str, text: str) -> str:
    return f'<h2 id="{e(anchor)}">{e(text)}</h2>'


def _merged_findings(run: Run | None, report: Report | None
                     ) -> tuple[list[Finding], list[int | None] | None]:
    """The run's findings (with their steps) and the report's not already among them."""
    if run is None:
        return (list(report.findings) if report else []), None
    seen = {(f.kind, f.module, f.message) for f in run.findings}
    extra = [f for f in (report.findings if report else [])
             if (f.kind, f.module, f.message) not in seen]
    return list(run.findings) + extra, list(run.finding_steps) + [None] * len(extra)


def _body(report: Report | None, run: Run | None, threshold: float | None,
          prefix: str = "") -> tuple[list[str], list[tuple[str, str]]]:
    """The sections of one report and/or run, pictures first: summary, the figures that
    show where the gradient goes, findings, then the detail. Returns (html, nav)."""
    findings, steps = _merged_findings(run, report)
    flagged = blocks.marks(findings, floor="warning")
    out: list[str] = [blocks.verdict(findings), _h2(prefix + "summary", "Summary")]
    nav = [(prefix + "summary", "summary")]
    if run is not None and report is not None:
        source = "watch, last window" if "steps" in report.meta else "probe"
        out.append(f'<div class="columns"><div><h3>run</h3>{blocks.run_summary(run)}</div>'
                   f"<div><h3>{e(source)}</h3>{blocks.probe_summary(report)}</div></div>")
    elif run is not None:
        out.append(blocks.run_summary(run, split=True))
    elif report is not None:
        out.append(blocks.probe_summary(report))
    happened = run.incidents if run is not None else (report.incidents if report else [])
    if run is not None or happened:
        nav.append((prefix + "incidents", "incidents"))
        out += [_h2(prefix + "incidents", f"Incidents ({len(happened)})"),
                incidents.block(happened)]
    if run is not None:
        nav.append((prefix + "training", "training"))
        threshold = rundata.clip_threshold(run, threshold)
        out += [_h2(prefix + "training", "Training: global norm, per-layer heatmaps"),
                *blocks.run_figures(run, flagged, threshold, with_flow=report is None)]
    if report is not None:
        flow, dist = blocks.probe_figures(report, flagged)
        nav.append((prefix + "flow", "gradient flow"))
        out += [_h2(prefix + "flow", "Gradient flow per layer"), flow]
    nav.append((prefix + "findings", "findings"))
    out += [_h2(prefix + "findings", f"Findings ({len(findings)})"),
            blocks.findings_block(findings, steps)]
    if report is not None:
        nav += [(prefix + "activations", "activations"), (prefix + "layers", "layers")]
        out += [_h2(prefix + "activations", "Activation distributions per layer"), dist,
                _h2(prefix + "layers", "Layers"), blocks.layer_table(report, flagged)]
    if run is not None:
        nav.append((prefix + "skipped", "skipped steps"))
        out += [_h2(prefix + "skipped", f"Skipped steps ({len(run.skipped)})"),
                blocks.skipped_table(run)]
    return out, nav


def render_probe_html(report: Report, *, title: str = "gradhealth probe report") -> str:
    """The whole page for one probe ``Report``."""
    body, nav = _body(report, None, None)
    return _page(title, body, nav)


def render_run_html(run: Run, *, report: Report | None = None, title: str | None = None,
                    clip_threshold: float | None = None) -> str:
    """The whole page for a run store; ``report`` adds the probe's per-layer views.
    ``clip_threshold`` draws the threshold line when the store does not record it."""
    body, nav = _body(report, run, clip_threshold)
    return _page(title or f"gradhealth run report: {run.path.name}", body, nav)


def _compare_rows(s: Section) -> dict[str, object]:
    findings, _ = _merged_findings(s.run, s.report)
    problems = [f for f in findings if f.severity != "info"]
    row: dict[str, object] = {
        "problems": len(problems),
        "kinds": ", ".join(sorted({f.kind for f in problems})) or "none",
        "probe loss": s.report.meta.get("loss") if s.report else None}
    if s.run is not None:
        row.update(rundata.summary(s.run))
    return row


def _overlays(before: Section, after: Section) -> list[str]:
    out = []
    if before.report is not None and after.report is not None:
        reports = ((before.label, before.report), (after.label, after.report))
        series = [plots.Series(f"{label}: |dL/d(output)|", [x.name for x in report.flow()],
                               [x.grad_norm for x in report.flow()], dashed=k == 1,
                               sick=blocks.marks(report.findings, floor="warning"))
                  for k, (label, report) in enumerate(reports)]
        out.append(blocks.figure(plots.gradient_flow_png(
            series, ylabel="|dL/d(output)|", title="gradient flow per layer: before and after"),
            "gradient flow per layer before and after",
            "Gradient reaching each layer (input on the left, log scale); flagged layers "
            "are marked in their severity's colour."))
    if before.run is not None and after.run is not None:
        for column, log in (("loss", False), ("global_norm", True)):
            runs = ((before.label, before.run), (after.label, after.run))
            curves = [(label, run.steps["step"], run.steps[column]) for label, run in runs]
            if all(np.isfinite(np.asarray(c[2], dtype=float)).any() for c in curves):
                what = column.replace("_", " ")
                out.append(blocks.figure(plots.curves_png(
                    curves, ylabel=what, log=log, title=f"{what} over steps: before and after"),
                    f"{what} over steps before and after"))
    return out


def render_comparison_html(before: Section, after: Section, *,
                           title: str = "gradhealth: before and after") -> str:
    """One page: both sides in a table, overlaid flow and loss curves, then each side whole."""
    rows_b, rows_a = _compare_rows(before), _compare_rows(after)
    keys = [k for k in rows_b if rows_b[k] is not None or rows_a.get(k) is not None]
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(blocks.fmt(rows_b.get(k)))}</td>"
                    f"<td>{e(blocks.fmt(rows_a.get(k)))}</td></tr>" for k in keys)
    body = [_h2("compare", "Before and after"),
            f'<table class="layers"><tr><th></th><th>{e(before.label)}</th>'
            f"<th>{e(after.label)}</th></tr>{table}</table>"]
    for s in (before, after):
        if s.notes:
            body.append(f"<h3>{e(s.label)}: notes</h3><ul>"
                        + "".join(f"<li>{blocks.rich_text(n)}</li>" for n in s.notes) + "</ul>")
    body += _overlays(before, after)
    nav = [("compare", "compare")]
    for k, s in enumerate((before, after)):
        prefix = ("before-", "after-")[k]
        part, _ = _body(s.report, s.run, s.clip_threshold, prefix=prefix)
        body += [f'<h2 id="{prefix}top" class="side">{e(s.label)}</h2>', *part]
        nav.append((f"{prefix}top", s.label))
    return _page(title, body, nav)


def write_html(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder, then
    ``os.replace``; a reader sees the old file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
