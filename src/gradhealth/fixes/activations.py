"""Activation swap: replace saturating or dying activation modules, keeping their names.

Sigmoid and tanh saturate (Glorot & Bengio 2010, sec. 3); ReLU units can die (a unit
at 0 for every input passes no gradient). Non-saturating replacements:

- ``"leaky_relu"``: slope ``slope`` for z < 0 (Maas et al. 2013; torch default 0.01).
- ``"rrelu"``: slope ~ U(lower, upper) in training, (lower+upper)/2 in evaluation;
  defaults 1/8 and 1/3 (Xu et al. 2015, sec. 2, "Randomized Leaky ReLU").
- ``"prelu"``: learned slope initialised at 0.25 (He et al. 2015, sec. 2.1), shared or
  one per channel; keep it out of weight decay (same section).
- ``"elu"``: alpha (exp(z) - 1) for z < 0 (Clevert et al. 2015), alpha default 1.0.
- ``"selu"``: self-normalising (Klambauer et al. 2017); needs LeCun normal weights, so
  the layers feeding a new SELU are re-initialised with ``lecun_normal_``.
- ``"gelu"`` (Hendrycks & Gimpel 2016) and ``"relu"``.

Functional activations (``F.relu(x)`` inside ``forward``) cannot be replaced by module
surgery; they are detected with ``graph.following_activations`` and refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from gradhealth.errors import ConfigError, FixRefusedError
from gradhealth.fixes.change import Change
from gradhealth.fixes.forward import require_module
from gradhealth.fixes.graph import activation_kind, following_activations
from gradhealth.fixes.init import lecun_normal_

__all__ = ["swap_activations_"]

TARGETS = ("leaky_relu", "rrelu", "prelu", "elu", "selu", "gelu", "relu")
_WHY = {
    "leaky_relu": "non-saturating and never fully dead: slope {slope} for z < 0 (Maas et al. 2013)",
    "rrelu": "randomized leaky slope ~ U({lower:.4g}, {upper:.4g}), fixed at the mean in eval "
             "(Xu et al. 2015, sec. 2)",
    "prelu": "learned negative slope, init {init} (He et al. 2015, sec. 2.1); exclude it from "
             "weight decay and add the new parameter to the optimizer",
    "elu": "non-saturating for z > 0, smooth negative part alpha (exp(z)-1) (Clevert et al. 2015)",
    "selu": "self-normalising activation (Klambauer et al. 2017); the layers feeding it get LeCun "
            "normal init; replace Dropout by AlphaDropout",
    "gelu": "smooth, non-saturating for z > 0 (Hendrycks & Gimpel 2016)",
    "relu": "non-saturating for z > 0 (Nair & Hinton 2010; Glorot et al. 2011)",
}


def swap_activations_(
    model: nn.Module,
    to: str = "leaky_relu",
    *,
    from_: Iterable[str] = ("relu", "relu6", "sigmoid", "hardsigmoid", "tanh"),
    slope: float = 0.01,
    lower: float = 1.0 / 8,
    upper: float = 1.0 / 3,
    init: float = 0.25,
    per_channel: bool = False,
    alpha: float = 1.0,
    names: Iterable[str] | None = None,
    example_inputs: Any = None,
) -> list[Change]:
    """Replace activation modules of the kinds in ``from_`` by ``to``, in place.

    Each module keeps its qualified name (``setattr`` on its parent: works inside
    Sequential, ModuleList, ModuleDict and custom modules; a module shared by several
    parents is replaced everywhere by one new module). An output nonlinearity (a final
    sigmoid or tanh whose result the model returns) is left alone unless named in
    ``names``, which restricts the swap to those activation modules. Raises
    ``FixRefusedError``, changing nothing, when an activation of a ``from_`` kind is a
    function call inside ``forward`` (pass ``names=`` to swap only the module
    activations) or when nothing matches. ``example_inputs`` is used only when the model
    cannot be traced by ``torch.fx``. Kinds are ``gradhealth.measure.catalog``'s fine
    ones: ``"relu"`` is not ``"relu6"``, ``"sigmoid"`` not ``"hardsigmoid"``.
    """
    require_module(model, "swap_activations_")
    if to not in TARGETS:
        raise ConfigError(f"Expected `to` in {TARGETS}, got {to!r}.")
    kinds = {from_} if isinstance(from_, str) else set(from_)
    if not (0.0 <= lower <= upper):
        raise ConfigError(f"Expected 0 <= lower <= upper for RReLU, got {lower}, {upper}.")
    follows = following_activations(model, example_inputs)
    paths = _activation_paths(model, kinds, to)
    if names is not None:
        paths = _select(model, paths, list(names), kinds)
    else:
        outputs = {f.module for f in follows.values() if f.at_output}
        paths = {k: e for k, e in paths.items()
                 if not {p[2] for p in e["paths"]} & outputs}
        functional = [f for f in follows.values()
                      if f.functional and f.kind in kinds and not f.at_output]
        if functional:
            where = "; ".join(f"layer '{f.layer}' feeds a functional {f.kind} (found by {f.how})"
                              for f in functional)
            raise FixRefusedError(
                f"Cannot swap activations by module surgery: {where}. A function called "
                "inside forward() is not a module and cannot be replaced from outside. "
                "Either make it a module (self.act = nn.ReLU() in __init__, x = self.act(x) "
                f"in forward) or edit the call to the {to} function by hand; to swap only "
                "the activation modules, pass names=[...]. The model is unchanged.")
    if not paths:
        raise FixRefusedError(
            f"Expected activation modules of kinds {sorted(kinds)} to replace by {to}, found "
            "none (they may already be swapped, or be functional calls the tracer could not "
            "see). The model is unchanged.")
    new_modules = {key: _build(to, entry, follows, model, slope, lower, upper, init,
                               per_channel, alpha)
                   for key, entry in paths.items()}  # built first: refusals change nothing
    changes = []
    for key, entry in paths.items():
        new = new_modules[key]
        for parent, child, _ in entry["paths"]:
            setattr(parent, child, new)
        extra = (f"; new parameter '{entry['name']}.weight' (not in any existing optimizer)"
                 if to == "prelu" else "")
        why = _WHY[to].format(slope=slope, lower=lower, upper=upper, init=init)
        changes.append(Change(entry["name"], f"{entry['module']!r} -> {new!r}{extra}", why))
    if to == "selu":
        swapped = {entry["name"] for entry in paths.values()}
        feeding = [f.layer for f in follows.values() if f.module in swapped]
        if feeding:
            changes.extend(lecun_normal_(model, names=feeding))
    return changes


def _activation_paths(model: nn.Module, kinds: set[str], to: str) -> dict[int, dict]:
    """Every (parent, child name) holding a matching activation, grouped by module object."""
    found: dict[int, dict] = {}
    modules = dict(model.named_modules(remove_duplicate=False))
    for name, module in model.named_modules(remove_duplicate=False):
        kind = activation_kind(module)
        if not name or kind is None or kind[0] not in kinds or kind[0] == to:
            continue
        parent_name, _, child = name.rpartition(".")
        entry = found.setdefault(id(module), {"name": name, "module": module, "paths": []})
        entry["paths"].append((modules[parent_name], child, name))
    return found


def _select(model: nn.Module, paths: dict, names: list[str], kinds: set[str]) -> dict:
    by_name = {path[2]: key for key, entry in paths.items() for path in entry["paths"]}
    for n in names:
        if n not in by_name:
            raise ConfigError(
                f"Expected names of activation modules of kinds {sorted(kinds)}, got {n!r}. "
                f"Valid names: {sorted(by_name)[:20]}.")
    keep = {by_name[n] for n in names}
    return {key: entry for key, entry in paths.items() if key in keep}


def _build(to, entry, follows, model, slope, lower, upper, init, per_channel, alpha):
    inplace = bool(getattr(entry["module"], "inplace", False))
    if to == "leaky_relu":
        return nn.LeakyReLU(slope, inplace=inplace)
    if to == "rrelu":
        return nn.RReLU(lower, upper, inplace=inplace)
    if to == "elu":
        return nn.ELU(alpha, inplace=inplace)
    if to == "selu":
        return nn.SELU(inplace=inplace)
    if to == "gelu":
        return nn.GELU()
    if to == "relu":
        return nn.ReLU(inplace=inplace)
    names = {path[2] for path in entry["paths"]}
    feeding = [dict(model.named_modules())[f.layer] for f in follows.values()
               if f.module in names]
    reference = feeding[0].weight if feeding else next(model.parameters(), None)
    factory = {} if reference is None else {"device": reference.device,
                                            "dtype": reference.dtype}
    channels = 1
    if per_channel:
        widths = {getattr(m, "out_features", getattr(m, "out_channels", None)) for m in feeding}
        if len(widths) != 1 or None in widths:
            raise FixRefusedError(
                f"Cannot size a per-channel PReLU for '{entry['name']}': expected exactly one "
                f"Linear/Conv layer feeding it, found widths {sorted(map(str, widths))}. Use "
                "per_channel=False (one shared slope). The model is unchanged.")
        (channels,) = widths
    return nn.PReLU(channels, init=init, **factory)

