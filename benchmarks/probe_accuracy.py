"""Diagnosis accuracy of gh.probe over both zoos: recall, precision, false alarms.

The probe's own zoo (``gradhealth.zoo.CASES``: MLPs, CNNs, RNNs whose pathology is a
mathematical fact at initialisation) and the real-architecture zoo
(``gradhealth.zoo.real``: torchvision, Hugging Face, nn.TransformerEncoder and recurrent
LMs, healthy at their library's default init or made sick; needs the test extra).

Run: python benchmarks/probe_accuracy.py [--own-only]   (about 5 s, then about a minute)
The acceptance bar (issues 2 and 14): recall >= 0.95, precision >= 0.95, no alarm on a
healthy control, every localised finding naming the right module (and, for the real zoo,
the operation and line where the producer is a functional call), no crash.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from gradhealth import probe
from gradhealth.zoo import CASES, score


def run(title: str, cases, operation_named=None) -> bool:
    print(f"\n== {title}")
    print(f"{'case':26s} {'expected':44s} found")
    results, crashes, wrong_ops = [], [], []
    for case in cases:
        torch.manual_seed(0)
        model, x, y = case.build()
        t0 = time.perf_counter()
        try:
            report = probe(model, x, y)
        except Exception as err:  # a crash is a result to report, not to hide
            crashes.append(f"{case.name}: {type(err).__name__}: {err}")
            continue
        took = time.perf_counter() - t0
        results.append((case, report.findings))
        if operation_named is not None and not operation_named(case, report.findings):
            wrong_ops.append(case.name)
        expected = ", ".join(f"{k}@{m}" if m is not None else k for k, m in sorted(case.expected,
                                                                      key=str)) or "healthy"
        found = ", ".join(f"{f.kind}@{f.module}" for f in report.findings
                          if f.severity != "info") or "-"
        print(f"{case.name:26s} {expected:44s} {found}  ({took * 1000:.0f} ms)", flush=True)
    s = score(results)
    print(f"recall    {s.recall:.3f}  ({s.true_positives}/{s.expected} expected diagnoses found)")
    print(f"precision {s.precision:.3f}  ({s.correct_findings}/{s.findings} findings correct)")
    print(f"false alarms on healthy controls: {s.false_alarms_on_healthy}")
    for line in s.misses:
        print(f"  missed: {line}")
    for line in s.false_findings:
        print(f"  false:  {line}")
    for line in crashes:
        print(f"  crash:  {line}")
    for name in wrong_ops:
        print(f"  operation or line not named: {name}")
    return (s.recall >= 0.95 and s.precision >= 0.95 and s.false_alarms_on_healthy == 0
            and not crashes and not wrong_ops)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--own-only", action="store_true", help="skip the real zoo")
    args = parser.parse_args()
    ok = run("the probe's zoo", CASES)
    if not args.own_only:
        from gradhealth.zoo.real import REAL_CASES, operation_named

        ok = run("the real-architecture zoo", REAL_CASES, operation_named) and ok
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
