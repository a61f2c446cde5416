"""The lab: classic vanishing/exploding-gradient experiments, re-run and checked.

``gradhealth lab [NAME ...] [--quick]`` runs them (see :func:`run_lab`). Each experiment
is one module with ``NAME``, ``TITLE``, ``CITATION`` and ``run(ctx) -> Outcome``; they
are imported only when run, so ``import gradhealth.lab`` stays cheap (no matplotlib).
"""

from gradhealth.lab.experiment import run_lab
from gradhealth.lab.registry import EXPERIMENTS, load_experiment, resolve_names

__all__ = ["EXPERIMENTS", "load_experiment", "resolve_names", "run_lab"]
