"""Wortsman et al. 2023: transformer instabilities at high learning rates, in a small model.

A pre-LN transformer language model (2 layers, d = 128, 2 heads of 64, ~400 000
parameters) learns sequences of ``lab.data.chains`` (the next token needs attention over
the whole prefix) over a sweep of learning rates, as a baseline, with qk-layernorm
(``gradhealth.fixes.qk_layernorm_``), with the z-loss (``gradhealth.z_loss``) and with
both, each run under ``gh.watch``. The paper's qualitative result (Sec. 3.1, Fig. 1): at
high learning rates the baseline's attention logits grow and its final loss is much
worse; qk-layernorm keeps the loss near its optimum and makes the final loss far less
sensitive to the learning rate. Ours adds the watch's part: attention_logit_growth is
named before the loss diverges, and never in a run that trains normally.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from gradhealth.lab.data.chains import synthetic_chains
from gradhealth.lab.experiment import Check, Context, Outcome, fmt
from gradhealth.lab.lm import Recipe, RunResult, train_lm
from gradhealth.lab.wortsman_plot import plot
from gradhealth.rules.attention import LOGIT_LIMIT

NAME = "wortsman2023"
TITLE = "Attention logit growth at high learning rates; qk-layernorm and z-loss"
CITATION = ("Wortsman et al. 2023, Small-scale proxies for large-scale Transformer training "
            "instabilities, arXiv:2309.14322; Sec. 3.1 (attention logit growth, "
            "qk-layernorm; Dehghani et al. 2023), Sec. 3.2 (z-loss; Chowdhery et al. 2022).")

VOCAB, CHAINS, ALPHA, SEQ, N_SEQ = 32, 4, 0.1, 32, 20000
D, HEADS, LAYERS, BATCH, WARMUP, SAMPLE_EVERY = 128, 2, 2, 32, 0.3, 10
QUICK_STEPS, QUICK_LRS = 300, (1e-2, 3e-2, 1e-1)
FULL_STEPS, FULL_LRS = 1000, (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
VARIANTS = (("baseline", False, False), ("qk-layernorm", True, False),
            ("z-loss", False, True), ("qk-layernorm + z-loss", True, True))
NEW_KINDS = ("attention_logit_growth", "logit_divergence", "adam_epsilon", "update_ratio")
HEALTHY_LR = 1e-2  # the best learning rate of the quick sweep: "normal training"
SMOOTH = 10  # steps in the loss average that divergence is read from
DIVERGE_RISE = 0.15
"""Nats the smoothed loss must rise above its running minimum to call the run diverged
(the 10-step mean's noise is ~0.02 nats here; a qk-layernorm run at lr 0.1 bumps by 0.1
and recovers, the baselines that diverge rise by 0.2-0.25)."""
BEHIND = 0.1
"""Nats a run's final loss must be above its qk-layernorm twin's (the same learning rate,
seed and data, with qk-layernorm) to count as trained worse for want of it (final losses
of twins that both train normally differ by 0.00-0.03 here; at 3e-2 and 1e-1 the runs
without qk-layernorm end 0.10-0.43 behind)."""
TWIN = {"baseline": "qk-layernorm", "z-loss": "qk-layernorm + z-loss"}
MUCH_WORSE = 0.3  # nats above the sweep's best final loss
SENSITIVITY_RATIO = 0.5  # qk-layernorm's learning-rate sensitivity at most this x baseline's


def diverged_at(losses: np.ndarray) -> int | None:
    """The first step whose ``SMOOTH``-step mean loss is ``DIVERGE_RISE`` above the lowest
    such mean before it (a non-finite loss counts as divergence), or None."""
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        return int(bad[0])
    means = np.convolve(losses, np.ones(SMOOTH) / SMOOTH, mode="valid")
    low = np.minimum.accumulate(means)
    rise = np.flatnonzero(means - low >= DIVERGE_RISE)
    return int(rise[0]) + SMOOTH - 1 if len(rise) else None


def final_loss(result: RunResult) -> float:
    tail = result.losses[-max(1, len(result.losses) // 10):]
    return float(np.mean(tail)) if np.all(np.isfinite(tail)) else math.inf


def sensitivity(finals: dict[float, float], best: float, initial: float) -> float:
    """Wortsman et al. 2023 (Sec. 2): the mean over the sweep of min(final, initial) - best."""
    return float(np.mean([min(v, initial) - best for v in finals.values()]))


def run(ctx: Context) -> Outcome:
    steps, lrs = (QUICK_STEPS, QUICK_LRS) if ctx.quick else (FULL_STEPS, FULL_LRS)
    data = synthetic_chains(N_SEQ, SEQ, vocab=VOCAB, chains=CHAINS, alpha=ALPHA, seed=ctx.seed)
    runs: dict[tuple[str, float], RunResult] = {}
    with tempfile.TemporaryDirectory() as tmp, \
            ctx.progress(f"{len(VARIANTS)} variants x {len(lrs)} learning rates, {steps} steps",
                         len(VARIANTS) * len(lrs)) as advance:
        for lr in lrs:
            for label, qk, zl in VARIANTS:
                recipe = Recipe(lr=lr, steps=steps, batch=BATCH, d=D, heads=HEADS, layers=LAYERS,
                                qk_norm=qk, z_loss=zl, warmup=WARMUP,
                                sample_every=SAMPLE_EVERY, seed=ctx.seed)
                store = Path(tmp) / f"{label.replace(' ', '')}-{lr:g}.db"
                runs[(label, lr)] = train_lm(recipe, data.tokens, store, ctx.device)
                advance(1)
    return _outcome(ctx, runs, lrs, steps, data)


def _outcome(ctx: Context, runs: dict[tuple[str, float], RunResult], lrs, steps, data) -> Outcome:
    finals = {key: final_loss(r) for key, r in runs.items()}
    best = min(finals.values())
    initial = math.log(VOCAB)
    growth = {key: r.first("attention_logit_growth") for key, r in runs.items()}
    diverged = {key: diverged_at(r.losses) for key, r in runs.items()}
    peak = {key: float(np.nanmax(r.logit_max)) if len(r.logit_max) else math.nan
            for key, r in runs.items()}
    rows = [_row(key, finals[key], peak[key], growth[key], diverged[key]) for key in runs]
    top = max(lrs)
    wrong = went_wrong(finals, diverged)
    qk_normal = [k for k in runs if k[0].startswith("qk") and diverged[k] is None]
    healthy = [k for k in runs if k[1] == HEALTHY_LR]
    new_in_healthy = sorted({(kind, k[0]) for k in healthy for kind, _, _ in runs[k].findings
                             if kind in NEW_KINDS})
    sens = {v: sensitivity({lr: finals[(v, lr)] for lr in lrs}, best, initial)
            for v, _, _ in VARIANTS}
    checks = [
        Check(f"at the highest learning rate ({top:g}) the baseline's max attention logit "
              f"grows past {LOGIT_LIMIT:g} and 10x qk-layernorm's",
              f"baseline {fmt(peak[('baseline', top)])}, qk-layernorm "
              f"{fmt(peak[('qk-layernorm', top)])}",
              peak[("baseline", top)] > max(LOGIT_LIMIT, 10 * peak[("qk-layernorm", top)])),
        Check(f"there the baseline's final loss is much worse: at least {MUCH_WORSE:g} nats "
              f"above the sweep's best ({fmt(best)})",
              f"{fmt(finals[('baseline', top)])} (+{fmt(finals[('baseline', top)] - best)})",
              finals[("baseline", top)] >= best + MUCH_WORSE),
        Check("qk-layernorm keeps the loss nearer its optimum at every learning rate: never "
              "worse than the baseline, and its learning-rate sensitivity (mean excess over "
              f"the best) at most {SENSITIVITY_RATIO:g}x the baseline's",
              f"sensitivity qk-layernorm {fmt(sens['qk-layernorm'])}, baseline "
              f"{fmt(sens['baseline'])}",
              all(finals[("qk-layernorm", lr)] <= finals[("baseline", lr)] + 0.02 for lr in lrs)
              and sens["qk-layernorm"] <= SENSITIVITY_RATIO * sens["baseline"]),
        Check("in every run without qk-layernorm whose loss diverges or ends at least "
              f"{BEHIND:g} nats behind its qk-layernorm twin's, the watch names "
              "attention_logit_growth, and before the loss diverges",
              "; ".join(_named(k, growth[k], diverged[k]) for k in wrong)
              or "no run without qk-layernorm diverged or fell behind",
              bool(wrong) and all(warned(growth[k], diverged[k]) for k in wrong)),
        Check("no attention_logit_growth in a qk-layernorm run that trains normally",
              f"{sum(growth[k] is not None for k in qk_normal)} of {len(qk_normal)}",
              bool(qk_normal) and all(growth[k] is None for k in qk_normal)),
        Check(f"healthy runs (lr {HEALTHY_LR:g}, all variants) raise none of "
              f"{', '.join(NEW_KINDS)}",
              ", ".join(f"{kind} ({v})" for kind, v in new_in_healthy) or "none",
              not new_in_healthy),
    ]
    figure = plot(ctx, runs, lrs, finals, growth, diverged, data, NAME)
    notes = [f"{steps} steps, batch {BATCH} x {SEQ} tokens, AdamW (0.9, 0.95), eps 1e-8, clip 1, "
             f"linear warm-up over {WARMUP:.0%} of the steps then cosine to 0; the watch samples "
             f"every {SAMPLE_EVERY} steps. Data: {CHAINS} Markov chains over {VOCAB} tokens; "
             f"Bayes-optimal loss {fmt(data.bayes)}, the chains' bigram {fmt(data.bigram)}, "
             f"initial ln({VOCAB}) = {fmt(initial)}.",
             "learning-rate sensitivity per variant: "
             + ", ".join(f"{v} {fmt(s)}" for v, s in sens.items()),
             _extremes("healthy runs (lr 1e-2)", [runs[k] for k in healthy]),
             _extremes("all runs", list(runs.values()))]
    return Outcome(NAME, TITLE, ("lr, variant", "published (Wortsman et al. 2023)",
                                 "ours: final loss, peak |logit|",
                                 "ours: attention_logit_growth / loss diverged at step"),
                   rows, checks, figure, notes)


def _extremes(label: str, results: list[RunResult]) -> str:
    """What the new rules read, at its worst over ``results``."""
    def pick(key: str, reduce) -> str:
        return fmt(reduce(r.extremes[key] for r in results))

    return (f"{label}: largest attention logit {pick('logit_max', max)}, lowest head entropy "
            f"{pick('entropy_share_min', min)} of uniform, log Z from "
            f"{pick('log_z_min', min)} to {pick('log_z_max', max)}, largest update ratio "
            f"{pick('update_ratio_max', max)}, smallest gradient RMS "
            f"{pick('adam_ratio_min', min)}x Adam's eps")


PUBLISHED = {"baseline": "high lr: logits grow, loss much worse",
             "qk-layernorm": "loss near optimum across lrs",
             "z-loss": "targets log Z, not attention (Sec. 3.2)",
             "qk-layernorm + z-loss": "their default: stable"}


def _row(key: tuple[str, float], final: float, peak: float, growth: int | None,
         diverged: int | None) -> tuple[str, str, str, str]:
    return (f"{key[1]:g}, {key[0]}", PUBLISHED[key[0]], f"{fmt(final)}, {fmt(peak)}",
            f"{'-' if growth is None else growth} / {'-' if diverged is None else diverged}")


def went_wrong(finals: dict[tuple[str, float], float],
               diverged: dict[tuple[str, float], int | None]) -> list[tuple[str, float]]:
    """The runs without qk-layernorm that went wrong: the loss diverged (rose), or it ended
    ``BEHIND`` its twin with qk-layernorm. At 1e-1 such a run may stall high instead of
    rising; which of the two, a different CPU's rounding decides."""
    return [k for k in finals if k[0] in TWIN and (
        diverged[k] is not None or finals[k] - finals[(TWIN[k[0]], k[1])] >= BEHIND)]


def warned(growth: int | None, diverged: int | None) -> bool:
    """Named, and (where the loss diverged) before it did."""
    return growth is not None and (diverged is None or growth < diverged)


def _named(key: tuple[str, float], growth: int | None, diverged: int | None) -> str:
    run = f"{key[0]} lr {key[1]:g}: "
    if growth is None:
        return run + "not named"
    if diverged is None:
        return run + f"named at step {growth}, the loss never rose"
    lead = diverged - growth
    return run + (f"named {lead} steps before it diverged" if lead > 0 else
                  f"named at step {growth}, after it diverged at {diverged}")
