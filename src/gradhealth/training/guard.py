"""``gh.guard``: never let a non-finite or spiking step touch the weights.

The guard is an option of ``gh.watch`` (``watch(..., guard=True)`` or
``guard=Guard(...)``); ``gh.guard(model, optimizer, ...)`` is the same watch with the
guard on. Before each optimizer step it decides, from the step's global gradient norm
(and loss, when logged), whether to let the step through:

- non-finite gradients (or loss): skipped, and the module that produced the first
  NaN/Inf is named by replaying the step's batch (``gradhealth.training.replay``);
- a spike of the global norm or the loss (``rules.spike``: z > 6 against an EMA, after
  a 25-step warm-up): skipped. After ``max_consecutive`` spike skips in a row the level
  has changed rather than spiked, and the next step goes through (with a finding).

**The one host synchronisation.** Deciding needs the norm on the host, as
``torch.amp.GradScaler`` needs ``found_inf``: one ``.tolist()`` of two numbers per step.
Everything else the watch does stays on the device. ``benchmarks/overhead.py`` measures
the cost (the ``guard`` row).

**How a step is skipped.** The optimizer's step hooks cannot cancel ``step()``, so the
guard takes the gradients off every parameter of the optimizer (``p.grad = None``) for
that call and puts them back right after: every ``torch.optim`` optimizer skips
parameters without a gradient, leaving weights and state (momentum, Adam moments,
step counts) bit-identical. For optimizers from elsewhere, which may not honour that,
the guard also copies the parameters and the optimizer state before the step and
restores them after it (only on skipped steps, so it costs nothing otherwise).
Learning-rate schedulers still count a skipped step, as they do under GradScaler.

**What the replay sees.** The last training forward before the step: with gradient
accumulation, the last micro-batch; a batch changed in place after its forward, or
randomness the RNG state does not cover, may not reproduce the NaN (the finding then
says so and names what the step's own gradients show).

**Mixed precision.** With ``scaler=`` given, GradScaler's own skips (Inf/NaN at the
current loss scale, normal while the scale calibrates at start-up) are recorded as
``amp_overflow`` and never counted as guard skips; the guard's optimizer-step hook runs
inside ``scaler.step`` after ``unscale_``, so it judges unscaled gradients.

**Processes** (``torchrun``, DDP or FSDP2). The global norm the guard judges is the
true one on every rank (``gradhealth.measure.distributed``: FSDP2 shard norms reduced over the
shard groups, DDP's all-reduced gradients taken as they are); the loss is each rank's
own. Each rank decides, then the decision goes through one collective (MAX over ranks,
``distributed.agree``): a NaN or a spike seen by one rank only skips the step on every
rank, so replicas never diverge and no rank waits in a collective the others skipped.
The replay that names the NaN producer runs on each rank's own batch (under DDP the
wrapped module is replayed, without DDP's hooks), on the ranks that saw the step
non-finite themselves; under FSDP2 the forward itself runs collectives, so there is no
replay and the step's batch and weight gradients name it. The ranks' verdicts are then
gathered (one collective, on that step only) and the store gets the verdict of a rank
that saw the NaN, with its rank.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from gradhealth.errors import ConfigError
from gradhealth.measure import distributed
from gradhealth.rules import guard as guard_rule
from gradhealth.rules import spike as spike_rule


@dataclass(frozen=True)
class Decision:
    skip: bool
    reason: str | None  # "nonfinite" or "spike"
    global_norm: float
    loss: float | None
    spikes: list[spike_rule.Spike] = field(default_factory=list)
    released: bool = False  # a spike let through after max_consecutive skips
    own: str | None = None  # this rank's own reason before the ranks agreed


class Guard:
    """The guard's policy: what to skip, with which thresholds."""

    def __init__(self, *, spikes: bool = True, loss_spikes: bool = True,
                 z_threshold: float = spike_rule.Z_THRESHOLD,
                 warmup: int = spike_rule.WARMUP_STEPS, alpha: float = spike_rule.EMA_ALPHA,
                 max_consecutive: int = guard_rule.MAX_CONSECUTIVE_SKIPS):
        if not z_threshold > 0 or warmup < 1 or not 0.0 < alpha < 1.0 or max_consecutive < 1:
            raise ConfigError(
                f"Guard expects z_threshold > 0, warmup >= 1, 0 < alpha < 1 and "
                f"max_consecutive >= 1; got z_threshold={z_threshold}, warmup={warmup}, "
                f"alpha={alpha}, max_consecutive={max_consecutive}.")
        self.spikes, self.loss_spikes = spikes, loss_spikes
        self.max_consecutive = max_consecutive
        self.config = spike_rule.Config(alpha=alpha, warmup=warmup, z_threshold=z_threshold)
        self._in_a_row = 0
        self._world: int | None = None  # processes, read at the first step (then fixed)

    def decide(self, step: int, norms: torch.Tensor | list[float], loss: torch.Tensor | None,
               detector: spike_rule.Detector) -> Decision:
        """Skip or not; ``norms`` is the step's per-parameter gradient norms: a device row,
        or host floats (a CPU's, read without waiting: ``training.recorder``).

        Reads the global norm and the loss off the device (the one host synchronisation),
        asks ``rules.guard`` for the verdict, and makes every process agree on it.
        """
        if not isinstance(norms, torch.Tensor) or norms.device.type == "cpu":
            # a CPU (nothing to wait for): add the squares on the host, in float64
            device = torch.device("cpu")
            values = norms.tolist() if isinstance(norms, torch.Tensor) else norms
            g = math.sqrt(sum([v * v for v in values]))
            loss_value = loss.item() if loss is not None else None
        else:
            device = norms.device
            total = torch.linalg.vector_norm(norms)
            pair = torch.stack((total, loss.reshape(()).to(total) if loss is not None
                                else torch.full_like(total, math.nan)))
            g, loss_host = pair.tolist()  # the one host synchronisation per step
            loss_value = loss_host if loss is not None else None
        found = detector.observe(step, {"global_norm": g, "loss": loss_value})
        reason, released = guard_rule.verdict(
            g, loss_value, found, norm_spikes=self.spikes, loss_spikes=self.loss_spikes,
            in_a_row=self._in_a_row, max_consecutive=self.max_consecutive)
        if self._world is None:
            self._world = distributed.world()
        own = reason
        if self._world > 1:
            reason = _agree(reason, device)
        self._in_a_row = self._in_a_row + 1 if reason == "spike" else 0
        return Decision(reason is not None, reason, g, loss_value, found, released, own)

    def __repr__(self) -> str:
        c = self.config
        return (f"Guard(spikes={self.spikes}, loss_spikes={self.loss_spikes}, "
                f"z_threshold={c.z_threshold}, warmup={c.warmup}, alpha={c.alpha}, "
                f"max_consecutive={self.max_consecutive})")


