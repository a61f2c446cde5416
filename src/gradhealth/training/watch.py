"""``gh.watch``: gradient health during training, at the cost of a fused norm pass.

Wrap an ordinary training loop; with the optimizer given nothing changes inside it::

    with gh.watch(model, optimizer=opt, store="run.db") as w:
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            w.log_loss(loss)  # optional: no sync, the tensor is copied on device
            opt.step()
    print(w.report())

Without an optimizer object, call ``w.step(loss=loss)`` after backward; it returns
False when the guard skipped the step (then do not apply the update).

**Every step** (``register_step_pre_hook`` / ``register_step_post_hook`` of the
optimizer): the gradient norm of every parameter in one ``torch._foreach_norm`` call,
written into a preallocated device buffer with the loss (``log_loss``, or the model's
``.loss``), the loss scale and the clipper's pre-clip norm; nothing is copied to the
host. The global norm, non-finite flags and per-module norms are derived after the one
copy per ``flush_every`` steps, when the store is written and the spike rule runs (at
``"auto"``, several windows at once on steps too short to afford each: ``pacer``).

**Every ``sample_every`` steps** (the first step included; ``"auto"``: every 50, spaced
further on short steps, see ``gradhealth.training.pacer``): ``Taps`` is armed for that
step only (activation RMS, saturation, dead units, dL/d(activation) per module) and the
update-to-weight ratio is measured (from a transient copy of the weights: every step
would cost as much as the optimizer's update). The step does not wait for its numbers:
they are queued for one copy to the host, and the probe's rules judge them over a window
of samples at a later step, once they have landed (``findings`` and ``report`` wait).

**torch.compile**: pass the compiled module (``torch.compile(DDP(m))`` and
``DDP(torch.compile(m))`` alike). Gradient norms, loss, update ratios and
the guard work as in eager mode (they read parameters and the optimizer, not the graph);
names are those of the original module (no ``_orig_mod.`` prefix); sampled steps run
the forward eagerly to measure activations (see ``gradhealth.training.sampler``).

**torchrun** (DDP, FSDP2 ``fully_shard``): create the watch on every rank with the same
arguments, after wrapping or sharding the model. Gradient, update and weight norms are
the full parameters' (``gradhealth.measure.distributed`` declares how each statistic
reduces), so every clip and skip decision is the same on every rank; the loss and the
sampled activation statistics are each rank's own micro-batch's. Only rank 0 writes the
store; a ``DistributedDataParallel`` wrapper is looked through (modules are named as in
the wrapped model).

**Closures** (``optimizer.step(closure)``: LBFGS, Lightning) are recorded after their
first evaluation (``gradhealth.training.hooks``). **On exit** (also when the block
raises) the last window is flushed and every hook removed.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import nn

from gradhealth.errors import ConfigError, NoTrainableParametersError, describe
from gradhealth.measure import distributed
from gradhealth.measure.params import ParamLayout
from gradhealth.measure.wrappers import eager
from gradhealth.report.report import Report
from gradhealth.rules import amp as amp_rule
from gradhealth.rules import guard as guard_rule
from gradhealth.rules import spike as spike_rule
from gradhealth.rules.finding import Finding
from gradhealth.rules.incident import Incident
from gradhealth.store.writer import RunStore
from gradhealth.training.guard import Guard, Withheld
from gradhealth.training.hooks import Hooks
from gradhealth.training.journal import Journal
from gradhealth.training.options import check_options, model_meta, open_store, run_meta
from gradhealth.training.pacer import Every, FlushEvery, Pacer
from gradhealth.training.recorder import Recorder
from gradhealth.training.replay import producer
from gradhealth.training.sampler import Sampler
from gradhealth.training.window import WINDOW_SAMPLES


class Watch:
    """A running watch over one model (see the module docstring); close it or use ``with``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 store: str | os.PathLike | RunStore | None = None,
                 flush_every: FlushEvery = "auto", sample_every: Every = "auto",
                 guard: bool | Guard = False, clip: Any = None, scaler: Any = None,
                 window: int = WINDOW_SAMPLES):
        check_options(model, optimizer, flush_every, sample_every, window, clip, guard)
        self.model, self.optimizer = model, optimizer
        self.target, self.compiled = eager(model)
        self.layout = ParamLayout.of(self.target, optimizer)
        if not len(self.layout):
            raise NoTrainableParametersError(
                f"expected a model with trainable parameters to watch, got "
                f"{type(self.target).__name__} with none requiring grad; unfreeze some")
        self.guard = Guard() if guard is True else (guard or None)
        self.clip, self.scaler, self.flush_every = clip, scaler, flush_every
        self.pacer = Pacer(sample_every, flush_every)
        self.sampler = Sampler(self.target, self.pacer, self.compiled, window, optimizer)
        self.sampler.pending = self.sampler.due(0)
        self._withheld: Withheld | None = None
        self._closed = False
        self._own_store = not isinstance(store, RunStore)
        self._store = (open_store(store, run_meta(self, sample_every))
                       if store is not None and distributed.is_rank_zero() else None)
        cfg = self.guard.config if self.guard is not None else spike_rule.Config()
        self.journal = Journal(self._store, self.layout, spike_rule.Detector(cfg),
                               guarded=self.guard is not None, window=window)
        self.recorder = Recorder(self.layout, self.journal, self.pacer)
        # a step is plain when nothing but its record is due (``_after_step`` says): no
        # guard, clipper or GradScaler, not sampled, no update left to measure
        self._plain_ok = self.guard is None and clip is None and scaler is None
        self._plain = False
        self.hooks = Hooks(self.recorder, self.sampler, guarded=self.guard is not None,
                           device=self.layout.device, begin=self._begin_step,
                           end=self._end_step, amp_skip=self._amp_skip,
                           compiled=self.compiled)
        try:
            self.hooks.register(model, optimizer, scaler)
        except BaseException:
            self._remove()
            if self._store is not None and self._own_store:
                self._store.close()
            raise

    # -- public API ----------------------------------------------------------------
    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except Exception as err:
            if exc is None:
                raise
            exc.add_note(f"gradhealth: closing the watch also failed: {err!r}")

    def log_loss(self, loss: torch.Tensor) -> None:
        """Record this step's loss without a host sync (a device copy into the buffer)."""
        if self._closed:
            self._check_open("log_loss")
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ConfigError(f"log_loss expects the scalar loss tensor, got {describe(loss)}; "
                              f"pass the tensor you call .backward() on")
        self.recorder.log_loss(loss)

    def step(self, loss: torch.Tensor | None = None) -> bool:
        """Record one step of a loop without an optimizer object; call after backward.

        Returns False when the guard skipped the step: then do not apply the update.
        Without a guard it always returns True and never synchronises.
        """
        self._check_open("step")
        if self.optimizer is not None:
            raise ConfigError("Watch.step() is for loops without an optimizer object; this "
                              "watch already records each optimizer.step() through its hooks. "
                              "Drop the w.step() call, or create the watch without optimizer=.")
        if loss is not None:
            self.log_loss(loss)
        ok = self._begin_step()
        self.recorder.end(update_pending=True)
        self._after_step()
        return ok

    def flush(self) -> None:
        """Copy the window's numbers to the host, write the store, run the spike rule."""
        self.recorder.flush()
        self.recorder.process(wait=True)

    def close(self) -> None:
        """Flush the last window, remove every hook and close the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._remove()
            self.flush()
            self.journal.finish()
            self.journal.storage.set_meta("summary", self.summary())  # none after a full disk
        finally:
            self._remove()
            if self._store is not None and self._own_store:
                self._store.close()

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ConfigError(f"Watch.{what}() on a closed watch: its last window was flushed "
                              f"and its hooks removed, so nothing more is recorded; call it "
                              f"inside the `with gh.watch(...)` block, or start a new watch")

    @property
    def findings(self) -> list[Finding]:
        """Findings so far: the guard's at once, the rules' from the step after a sampled
        step, spikes once their window's numbers reached the host."""
        self.journal.judge()
        return list(self.journal.findings)

    @property
    def incidents(self) -> list[Incident]:
        """Incidents so far, in order of onset: the findings that tell one story, with one
        remedy (``gradhealth.rules.incident``)."""
        self.journal.judge()
        return self.journal.tracker.incidents()

    @property
    def steps(self) -> int:
        return self.recorder.step

    @property
    def skipped(self) -> int:
        """Steps the guard skipped so far (GradScaler's own skips are ``amp_skipped``)."""
        return self.journal.counts["skipped"] + self.journal.pending_skips()

    def summary(self) -> dict[str, Any]:
        counts = dict(self.journal.counts)
        counts["skipped"] = self.skipped
        return {**counts, "steps": self.recorder.step, "last_loss": self.journal.last["loss"],
                "last_global_norm": self.journal.last["global_norm"],
                "store": str(self._store.path) if self._store is not None else None}

    def report(self) -> Report:
        """Findings and the latest window's per-module statistics (flushes first)."""
        if not self._closed:
            self.flush()
        meta = {**model_meta(self.target, self.layout), "loss": self.journal.last["loss"],
                **self.summary()}
        return Report(layers=self.journal.window_layers(), findings=self.findings, meta=meta,
                      incidents=self.incidents)

    # -- the step --------------------------------------------------------------------
    def _begin_step(self) -> bool:
        rec = self.recorder
        if self._plain and not self.layout.stale(self.optimizer):
            # most steps: the record alone (on a millisecond step each line below costs)
            self.pacer.step_started(sampled=False)
            rec.process(wait=False)
            rec.begin(self._lr(), None)
            return True
        taps = self.sampler.disarm()
        self.pacer.step_started(sampled=taps is not None)
        rec.settle_update()
        rec.process(wait=False)  # earlier windows' host work, behind this step's queued kernels
        if self.layout.stale(self.optimizer):
            self._relayout()
        if self.hooks.scaler is not None:
            self.hooks.scaler.stepped = True
        step = rec.step
        norms = rec.begin(self._lr(), self.hooks.scale(), row=self.guard is not None)
        if self.guard is not None and norms is not None:
            decision = self.guard.decide(step, norms, rec.loss_cell(), self.journal.detector)
            if decision.spikes:
                self.journal.spikes(decision.spikes, skipped=decision.skip)
            if decision.released:
                self.journal.add(guard_rule.released(step, self.guard.max_consecutive), step)
            if decision.reason is not None:  # a skip, and why
                self._skip(step, decision.reason, norms, decision.own == "nonfinite")
        if taps is not None:  # queued for the host; judged once it has landed
            started = time.perf_counter()
            sample = self.sampler.collect(taps, rec.loss_cell(), self.hooks.scale(), step)
            self.journal.sample(step, sample)
            self.pacer.sampled(step, time.perf_counter() - started)
        note = rec.note
        if note.skipped is None:
            if self.clip is not None:
                rec.clipped(self.clip(self.target))
            if taps is not None:
                rec.watch_update()
        return note.skipped is None

    def _relayout(self) -> None:
        """The parameters a step updates changed (a layer unfrozen, a parameter group
        added): measure, guard and store the new set from this step on."""
        self.layout = ParamLayout.of(self.target, self.optimizer)
        self.recorder.relayout(self.layout)
        self.journal.relayout(self.layout)

    def _end_step(self) -> None:
        if not self._plain:
            self.recorder.settle_update()  # the optimizer has applied the update by now
            if self._withheld is not None:
                self._withheld.give_back()
                self._withheld = None
        self.recorder.end()
        self._after_step()

    def _after_step(self) -> None:
        if self.journal.second_look or self.pacer.sample_due(self.recorder.step):
            self.journal.second_look = False  # rules/examples.second_look
            self.sampler.pending = True
        elif self._plain and self.hooks.loss_outputs is not None:
            return  # plain again: the hooks as they are (``Hooks.sync`` would keep them)
        self.hooks.sync()
        self._plain = (self._plain_ok and not self.sampler.pending
                       and self.sampler.taps is None and self.recorder.settled)

    def _skip(self, step: int, reason: str, norms: torch.Tensor | list[float],
              here: bool) -> None:
        self.recorder.note.skipped = "guard"
        module = None
        if reason == "nonfinite":  # every rank judges together; ``here``: this one saw it
            values = norms.tolist() if isinstance(norms, torch.Tensor) else norms
            finding = producer(self.target, self.hooks.last, step, values,
                               self.layout.owners, ranks=True, here=here,
                               replay_ok=not distributed.collective_forward(self.target))
            self.journal.add(finding, step)
            module = finding.module or None
        if self.optimizer is not None:
            # a closure may be evaluated again (LBFGS): then gradients come back, so the
            # weights and the optimizer state are also copied and restored
            self._withheld = Withheld(self.optimizer, snapshot=self.hooks.closure is not None)
        self.journal.skip(step, f"{reason}: skipped by the guard", module)

    def _amp_skip(self) -> None:
        """GradScaler skipped this iteration's optimizer step: record it as its own kind."""
        taps = self.sampler.disarm()
        if taps is not None:
            taps.release()
            self.sampler.pending = True  # sample the next step instead
        step = self.recorder.step
        self.recorder.begin(self._lr(), self.hooks.scale(), skipped="amp")
        scale_cell = self.hooks.scale()
        if self.guard is not None and scale_cell is not None:
            scale = float(scale_cell)  # a sync, on GradScaler-skipped steps only
            if amp_rule.diverged(scale) and not self.journal.amp_diverged:
                self.journal.amp_diverged = True
                self.journal.add(amp_rule.divergence(step, scale), step)
                self.journal.add(producer(self.target, self.hooks.last, step, None, []), step)
        self.recorder.end()
        self._after_step()

    def _lr(self) -> float | torch.Tensor | None:
        groups = self.optimizer.param_groups if self.optimizer is not None else None
        return groups[0].get("lr") if groups else None

    def _remove(self) -> None:
        self.hooks.remove()
        if self._withheld is not None:
            self._withheld.give_back()
            self._withheld = None
