"""Rectifier variants on a deep net: dead units and accuracy (Xu et al. 2015 on our data).

Eight activations, each with the initialisation that preserves its signal: weights
N(0, g^2/n_in) with g = 1/sqrt(E[phi(z)^2]), z ~ N(0, 1), computed by Gauss-Hermite
quadrature on the module itself. That is He's sqrt(2/(1+a^2)) for ReLU, Leaky ReLU
(0.01, 0.2), RReLU (its evaluation slope, the mean of U(1/8, 1/3)) and PReLU (0.25),
LeCun's 1 for SELU (Klambauer et al. 2017), 1.245 for ELU and 1.534 for GELU (He's
sqrt(2) would grow ELU's signal and shrink GELU's through 20 layers). A unit is *dead*
when the activation's derivative is below 1e-3 for every one of the training examples:
it then passes (almost) no gradient to its weights, whatever the batch (docs/science.md#dead-units:
measure over a window, not one batch). The leaky variants cannot have such units
(slope >= 0.01 everywhere); GELU can, in principle (its slope is below 1e-3 for inputs
under about -3.9), and after a full run a few of its units (0.1%) do.

Xu et al. 2015 (NIN on CIFAR-10/100) found the leaky variants at least as good as ReLU
and RReLU best; their numbers are printed beside ours (CIFAR-10 ones unconfirmed).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Literal, TypedDict

import numpy as np
import torch
from torch import nn

from gradhealth._probe import probe
from gradhealth.lab.data import load_digits
from gradhealth.lab.experiment import Check, Context, Outcome, new_figure, save_figure
from gradhealth.lab.train import accuracy, fit
from gradhealth.zoo import mlp

NAME = "activations"
TITLE = "ReLU and its variants on a 20-layer MLP: dead units and accuracy"
CITATION = ("Xu, Wang, Chen & Li 2015, Empirical evaluation of rectified activations in "
            "convolutional network, arXiv:1505.00853; Tables 3-4.")

DEPTH, WIDTH, LR, MOMENTUM, BATCH = 20, 100, 0.003, 0.9, 64
DEAD_SLOPE = 1e-3
LEAKY_FAMILY = ("Leaky ReLU 0.2", "RReLU", "PReLU")
# Seeds 0-5 gave family - ReLU from -0.7 to +2.2 points on digits' 450 test images.
XU_TOLERANCE = 0.015


#: name -> (activation factory, Xu et al. 2015 CIFAR-10 test error %)
ACTIVATIONS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "ReLU": (nn.ReLU, "12.45 (unconfirmed)"),
    "Leaky ReLU 0.01": (lambda: nn.LeakyReLU(0.01), "-"),
    "Leaky ReLU 0.2": (lambda: nn.LeakyReLU(0.2), "11.20 at a=1/5.5 (unconfirmed)"),
    "RReLU": (nn.RReLU, "11.19 (unconfirmed); CIFAR-100 75.68% acc."),
    "PReLU": (nn.PReLU, "11.79 (unconfirmed)"),
    "ELU": (nn.ELU, "-"),
    "SELU": (nn.SELU, "-"),
    "GELU": (nn.GELU, "-"),
}


class _Result(TypedDict):
    """One activation's run."""

    acc: float
    dead0: list[float]  # dead fraction per activation layer at init
    gain: float
    dead: list[float]  # after training
    batch_dead: float
    loss: float


def signal_gain(act: nn.Module) -> float:
    """1/sqrt(E[phi(z)^2]) for z ~ N(0, 1) (81-point Gauss-Hermite, evaluation mode): the
    weight gain that keeps the pre-activations' second moment through a layer."""
    z, w = np.polynomial.hermite_e.hermegauss(81)
    with torch.no_grad():
        y = act.eval().double()(torch.from_numpy(z)).numpy()
    return float(1.0 / np.sqrt(np.sum(w / w.sum() * y * y)))


def _init(gain: float):
    return lambda weight: nn.init.normal_(weight, 0.0, gain / math.sqrt(weight.shape[1]))


def dead_fraction(model: nn.Sequential, x: torch.Tensor) -> list[float]:
    """Per activation layer: the fraction of units whose derivative is below DEAD_SLOPE
    for every row of ``x`` (evaluation mode: RReLU at its mean slope)."""
    acts = [m for m in model if not isinstance(m, nn.Linear)]
    inputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, i, o: inputs.append(i[0].detach()))
               for m in acts]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    fractions = []
    for module, z in zip(acts, inputs):
        z = z.clone().requires_grad_(True)
        with torch.enable_grad():
            slope, = torch.autograd.grad(module(z).sum(), z)  # elementwise: phi'(z)
        fractions.append((slope.abs() < DEAD_SLOPE).all(dim=0).float().mean().item())
    return fractions


