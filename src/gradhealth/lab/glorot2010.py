"""Glorot & Bengio 2010: activations and back-propagated gradients through depth, and the
normalised initialisation.

Five hidden layers; sigmoid, tanh and softsign with the "standard" initialisation
U[+-1/sqrt(n_in)] (n Var(W) = 1/3) or the normalised one U[+-sqrt(6/(n_in+n_out))]
(Var(W) = 2/(n_in+n_out), Eq. 16). At initialisation, in the linear regime of tanh,
each standard layer multiplies the activation variance and the back-propagated gradient
variance by n Var(W) = 1/3: over the four steps from layer 1 to 5 the gradient's standard
deviation shrinks to (1/3)^2 = 0.11 (their Fig. 7, top), while the normalised init keeps
it roughly constant (Fig. 7, bottom); activations likewise (Fig. 6). We draw those
histograms for all three activations and train the five networks of their Table 1.

Ours: scikit-learn's digits (the paper: MNIST, CIFAR-10, Shapeset-3x2), SGD with batch 10
(the paper's) and one learning rate for all (the paper tuned it per network).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

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
from gradhealth.lab.train import accuracy, fit

NAME = "glorot2010"
TITLE = "Sigmoid / tanh / softsign, standard vs normalised init, 5 hidden layers"
CITATION = ("Glorot & Bengio 2010, Understanding the difficulty of training deep feedforward "
            "neural networks, AISTATS; Figs. 6-7, Table 1, Eq. 16.")

DEPTH, BATCH, LR = 5, 10, 0.05
ACTIVATIONS = {"Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Softsign": nn.Softsign}
THEORY_STANDARD = (1.0 / 3.0) ** ((DEPTH - 1) / 2)  # std ratio, layer 1 / layer 5
# Table 1, test error (%): MNIST, CIFAR-10. Only the five networks the paper trained.
PUBLISHED = {"Softsign": (1.64, 55.78), "Softsign-N": (1.72, 53.8), "Tanh": (1.76, 55.9),
             "Tanh-N": (1.64, 52.92), "Sigmoid": (2.21, 57.28)}


def standard_init_(w: torch.Tensor) -> None:
    bound = 1.0 / math.sqrt(w.shape[1])
    nn.init.uniform_(w, -bound, bound)


def net(act: type[nn.Module], normalised: bool, width: int, n_in: int, n_out: int):
    init = nn.init.xavier_uniform_ if normalised else standard_init_
    layers: list[nn.Module] = []
    fan = n_in
    for i in range(DEPTH + 1):
        lin = nn.Linear(fan, width if i < DEPTH else n_out)
        init(lin.weight)
        nn.init.zeros_(lin.bias)
        layers += [lin, act()] if i < DEPTH else [lin]
        fan = width
    return nn.Sequential(*layers)


def distributions(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor):
    """Per hidden layer: activation values and back-propagated gradients dL/d(activation),
    for one batch at initialisation (host numpy arrays)."""
    outs: list[torch.Tensor] = []

    def keep(module, inputs, out):
        out.retain_grad()
        outs.append(out)

    acts = [m for m in model if not isinstance(m, nn.Linear)]
    handles = [m.register_forward_hook(keep) for m in acts]
    try:
        nn.functional.cross_entropy(model(x), y).backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    return ([o.detach().cpu().numpy().ravel() for o in outs],
            # each activation's output lies on the path to the loss: it has a gradient
            [required(o.grad, "an activation's gradient").cpu().numpy().ravel() for o in outs])


def run(ctx: Context) -> Outcome:
    width = 256 if ctx.quick else 1000
    steps = 2000 if ctx.quick else 10000
    data = load_digits(seed=ctx.seed)
    dev = ctx.device
    x, y, xt, yt = data.tensors(dev)

    dists, ratios = {}, {}
    for act_name, act in ACTIVATIONS.items():
        for normalised in (False, True):
            key = act_name + ("-N" if normalised else "")
            torch.manual_seed(ctx.seed)
            model = net(act, normalised, width, x.shape[1], data.n_classes).to(dev)
            a, g = distributions(model, x[:512], y[:512])
            dists[key] = (a, g)
            ratios[key] = (float(a[-1].std() / a[0].std()), float(g[0].std() / g[-1].std()))

    errors = {}
    with ctx.progress(f"5 networks x {steps} SGD steps", len(PUBLISHED) * steps) as advance:
        for key in PUBLISHED:
            act = ACTIVATIONS[key.removesuffix("-N")]
            torch.manual_seed(ctx.seed)
            model = net(act, key.endswith("-N"), width, x.shape[1], data.n_classes).to(dev)
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            fit(model, x, y, steps=steps, batch_size=BATCH, optimizer=opt, seed=ctx.seed,
                advance=advance)
            errors[key] = 100.0 * (1.0 - accuracy(model, xt, yt))

    rows = []
    for key in PUBLISHED:
        mnist, cifar = PUBLISHED[key]
        rows.append((key, "test error % (digits)", f"MNIST {mnist}, CIFAR-10 {cifar}",
                     f"{errors[key]:.2f}"))
    for key, (act_ratio, grad_ratio) in ratios.items():
        grad_theory, act_theory = _published_shape(key)
        rows.append((key, "std of dL/d(activation), layer 1 / layer 5 (init)", grad_theory,
                     fmt(grad_ratio)))
        rows.append((key, "std of activations, layer 5 / layer 1 (init)", act_theory,
                     fmt(act_ratio)))

    worst = max(errors, key=errors.__getitem__)
    checks = [
        Check(f"tanh, standard init: back-propagated gradient std ratio layer 1 / layer 5 "
              f"within a factor 1.5 of (1/3)^2 = {THEORY_STANDARD:.3f}", fmt(ratios["Tanh"][1]),
              THEORY_STANDARD / 1.5 <= ratios["Tanh"][1] <= THEORY_STANDARD * 1.5),
        Check("normalised init keeps gradients flatter: ratio > 0.5 for Tanh-N, and larger "
              "than with standard init for tanh and softsign",
              f"Tanh-N {fmt(ratios['Tanh-N'][1])}, Softsign-N {fmt(ratios['Softsign-N'][1])} "
              f"vs {fmt(ratios['Softsign'][1])}",
              ratios["Tanh-N"][1] > 0.5 and ratios["Tanh-N"][1] > ratios["Tanh"][1]
              and ratios["Softsign-N"][1] > ratios["Softsign"][1]),
        Check("tanh activations shrink with depth under standard init (layer 5 / layer 1 < 0.3) "
              "and not under normalised init (> 0.5)",
              f"{fmt(ratios['Tanh'][0])} vs {fmt(ratios['Tanh-N'][0])}",
              ratios["Tanh"][0] < 0.3 and ratios["Tanh-N"][0] > 0.5),
        Check("sigmoid (standard init) has the highest test error of the five (Table 1)",
              f"worst: {worst} ({errors[worst]:.2f}%)", worst == "Sigmoid"),
    ]
    notes = [f"data: scikit-learn digits ({x.shape[0]} train / {xt.shape[0]} test); width "
             f"{width} (paper 1000), SGD lr {LR}, batch {BATCH}, {steps} steps; the paper's "
             "numbers are MNIST and CIFAR-10 with a learning rate tuned per network."]
    figure = _plot(ctx, dists)
    return Outcome(NAME, TITLE, ("network", "quantity", "published", "ours"), rows, checks,
                   figure, notes)


def _published_shape(key: str) -> tuple[str, str]:
    """What the paper (and its linear-regime argument) says for each network's ratios."""
    if key == "Sigmoid":
        return "vanishes (sigmoid' <= 1/4, Sec. 3.1)", "top layers saturate (Fig. 2)"
    if key == "Sigmoid-N":
        return "- (not in the paper)", "- (not in the paper)"
    if key.endswith("-N"):
        return "~1 (Fig. 7, bottom)", "~stable (Fig. 6, bottom)"
    return f"(1/3)^2 = {THEORY_STANDARD:.3f} (linear regime)", "shrinks (Fig. 6, top)"


