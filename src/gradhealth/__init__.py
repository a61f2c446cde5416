"""gradhealth: find, explain and fix vanishing and exploding gradients in PyTorch models.

    import gradhealth as gh
    report = gh.probe(model, inputs, targets)   # name the sick layers, before training
    print(report)
    result = gh.fix(model, inputs, targets)     # apply the remedies, re-probe, prove it
    with gh.watch(model, optimizer=opt, store="run.db") as w:   # ~1% of the step time
        ...                                     # an ordinary training loop
    run = gh.load("run.db")                     # the run store, as numpy tables
    loss = loss + gh.z_loss(logits)             # PaLM's z-loss, a term of the loss

The package is laid out as the data flow (docs/architecture.md): ``measure`` ->
``rules`` -> ``store`` -> ``report``; ``fixes`` and ``clip`` act; ``training`` is the
machinery of ``watch``/``guard``; ``integrations``, ``lab``, ``cli`` and ``zoo`` sit on top.
"""

from gradhealth._fix import FixResult, fix
from gradhealth._probe import probe
from gradhealth._version import __version__
from gradhealth._watch import guard, watch
from gradhealth.clip import (
    AGC,
    AutoClip,
    ClipNorm,
    ClipNormPerParameter,
    ClipValue,
    ZClip,
)
from gradhealth.errors import GradHealthError
from gradhealth.fixes.change import Change
from gradhealth.fixes.z_loss import z_loss
from gradhealth.measure.layer import LayerStats
from gradhealth.report.report import Report
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy
from gradhealth.store.reader import Run, load
from gradhealth.store.writer import RunStore
from gradhealth.training.guard import Guard
from gradhealth.training.watch import Watch
from gradhealth.zoo.vision import install_import_guard

# torchvision's CUDA wheel beside a CPU torch: make its import (Hugging Face transformers
# imports it whenever it is installed) work; a no-op until torchvision is imported
install_import_guard()

__all__ = [
    "AGC",
    "AutoClip",
    "Change",
    "ClipNorm",
    "ClipNormPerParameter",
    "ClipValue",
    "Finding",
    "FixResult",
    "GradHealthError",
    "Guard",
    "LayerStats",
    "Remedy",
    "Report",
    "Run",
    "RunStore",
    "Watch",
    "ZClip",
    "__version__",
    "fix",
    "guard",
    "load",
    "probe",
    "watch",
    "z_loss",
]
