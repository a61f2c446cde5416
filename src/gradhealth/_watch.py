"""``gh.watch`` and ``gh.guard``: the verbs; the machinery is in ``gradhealth.training``."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from gradhealth.store.writer import RunStore
from gradhealth.training.guard import Guard
from gradhealth.training.pacer import Every, FlushEvery
from gradhealth.training.watch import Watch
from gradhealth.training.window import WINDOW_SAMPLES


def watch(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
          store: str | os.PathLike | RunStore | None = None, flush_every: FlushEvery = "auto",
          sample_every: Every = "auto", guard: bool | Guard = False, clip: Any = None,
          scaler: Any = None, window: int = WINDOW_SAMPLES) -> Watch:
    """Watch ``model`` during training; returns an open ``Watch`` (``gradhealth.training.watch``
    says what it measures, when, and at what cost).

    ``store``: path of a new SQLite run store (or a ``RunStore``), written every
    ``flush_every`` steps. ``sample_every``: activation statistics every K steps (None:
    never). Both default to ``"auto"``: every 50 steps, spaced further on steps so short
    that sampling or writing would cost more than 0.5% of the training time each
    (``gradhealth.training.pacer``); a number is kept exactly. ``guard``: skip non-finite
    and spiking steps (``True`` or a ``Guard``). ``clip``: a clipper from
    ``gradhealth.clip`` applied before each step that goes through. ``scaler``: the
    ``torch.amp.GradScaler`` of the loop. ``window``: sampled steps the probe's rules
    judge together.
    """
    return Watch(model, optimizer, store=store, flush_every=flush_every,
                 sample_every=sample_every, guard=guard, clip=clip, scaler=scaler, window=window)


def guard(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
          store: Any = None, flush_every: FlushEvery = "auto", sample_every: Every = "auto",
          clip: Any = None, scaler: Any = None, policy: Guard | None = None) -> Watch:
    """``gh.watch`` with the guard on: skip non-finite and spiking steps, name NaN producers.

    ``policy`` sets the thresholds (``Guard(z_threshold=..., spikes=False, ...)``); the
    other arguments are ``gh.watch``'s. Use it like the watch::

        with gh.guard(model, opt, store="run.db") as g:
            for x, y in loader:
                ...  # ordinary loop; skipped steps leave weights and optimizer untouched
        g.skipped  # how many steps were skipped
    """
    return Watch(model, optimizer, store=store, flush_every=flush_every,
                 sample_every=sample_every, guard=policy or Guard(), clip=clip, scaler=scaler)
