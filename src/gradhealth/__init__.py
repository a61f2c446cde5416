"""gradhealth: find, explain and fix vanishing and exploding gradients in PyTorch models.

    import gradhealth as gh
    report = gh.probe(model, inputs, targets)   # name the sick layers, before training
    print(report)
"""

from gradhealth.errors import GradHealthError
from gradhealth.findings import Finding, Report
from gradhealth.probe import probe
from gradhealth.runs import load

__version__ = "0.1.0"

__all__ = ["Finding", "GradHealthError", "Report", "__version__", "load", "probe"]
