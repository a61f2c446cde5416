"""Schoenholz, Gilmer, Ganguli & Sohl-Dickstein 2017: the edge of chaos sets trainable depth.

Mean field for a deep tanh net with weights N(0, s_w^2/N) and biases N(0, s_b^2):

* length fixed point   q* = s_w^2 E[tanh(sqrt(q*) z)^2] + s_b^2          (z ~ N(0, 1))
* gradient factor      chi_1 = s_w^2 E[tanh'(sqrt(q*) z)^2]; ||dL/dh_l||^2 shrinks by chi_1
                       per layer toward the input (chi_1 < 1: vanishing, > 1: exploding)
* correlation map      c -> (s_w^2 E[tanh(u1) tanh(u2)] + s_b^2) / q*, fixed point c*,
                       slope chi_c = s_w^2 E[tanh'(u1) tanh'(u2)] at c* (= chi_1 when c* = 1)
* depth scale          xi_c = -1 / ln chi_c; nets train up to a depth of about 6 xi_c.

The expectations are computed with Gauss-Hermite quadrature (1-D and 2-D). For s_b^2 =
0.05 the critical point (chi_1 = 1) is s_w^2 ~ 1.761. We measure the gradient decay per
layer of random deep tanh nets at several s_w^2 and train nets at half and at twice the
predicted trainable depth on both sides of the critical point.
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
    save_figure,
)
from gradhealth.lab.train import accuracy, fit

NAME = "edge-of-chaos"
TITLE = "Mean-field depth scales of tanh nets (s_b^2 = 0.05): theory vs measurement"
CITATION = ("Schoenholz, Gilmer, Ganguli & Sohl-Dickstein 2017, Deep information propagation, "
            "ICLR; Eqs. 3-9, Fig. 5 (trainable depth ~ 6 xi_c).")

SB2 = 0.05
PUBLISHED_CRITICAL = 1.761  # critical s_w^2, tanh, s_b^2 = 0.05 (docs/science.md)
_Z, _W = np.polynomial.hermite_e.hermegauss(81)
_W = _W / _W.sum()  # probabilists' Hermite nodes: E[f(z)] = sum w_i f(z_i), z ~ N(0, 1)


def _dtanh(x: np.ndarray) -> np.ndarray:
    return 1.0 / np.cosh(x) ** 2


def q_star(sw2: float, sb2: float = SB2) -> float:
    """Fixed point of q -> s_w^2 E[tanh(sqrt(q) z)^2] + s_b^2, by iteration (a contraction)."""
    q = 1.0
    for _ in range(10_000):
        new = sw2 * float(np.sum(_W * np.tanh(np.sqrt(q) * _Z) ** 2)) + sb2
        if abs(new - q) < 1e-15:
            break
        q = new
    return new


def chi_1(sw2: float, sb2: float = SB2) -> float:
    return sw2 * float(np.sum(_W * _dtanh(np.sqrt(q_star(sw2, sb2)) * _Z) ** 2))


def _pair(c: float, q: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z1, z2 = np.meshgrid(_Z, _Z, indexing="ij")
    u1 = np.sqrt(q) * z1
    u2 = np.sqrt(q) * (c * z1 + np.sqrt(max(0.0, 1.0 - c * c)) * z2)
    return u1, u2, np.outer(_W, _W)


def c_star(sw2: float, sb2: float = SB2) -> float:
    """Fixed point of the correlation map: 1 in the ordered phase (chi_1 <= 1, where c = 1
    is the stable fixed point), else iterated from c = 0."""
    if chi_1(sw2, sb2) <= 1.0:
        return 1.0
    q, c = q_star(sw2, sb2), 0.0
    for _ in range(20_000):
        u1, u2, w = _pair(c, q)
        new = min(1.0, (sw2 * float(np.sum(w * np.tanh(u1) * np.tanh(u2))) + sb2) / q)
        if abs(new - c) < 1e-13:
            break
        c = new
    return new


def chi_c(sw2: float, sb2: float = SB2) -> float:
    u1, u2, w = _pair(c_star(sw2, sb2), q_star(sw2, sb2))
    return sw2 * float(np.sum(w * _dtanh(u1) * _dtanh(u2)))


def xi_c(sw2: float, sb2: float = SB2) -> float:
    """Correlation depth scale -1/ln chi_c (inf at the critical point)."""
    c = chi_c(sw2, sb2)
    return math.inf if c >= 1.0 else -1.0 / math.log(c)


def critical_sw2(sb2: float = SB2, lo: float = 1.0, hi: float = 3.0) -> float:
    """The s_w^2 where chi_1 = 1, by bisection (chi_1 increases with s_w^2)."""
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if chi_1(mid, sb2) < 1.0 else (lo, mid)
    return 0.5 * (lo + hi)


def gradient_decay(sw2: float, width: int, depth: int, trials: int, seed: int,
                   device: torch.device) -> tuple[float, float, list[float]]:
    """Measured ln of the per-layer factor of ||dL/dh_l||^2 toward the input (theory:
    ln chi_1), from a least-squares fit over ``depth`` layers of random tanh nets whose
    input pre-activations already sit at q*. Returns mean, std over trials, and the
    mean log squared gradient per layer (for the figure)."""
    g = torch.Generator(device=device).manual_seed(seed)
    q = q_star(sw2)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g, dtype=torch.float64, device=device)

    slopes, curves = [], []
    layers = torch.arange(depth + 1, dtype=torch.float64, device=device)
    for _ in range(trials):
        h = randn(64, width)
        h = (h * math.sqrt(q) / h.pow(2).mean().sqrt()).requires_grad_(True)
        hs, x = [h], h
        for _ in range(depth):
            w = randn(width, width) * math.sqrt(sw2 / width)
            b = randn(width) * math.sqrt(SB2)
            x = torch.tanh(x) @ w.T + b
            hs.append(x)
        grads = torch.autograd.grad((x * randn(*x.shape)).sum(), hs)
        log_sq = torch.stack([gr.pow(2).mean().log() for gr in grads])
        centred = layers - layers.mean()
        slope = (centred * (log_sq - log_sq.mean())).sum() / centred.pow(2).sum()
        slopes.append(-slope.item())  # toward the input: ln of the per-layer factor
        curves.append(log_sq)
    mean_curve = torch.stack(curves).mean(0).cpu().tolist()
    return float(np.mean(slopes)), float(np.std(slopes)), mean_curve


def tanh_net(sw2: float, depth: int, width: int, n_in: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    fan = n_in
    for i in range(depth + 1):
        lin = nn.Linear(fan, width if i < depth else n_out)
        nn.init.normal_(lin.weight, 0.0, math.sqrt(sw2 / fan))
        nn.init.normal_(lin.bias, 0.0, math.sqrt(SB2))
        layers += [lin, nn.Tanh()] if i < depth else [lin]
        fan = width
    return nn.Sequential(*layers)


def run(ctx: Context) -> Outcome:
    quick, dev = ctx.quick, ctx.device
    width, depth, trials = (256, 50, 6) if quick else (512, 100, 12)
    grid = (1.0, 1.3, 1.6, 1.76, 2.0, 2.5, 3.0, 4.0)
    train_at = (1.0, 4.0) if quick else (1.0, 1.3, 2.5, 4.0)
    train_width, steps = (64, 400) if quick else (256, 2000)

    crit = critical_sw2()
    theory = {s: dict(q=q_star(s), chi1=chi_1(s), cstar=c_star(s), xi=xi_c(s)) for s in grid}
    measured = {}
    with ctx.progress("gradient decay through depth", len(grid)) as advance:
        for s in grid:
            measured[s] = gradient_decay(s, width, depth, trials, ctx.seed, dev)
            advance(1)

    data = load_digits(seed=ctx.seed)
    x, y, xt, yt = data.tensors(dev)
    trained = []  # (s_w^2, depth, factor of 6 xi_c, accuracy)
    with ctx.progress("training at 1/2 and 2x the trainable depth", 2 * len(train_at) * steps
                      ) as advance:
        for s in train_at:
            for factor in (0.5, 2.0):
                d = max(2, round(factor * 6 * xi_c(s)))
                torch.manual_seed(ctx.seed)
                model = tanh_net(s, d, train_width, x.shape[1], data.n_classes).to(dev)
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                fit(model, x, y, steps=steps, batch_size=64, optimizer=opt, seed=ctx.seed,
                    advance=advance)
                trained.append((s, d, factor, accuracy(model, xt, yt)))

    rows = [("critical s_w^2 (chi_1 = 1)", f"{PUBLISHED_CRITICAL}", f"{crit:.4f}", "-", "-")]
    for s in grid:
        t, (m, sd, _) = theory[s], measured[s]
        rows.append((f"s_w^2 = {s}", "6 xi_c = " + fmt(6 * t["xi"]),
                     f"q* {t['q']:.3f}, chi_1 {t['chi1']:.4f}, c* {t['cstar']:.3f}",
                     f"{math.log(t['chi1']):+.4f}", f"{m:+.4f} ± {sd:.4f}"))
    for s, d, factor, acc in trained:
        rows.append((f"train s_w^2 = {s}, depth {d}", f"{'trains' if factor < 1 else 'fails'}"
                     f" ({factor:g} x 6 xi_c)", "-", "-", f"test accuracy {acc:.1%}"))

    errors = {s: abs(measured[s][0] - math.log(theory[s]["chi1"])) for s in grid}
    tol = {s: 0.02 + 0.1 * abs(math.log(theory[s]["chi1"])) for s in grid}
    crossing = _zero_crossing(grid, [measured[s][0] for s in grid])
    checks = [
        Check(f"critical s_w^2 from quadrature within 0.005 of the published "
              f"{PUBLISHED_CRITICAL}", f"{crit:.4f}", abs(crit - PUBLISHED_CRITICAL) < 0.005),
        Check("measured ln(per-layer factor of ||dL/dh||^2) within 0.02 + 10% of ln chi_1 at "
              f"every s_w^2 in {list(grid)} (width {width}, depth {depth}, {trials} nets)",
              "largest miss " + fmt(max(errors.values())) + " at s_w^2 = "
              + str(max(errors, key=errors.__getitem__)),
              all(errors[s] <= tol[s] for s in grid)),
        Check("measured critical point (where gradients stop vanishing) within 0.1 of "
              f"{PUBLISHED_CRITICAL}", fmt(crossing, 4),
              crossing is not None and abs(crossing - PUBLISHED_CRITICAL) < 0.1),
        Check("trainable depth ~ 6 xi_c within a factor of 2: depth 0.5 x 6 xi_c reaches > 60% "
              "test accuracy, depth 2 x 6 xi_c stays < 30%, on both sides of the edge",
              ", ".join(f"{s}/{d}: {a:.0%}" for s, d, _, a in trained),
              all((a > 0.6) if f < 1 else (a < 0.3) for _, _, f, a in trained)),
    ]
    figure = _plot(ctx, grid, theory, measured, trained, crit, depth)
    notes = [f"training: scikit-learn digits, width {train_width}, SGD lr 0.01 momentum 0.9, "
             f"batch 64, {steps} steps (the paper: MNIST/CIFAR-10, SGD and RMSProp, long runs)."]
    columns = ("case", "published / predicted", "mean field (ours)", "ln chi_1 (theory)",
               "ours (measured)")
    return Outcome(NAME, TITLE, columns, rows, checks, figure, notes)


def _zero_crossing(xs, ys) -> float | None:
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y0 < 0 <= y1:
            return x0 + (x1 - x0) * (-y0) / (y1 - y0)
    return None


def _plot(ctx, grid, theory, measured, trained, crit, depth):
    fig, ax = new_figure(14, 4.2, 1, 3)
    fine = np.linspace(1.0, 4.0, 61)
    ax[0, 0].plot(fine, [6 * xi_c(s) for s in fine], "k-", lw=1, label="6 xi_c (theory)")
    for s, d, _, a in trained:
        ok = a > 0.5
        ax[0, 0].plot(s, d, "o" if ok else "x", color="green" if ok else "red", ms=8)
    ax[0, 0].axvline(crit, color="grey", ls=":", lw=1)
    ax[0, 0].set(yscale="log", ylim=(3, 3000), xlabel="s_w^2", ylabel="depth",
                 title="trainable depth: o trained, x failed")
    ax[0, 0].legend(fontsize=7)
    for i, s in enumerate(grid):
        curve = measured[s][2]
        top = curve[-1]
        layers = np.arange(len(curve))
        ax[0, 1].plot(layers, np.exp(np.array(curve) - top), color=f"C{i}", lw=1,
                      label=f"s_w^2={s}")
        ax[0, 1].plot(layers, theory[s]["chi1"] ** (depth - layers), color=f"C{i}", ls=":",
                      lw=1)
    ax[0, 1].set(yscale="log", xlabel="layer l", ylabel="||dL/dh_l||^2 / ||dL/dh_L||^2",
                 title="gradient through depth (dotted: chi_1^(L-l))")
    ax[0, 1].legend(fontsize=6, ncol=2)
    ax[0, 2].plot(fine, [math.log(chi_1(s)) for s in fine], "k-", lw=1, label="ln chi_1")
    ax[0, 2].errorbar(grid, [measured[s][0] for s in grid], [measured[s][1] for s in grid],
                      fmt="o", ms=4, label="measured")
    ax[0, 2].axhline(0, color="grey", lw=0.5)
    ax[0, 2].axvline(crit, color="grey", ls=":", lw=1, label=f"critical {crit:.3f}")
    ax[0, 2].set(xlabel="s_w^2", ylabel="ln(per-layer factor)", title="gradient decay rate")
    ax[0, 2].legend(fontsize=7)
    return save_figure(fig, ctx.figure_path(NAME))
