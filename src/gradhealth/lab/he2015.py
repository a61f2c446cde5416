"""He et al. 2015: a 30-layer ReLU net with Glorot init stalls; with He init it trains.

Glorot's Var(W) = 2/(n_in+n_out) = 1/n for square layers is half of what a ReLU needs
(2/n_in), so forward activations and dL/dx both shrink by 2^-1/2 per layer: 2^-14.5
over 29 layers (docs/science.md#the-trap-flat-weight-gradients). SGD then moves the
early layers by ~1e-4 of what He init gets, and training "completely stalls" (He et al.
2015, Sec. 2.2 and Fig. 3). The probe shows the cause at initialisation: dL/dx collapses
toward the input while the weight-gradient norms stay flat.

Set-up: plain MLP, 30 hidden ReLU layers, on scikit-learn's digits; SGD with momentum
0.9, lr 0.002, batch 32. The paper used 27 conv + 3 fc layers on ImageNet.
"""

from __future__ import annotations

import math
from typing import TypedDict

import torch
from torch import nn

from gradhealth._probe import probe
from gradhealth.lab.data import load_digits
from gradhealth.lab.experiment import (
    Check,
    Context,
    Outcome,
    fmt,
    new_figure,
    required,
    save_figure,
)
from gradhealth.lab.train import History, accuracy, fit
from gradhealth.report.report import Report
from gradhealth.zoo import mlp

NAME = "he2015"
TITLE = "30-layer ReLU MLP: Glorot init vs He init"
CITATION = ("He, Zhang, Ren & Sun 2015, Delving deep into rectifiers, ICCV; Sec. 2.2, "
            "Fig. 3 (30-layer model: Xavier stalls, ours converges).")

DEPTH, LR, MOMENTUM, BATCH = 30, 0.002, 0.9, 32
THEORY_RATIO = 2.0 ** -14.5  # (1/2)^(29/2): dL/dx RMS, layer 1 / layer 30, Glorot + ReLU
PUBLISHED_RATIO = 5.4e-5  # docs/science.md#measured-on-30-layer-mlps: numpy, width 256
HE_MIN_ACC, GLOROT_MAX_ACC = 0.7, 0.3
STALL = 0.95 * math.log(10)  # a stalled 10-class net stays at the loss of uniform guessing

INITS = {
    "Glorot (xavier_normal_)": nn.init.xavier_normal_,
    "He (kaiming_normal_, relu)": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
}


class _Result(TypedDict):
    """One initialisation's run."""

    report: Report
    dx_ratio: float
    dw: list[float]
    fwd: float
    hist: History
    acc: float
    curve: list[tuple[int, float]]
    grad_rms: list[float | None]


class _Stall(TypedDict):
    step: int
    acc: float
    loss: float


def weight_grad_norms(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """||dL/dW|| of each hidden Linear's weight matrix, biases left out (gh.probe's
    per-module norm includes the bias, whose gradient grows toward the output)."""
    weights = [m.weight for m in model if isinstance(m, nn.Linear)][:-1]
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, weights)
    return torch.stack([g.norm() for g in grads]).cpu().tolist()


