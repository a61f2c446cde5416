"""The ``gradhealth`` command: demo, probe (and more as they land)."""

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
