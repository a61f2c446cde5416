"""A watched run's options: checked, recorded as metadata, and its store opened."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from gradhealth.errors import ConfigError, StoreError, describe
from gradhealth.measure import distributed
from gradhealth.measure.params import ParamLayout
from gradhealth.measure.readiness import require_materialised
from gradhealth.measure.wrappers import eager
from gradhealth.store.writer import RunStore, environment
from gradhealth.training.guard import Guard
from gradhealth.training.pacer import Every


def model_meta(target: nn.Module, layout: ParamLayout) -> dict[str, Any]:
    """The watched model in a few words: its class, size, device and dtype."""
    p = layout.params[0]
    return {"model": type(target).__name__, "n_params": sum(q.numel() for q in layout.params),
            "device": str(p.device), "dtype": str(p.dtype).replace("torch.", "")}


def run_meta(watch: Any, sample_every: Every) -> dict[str, Any]:
    """Model summary, configuration and library versions of a ``Watch`` (JSON-able)."""
    clip = watch.clip
    return {
        "kind": "watch", **model_meta(watch.target, watch.layout),
        "modules": watch.layout.modules,  # parameter owners: the weight_grad_norm layers
        "tied": watch.layout.tied,  # holders of another module's parameter -> its owner
        "compiled": watch.compiled,
        "optimizer": type(watch.optimizer).__name__ if watch.optimizer is not None else None,
        "config": {"flush_every": watch.flush_every, "sample_every": sample_every,
                   "guard": repr(watch.guard) if watch.guard is not None else None,
                   "clip": repr(clip) if clip is not None else None,
                   "scaler": watch.scaler is not None},
        "clip_threshold": getattr(clip, "max_norm", None),
        "environment": environment(),
        "processes": distributed.describe(watch.layout.shards is not None),
    }


def open_store(store: Any, meta: dict[str, Any]) -> RunStore | None:
    """A new run store at the path ``store`` (or ``store`` itself, a RunStore), with ``meta``."""
    if store is None:
        return None
    if isinstance(store, RunStore):
        with store.batch():
            for key, value in meta.items():
                store.set_meta(key, value)
        return store
    if not isinstance(store, (str, os.PathLike)):
        raise ConfigError(f"store= expects a path or a RunStore, got {describe(store)}")
    if os.path.isfile(store):
        raise StoreError(f"{store} already exists; choose a new path, or replace an old run "
                         f"with store=RunStore.create(path, overwrite=True) (refused while "
                         f"another run still writes it).")
    return RunStore.create(store, meta)


def check_options(model: Any, optimizer: Any, flush_every: Any, sample_every: Any,
                  window: Any, clip: Any, guard: Any) -> None:
    if not isinstance(guard, (bool, Guard)):
        raise ConfigError(f"guard= expects True/False or a gradhealth.Guard, got "
                          f"{describe(guard)}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"gh.watch expects a torch.nn.Module, got {describe(model)}")
    require_materialised(eager(model)[0], "gh.watch")
    if optimizer is not None and not hasattr(optimizer, "register_step_pre_hook"):
        raise ConfigError(f"optimizer= expects a torch.optim.Optimizer, got {describe(optimizer)}")
    if optimizer is not None:  # another model's: its steps would time this model's records
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        own = [p for p in model.parameters() if p.requires_grad]
        if own and not any(id(p) in held for p in own):  # some of them is a legitimate split
            raise ConfigError(
                f"optimizer= holds none of the model's {len(own)} trainable parameters, so "
                f"its steps would not update this model; pass the optimizer built from this "
                f"model's parameters (an optimizer that keeps its own copies of the weights: "
                f"leave optimizer= out and call w.step() after backward)")
    check_intervals(flush_every, sample_every)
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an int >= 1, got {window!r}")
    if clip is not None and not callable(clip):  # any callable(module) with .pre_norm/.clipped
        raise ConfigError(f"clip= expects a clipper such as gradhealth.clip.ClipNorm(1.0) "
                          f"(called with the model after backward), got {describe(clip)}")


def check_intervals(flush_every: Any, sample_every: Any) -> None:
    """``flush_every``: an int >= 1 or "auto"; ``sample_every``: the same, or None."""
    if flush_every != "auto" and (isinstance(flush_every, bool)
                                  or not isinstance(flush_every, int) or flush_every < 1):
        raise ConfigError(f"flush_every must be \"auto\" (every 50 steps, spaced further on "
                          f"very short steps) or an int >= 1, got {flush_every!r}")
    if sample_every is not None and sample_every != "auto" and (
            isinstance(sample_every, bool) or not isinstance(sample_every, int)
            or sample_every < 1):
        raise ConfigError(f"sample_every must be \"auto\" (every 50 steps, spaced further on "
                          f"very short steps), an int >= 1, or None (no activation "
                          f"statistics), got {sample_every!r}")
