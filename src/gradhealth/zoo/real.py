"""The real-architecture zoo: everyday architectures, healthy and made sick.

``HEALTHY`` (``zoo.everyday``) are architectures people train, at their library's default
initialisation: no finding expected. ``SICK`` (``zoo.ailing``) carry one pathology each,
its label measured with plain torch code by ``zoo.verify.VERIFY[name]``. Each is a
``zoo.Case``: ``build()`` returns ``(model, inputs, targets)`` for
``gh.probe(model, inputs, targets)`` (``targets`` None where the model returns its own
loss), ``expected`` the findings as (kind, module), ``healthy`` whether it is a control.
``OPERATIONS`` holds, for a producer the probe must name down to its operation, the
operation and the line of ``zoo/ailing.py`` (by the marker comment on it). Needs
torchvision and transformers (the ``test`` extra).
"""

from __future__ import annotations

import os

from gradhealth.zoo import ailing, recurrence
from gradhealth.zoo.cases import Case
from gradhealth.zoo.everyday import BUILDERS

V, E, S, D, N = "vanishing", "exploding", "saturation", "dead_units", "nonfinite"
A = "attention_logit_growth"

HEALTHY: tuple[Case, ...] = tuple(
    Case(name, build, frozenset(), why, tags=("real",))
    for name, (build, why) in BUILDERS.items())


def _sick(name: str, build, expected: set, why: str, *tags: str) -> Case:
    return Case(name, build, frozenset(expected), why, tags=("real", *tags))


SICK: tuple[Case, ...] = (
    _sick("llama-init-1", ailing.hugging_face_init("LlamaConfig", "LlamaForCausalLM", "llama",
                                                   1.0),
          {(E, "model.layers.0"), (A, None)}, "initializer_range 1.0 (default 0.02): the "
          "first block multiplies the gradient by ~2e4, the others by ~2 (the thirds read ~7); "
          "attention logits of 500+ make the rows one-hot (entropy under 1% of uniform)"),
    _sick("gpt2-init-1", ailing.hugging_face_init("GPT2Config", "GPT2LMHeadModel", "gpt2", 1.0),
          {(E, "transformer.h.0"), (A, None)}, "initializer_range 1.0: ~400x across the "
          "first block, 3-5x across the others (the thirds read ~97); attention logits of "
          "~600 make the rows one-hot"),
    _sick("vgg11-normal-0.01", ailing.vgg11_init(0.01), {(V, None)},
          "VGG's own N(0, 0.01) init without BatchNorm (Simonyan & Zisserman 2014 trained "
          "the deeper nets from VGG-11's weights for this reason)"),
    _sick("vgg11-he-x2", ailing.vgg11_init(None, 2.0), {(E, None)},
          "He init times 2: the gradient doubles at every one of VGG-11's layers"),
    _sick("padded-lm-hand-norm", ailing.padded_lm, {(N, "norm")},
          "x / (sqrt(mean(x^2)) + eps) on the zero rows of a padding embedding: finite "
          "forward, sqrt'(0) = inf times 0 in backward", "code-bug"),
    _sick("binary-net", ailing.binary_net, {(N, "1")},
          "a custom autograd.Function whose backward divides by |x|, fed dropout's zeros",
          "code-bug"),
    _sick("sharpened-log-softmax", ailing.sharpened, {(N, "")},
          "log(softmax(z / 0.01)) on a ResNet-18: probabilities underflow to 0, log gives "
          "-inf (log_softmax would not)", "code-bug"),
    _sick("fp16-audio-overflow", ailing.half_mlp, {(N, "0")},
          "float16 MLP, He init, raw int16 audio: the first layer's sums pass 65504"),
    _sick("blank-attention-row", ailing.blank_row, {(N, "attn.0")},
          "an all-padding sequence: softmax over a row of -inf keys is NaN", "code-bug"),
    _sick("relu-mlp-diverged", ailing.trained(ailing.relu_mlp(), 10.0, 5),
          {(V, None), (D, "1"), (D, "3")},
          "five SGD steps at lr 10: most ReLU units dead, the gradient stops at them",
          "trained"),
    _sick("functional-relu-diverged", ailing.trained(ailing.relu_mlp(True), 10.0, 5),
          {(V, None), (D, "relu#0"), (D, "relu#1")},
          "the same net with F.relu in forward: the functional units are judged", "trained"),
    _sick("gate-bias-saturated", ailing.gated(1.0, -6.0), {(S, "sigmoid#0")},
          "a functional sigmoid gate with bias -6 (Srivastava et al. 2015 suggest -1 to -3): "
          "sigmoid(z) < 0.01 everywhere"),
    _sick("gate-diverged-saturated", ailing.trained(ailing.gated(), 20.0, 3),
          {(S, "sigmoid#0")}, "three SGD steps at lr 20 drive the functional gate to 0 or 1",
          "trained"),
    _sick("irnn-lm-exploding", recurrence.irnn(1.3), {(E, "rnn")},
          "a ReLU RNN language model with W_hh = 1.3 I (IRNN, Le et al. 2015, use 1.0): "
          "1.3^40 through time"),
    _sick("lstm-300-vanishing", recurrence.long_lstm(300), {(V, "rnn")},
          "an LSTM at torch's default init read after 300 steps: the forget gate near 1/2 "
          "passes ~0.5^300 of the gradient back (a forget bias of 4.2 passes 1e-2)"),
)
REAL_CASES: tuple[Case, ...] = HEALTHY + SICK


def _line(marker: str) -> int:
    with open(ailing.__file__) as f:
        return next(i for i, line in enumerate(f, 1) if f"# {marker}" in line)


OPERATIONS: dict[str, tuple[str, str, int]] = {
    name: (operation, os.path.basename(ailing.__file__), _line(marker))
    for name, operation, marker in (
        ("padded-lm-hand-norm", "torch.Tensor.sqrt", "HAND-NORM"),
        ("sharpened-log-softmax", "torch.log", "LOG-SOFTMAX"),
        ("blank-attention-row", "torch.softmax", "BLANK-ROW"))}
"""Producers named down to the operation: case -> (operation, file, line)."""


def operation_named(case: Case, findings: list) -> bool:
    """Whether the non-finite finding names ``OPERATIONS[case.name]`` (true for a case
    without one)."""
    want = OPERATIONS.get(case.name)
    if want is None:
        return True
    return any(f.kind == N and (f.evidence.get("operation"),
                                os.path.basename(f.evidence.get("file") or ""),
                                f.evidence.get("line")) == want for f in findings)


def real_case(name: str) -> Case:
    for c in REAL_CASES:
        if c.name == name:
            return c
    raise KeyError(f"no real-zoo case {name!r}; known: {', '.join(c.name for c in REAL_CASES)}")
