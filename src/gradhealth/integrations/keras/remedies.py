"""Remedies in Keras terms: ``keras_remedy(text)`` and ``keras_finding(finding)``.

gradhealth's rules write remedies as PyTorch code (``torch.nn.init.kaiming_normal_``,
``nn.BatchNorm1d``, ``clip_grad_norm_``). A Keras user needs the Keras spelling of the
same change: an initializer argument, a layer, an optimizer argument. The table maps
each PyTorch phrase the rules emit to its Keras equivalent, most specific first; the
scales are the same numbers (He: 2/fan_in; Leaky ReLU with slope a: 2/((1+a^2) fan_in);
LeCun: 1/fan_in; Glorot with gain g: g^2 * 2/(fan_in+fan_out), which is Keras's
``VarianceScaling(scale=g**2, mode="fan_avg")``).

Clipping needs care (SCIENCE.md, "Clipping"): the remedies mean the *global* norm,
which is Keras's ``global_clipnorm``; ``clipnorm`` clips each variable separately and
``clipvalue`` each component (changing the gradient's direction), as the article's
``SGD(clipvalue=1.0)`` does.
"""

from __future__ import annotations

import dataclasses
import re

from gradhealth.rules.finding import Finding

GLOBAL_CLIP = ('global_clipnorm=1.0 on the optimizer (keras.optimizers.SGD(learning_rate=..., '
               'global_clipnorm=1.0)); clipnorm= clips each variable separately and '
               'clipvalue= each component, which changes the gradient\'s direction')
NO_GUARD = ("add keras.callbacks.TerminateOnNaN() so training stops at the first NaN loss "
            "instead of writing NaN into the weights")

