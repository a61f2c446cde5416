"""Pascanu, Mikolov & Bengio 2013: exploding gradients in RNNs, and norm clipping.

Two parts.

1. The rho^T law, computed exactly. For a linear RNN h_t = W h_{t-1} + U x_t with
   W = rho Q (Q orthogonal), dh_T/dh_0 = W^T = rho^T Q^T, so its spectral norm is rho^T
   (1.1^50 ~ 117, 0.9^50 ~ 5e-3). We build the Jacobian with autograd (float64) and
   compare; a tanh RNN with the same W stays below rho^T (tanh' <= 1: the paper's
   sufficient condition for vanishing, Sec. 2.1, is rho < 1/gamma with gamma = 1).
2. Norm clipping (Sec. 3.2, g <- c g/||g|| when ||g|| > c) on the adding problem: an
   ``nn.RNN`` (tanh, 50 hidden units, batch 20, clip threshold 1, as in the paper) trained
   with and without clipping, on sequences of length T = 20. To provoke explosions
   within a CI budget we start the recurrent matrix at spectral radius 1.5 and use lr 0.1
   (the paper: lr 0.01, T up to 200 and far longer training); both choices are printed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gradhealth._probe import probe
from gradhealth.clip import ClipNorm
from gradhealth.lab.data import synthetic_adding
from gradhealth.lab.experiment import (
    Check,
    Context,
    Outcome,
    fmt,
    new_figure,
    required,
    save_figure,
)
from gradhealth.lab.train import fit

NAME = "pascanu2013"
TITLE = "Exploding gradients in an RNN: the rho^T law and norm clipping"
CITATION = ("Pascanu, Mikolov & Bengio 2013, On the difficulty of training recurrent neural "
            "networks, ICML; Sec. 2.1 (rho^T), Sec. 3.2 (norm clipping), Sec. 4.1 (adding).")

HIDDEN, BATCH, CLIP = 50, 20, 1.0  # the paper's set-up (Sec. 4.1)
RHOS = (0.9, 0.95, 1.0, 1.05, 1.1)
LAW_T = 50
LAW_TOLERANCE = 1e-4  # relative; float64 autograd gives ~1e-13
RHO_INIT, LR = 1.5, 0.1  # chosen so the unclipped run explodes within the quick budget
BASELINE_MSE = 1.0 / 6.0  # predicting the constant 1.0 (synthetic_adding docstring)


class AddingRNN(nn.Module):
    """``nn.RNN`` (tanh) read out by a linear head at the last step."""

    def __init__(self, rho: float, hidden: int = HIDDEN):
        super().__init__()
        self.rnn = nn.RNN(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(hidden, hidden))
            # get_parameter: nn.RNN registers these by name, so their attribute type is unknown
            self.rnn.get_parameter("weight_hh_l0").copy_(rho * q)
            nn.init.normal_(self.rnn.get_parameter("weight_ih_l0"), 0.0, 0.1)
            self.rnn.get_parameter("bias_hh_l0").zero_()
            self.rnn.get_parameter("bias_ih_l0").zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def jacobian_norms(rho: float, T: int, hidden: int, seed: int, tanh: bool) -> list[float]:
    """||dh_t/dh_0||_2 for t = 1..T of h_t = phi(W h_{t-1} + U x_t), W = rho Q, float64."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=g, dtype=torch.float64))
    w = rho * q
    u = torch.randn(hidden, 3, generator=g, dtype=torch.float64) * 0.1
    xs = torch.randn(T, 3, generator=g, dtype=torch.float64)
    h0 = torch.randn(hidden, generator=g, dtype=torch.float64) * 0.1
    phi = torch.tanh if tanh else (lambda z: z)
    norms, jac, h = [], torch.eye(hidden, dtype=torch.float64), h0
    for t in range(T):
        # Chain rule, step by step: J_t = diag(phi'(a_t)) W J_{t-1}; exact, like autograd.
        a = w @ h + u @ xs[t]
        h = phi(a)
        d = (1.0 - h * h) if tanh else torch.ones_like(h)
        jac = d[:, None] * (w @ jac)
        norms.append(torch.linalg.matrix_norm(jac, ord=2).item())
    return norms


