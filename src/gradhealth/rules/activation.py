"""The activation that follows a group of weight layers, and the init remedy it calls for.

Which scheme (``rules/remedy.py``) fits which activation: He for ReLU, He with the slope
for Leaky ReLU/PReLU, LeCun for SELU, Glorot with the tanh gain for tanh, ReLU or a norm in
place of sigmoid (whose derivative is at most 1/4 whatever the init); the target scales
are in ``rules/wording_torch.py`` and docs/science.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gradhealth.measure import catalog
from gradhealth.measure.layer import LayerStats
from gradhealth.rules.remedy import Remedy


def following_activation(layers: Mapping[str, LayerStats], s: LayerStats) -> str | None:
    """The activation kind that follows weight layer ``s`` (None when not a module)."""
    after = s.activation_after and layers.get(s.activation_after)
    return after.activation if after else None


def dominant_activation(layers: Mapping[str, LayerStats],
                        group: Sequence[LayerStats]) -> str | None:
    kinds = [following_activation(layers, s) for s in group]
    kinds = [k for k in kinds if k]
    return max(set(kinds), key=kinds.count) if kinds else None


def init_scale(group: Sequence[LayerStats]) -> float | None:
    """The median fan_in*Var(W) over the group (None when no layer has one)."""
    scales = sorted(s.weight_var_fan_in for s in group if s.weight_var_fan_in is not None)
    return scales[len(scales) // 2] if scales else None


def init_remedy(kind: str | None, group: Sequence[LayerStats], direction: str,
                then: Sequence[Remedy] = ()) -> Remedy:
    """The initialisation remedy for weight layers ``group`` followed by activation ``kind``
    whose gradient they ``direction`` ("shrink" or "amplify"); ``then``: further steps."""
    layers, then = tuple(s.name for s in group), tuple(then)
    scale = {"fan_in_var": init_scale(group)}
    if kind in ("relu", "relu6"):
        return Remedy("he", layers, scale, then)
    if kind in ("leaky_relu", "prelu", "rrelu"):
        return Remedy("leaky-he", layers, scale, then)  # the slope is not measured
    if kind == "selu":
        return Remedy("lecun", layers, scale, then)
    if kind in ("tanh", "softsign"):
        return Remedy("glorot-tanh", layers, {**scale, "activation": kind}, then)
    if kind in ("sigmoid", "hardsigmoid"):
        return Remedy("replace-sigmoid", layers, {"activation": kind, "direction": direction},
                      then)
    if catalog.gain_family(kind) in ("relu", "leaky_relu"):  # ReLU-shaped for z >> 0
        return Remedy("he-or-norm", layers, {**scale, "activation": kind}, then)
    return Remedy("variance-preserving", layers, {**scale, "activation": kind}, then)
