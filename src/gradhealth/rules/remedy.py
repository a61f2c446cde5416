"""``Remedy``: what to change, as data; ``render`` words it for PyTorch or for Keras.

A rule says *what* to change: a scheme from the closed set ``SCHEMES``, the layers it
applies to (qualified names) and its parameters (the measured fan_in*Var(W), a slope, a
clip threshold, a step). The wording modules say *how*, each in its framework's own
terms (``wording_torch``, ``wording_keras``): a PyTorch user reads ``kaiming_normal_``
where a Keras user reads ``kernel_initializer="he_normal"``, and neither text is
rewritten from the other, so a change of wording in one cannot silently break the other.

A scheme's wording may offer alternatives (He init *or* a normalisation layer): they are
one change seen from several sides and are worded together. Separate changes to make in
turn (re-initialise, and clip until then) are separate remedies, chained in ``then``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gradhealth.errors import ConfigError
from gradhealth.rules import wording_keras, wording_torch

SCHEMES: dict[str, frozenset[str]] = {
    name: frozenset(params) for name, params in {
        # initialisation for the activation that follows the layers (rules/activation.py)
        "he": ("fan_in_var",),  # ReLU: fan_in*Var(W) = 2
        "leaky-he": ("fan_in_var", "slope"),  # Leaky ReLU/PReLU slope a: 2/(1+a^2)
        "lecun": ("fan_in_var",),  # SELU: 1
        "glorot-tanh": ("fan_in_var", "activation"),  # Glorot with the tanh gain; or BN
        "replace-sigmoid": ("activation", "direction"),  # ReLU + He, or BN before it
        "he-or-norm": ("fan_in_var", "activation"),  # other rectifiers: He, or a norm
        "variance-preserving": ("fan_in_var", "activation"),  # activation unknown
        # saturated and dead activations
        "desaturate": ("fan_in_var", "activation"),  # Glorot, BN before it, or ReLU/ELU
        "revive": ("activation_layer", "slope"),  # He + zero bias, or a leaky activation
        # recurrence
        # LSTM/GRU, orthogonal, truncated BPTT; cell: "lstm", "gru" or "rnn" (None: unknown)
        "gate-recurrence": ("forget_bias", "cell", "steps"),
        "orthogonal-recurrent": ("gain",),
        # steps of training
        "clip-global-norm": ("max_norm", "stopgap"),  # stopgap: until another fix lands
        "clip-spikes": ("series", "step", "typical_norm"),
        "guard": ("on", "names_producer"),  # on: "non-finite" or "spike"
        "release": ("step", "skips"),  # the guard let a spike through after many skips
        "diverged": ("step",),  # the loss left its level at step for good: restart before it
        # non-finite values
        # layers: the producer (none: the model as a whole); the operation and where it
        # is called, when a replay recorded it (measure/operations.py)
        "nonfinite-forward": ("operation", "where"),
        # layers: the producer (none: the loss function); the node a replay recorded
        "nonfinite-backward": ("operation", "where"),
        "nonfinite-loss": (),
        # layers: the module whose own parameters hold NaN/Inf; count: how many entries
        "nonfinite-parameter": ("count",),
        "nonfinite-batch": ("part", "arguments"),  # part: "inputs" or "targets"
        "replay-missed": ("step",),
        "amp-float32": ("loss_scale",),
        # transformer-era instabilities (docs/science.md#transformer-era-instabilities)
        "qk-layernorm": ("logit_max", "entropy_fraction"),  # or a lower lr, longer warm-up
        "z-loss": ("coef", "log_z"),
        "adam-epsilon": ("eps", "grad_rms", "suggested"),
        "update-ratio": ("ratio", "threshold", "median"),  # lower the (layer's) lr
        # the probe could not see: a zero head passes no gradient to the body
        "probe-zero-head": ("measured",),  # measured: the body was judged via a random head
    }.items()
}
"""Every scheme a rule may prescribe, with the parameters it takes."""

WORDINGS = {"torch": wording_torch.WORDING, "keras": wording_keras.WORDING}
FRAMEWORKS = tuple(WORDINGS)


@dataclass(frozen=True)
class Remedy:
    """One change to make: ``scheme`` applied to ``layers`` with ``params``; ``then``: the
    further remedies to apply after it, in order. A parameter left out is unknown."""

    scheme: str
    layers: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    then: tuple[Remedy, ...] = ()

    def __post_init__(self):
        allowed = SCHEMES.get(self.scheme)
        if allowed is None:
            raise ValueError(f"unknown remedy scheme {self.scheme!r}; one of {sorted(SCHEMES)}")
        unknown = set(self.params) - allowed
        if unknown:
            raise ValueError(f"remedy {self.scheme!r} takes {sorted(allowed)}, "
                             f"not {sorted(unknown)}")
        # copies, so the frozen remedy cannot change through the caller's containers
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "then", tuple(self.then))


def render(remedy: Remedy, framework: str = "torch") -> str:
    """``remedy`` worded for ``framework`` ("torch" or "keras"), its ``then`` steps after it."""
    wording = WORDINGS.get(framework)
    if wording is None:
        raise ConfigError(f"no remedy wording for {framework!r}; one of {list(FRAMEWORKS)}")
    text = wording[remedy.scheme](remedy.layers, remedy.params)
    return " ".join([text] + [render(step, framework) for step in remedy.then])
