"""What the PyTorch and the Keras wordings of a remedy share: how layers, the measured
scale, numbers and series are written. Framework words live in ``wording_torch`` and
``wording_keras`` only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Words = Mapping[str, Any]
"""A remedy's parameters, as the wording functions receive them."""

SERIES_WORDS = {"global_norm": "global gradient norm", "loss": "loss"}


def names(layers: Sequence[str], none: str = "the layers", limit: int = 4) -> str:
    """```a`, `b` and 2 more``: the first ``limit`` layers, or ``none`` when there are none."""
    if not layers:
        return none
    shown = [f"`{n}`" if n else "the model itself" for n in layers[:limit]]
    more = len(layers) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def measured(p: Words, label: str = "measured") -> str:
    """`` (measured fan_in*Var(W) = 0.33)``, or nothing when the scale is unknown."""
    scale = p.get("fan_in_var")
    return f" ({label} fan_in*Var(W) = {scale:.3g})" if scale is not None else ""


def operation(p: Words) -> str:
    """`` (here: torch.log at model.py:42)``, or nothing when no replay recorded it."""
    op, where = p.get("operation"), p.get("where")
    if not op:
        return ""
    return f" (here: {op}" + (f" at {where})" if where else ")")


def number(value: float) -> str:
    """A parameter as code writes it: ``1.0``, ``0.2``, ``2.5e-05``."""
    return repr(float(value))


def series(p: Words) -> str:
    """``global gradient norm and loss``: the spiking series, in a fixed order."""
    return " and ".join(SERIES_WORDS.get(s, s) for s in sorted(p.get("series") or ("global_norm",)))


def leaky_scale(p: Words) -> str | None:
    """The He target 2/(1+a^2) for a known negative slope a, written to 4 digits."""
    a = p.get("slope")
    return None if a is None else f"{2 / (1 + a * a):.4g}"


def attention_state(layers: Sequence[str], p: Words) -> str:
    """``The attention logits of `a` reach 312 and its lowest head keeps 0.04 of the
    uniform entropy: ``, or nothing without the numbers."""
    peak, fraction = p.get("logit_max"), p.get("entropy_fraction")
    if peak is None or fraction is None:
        return ""
    return (f"The attention logits of {names(layers)} reach {peak:.3g} and the lowest head "
            f"keeps {fraction:.3g} of the uniform attention's entropy: ")


def update_state(layers: Sequence[str], p: Words) -> str:
    """``One step moved `a` by 0.31 of its weights' norm (limit 0.2; the median layer
    0.02): ``."""
    ratio, median, limit = p.get("ratio"), p.get("median"), p.get("threshold")
    moved = f"by {ratio:.3g} of its weights' norm" if ratio is not None else "far"
    typical = [f"limit {limit:.3g}"] if limit is not None else []
    typical += [f"the median layer {median:.3g}"] if median is not None else []
    detail = f" ({'; '.join(typical)})" if typical else ""
    return f"One step moved {names(layers)} {moved}{detail}: "


def clip_range(p: Words) -> str:
    """`` (its running level is 1.2: c from 0.6 to 12)``, or nothing without a level."""
    level = p.get("typical_norm")
    if level is None:
        return ""
    return f" (its running level is {level:.3g}: c from {0.5 * level:.3g} to {10 * level:.3g})"
