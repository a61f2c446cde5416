"""The scenarios of ``watch_accuracy.py``: healthy runs the watch must stay silent on, and
sick ones, each made sick in a known way, with what it must report.

Healthy: seven recipes (SGD, SGD with momentum, Adam, AdamW with warm-up and a cosine
schedule; runs that converge and runs that plateau; MLPs, a CNN, an RNN, an LSTM, a
transformer), run with three seeds each. Sick: nine recipes, the issue's eight and one
more (a learning rate too high for Adam, which kills units rather than producing NaN).
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import gpt_loss  # noqa: E402
from watch_parts import (  # noqa: E402
    Recurrent,
    Scenario,
    Setup,
    Tensor,
    batches,
    ce,
    cnn,
    digits,
    fashion,
    mlp,
    order,
    seeded,
    sequences,
    transformer,
    warmup_cosine,
)

SGD, Adam, AdamW = torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW


# -- healthy ---------------------------------------------------------------------------------
def mlp_sgd(seed: int) -> Setup:
    seeded(seed)
    m = mlp()
    return Setup(m, SGD(m.parameters(), lr=0.05), batches(digits(), seed), ce, digits())


def mlp_momentum(seed: int, bad=None) -> Setup:
    """The issue's run: random batches (with replacement), SGD 0.02 with momentum 0.9."""
    seeded(seed)
    m = mlp()
    return Setup(m, SGD(m.parameters(), lr=0.02, momentum=0.9),
                 batches(digits(), seed, replace=True, bad=bad), ce, digits())


def cnn_adam(seed: int, bad=None) -> Setup:
    seeded(seed)
    m = cnn(fashion()[0].shape[-1])
    return Setup(m, Adam(m.parameters(), lr=1e-3), batches(fashion(), seed, bad=bad), ce,
                 fashion())


def gpt_adamw(seed: int, steps: int = 400) -> Setup:
    seeded(seed)
    m = transformer()
    return Setup(m, AdamW(m.parameters(), lr=3e-3, weight_decay=0.01),
                 batches(sequences(), seed), gpt_loss, sequences(),
                 lr=warmup_cosine(3e-3, 50, steps))


def lstm_adam(seed: int) -> Setup:
    """An LSTM (forget-gate bias 1) learning the temporal-order problem."""
    seeded(seed)
    m = Recurrent("lstm")
    return Setup(m, Adam(m.parameters(), lr=2e-3), batches(order(), seed), ce, order())


def rnn_momentum(seed: int, lr=None) -> Setup:
    """A tanh RNN (orthogonal recurrent init) on the temporal-order problem, slowly: near
    chance (ln 4) for 50 steps, learnt over the next 150."""
    seeded(seed)
    m = Recurrent("rnn")
    nn.init.orthogonal_(m.rnn.weight_hh_l0)
    return Setup(m, SGD(m.parameters(), lr=0.003, momentum=0.9), batches(order(), seed), ce,
                 order(), lr=lr)


def tanh_plateau(seed: int) -> Setup:
    """A two-layer tanh net 8 wide (Glorot init): plateaus far above zero loss."""
    seeded(seed)
    x = fashion()[0]
    m = mlp(d_in=x[0].numel(), depth=2, width=8, act=nn.Tanh, init="glorot")
    return Setup(m, SGD(m.parameters(), lr=0.05), batches(fashion(), seed), ce, fashion())


# -- sick ------------------------------------------------------------------------------------
def spike_kill(seed: int) -> Setup:
    """The issue's bad batch: step 200's batch x25 with wrong labels."""
    return mlp_momentum(seed, bad={200: lambda x, y: (x * 25, (y + 1) % 10)})


def lr_high_sgd(seed: int) -> Setup:
    seeded(seed)
    m = mlp()
    return Setup(m, SGD(m.parameters(), lr=0.5, momentum=0.9), batches(digits(), seed), ce,
                 digits())


def lr_high_adam(seed: int) -> Setup:
    seeded(seed)
    m = mlp()
    return Setup(m, Adam(m.parameters(), lr=0.05), batches(digits(), seed), ce, digits())


def sigmoid_stuck(seed: int) -> Setup:
    """Eight sigmoid layers with PyTorch's default init: the gradient shrinks 4x or more
    per layer (sigmoid' <= 1/4) and the loss stays at ln(10)."""
    seeded(seed)
    m = mlp(depth=8, act=nn.Sigmoid, init="default")
    return Setup(m, SGD(m.parameters(), lr=0.1), batches(digits(), seed), ce, digits())


