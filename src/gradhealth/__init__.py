"""gradhealth: find, explain and fix vanishing and exploding gradients in PyTorch models."""

from gradhealth.errors import GradHealthError
from gradhealth.findings import Finding, Report

__version__ = "0.1.0"

__all__ = ["Finding", "GradHealthError", "Report", "__version__"]
