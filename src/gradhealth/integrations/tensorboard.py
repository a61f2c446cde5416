"""TensorBoard: write a gradhealth run as TensorBoard scalars (event files).

    from gradhealth.integrations.tensorboard import TensorBoardExporter, export_run

    export_run("run.db", "tb/run1")            # a finished (or running) run store

    with gh.watch(model, opt, store="run.db") as w, TensorBoardExporter("tb/run1") as tb:
        for i, (x, y) in enumerate(loader):
            ...
            if i % 500 == 0:
                tb.export(w)                   # live: the steps flushed since last time

Then ``tensorboard --logdir tb``. Needs ``pip install 'gradhealth[tensorboard]'``; the
files are written by ``torch.utils.tensorboard.SummaryWriter``.

Tags (``prefix`` defaults to ``gradhealth``), at the run's own step numbers and wall
times: ``loss``, ``global_norm``, ``update_ratio``, ``lr``, ``clip_pre_norm`` (each where
it was recorded), ``nonfinite`` and ``skipped`` (0/1), ``findings`` (how many findings
were known at that step), ``grad_norm/<module>`` per layer (the store's
``weight_grad_norm``; name other layer statistics in ``layer_stats``, which become
``<stat>/<module>``), and each finding as text under ``findings`` at its step.

The source is read from the run store (``gradhealth.load``); a ``Watch`` is flushed
first and must have been given a ``store=``. Each ``export`` writes only steps newer than
the last one it wrote, so calling it repeatedly on a live run appends.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradhealth.errors import ConfigError, describe
from gradhealth.integrations._optional import load
from gradhealth.store.reader import Run
from gradhealth.store.reader import load as load_run
from gradhealth.training.watch import Watch

__all__ = ["STEP_SCALARS", "TensorBoardExporter", "export_run"]

STEP_SCALARS = ("loss", "global_norm", "update_ratio", "lr", "clip_pre_norm", "nonfinite",
                "skipped")
LAYER_TAGS = {"weight_grad_norm": "grad_norm"}
ROOT = "(root)"  # tag of the parameters owned by the model itself (module name "")


class TensorBoardExporter:
    """Appends a run's numbers to TensorBoard event files under ``logdir``."""

    def __init__(self, logdir: str | os.PathLike, *, prefix: str = "gradhealth",
                 layer_stats: Sequence[str] = ("weight_grad_norm",)):
        tb = load(("torch.utils.tensorboard",), feature="gradhealth's TensorBoard exporter",
                  extra="tensorboard")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(f"prefix must be a non-empty str, got {prefix!r}")
        self.logdir = Path(logdir)
        self.prefix = prefix
        self.layer_stats = tuple(layer_stats)
        self.writer = tb.SummaryWriter(log_dir=str(self.logdir))
        self.last_step = -1  # the newest step written so far
        self._findings = 0  # findings written so far

    def export(self, source: str | os.PathLike | Run | Watch) -> int:
        """Write the steps of ``source`` newer than the last export; returns how many."""
        run = _run_of(source)
        steps = run.steps
        new = np.flatnonzero(steps["step"] > self.last_step) if len(steps) else np.array([], int)
        step_of = steps["step"]
        wall = steps["wall_time"]
        for name in STEP_SCALARS:
            column = steps[name]
            missing = steps.missing(name) if name not in ("nonfinite", "skipped") else None
            for i in new:
                if missing is None or not missing[i]:
                    self._scalar(name, column[i], step_of[i], wall[i])
        self._findings_count(run, step_of[new], wall[new])
        for stat in self.layer_stats:
            self._layer_stat(run, stat)
        self._finding_texts(run, wall, step_of)
        if len(new):
            self.last_step = int(step_of[new].max())
        self.writer.flush()
        return int(len(new))

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardExporter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # -- pieces --------------------------------------------------------------------------
    def _scalar(self, name: str, value: Any, step: Any, wall: Any) -> None:
        self.writer.add_scalar(f"{self.prefix}/{name}", float(value), global_step=int(step),
                               walltime=float(wall))

    def _findings_count(self, run: Run, steps: np.ndarray, wall: np.ndarray) -> None:
        at = np.array([-1 if s is None else s for s in run.finding_steps], dtype=np.int64)
        for step, t in zip(steps, wall):
            self._scalar("findings", int((at <= step).sum()), step, t)

    def _layer_stat(self, run: Run, stat: str) -> None:
        if stat not in run.stats:
            return  # not recorded (yet): e.g. activation statistics of an unsampled run
        steps, layers, values = run.layer_stat(stat)
        tag = LAYER_TAGS.get(stat, stat)
        wall_of = dict(zip(run.steps["step"].tolist(), run.steps["wall_time"].tolist()))
        for i in np.flatnonzero(steps > self.last_step):
            step = int(steps[i])
            for j, layer in enumerate(layers):
                if not math.isnan(values[i, j]):
                    self.writer.add_scalar(f"{self.prefix}/{tag}/{layer or ROOT}",
                                           float(values[i, j]), global_step=step,
                                           walltime=wall_of.get(step))

    def _finding_texts(self, run: Run, wall: np.ndarray, steps: np.ndarray) -> None:
        wall_of = dict(zip(steps.tolist(), wall.tolist()))
        for f, step in list(zip(run.findings, run.finding_steps))[self._findings:]:
            where = f" `{f.module}`" if f.module else ""
            text = f"**{f.severity} {f.kind}**{where}: {f.message}\n\n{f.remedy}"
            self.writer.add_text(f"{self.prefix}/findings", text,
                                 global_step=0 if step is None else int(step),
                                 walltime=wall_of.get(step))
        self._findings = len(run.findings)


def export_run(source: str | os.PathLike | Run | Watch, logdir: str | os.PathLike, *,
               prefix: str = "gradhealth",
               layer_stats: Sequence[str] = ("weight_grad_norm",)) -> Path:
    """Write every step of ``source`` under ``logdir`` (one-shot); returns ``logdir``."""
    with TensorBoardExporter(logdir, prefix=prefix, layer_stats=layer_stats) as tb:
        tb.export(source)
    return tb.logdir


def _run_of(source: Any) -> Run:
    if isinstance(source, Run):
        return source
    if isinstance(source, Watch):
        path = source.summary()["store"]
        if path is None:
            raise ConfigError("this watch has no run store to export; open it with "
                              "gh.watch(model, opt, store='run.db')")
        if not getattr(source, "_closed", False):  # close() has flushed already
            source.flush()
        return load_run(path)
    if isinstance(source, (str, os.PathLike)):
        return load_run(source)
    raise ConfigError(f"export expects a run store path, a Run (gradhealth.load) or a "
                      f"Watch with a store, got {describe(source)}")
