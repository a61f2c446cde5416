"""Each sick real-zoo case's label, measured with plain torch code (``retain_grad`` on the
tensors concerned, explicit counts), independent of gradhealth's taps and rules.

``VERIFY[name](model, inputs, targets)`` returns the numbers behind the label and whether
they hold; ``tests/test_real_zoo.py`` asserts every one before scoring the probe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradhealth.measure.catalog import SIGMOID_SATURATION_HIGH, SIGMOID_SATURATION_LOW

Check = Callable[[nn.Module, Any, Any], tuple[bool, dict[str, float]]]
FLOAT16_MAX = 65504.0
LIMIT = 100.0  # the depth rules' two orders of magnitude (docs/science.md#depth-thresholds)
SHALLOW = math.exp(-3)  # rules.vanishing.SHALLOW_VANISHING_RATIO
ENTROPY_FRACTION = 0.25  # rules.attention.ENTROPY_FRACTION


def _loss(model: nn.Module, x: Any, y: Any) -> torch.Tensor:
    out = model(**x) if isinstance(x, dict) else model(x)
    if y is None:
        return out.loss
    if out.dim() == 3:  # (N, T, C) logits, (N, T) tokens
        return F.cross_entropy(out.float().flatten(0, 1), y.flatten())
    return F.cross_entropy(out.float(), y)


def _first(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return next(v for v in value if isinstance(v, torch.Tensor))


@contextmanager
def _capture(modules: dict[str, nn.Module], inputs: bool = False
             ) -> Iterator[dict[str, torch.Tensor]]:
    """Each module's output (and first input) by name, their gradients retained, while the
    block runs; the hooks are removed after it."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, m in modules.items():
        def post(mod, args, kwargs, out, name=name):
            t = _first(out)
            if t.requires_grad:
                t.retain_grad()
            seen[name] = t
            if inputs:
                first = args[0] if args else next(iter(kwargs.values()))
                if first.requires_grad:
                    first.retain_grad()
                seen[name + ":in"] = first
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _grads(model: nn.Module, x: Any, y: Any, modules: dict[str, nn.Module],
           inputs: bool = False) -> dict[str, torch.Tensor]:
    try:
        with _capture(modules, inputs) as seen:
            _loss(model, x, y).backward()
    finally:
        model.zero_grad(set_to_none=True)
    return {k: t.grad for k, t in seen.items() if t.grad is not None}


def stream_jump(blocks: str) -> Check:
    """The gradient grows over ``LIMIT``x across the first block of ``blocks`` (input to
    output) and under 10x across each other block."""
    def check(model, x, y):
        stack = model.get_submodule(blocks)
        g = _grads(model, x, y, {str(i): b for i, b in enumerate(stack)}, inputs=True)
        steps = [float(g[f"{i}:in"].norm() / g[str(i)].norm()) for i in range(len(stack))]
        return steps[0] > LIMIT and max(steps[1:]) < 10, {"first": steps[0],
                                                          "others": max(steps[1:])}
    return check


