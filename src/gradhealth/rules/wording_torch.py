"""Each remedy scheme (``rules/remedy.py``) worded for PyTorch: ``torch.nn.init``, ``nn``
modules, ``clip_grad_norm_``, gradhealth's guard and clippers.

Target scales (fan_in * Var(W)) from docs/science.md: He 2 for ReLU (He et al. 2015,
Eq. 10), 2/(1+a^2) for Leaky ReLU/PReLU with slope a, LeCun 1 for SELU (Klambauer et al.
2017), Glorot 2*fan_in/(fan_in+fan_out) times gain^2 for tanh (Glorot & Bengio 2010,
Eq. 16; gain 5/3 from ``torch.nn.init.calculate_gain``).
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

NORM = "nn.BatchNorm1d / nn.LayerNorm"
GAINS = ("tanh", "sigmoid")
"""Saturating activations ``torch.nn.init.calculate_gain`` knows."""


def he(layers: Sequence[str], p: Words) -> str:
    return (f"Re-initialise {names(layers)} with He init{measured(p)}, target 2: "
            f"torch.nn.init.kaiming_normal_(layer.weight, mode='fan_in', "
            f"nonlinearity='relu') and zero biases.")


def leaky_he(layers: Sequence[str], p: Words) -> str:
    a, target = p.get("slope"), leaky_scale(p)
    slope = "a" if a is None else f"a = {a:g}"
    return (f"Re-initialise {names(layers)} with He init for the negative slope {slope}"
            f"{measured(p)}, target 2/(1+a^2){'' if target is None else ' = ' + target}: "
            f"torch.nn.init.kaiming_normal_(layer.weight, a={'a' if a is None else f'{a:g}'}, "
            f"nonlinearity='leaky_relu').")


def lecun(layers: Sequence[str], p: Words) -> str:
    return (f"Re-initialise {names(layers)} with LeCun normal init{measured(p)}, target 1 "
            f"(SELU self-normalises only with it): torch.nn.init.kaiming_normal_("
            f"layer.weight, nonlinearity='linear').")


def glorot_tanh(layers: Sequence[str], p: Words) -> str:
    act = p.get("activation") or "tanh"
    return (f"Re-initialise {names(layers)} with Glorot (Xavier) init and the tanh gain"
            f"{measured(p)}: torch.nn.init.xavier_normal_(layer.weight, "
            f"gain=torch.nn.init.calculate_gain('tanh')), or orthogonal init; if the net "
            f"is very deep, insert nn.BatchNorm1d after each of these layers, before {act}.")


def replace_sigmoid(layers: Sequence[str], p: Words) -> str:
    act = p.get("activation") or "sigmoid"
    module = "nn.Hardsigmoid" if act == "hardsigmoid" else "nn.Sigmoid"
    return (f"Sigmoid units {p.get('direction', 'shrink')} the gradient whatever the init "
            f"(derivative at most 1/4, Glorot & Bengio 2010): replace {module} after "
            f"{names(layers)} with nn.ReLU and He init (torch.nn.init.kaiming_normal_(w, "
            f"nonlinearity='relu')), or insert nn.BatchNorm1d after each of these layers, "
            f"before the {act} (Ioffe & Szegedy 2015).")


def he_or_norm(layers: Sequence[str], p: Words) -> str:
    act = p.get("activation") or "rectifier"
    return (f"Re-initialise {names(layers)}, followed by {act}, with He init{measured(p)} "
            f"(torch.nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')) or insert "
            f"a normalisation layer ({NORM}) after each of them.")


def variance_preserving(layers: Sequence[str], p: Words) -> str:
    act = p.get("activation")
    what = f"the {act}" if act else "the activation"
    return (f"Use the variance-preserving init for {what} after {names(layers)}"
            f"{measured(p)}: He for ReLU-like, Glorot for tanh, LeCun for SELU "
            f"(torch.nn.init), or insert a normalisation layer ({NORM}) after each of them.")


def desaturate(layers: Sequence[str], p: Words) -> str:
    act = p.get("activation") or "activation"
    where = (f"the layers feeding them, {names(layers)}{measured(p, 'median')},"
             if layers else "the layers feeding them")
    gain = (f"gain=torch.nn.init.calculate_gain('{act}')" if act in GAINS
            else f"the {act}'s gain")
    return (f"Pre-activations are too large: re-initialise {where} with Glorot init "
            f"(torch.nn.init.xavier_normal_(layer.weight, {gain})), or insert nn.BatchNorm1d "
            f"before each saturated {act} (Ioffe & Szegedy 2015), or switch to a "
            f"non-saturating activation (nn.ReLU / nn.ELU with He init).")


def revive(layers: Sequence[str], p: Words) -> str:
    return (f"Revive the units: re-initialise {names(layers, 'the layer feeding it')} with "
            f"He init and zero bias (a large negative bias or a bad learning-rate step kills "
            f"ReLUs), or replace `{p.get('activation_layer')}` with "
            f"nn.LeakyReLU({p.get('slope', 0.2):g}) / nn.ELU / nn.PReLU, which pass a "
            f"gradient for negative inputs (Xu et al. 2015).")


def gate_recurrence(layers: Sequence[str], p: Words) -> str:
    b, c = p.get("forget_bias", 1.0), p.get("cell")
    over = f" over {p['steps']} steps" if p.get("steps") else ""
    bias = (f"set the forget-gate bias to {b:g} (bias_ih[H:2H] = {b:g}, bias_hh[H:2H] = 0: "
            f"sigmoid({b:g})^T stays above the vanishing threshold{over}; Jozefowicz et al. "
            f"2015 use 1 for short sequences)")
    rest = ("initialise weight_hh orthogonally (torch.nn.init.orthogonal_ on each gate's "
            "block); or shorten the back-propagation window (truncated BPTT).")
    if c == "lstm":
        return f"Keep the cell's gradient alive through time: in {names(layers)} {bias}; {rest}"
    if c == "gru":
        return f"The gates of {names(layers)} do not carry the gradient{over}: {rest}"
    which = "" if c == "rnn" else "if it is a plain nn.RNN, "
    return (f"Gates keep the gradient alive through time: {which}replace {names(layers)} "
            f"with nn.LSTM or nn.GRU (for an LSTM {bias}); {rest}")


def orthogonal_recurrent(layers: Sequence[str], p: Words) -> str:
    g = p.get("gain", 1.0)
    return (f"Initialise weight_hh of {names(layers)} orthogonally with gain <= {g:g} "
            f"(torch.nn.init.orthogonal_(w, gain={number(g)}) on each gate's block) so the "
            f"recurrent spectral radius starts at {g:g}.")


def clip_global_norm(layers: Sequence[str], p: Words) -> str:
    c = number(p.get("max_norm", 1.0))
    code = f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={c})"
    if p.get("stopgap"):
        return (f"Until then, clip the global gradient norm after backward: {code} "
                f"(or gradhealth.ClipNorm({c})).")
    return (f"Clip the global gradient norm after backward (Pascanu et al. 2013, Sec. 3.2): "
            f"{code}, or gradhealth.ClipNorm({c}).")


def clip_spikes(layers: Sequence[str], p: Words) -> str:
    return (f"A single step moved the {series(p)} far above its recent level. Clip the "
            f"global gradient norm after backward so one batch cannot move the weights far: "
            f"gradhealth.ZClip() adapts to the running level, gradhealth.ClipNorm(c) with c "
            f"at 0.5-10x the typical norm{clip_range(p)} (Pascanu et al. 2013, Sec. 3.2); if "
            f"spikes recur, lower the learning rate or lengthen its warm-up, and look at the "
            f"batch of step {p.get('step')} for corrupt data.")


def guard(layers: Sequence[str], p: Words) -> str:
    if p.get("on") == "spike":
        return ("Guard the step: gh.guard(...) skips a step that spikes, without touching "
                "the weights.")
    if p.get("names_producer"):
        return ("Watch with guard=True (or use gh.guard) to skip steps with non-finite "
                "gradients before they touch the weights and to name the module that "
                "produced the first non-finite value.")
    return ("During training, gh.guard(...) (or watch with guard=True) skips a step with "
            "non-finite gradients instead of writing NaN into the weights.")


def release(layers: Sequence[str], p: Words) -> str:
    return (f"The gradient norm stayed far above its former level for {p.get('skips')} "
            f"steps in a row up to step {p.get('step')}: the level changed (a learning-rate "
            f"change, a new data mix) rather than spiked. The guard lets steps through again;"
            f" if training then diverges, lower the learning rate or clip "
            f"(gradhealth.ZClip()).")


def diverged(layers: Sequence[str], p: Words) -> str:
    return (f"The loss left its level at step {p.get('step')} and has not come back: "
            f"training on will not bring it back. Restart from a checkpoint saved before "
            f"step {p.get('step')} with a lower learning rate (3-10x) or a longer warm-up, "
            f"and clip the global gradient norm after backward (gradhealth.ZClip(), or "
            f"torch.nn.utils.clip_grad_norm_ at 0.5-10x the typical norm).")


def nonfinite_forward(layers: Sequence[str], p: Words) -> str:
    return (f"Find the operation in {names(layers, 'the model')} that turns finite inputs "
            f"into NaN/Inf{operation(p)} (log or sqrt of a non-positive value, division by "
            f"~0, exp overflow, fp16 overflow past 65504); guard it (clamp the argument, add "
            f"an epsilon, compute in float32).")


def probe_zero_head(layers: Sequence[str], p: Words) -> str:
    if p.get("measured"):
        return (f"Nothing to change ({names(layers)} is zero by design; the first optimizer "
                f"step makes it non-zero). The findings on the body come from a pass with a "
                f"random head in its place; the model was left as it was.")
    return (f"Nothing to change for training ({names(layers)} is zero by design; the first "
            f"optimizer step makes it non-zero). To judge the body, probe after one "
            f"optimizer step, or with {names(layers)} temporarily re-initialised at random "
            f"(torch.nn.init.normal_(head.weight, std=head.in_features ** -0.5) on a copy "
            f"of the model).")


def nonfinite_parameter(layers: Sequence[str], p: Words) -> str:
    held = f"{p['count']} NaN/Inf value(s)" if p.get("count") else "NaN/Inf"
    return (f"The parameters of {names(layers)} hold {held}: no operation made them, an "
            f"earlier step wrote them. Restore "
            f"them from a checkpoint taken before, and find the step that wrote them: "
            f"train under gh.watch(model, optimizer, guard=True) (or gh.guard), which "
            f"skips a step with non-finite gradients and names the module that produced "
            f"them, so the weights stay finite.")


def nonfinite_backward(layers: Sequence[str], p: Words) -> str:
    return (f"The backward pass of {names(layers, 'the loss function')} turns a finite "
            f"gradient into NaN/Inf{operation(p)} (sqrt/pow/norm at 0, division by a tiny "
            f"value, overflow of a large gradient): add an epsilon inside the operation, "
            f"clamp its input, or "
            f"clip the gradient norm before the step.")


def nonfinite_loss(layers: Sequence[str], p: Words) -> str:
    return ("The model's outputs are finite but the loss is not: check the targets and the "
            "loss (log of 0, probabilities outside [0, 1]); use F.cross_entropy on logits "
            "rather than log(softmax).")


def nonfinite_batch(layers: Sequence[str], p: Words) -> str:
    part, arguments = p.get("part") or "inputs", p.get("arguments") or "the batch"
    return (f"The {part} themselves hold NaN/Inf ({arguments}): the model only passed them "
            f"on. Check the data pipeline (missing values, a normalisation dividing by a "
            f"zero standard deviation, a corrupt file); repair or drop such examples "
            f"(torch.nan_to_num, or a torch.isfinite(x).all() check in the Dataset).")


def replay_missed(layers: Sequence[str], p: Words) -> str:
    return (f"The replay could not reproduce the NaN: the batch was changed in place after "
            f"the forward, the model draws randomness the RNG state does not cover, or the "
            f"NaN comes from the loss; run gh.probe(model, batch, targets) on the batch of "
            f"step {p.get('step')}.")


def amp_float32(layers: Sequence[str], p: Words) -> str:
    return (f"GradScaler keeps finding Inf/NaN even with the loss scaled down to "
            f"{p.get('loss_scale'):g}, below 1: the model itself overflows or produces NaN. "
            f"Run gh.probe on a batch, or watch with guard=True to name the module that "
            f"produces it; compute the offending operation in float32 "
            f"(autocast(enabled=False) around it).")


def qk_layernorm(layers: Sequence[str], p: Words) -> str:
    text = (f"{attention_state(layers, p)}put LayerNorm on each head's queries and keys "
            f"(qk-layernorm, Dehghani et al. 2023): gradhealth.fixes.qk_layernorm_(model) "
            f"does it for nn.MultiheadAttention and Hugging Face GPT-2, Llama-style and BERT "
            f"attention (then create the optimizer, for the new norms' parameters); in your "
            f"own attention apply nn.LayerNorm(head_dim) to q and k before q @ k^T. Or lower "
            f"the peak learning rate, or lengthen its warm-up (Wortsman et al. 2023).")
    return text[0].upper() + text[1:]


def z_loss(layers: Sequence[str], p: Words) -> str:
    coef, log_z = number(p.get("coef", 1e-4)), p.get("log_z")
    drift = f" (it averages {log_z:.3g} at {names(layers)})" if log_z is not None else ""
    return (f"Hold log Z of the output near 0{drift} with the z-loss (Chowdhery et al. 2022): "
            f"loss = loss + gradhealth.z_loss(logits, coef={coef}), i.e. {coef} * "
            f"torch.logsumexp(logits, -1).square().mean().")


def adam_epsilon(layers: Sequence[str], p: Words) -> str:
    eps, rms, new = p.get("eps"), p.get("grad_rms"), p.get("suggested")
    scale = f"RMS {rms:.3g}, eps {eps:.3g}" if rms is not None and eps is not None else "eps"
    return (f"Lower Adam's eps below the gradient scale of {names(layers)} ({scale}; Wortsman "
            f"et al. 2023, Sec. 3.4): torch.optim.AdamW(params, ..., eps="
            f"{number(new) if new is not None else 'a smaller value'}), or give those layers "
            f"their own param group with it.")


def update_ratio(layers: Sequence[str], p: Words) -> str:
    return (f"{update_state(layers, p)}lower the learning rate (or theirs alone: a param "
            f"group with a smaller lr), or lengthen the warm-up; updates this large come "
            f"before attention-logit growth and divergence (Wortsman et al. 2023).")


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
