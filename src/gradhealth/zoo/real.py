"""The real-architecture zoo: everyday architectures, healthy and made sick.

``HEALTHY`` (from ``zoo.everyday``) are architectures people train, at their library's
default initialisation: no finding expected. ``SICK`` (from ``zoo.ailing``) are the same
kinds of model with a pathology whose label was verified numerically by the zoo's own
code (``zoo.ailing``). Each is a ``zoo.Case``: ``build()`` returns ``(model, inputs,
targets)`` for ``gh.probe(model, inputs, targets)`` (``targets`` None where the model
returns its own loss), ``expected`` the findings (kind, module), ``healthy`` whether it is
a control. Needs torchvision and transformers (the ``test`` extra).
"""

from __future__ import annotations

from gradhealth.zoo.cases import Case
from gradhealth.zoo.everyday import BUILDERS

HEALTHY: tuple[Case, ...] = tuple(
    Case(name, build, frozenset(), why, tags=("real",))
    for name, (build, why) in BUILDERS.items())
SICK: tuple[Case, ...] = ()
REAL_CASES: tuple[Case, ...] = HEALTHY + SICK


def real_case(name: str) -> Case:
    for c in REAL_CASES:
        if c.name == name:
            return c
    raise KeyError(f"no real-zoo case {name!r}; known: {', '.join(c.name for c in REAL_CASES)}")
