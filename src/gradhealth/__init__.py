"""gradhealth: find, explain and fix vanishing and exploding gradients in PyTorch models.

    import gradhealth as gh
    report = gh.probe(model, inputs, targets)   # name the sick layers, before training
    print(report)
    result = gh.fix(model, inputs, targets)     # apply the remedies, re-probe, prove it
    with gh.watch(model, optimizer=opt, store="run.db") as w:   # ~1% of the step time
        ...                                     # an ordinary training loop
"""

from gradhealth.clip import AGC, AutoClip, ClipNorm, ClipNormPerParameter, ClipValue, ZClip
from gradhealth.errors import GradHealthError
from gradhealth.findings import Finding, Report
from gradhealth.fix import FixResult, fix
from gradhealth.guard import Guard, guard
from gradhealth.probe import probe
from gradhealth.runs import load
from gradhealth.watch import Watch, watch

__version__ = "0.1.0"

__all__ = [
    "AGC",
    "AutoClip",
    "ClipNorm",
    "ClipNormPerParameter",
    "ClipValue",
    "Finding",
    "FixResult",
    "GradHealthError",
    "Guard",
    "Report",
    "Watch",
    "ZClip",
    "__version__",
    "fix",
    "guard",
    "load",
    "probe",
    "watch",
]