def run(ctx: Context) -> Outcome:
    steps = 1000 if ctx.quick else 4000
    data = load_digits(seed=ctx.seed)
    dev = ctx.device
    x, y, xt, yt = data.tensors(dev)

    results: dict[str, _Result] = {}
    with ctx.progress(f"{len(ACTIVATIONS)} activations x {steps} steps",
                      len(ACTIVATIONS) * steps) as advance:
        for name, (act, _) in ACTIVATIONS.items():
            gain = signal_gain(act())
            torch.manual_seed(ctx.seed)
            model = mlp(DEPTH, WIDTH, act, _init(gain), n_in=x.shape[1], n_out=data.n_classes)
            model = model.to(dev)
            report = probe(model, x[:256], y[:256])
            batch_dead = max((s.dead_fraction or 0.0) for s in report.layers.values())
            dead0 = dead_fraction(model, x)
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
            hist = fit(model, x, y, steps=steps, batch_size=BATCH, optimizer=opt,
                       seed=ctx.seed, advance=advance)
            results[name] = _Result(acc=accuracy(model, xt, yt), dead0=dead0, gain=gain,
                                    dead=dead_fraction(model, x), batch_dead=batch_dead,
                                    loss=hist.tail_mean())

    def mean_dead(r: _Result, key: Literal["dead", "dead0"] = "dead") -> float:
        return statistics.fmean(r[key])

    rows = []
    for name, r in results.items():
        rows.append((f"{name} (gain {r['gain']:.3f})", ACTIVATIONS[name][1], f"{r['acc']:.1%}",
                     f"{mean_dead(r, 'dead0'):.1%} -> {mean_dead(r):.1%} "
                     f"(worst layer {max(r['dead']):.0%})", f"{r['batch_dead']:.0%}"))

    relu = results["ReLU"]
    others = {n: mean_dead(r) for n, r in results.items() if n != "ReLU"}
    family = statistics.fmean(results[n]["acc"] for n in LEAKY_FAMILY)
    checks = [
        Check("ReLU has dead units after training (> 1% of hidden units pass no gradient on "
              "any training image) and at least 10x the fraction of every other activation",
              f"ReLU {mean_dead(relu):.1%}; others at most {max(others.values()):.2%} ("
              + max(others, key=others.__getitem__) + ")",
              mean_dead(relu) > 0.01 and all(10 * v <= mean_dead(relu) for v in others.values())),
        Check("with a matched init, every activation trains the 20-layer net: test accuracy "
              "> 80%", "lowest: " + min(results, key=lambda n: results[n]["acc"])
              + f" {min(r['acc'] for r in results.values()):.1%}",
              all(r["acc"] > 0.8 for r in results.values())),
        Check("Xu et al.: leaky variants at least as accurate as ReLU; mean of Leaky ReLU "
              f"0.2, RReLU and PReLU >= ReLU's - {XU_TOLERANCE:.1%} (450 test digits cannot "
              "resolve Xu's ~1-point gains: one image is 0.22 points)",
              f"{family:.1%} vs ReLU {relu['acc']:.1%}", family >= relu["acc"] - XU_TOLERANCE),
    ]
    notes = [f"data: scikit-learn digits ({x.shape[0]} train / {xt.shape[0]} test); {DEPTH} "
             f"hidden layers of {WIDTH}; SGD lr {LR}, momentum {MOMENTUM}, batch {BATCH}, "
             f"{steps} steps. Xu et al.: Network-in-Network on CIFAR-10/100. Dead = "
             f"|phi'| < {DEAD_SLOPE:g} on all {x.shape[0]} training images; 'one batch' = "
             "gh.probe's per-batch count at init (worst layer)."]
    figure = _plot(ctx, results)
    return Outcome(NAME, TITLE, ("activation", "published: Xu et al. 2015, CIFAR-10 error %",
                                 "ours: test accuracy", "dead units: init -> trained",
                                 "one batch, init"), rows, checks, figure, notes)


def _plot(ctx: Context, results: dict[str, _Result]):
    fig, ax = new_figure(13, 4, 1, 2)
    names = list(results)
    ax[0, 0].bar(names, [results[n]["acc"] for n in names], color="C0")
    lo = min(results[n]["acc"] for n in names)
    ax[0, 0].set(ylim=(max(0.0, lo - 0.05), 1.0), ylabel="test accuracy",
                 title=f"{DEPTH}-layer MLP on digits")
    for i, n in enumerate(names):
        dead = results[n]["dead"]
        ax[0, 1].plot(range(1, len(dead) + 1), [100 * d for d in dead], "o-", ms=3,
                      color=f"C{i}", label=n)
    ax[0, 1].set(xlabel="hidden layer", ylabel="dead units (%)",
                 title="units with |phi'| < 1e-3 on every training image, after training")
    ax[0, 1].legend(fontsize=7)
    for a in ax[0]:
        a.tick_params(axis="x", labelsize=7, rotation=30)
    return save_figure(fig, ctx.figure_path(NAME))
