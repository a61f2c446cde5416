"""Each remedy scheme (``rules/remedy.py``) worded for Keras 3: an initializer argument, a
layer, an optimizer argument, a callback.

The scales are PyTorch's (``wording_torch``): He 2/fan_in is ``"he_normal"``; Leaky ReLU
with slope a is ``VarianceScaling(scale=2 / (1 + a**2), mode="fan_in")``; LeCun 1/fan_in
is ``"lecun_normal"``; Glorot with gain g is g^2 * 2/(fan_in+fan_out), which is
``VarianceScaling(scale=g**2, mode="fan_avg")``.

A Keras activation is often fused (``Dense(n, activation="sigmoid")``): a normalisation
layer can only go before it once the activation is a layer of its own, so the wording
says how to split it.

Clipping (docs/science.md, "Clipping"): the remedies mean the *global* norm, which is
Keras's ``global_clipnorm``; ``clipnorm`` clips each variable separately and
``clipvalue`` each component, which changes the gradient's direction (as the common
``SGD(clipvalue=1.0)`` does). gradhealth's guard wraps torch optimizers only, so where
PyTorch users are told to guard the step, Keras users get ``TerminateOnNaN``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gradhealth.rules.wording import (
    Words,
    attention_state,
    clip_range,
    leaky_scale,
    measured,
    names,
    number,
    operation,
    series,
    update_state,
)

HE = 'kernel_initializer="he_normal"'
NORM = "keras.layers.BatchNormalization() / keras.layers.LayerNormalization()"
NOT_CLIPNORM = ("not clipnorm=, which clips each variable separately, nor clipvalue=, "
                "which clips each component and so changes the gradient's direction")
NO_GUARD = "(gradhealth's guard watches torch optimizers only)"
GLOROT_SCALE = {"tanh": "(5 / 3)**2", "softsign": "(5 / 3)**2", "sigmoid": "1.0"}
"""g^2 for Glorot init with the activation's gain g (``torch.nn.init.calculate_gain``)."""


NAMES = {"hardsigmoid": "hard_sigmoid", "hardtanh": "hard_tanh", "hardswish": "hard_silu"}
"""Keras's activation names where they differ from gradhealth's activation kinds."""


def split(act: str) -> str:
    """How to put a layer between a Dense and its fused activation ``act``."""
    name = NAMES.get(act, act)
    return (f'(Dense(n), keras.layers.BatchNormalization(), keras.layers.Activation("{name}")'
            f' in place of Dense(n, activation="{name}"))')


def he(layers: Sequence[str], p: Words) -> str:
    return (f"Re-initialise {names(layers)} with He init{measured(p)}, target 2: {HE} "
            f'(and bias_initializer="zeros", the default).')


def leaky_he(layers: Sequence[str], p: Words) -> str:
    a, target = p.get("slope"), leaky_scale(p)
    slope = "a" if a is None else f"a = {a:g}"
    scale = "2 / (1 + a**2)" if target is None else target
    return (f"Re-initialise {names(layers)} with He init for the negative slope {slope}"
            f"{measured(p)}, target 2/(1+a^2){'' if target is None else ' = ' + target}: "
            f"kernel_initializer=keras.initializers.VarianceScaling(scale={scale}, "
            f'mode="fan_in", distribution="truncated_normal")'
            + (" with a the LeakyReLU's negative_slope." if a is None else "."))


def lecun(layers: Sequence[str], p: Words) -> str:
    return (f"Re-initialise {names(layers)} with LeCun normal init{measured(p)}, target 1 "
            f'(SELU self-normalises only with it): kernel_initializer="lecun_normal".')


def glorot_tanh(layers: Sequence[str], p: Words) -> str:
    act = p.get("activation") or "tanh"
    return (f"Re-initialise {names(layers)} with Glorot (Xavier) init and the tanh gain"
            f"{measured(p)}: kernel_initializer=keras.initializers.VarianceScaling("
            f'scale=(5 / 3)**2, mode="fan_avg", distribution="untruncated_normal") (Glorot '
            f"normal with the tanh gain), or orthogonal init "
            f'(kernel_initializer="orthogonal"); if the net is very deep, insert '
            f"keras.layers.BatchNormalization() between each of these layers and its {act} "
            f"{split(act)}.")


def replace_sigmoid(layers: Sequence[str], p: Words) -> str:
    act = p.get("activation") or "sigmoid"
    return (f"Sigmoid units {p.get('direction', 'shrink')} the gradient whatever the init "
            f"(derivative at most 1/4, Glorot & Bengio 2010): replace "
            f'activation="{NAMES.get(act, act)}" of {names(layers)} with activation="relu" '
            f"and He init ({HE}), or insert keras.layers.BatchNormalization() between each "
            f"of these layers and its {act} {split(act)} (Ioffe & Szegedy 2015).")


