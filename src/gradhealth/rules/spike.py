"""Spikes: a step whose global gradient norm (or loss) jumps far above its recent level.

The level is an exponential moving average of the series' mean and variance, as in
ZClip (Kumar et al. 2025, arXiv:2504.02507, Sec. 3): ``EMA_ALPHA`` = 0.97, started from
the plain mean and variance of the first ``WARMUP_STEPS`` = 25 finite values, with no
decision during that warm-up. A value is a spike when its z-score
``(x - mean) / std`` exceeds ``Z_THRESHOLD`` = 6: the rule OLMo-core's
``SkipStepOptimizer`` (used for OLMo 2, Team OLMo 2024, arXiv:2501.00656) uses to skip
steps, with a rolling window of 128 steps where we use the EMA. Only rises count: a
falling norm or loss is not a spike.

Two guards against crying wolf, both design choices of ours rather than published
numbers: the standard deviation is floored at ``STD_FLOOR`` = 1% of the mean's
magnitude (a perfectly flat series must not turn a 2% wobble into z = 50), and the
EMA is updated with the value clipped to ``mean + Z_THRESHOLD * std`` (ZClip updates
with the clipped norm too), so one spike does not blind the detector to the next while
a lasting change of level is still absorbed within a few dozen steps. Non-finite values
(NaN/Inf steps, which the non-finite rule reports) leave the state untouched.

Everything here is a pure function of host-side numbers; ``Detector`` only carries the
state from one call to the next.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

EMA_ALPHA = 0.97
WARMUP_STEPS = 25
Z_THRESHOLD = 6.0
STD_FLOOR = 0.01

SERIES = ("global_norm", "loss")


@dataclass(frozen=True)
class SpikeState:
    """EMA state of one series; ``warm`` holds the values seen during the warm-up."""

    count: int = 0
    mean: float = math.nan
    var: float = math.nan
    warm: tuple[float, ...] = ()


@dataclass(frozen=True)
class Spike:
    series: str  # "global_norm" or "loss"
    step: int
    value: float
    mean: float
    std: float
    z: float
    threshold: float = Z_THRESHOLD


@dataclass(frozen=True)
class Config:
    alpha: float = EMA_ALPHA
    warmup: int = WARMUP_STEPS
    z_threshold: float = Z_THRESHOLD


def update(state: SpikeState, value: float,
           cfg: Config = Config()) -> tuple[SpikeState, float | None]:
    """The state after seeing ``value``, and its z-score (None during warm-up or if non-finite)."""
    if not math.isfinite(value):
        return state, None
    if state.count < cfg.warmup:
        warm = state.warm + (value,)
        if len(warm) < cfg.warmup:
            return replace(state, count=len(warm), warm=warm), None
        return SpikeState(len(warm), statistics.fmean(warm), statistics.pvariance(warm)), None
    std = max(math.sqrt(state.var), STD_FLOOR * abs(state.mean))
    z = (value - state.mean) / std if std > 0 else (math.inf if value > state.mean else 0.0)
    kept = min(value, state.mean + cfg.z_threshold * std)
    mean = cfg.alpha * state.mean + (1 - cfg.alpha) * kept
    var = cfg.alpha * state.var + (1 - cfg.alpha) * (kept - mean) ** 2
    return SpikeState(state.count + 1, mean, var), z


def detect(series: str, steps: Sequence[int], values: Sequence[float], state: SpikeState,
           cfg: Config = Config()) -> tuple[list[Spike], SpikeState]:
    """Spikes among ``values`` (one per step, in order), and the state after the last one."""
    spikes = []
    for step, value in zip(steps, values):
        before = state
        state, z = update(state, float(value), cfg)
        if z is not None and z > cfg.z_threshold:
            std = max(math.sqrt(before.var), STD_FLOOR * abs(before.mean))
            spikes.append(Spike(series, int(step), float(value), before.mean, std, z,
                                cfg.z_threshold))
    return spikes, state


class Detector:
    """Holds one ``SpikeState`` per series; ``observe`` feeds one step's values."""

    def __init__(self, cfg: Config = Config()):
        self.cfg = cfg
        self.states = {name: SpikeState() for name in SERIES}

    def observe(self, step: int, values: Mapping[str, float | None]) -> list[Spike]:
        found = []
        for name, value in values.items():
            if value is None:
                continue  # not recorded this step (a loss never logged)
            spikes, self.states[name] = detect(name, [step], [value], self.states[name], self.cfg)
            found.extend(spikes)
        return found


def blame(layer_norms: np.ndarray, row: int, names: Sequence[str]) -> tuple[str, float] | None:
    """The module whose gradient norm rose most at ``row`` against its own median in the window.

    ``layer_norms`` is (steps, modules). Returns (name, ratio) or None when nothing is
    comparable (a window of one step, or no finite history).
    """
    if layer_norms.shape[0] < 2 or not len(names):
        return None
    others = np.delete(layer_norms, row, axis=0)
    others = np.where(np.isfinite(others), others, np.nan)
    if np.all(np.isnan(others)):
        return None
    typical = np.nanmedian(others, axis=0)
    now = layer_norms[row]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((typical > 0) & np.isfinite(now), now / typical, np.nan)
    if np.all(np.isnan(ratio)):
        return None
    j = int(np.nanargmax(ratio))
    return names[j], float(ratio[j])


def remedy(series: Sequence[str], step: int, norm: Spike | None) -> Remedy:
    """Clip at a threshold scaled to the norm's running level (when a norm spiked), look at
    the batch of ``step``, and guard."""
    typical = norm.mean if norm is not None and math.isfinite(norm.mean) else None
    return Remedy("clip-spikes", params={"series": tuple(series), "step": step,
                                         "typical_norm": typical},
                  then=(Remedy("guard", params={"on": "spike", "names_producer": False}),))


def finding(spikes: Sequence[Spike], culprit: tuple[str, float] | None = None,
            skipped: bool = False) -> Finding:
    """One ``spike`` finding for the spikes of one step (global norm and/or loss).

    ``culprit`` (from ``blame``) names the module whose gradient rose most.
    """
    step = spikes[0].step
    by_series = {sp.series: sp for sp in spikes}
    main = by_series.get("global_norm") or spikes[0]
    module = culprit[0] if culprit else ""
    evidence: dict = {"step": step, "series": sorted(by_series), "threshold": main.threshold,
                      "skipped": skipped}
    for name, sp in sorted(by_series.items()):
        evidence.update({name: sp.value, f"{name}_ema": sp.mean, f"{name}_ema_std": sp.std,
                         f"{name}_z": sp.z})
    if culprit:
        evidence["module_ratio_to_median"] = culprit[1]
    words = {"global_norm": "global gradient norm", "loss": "loss"}
    parts = [f"{words[n]} {sp.value:.4g} against an EMA of {sp.mean:.4g} (z = {sp.z:.1f})"
             for n, sp in sorted(by_series.items())]
    where = f"; `{module}` rose most ({culprit[1]:.3g}x its median)" if culprit else ""
    return Finding(
        kind="spike", module=module, severity="warning", evidence=evidence,
        prescription=remedy(sorted(by_series), step, by_series.get("global_norm")),
        modules=(module,) if culprit else (),
        message=(f"spike at step {step}: " + ", ".join(parts) + f" > {main.threshold:g}"
                 + where + (" - step skipped" if skipped else "")))