def autograd_norm(rho: float, T: int, hidden: int, seed: int) -> float:
    """The same ||dh_T/dh_0||_2 for the linear RNN, via torch.autograd.functional.jacobian."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=g, dtype=torch.float64))
    w = rho * q
    u = torch.randn(hidden, 3, generator=g, dtype=torch.float64) * 0.1
    xs = torch.randn(T, 3, generator=g, dtype=torch.float64)

    def unroll(h):
        for t in range(T):
            h = w @ h + u @ xs[t]
        return h

    jac = torch.autograd.functional.jacobian(unroll, torch.zeros(hidden, dtype=torch.float64))
    return torch.linalg.matrix_norm(jac, ord=2).item()


def _train(ctx: Context, clip: bool, x, y, steps: int, advance):
    torch.manual_seed(ctx.seed)
    model = AddingRNN(RHO_INIT).to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    clipper = ClipNorm(CLIP) if clip else None
    norms: list[torch.Tensor] = []

    def measure_and_clip(m: nn.Module) -> None:
        if clipper is not None:
            norms.append(clipper(m).pre_norm)
        else:
            norms.append(torch.nn.utils.get_total_norm(
                [p.grad for p in m.parameters() if p.grad is not None]))

    hist = fit(model, x, y, steps=steps, batch_size=BATCH, optimizer=opt, seed=ctx.seed,
               loss_fn=nn.functional.mse_loss, clip=measure_and_clip, advance=advance)
    # fit called the clipper at every step, so it has counted its binds
    bind = (required(clipper.bind_count, "the clipper's bind count").item()
            / max(1, clipper.steps) if clipper else None)
    return model, hist, torch.stack(norms).cpu().tolist(), bind


def run(ctx: Context) -> Outcome:
    # T = 20 in both budgets: a full run at T = 50 (20 000 steps, this set-up) stayed at the
    # baseline (validation MSE 0.208); the paper trained far longer.
    T = 20
    steps = 5000 if ctx.quick else 20000
    n_train = 20000 if ctx.quick else 100000
    dev = ctx.device
    x, y = (t.to(dev) for t in synthetic_adding(n_train, T, seed=ctx.seed))
    xv, yv = (t.to(dev) for t in synthetic_adding(2000, T, seed=ctx.seed + 10_000))

    # Part 1: the law.
    law = {rho: jacobian_norms(rho, LAW_T, HIDDEN, ctx.seed, tanh=False) for rho in RHOS}
    law_tanh = {rho: jacobian_norms(rho, LAW_T, HIDDEN, ctx.seed, tanh=True) for rho in RHOS}
    auto = {rho: autograd_norm(rho, LAW_T, HIDDEN, ctx.seed) for rho in RHOS}
    rel = {rho: abs(auto[rho] - rho**LAW_T) / rho**LAW_T for rho in RHOS}
    rows = [(f"linear RNN, rho={rho}, T={LAW_T}", "||dh_T/dh_0||", f"rho^T = {fmt(rho**LAW_T)}",
             f"{fmt(auto[rho], 6)} (tanh RNN: {fmt(law_tanh[rho][-1])})") for rho in RHOS]

    # Part 2: clipping. Also probe the RNN at init: gradient through time.
    torch.manual_seed(ctx.seed)
    report = probe(AddingRNN(RHO_INIT).to(dev), xv[:256], yv[:256])
    runs = {}
    with ctx.progress(f"adding problem T={T}, {steps} steps x2", 2 * steps) as advance:
        for clip in (False, True):
            model, hist, norms, bind = _train(ctx, clip, x, y, steps, advance)
            with torch.no_grad():
                val = nn.functional.mse_loss(model(xv), yv).item()
            runs[clip] = (hist, norms, bind, val)
    for clip, (hist, norms, bind, val) in runs.items():
        what = f"ClipNorm({CLIP}), binds on {bind:.0%} of steps" if clip else "no clipping"
        blew = f"non-finite at step {hist.first_nonfinite}" if hist.diverged else "finite"
        rows.append((f"RNN T={T}, {what}", "validation MSE",
                     "clipping: trains; none: fails (Sec. 4.1)",
                     f"{fmt(val)} (loss {blew}; max ||g|| {fmt(max(norms))})"))
    rows.append(("same RNN at init, gh.probe (explosions come during training)", "findings", "-",
                 ", ".join(sorted(report.kinds())) or "none"))

    h_off, _, _, v_off = runs[False]
    h_on, _, _, v_on = runs[True]
    checks = [
        Check(f"rho^T law: | ||dh_T/dh_0|| - rho^T | / rho^T < {LAW_TOLERANCE:g} for rho in "
              f"{list(RHOS)}, T={LAW_T} (linear RNN, autograd)",
              f"largest relative error {max(rel.values()):.1e}",
              max(rel.values()) < LAW_TOLERANCE),
        Check("tanh RNN with the same W stays at or below rho^T at every t <= T (tanh' <= 1)",
              "max ratio " + fmt(max(n / rho ** (t + 1) for rho in RHOS
                                     for t, n in enumerate(law_tanh[rho]))),
              all(n <= rho ** (t + 1) * (1 + 1e-9) for rho in RHOS
                  for t, n in enumerate(law_tanh[rho]))),
        Check(f"with clipping the loss is never non-finite and validation MSE < half of "
              f"{fmt(BASELINE_MSE)} (the constant-prediction baseline)",
              f"{'diverged' if h_on.diverged else 'finite'}, MSE {fmt(v_on)}",
              not h_on.diverged and math.isfinite(v_on) and v_on < 0.5 * BASELINE_MSE),
        Check("without clipping training explodes: a non-finite loss, or validation MSE at "
              "least 2x the clipped run's",
              (f"non-finite at step {h_off.first_nonfinite}" if h_off.diverged else "finite")
              + f", MSE {fmt(v_off)}",
              h_off.diverged or not math.isfinite(v_off) or v_off >= 2 * v_on),
    ]
    figure = _plot(ctx, law, law_tanh, runs, T)
    notes = [f"training set-up: T={T}, {steps} SGD steps, lr {LR}, batch {BATCH}, "
             f"W_hh initialised at spectral radius {RHO_INIT} (paper: lr 0.01)."]
    return Outcome(NAME, TITLE, ("case", "quantity", "published", "ours"), rows, checks,
                   figure, notes)


def _plot(ctx: Context, law, law_tanh, runs, T: int):
    fig, ax = new_figure(13, 4, 1, 3)
    ts = range(1, LAW_T + 1)
    for i, rho in enumerate(RHOS):
        color = f"C{i}"
        ax[0, 0].plot(ts, [rho**t for t in ts], color=color, lw=1, label=f"rho={rho}: rho^t")
        ax[0, 0].plot(ts[::5], law[rho][::5], "o", color=color, ms=4)
        ax[0, 0].plot(ts, law_tanh[rho], "--", color=color, lw=1)
    ax[0, 0].set(yscale="log", xlabel="t", ylabel="||dh_t / dh_0||",
                 title="linear RNN (dots) vs rho^t; tanh RNN dashed")
    ax[0, 0].legend(fontsize=7)
    for clip, (hist, norms, _, _) in runs.items():
        label = f"clip at {CLIP}" if clip else "no clipping"
        losses = [v if math.isfinite(v) else float("nan") for v in hist.losses]
        line, = ax[0, 1].plot(losses, lw=0.6, label=label)
        if hist.diverged:  # mark where it blew up; the y-range stays readable
            ax[0, 1].axvline(hist.first_nonfinite, color=line.get_color(), ls="--", lw=1,
                             label=f"{label}: non-finite at step {hist.first_nonfinite}")
        ax[0, 2].plot([v if math.isfinite(v) else float("nan") for v in norms], lw=0.6,
                      label=label)
    ax[0, 1].axhline(BASELINE_MSE, color="k", ls=":", lw=1, label="predict 1.0")
    ax[0, 1].set(yscale="log", ylim=(1e-3, 1e2), xlabel="step", ylabel="training MSE",
                 title=f"adding problem, T={T}")
    ax[0, 2].axhline(CLIP, color="k", ls=":", lw=1, label="threshold")
    ax[0, 2].set(yscale="log", xlabel="step", ylabel="||g|| before clipping",
                 title="global gradient norm")
    ax[0, 1].legend(fontsize=7)
    ax[0, 2].legend(fontsize=7)
    return save_figure(fig, ctx.figure_path(NAME))
