"""What a lab experiment returns (``Outcome``, ``Check``), what it is given (``Context``),
and the runner behind ``gradhealth lab`` (``run_lab``).

An experiment is a module with ``NAME``, ``TITLE``, ``CITATION`` and ``run(ctx) ->
Outcome``. It measures, fills a table whose rows put the published number beside ours,
draws one figure, and states its expected outcome as ``Check`` objects: each a claim
with its threshold, the number measured, and whether it held. The runner prints, saves,
and turns any check that did not hold into a non-zero exit status.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from gradhealth.errors import ConfigError, DataNotFoundError
from gradhealth.lab.registry import load_experiment, resolve_names

__all__ = ["Check", "Context", "Outcome", "choose_device", "fmt", "new_figure", "required",
           "run_lab", "save_figure"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Check:
    """One expected outcome: ``claim`` (what must hold, with its threshold), ``measured``
    (what we got) and ``passed``."""

    claim: str
    measured: str
    passed: bool


@dataclass
class Outcome:
    """The result of one experiment. ``rows`` are strings under ``columns``; the
    published number sits in its own column. ``passed`` is True only when there is at
    least one check and every check held."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]  # Sequence: a list of fixed-length tuples fits
    checks: list[Check]
    figure: Path | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["figure"] = str(self.figure) if self.figure else None
        data["passed"] = self.passed
        return data


@dataclass(frozen=True)
class Context:
    """What an experiment is given: the budget (``quick``), the one ``device`` chosen for
    the whole run, where to write, the console, and the base ``seed``."""

    quick: bool
    device: torch.device
    out_dir: Path
    console: Console
    seed: int = 0

    def figure_path(self, name: str) -> Path:
        return self.out_dir / f"{name}.png"

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A rich progress bar; yields ``advance(k)``. Transient: it leaves no line."""
        bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), console=self.console, transient=True)
        with bar:
            task = bar.add_task(description, total=total)

            def advance(k: int = 1) -> None:
                bar.advance(task, k)

            yield advance


def choose_device(quick: bool, requested: str | None = None) -> torch.device:
    """Chosen once per run: ``requested`` if given; else CUDA for a full run when present,
    and the CPU for ``--quick`` (its thresholds were calibrated there, and it is for CI)."""
    if requested:
        return _available(requested)
    if not quick and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _available(requested: str) -> torch.device:
    """``requested`` as a device this process can use, else a ConfigError saying why."""
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device expects a torch device such as cpu, cuda or cuda:1, got "
                          f"{requested!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {requested}: this torch ({torch.__version__}) sees no "
                              f"CUDA device; drop --device to run on the CPU, or install a "
                              f"CUDA build of torch on a machine with a GPU")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {requested}: only {count} CUDA device(s) here "
                              f"(cuda:0 to cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {requested}: MPS is not available here; drop --device "
                          f"to run on the CPU")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {requested}: the lab runs on cpu, cuda or mps")
    return device


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table: 3 significant digits, 'nan'/'inf' spelled out, '-' for None."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def required(value: _T | None, what: str) -> _T:
    """``value``, which the experiment's own set-up always produces (a probed layer's
    gradient in a plain network, a clipper's counts after training): None is a bug in
    the experiment, not in anything a user gave, so it stops the run with ``what``."""
    if value is None:
        raise RuntimeError(f"lab: {what} was not measured; this is a bug in the experiment")
    return value


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kwargs):
    """A matplotlib figure on the Agg canvas, without pyplot: no GUI backend, no global
    figure registry, no warning under pytest's ``filterwarnings = error``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- runner


MAX_SEED = 2**32 - 1  # scikit-learn's random_state (the data splits) stops here


