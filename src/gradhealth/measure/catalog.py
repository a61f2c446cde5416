"""The module vocabulary: what kind of thing a module, a function or a layer is.

One table of nonlinearity kinds serves the probe (role, activation kind, saturation band,
rectifier, pass-through), the fixes (which nonlinearity follows a layer, its
initialisation gain) and the Keras integration (which maps its layers and activation
functions onto these kinds). The kinds are the fine ones: ``nn.ReLU6`` is ``"relu6"``,
``nn.CELU`` ``"celu"``, ``nn.Hardsigmoid`` ``"hardsigmoid"``; where a consumer wants a
coarser family it asks for it here (``gain_family``: ReLU6 takes the ReLU gain), so two
consumers can never name one module differently. Softmax is a kind (a layer feeding it
takes no gain, and no activation swap touches it) but not an *activation*: it is not
elementwise, so the probe gives it no activation role, band or percentiles.

Modules that are not listed here are still measured (output and gradient statistics);
the catalog only adds the type-specific numbers (saturation, dead units) and the words
used in remedies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Saturation bands (docs/science.md#saturation-bands). Glorot & Bengio 2010, Sec. 3.1 and
# Fig. 2: sigmoid units pinned near 0 or 1 pass almost no gradient; we take "output <
# ~0.02 or > ~0.98" for the sigmoid (derivative <= 0.0196, under 8% of its maximum 0.25)
# and |y| > ~0.98 for tanh (derivative 1 - y^2 <= 0.04, 4% of its maximum).
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


@dataclass(frozen=True)
class Kind:
    """What gradhealth knows of one nonlinearity kind.

    ``gain``: the ``torch.nn.init.calculate_gain`` nonlinearity whose gain suits it (None:
    gain 1). ELU, CELU, GELU, SiLU, Mish, Hardswish and Softplus behave like ReLU for
    z >> 0 and are small for z << 0, the half-rectified shape from which He et al. 2015
    (sec. 2.2) derive sqrt(2); Hardtanh and Softsign are tanh-shaped, Hardsigmoid
    sigmoid-shaped. ``band``: the saturated region of its output. ``rectifier``: its
    units can die (output exactly 0, zero derivative, for every input). ``elementwise``:
    False for softmax, which is an output nonlinearity rather than an activation.
    """

    gain: str | None
    band: Band | None = None
    rectifier: bool = False
    elementwise: bool = True


KINDS: dict[str, Kind] = {
    "relu": Kind("relu", rectifier=True),
    # the upper plateau; the lower one is the rectifier's zero
    "relu6": Kind("relu", Band(None, 6.0), rectifier=True),
    "leaky_relu": Kind("leaky_relu"), "rrelu": Kind("leaky_relu"), "prelu": Kind("leaky_relu"),
    "elu": Kind("relu"), "celu": Kind("relu"), "selu": Kind("selu"), "gelu": Kind("relu"),
    "silu": Kind("relu"), "mish": Kind("relu"), "hardswish": Kind("relu"),
    "softplus": Kind("relu"),
    "sigmoid": Kind("sigmoid", Band(SIGMOID_SATURATION_LOW, SIGMOID_SATURATION_HIGH)),
    "hardsigmoid": Kind("sigmoid", Band(0.0, 1.0)),  # exactly flat outside [-3, 3]
    "tanh": Kind("tanh", Band(-TANH_SATURATION, TANH_SATURATION)),
    "hardtanh": Kind("tanh", Band(-1.0, 1.0)),  # a module's own bounds: ``band``
    "softsign": Kind("tanh", Band(-SOFTSIGN_SATURATION, SOFTSIGN_SATURATION)),
    "softmax": Kind(None, elementwise=False),
}
RECTIFIERS = frozenset(k for k, v in KINDS.items() if v.rectifier)

# torch modules, subclasses before their bases (ReLU6 subclasses Hardtanh)
_MODULES: tuple[tuple[type, str], ...] = (
    (nn.ReLU6, "relu6"), (nn.ReLU, "relu"), (nn.LeakyReLU, "leaky_relu"), (nn.RReLU, "rrelu"),
    (nn.PReLU, "prelu"), (nn.ELU, "elu"), (nn.SELU, "selu"), (nn.CELU, "celu"),
    (nn.GELU, "gelu"), (nn.SiLU, "silu"), (nn.Mish, "mish"), (nn.Sigmoid, "sigmoid"),
    (nn.Tanh, "tanh"), (nn.Hardtanh, "hardtanh"), (nn.Softsign, "softsign"),
    (nn.Hardsigmoid, "hardsigmoid"), (nn.Hardswish, "hardswish"), (nn.Softplus, "softplus"),
    (nn.Softmax, "softmax"), (nn.LogSoftmax, "softmax"),
)
_CLASS_NAMES = {cls.__name__: kind for cls, kind in _MODULES}
# Hugging Face's activation modules (transformers.activations, ACT2FN): not torch
# subclasses, so known by their class names (GPT-2's NewGELUActivation, BERT's
# GELUActivation, ...): the same shapes as torch's GELU, SiLU, Mish, ReLU, sigmoid, tanh.
_OTHER_CLASSES = {
    **{name: "gelu" for name in ("NewGELUActivation", "GELUActivation", "FastGELUActivation",
                                 "QuickGELUActivation", "AccurateGELUActivation",
                                 "ClippedGELUActivation", "GELUTanh", "PytorchGELUTanh",
                                 "GELUTanhActivation")},
    "SiLUActivation": "silu", "MishActivation": "mish",
}
# Functions by ``__name__``: F.relu, torch.relu and Tensor.relu share theirs (a trailing _
# is the in-place form); then the names Keras gives the same functions.
_FUNCTIONS = {
    **{name: name for name in ("relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "celu",
                               "selu", "gelu", "silu", "mish", "softplus", "sigmoid", "tanh",
                               "hardtanh", "softsign", "hardsigmoid", "hardswish", "softmax")},
    **{f"{name}_": name for name in ("relu", "leaky_relu", "rrelu", "elu", "celu", "selu",
                                     "sigmoid", "tanh", "hardtanh")},
    "log_softmax": "softmax",
    "swish": "silu", "hard_tanh": "hardtanh", "hard_sigmoid": "hardsigmoid",
    "hard_silu": "hardswish", "hard_swish": "hardswish",
}

NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())  # RMSNorm arrived in torch 2.4
PASS_THROUGH = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                nn.FeatureAlphaDropout, nn.Identity, nn.Flatten, nn.Unflatten)
"""Shape-only or elementwise-noise modules (concrete classes: rules read their names)."""
POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
         nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd)
NEUTRAL = NORMS + PASS_THROUGH + POOLS
"""What the fixes look through for the nonlinearity a layer feeds: pooling as well, as it
commutes with monotone activations (the probe's ``activation_after`` does not)."""
NEUTRAL_FUNCTIONS = frozenset({
    "__get__", "size", "dim", "numel", "view", "reshape", "flatten", "contiguous",
    "squeeze", "unsqueeze", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "batch_norm", "layer_norm", "group_norm",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    # A residual sum feeds the same nonlinearity as the branch (ResNet: conv-bn-add-relu).
    "add", "add_", "__add__", "__iadd__", "__radd__",
})
RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)
LOOKUPS = (nn.Embedding, nn.EmbeddingBag)
"""Tables read by index: no input gradient, no fan-in (docs/science.md#embeddings)."""
CONVS = (nn.modules.conv._ConvNd,)
WEIGHT_LAYERS = (nn.Linear,) + CONVS
"""The layers the fixes initialise and look after (Linear, ConvNd, ConvTransposeNd)."""


