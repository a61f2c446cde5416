"""``gradhealth run [options] SCRIPT.py [args...]``: watch a training script, unedited.

The script runs in this process as ``python SCRIPT.py args`` would run it: ``sys.argv``
is ``[SCRIPT.py, args...]``, it runs as ``__main__``, its folder is first on
``sys.path``, the working directory is unchanged, and the exit status is the script's
(1 with its traceback when it raises, 130 when interrupted with Ctrl-C, the code of
``sys.exit``). Every model an optimizer steps is watched by a ``gh.watch``
(``gradhealth.training.session``) with its own store. gradhealth writes only to stderr:
the live status when stderr is a terminal (``cli.status``), then the report of each
model and how the run ended; the script's stdout is its own. Under ``torchrun`` every
rank watches, rank 0 writes, shows and serves.
"""

from __future__ import annotations

import argparse
import gc
import os
import runpy
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from gradhealth.cli.status import StatusLine
from gradhealth.errors import ConfigError
from gradhealth.training.session import Session

RUNS = Path("gradhealth-runs")


@dataclass
class Outcome:
    """How the script ended: ``kind`` is finished, exited, raised or interrupted."""

    kind: str
    status: int
    detail: str = ""

    def describe(self) -> str:
        if self.kind == "finished":
            return "finished"
        if self.kind == "exited":
            return f"exited with status {self.status}"
        if self.kind == "interrupted":
            return "interrupted (Ctrl-C)"
        return f"raised {self.detail}"


def default_store(script: Path, now: float | None = None) -> Path:
    """``gradhealth-runs/<script>-<date>-<time>.db``, a new file."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    path = RUNS / f"{script.stem}-{stamp}.db"
    k = 2
    while path.exists():
        path = RUNS / f"{script.stem}-{stamp}-{k}.db"
        k += 1
    return path


def rank() -> int:
    """This process's rank under torchrun (its environment; 0 alone)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def run_command(args: argparse.Namespace, console: Console) -> int:
    status = _run(args)
    # free the session, its watches and the script's models (their reference cycles) now,
    # while the interpreter is whole: a DDP model left to the shutdown takes its gloo
    # process group down there, which can abort the process after a good run
    gc.collect()
    return status


def _run(args: argparse.Namespace) -> int:
    script = Path(args.script)
    if not script.is_file():
        raise ConfigError(f"expected a Python script to run, got {args.script!r}, which is "
                          f"not a file; give the path of your training script (train.py)")
    if args.sample_every < 0 or args.flush_every < 1:
        raise ConfigError(f"expected --sample-every >= 0 (0: never) and --flush-every >= 1, "
                          f"got {args.sample_every} and {args.flush_every}")
    store = Path(args.store) if args.store else default_store(script)
    leader = rank() == 0  # under torchrun: rank 0 writes the store, shows and serves
    if leader and store.exists():
        raise ConfigError(f"--store {store} exists; a run never replaces a store: give a new "
                          f"path, or leave --store out for a new file under {RUNS}/")
    err = Console(stderr=True, highlight=False)
    status = StatusLine(sys.stderr) if leader and _isatty(sys.stderr) else None
    session = Session(
        store=store, flush_every=args.flush_every, sample_every=args.sample_every or None,
        guard=args.guard, meta={"script": str(script), "argv": [str(script), *args.args],
                                "cwd": os.getcwd(), "started": time.time()},
        on_tick=(lambda s: status.update(line(s))) if status is not None else None)
    server = None
    if args.serve and leader:
        from gradhealth.cli.serve import spawn

        server, url = spawn(store, host=args.host, port=args.port)
        err.print(f"gradhealth: live page at {url}", markup=False)
    try:
        outcome = _execute(script, args.args, session, status)
        session.close(outcome.describe())
    finally:
        session.close("ended")  # no-op once closed
        if status is not None:
            status.remove()
        if server is not None:
            from gradhealth.cli.serve import GRACE_S

            server.stop(grace=GRACE_S)
    if leader:
        report(session, outcome, err, full=not args.quiet)
    return outcome.status


def _execute(script: Path, argv: list[str], session: Session,
             status: StatusLine | None) -> Outcome:
    saved = sys.argv, list(sys.path)
    sys.argv = [str(script), *argv]
    sys.path[0:1] = [str(script.resolve().parent)]  # python SCRIPT.py: the script's folder
    if status is not None:
        status.install()
    try:
        session.start()
        runpy.run_path(str(script), run_name="__main__")
        return Outcome("finished", 0)
    except SystemExit as stop:
        code = stop.code
        if code is None or isinstance(code, int):
            return Outcome("finished" if not code else "exited", code or 0)
        print(code, file=sys.stderr)  # as Python does with sys.exit("message")
        return Outcome("exited", 1)
    except KeyboardInterrupt as stop:
        _traceback(stop, script)
        return Outcome("interrupted", 130)
    except BaseException as error:
        _traceback(error, script)
        return Outcome("raised", 1, f"{type(error).__name__}: {error}")
    finally:
        if status is not None:
            status.remove()
        sys.argv, sys.path[:] = saved[0], saved[1]


def _traceback(error: BaseException, script: Path) -> None:
    """The traceback Python would print for the script (gradhealth's frames left out)."""
    tb = error.__traceback__
    target = str(script.resolve())
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != target:
        tb = tb.tb_next
    sys.stderr.flush()
    traceback.print_exception(type(error), error, tb, file=sys.stderr)


def line(session: Session) -> str:
    """The status in one line: per model its step, loss and global norm; incidents."""
    parts = []
    several = len(session.watched) > 1
    for w in session.watched:
        last = w.watch.journal.last
        bits = [f"step {w.watch.steps:,}"]
        if last["loss"] is not None:
            bits.append(f"loss {last['loss']:.4g}")
        if last["global_norm"] is not None:
            bits.append(f"|g| {last['global_norm']:.3g}")
        parts.append((f"{w.name}: " if several else "") + " · ".join(bits))
    found = sum(len(w.watch.journal.findings) for w in session.watched)
    skipped = sum(w.watch.journal.counts["skipped"] for w in session.watched)
    tail = f"{found} incident{'s' if found != 1 else ''}" + (
        f" · {skipped} skipped" if skipped else "")
    body = " | ".join(parts) if parts else "waiting for the first optimizer step"
    return f"gradhealth ▸ {body} · {tail}"


def report(session: Session, outcome: Outcome, err: Console, full: bool = True) -> None:
    """The report of each watched model, then one line: how the run ended, where it is."""
    if full:
        for w in session.watched:
            err.rule(f"gradhealth: {w.name}", characters="─")
            err.print(w.watch.report())
    for problem in session.problems:
        err.print(f"gradhealth: {problem}", markup=False)
    if not session.watched:
        err.print(f"gradhealth run: the script {outcome.describe()}; no optimizer step was "
                  f"seen, so nothing was watched (gradhealth run watches the models that a "
                  f"torch.optim optimizer steps)", markup=False, soft_wrap=True)
        return
    steps = ", ".join(f"{w.name} {w.watch.steps:,}" for w in session.watched)
    found = sum(len(w.watch.findings) for w in session.watched)
    stores = [str(w.store) for w in session.watched if w.store is not None]
    where = (f"; store: {', '.join(stores)} (gradhealth serve {stores[0]}, gradhealth "
             f"report {stores[0]})" if stores else "")
    err.print(f"gradhealth run: the script {outcome.describe()}; steps: {steps}; "
              f"{found} incident{'s' if found != 1 else ''}{where}", markup=False,
              soft_wrap=True)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