_RULES: tuple[tuple[str, str], ...] = (
    # -- initialisation ---------------------------------------------------------------
    (r"torch\.nn\.init\.kaiming_normal_\((?:layer\.weight|w), (?:mode='fan_in', )?"
     r"nonlinearity='relu'\)", 'kernel_initializer="he_normal"'),
    (r"torch\.nn\.init\.kaiming_normal_\(layer\.weight, a=a, nonlinearity='leaky_relu'\)",
     'kernel_initializer=keras.initializers.VarianceScaling(scale=2 / (1 + a**2), '
     'mode="fan_in", distribution="truncated_normal") with a the LeakyReLU\'s negative_slope'),
    (r"torch\.nn\.init\.kaiming_normal_\(layer\.weight, ?nonlinearity='linear'\)",
     'kernel_initializer="lecun_normal"'),
    (r"torch\.nn\.init\.xavier_normal_\(layer\.weight, gain=torch\.nn\.init\."
     r"calculate_gain\('tanh'\)\)",
     'kernel_initializer=keras.initializers.VarianceScaling(scale=(5 / 3)**2, '
     'mode="fan_avg", distribution="untruncated_normal") (Glorot normal with the tanh gain)'),
    (r"torch\.nn\.init\.xavier_normal_ with the activation's gain",
     'kernel_initializer=keras.initializers.VarianceScaling(scale=gain**2, mode="fan_avg", '
     'distribution="untruncated_normal"), Glorot normal with the activation\'s gain'),
    (r"\(torch\.nn\.init\.orthogonal_ on each gate's block\)",
     '(recurrent_initializer="orthogonal", the default of Keras\'s recurrent layers)'),
    (r"\(torch\.nn\.init\.orthogonal_\)",
     '(recurrent_initializer=keras.initializers.Orthogonal(gain=1.0))'),
    (r"\(torch\.nn\.init\)", "(kernel_initializer= of each layer)"),
    (r"\bweight_hh\b", "the recurrent kernel"),
    (r"with He init and zero bias",
     'with kernel_initializer="he_normal" and bias_initializer="zeros"'),
    (r"with He init\)", 'with kernel_initializer="he_normal")'),
    # -- layers -------------------------------------------------------------------------
    # a Keras activation is often fused (Dense(n, activation="sigmoid")): a norm can only go
    # before it once the activation is a layer of its own
    (r"insert nn\.BatchNorm1d after each of these layers, before the sigmoid",
     'insert keras.layers.BatchNormalization() between each of these layers and its '
     'sigmoid (Dense(n), keras.layers.BatchNormalization(), '
     'keras.layers.Activation("sigmoid") in place of Dense(n, activation="sigmoid"))'),
    (r"insert nn\.BatchNorm1d after each of these layers, before tanh",
     'insert keras.layers.BatchNormalization() between each of these layers and its tanh '
     '(Dense(n), keras.layers.BatchNormalization(), keras.layers.Activation("tanh") in '
     'place of Dense(n, activation="tanh"))'),
    (r"nn\.BatchNorm1d / nn\.LayerNorm",
     "keras.layers.BatchNormalization() / keras.layers.LayerNormalization()"),
    (r"nn\.BatchNorm1d", "keras.layers.BatchNormalization()"),
    (r"nn\.LeakyReLU\(0\.2\)", "keras.layers.LeakyReLU(negative_slope=0.2)"),
    (r"nn\.ReLU / nn\.ELU", 'activation="relu" / activation="elu"'),
    (r"nn\.ELU", "keras.layers.ELU()"),
    (r"nn\.PReLU", "keras.layers.PReLU()"),
    (r"replace nn\.Sigmoid after", 'replace activation="sigmoid" of'),
    (r"\bwith\s+nn\.ReLU and\b", 'with activation="relu" and'),
    (r"nn\.ReLU", 'activation="relu"'),
    (r"nn\.RNN with nn\.LSTM or nn\.GRU",
     "keras.layers.SimpleRNN with keras.layers.LSTM or keras.layers.GRU"),
    (r"\(for an LSTM set the forget-gate bias to 1, Jozefowicz et al\. 2015\)",
     "(keep unit_forget_bias=True, Keras's default: Jozefowicz et al. 2015)"),
    # -- clipping ----------------------------------------------------------------------
    (r"torch\.nn\.utils\.clip_grad_norm_\(model\.parameters\(\), max_norm=1\.0\),? "
     r"\(?or gradhealth\.ClipNorm\(1\.0\)\)?", GLOBAL_CLIP),
    (r"gradhealth\.ZClip\(\) adapts to the running level, gradhealth\.ClipNorm\(c\) with c",
     "set global_clipnorm=c on the Keras optimizer (not clipvalue, which changes the "
     "direction) with c"),
    (r"\(gradhealth\.ZClip\(\)\)", "(global_clipnorm= on the optimizer)"),
    (r"clip the gradient norm before the step", "set global_clipnorm= on the optimizer"),
    # -- the guard, which watches torch optimizers only ---------------------------------
    (r" ?gh\.guard\(\.\.\.\) skips such steps without touching the weights\.",
     f" Keras: {NO_GUARD}."),
    (r"let gradhealth's guard skip such steps during training instead of writing NaN into "
     r"the weights", NO_GUARD),
    (r"Watch with guard=True \(or use gh\.guard\) to skip such steps before they touch the "
     r"weights and to name the module that produces the first non-finite value\.",
     f"In Keras, {NO_GUARD}, and set global_clipnorm= on the optimizer."),
    # -- losses and precision ------------------------------------------------------------
    (r"use F\.cross_entropy on logits rather than log\(softmax\)",
     'end the model with Dense(n) (no softmax) and use keras.losses.'
     'SparseCategoricalCrossentropy(from_logits=True)'),
    (r"compute the offending operation in float32 \(autocast\(enabled=False\) around it\)",
     'compute the offending layer in float32 (dtype="float32" on that layer)'),
)
_COMPILED = tuple((re.compile(p), r) for p, r in _RULES)


def keras_remedy(text: str) -> str:
    """``text`` with every PyTorch phrase of gradhealth's remedies in its Keras spelling."""
    for pattern, replacement in _COMPILED:
        text = pattern.sub(lambda _m, r=replacement: r, text)
    return text


def keras_finding(finding: Finding) -> Finding:
    """``finding`` with its remedy phrased for Keras (a new Finding; the input is frozen)."""
    return dataclasses.replace(finding, remedy=keras_remedy(finding.remedy))