def he_or_norm(layers: Sequence[str], p: Words) -> str:
    act = p.get("activation") or "rectifier"
    return (f"Re-initialise {names(layers)}, followed by {act}, with He init{measured(p)} "
            f"({HE}) or insert a normalisation layer ({NORM}) after each of them.")


def variance_preserving(layers: Sequence[str], p: Words) -> str:
    act = p.get("activation")
    what = f"the {act}" if act else "the activation"
    return (f"Use the variance-preserving init for {what} after {names(layers)}"
            f'{measured(p)}: He for ReLU-like (kernel_initializer="he_normal"), Glorot for '
            f'tanh ("glorot_normal"), LeCun for SELU ("lecun_normal"), or insert a '
            f"normalisation layer ({NORM}) after each of them.")


def desaturate(layers: Sequence[str], p: Words) -> str:
    act = p.get("activation") or "activation"
    where = (f"the layers feeding them, {names(layers)}{measured(p, 'median')},"
             if layers else "the layers feeding them")
    scale = GLOROT_SCALE.get(act, "gain**2")
    return (f"Pre-activations are too large: re-initialise {where} with Glorot init "
            f"(kernel_initializer=keras.initializers.VarianceScaling(scale={scale}, "
            f'mode="fan_avg", distribution="untruncated_normal"), Glorot normal with the '
            f"{act}'s gain), or insert keras.layers.BatchNormalization() before each "
            f"saturated {act} {split(act)} (Ioffe & Szegedy 2015), or switch to a "
            f'non-saturating activation (activation="relu" / activation="elu" with {HE}).')


def revive(layers: Sequence[str], p: Words) -> str:
    return (f"Revive the units: re-initialise {names(layers, 'the layer feeding it')} with "
            f'{HE} and bias_initializer="zeros" (a large negative bias or a bad '
            f"learning-rate step kills ReLUs), or replace `{p.get('activation_layer')}` with "
            f"keras.layers.LeakyReLU(negative_slope={p.get('slope', 0.2):g}) / "
            f"keras.layers.ELU() / keras.layers.PReLU(), which pass a gradient for negative "
            f'inputs (Xu et al. 2015); a fused Dense(n, activation="relu") becomes Dense(n) '
            f"followed by that layer.")


def gate_recurrence(layers: Sequence[str], p: Words) -> str:
    b = p.get("forget_bias", 1.0)
    c = p.get("cell")
    over = f" over {p['steps']} steps" if p.get("steps") else ""
    bias = ("keep unit_forget_bias=True, Keras's default, which starts the forget-gate "
            "bias at 1" if b == 1 else
            f"set unit_forget_bias=False and start the forget-gate bias at {b:g} "
            f"(sigmoid({b:g})^T stays above the vanishing threshold{over})")
    rest = ('initialise the recurrent kernel orthogonally (recurrent_initializer='
            '"orthogonal", the default of Keras\'s recurrent layers); or shorten the '
            "back-propagation window (truncated BPTT).")
    if c == "lstm":
        return (f"Keep the cell's gradient alive through time: in {names(layers)} {bias} "
                f"(Jozefowicz et al. 2015); {rest}")
    if c == "gru":
        return f"The gates of {names(layers)} do not carry the gradient{over}: {rest}"
    which = "" if c == "rnn" else "if it is a keras.layers.SimpleRNN, "
    return (f"Gates keep the gradient alive through time: {which}replace {names(layers)} "
            f"with keras.layers.LSTM or keras.layers.GRU ({bias}: Jozefowicz et al. "
            f"2015); {rest}")


def orthogonal_recurrent(layers: Sequence[str], p: Words) -> str:
    g = p.get("gain", 1.0)
    return (f"Initialise the recurrent kernel of {names(layers)} orthogonally with gain <= "
            f"{g:g} (recurrent_initializer=keras.initializers.Orthogonal(gain={number(g)})) "
            f"so the recurrent spectral radius starts at {g:g}.")


def clip_global_norm(layers: Sequence[str], p: Words) -> str:
    c = number(p.get("max_norm", 1.0))
    code = (f"global_clipnorm={c} on the optimizer (keras.optimizers.SGD(learning_rate=..., "
            f"global_clipnorm={c})); {NOT_CLIPNORM}")
    if p.get("stopgap"):
        return f"Until then, clip the global gradient norm: {code}."
    return f"Clip the global gradient norm (Pascanu et al. 2013, Sec. 3.2): {code}."


