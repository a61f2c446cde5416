"""The ``gradhealth`` command: demo, probe, report, run, serve, lab."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from rich.console import Console

from gradhealth.cli.output import check_output, write_text
from gradhealth.errors import ConfigError, GradHealthError

SERVE_PORT = 8765  # gradhealth serve's default port (run --serve too)


def _probe(args: argparse.Namespace, console: Console) -> int:
    from gradhealth._probe import probe
    from gradhealth.cli.target import resolve
    from gradhealth.zoo import CASES

    if args.list:
        for c in CASES:
            console.print(f"{c.name:24s} {'healthy' if c.healthy else 'sick   '}  {c.why}",
                          markup=False, highlight=False)
        return 0
    if not args.target:
        console.print("gradhealth probe: give a TARGET (a zoo case, FILE.py:FUNCTION or "
                      "module:FUNCTION) or --list", style="red", markup=False)
        return 2
    # where the reports go is checked before the (possibly long) probe runs
    if args.json and args.html and os.path.abspath(args.json) == os.path.abspath(args.html):
        raise ConfigError(f"--json and --html both name {args.json}; give each report its own "
                          f"file, e.g. --json report.json --html report.html")
    if args.json:
        check_output(args.json, "json", "--json", force=args.force)
    if args.html:
        check_output(args.html, "html", "--html", force=args.force)
    model, inputs, targets = resolve(args.target)
    report = probe(model, inputs, targets)
    console.print(report)
    if args.json:
        try:
            write_text(Path(args.json), json.dumps(report.to_dict(), indent=2, allow_nan=False))
        except OSError as err:
            console.print(f"gradhealth: cannot write the JSON report to {args.json}: "
                          f"{err.strerror or err}; choose a writable file path with --json",
                          style="red", markup=False, highlight=False)
            return 2
        console.print(f"wrote {args.json}", markup=False)
    if args.html:
        from gradhealth.report.html import render_probe_html

        if not _write_html(args.html, render_probe_html(
                report, title=f"gradhealth probe: {args.target}"), console):
            return 2
    return 0 if report.ok else 1


def _report(args: argparse.Namespace, console: Console) -> int:
    from gradhealth.report.html import render_run_html
    from gradhealth.store.reader import load

    check_output(args.output, "html", "-o", inputs=[args.run], force=args.force)
    run = load(args.run)  # StoreError (exit 2) for a missing file or one that is not a store
    return 0 if _write_html(args.output, render_run_html(
        run, clip_threshold=args.clip_threshold), console) else 2


def _write_html(path: str, text: str, console: Console) -> bool:
    from gradhealth.report.html import write_html

    try:
        write_html(path, text)
    except OSError as err:
        console.print(f"gradhealth: cannot write the HTML report to {path}: {err.strerror or err}"
                      "; choose a writable file path with -o/--html", style="red", markup=False,
                      highlight=False)
        return False
    console.print(f"wrote {path}", markup=False)
    return True


def _demo(args: argparse.Namespace, console: Console) -> int:
    from gradhealth.cli.demo import run_demo

    return run_demo(console, out=Path(args.out))


def _run(args: argparse.Namespace, console: Console) -> int:
    from gradhealth.cli.run import run_command

    return run_command(args, console)


def _serve(args: argparse.Namespace, console: Console) -> int:
    from gradhealth.cli.serve import serve_command

    return serve_command(args, console)


def _lab(args: argparse.Namespace, console: Console) -> int:
    from gradhealth.lab import EXPERIMENTS, load_experiment, run_lab

    if args.list:
        for name in EXPERIMENTS:
            console.print(f"{name:14s} {load_experiment(name).TITLE}", markup=False,
                          highlight=False)
        return 0
    return run_lab(args.names, args.quick, Path(args.out), console, seed=args.seed,
                   device=args.device)


def _threshold(text: str) -> float:
    """A clip threshold: a finite number > 0 (argparse says so and exits 2 otherwise)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0 such as 1.0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradhealth",
        description="Find, explain and fix vanishing and exploding gradients in PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="diagnose a deliberately sick network on real data")
    demo.add_argument("--out", default="gradhealth-demo", help="folder for the demo's outputs")
    demo.set_defaults(func=_demo)

    probe = sub.add_parser("probe", help="one forward+backward pass: name the sick layers")
    probe.add_argument("target", nargs="?",
                       help="zoo case name, FILE.py:FUNCTION or module:FUNCTION returning "
                            "(model, inputs[, targets])")
    probe.add_argument("--list", action="store_true", help="list the zoo's cases")
    probe.add_argument("--json", help="also write the report as JSON to this file")
    probe.add_argument("--html", metavar="PATH",
                       help="also write a self-contained HTML report (with plots) to this file")
    probe.add_argument("--force", action="store_true",
                       help="replace an existing --json/--html file that is not a gradhealth "
                            "report (a run store is never replaced)")
    probe.set_defaults(func=_probe)

    report = sub.add_parser("report", help="write a self-contained HTML report of a run store")
    report.add_argument("run", metavar="RUN.db", help="a run store written by gh.watch")
    report.add_argument("-o", "--output", default="report.html", metavar="PATH",
                        help="the HTML file to write (default: report.html)")
    report.add_argument("--clip-threshold", type=_threshold, default=None, metavar="C",
                        help="draw this clip threshold on the global-norm plot")
    report.add_argument("--force", action="store_true",
                        help="replace an existing file that is not a gradhealth report (the "
                             "run store itself, or any other, is never replaced)")
    report.set_defaults(func=_report)

    run = sub.add_parser("run", help="run a training script unedited, watching every model "
                                     "an optimizer steps")
    run.add_argument("--store", metavar="PATH",
                     help="the run store to write (default: a new file under gradhealth-runs/ "
                          "named after the script and the time); a second model's goes beside "
                          "it")
    run.add_argument("--guard", action="store_true",
                     help="skip steps whose gradients are non-finite or spike (gh.guard)")
    run.add_argument("--sample-every", type=int, default=50, metavar="K",
                     help="activation statistics every K steps (0: never; default 50)")
    run.add_argument("--flush-every", type=int, default=50, metavar="N",
                     help="write the store every N steps (default 50)")
    run.add_argument("--serve", action="store_true",
                     help="also serve the live page of the run (gradhealth serve)")
    run.add_argument("--host", default="127.0.0.1", help="--serve's address (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=SERVE_PORT,
                     help=f"--serve's port (default {SERVE_PORT}; 0: any free one)")
    run.add_argument("--quiet", action="store_true",
                     help="at the end, one line instead of each model's report")
    run.add_argument("script", metavar="SCRIPT.py", help="the training script, run as __main__")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                     help="the script's own arguments")
    run.set_defaults(func=_run)

    serve = sub.add_parser("serve", help="a live page of a run store, in the browser")
    serve.add_argument("run", metavar="RUN.db", help="a run store (gh.watch, gradhealth run)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="the address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=SERVE_PORT,
                       help=f"the port (default {SERVE_PORT}; 0: any free one)")
    serve.add_argument("--exit-with-stdin", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)

    lab = sub.add_parser("lab", help="re-run the classic experiments and check their outcome")
    lab.add_argument("names", nargs="*", metavar="NAME",
                     help="experiments to run (default: all; see --list)")
    lab.add_argument("--quick", action="store_true",
                     help="small budgets, CPU, under a minute each (what CI runs)")
    lab.add_argument("--out", default="gradhealth-lab", help="folder for figures and JSON")
    lab.add_argument("--seed", type=int, default=0, help="base random seed (default: 0)")
    lab.add_argument("--device", default=None,
                     help="torch device (default: cuda when present for a full run, else cpu)")
    lab.add_argument("--list", action="store_true", help="list the experiments")
    lab.set_defaults(func=_lab)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return args.func(args, console)
    except GradHealthError as err:
        console.print(f"gradhealth {args.command}: {err}", style="red", markup=False,
                      highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
