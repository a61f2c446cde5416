"""Remedy wording: what to change, concretely, for the activation that follows a layer.

Target scales (fan_in * Var(W)) from SCIENCE.md: He 2 for ReLU (He et al. 2015, Eq. 10),
2/(1+a^2) for Leaky ReLU/PReLU with slope a, LeCun 1 for SELU (Klambauer et al. 2017),
Glorot 2*fan_in/(fan_in+fan_out) times gain^2 for tanh (Glorot & Bengio 2010, Eq. 16;
gain 5/3 from ``torch.nn.init.calculate_gain``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from gradhealth.measure.layer import LayerStats

RECTIFIER_LIKE = {"relu", "relu6", "leaky_relu", "rrelu", "prelu", "elu", "celu", "gelu",
                  "silu", "mish", "hardswish", "softplus"}


def following_activation(layers: Mapping[str, LayerStats], s: LayerStats) -> str | None:
    """The activation kind that follows weight layer ``s`` (None when not a module)."""
    after = s.activation_after and layers.get(s.activation_after)
    return after.activation if after else None


def dominant_activation(layers: Mapping[str, LayerStats], group: Sequence[LayerStats]) -> str | None:
    kinds = [following_activation(layers, s) for s in group]
    kinds = [k for k in kinds if k]
    return max(set(kinds), key=kinds.count) if kinds else None


def names(group: Sequence[LayerStats], limit: int = 4) -> str:
    shown = [f"`{s.name}`" for s in group[:limit]]
    more = len(group) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def init_scale(group: Sequence[LayerStats]) -> float | None:
    scales = sorted(s.weight_var_fan_in for s in group if s.weight_var_fan_in is not None)
    return scales[len(scales) // 2] if scales else None


def init_remedy(kind: str | None, group: Sequence[LayerStats], direction: str) -> str:
    """Initialisation advice for a group of weight layers followed by activation ``kind``."""
    where = names(group)
    scale = init_scale(group)
    measured = f" (measured fan_in*Var(W) = {scale:.3g})" if scale is not None else ""
    if kind in ("relu", "relu6"):
        return (f"Re-initialise {where} with He init{measured}, target 2: "
                f"torch.nn.init.kaiming_normal_(layer.weight, mode='fan_in', "
                f"nonlinearity='relu') and zero biases.")
    if kind in ("leaky_relu", "prelu", "rrelu"):
        return (f"Re-initialise {where} with He init for the negative slope a{measured}, "
                f"target 2/(1+a^2): torch.nn.init.kaiming_normal_(layer.weight, a=a, "
                f"nonlinearity='leaky_relu').")
    if kind == "selu":
        return (f"Re-initialise {where} with LeCun normal init{measured}, target 1 (SELU "
                f"self-normalises only with it): torch.nn.init.kaiming_normal_(layer.weight,"
                f" nonlinearity='linear').")
    if kind in ("tanh", "softsign"):
        return (f"Re-initialise {where} with Glorot (Xavier) init and the tanh gain"
                f"{measured}: torch.nn.init.xavier_normal_(layer.weight, "
                f"gain=torch.nn.init.calculate_gain('tanh')), or orthogonal init; if the net "
                f"is very deep, insert nn.BatchNorm1d after each of these layers, before tanh.")
    if kind in ("sigmoid", "hardsigmoid"):
        return (f"Sigmoid units {direction} the gradient whatever the init (derivative at "
                f"most 1/4, Glorot & Bengio 2010): replace nn.Sigmoid after {where} with "
                f"nn.ReLU and He init (torch.nn.init.kaiming_normal_(w, nonlinearity='relu'))"
                f", or insert nn.BatchNorm1d after each of these layers, before the sigmoid "
                f"(Ioffe & Szegedy 2015).")
    if kind in RECTIFIER_LIKE:
        return (f"Re-initialise {where} with He init{measured} "
                f"(torch.nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')) or insert "
                f"a normalisation layer (nn.BatchNorm1d / nn.LayerNorm) after each of them.")
    return (f"Use the variance-preserving init for the activation after {where}{measured}: "
            f"He for ReLU-like, Glorot for tanh, LeCun for SELU (torch.nn.init), or insert a "
            f"normalisation layer (nn.BatchNorm1d / nn.LayerNorm) after each of them.")
