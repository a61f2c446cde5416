"""Issue 16: random NaN/Inf injections under gh.guard, eight optimizers.

Each optimizer trains a small net for STEPS steps under ``gh.guard`` (spike skips off:
only NaN/Inf skips are under test); on most steps one NaN, +Inf or -Inf is injected at a
random place: a module's output (forward), the gradient flowing into a module's output
(backward), one parameter's ``.grad`` after backward, the input batch, or an operation
of the root module's own forward. One layer starts frozen and is unfrozen halfway, into
a parameter group added to the optimizer. For every step, independently of gradhealth:
the step is non-finite iff the loss or a gradient the optimizer holds is. Then:

- every non-finite step is skipped, with weights and optimizer state bit-identical;
- no finite step is skipped;
- the producer is named: the module injected (forward, backward), the owner of the
  parameter (its gradient), "the input batch", or the root module and its operation.

Run as a script to print the counts table (docs/reliability.md).
"""

from __future__ import annotations

import copy
import math
import random
from collections import Counter

import torch
from torch import nn

from gradhealth import Guard, guard

STEPS = 50
INJECT_P = 0.8
UNFREEZE_AT = STEPS // 2
KINDS = ("forward", "backward", "param-grad", "input", "root-op")
VALUES = (math.nan, math.inf, -math.inf)
OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.01),
    "SGD+momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.01),
    "Adadelta": lambda p: torch.optim.Adadelta(p),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=1e-3),
}


class Poison(torch.autograd.Function):
    """Identity forward; backward puts ``value`` at ``index`` of the incoming gradient."""

    @staticmethod
    def forward(ctx, x, index, value):
        ctx.index, ctx.value = index, value
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        grad[ctx.index] = ctx.value
        return grad, None, None


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.act1 = nn.Linear(6, 16), nn.Tanh()
        self.hid, self.act2 = nn.Linear(16, 16), nn.ReLU()
        self.out = nn.Linear(16, 3)
        self.root_op = False
        self.poison: tuple | None = None  # (module name, "forward" or "backward", index, value)
        for name in ("inp", "act1", "hid", "act2", "out"):
            getattr(self, name).register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, args, output):
            if self.poison is None or self.poison[0] != name:
                return None
            _, where, index, value = self.poison
            if where == "backward":
                return Poison.apply(output, index, value)
            output = output.clone()
            output[index] = value
            return output
        return hook

    def forward(self, x):
        h = self.act2(self.hid(self.act1(self.inp(x))))
        if self.root_op:
            h = torch.log(h - 1e3)  # INJECTED-ROOT-OP
        return self.out(h)


def state(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[list, list]:
    return ([p.detach().clone() for p in model.parameters()],
            [copy.deepcopy(dict(opt.state[p])) for p in model.parameters()])


def same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def expected_right(finding, kind: str, where: str | None) -> bool:
    if finding is None:
        return False
    ev = finding.evidence
    if kind == "input":
        return ev.get("pass") == "input" and finding.module == ""
    if kind == "root-op":
        return (finding.module == "" and ev.get("pass") == "forward"
                and ev.get("operation") == "torch.log")
    wanted = "forward" if kind == "forward" else "backward"
    return finding.module == where and ev.get("pass") == wanted


def run(name: str, seed: int) -> Counter:
    """Train under the guard with random injections; the counts of what happened."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model = Net()
    model.hid.requires_grad_(False)
    opt = OPTIMIZERS[name]([p for p in model.parameters() if p.requires_grad])
    counts: Counter = Counter()
    with guard(model, opt, policy=Guard(spikes=False, loss_spikes=False),
               sample_every=7, flush_every=5) as g:
        for step in range(STEPS):
            if step == UNFREEZE_AT:
                model.hid.requires_grad_(True)
                opt.add_param_group({"params": list(model.hid.parameters())})
            x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
            kind = rng.choice(KINDS) if rng.random() < INJECT_P else None
            value = rng.choice(VALUES)
            where = rng.choice(("inp", "act1", "hid", "act2", "out"))
            index = (rng.randrange(8), rng.randrange(3 if where == "out" else 16))
            model.poison = (where, kind, index, value) if kind in ("forward", "backward") else None
            model.root_op = kind == "root-op"
            if kind == "input":
                x[rng.randrange(8), rng.randrange(6)] = value
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if kind == "param-grad":
                held = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
                pname, p = rng.choice(held)
                p.grad.view(-1)[rng.randrange(p.numel())] = value
                where = pname.rpartition(".")[0]
            held = [p for group in opt.param_groups for p in group["params"]]
            nonfinite = not math.isfinite(loss.item()) or any(
                not torch.isfinite(p.grad).all() for p in held if p.grad is not None)
            before, skipped = state(model, opt), g.skipped
            opt.step()
            model.poison, model.root_op = None, False
            was_skipped = g.skipped > skipped
            identical = was_skipped and same(before, state(model, opt))
            finding = next((f for f in g.findings if f.kind == "nonfinite"
                            and f.evidence.get("step") == step), None)
            named = was_skipped and expected_right(finding, kind or "", where)
            # the rows of the table: each kind, and the frozen layer / the added group
            rows = [kind or "none"]
            if where == "hid" and kind in ("forward", "backward", "param-grad"):
                rows.append("frozen layer" if step < UNFREEZE_AT else "added group")
            for row in rows:
                counts[row, "injected"] += 1
                counts[row, "nonfinite"] += nonfinite
                counts[row, "skipped"] += was_skipped
                counts[row, "identical"] += identical
                counts[row, "named"] += named
    return counts


def table(seed: int = 0) -> dict[str, Counter]:
    return {name: run(name, seed + i) for i, name in enumerate(OPTIMIZERS)}


def test_random_injections_are_skipped_untouched_and_named():
    totals: Counter = Counter()
    for name, counts in table().items():
        for kind in KINDS:
            n, bad = counts[kind, "nonfinite"], counts[kind, "skipped"]
            assert bad == n, (name, kind, counts)  # every non-finite step, and only those
            assert counts[kind, "identical"] == n, (name, kind, counts)
            assert counts[kind, "named"] == n, (name, kind, counts)
        assert counts["none", "skipped"] == 0, (name, counts)
        totals.update(counts)
    assert sum(totals[k, "injected"] for k in KINDS) >= 200
    assert sum(totals[k, "nonfinite"] for k in KINDS) >= 150
    for row in ("frozen layer", "added group"):  # both were hit, and right
        assert totals[row, "nonfinite"] >= 5, totals
        assert totals[row, "skipped"] == totals[row, "named"] == totals[row, "nonfinite"]


if __name__ == "__main__":
    columns = (*KINDS, "frozen layer", "added group", "none")
    results = table()
    print("| optimizer | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    total: Counter = Counter()
    for name, counts in [*results.items(), ("total", total)]:
        if name != "total":
            total.update(counts)
        cells = [f"{counts[k, 'injected']}/{counts[k, 'nonfinite']}/{counts[k, 'skipped']}/"
                 f"{counts[k, 'identical']}/{counts[k, 'named']}" for k in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("cells: steps / non-finite / skipped / bit-identical / producer named "
          "(frozen layer, added group: forward, backward and gradient injections into the "
          "layer frozen until step 25, then in a parameter group added to the optimizer)")
