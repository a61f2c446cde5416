"""Layer-sequential unit-variance init (Mishkin & Matas 2015): the data-driven remedy.

Where the activation is unknown no gain can be computed, so LSUV measures instead: it
scales each layer until its output on real inputs has unit variance. Forward passes run
in eval mode under ``no_grad``, on a model whose state is restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from gradhealth.errors import ConfigError, FixRefusedError
from gradhealth.fixes.change import Change
from gradhealth.fixes.forward import call, call_checked, preserved_state
from gradhealth.fixes.init import targets, write
from gradhealth.fixes.ties import Ties, storage_key
from gradhealth.measure import catalog

__all__ = ["lsuv_"]


def lsuv_(model: nn.Module, inputs: Any, *, tol: float = 0.02, max_iter: int = 20,
          names: Iterable[str] | None = None) -> list[Change]:
    """Layer-sequential unit-variance init (Mishkin & Matas 2015, Algorithm 1).

    Orthonormal init of every layer that runs on ``inputs`` (biases zero), then, layer by
    layer in forward order, W <- W / sqrt(Var(B)) where B is the layer's output on
    ``inputs``, until |Var(B) - 1| < ``tol`` or ``max_iter`` iterations (defaults 0.02
    and 20, docs/science.md#lsuv). Forward passes run in eval mode under no_grad;
    buffers, RNG and modes are restored and no hook is left. If a layer's output
    variance is zero or non-finite the model is restored and FixRefusedError raised.
    """
    if tol <= 0 or max_iter < 1:
        raise ConfigError(f"Expected tol > 0 and max_iter >= 1, got tol={tol}, "
                          f"max_iter={max_iter}.")
    wanted = dict(targets(model, names, catalog.WEIGHT_LAYERS))
    order = _forward_order(model, inputs, wanted)
    firsts: dict[tuple, str] = {}  # a tie is one parameter: scaled for its first layer only
    order = [n for n in order if firsts.setdefault(storage_key(wanted[n].weight), n) == n]
    saved = {n: [p.detach().clone() for p in wanted[n].parameters(recurse=False)]
             for n in order}
    changes = []
    try:
        with preserved_state(model):
            model.eval()
            for name in order:
                if wanted[name].bias is not None:
                    nn.init.zeros_(wanted[name].bias)
                write(wanted[name].weight, nn.init.orthogonal_,
                      transposed=catalog.is_transposed_linear(wanted[name]))
            ties = Ties(model)
            for name in order:
                change = _lsuv_layer(model, inputs, name, wanted[name], tol, max_iter)
                tied = ties.note(f"{name}.weight" if name else "weight", wanted[name].weight)
                changes.append(Change(change.module, change.what + tied, change.why))
    except BaseException:
        with torch.no_grad():
            for name in order:
                for param, value in zip(wanted[name].parameters(recurse=False), saved[name]):
                    param.copy_(value)
        raise
    return changes


class _Stop(Exception):
    """Raised by the LSUV hook once it has the layer's output: no need to run further."""


def _lsuv_layer(model, inputs, name, layer, tol, max_iter) -> Change:
    captured: list[torch.Tensor] = []

    def hook(module, args, output):
        captured.append(output.detach().float().var())
        raise _Stop

    def variance() -> float:
        captured.clear()
        handle = layer.register_forward_hook(hook)
        try:
            call(model, inputs)
        except _Stop:
            pass
        finally:
            handle.remove()
        return float(captured[0])

    first = var = variance()
    scale, iters = 1.0, 0
    while abs(var - 1.0) >= tol and iters < max_iter:
        if not math.isfinite(var) or var <= 0.0:
            raise FixRefusedError(
                f"LSUV cannot rescale layer '{name}': its output variance on the given "
                f"inputs is {var!r}. Expected a positive finite variance; check that the "
                "inputs are not constant and that no earlier layer outputs only zeros. "
                "The model is unchanged.")
        factor = 1.0 / math.sqrt(var)
        scaled = layer.weight.detach().float() * factor

        def rescale(w: torch.Tensor, scaled: torch.Tensor = scaled) -> torch.Tensor:
            return w.copy_(scaled)

        write(layer.weight, rescale)
        scale, iters = scale * factor, iters + 1
        var = variance()
    note = "" if abs(var - 1.0) < tol else f"; NOT converged after {max_iter} iterations"
    return Change(
        name,
        f"weight orthonormal then scaled by {scale:.4g} in {iters} iteration(s): output Var "
        f"{first:.4g} -> {var:.4g}; bias = 0",
        f"LSUV (Mishkin & Matas 2015, Alg. 1): |Var - 1| < {tol}, at most {max_iter} "
        f"iterations{note}")


def _forward_order(model, inputs, wanted: dict[str, nn.Module]) -> list[str]:
    order: list[str] = []
    handles = []
    for name, layer in wanted.items():
        def hook(module, args, output, name=name):
            if name not in order:
                order.append(name)
        handles.append(layer.register_forward_hook(hook))
    try:
        with preserved_state(model):
            model.eval()
            call_checked(model, inputs, "lsuv_")
    finally:
        for handle in handles:
            handle.remove()
    return order