def check_seed(seed: object) -> None:
    """ConfigError unless ``seed`` is an int from 0 to ``MAX_SEED``."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"expected --seed to be a whole number from 0 to {MAX_SEED} (the "
                          f"largest seed scikit-learn's data splits take), got {seed!r}")


def run_lab(names: list[str] | None, quick: bool, out_dir: Path, console: Console, *,
            seed: int = 0, device: str | None = None) -> int:
    """Run the named experiments (all when ``names`` is empty), print a table per
    experiment, write its figure and ``NAME.json`` into ``out_dir``; return 0 when every
    expected outcome was reproduced, 1 otherwise."""
    chosen = resolve_names(names)
    check_seed(seed)
    chosen_device = choose_device(quick, device)  # bad input fails before anything is written
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"expected --out to name a folder the lab can create or write, got "
                          f"{str(out_dir)!r} ({err.strerror or err}); choose another "
                          f"path") from None
    ctx = Context(quick=quick, device=chosen_device, out_dir=out_dir, console=console,
                  seed=seed)
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu":
        # The lab's models are small: intra-op threads cost more in hand-offs than they
        # gain, and on a busy machine they spin (measured on a loaded 2-core box: 250 s
        # instead of 4 s for the quick pascanu2013). One thread is faster and repeatable.
        torch.set_num_threads(1)
    try:
        return _run_all(chosen, ctx)
    finally:
        torch.set_num_threads(threads)


def _run_all(chosen: list[str], ctx: Context) -> int:
    console, seed, out_dir, quick = ctx.console, ctx.seed, ctx.out_dir, ctx.quick
    budget = "quick" if quick else "full"
    console.print(f"gradhealth lab: {', '.join(chosen)} ({budget} run, device {ctx.device}, "
                  f"seed {seed}, figures in {out_dir})", markup=False, highlight=False)
    summary: list[tuple[str, str, float]] = []
    for name in chosen:
        module = load_experiment(name)
        console.rule(f"{name}: {module.TITLE}")
        console.print(module.CITATION, style="dim", markup=False, highlight=False)
        start = time.perf_counter()
        try:
            torch.manual_seed(seed)
            outcome = module.run(ctx)
        except DataNotFoundError as err:
            console.print(f"{name}: not run, its data set is missing.\n{err}", style="red",
                          markup=False, highlight=False, soft_wrap=True)
            summary.append((name, "NOT RUN (data missing)", time.perf_counter() - start))
            continue
        outcome.seconds = time.perf_counter() - start
        _render(outcome, console)
        _write_json(out_dir / f"{name}.json", outcome.to_dict())
        verdict = "reproduced" if outcome.passed else "NOT REPRODUCED"
        summary.append((name, verdict, outcome.seconds))

    table = Table(title="gradhealth lab", title_justify="left")
    for col in ("experiment", "expected outcome", "seconds"):
        table.add_column(col)
    for name, verdict, seconds in summary:
        style = "green" if verdict == "reproduced" else "red"
        table.add_row(name, f"[{style}]{verdict}[/{style}]", f"{seconds:.1f}")
    console.print(table)
    return 0 if all(v == "reproduced" for _, v, _ in summary) else 1


def _render(outcome: Outcome, console: Console) -> None:
    table = Table(title=outcome.title, title_justify="left")
    for col in outcome.columns:
        table.add_column(col, overflow="fold")
    for row in outcome.rows:
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)
    checks = Table(title="expected outcome", title_justify="left")
    for col in ("", "claim", "measured"):
        checks.add_column(col, overflow="fold")
    for c in outcome.checks:
        mark = "[green]pass[/green]" if c.passed else "[red]FAIL[/red]"
        checks.add_row(mark, Text(c.claim), Text(c.measured))
    console.print(checks)
    for note in outcome.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if outcome.figure is not None:
        console.print(f"figure: {outcome.figure}", markup=False, highlight=False)
    console.print(f"{outcome.name}: {'reproduced' if outcome.passed else 'NOT REPRODUCED'} "
                  f"in {outcome.seconds:.1f} s", style="green" if outcome.passed else "red",
                  markup=False, highlight=False)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
