"""What really happened in a scenario's run, measured by this benchmark's own code and
never by the watch: every step's loss and global gradient norm, and every ``CHECK_EVERY``
steps the loss on the whole training set and, per ReLU layer, the fraction of units that
are zero for every example of it. From these, the true onset of each kind of trouble.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch
from torch import nn

CHECK_EVERY = 5
DEAD = 0.5  # a layer with more than half its units zero on the whole data set is dead
LOST = 0.25  # a loss that gave back a quarter of its progress left its level
EXPLODED = 10.0  # a norm 10x its median over the 100 steps before an event exploded
EVAL_LIMIT = 4096  # examples of the training set the checks run on


@dataclass
class Truth:
    losses: list[float] = field(default_factory=list)  # per step, the minibatch's
    norms: list[float] = field(default_factory=list)  # per step, before the update
    checks: list[tuple[int, float, dict[str, float]]] = field(default_factory=list)
    scaler_skips: list[int] = field(default_factory=list)

    def step(self, loss: torch.Tensor, model: nn.Module, scale: float = 1.0) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads).item() / scale if grads else math.nan
        self.losses.append(float(loss.detach().float()))
        self.norms.append(norm)

    def check(self, step: int, model: nn.Module, data, loss_fn) -> None:
        """The whole data set's loss and dead fractions after ``step``'s update."""
        x, y = data[0][:EVAL_LIMIT], data[1][:EVAL_LIMIT]
        alive: dict[str, torch.Tensor] = {}
        hooks = []
        for name, module in model.named_modules():
            if isinstance(module, nn.ReLU):
                hooks.append(module.register_forward_hook(_alive(name, alive)))
        try:
            with torch.no_grad():
                out = model(x)
                loss = float(loss_fn(out, y))
        finally:
            for h in hooks:
                h.remove()
        dead = {n: 1.0 - float(a.float().mean()) for n, a in alive.items()}
        self.checks.append((step, loss, dead))

    # -- onsets ------------------------------------------------------------------------
    def first_nan(self) -> int | None:
        return next((i for i, (v, n) in enumerate(zip(self.losses, self.norms))
                     if not (math.isfinite(v) and math.isfinite(n))), None)

    def dead_onset(self) -> tuple[int | None, str, float]:
        """(first check after which a layer stays over ``DEAD`` dead to the end, the
        layer, its fraction at the end)."""
        best: tuple[int | None, str, float] = (None, "", 0.0)
        if not self.checks:
            return best
        for name in self.checks[-1][2]:
            fractions = [(s, d.get(name, 0.0)) for s, _, d in self.checks]
            if fractions[-1][1] <= DEAD:
                continue
            onset = fractions[-1][0]
            for s, f in reversed(fractions):
                if f <= DEAD:
                    break
                onset = s
            if best[0] is None or onset < best[0]:
                best = (onset, name, fractions[-1][1])
        return best

    def loss_onset(self) -> tuple[int | None, float, float]:
        """(first check after which the whole-data loss stays above its best so far by a
        quarter of the progress, the best loss before it, the last loss)."""
        losses = [(s, v if math.isfinite(v) else math.inf) for s, v, _ in self.checks]
        if len(losses) < 2:
            return None, math.nan, math.nan
        first = losses[0][1]
        onset, before = None, math.nan
        for i in range(1, len(losses)):
            best = min(v for _, v in losses[:i])
            line = best + LOST * max(first - best, abs(best))
            if all(v > line for _, v in losses[i:]):
                onset, before = losses[i][0], best
                break
        return onset, before, losses[-1][1]

    def norm_onset(self, event: int) -> tuple[int | None, float]:
        """(first step from ``event`` whose norm is ``EXPLODED`` x the median of the 100
        before it, that ratio's peak)."""
        base = [n for n in self.norms[max(0, event - 100):event] if math.isfinite(n)]
        if not base:
            return None, math.nan
        level = statistics.median(base)
        ratios = [(i, n / level) for i, n in enumerate(self.norms[event:], start=event)]
        onset = next((i for i, r in ratios if not r < EXPLODED), None)
        return onset, max((r for _, r in ratios if math.isfinite(r)), default=math.nan)

    def summary(self, event: int | None = None) -> str:
        """The run in a few measured numbers, for the table (``event``: the step whose
        norm explosion to report)."""
        parts = []
        if self.checks:
            losses = [v for _, v, _ in self.checks]
            finite = [v for v in losses if math.isfinite(v)]
            best = f" (best {min(finite):.3g})" if finite else ""
            parts.append(f"loss {losses[0]:.3g}->{losses[-1]:.3g}{best}")
            dead = self.checks[-1][2]
            if dead:
                name = max(dead, key=lambda k: dead[k])
                parts.append(f"dead max {dead[name]:.0%} ({name})")
        if event is not None:
            onset, peak = self.norm_onset(event)
            parts.append(f"norm {peak:.3g}x its median from {onset}")
        nan = next((i for i, v in enumerate(self.losses) if not math.isfinite(v)), None)
        if nan is not None:
            parts.append(f"loss NaN from {nan}")
        if self.scaler_skips:
            parts.append(f"{len(self.scaler_skips)} scaler skips from {self.scaler_skips[0]}")
        return ", ".join(parts)


def _alive(name: str, alive: dict[str, torch.Tensor]):
    def hook(module, args, out):
        t = out.detach()
        axis = 1 if t.dim() > 2 else -1  # channels of a conv map, features otherwise
        dims = [d for d in range(t.dim()) if d != (axis % t.dim())]
        fired = (t > 0) | t.isnan()  # a NaN unit is not known to be dead
        now = fired.any(dim=dims) if dims else fired
        alive[name] = now if name not in alive else alive[name] | now
    return hook
