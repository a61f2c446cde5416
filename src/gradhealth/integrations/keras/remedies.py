"""Remedies in Keras terms: ``keras_finding(finding)`` and ``keras_remedy(finding)``.

The rules build every remedy as data (``gradhealth.rules.remedy.Remedy``) and word it for
PyTorch and for Keras from that data (``rules/wording_torch.py``, ``rules/wording_keras.py``);
here the Keras wording is picked. Nothing is rewritten from the PyTorch text.
"""

from __future__ import annotations

from gradhealth.errors import ConfigError
from gradhealth.rules.finding import Finding, worded
from gradhealth.rules.remedy import Remedy, render


def keras_finding(finding: Finding) -> Finding:
    """``finding`` with its remedy worded for Keras (a new Finding; the input is frozen).
    A finding without a prescription (read back from a run store) is returned unchanged."""
    return worded(finding, "keras")


def keras_remedy(remedy: Finding | Remedy) -> str:
    """The Keras wording of a finding's remedy, or of a ``Remedy``.

    Text is refused: remedies are worded from their data, and a PyTorch sentence cannot be
    turned back into it; pass the ``Finding`` (or its ``prescription``) instead.
    """
    if isinstance(remedy, Finding):
        return keras_finding(remedy).remedy
    if isinstance(remedy, Remedy):
        return render(remedy, "keras")
    raise ConfigError(f"keras_remedy takes a Finding or a Remedy, not {type(remedy).__name__}:"
                      f" pass the Finding whose remedy you want in Keras terms (its "
                      f".prescription holds the remedy as data)")