def attention_collapsed(model, x, y) -> tuple[bool, dict[str, float]]:
    """Some head's rows are almost one-hot: a Hugging Face causal LM's own attention
    probabilities (eager attention, evaluation mode: no dropout), whose mean row entropy
    over the mean ln(row length) is under ``ENTROPY_FRACTION`` for the lowest head of some
    layer. The model's attention implementation and mode are set back after."""
    implementation, training = model.config._attn_implementation, model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        with torch.no_grad():
            attentions = model(**x, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(implementation)
        model.train(training)
    shares = []
    for a in attentions:  # (N, heads, T, T), causal rows: row t spans t + 1 keys
        entropy = -(a * torch.log(a.clamp_min(1e-30))).sum(-1)[..., 1:].mean(dim=(0, 2))
        uniform = torch.log(torch.arange(2, a.shape[-1] + 1, dtype=a.dtype)).mean()
        shares.append(float((entropy / uniform).min()))
    return min(shares) < ENTROPY_FRACTION, {"lowest_entropy_share": min(shares)}


def both(*checks: Check) -> Check:
    """Every check holds; their numbers together."""
    def check(model, x, y):
        results = [c(model, x, y) for c in checks]
        return all(ok for ok, _ in results), {k: v for _, n in results for k, v in n.items()}
    return check


def depth_ratio(first: str, last: str, vanishing: bool) -> Check:
    """||dL/d(output)|| of ``first`` over that of ``last`` under 1/LIMIT (over LIMIT)."""
    def check(model, x, y):
        g = _grads(model, x, y, {n: model.get_submodule(n) for n in (first, last)})
        ratio = float(g[first].norm() / g[last].norm())
        return (ratio < 1 / LIMIT) if vanishing else (ratio > LIMIT), {"ratio": ratio}
    return check


def backward_only(module: str) -> Check:
    """Every forward value finite; dL/d(output) of ``module`` finite, dL/d(its input) not."""
    def check(model, x, y):
        m = model.get_submodule(module)
        try:
            with _capture({module: m}, inputs=True) as seen:
                loss = _loss(model, x, y)
                forward_finite = bool(torch.isfinite(loss)) and all(
                    bool(torch.isfinite(t).all()) for t in seen.values())
                loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
        g_out, g_in = seen[module].grad, seen[module + ":in"].grad
        ok = (forward_finite and g_out is not None and bool(torch.isfinite(g_out).all())
              and g_in is not None and not bool(torch.isfinite(g_in).all()))
        return ok, {"forward_finite": float(forward_finite)}
    return check


def forward_made(module: str) -> Check:
    """``module`` receives finite inputs and returns NaN/Inf."""
    def check(model, x, y):
        m = model.get_submodule(module)
        with _capture({module: m}, inputs=True) as seen, torch.no_grad():
            model(x)
        out, inp = seen[module], seen[module + ":in"]
        bad = int((~torch.isfinite(out)).sum())
        return bool(torch.isfinite(inp).all()) and bad > 0, {"nonfinite": bad}
    return check


def sharpened(model, x, y):
    """Finite logits / T whose softmax underflows to exactly 0 somewhere: log gives -inf."""
    with torch.no_grad():
        z = model.backbone(x) / model.temperature
        zeros = int((torch.softmax(z, dim=-1) == 0).sum())
    return bool(torch.isfinite(z).all()) and zeros > 0, {"zero_probabilities": zeros}


def half_overflow(model, x, y):
    """Float16 inputs within range; the first layer's exact (float32) sums past 65504."""
    first = model[0]
    with torch.no_grad():
        exact = F.linear(x.float(), first.weight.float(), first.bias.float())
    peak = float(exact.abs().max())
    return float(x.float().abs().max()) <= FLOAT16_MAX < peak, {"peak": peak}


def blank_rows(model, x, y):
    """A sequence made only of padding: every key of its queries masked."""
    blank = int((x == 0).all(dim=1).sum())
    return blank > 0 and forward_made("attn.0")(model, x, y)[0], {"blank_sequences": blank}


def dead(pre_activations: Callable[[nn.Module, Any], list[torch.Tensor]],
         shallow_vanishing: tuple[str, str] | None = None) -> Check:
    """Every rectifier (given by its pre-activations) has over half its units <= 0 for
    the whole batch; with ``shallow_vanishing``, ||dL/d out(first)|| / ||dL/d out(last)||
    < e^-3 too (the dead units stop the gradient)."""
    def check(model, x, y):
        with torch.no_grad():
            fractions = [float((z <= 0).all(dim=0).float().mean())
                         for z in pre_activations(model, x)]
        ok = all(f > 0.5 for f in fractions)
        numbers = {f"dead_{i}": f for i, f in enumerate(fractions)}
        if shallow_vanishing is not None:
            first, last = shallow_vanishing
            g = _grads(model, x, y, {n: model.get_submodule(n) for n in (first, last)})
            numbers["ratio"] = float(g[first].norm() / g[last].norm())
            ok = ok and numbers["ratio"] < SHALLOW
        return ok, numbers
    return check


def mlp_pre(model, x) -> list[torch.Tensor]:
    if isinstance(model, nn.Sequential):
        h0 = model[0](x)
        return [h0, model[2](torch.relu(h0))]
    h0 = model.fc1(x)
    return [h0, model.fc2(torch.relu(h0))]


def gate_saturated(model, x, y):
    """Over half of the gate's sigmoid outputs in the sigmoid band (catalog)."""
    with torch.no_grad():
        h = F.relu(model.conv2(F.relu(model.conv1(x))))
        s = torch.sigmoid(model.gate(h))
        band = float(((s <= SIGMOID_SATURATION_LOW) | (s >= SIGMOID_SATURATION_HIGH))
                     .float().mean())
    return band > 0.5, {"saturated": band}


def through_time(model, x, y):
    """dL/dx_t over the first tenth of the steps is over LIMIT x that over the last."""
    ratio = _time_ratio(model, x, y)
    return ratio > LIMIT, {"ratio": ratio}


def fading(model, x, y):
    """dL/dx_t over the first tenth of the steps is under 1/LIMIT of that over the last."""
    ratio = _time_ratio(model, x, y)
    return ratio < 1 / LIMIT, {"ratio": ratio}


def _time_ratio(model, x, y) -> float:
    seen = {}

    def hook(mod, args):
        if not args[0].requires_grad:  # raw features: a leaf that asks for its gradient
            seen["x"] = args[0].detach().requires_grad_()
            return (seen["x"], *args[1:])
        args[0].retain_grad()
        seen["x"] = args[0]
        return None
    handle = model.rnn.register_forward_pre_hook(hook)
    try:
        F.cross_entropy(model(x), y).backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    g = seen["x"].grad.pow(2).mean(dim=(0, 2)).sqrt()
    k = max(1, g.numel() // 10)
    return float(g[:k].mean() / g[-k:].mean())


VERIFY: dict[str, Check] = {
    "llama-init-1": both(stream_jump("model.layers"), attention_collapsed),
    "gpt2-init-1": both(stream_jump("transformer.h"), attention_collapsed),
    "vgg11-normal-0.01": depth_ratio("features.0", "classifier.3", vanishing=True),
    "vgg11-he-x2": depth_ratio("features.0", "classifier.3", vanishing=False),
    "padded-lm-hand-norm": backward_only("norm"),
    "binary-net": backward_only("1"),
    "sharpened-log-softmax": sharpened,
    "fp16-audio-overflow": half_overflow,
    "blank-attention-row": blank_rows,
    "relu-mlp-diverged": dead(mlp_pre, ("0", "4")),
    "functional-relu-diverged": dead(mlp_pre, ("fc1", "head")),
    "gate-bias-saturated": gate_saturated,
    "gate-diverged-saturated": gate_saturated,
    "irnn-lm-exploding": through_time,
    "lstm-300-vanishing": fading,
}
