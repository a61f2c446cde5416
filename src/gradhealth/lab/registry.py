"""The lab's experiments by name, in the order ``gradhealth lab`` runs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from gradhealth.errors import ConfigError

__all__ = ["EXPERIMENTS", "load_experiment", "resolve_names"]

#: Experiment name -> module, in the order ``gradhealth lab`` runs them.
EXPERIMENTS: dict[str, str] = {
    "article": "gradhealth.lab.article",
    "glorot2010": "gradhealth.lab.glorot2010",
    "he2015": "gradhealth.lab.he2015",
    "activations": "gradhealth.lab.activations",
    "batchnorm": "gradhealth.lab.batchnorm",
    "pascanu2013": "gradhealth.lab.pascanu2013",
    "edge-of-chaos": "gradhealth.lab.edge_of_chaos",
    "wortsman2023": "gradhealth.lab.wortsman2023",
}


def resolve_names(names: list[str] | None) -> list[str]:
    """The experiments to run, in registry order; all of them when ``names`` is empty."""
    if not names:
        return list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ConfigError(
            f"expected an experiment name among {', '.join(EXPERIMENTS)}; got "
            f"{', '.join(repr(n) for n in unknown)}. Run `gradhealth lab --list` to see them.")
    return [n for n in EXPERIMENTS if n in names]


def load_experiment(name: str) -> ModuleType:
    return importlib.import_module(EXPERIMENTS[resolve_names([name])[0]])