_KIND_OF_CLASS: dict[type, str | None] = {}  # isinstance depends on the class only


def module_kind(module: nn.Module) -> str | None:
    """The nonlinearity kind of a module (softmax included), None for anything else."""
    cls = type(module)
    if cls in _KIND_OF_CLASS:
        return _KIND_OF_CLASS[cls]
    found = next((kind for base, kind in _MODULES if isinstance(module, base)),
                 _OTHER_CLASSES.get(cls.__name__))
    _KIND_OF_CLASS[cls] = found
    return found


def function_kind(name: str) -> str | None:
    """The kind of an activation function by its ``__name__`` (torch's or Keras's)."""
    return _FUNCTIONS.get(name)


def class_kind(name: str) -> str | None:
    """The kind of an activation class by its name ("LeakyReLU": Keras uses torch's names)."""
    return _CLASS_NAMES.get(name)


def as_activation(kind: str | None) -> str | None:
    """``kind`` if it is an elementwise activation (the probe's "activation" role)."""
    return kind if kind is not None and KINDS[kind].elementwise else None


def activation_kind(module: nn.Module) -> str | None:
    """A short name for an activation module ("relu", "tanh", ...), None for anything else
    (softmax included: see the module docstring)."""
    return as_activation(module_kind(module))


def slope(module: nn.Module) -> float | None:
    """The negative slope: LeakyReLU's, PReLU's current mean, RReLU's evaluation slope
    (l+u)/2 (Xu et al. 2015, sec. 2); None for other modules."""
    if isinstance(module, nn.LeakyReLU):
        return float(module.negative_slope)
    if isinstance(module, nn.PReLU):
        return float(module.weight.detach().float().mean())
    if isinstance(module, nn.RReLU):
        return (module.lower + module.upper) / 2
    return None