def _agree(reason: str | None, device: torch.device) -> str | None:
    """Make every process take the same decision (MAX over ranks: one skip skips all)."""
    codes = guard_rule.REASONS
    return codes[distributed.agree(codes.index(reason), device)]


class Withheld:
    """The gradients of one optimizer step, taken off so that ``step()`` changes nothing."""

    def __init__(self, optimizer: torch.optim.Optimizer, snapshot: bool = False):
        """``snapshot``: also copy the weights and the optimizer state, to restore them
        in ``give_back`` (always done for optimizers from outside ``torch.optim``)."""
        self.optimizer = optimizer
        self.grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.saved: tuple[list, dict, list] | None = None
        if snapshot or not type(optimizer).__module__.startswith("torch.optim"):
            self.saved = _save(optimizer)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.grads.append((p, p.grad))
                    p.grad = None

    def give_back(self) -> None:
        if self.saved is not None:
            _restore(self.optimizer, self.saved)
        for p, g in self.grads:
            p.grad = g
        self.grads = []


def _save(optimizer: torch.optim.Optimizer) -> tuple[list, dict, list]:
    with torch.no_grad():
        params = [(p, p.detach().clone()) for g in optimizer.param_groups for p in g["params"]]
        state = {p: {k: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v))
                     for k, v in s.items()} for p, s in optimizer.state.items()}
    groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
              for g in optimizer.param_groups]
    return params, state, groups


def _restore(optimizer: torch.optim.Optimizer, saved: tuple[list, dict, list]) -> None:
    params, state, groups = saved
    with torch.no_grad():
        for p, value in params:
            p.copy_(value)
        for p in list(optimizer.state):
            if p not in state:
                del optimizer.state[p]
        for p, entries in state.items():
            now = optimizer.state[p]
            for k in list(now):
                if k not in entries:
                    del now[k]
            for k, v in entries.items():
                if torch.is_tensor(v) and torch.is_tensor(now.get(k)) and now[k].shape == v.shape:
                    now[k].copy_(v)
                else:
                    now[k] = v
    for group, values in zip(optimizer.param_groups, groups):
        group.update(values)
