"""The wortsman2023 figure: final loss against learning rate per variant, the baseline's
and qk-layernorm's largest attention logit over the steps, and the loss curves at the
highest learning rate, with the step where the watch named attention_logit_growth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gradhealth.lab.experiment import Context, new_figure, save_figure
from gradhealth.lab.lm import RunResult
from gradhealth.rules.attention import LOGIT_LIMIT

STYLE = {"baseline": ("C3", "o", "-"), "qk-layernorm": ("C0", "s", "-"),
         "z-loss": ("C1", "^", "--"), "qk-layernorm + z-loss": ("C2", "D", "--")}


def plot(ctx: Context, runs: dict[tuple[str, float], RunResult], lrs, finals, growth, diverged,
         data, name: str) -> Path:
    fig, ax = new_figure(15, 4.2, 1, 3)
    variants = list(dict.fromkeys(k[0] for k in runs))
    for v in variants:
        color, marker, line = STYLE[v]
        ys = [finals[(v, lr)] if math.isfinite(finals[(v, lr)]) else np.nan for lr in lrs]
        ax[0, 0].plot(lrs, ys, marker=marker, ls=line, color=color, label=v)
    ax[0, 0].axhline(data.bayes, color="k", ls=":", lw=1, label="Bayes-optimal")
    ax[0, 0].axhline(data.bigram, color="grey", ls=":", lw=1, label="bigram (no attention)")
    ax[0, 0].set(xscale="log", xlabel="peak learning rate", ylabel="final loss",
                 title="final loss vs learning rate")
    ax[0, 0].legend(fontsize=7)
    shades = np.linspace(0.35, 1.0, len(lrs))
    for v, cmap in (("baseline", "Reds"), ("qk-layernorm", "Blues")):
        for lr, shade in zip(lrs, shades):
            r = runs.get((v, lr))
            if r is None or not len(r.sampled):
                continue
            color = _cmap(cmap, shade)
            ax[0, 1].plot(r.sampled, r.logit_max, color=color, lw=1.2, label=f"{v}, lr {lr:g}")
            at = growth.get((v, lr))
            if at is not None:
                k = int(np.searchsorted(r.sampled, at))
                ax[0, 1].plot([at], [r.logit_max[min(k, len(r.logit_max) - 1)]], "k*", ms=8)
    ax[0, 1].axhline(LOGIT_LIMIT, color="k", ls=":", lw=1, label=f"rule's limit {LOGIT_LIMIT:g}")
    ax[0, 1].set(yscale="log", xlabel="step", ylabel="max |attention logit| over the layers",
                 title="attention logits (star: attention_logit_growth named)")
    ax[0, 1].legend(fontsize=6)
    top = max(lrs)
    for v in variants:
        r = runs[(v, top)]
        color, _, line = STYLE[v]
        smooth = np.convolve(np.nan_to_num(r.losses, nan=np.log(32.0)), np.ones(10) / 10,
                             mode="valid")
        ax[0, 2].plot(np.arange(len(smooth)) + 9, smooth, color=color, ls=line, lw=1, label=v)
        if diverged.get((v, top)) is not None:
            ax[0, 2].axvline(diverged[(v, top)], color=color, ls=":", lw=1)
        if growth.get((v, top)) is not None:
            ax[0, 2].plot([growth[(v, top)]], [smooth[max(0, growth[(v, top)] - 9)]], "k*", ms=8)
    ax[0, 2].axhline(data.bayes, color="k", ls=":", lw=1)
    ax[0, 2].set(xlabel="step", ylabel="training loss (10-step mean)",
                 title=f"lr {top:g}: dotted line = loss diverged, star = finding")
    ax[0, 2].legend(fontsize=7)
    return save_figure(fig, ctx.figure_path(name))


def _cmap(name: str, shade: float):
    from matplotlib import colormaps

    return colormaps[name](shade)
