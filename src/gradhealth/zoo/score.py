"""Diagnosis accuracy over zoo cases: what ``benchmarks/probe_accuracy.py`` prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradhealth.zoo.cases import Case


def matches(expected: tuple[str, str | None], kind: str, module: str) -> bool:
    return expected[0] == kind and (expected[1] is None or expected[1] == module)


@dataclass(frozen=True)
class Score:
    """Diagnosis accuracy over zoo cases (warnings and criticals count; info does not)."""

    true_positives: int  # expected (kind, module) items that some finding matched
    expected: int
    correct_findings: int  # findings that match an expected item
    findings: int
    false_alarms_on_healthy: int
    misses: tuple[str, ...]
    false_findings: tuple[str, ...]

    @property
    def recall(self) -> float:
        return self.true_positives / self.expected if self.expected else 1.0

    @property
    def precision(self) -> float:
        return self.correct_findings / self.findings if self.findings else 1.0


def score(results: list[tuple[Case, list]]) -> Score:
    """Score (case, findings) pairs against each case's expected diagnosis."""
    tp = n_exp = correct = n_find = healthy_alarms = 0
    misses: list[str] = []
    false: list[str] = []
    for c, findings in results:
        alarms = [f for f in findings if f.severity != "info"]
        n_exp += len(c.expected)
        n_find += len(alarms)
        for e in c.expected:
            if any(matches(e, f.kind, f.module) for f in alarms):
                tp += 1
            else:
                misses.append(f"{c.name}: {e}")
        for f in alarms:
            if any(matches(e, f.kind, f.module) for e in c.expected):
                correct += 1
            else:
                false.append(f"{c.name}: {f.kind} in {f.module!r}")
                healthy_alarms += c.healthy
    return Score(tp, n_exp, correct, n_find, healthy_alarms, tuple(misses), tuple(false))
