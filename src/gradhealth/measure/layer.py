"""``LayerStats``: what gradhealth measured of one module in one pass (or window)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LayerStats:
    """Per-module numbers measured by a probe (``None`` where not applicable)."""

    name: str
    type: str
    order: int  # position in forward execution order (first call)
    calls: int
    leaf: bool
    n_params: int
    out_mean: float | None = None
    out_std: float | None = None
    out_rms: float | None = None
    grad_rms: float | None = None  # RMS of dL/d(output)
    grad_norm: float | None = None  # L2 norm of dL/d(output) over the whole batch
    weight_norm: float | None = None
    weight_grad_norm: float | None = None
    grad_to_weight: float | None = None
    fan_in: int | None = None
    fan_out: int | None = None
    weight_var_fan_in: float | None = None  # n_in * Var(W): 1 LeCun, 2 He, 1/3 torch default
    saturation: float | None = None  # bounded activations only
    dead_fraction: float | None = None  # rectifiers only
    nonfinite_in: int = 0
    nonfinite_out: int = 0
    nonfinite_grad: int = 0
    nonfinite_weight_grad: int = 0
    nonfinite_params: int = 0  # NaN/Inf entries held by the module's own parameters
    norm_overflow: bool = False  # a fast pass's float32 norm overflowed (finite entries)
    activation: str | None = None  # this module's activation kind ("relu", "tanh", ...)
    activation_after: str | None = None  # qualified name of the activation that follows
    inputs_from: tuple[str, ...] = ()  # modules whose outputs this module consumed
    time_grad_rms: tuple[float, ...] | None = None  # recurrent modules: dL/dx_t RMS per step
    input_grad_norm: float | None = None  # ||dL/d(first input)||: first blocks of stacks
    out_quantiles: tuple[float, ...] | None = None  # at stats.QUANTILES (2/15/50/85/98 %)
    grad_quantiles: tuple[float, ...] | None = None  # of dL/d(output), same levels
    role: str = "other"  # "layer", "norm", "activation", "recurrent", "container", "other"
    error: str | None = None  # a statistic that could not be computed for this module
    # attention modules (measure/attention.py): pre-softmax query-key logits, unmasked
    attn_logit_max: float | None = None  # largest |logit|
    attn_logit_rms: float | None = None
    attn_entropy: float | None = None  # mean row entropy (nats), averaged over the heads
    attn_entropy_min: float | None = None  # the lowest head's mean row entropy
    attn_entropy_uniform: float | None = None  # mean ln(keys attended): uniform attention
    attn_heads: int | None = None
    # the output head (measure/logz.py): log Z = logsumexp of the output logits
    log_z: float | None = None  # mean over positions
    log_z_max: float | None = None  # largest |log Z|
    log_z_classes: int | None = None
    # Adam-family optimizers on sampled steps (measure/adam.py)
    adam_grad_rms: float | None = None  # sqrt(mean v_hat) over the module's parameters
    adam_eps: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return jsonable(data)

    def replaced(self, **changes: Any) -> LayerStats:
        """``dataclasses.replace`` without running ``__init__`` again (it has nothing to
        check): a sampled step's judging makes one per module, and ``replace`` of these
        ~50 fields costs ~20 us each."""
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"LayerStats has no field {sorted(unknown)[0]!r}")
        new = object.__new__(LayerStats)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new


_FIELDS = frozenset(f.name for f in dataclasses.fields(LayerStats))


def jsonable(value: Any) -> Any:
    """Plain JSON types only; non-finite floats become strings so json.dumps is strict-safe."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
