"""The global gradient norm (and loss) over steps, with the clip threshold, clipped, skipped
and non-finite steps marked (``Steps``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib import rc_context

from gradhealth.report.plots.figure import (
    _RC,
    HEALTHY,
    SEVERITY_COLOUR,
    _bounded,
    _figure,
    _no_data,
    _nonfinite,
    _not_drawn,
    _png,
    _positive,
    _xlim,
    beyond,
    guarded,
    plain,
)


@dataclass(frozen=True)
class Steps:
    """Per-step scalars for ``global_norm_png`` (NaN where not recorded)."""

    step: np.ndarray
    global_norm: np.ndarray
    loss: np.ndarray | None = None
    clip_pre_norm: np.ndarray | None = None
    clipped: np.ndarray | None = None  # 1.0 clipped, 0.0 not, NaN no clipper
    nonfinite: np.ndarray | None = None
    skipped_steps: Sequence[int] = field(default_factory=tuple)
    clip_threshold: float | None = None
    # recorded after a clip outside the watch (the Hugging Face Trainer's max_grad_norm):
    # the norm drawn is the clipped one, at most this threshold
    clipped_before: float | None = None


@guarded
def global_norm_png(data: Steps, *, title: str = "") -> bytes:
    """The global gradient norm over steps (log), pre-clip norm where recorded, the clip
    threshold as a dashed line, clipped steps as orange dots, skipped steps as red
    vertical lines, non-finite steps as red × on top; the loss below when recorded."""
    step = np.asarray(data.step, dtype=np.float64)
    loss = _bounded(np.asarray(data.loss, dtype=float)) if data.loss is not None else None
    has_loss = loss is not None and bool(np.isfinite(loss).any())
    with rc_context(_RC):
        fig, axes = _figure(11.0, 5.6 if has_loss else 3.6, rows=2 if has_loss else 1,
                            sharex=True)
        ax = axes[0]
        norm = _positive(np.asarray(data.global_norm, dtype=float))
        pre = (_positive(np.asarray(data.clip_pre_norm, dtype=float))
               if data.clip_pre_norm is not None else np.full(len(step), np.nan))
        _not_drawn(ax, beyond(np.asarray(data.global_norm, dtype=float), log=True)
                   + (beyond(np.asarray(data.clip_pre_norm, dtype=float), log=True)
                      if data.clip_pre_norm is not None else 0), "norm")
        drawn = np.isfinite(norm).any() or np.isfinite(pre).any()
        both = np.isfinite(pre) & np.isfinite(norm)
        if np.isfinite(pre).any() and not (both.any() and np.allclose(pre[both], norm[both])):
            ax.plot(step, pre, color="#9e9e9e", lw=1.0, label="pre-clip norm")
        if np.isfinite(norm).any():
            after = data.clipped_before
            ax.plot(step, norm, color=HEALTHY, lw=1.3,
                    label="global norm" if after is None else
                    f"global norm after the clip at {after:.3g} (recorded post-clip)")
            if after is not None and np.isfinite(_positive([after])[0]):
                ax.axhline(after, ls=":", color="black", lw=1.0,
                           label=f"clipped before recording: max_grad_norm {after:.3g}")
        if data.clipped is not None and drawn:
            hit = np.asarray(data.clipped, dtype=float) == 1.0
            y = np.where(np.isfinite(pre), pre, norm)
            if hit.any():
                ax.plot(step[hit], y[hit], "o", ms=3.5, color=SEVERITY_COLOUR["warning"],
                        label=f"clipped on {_count(int(hit.sum()), 'step')}")
        if data.clip_threshold is not None and drawn \
                and np.isfinite(_positive([data.clip_threshold])[0]):
            ax.axhline(data.clip_threshold, ls="--", color="black", lw=1.0,
                       label=f"clip threshold {data.clip_threshold:.3g}")
        skipped_label = f"skipped: {_count(len(data.skipped_steps), 'step')}"
        for k, s in enumerate(data.skipped_steps):
            ax.axvline(s, color=SEVERITY_COLOUR["critical"], lw=1.0, alpha=0.7,
                       label=skipped_label if k == 0 else None)
        if data.nonfinite is not None:
            bad = np.asarray(data.nonfinite) > 0
            for s in step[bad]:
                _nonfinite(ax, s, "×")
        if len(step):
            _xlim(ax, step.min(), step.max())
        if drawn:
            ax.set_yscale("log")
            ax.set_ylabel("gradient norm (log)")
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(loc="best", fontsize=8, framealpha=0.85)
        else:
            _no_data(ax, "no global norm recorded")
        if loss is not None and has_loss:
            axes[1].plot(step, loss, color="#37474f", lw=1.2)
            _not_drawn(axes[1], beyond(np.asarray(data.loss, dtype=float)), "loss")
            axes[1].set_ylabel("loss")
            axes[1].grid(True, axis="y", alpha=0.3)
            axes[1].set_xlabel("step")
        else:
            ax.set_xlabel("step")
        if title:
            ax.set_title(plain(title), loc="left")
        return _png(fig)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
