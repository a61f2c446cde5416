"""Weight initialisation remedies: Glorot, He, LeCun and orthogonal (LSUV: ``fixes.lsuv``).

Every function works in place on a whole model (all Linear / ConvNd / ConvTransposeNd
layers, or the qualified ``names=`` subset) or on a single layer, sets biases to zero,
and returns one ``Change`` per layer. ``torch.nn.init`` does the sampling; weights in
float16 / bfloat16 are drawn in float32 and copied, so the variance is exact before
rounding. Gains come from the activation that actually follows each layer
(``graph.following_activations``); ``Change.why`` says how it was found.

Fan conventions are torch's (``nn.init._calculate_fan_in_and_fan_out``): for a conv
kernel fan_in = in_channels/groups * kernel size. For ConvTranspose the weight is stored
(in, out/groups, k...), so torch's "fan_in" is out_channels/groups * k; we keep torch's
convention so results match ``nn.init`` exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import nn

from gradhealth.errors import ConfigError, FixRefusedError
from gradhealth.fixes.change import Change
from gradhealth.fixes.forward import require_module
from gradhealth.fixes.graph import FollowingActivation, following_activations
from gradhealth.fixes.ties import Ties, storage_key
from gradhealth.measure import catalog

__all__ = [
    "glorot_normal_", "glorot_uniform_", "he_normal_", "he_uniform_", "lecun_normal_",
    "identity_recurrent_", "orthogonal_",
]

_FAMILY_WORDS = {"relu": "ReLU", "tanh": "tanh", "sigmoid": "sigmoid"}
_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def glorot_uniform_(model: nn.Module, *, names: Iterable[str] | None = None,
                    gain: float | None = None, example_inputs: Any = None) -> list[Change]:
    """Glorot & Bengio 2010, eq. 16: W ~ U[+-gain sqrt(6/(fan_in+fan_out))].

    ``gain`` defaults to ``calculate_gain`` of the activation that follows each layer.
    """
    return _apply(model, names, example_inputs, "Glorot uniform (Glorot & Bengio 2010, eq. 16)",
                  lambda w, g: nn.init.xavier_uniform_(w, gain=g), gain, "linear")


def glorot_normal_(model: nn.Module, *, names: Iterable[str] | None = None,
                   gain: float | None = None, example_inputs: Any = None) -> list[Change]:
    """Glorot & Bengio 2010: W ~ N(0, gain^2 * 2/(fan_in+fan_out))."""
    return _apply(model, names, example_inputs, "Glorot normal (Glorot & Bengio 2010, eq. 16)",
                  lambda w, g: nn.init.xavier_normal_(w, gain=g), gain, "linear")


def he_uniform_(model: nn.Module, *, mode: str = "fan_in", names: Iterable[str] | None = None,
                example_inputs: Any = None) -> list[Change]:
    """He et al. 2015, sec. 2.2: Var(W) = 2/((1+a^2) fan), uniform; a = the following
    LeakyReLU / PReLU / RReLU slope (0 for ReLU). ``mode="fan_in"`` preserves the forward
    signal, ``mode="fan_out"`` the backward one (same section). Where no activation
    follows (output layer) the gain is 1; where it cannot be determined, ReLU is assumed,
    and the Change says so.
    """
    fan = _check_mode(mode)
    return _apply(model, names, example_inputs, f"He uniform, {mode} (He et al. 2015, sec. 2.2)",
                  lambda w, g: _scaled(w, g, fan, uniform=True), None, "relu")


def he_normal_(model: nn.Module, *, mode: str = "fan_in", names: Iterable[str] | None = None,
               example_inputs: Any = None) -> list[Change]:
    """He et al. 2015, sec. 2.2: W ~ N(0, 2/((1+a^2) fan)); see ``he_uniform_``."""
    fan = _check_mode(mode)
    return _apply(model, names, example_inputs, f"He normal, {mode} (He et al. 2015, sec. 2.2)",
                  lambda w, g: _scaled(w, g, fan, uniform=False), None, "relu")


def lecun_normal_(model: nn.Module, *, names: Iterable[str] | None = None) -> list[Change]:
    """LeCun et al. 1998 (Efficient BackProp, sec. 4.6): W ~ N(0, 1/fan_in).

    The partner of SELU (Klambauer et al. 2017, sec. "Initialization"). Plain normal, as
    in Klambauer et al.; Keras' ``lecun_normal`` truncates at 2 sigma.
    """
    return _apply(model, names, None, "LeCun normal (LeCun et al. 1998; Klambauer et al. 2017)",
                  lambda w, g: _scaled(w, 1.0, "fan_in", uniform=False), 1.0, "linear")


def orthogonal_(model: nn.Module, *, gain: float | None = None,
                recurrent_gain: float = 1.0, names: Iterable[str] | None = None,
                example_inputs: Any = None) -> list[Change]:
    """Saxe et al. 2013: orthogonal weights (all singular values = gain).

    Linear / Conv layers get ``gain`` (default: the gain of the following activation).
    RNN / LSTM / GRU modules get every gate block of ``weight_ih`` and ``weight_hh``
    orthogonal separately (LSTM 4 blocks, GRU 3), ``weight_hh`` with ``recurrent_gain``:
    for a linear recurrence h_t = W h_{t-1} with W = rho Q, ||dh_T/dh_0|| = rho^T
    (Pascanu et al. 2013), so 1.0 neither vanishes nor explodes. Biases are zero (an
    LSTM's forget gate: ``fixes.forget_bias_`` after this).
    """
    changes = _apply(model, names, example_inputs, "Orthogonal (Saxe et al. 2013)",
                     lambda w, g: nn.init.orthogonal_(w, gain=g), gain, "linear",
                     rnn=recurrent_gain)
    return changes


def identity_recurrent_(model: nn.Module, *, gain: float = 1.0,
                        names: Iterable[str] | None = None) -> list[Change]:
    """IRNN (Le, Jaitly & Hinton 2015): weight_hh = gain * I and zero biases, for ReLU RNNs.

    A ReLU recurrence with W_hh = I passes dL/dh_t back unchanged while units are active;
    a random orthogonal W_hh with ReLU loses about half the signal per step.
    """
    changes = []
    for name, module in targets(model, names, (nn.RNN,)):
        with torch.no_grad():
            for pname, param in module.named_parameters(recurse=False):
                if pname.startswith("weight_hh"):
                    write(param, lambda w: w.copy_(torch.eye(w.shape[0]) * gain))
                elif pname.startswith("bias"):
                    param.zero_()
        changes.append(Change(name, f"weight_hh = {gain:g} * I, biases = 0",
                              "IRNN init for ReLU recurrences (Le, Jaitly & Hinton 2015)"))
    return changes


Mode = Literal["fan_in", "fan_out"]


def _check_mode(mode: str) -> Mode:
    if mode == "fan_in":
        return "fan_in"
    if mode == "fan_out":
        return "fan_out"
    raise ConfigError(f"Expected mode 'fan_in' or 'fan_out', got {mode!r}.")


def _scaled(weight: torch.Tensor, gain: float, mode: Mode, uniform: bool) -> torch.Tensor:
    # kaiming_* with nonlinearity="linear" draws Var = 1/fan; the gain is applied here so
    # that every activation (tanh, leaky slope, selu...) goes through one formula.
    if uniform:
        nn.init.kaiming_uniform_(weight, mode=mode, nonlinearity="linear")
    else:
        nn.init.kaiming_normal_(weight, mode=mode, nonlinearity="linear")
    return weight.mul_(gain)


def gain_for(follow: FollowingActivation, assume: str) -> tuple[float, str]:
    """``calculate_gain`` for the following activation, and a phrase saying which.

    The gain is that of the kind's family (``catalog.gain_family``: ReLU6, CELU, ELU,
    GELU, ... take the ReLU gain, Hardtanh and Softsign tanh's, Hardsigmoid sigmoid's);
    softmax, linear and anything unknown get 1."""
    kind, slope = follow.kind, follow.slope
    if follow.how == "unknown" and kind == "linear":
        kind = assume
        where = f"assumed {assume}: the following activation could not be determined"
    else:
        where = (f"the {kind}" + (f" (slope {slope:.3g})" if slope is not None else "")
                 + f" that follows ({follow.how})" if kind != "linear"
                 else f"no activation follows ({follow.how})")
    family = catalog.gain_family(kind)
    if family == "leaky_relu":
        gain = nn.init.calculate_gain("leaky_relu", 0.01 if slope is None else slope)
    elif family is not None:
        gain = nn.init.calculate_gain(family)  # type: ignore[arg-type]  # a KINDS family
        if family != kind:
            where += f", {_FAMILY_WORDS[family]} gain"
    else:
        gain = 1.0
    return gain, where


def targets(model: nn.Module, names: Iterable[str] | None, types: tuple) -> list:
    """The (name, module) pairs of ``types`` a fix applies to: ``names``, or all of them."""
    require_module(model, "an init remedy")
    modules = dict(model.named_modules())
    if names is None:
        found = [(n, m) for n, m in modules.items() if _is(m, types)]
        if not found:
            raise FixRefusedError(
                f"Expected a model with Linear/Conv layers, got {type(model).__name__} "
                "with none; nothing to initialise. The model is unchanged.")
        return found
    names = list(names)
    for n in names:
        if n not in modules or not _is(modules[n], types):
            valid = [k for k, m in modules.items() if _is(m, types)]
            got = "no such module" if n not in modules else type(modules[n]).__name__
            raise ConfigError(f"Expected names of layers this fix applies to, got {n!r} "
                              f"({got}). Valid names: {valid[:20]}.")
    return [(n, modules[n]) for n in names]


def _is(module: nn.Module, types: tuple) -> bool:
    """``isinstance``, where Linear also stands for a transposed linear layer (Hugging
    Face's Conv1D, ``catalog.is_transposed_linear``)."""
    return isinstance(module, types) or (nn.Linear in types
                                         and catalog.is_transposed_linear(module))


def write(param: torch.Tensor, init: Callable[[torch.Tensor], Any],
          transposed: bool = False) -> None:
    """Initialise ``param`` in place; half-precision weights are drawn in float32.
    ``transposed``: the weight is stored (in, out), so ``init`` draws it in torch's
    (out, in) layout (its fans) and the transpose is written."""
    with torch.no_grad():
        if transposed or param.dtype in (torch.float16, torch.bfloat16):
            shape = param.t().shape if transposed else param.shape
            tmp = torch.empty(shape, dtype=torch.float32, device=param.device)
            if transposed:
                tmp.copy_(param.t())  # a rescaling init reads the current values
            init(tmp)
            param.copy_(tmp.t() if transposed else tmp)
        else:
            init(param)


def _apply(model, names, example_inputs, title, init, gain, assume, rnn=None) -> list[Change]:
    types = catalog.WEIGHT_LAYERS + ((nn.RNNBase,) if rnn is not None else ())
    chosen = targets(model, names, types)
    follows = following_activations(model, example_inputs) if gain is None else {}
    ties, done = Ties(model), set()
    changes = []
    for name, module in chosen:
        if isinstance(module, nn.RNNBase):
            changes.append(_init_rnn(name, module, init, 1.0 if gain is None else gain, rnn))
            continue
        key = storage_key(module.weight)
        if key in done:  # a tie is one parameter: drawn once, by the first layer holding it
            continue
        done.add(key)
        g, where = (gain, "gain given") if gain is not None else gain_for(
            follows.get(name, FollowingActivation(name, "linear", "unknown")), assume)
        write(module.weight, functools.partial(_swapped, init, g),
              transposed=catalog.is_transposed_linear(module))
        bias = ""
        if module.bias is not None:
            nn.init.zeros_(module.bias)
            bias = "; bias = 0"
        std = float(module.weight.detach().float().std())
        tied = ties.note(f"{name}.weight" if name else "weight", module.weight)
        changes.append(Change(name, f"weight re-drawn, std {std:.4g}{bias}{tied}",
                              f"{title}, gain {g:.4g}: {where}"))
    return changes


def _swapped(init: Callable[[torch.Tensor, float], Any], gain: float,
             weight: torch.Tensor) -> Any:
    """``init(weight, gain)``, with the gain bound first (``functools.partial``)."""
    return init(weight, gain)


def _init_rnn(name, module, init, gain, recurrent_gain) -> Change:
    blocks = _GATES.get(type(module), 1)
    with torch.no_grad():
        for pname, param in module.named_parameters(recurse=False):
            if pname.startswith("bias"):
                param.zero_()
                continue
            g = recurrent_gain if pname.startswith("weight_hh") else gain
            for block in param.chunk(1 if pname.startswith("weight_hr") else blocks, dim=0):
                write(block, functools.partial(_swapped, init, g))
    return Change(name, f"weight_ih / weight_hh orthogonal per gate block ({blocks}), "
                        f"recurrent gain {recurrent_gain:.4g}, input gain {gain:.4g}; biases = 0",
                  "Orthogonal recurrent init (Saxe et al. 2013; Pascanu et al. 2013: "
                  "||dh_T/dh_0|| = rho^T for W = rho Q)")