def clip_spikes(layers: Sequence[str], p: Words) -> str:
    return (f"A single step moved the {series(p)} far above its recent level. Clip the "
            f"global gradient norm so one batch cannot move the weights far: set "
            f"global_clipnorm=c on the optimizer ({NOT_CLIPNORM}) with c at 0.5-10x the "
            f"typical norm{clip_range(p)} (Pascanu et al. 2013, Sec. 3.2); if spikes recur, "
            f"lower the learning rate or lengthen its warm-up, and look at the batch of "
            f"step {p.get('step')} for corrupt data.")


def guard(layers: Sequence[str], p: Words) -> str:
    if p.get("on") == "spike":
        return (f"In Keras {NO_GUARD}, global_clipnorm= bounds how far a step that spikes "
                f"can move the weights.")
    tail = (", and run keras_probe(model, x, y) on that batch to name the layer that "
            "produced the first non-finite value" if p.get("names_producer") else "")
    return (f"To stop at such steps in Keras {NO_GUARD}, add keras.callbacks.TerminateOnNaN() "
            f"so training stops at the first non-finite loss instead of writing NaN into the "
            f"weights{tail}.")


def release(layers: Sequence[str], p: Words) -> str:
    return (f"The gradient norm stayed far above its former level for {p.get('skips')} "
            f"steps in a row up to step {p.get('step')}: the level changed (a learning-rate "
            f"change, a new data mix) rather than spiked. The guard lets steps through again;"
            f" if training then diverges, lower the learning rate or set global_clipnorm= on "
            f"the optimizer.")


def diverged(layers: Sequence[str], p: Words) -> str:
    return (f"The loss left its level at step {p.get('step')} and has not come back: "
            f"training on will not bring it back. Restart from a checkpoint saved before "
            f"step {p.get('step')} (keras.callbacks.ModelCheckpoint) with a lower "
            f"learning_rate (3-10x) or a longer warm-up, and set global_clipnorm=c on the "
            f"optimizer at 0.5-10x the typical norm ({NOT_CLIPNORM}).")


def nonfinite_forward(layers: Sequence[str], p: Words) -> str:
    return (f"Find the operation in {names(layers, 'the model')} that turns finite inputs "
            f"into NaN/Inf{operation(p)} (log or sqrt of a non-positive value, division by "
            f"~0, exp overflow, float16 overflow past 65504); guard it (clamp the argument, "
            f'add an epsilon, compute that layer in float32 with dtype="float32").')


def probe_zero_head(layers: Sequence[str], p: Words) -> str:
    if p.get("measured"):
        return (f"Nothing to change ({names(layers)} is zero by design; the first step of "
                f"model.fit makes it non-zero). The findings on the body come from a pass "
                f"with a random kernel in its place; the model was left as it was.")
    return (f"Nothing to change for training ({names(layers)} is zero by design; the first "
            f"step of model.fit makes it non-zero). To judge the body, probe after one "
            f"step (model.fit(x, y, epochs=1, steps_per_epoch=1)), or with the kernel of "
            f"{names(layers)} temporarily re-initialised at random "
            f'(kernel_initializer="glorot_uniform") on a copy of the model.')


def nonfinite_parameter(layers: Sequence[str], p: Words) -> str:
    held = f"{p['count']} NaN/Inf value(s)" if p.get("count") else "NaN/Inf"
    return (f"The weights of {names(layers)} hold {held}: no operation made them, an "
            f"earlier step wrote them. Restore them from a checkpoint taken before "
            f"(model.load_weights), and find the step that wrote them: "
            f"keras.callbacks.TerminateOnNaN() stops training at the first NaN loss, and "
            f"GradHealthKerasCallback records each step's gradient norms and non-finite "
            f"flags.")


def nonfinite_backward(layers: Sequence[str], p: Words) -> str:
    return (f"The backward pass of {names(layers, 'the loss function')} turns a finite "
            f"gradient into NaN/Inf{operation(p)} (sqrt/pow/norm at 0, division by a tiny "
            f"value, overflow of a large gradient): add an epsilon inside the operation, "
            f"clamp its input, or "
            f"set global_clipnorm= on the optimizer.")


def nonfinite_loss(layers: Sequence[str], p: Words) -> str:
    return ("The model's outputs are finite but the loss is not: check the targets and the "
            "loss (log of 0, probabilities outside [0, 1]); end the model with Dense(n) (no "
            "softmax) and use keras.losses.SparseCategoricalCrossentropy(from_logits=True).")


