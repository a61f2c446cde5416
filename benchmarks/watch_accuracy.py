"""How far the training-time verdicts of gh.watch can be trusted: a scenario benchmark.

Run: python benchmarks/watch_accuracy.py   (about 20 min on 2 shared CPU cores; --quick:
seed 0 only, about 6 min)

Every scenario (``watch_scenarios.py``) trains a real small model through ``gh.watch``
(one CPU thread, ``sample_every = flush_every = K`` for each K of ``--every``, default 50
and 10; ``auto`` runs the watch's defaults, whose latency is counted in samples of 50
steps: on these 1-5 ms steps the pacer spaces samples and writes much further). The
truth of each run is measured by ``watch_truth.py`` (whole-data dead
fractions and losses every 5 steps, every step's norm and loss), never by the watch.
Per run it prints what was expected and what was reported (the kinds of each incident
at warning or worse), the true onset, the step the watch reported it at, the latency in
steps and in sampled steps, and the truth in numbers. In total: recall (sick runs
reported with every expected kind in one incident and no other incident), false alarms
(healthy runs with any warning), and the median and largest latency in sampled steps.

Acceptance (issue 12): no false alarm on a healthy run; every sick run reported with its
right kind as one incident; median latency <= 2 sampled steps at K = 50, none above 4.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gradhealth as gh  # noqa: E402
from gradhealth.rules.finding import SEVERITY_ORDER  # noqa: E402
from watch_parts import Scenario  # noqa: E402
from watch_scenarios import HEALTHY, SCENARIOS, SICK  # noqa: E402
from watch_truth import CHECK_EVERY, Truth  # noqa: E402

ACCEPT_MEDIAN, ACCEPT_MAX = 2.0, 4.0  # sampled steps, at the default K = 50


@dataclass
class Result:
    scenario: Scenario
    seed: int
    every: int
    reported: list[tuple[str, ...]]  # kinds of each incident at warning or worse
    passed: bool
    expect: tuple[str, ...] = ()  # the scenario's label for this run (Scenario.label)
    onset: int | None = None
    detected: int | None = None
    why: str = ""
    truth: str = ""
    seconds: float = 0.0

    @property
    def latency(self) -> float | None:
        if self.onset is None or self.detected is None:
            return None
        return float(max(self.detected - self.onset, 0))


def train(scenario: Scenario, seed: int, every: int | str) -> tuple[list, bool, Truth]:
    setup = scenario.build(seed)
    model, opt = setup.model, setup.optimizer
    scaler = torch.amp.GradScaler("cpu") if setup.amp else None
    truth = Truth()
    checks = bool(scenario.expect)  # the truth of a sick run, in numbers
    with gh.watch(model, opt, sample_every=every, flush_every=every, scaler=scaler) as w:
        for step in range(scenario.steps):
            if setup.lr is not None:
                for group in opt.param_groups:
                    group["lr"] = setup.lr(step)
            if setup.poke is not None:
                setup.poke(step, model)
            x, y = setup.batch(step)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16, enabled=setup.amp):
                loss = setup.loss(model(x), y)
            if scaler is not None:
                scale = scaler.get_scale()
                scaler.scale(loss).backward()
                w.log_loss(loss)
                truth.step(loss, model, scale)
                scaler.step(opt)
                scaler.update()
                if scaler.get_scale() < scale:
                    truth.scaler_skips.append(step)
            else:
                loss.backward()
                w.log_loss(loss)
                truth.step(loss, model)
                opt.step()
            if checks and step % CHECK_EVERY == 0:
                truth.check(step, model, setup.data, setup.loss)
    return w.incidents, w.report().ok, truth


def true_onset(spec: str, truth: Truth) -> int | None:
    kind, _, arg = spec.partition(":")
    if kind == "event":
        return int(arg)
    if kind == "start":
        return 0
    if kind == "norm":
        return truth.norm_onset(int(arg))[0]
    if kind == "dead":
        return truth.dead_onset()[0]
    if kind == "loss":
        return truth.loss_onset()[0]
    if kind == "nan":
        return truth.first_nan()
    raise ValueError(f"unknown onset {spec!r}")


def judge(scenario: Scenario, seed: int, every: int | str) -> Result:
    started = time.perf_counter()
    incidents, ok, truth = train(scenario, seed, every)
    warn = [i for i in incidents if SEVERITY_ORDER[i.severity] >= 1]
    reported = [i.kinds for i in warn]
    events = [int(o.split(":")[1]) for o in scenario.onset if o.startswith("norm:")]
    r = Result(scenario, seed, nominal(every), reported, False,
               truth=truth.summary(events[0] if events else None))
    r.expect, onsets = scenario.label(truth.first_nan() is not None)
    if not scenario.expect:
        r.passed, r.why = ok and not warn, "" if ok and not warn else "false alarm"
    else:
        r = _sick(r, warn, truth, onsets)
    r.seconds = time.perf_counter() - started
    return r


def _sick(r: Result, warn: list, truth: Truth, onsets: tuple[str, ...]) -> Result:
    s = r.scenario
    for incident in warn:
        chosen = [next((k for k in group.split("|") if k in incident.kinds), None)
                  for group in r.expect]
        if None in chosen:
            continue
        lat = []
        for kind, spec in zip(chosen, onsets):
            onset, seen = true_onset(spec, truth), incident.reported.get(kind)
            lat.append((seen - onset if onset is not None and seen is not None else -1,
                        onset, seen))
        worst = max(lat)
        r.onset, r.detected = worst[1], worst[2]
        known = {k for g in r.expect for k in g.split("|")} | set(s.allow)
        odd = [k for k in incident.kinds if k not in known]
        extra = len(warn) - 1
        r.passed = not odd and not extra and r.onset is not None
        r.why = "; ".join(filter(None, [f"also {odd}" if odd else "",
                                        f"{extra} more incident(s)" if extra else "",
                                        "no true onset" if r.onset is None else ""]))
        return r
    r.why = "missed"
    return r


def table(results: list[Result]) -> None:
    print(f"{'scenario':20s} {'seed':>4s} {'expected':28s} {'reported':40s} {'onset':>5s} "
          f"{'found':>5s} {'lat':>4s} {'samp':>5s}  verdict  truth")
    for r in results:
        expected = " + ".join(r.expect) or "healthy"
        reported = " | ".join("+".join(k) for k in r.reported) or "-"
        lat = r.latency
        print(f"{r.scenario.name:20s} {r.seed:4d} {expected:28.28s} {reported:40.40s} "
              f"{_n(r.onset):>5s} {_n(r.detected):>5s} {_n(lat):>4s} "
              f"{'-' if lat is None else f'{lat / r.every:.2f}':>5s}  "
              f"{'ok' if r.passed else 'FAIL':7s}  {r.truth}{'  <- ' + r.why if r.why else ''}")


def totals(results: list[Result], every: int, label: int | str | None = None) -> bool:
    """Recall, false alarms and latency in samples of ``every`` steps; ``label``: the
    setting as given (``"auto"``), printed."""
    sick = [r for r in results if r.scenario.expect]
    healthy = [r for r in results if not r.scenario.expect]
    found = sum(r.passed for r in sick)
    alarms = sum(not r.passed for r in healthy)
    steps = [r.latency for r in sick if r.passed and r.latency is not None]
    lats = [s / every for s in steps]
    med = statistics.median(lats) if lats else math.nan
    top = max(lats) if lats else math.nan
    name = every if label is None else label
    print(f"\nsample_every={name}: recall {found / max(len(sick), 1):.3f} ({found}/{len(sick)} "
          f"sick runs as one incident of the right kind), false alarms {alarms}/{len(healthy)} "
          f"healthy runs, latency median {med:.2f} max {top:.2f} sampled steps "
          f"({statistics.median(steps) if steps else math.nan:.0f} steps median)")
    ok = found == len(sick) and alarms == 0
    if every == 50:
        ok = ok and med <= ACCEPT_MEDIAN and top <= ACCEPT_MAX
    return ok


def nominal(every: int | str) -> int:
    """The steps a sample stands for: K, or the 50 of "auto" (its shortest interval)."""
    return 50 if every == "auto" else int(every)


def _n(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--every", nargs="+", default=["50", "10"],
                   help="sample_every = flush_every for each run; a number, or auto")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="seed 0 only")
    p.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="these scenarios")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [0] if args.quick else args.seeds
    chosen = [SCENARIOS[n] for n in args.only] if args.only else HEALTHY + SICK
    all_ok = True
    for given in args.every:
        every: int | str = given if given == "auto" else int(given)
        results = [judge(s, seed, every) for s in chosen for seed in seeds]
        print(f"\n== sample_every = flush_every = {every} ==")
        table(results)
        all_ok &= totals(results, nominal(every), every) or every == "auto"  # reported only
    print("PASS" if all_ok else "FAIL")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
