"""What gradhealth knows about module types: bounded activations, rectifiers, norms.

Modules that are not listed here are still measured (output and gradient statistics);
the catalog only adds the type-specific numbers (saturation, dead units) and the words
used in remedies.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Saturation bands. Glorot & Bengio 2010, Sec. 3.1 and Fig. 2: sigmoid units pinned near
# 0 or 1 pass almost no gradient; SCIENCE.md takes "output < ~0.02 or > ~0.98" for the
# sigmoid (derivative <= 0.0196, under 8% of its maximum 0.25) and |y| > ~0.98 for tanh
# (derivative 1 - y^2 <= 0.04, 4% of its maximum).
SIGMOID_SATURATION_LOW = 0.02
SIGMOID_SATURATION_HIGH = 0.98
TANH_SATURATION = 0.98
# Softsign's derivative is (1 - |y|)^2, so |y| > 0.8 already passes under 4% of the maximum
# (Glorot & Bengio 2010, Sec. 3.3 compare softsign's milder saturation with tanh's).
SOFTSIGN_SATURATION = 0.8


@dataclass(frozen=True)
class Band:
    """Outputs y with y <= low or y >= high count as saturated (None: no bound on that side)."""

    low: float | None
    high: float | None


def saturation_band(module: nn.Module) -> Band | None:
    """The saturated region of a bounded activation's output, or None if not bounded."""
    if isinstance(module, nn.Sigmoid):
        return Band(SIGMOID_SATURATION_LOW, SIGMOID_SATURATION_HIGH)
    if isinstance(module, nn.Tanh):
        return Band(-TANH_SATURATION, TANH_SATURATION)
    if isinstance(module, nn.Softsign):
        return Band(-SOFTSIGN_SATURATION, SOFTSIGN_SATURATION)
    if isinstance(module, nn.Hardsigmoid):
        return Band(0.0, 1.0)  # exactly flat outside [-3, 3]
    if isinstance(module, nn.ReLU6):
        return Band(None, 6.0)  # upper plateau; the lower one is the rectifier's zero
    if isinstance(module, nn.Hardtanh):  # after ReLU6, which subclasses it
        return Band(module.min_val, module.max_val)
    return None


RECTIFIERS = (nn.ReLU, nn.ReLU6)
"""Activations whose units can die: output exactly 0 (zero derivative) for every input."""

NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())  # RMSNorm arrived in torch 2.4
PASS_THROUGH = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                nn.Identity, nn.Flatten, nn.Unflatten)
RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)
CONVS = (nn.modules.conv._ConvNd,)

_ACTIVATION_NAMES: tuple[tuple[type, str], ...] = (
    (nn.ReLU6, "relu6"),
    (nn.ReLU, "relu"),
    (nn.LeakyReLU, "leaky_relu"),
    (nn.RReLU, "rrelu"),
    (nn.PReLU, "prelu"),
    (nn.ELU, "elu"),
    (nn.SELU, "selu"),
    (nn.CELU, "celu"),
    (nn.GELU, "gelu"),
    (nn.SiLU, "silu"),
    (nn.Mish, "mish"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Tanh, "tanh"),
    (nn.Hardtanh, "hardtanh"),
    (nn.Softsign, "softsign"),
    (nn.Hardsigmoid, "hardsigmoid"),
    (nn.Hardswish, "hardswish"),
    (nn.Softplus, "softplus"),
)


def activation_kind(module: nn.Module) -> str | None:
    """A short name for an activation module ("relu", "tanh", ...), None for anything else."""
    for cls, name in _ACTIVATION_NAMES:
        if isinstance(module, cls):
            return name
    return None


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORMS)


def is_pass_through(module: nn.Module) -> bool:
    return isinstance(module, PASS_THROUGH) or is_norm(module)
