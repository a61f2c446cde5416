"""Diagnosis accuracy of gh.probe over the zoo: recall, precision, false alarms.

Run: python benchmarks/probe_accuracy.py   (about 5 s on 2 CPU cores)
The acceptance bar (issue 2): recall >= 0.95, precision >= 0.95, no alarm on a healthy
control, and every localised finding naming the right module.
"""

from __future__ import annotations

import sys
import time

from gradhealth import probe
from gradhealth.zoo import CASES, score


def main() -> int:
    results = []
    print(f"{'case':24s} {'expected':42s} found")
    for case in CASES:
        model, x, y = case.build()
        t0 = time.perf_counter()
        report = probe(model, x, y)
        took = time.perf_counter() - t0
        results.append((case, report.findings))
        expected = ", ".join(f"{k}@{m}" if m else k for k, m in sorted(case.expected,
                                                                      key=str)) or "healthy"
        found = ", ".join(f"{f.kind}@{f.module}" for f in report.findings
                          if f.severity != "info") or "-"
        print(f"{case.name:24s} {expected:42s} {found}  ({took * 1000:.0f} ms)")
    s = score(results)
    print()
    print(f"recall    {s.recall:.3f}  ({s.true_positives}/{s.expected} expected diagnoses found)")
    print(f"precision {s.precision:.3f}  ({s.correct_findings}/{s.findings} findings correct)")
    print(f"false alarms on healthy controls: {s.false_alarms_on_healthy}")
    for line in s.misses:
        print(f"  missed: {line}")
    for line in s.false_findings:
        print(f"  false:  {line}")
    ok = s.recall >= 0.95 and s.precision >= 0.95 and s.false_alarms_on_healthy == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