def nan_batch(seed: int) -> Setup:
    def poison(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.clone()
        x[3].view(-1)[10] = float("nan")
        return x, y
    return cnn_adam(seed, bad={163: poison})


def rnn_explodes(seed: int) -> Setup:
    """The RNN above; at step 120, while it learns, its learning rate jumps 67x (a
    schedule's restart gone wrong): the recurrent weights are thrown past the edge and
    the gradient through time explodes (then the saturated tanh units make it vanish)."""
    return rnn_momentum(seed, lr=lambda s: 0.003 if s < 120 else 0.2)


def slow_divergence(seed: int) -> Setup:
    """The transformer; from step 200 a growing share of each batch's targets is garbage
    (0% to 100% over 200 steps: a data pipeline going bad), so the loss climbs slowly."""
    seeded(seed)
    m = transformer()
    g = torch.Generator().manual_seed(seed + 100)

    def drift(step: int) -> tuple[Tensor, Tensor]:
        x, y = plain(step)
        share = min(max(step - 200, 0) / 200, 1.0)
        noise = torch.rand(y.shape, generator=g) < share
        return x, torch.where(noise, torch.randint(0, 16, y.shape, generator=g), y)
    plain = batches(sequences(), seed)
    return Setup(m, AdamW(m.parameters(), lr=1e-3), drift, gpt_loss, sequences())


def amp_overflow(seed: int) -> Setup:
    """fp16 autocast under a GradScaler; at step 157 the first layer's weights are scaled
    1e5x (a bad checkpoint load): every forward overflows fp16 from then on."""
    setup = mlp_momentum(seed)
    setup.amp = True

    def poke(step: int, model: nn.Module) -> None:
        if step == 157:
            with torch.no_grad():
                model[1].weight.mul_(1e5)
    setup.poke = poke
    return setup


def slow_death(seed: int) -> Setup:
    """Adam with a learning rate growing 50x over 500 steps: units die one after another."""
    seeded(seed)
    m = mlp()
    return Setup(m, Adam(m.parameters(), lr=1e-3), batches(digits(), seed), ce, digits(),
                 lr=lambda s: 1e-3 * 50 ** (s / 500))


HEALTHY = [
    Scenario("mlp-sgd", "mlp", "digits", mlp_sgd, 400, note="converges"),
    Scenario("mlp-momentum", "mlp", "digits", mlp_momentum, 400, note="converges to ~1e-3"),
    Scenario("cnn-adam", "cnn", "fashion-mnist", cnn_adam, 300, note="converges"),
    Scenario("gpt-adamw-cosine", "transformer", "sequences", gpt_adamw, 400,
             note="warm-up 50 then cosine"),
    Scenario("lstm-adam", "rnn", "temporal order", lstm_adam, 400, note="converges"),
    Scenario("rnn-momentum-slow", "rnn", "temporal order", rnn_momentum, 400,
             note="near chance for 50 steps, then learns"),
    Scenario("tanh-sgd-plateau", "mlp", "fashion-mnist", tanh_plateau, 400, note="plateaus"),
]
# ``update_ratio`` is allowed wherever the scenario's truth is a step too large for the
# weights (a learning rate too high or growing, a bad batch, an exploding recurrence): the
# watch then sees one layer move by its own size, or ten times its peers, and says so.
SICK = [
    Scenario("spike-kills-units", "mlp", "digits", spike_kill, 400,
             expect=("spike", "dead_units"),
             allow=("divergence", "nonfinite", "dead_units", "exploding", "update_ratio"),
             onset=("event:200", "dead"),
             if_nan=(("spike", "nonfinite"), ("event:200", "nan"))),
    Scenario("lr-too-high-sgd", "mlp", "digits", lr_high_sgd, 200,
             expect=("divergence|nonfinite",), allow=("spike", "dead_units", "update_ratio"),
             onset=("start",)),
    Scenario("lr-too-high-adam", "mlp", "digits", lr_high_adam, 200, expect=("dead_units",),
             allow=("divergence", "spike", "update_ratio"), onset=("dead",)),
    Scenario("sigmoid-stuck", "mlp", "digits", sigmoid_stuck, 300,
             expect=("stuck", "vanishing|saturation"), onset=("start", "start")),
    Scenario("nan-batch", "cnn", "fashion-mnist", nan_batch, 300, expect=("nonfinite",),
             onset=("event:163",)),
    Scenario("rnn-explodes", "rnn", "temporal order", rnn_explodes, 400, expect=("spike",),
             allow=("exploding", "divergence", "nonfinite", "vanishing", "update_ratio"),
             onset=("norm:120",)),
    Scenario("slow-divergence", "transformer", "sequences", slow_divergence, 400,
             expect=("divergence",), allow=("spike", "nonfinite", "update_ratio"), onset=("loss",)),
    Scenario("amp-overflow", "mlp", "digits", amp_overflow, 300, expect=("nonfinite",),
             onset=("event:157",)),
    Scenario("slow-death", "mlp", "digits", slow_death, 500, expect=("dead_units",),
             allow=("divergence", "spike", "update_ratio"), onset=("dead",)),
]
SCENARIOS = {s.name: s for s in HEALTHY + SICK}