def nonfinite_batch(layers: Sequence[str], p: Words) -> str:
    part, arguments = p.get("part") or "inputs", p.get("arguments") or "the batch"
    return (f"The {part} themselves hold NaN/Inf ({arguments}): the model only passed them "
            f"on. Check the data pipeline (missing values, a Normalization layer adapted on "
            f"data with a constant feature, a corrupt file); repair or drop such examples "
            f"before fit (np.nan_to_num, or keep rows where np.isfinite(x).all(axis=1)).")


def replay_missed(layers: Sequence[str], p: Words) -> str:
    return (f"The replay could not reproduce the NaN: the batch was changed in place after "
            f"the forward, the model draws randomness the RNG state does not cover, or the "
            f"NaN comes from the loss; run keras_probe(model, x, y) on the batch of step "
            f"{p.get('step')}.")


def amp_float32(layers: Sequence[str], p: Words) -> str:
    return (f"The loss scale fell to {p.get('loss_scale'):g}, below 1, and the gradients "
            f"still overflow: the model itself overflows or produces NaN. Run "
            f"keras_probe(model, x, y) on a batch to name the layer that produces it; compute "
            f'the offending layer in float32 (dtype="float32" on that layer).')


def qk_layernorm(layers: Sequence[str], p: Words) -> str:
    text = (f"{attention_state(layers, p)}put LayerNorm on each head's queries and keys "
            f"(qk-layernorm, Dehghani et al. 2023): keras.layers.MultiHeadAttention has no "
            f"such option, so apply keras.layers.LayerNormalization() over the head axis to "
            f"q and k before their dot product (a subclass overriding _compute_attention). Or "
            f"lower the peak learning rate, or lengthen its warm-up (Wortsman et al. 2023).")
    return text[0].upper() + text[1:]


def z_loss(layers: Sequence[str], p: Words) -> str:
    coef, log_z = number(p.get("coef", 1e-4)), p.get("log_z")
    drift = f" (it averages {log_z:.3g} at {names(layers)})" if log_z is not None else ""
    return (f"Hold log Z of the output near 0{drift} with the z-loss (Chowdhery et al. 2022): "
            f"add {coef} * keras.ops.mean(keras.ops.square(keras.ops.logsumexp(logits, "
            f"axis=-1))) to the loss (a custom loss on the logits, or model.add_loss).")


def adam_epsilon(layers: Sequence[str], p: Words) -> str:
    eps, rms, new = p.get("eps"), p.get("grad_rms"), p.get("suggested")
    scale = f"RMS {rms:.3g}, epsilon {eps:.3g}" if rms is not None and eps is not None \
        else "epsilon"
    return (f"Lower Adam's epsilon below the gradient scale of {names(layers)} ({scale}; "
            f"Wortsman et al. 2023, Sec. 3.4; Keras's default is 1e-7): "
            f"keras.optimizers.AdamW(..., epsilon="
            f"{number(new) if new is not None else 'a smaller value'}).")


def update_ratio(layers: Sequence[str], p: Words) -> str:
    return (f"{update_state(layers, p)}lower the learning rate (keras.optimizers.AdamW("
            f"learning_rate=...)), or lengthen the warm-up of its schedule; updates this "
            f"large come before attention-logit growth and divergence (Wortsman et al. 2023).")


WORDING: dict[str, Callable[[Sequence[str], Words], str]] = {
    "he": he, "leaky-he": leaky_he, "lecun": lecun, "glorot-tanh": glorot_tanh,
    "replace-sigmoid": replace_sigmoid, "he-or-norm": he_or_norm,
    "variance-preserving": variance_preserving, "desaturate": desaturate, "revive": revive,
    "gate-recurrence": gate_recurrence, "orthogonal-recurrent": orthogonal_recurrent,
    "clip-global-norm": clip_global_norm, "clip-spikes": clip_spikes, "guard": guard,
    "release": release, "diverged": diverged, "nonfinite-forward": nonfinite_forward,
    "nonfinite-parameter": nonfinite_parameter, "probe-zero-head": probe_zero_head,
    "nonfinite-backward": nonfinite_backward, "nonfinite-loss": nonfinite_loss,
    "nonfinite-batch": nonfinite_batch, "replay-missed": replay_missed, "amp-float32": amp_float32,
    "qk-layernorm": qk_layernorm, "z-loss": z_loss, "adam-epsilon": adam_epsilon,
    "update-ratio": update_ratio,
}
