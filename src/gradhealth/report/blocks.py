"""HTML fragments of a report: summaries, findings, layer table, figures.

Every string that comes from the model, the store or a finding goes through ``e``
(``html.escape`` with quotes), so a module named ``<script>alert(1)</script>`` is shown as
text; markup is only ever the literal tags written here. Figures are PNG bytes inlined as
``data:`` URIs: the page fetches nothing.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.measure.stats import QUANTILES
from gradhealth.report import plots, rundata
from gradhealth.report.report import Report
from gradhealth.rules.finding import SEVERITY_ORDER, Finding
from gradhealth.store.reader import Run

NOTABLE = 0.05  # as report.terminal: an activation row is shown when this much is sat/dead
MAX_FINDINGS_OPEN = 20  # more findings than this: the rest folded in <details>
MAX_NAMES = 30  # a finding covering more modules lists this many
MAX_ROWS = 500  # layer and skipped-step tables stop here (with a count of the rest)


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number for people: 3 significant digits, integers with separators."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def rich_text(text: str) -> str:
    """Escaped text in which `backticked` spans become <code> (escaping first, so a
    backticked ``<script>`` is still text)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", e(text))


def name(module: str) -> str:
    return f"<code class=name>{e(module or '<model>')}</code>"


def figure(png: bytes, alt: str, caption: str = "",
           layers: Sequence[str] | None = None) -> str:
    """One figure, inline; ``layers``: the layers a per-layer figure draws, listed under it
    (a reader with many layers sees the thinned tick labels' full list, and a test can
    check that no layer of the store was left out)."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{e(caption)}</figcaption>" if caption else ""
    listed = ""
    if layers is not None:
        items = "".join(f"<li>{name(n)}</li>" for n in layers)
        listed = (f'<details class="layers-drawn"><summary>{len(layers)} layer(s) drawn'
                  f"</summary><ol>{items}</ol></details>")
    return (f'<figure><img alt="{e(alt)}" src="data:image/png;base64,{data}">{cap}{listed}'
            f"</figure>")


def kv_table(rows: Mapping[str, Any], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(fmt(v))}</td></tr>"
                   for k, v in rows.items() if v is not None)
    return f'<table class="{cls}">{body}</table>'


def marks(findings: Iterable[Finding], floor: str = "info") -> dict[str, str]:
    """Module -> worst severity of the findings covering it, from ``floor`` up."""
    out: dict[str, str] = {}
    for f in findings:
        if SEVERITY_ORDER[f.severity] < SEVERITY_ORDER[floor]:
            continue
        for module in f.modules or (f.module,):
            if module not in out or SEVERITY_ORDER[f.severity] > SEVERITY_ORDER[out[module]]:
                out[module] = f.severity
    return out


def verdict(findings: Sequence[Finding]) -> str:
    problems = [f for f in findings if f.severity != "info"]
    if not findings:
        return '<p class="verdict ok">healthy: no findings</p>'
    if not problems:
        return '<p class="verdict ok">healthy (information only)</p>'
    kinds = ", ".join(sorted({f.kind for f in problems}))
    return f'<p class="verdict bad">{len(problems)} problem(s) found: {e(kinds)}</p>'


def _finding(f: Finding, step: int | None, pre_flight: bool) -> str:
    where = "" if not pre_flight else (" · pre-flight" if step is None else f" · step {step}")
    evidence = "".join(f"<tr><th>{e(k)}</th><td>{e(fmt(v))}</td></tr>"
                       for k, v in f.evidence.items() if v is not None)
    also = ""
    if len(f.modules) > 1:
        listed = ", ".join(name(m) for m in f.modules[:MAX_NAMES])
        rest = len(f.modules) - MAX_NAMES
        also = (f"<p class=small>covers {len(f.modules)} modules: {listed}"
                + (f" and {rest} more" if rest > 0 else "") + "</p>")
    message = f"<p>{rich_text(f.message)}</p>" if f.message else ""
    return (f'<div class="finding {e(f.severity)}"><h3><span class="badge {e(f.severity)}">'
            f"{e(f.severity)}</span> {e(f.kind)} in {name(f.module)}{e(where)}</h3>{message}"
            f'<table class="kv evidence"><caption>evidence</caption>{evidence}</table>{also}'
            f'<p class="remedy"><b>remedy:</b> {rich_text(f.remedy)}</p></div>')


def findings_block(findings: Sequence[Finding], steps: Sequence[int | None] | None = None) -> str:
    """Each finding with its evidence (the numbers and the threshold) and its remedy."""
    if not findings:
        return "<p>No findings.</p>"
    order = sorted(range(len(findings)), key=lambda i: -SEVERITY_ORDER[findings[i].severity])
    cards = [_finding(findings[i], steps[i] if steps else None, steps is not None) for i in order]
    shown = "".join(cards[:MAX_FINDINGS_OPEN])
    rest = cards[MAX_FINDINGS_OPEN:]
    if rest:
        shown += (f"<details><summary>{len(rest)} more finding(s)</summary>"
                  + "".join(rest) + "</details>")
    return shown


def probe_summary(report: Report) -> str:
    m = report.meta
    return kv_table({"model": m.get("model"), "loss": m.get("loss"),
                     "trainable parameters": m.get("n_params"), "batch size": m.get("batch_size"),
                     "device": m.get("device"), "dtype": m.get("dtype"),
                     "layers measured": len(report.flow())})


def table_rows(report: Report, flagged: Mapping[str, str]) -> list[LayerStats]:
    """Weight layers in forward order plus flagged or notable activations (as the terminal)."""
    rows = []
    for s in report.ordered():
        notable = max(s.saturation or 0.0, s.dead_fraction or 0.0) > NOTABLE
        if s.calls and (s.role in ("layer", "recurrent") or s.name in flagged
                        or (s.role == "activation" and notable)):
            rows.append(s)
    return rows


def layer_table(report: Report, flagged: Mapping[str, str]) -> str:
    head = ("<tr><th></th><th>layer</th><th>type</th><th>out RMS</th><th>|dL/d out|</th>"
            "<th>|dL/dW|</th><th>fan_in·Var(W)</th><th>saturated</th><th>dead</th></tr>")
    rows = table_rows(report, flagged)
    body = []
    for s in rows[:MAX_ROWS]:
        sev = flagged.get(s.name)
        mark = f'<span class="badge {e(sev)}">{e(sev)}</span>' if sev else ""
        pct = lambda v: "–" if v is None else f"{v:.0%}"  # noqa: E731
        body.append(f'<tr class="{e(sev or "")}"><td>{mark}</td><td>{name(s.name)}</td>'
                    f"<td>{e(s.type)}</td><td>{e(fmt(s.out_rms))}</td>"
                    f"<td>{e(fmt(s.grad_norm))}</td><td>{e(fmt(s.weight_grad_norm))}</td>"
                    f"<td>{e(fmt(s.weight_var_fan_in))}</td><td>{pct(s.saturation)}</td>"
                    f"<td>{pct(s.dead_fraction)}</td></tr>")
    more = (f"<p class=small>{len(rows) - MAX_ROWS} more rows not shown.</p>"
            if len(rows) > MAX_ROWS else "")
    return f'<div class="scroll"><table class="layers">{head}{"".join(body)}</table></div>{more}'


def probe_figures(report: Report, flagged: Mapping[str, str]) -> tuple[str, str]:
    """(gradient flow figure, activation distribution figure) of one probe."""
    flow = report.flow()
    names = [s.name for s in flow]
    png = plots.gradient_flow_png(
        [plots.Series("|dL/d(output)|: the back-propagated signal", names,
                      [s.grad_norm for s in flow]),
         plots.Series("|dL/dW|: the weight gradient", names, [s.weight_grad_norm for s in flow],
                      dashed=True)],
        sick=flagged, ylabel="gradient norm", title="gradient flow per layer")
    flow_html = figure(png, "gradient flow per layer, log scale",
                       "Norm of the gradient each layer receives, input layer on the left, log "
                       "scale; flagged layers are shaded and marked in their severity's colour.",
                       layers=names)
    acts = [s for s in report.ordered() if s.role == "activation" and s.out_quantiles]
    what = "activation outputs"
    if not acts:  # activations applied as functions: show the layers' outputs instead
        acts, what = [s for s in flow if s.out_quantiles], "layer outputs (pre-activation)"
    if not acts:
        return flow_html, "<p>No activation percentiles in this report.</p>"
    png = plots.distributions_png([s.name for s in acts], [s.out_quantiles for s in acts],
                                  levels=QUANTILES, sick=flagged,
                                  title=f"distribution of {what} per layer")
    dist_html = figure(png, f"distribution of {what} per layer",
                       f"Percentiles of the {what} of each layer on the probed batch, in the "
                       "style of Glorot & Bengio 2010, Fig. 6: a layer pinned at a bound is "
                       "saturated; a box collapsing to zero is dead or vanishing.",
                       layers=[s.name for s in acts])
    return flow_html, dist_html


def run_summary(run: Run, split: bool = False) -> str:
    m = run.meta
    config, env = m.get("config"), m.get("environment")
    config = config if isinstance(config, dict) else {}
    env = env if isinstance(env, dict) else {}
    rows = {"store": run.path.name, "model": m.get("model"), "optimizer": m.get("optimizer"),
            "trainable parameters": m.get("n_params"), "device": m.get("device"),
            "dtype": m.get("dtype"), **rundata.summary(run),
            "sampled every": config.get("sample_every"), "flushed every": config.get("flush_every"),
            "torch": env.get("torch"), "python": env.get("python")}
    if not split:
        return kv_table(rows)
    items = [(k, v) for k, v in rows.items() if v is not None]
    half = (len(items) + 1) // 2
    return (f'<div class="columns">{kv_table(dict(items[:half]))}'
            f"{kv_table(dict(items[half:]))}</div>")


def run_figures(run: Run, flagged: Mapping[str, str], threshold: float | None,
                with_flow: bool = True) -> list[str]:
    """Global norm over steps, heatmaps, and (``with_flow``) the run's own gradient flow and
    activation percentiles if the store holds them."""
    view = rundata.steps_view(run, threshold)
    after = (f"; recorded AFTER a clip at max_grad_norm {view.clipped_before:g} (the Hugging "
             f"Face Trainer clips before the optimizer step: a flat line there is the clip, "
             f"not the model's gradient; its pre-clip norm is the Trainer's logged grad_norm)"
             if view.clipped_before is not None else "")
    out = [figure(plots.global_norm_png(view, title="global gradient norm and loss over steps"),
                  "global gradient norm over steps",
                  "Global gradient norm per step (log)" + after + "; dashed: clip threshold"
                  + ("" if threshold is not None else " (not recorded in this store)")
                  + "; orange: steps where clipping bound; red lines: skipped steps; "
                    "red ×: non-finite gradients.")]
    flow_series: list[plots.Series] = []
    for stat in rundata.heatmap_stats(run):
        steps, names, values = rundata.layer_matrix(run, stat)
        if not len(steps):
            continue
        out.append(figure(plots.heatmap_png(steps, names, values, sick=flagged,
                                            label=rundata.label(stat),
                                            title=f"{rundata.label(stat)} per layer and step"),
                          f"heatmap of {stat} per layer and step",
                          f"{rundata.label(stat)} for each layer (input at the top) at each "
                          f"recorded step ({len(steps)} steps), log colour scale; grey: not "
                          "recorded or zero.", layers=names))
        flow_series.append(plots.Series(rundata.label(stat), names, rundata.recent_median(values),
                                        dashed=bool(flow_series)))
    if flow_series and with_flow:
        if len({tuple(s.names) for s in flow_series}) > 1:
            flow_series = flow_series[:1]  # different layer sets cannot share one depth axis
        out.insert(1, figure(plots.gradient_flow_png(
            flow_series, sick=flagged, ylabel="gradient",
            title=f"gradient flow per layer (median of the last {rundata.FLOW_WINDOW} "
                  "recorded steps)"), "gradient flow per layer over the last steps",
            "Gradient per layer at the end of the run, input layer on the left, log scale.",
            layers=list(flow_series[0].names)))
    quantiles = rundata.quantile_rows(run) if with_flow else None
    if quantiles is not None:
        out.append(figure(plots.distributions_png(*quantiles, sick=flagged,
                                                  title="activation distribution per layer, "
                                                        "last sampled step"),
                          "activation distribution per layer, last sampled step",
                          layers=quantiles[0]))
    return out


def skipped_table(run: Run) -> str:
    if not run.skipped:
        return "<p>No step was skipped.</p>"
    rows = "".join(f"<tr><td>{s.step}</td><td>{e(s.reason)}</td><td>"
                   f"{name(s.module) if s.module is not None else '–'}</td></tr>"
                   for s in run.skipped[:MAX_ROWS])
    more = (f"<p class=small>{len(run.skipped) - MAX_ROWS} more not shown.</p>"
            if len(run.skipped) > MAX_ROWS else "")
    return (f'<div class="scroll"><table class="layers"><tr><th>step</th><th>reason</th>'
            f"<th>module</th></tr>{rows}</table></div>{more}")
