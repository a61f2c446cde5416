"""Networks whose gradient pathology is a mathematical fact at initialisation.

Each ``Case`` builds a model and a batch (seeded, so it is the same every time) and
states what a correct diagnosis is: the finding kinds, and for localised findings the
module that must be named. Healthy controls expect no finding at all. The zoo backs the
tests, ``benchmarks/probe_accuracy.py``, ``gh.fix``'s acceptance and the demo.

``nets`` builds the networks, ``cases`` lists the cases, ``score`` scores a diagnosis.
"""

from __future__ import annotations

from gradhealth.zoo.cases import CASES, Case, case
from gradhealth.zoo.nets import mlp
from gradhealth.zoo.score import Score, matches, score

__all__ = ["CASES", "Case", "Score", "case", "matches", "mlp", "score"]