def _plot(ctx: Context, dists: dict):
    fig, ax = new_figure(16, 9, len(ACTIVATIONS), 4)
    for r, act_name in enumerate(ACTIVATIONS):
        for c, (normalised, kind) in enumerate(((False, 0), (True, 0), (False, 1), (True, 1))):
            key = act_name + ("-N" if normalised else "")
            values = dists[key][kind]
            # One x-range per panel, from the widest layer (99.5th percentile of |value|):
            # the "0-peak" of the narrow layers is the point of their Figs. 6-7.
            span = max(float(np.quantile(np.abs(v), 0.995)) for v in values) or 1.0
            lo = 0.0 if (act_name == "Sigmoid" and kind == 0) else -span
            bins = np.linspace(lo, span, 81)
            for layer, v in enumerate(values, start=1):
                hist, edges = np.histogram(v, bins=bins)
                ax[r, c].plot(0.5 * (edges[1:] + edges[:-1]), hist / max(1, v.size),
                              lw=1, label=f"layer {layer}")
            what = "activation values" if kind == 0 else "back-propagated gradients"
            init = "normalised" if normalised else "standard"
            ax[r, c].set_title(f"{act_name}: {what}, {init} init", fontsize=9)
            ax[r, c].tick_params(labelsize=7)
            if kind == 1:
                ax[r, c].ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax[0, 0].legend(fontsize=7)
    return save_figure(fig, ctx.figure_path(NAME))
