"""The real-architecture zoo (issue 14): everyday architectures at their library's default
initialisation raise no alarm; each sick one, its label first verified with plain torch
code, is reported with its kind and named right (down to the operation and line where the
producer is a functional call); nothing crashes. About a minute on two cores."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("torchvision", reason="needs the test extra (torchvision)")
pytest.importorskip("transformers", reason="needs the test extra (transformers)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gradhealth import probe  # noqa: E402
from gradhealth.zoo import matches, score  # noqa: E402
from gradhealth.zoo.real import (  # noqa: E402
    HEALTHY,
    OPERATIONS,
    REAL_CASES,
    SICK,
    operation_named,
)
from gradhealth.zoo.verify import VERIFY  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def probed():
    """Each case built once and probed; the sick ones' labels verified on the same model
    afterwards (the probe leaves it bit-identical)."""
    out = {}
    for case in REAL_CASES:
        torch.manual_seed(0)
        model, x, y = case.build()
        report = probe(model, x, y)
        verified = VERIFY[case.name](model, x, y) if not case.healthy else (True, {})
        out[case.name] = (report, verified)
    return out


def test_the_zoo_is_large_enough_and_importable_with_its_labels():
    assert len(HEALTHY) >= 15 and len(SICK) >= 12
    assert all(c.healthy for c in HEALTHY) and not any(c.healthy for c in SICK)
    assert set(VERIFY) == {c.name for c in SICK}
    kinds = {k for c in SICK for k, _ in c.expected}
    assert kinds == {"vanishing", "exploding", "saturation", "dead_units", "nonfinite",
                     "attention_logit_growth"}
    assert {"trained", "code-bug"} <= {t for c in SICK for t in c.tags}


@pytest.mark.parametrize("case", SICK, ids=lambda c: c.name)
def test_each_sick_label_holds_numerically(case, probed):
    ok, numbers = probed[case.name][1]
    assert ok, f"{case.name}: its label does not hold: {numbers}"


@pytest.mark.parametrize("case", REAL_CASES, ids=lambda c: c.name)
def test_case_diagnosed_exactly(case, probed):
    report = probed[case.name][0]
    alarms = [f for f in report.findings if f.severity != "info"]
    for expected in case.expected:
        assert any(matches(expected, f.kind, f.module) for f in alarms), (
            f"{case.name}: missed {expected}; got {[(f.kind, f.module) for f in alarms]}")
    for f in alarms:
        assert any(matches(e, f.kind, f.module) for e in case.expected), (
            f"{case.name}: unexpected {f.kind} in {f.module!r}: {f.message}")
    assert operation_named(case, report.findings), [f.evidence for f in report.findings]


def test_scores(probed):
    s = score([(c, probed[c.name][0].findings) for c in REAL_CASES])
    assert s.recall == 1.0 and s.precision == 1.0 and s.false_alarms_on_healthy == 0


def test_functional_producers_are_worded_with_their_line(probed):
    for name, (operation, file, line) in OPERATIONS.items():
        [f] = [f for f in probed[name][0].findings if f.kind == "nonfinite"]
        assert f"{operation} ({file}:{line} in forward" in f.message, f.message
        assert f"at {file}:{line} in forward" in f.remedy, f.remedy
