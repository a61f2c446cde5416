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

How much a spike matters is judged on another scale than whether it is one. A converged
run's gradient norm shrinks a hundredfold and is heavy-tailed against its own small level:
z = 8 over the short EMA may be a norm still smaller than the run's ordinary norm of a few
hundred steps before. So each series also keeps its long-term level, a slow EMA
(``LEVEL_ALPHA``, about 100 steps of memory, updated with the same clipped values) and the
highest that level has been (``Spike.level``): the scale of an ordinary step of this run.
A spike is a *warning* only when it reaches ``SCALE_FACTOR`` = 10 times that level, the
step was not clipped, and the loss rose after it: ten times the typical norm is the top
of the range that norm clipping is set in (0.5-10x, Pascanu et al. 2013, Sec. 3.2), so a
step under it would not have been clipped by a well-set clipper; one that was clipped
moved the weights no further than the clip allows; and a step after which the median loss
of the next ``LOOK_STEPS`` steps stays under the divergence line of the ``LOOK_STEPS``
before (``divergence.threshold``: it gave back less than a quarter of the run's progress)
did the run no harm that lasts (a recurrent net leaving its plateau has norms 20-60x its
level while its loss falls tenfold, and bumps of 1.6x on the way). Without a logged loss
after it (NaN, or no loss logged) the scale decides alone. Other spikes are *information*
(docs/science.md#spikes).

Everything here is a pure function of host-side numbers; ``Detector`` only carries the
state from one call to the next.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from gradhealth.rules import divergence
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

EMA_ALPHA = 0.97
WARMUP_STEPS = 25
Z_THRESHOLD = 6.0
STD_FLOOR = 0.01
LEVEL_ALPHA = 0.99
"""Design choice: the long-term level's EMA weight, about 100 steps of memory (the fast
EMA's 0.97 is about 33)."""
SCALE_FACTOR = 10.0
"""A spike is a warning at 10x the run's long-term level: the top of the 0.5-10x range in
which a norm clip is set (Pascanu et al. 2013, Sec. 3.2)."""

LOOK_STEPS = 10
"""Design choice: the losses compared before and after a spike (the median of 10 steps
each way; the loss of the spike's own step is its batch's, before the update)."""

SERIES = ("global_norm", "loss")


class SpikeState(NamedTuple):
    """EMA state of one series; ``warm`` holds the values seen during the warm-up. A
    named tuple: the guard makes one per series at every step."""

    seen: int = 0  # values seen (finite ones)
    mean: float = math.nan
    var: float = math.nan
    warm: tuple[float, ...] = ()
    level: float = math.nan  # slow EMA of the (clipped) values
    peak: float = math.nan  # the highest ``level`` so far


@dataclass(frozen=True)
class Spike:
    series: str  # "global_norm" or "loss"
    step: int
    value: float
    mean: float
    std: float
    z: float
    threshold: float = Z_THRESHOLD
    level: float = math.nan  # the run's long-term level (``SpikeState.peak``) before it

    @property
    def scale(self) -> float:
        """How many times the long-term level the value is (NaN when unknown)."""
        if not (math.isfinite(self.level) and self.level > 0):
            return math.nan
        return self.value / self.level


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
    if state.seen < cfg.warmup:
        warm = state.warm + (value,)
        if len(warm) < cfg.warmup:
            return state._replace(seen=len(warm), warm=warm), None
        mean = statistics.fmean(warm)
        return SpikeState(len(warm), mean, statistics.pvariance(warm), (), mean, mean), None
    std = _std(state)
    z = (value - state.mean) / std if std > 0 else (math.inf if value > state.mean else 0.0)
    kept = min(value, state.mean + cfg.z_threshold * std)
    mean = cfg.alpha * state.mean + (1 - cfg.alpha) * kept
    var = cfg.alpha * state.var + (1 - cfg.alpha) * (kept - mean) ** 2
    level = LEVEL_ALPHA * state.level + (1 - LEVEL_ALPHA) * kept
    return SpikeState(state.seen + 1, mean, var, (), level, max(state.peak, level)), z


def _std(state: SpikeState) -> float:
    """The standard deviation a z-score divides by: floored at a fraction of the mean."""
    return max(math.sqrt(state.var), STD_FLOOR * abs(state.mean))


def detect(series: str, steps: Sequence[int] | np.ndarray,
           values: Sequence[float | None] | np.ndarray, state: SpikeState,
           cfg: Config = Config()) -> tuple[list[Spike], SpikeState]:
    """Spikes among ``values`` (one per step, in order), and the state after the last one.

    The same as folding ``update`` over the values (a test holds them equal). A value that
    is None or not finite leaves the state untouched in ``update``, so they are dropped
    here at once, with numpy, and only the finite ones are folded (``fold``)."""
    numbers = np.asarray(values, dtype=np.float64)  # None -> NaN
    finite = np.isfinite(numbers)
    return fold(series, np.asarray(steps, dtype=np.int64)[finite].tolist(),
                numbers[finite].tolist(), state, cfg)


def fold(series: str, steps: Sequence[int], values: Sequence[float], state: SpikeState,
         cfg: Config = Config()) -> tuple[list[Spike], SpikeState]:
    """``detect`` over finite ``values`` already picked out, as Python numbers.

    Past the warm-up the state is in local floats, and ``max``/``min`` are comparisons
    that pick the operand they would (NaN included): the watch folds every step of a
    window, so a state object or a builtin call per step would be most of its host time
    on millisecond steps."""
    spikes: list[Spike] = []
    n, i = len(values), 0
    while i < n and state.seen < cfg.warmup:
        state, _ = update(state, values[i], cfg)  # no decision during the warm-up
        i += 1
    if i == n:
        return spikes, state
    mean, var, level, peak = state.mean, state.var, state.level, state.peak
    alpha, z_threshold = cfg.alpha, cfg.z_threshold
    beta, level_alpha, level_beta = 1 - alpha, LEVEL_ALPHA, 1 - LEVEL_ALPHA
    sqrt, floor, inf = math.sqrt, STD_FLOOR, math.inf
    for k in range(i, n):
        value = values[k]
        std = sqrt(var)
        least = floor * abs(mean)
        if least > std:  # max(std, least)
            std = least
        z = (value - mean) / std if std > 0 else (inf if value > mean else 0.0)
        if z > z_threshold:
            spikes.append(Spike(series, int(steps[k]), value, mean, std, z, z_threshold, peak))
        kept = mean + z_threshold * std
        if not kept < value:  # min(value, kept)
            kept = value
        mean = alpha * mean + beta * kept
        var = alpha * var + beta * (kept - mean) ** 2
        level = level_alpha * level + level_beta * kept
        if level > peak:  # max(peak, level)
            peak = level
    return spikes, SpikeState(state.seen + n - i, mean, var, (), level, peak)


class Detector:
    """Holds one ``SpikeState`` per series; ``observe`` feeds one step's values."""

    def __init__(self, cfg: Config = Config()):
        self.cfg = cfg
        self.states = {name: SpikeState() for name in SERIES}

    def observe(self, step: int, values: Mapping[str, float | None]) -> list[Spike]:
        """One step's values (None: not recorded this step): the guard's, every step, so
        no arrays."""
        found: list[Spike] = []
        for name, value in values.items():
            if value is None or not math.isfinite(value):
                continue
            state = self.states[name]
            self.states[name], z = update(state, float(value), self.cfg)
            if z is not None and z > self.cfg.z_threshold:  # as ``fold`` decides
                found.append(Spike(name, int(step), float(value), state.mean, _std(state), z,
                                   self.cfg.z_threshold, state.peak))
        return found

    def observe_many(self, steps: Sequence[int] | np.ndarray,
                     values: Mapping[str, Sequence[float | None] | np.ndarray]) -> list[Spike]:
        """Several steps' values at once, one sequence per series aligned with ``steps``
        (None or NaN: not recorded at that step, e.g. a loss never logged)."""
        found = []
        for name, series in values.items():
            spikes, self.states[name] = detect(name, steps, series, self.states[name],
                                               self.cfg)
            found.extend(spikes)
        return found

    def feed(self, series: str, steps: Sequence[int], values: Sequence[float]) -> list[Spike]:
        """One series' finite values and their steps, as Python numbers (``fold``): for a
        caller that has picked them out already."""
        spikes, self.states[series] = fold(series, steps, values, self.states[series],
                                           self.cfg)
        return spikes


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
    """Clip at a threshold scaled to the norm's long-term level (its EMA before that is
    known; when a norm spiked), look at the batch of ``step``, and guard."""
    typical = None
    if norm is not None:
        typical = next((v for v in (norm.level, norm.mean) if math.isfinite(v)), None)
    return Remedy("clip-spikes", params={"series": tuple(series), "step": step,
                                         "typical_norm": typical},
                  then=(Remedy("guard", params={"on": "spike", "names_producer": False}),))


def rose(before: Sequence[float], after: Sequence[float], initial: float | None) -> bool | None:
    """Whether the loss rose across a spike: the median of the logged losses ``after`` it
    over the divergence line of the median of those ``before`` (``initial``: the run's
    first loss level; unknown, the level before stands in); None when a side has none."""
    if not before or not after:
        return None
    level = statistics.median(before)
    line = divergence.threshold(level, level if initial is None else max(initial, level))
    return statistics.median(after) > line


def matters(spikes: Sequence[Spike], clipped: bool = False, loss_rose: bool | None = None
            ) -> bool:
    """Whether the spikes of one step warrant a warning: a series reached ``SCALE_FACTOR``
    times its long-term level (or that level is unknown), no clipper bound the step, and
    the loss rose after it (``loss_rose``: None when unknown)."""
    if clipped or loss_rose is False:
        return False
    return any(not sp.scale < SCALE_FACTOR for sp in spikes)  # NaN (unknown) counts


def finding(spikes: Sequence[Spike], culprit: tuple[str, float] | None = None,
            skipped: bool = False, clipped: bool = False,
            around: tuple[Sequence[float], Sequence[float]] | None = None,
            initial: float | None = None) -> Finding:
    """One ``spike`` finding for the spikes of one step (global norm and/or loss): a
    warning when it ``matters``, else information.

    ``culprit`` (from ``blame``) names the module whose gradient rose most; ``clipped``:
    the watch's clipper bound this step; ``around``: the logged losses of the
    ``LOOK_STEPS`` steps before the spike and after it; ``initial``: the run's first loss
    level.
    """
    step = spikes[0].step
    by_series = {sp.series: sp for sp in spikes}
    main = by_series.get("global_norm") or spikes[0]
    module = culprit[0] if culprit else ""
    loss_rose = rose(*around, initial) if around is not None else None
    warn = matters(spikes, clipped, loss_rose)
    evidence: dict = {"step": step, "series": sorted(by_series), "threshold": main.threshold,
                      "skipped": skipped, "clipped": clipped, "scale_factor": SCALE_FACTOR}
    if loss_rose is not None and around is not None:
        evidence.update(loss_before=statistics.median(around[0]),
                        loss_after=statistics.median(around[1]))
    for name, sp in sorted(by_series.items()):
        evidence.update({name: sp.value, f"{name}_ema": sp.mean, f"{name}_ema_std": sp.std,
                         f"{name}_z": sp.z})
        if math.isfinite(sp.level):
            evidence[f"{name}_level"] = sp.level
    if culprit:
        evidence["module_ratio_to_median"] = culprit[1]
    words = {"global_norm": "global gradient norm", "loss": "loss"}
    parts = [f"{words[n]} {sp.value:.4g} against an EMA of {sp.mean:.4g} (z = {sp.z:.1f})"
             for n, sp in sorted(by_series.items())]
    where = f"; `{module}` rose most ({culprit[1]:.3g}x its median)" if culprit else ""
    scale = max((sp.scale for sp in spikes if math.isfinite(sp.scale)), default=None)
    if warn:
        size = "" if scale is None else f"; {scale:.3g}x the run's long-term level"
    elif clipped:
        size = "; the clipper bound the step"
    elif loss_rose is False:
        size = (f"; the loss did not rise after it ({evidence['loss_before']:.3g} before, "
                f"{evidence['loss_after']:.3g} after): information")
    else:
        size = (f"; only {scale:.2g}x the run's long-term level (under {SCALE_FACTOR:g}x): "
                f"information")
    return Finding(
        kind="spike", module=module, severity="warning" if warn else "info",
        evidence=evidence,
        prescription=remedy(sorted(by_series), step, by_series.get("global_norm")),
        modules=(module,) if culprit else (),
        message=(f"spike at step {step}: " + ", ".join(parts) + f" > {main.threshold:g}"
                 + size + where + (" - step skipped" if skipped else "")))