def run(ctx: Context) -> Outcome:
    width = 128 if ctx.quick else 256
    steps = 1200 if ctx.quick else 4000
    data = load_digits(seed=ctx.seed)
    dev = ctx.device
    x, y, xt, yt = data.tensors(dev)

    results: dict[str, _Result] = {}
    with ctx.progress(f"{DEPTH}-layer ReLU MLP, {steps} SGD steps x2", 2 * steps) as advance:
        for name, init in INITS.items():
            torch.manual_seed(ctx.seed)
            model = mlp(DEPTH, width, nn.ReLU, init, n_in=x.shape[1], n_out=data.n_classes)
            model = model.to(dev)
            report = probe(model, x[:256], y[:256])
            flow = report.flow()
            hidden = flow[:-1]  # the 30 hidden Linear layers (the head is last)
            # every hidden layer of the plain MLP ran and got a gradient
            dx_ratio = (required(hidden[0].grad_rms, "layer 1's dL/dx RMS")
                        / required(hidden[-1].grad_rms, "layer 30's dL/dx RMS"))
            dw = weight_grad_norms(model, x[:256], y[:256])
            fwd = (required(hidden[-1].out_rms, "layer 30's output RMS")
                   / required(hidden[0].out_rms, "layer 1's output RMS"))
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
            curve: list[tuple[int, float]] = []

            def every(step: int, loss: torch.Tensor, m: nn.Module, curve=curve) -> None:
                if (step + 1) % max(1, steps // 20) == 0:
                    curve.append((step + 1, accuracy(m, xt, yt)))

            hist = fit(model, x, y, steps=steps, batch_size=BATCH, optimizer=opt,
                       seed=ctx.seed, on_step=every, advance=advance)
            results[name] = _Result(report=report, dx_ratio=dx_ratio, dw=dw, fwd=fwd,
                                    hist=hist, acc=accuracy(model, xt, yt), curve=curve,
                                    grad_rms=[s.grad_rms for s in hidden])

    glorot, he = results["Glorot (xavier_normal_)"], results["He (kaiming_normal_, relu)"]
    rows = []
    for name, r in results.items():
        is_glorot = r is glorot
        rows.append((name, "dL/dx RMS, layer 1 / layer 30 (init)",
                     f"{PUBLISHED_RATIO:.2g} (theory 2^-14.5 = {THEORY_RATIO:.2g})" if is_glorot
                     else "1.25", fmt(r["dx_ratio"])))
        rows.append((name, "||dL/dW|| (weights only), layer 1 / layer 30 (init)",
                     "~0.77 (flat)" if is_glorot else "~0.77", fmt(r["dw"][0] / r["dw"][-1])))
        rows.append((name, "gh.probe findings (init)", "vanishing" if is_glorot else "none",
                     ", ".join(sorted(r["report"].kinds())) or "none"))
        rows.append((name, f"test accuracy after {steps} steps (best during training)",
                     "completely stalls" if is_glorot else "converges",
                     f"{r['acc']:.1%} ({_best(r):.1%}); train loss "
                     f"{fmt(r['hist'].tail_mean())}"))

    scale = sorted(g / h for g, h in zip(glorot["dw"], he["dw"]))[len(he["dw"]) // 2]
    rows.insert(2, ("Glorot / He", "||dL/dW||, median over layers (init)",
                    f"2^-14.5 = {THEORY_RATIO:.2g}", fmt(scale)))
    stall = _glorot_when_he_trains(glorot, he)
    checks = [
        Check(f"Glorot: dL/dx RMS ratio layer 1 / layer 30 within a factor 3 of 2^-14.5 = "
              f"{THEORY_RATIO:.2g}", fmt(glorot["dx_ratio"]),
              THEORY_RATIO / 3 <= glorot["dx_ratio"] <= THEORY_RATIO * 3),
        Check("He: the same ratio within [1/3, 3] (signal preserved)", fmt(he["dx_ratio"]),
              1 / 3 <= he["dx_ratio"] <= 3),
        Check(f"He trains: best test accuracy during training > {HE_MIN_ACC:.0%}",
              f"{_best(he):.1%} (final {he['acc']:.1%})", _best(he) > HE_MIN_ACC),
        Check(f"Glorot stalls: at the evaluation where He first passes {HE_MIN_ACC:.0%} (step "
              f"s), Glorot's test accuracy is < {GLOROT_MAX_ACC:.0%} and its mean training "
              f"loss over steps s/2..s is >= 0.95 ln 10 = {STALL:.3g}",
              f"s = {stall['step']}: {stall['acc']:.1%}, loss {fmt(stall['loss'])}"
              if stall else "He never passed it",
              stall is not None and stall["acc"] < GLOROT_MAX_ACC and stall["loss"] >= STALL),
    ]
    figure = _plot(ctx, results, steps)
    notes = [f"data: scikit-learn digits ({x.shape[0]} train / {xt.shape[0]} test); width "
             f"{width}; SGD lr {LR}, momentum {MOMENTUM}, batch {BATCH}. The paper: 27 conv "
             "+ 3 fc layers on ImageNet."]
    return Outcome(NAME, TITLE, ("init", "quantity", "published", "ours"), rows, checks,
                   figure, notes)


def _glorot_when_he_trains(glorot: _Result, he: _Result) -> _Stall | None:
    """Glorot's state at the first evaluation where He's accuracy passes HE_MIN_ACC: the
    comparison at equal budget that He et al.'s Fig. 3 makes (given many more steps,
    momentum SGD does eventually move a Glorot-init net off the plateau)."""
    step = next((s for s, acc in he["curve"] if acc > HE_MIN_ACC), None)
    if step is None:
        return None
    acc = dict(glorot["curve"])[step]
    losses = glorot["hist"].losses[step // 2:step]
    return _Stall(step=step, acc=acc, loss=sum(losses) / max(1, len(losses)))


def _best(result: _Result) -> float:
    """Best test accuracy over the run's 20 evaluations: a 30-layer plain net trained with
    momentum SGD has loss spikes, and "does it train" should not hinge on the last one."""
    return max(acc for _, acc in result["curve"])


def _plot(ctx: Context, results: dict[str, _Result], steps: int):
    fig, ax = new_figure(13, 4, 1, 3)
    for name, r in results.items():
        layers = range(1, len(r["grad_rms"]) + 1)
        ax[0, 0].plot(layers, r["grad_rms"], "o-", ms=3, label=name)
        ax[0, 1].plot(layers, r["dw"], "o-", ms=3, label=name)
        ax[0, 2].plot(*zip(*r["curve"]), "o-", ms=3, label=name)
    ax[0, 0].set(yscale="log", xlabel="layer", ylabel="RMS of dL/d(layer output)",
                 title="gradient flow at init (gh.probe)")
    ax[0, 1].set(yscale="log", xlabel="layer", ylabel="||dL/dW||",
                 title="weight-gradient norms: flat for both")
    ax[0, 2].axhline(0.1, color="k", ls=":", lw=1, label="chance")
    ax[0, 2].set(xlabel="SGD step", ylabel="test accuracy", ylim=(0, 1),
                 title=f"training, {steps} steps")
    for a in ax[0]:
        a.legend(fontsize=7)
    return save_figure(fig, ctx.figure_path(NAME))
