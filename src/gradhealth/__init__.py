"""gradhealth: find, explain and fix vanishing and exploding gradients in PyTorch models.

    import gradhealth as gh
    report = gh.probe(model, inputs, targets)   # name the sick layers, before training
    print(report)
    result = gh.fix(model, inputs, targets)     # apply the remedies, re-probe, prove it
"""

from gradhealth.clip import AGC, AutoClip, ClipNorm, ClipNormPerParameter, ClipValue, ZClip
from gradhealth.errors import GradHealthError
from gradhealth.findings import Finding, Report
from gradhealth.fix import FixResult, fix
from gradhealth.probe import probe
from gradhealth.runs import load

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
    "Report",
    "ZClip",
    "__version__",
    "fix",
    "load",
    "probe",
]
