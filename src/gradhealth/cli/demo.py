"""``gradhealth demo``: a deliberately sick deep network on real data, diagnosed and fixed.

The data are scikit-learn's digits (they ship with scikit-learn: nothing is downloaded).
The network is a 20-layer sigmoid MLP with PyTorch's default initialisation, the set-up
Glorot & Bengio 2010 showed to stall. The demo probes it, trains it briefly under
``gh.watch`` so the stall is visible, fixes it with ``gh.fix``, trains the fixed network
on the same budget, and writes an HTML report comparing the two runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from torch import nn

from gradhealth._fix import fix
from gradhealth._probe import probe
from gradhealth._watch import watch
from gradhealth.errors import ConfigError
from gradhealth.lab.classifier import train_classifier
from gradhealth.lab.data import Split, load_digits
from gradhealth.report.fix import group_changes
from gradhealth.report.html import Section, render_comparison_html, write_html
from gradhealth.store.reader import load
from gradhealth.store.writer import RunStore, environment
from gradhealth.zoo import mlp

DEPTH, WIDTH = 20, 64
STEPS, LR, BATCH, PROBE_BATCH = 200, 0.05, 64, 256


def sick_network(data: Split, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return mlp(DEPTH, WIDTH, nn.Sigmoid, None, n_in=data.x_train.shape[1], n_out=data.n_classes)


def _train(model: nn.Module, data: Split, store: Path, label: str, progress: Progress) -> float:
    task = progress.add_task(label, total=STEPS, loss=float("nan"))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with RunStore.create(store, {"environment": environment(), "demo": label},
                         overwrite=True) as run, \
            watch(model, optimizer=opt, store=run, flush_every=25, sample_every=25) as w:
        result = train_classifier(
            model, data, steps=STEPS, lr=LR, batch=BATCH, optimizer=opt, log_loss=w.log_loss,
            on_step=lambda step, loss: progress.update(task, advance=1, loss=loss))
    progress.update(task, description=f"{label}: test accuracy {result.accuracy:.1%}")
    return result.accuracy


def run_demo(console: Console, out: Path) -> int:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"expected --out to name a folder the demo can create or write, got "
                          f"{str(out)!r} ({err.strerror or err}); choose another path") from err
    threads = torch.get_num_threads()
    # The demo's nets are small: intra-op threads cost more in hand-offs than they gain,
    # and on a busy machine they spin (measured here with two other jobs on 2 cores: 80 s
    # instead of 20 s). One thread is faster and repeatable, as in the lab.
    torch.set_num_threads(1)
    try:
        return _demo(console, out)
    finally:
        torch.set_num_threads(threads)


def _demo(console: Console, out: Path) -> int:
    data = load_digits()
    x, y = data.x_train[:PROBE_BATCH], data.y_train[:PROBE_BATCH]

    console.rule(f"1. probe: a {DEPTH}-layer sigmoid MLP, PyTorch default init, on digits")
    before = probe(sick_network(data), x, y)
    console.print(before)

    console.rule(f"2. train both for {STEPS} SGD steps under gh.watch")
    fixed = sick_network(data)
    result = fix(fixed, x, y)
    columns = (TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        acc_before = _train(sick_network(data), data, out / "sick.db",
                            "sick (sigmoid, default init)", progress)
        acc_after = _train(fixed, data, out / "fixed.db", "after gh.fix", progress)

    console.rule("3. the fix")
    console.print(result)
    console.print(f"test accuracy after {STEPS} steps: sick {acc_before:.1%} (chance 10%), "
                  f"fixed {acc_after:.1%}", markup=False, highlight=False)

    changes = [f"{', '.join(m or '<model>' for m in modules[:6])}"
               f"{' and more' if len(modules) > 6 else ''}: {what}"
               for modules, what, _ in group_changes(result.changes)]
    page = render_comparison_html(
        Section(f"sick: test accuracy {acc_before:.1%}", report=before,
                run=load(out / "sick.db"),
                notes=[f"{DEPTH} x Linear({WIDTH}) + Sigmoid, PyTorch default init; "
                       f"{STEPS} SGD steps, lr {LR}, batch {BATCH}"]),
        Section(f"after gh.fix: test accuracy {acc_after:.1%}", report=result.after,
                run=load(out / "fixed.db"), notes=changes),
        title="gradhealth demo: a sick deep network, before and after gh.fix")
    path = write_html(out / "report.html", page)
    console.print(f"report: {path.resolve()}", markup=False, highlight=False)
    return 0 if (not before.ok and result.ok and acc_after > acc_before) else 1