def gain_family(kind: str | None) -> str | None:
    """The ``calculate_gain`` nonlinearity for ``kind`` (None: gain 1, or unknown)."""
    found = KINDS.get(kind) if kind is not None else None
    return found.gain if found is not None else None


def band(kind: str | None, low: float | None = None, high: float | None = None) -> Band | None:
    """The saturated region of a ``kind`` activation's output, or None if not bounded.

    ``low``/``high``: the bounds of a hardtanh (nn.Hardtanh(min_val, max_val)), or the
    ``high`` of a ReLU clipped there (Keras's ReLU(max_value=...)).
    """
    if kind == "hardtanh" and low is not None and high is not None:
        return Band(low, high)
    if kind == "relu" and high is not None:
        return Band(None, high)
    found = KINDS.get(kind) if kind is not None else None
    return found.band if found is not None and found.elementwise else None


def saturation_band(module: nn.Module) -> Band | None:
    """The saturated region of a bounded activation module's output, or None."""
    kind = activation_kind(module)
    if kind == "hardtanh":
        return band(kind, getattr(module, "min_val", None), getattr(module, "max_val", None))
    return band(kind)


_NORM_EPS = ("eps", "variance_epsilon", "epsilon")
_NORM_NAMES = ("Norm", "LayerNorm", "RMSNorm")


def is_norm(module: nn.Module) -> bool:
    """torch's normalisations, and those of other libraries by behaviour: a leaf whose
    class name says Norm, holding an epsilon (``eps``, ``variance_epsilon``: Hugging
    Face's ``LlamaRMSNorm``, ``T5LayerNorm``) and at most a 1-D scale and shift - the shape
    of x / RMS(x) * g (+ b), never a weight matrix (docs/science.md#hugging-face-layers)."""
    if isinstance(module, NORMS):
        return True
    if not type(module).__name__.endswith(_NORM_NAMES) or any(True for _ in module.children()):
        return False
    if not any(isinstance(getattr(module, e, None), (int, float)) for e in _NORM_EPS):
        return False
    return all(p.dim() <= 1 for p in module.parameters(recurse=False))


def is_transposed_linear(module: nn.Module) -> bool:
    """A linear layer that stores its weight as (in, out) and computes x @ W + b: Hugging
    Face's ``Conv1D`` (GPT-2), known by behaviour - a leaf whose parameters are a 2-D
    ``weight`` and a 1-D ``bias`` the length of the weight's second dimension (the
    output's), and not the first's (docs/science.md#hugging-face-layers)."""
    if isinstance(module, (nn.Linear,) + CONVS + LOOKUPS + RECURRENT) or any(
            True for _ in module.children()):
        return False
    params = dict(module.named_parameters(recurse=False))
    weight, bias = params.get("weight"), params.get("bias")
    if set(params) != {"weight", "bias"} or weight is None or bias is None:
        return False
    if weight.dim() != 2 or bias.dim() != 1:
        return False
    out = getattr(module, "nf", None)  # Conv1D's own record of the output width
    if out is not None:
        return out == weight.shape[1] == bias.shape[0]
    return bias.shape[0] == weight.shape[1] != weight.shape[0]


def is_weight_layer(module: nn.Module) -> bool:
    """A layer the fixes initialise: Linear, ConvNd, ConvTransposeNd, or a transposed
    linear layer (``is_transposed_linear``)."""
    return isinstance(module, WEIGHT_LAYERS) or is_transposed_linear(module)


def weight_as_linear(module: nn.Module) -> torch.Tensor | None:
    """The module's weight in torch's (out, in, ...) layout (a view: a transposed linear
    layer's weight transposed back), None if it has no weight of 2 or more dimensions."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return None
    return weight.t() if is_transposed_linear(module) else weight


def is_pass_through(module: nn.Module) -> bool:
    return isinstance(module, PASS_THROUGH) or is_norm(module)


def role(*, recurrent: bool, norm: bool, activation: bool, container: bool,
            params: bool) -> str:
    """The role of a measured thing, the most specific first: a norm with parameters is a
    norm, an activation with parameters (PReLU) an activation."""
    if recurrent:
        return "recurrent"
    if norm:
        return "norm"
    if activation:
        return "activation"
    if container:
        return "container"
    return "layer" if params else "other"

