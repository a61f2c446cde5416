"""Remedies as data: every scheme worded for PyTorch and for Keras, from the same data."""

import ast
import math
from pathlib import Path

import pytest

import gradhealth
from gradhealth import probe, zoo
from gradhealth.errors import ConfigError
from gradhealth.integrations.keras import keras_finding, keras_remedy
from gradhealth.rules import amp, guard, nonfinite, producer, spike, through_time
from gradhealth.rules.finding import Finding, from_record, worded
from gradhealth.rules.remedy import FRAMEWORKS, SCHEMES, WORDINGS, Remedy, render

TORCH_WORDS = ("torch.", "nn.", "F.", "clip_grad_norm_", "kaiming", "xavier", "weight_hh",
               "gh.", "gradhealth.", "layer.weight", "GradScaler", "autocast")
KERAS_WORDS = ("keras", "kernel_initializer", "global_clipnorm", "clipnorm", "he_normal",
               "lecun_normal", "BatchNormalization", "VarianceScaling", "TerminateOnNaN",
               "from_logits", "SimpleRNN", "unit_forget_bias", "dtype=")

EXAMPLES = [
    Remedy("he", ("l0", "l1"), {"fan_in_var": 0.333}),
    Remedy("leaky-he", ("l0",), {"fan_in_var": 0.512, "slope": 0.2}),
    Remedy("leaky-he", ("l0",), {"fan_in_var": 0.512}),  # the slope unknown
    Remedy("lecun", ("enc.0", "enc.2"), {"fan_in_var": 2.75}),
    Remedy("glorot-tanh", ("l0",), {"fan_in_var": 0.41, "activation": "softsign"}),
    Remedy("replace-sigmoid", ("l0", "l1", "l2"), {"activation": "sigmoid",
                                                   "direction": "shrink"}),
    Remedy("he-or-norm", ("l0",), {"fan_in_var": 0.333, "activation": "gelu"}),
    Remedy("variance-preserving", ("l0",), {"fan_in_var": 0.7, "activation": "logsigmoid"}),
    Remedy("desaturate", ("l0", "l2"), {"fan_in_var": 12.5, "activation": "tanh"}),
    Remedy("revive", ("fc1",), {"activation_layer": "act1", "slope": 0.3}),
    Remedy("gate-recurrence", ("rnn",), {"forget_bias": 1.0}),
    Remedy("gate-recurrence", ("lstm",), {"forget_bias": 4.2, "cell": "lstm", "steps": 300}),
    Remedy("gate-recurrence", ("gru",), {"cell": "gru", "steps": 20}),
    Remedy("nonfinite-parameter", ("fc",), {"count": 3}),
    Remedy("probe-zero-head", ("heads.head",)),
    Remedy("probe-zero-head", ("heads.head",), {"measured": True}),
    Remedy("orthogonal-recurrent", ("rnn",), {"gain": 0.9}),
    Remedy("clip-global-norm", (), {"max_norm": 0.5, "stopgap": True}),
    Remedy("clip-global-norm", (), {"max_norm": 2.5, "stopgap": False}),
    Remedy("clip-spikes", (), {"series": ("global_norm", "loss"), "step": 123,
                               "typical_norm": 2.5}),
    Remedy("guard", (), {"on": "spike", "names_producer": False}),
    Remedy("guard", (), {"on": "non-finite", "names_producer": True}),
    Remedy("release", (), {"step": 40, "skips": 11}),
    Remedy("diverged", (), {"step": 231}),
    Remedy("nonfinite-forward", ("enc.attn",)),
    Remedy("nonfinite-forward", ("enc",), {"operation": "log", "where": "model.py:42"}),
    Remedy("nonfinite-backward", ("norm",)),
    Remedy("nonfinite-loss"),
    Remedy("nonfinite-batch", (), {"part": "inputs", "arguments": "`x`"}),
    Remedy("nonfinite-batch", (), {"part": "targets", "arguments": "`targets`"}),
    Remedy("replay-missed", (), {"step": 77}),
    Remedy("amp-float32", (), {"loss_scale": 0.25}),
    Remedy("qk-layernorm", ("blocks.0.attn",), {"logit_max": 312.5, "entropy_fraction": 0.04}),
    Remedy("z-loss", ("head",), {"coef": 1e-4, "log_z": -97.3}),
    Remedy("adam-epsilon", ("blocks.1.mlp.0",), {"eps": 1e-8, "grad_rms": 3.2e-9,
                                                 "suggested": 1e-12}),
    Remedy("update-ratio", ("blocks.0.ln1", "head"), {"ratio": 0.31, "threshold": 0.1,
                                                      "median": 0.021}),
]


def test_every_scheme_has_both_wordings_and_an_example():
    assert set(FRAMEWORKS) == {"torch", "keras"}
    for framework, wording in WORDINGS.items():
        assert set(wording) == set(SCHEMES), framework
    assert {r.scheme for r in EXAMPLES} == set(SCHEMES)


def mentions(remedy: Remedy) -> list[str]:
    """What both wordings must say: each layer, and each number or name among the params."""
    out = [f"`{name}`" for name in remedy.layers]
    for value in remedy.params.values():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            out.append(f"{value:.3g}")
        elif isinstance(value, str):
            out.append(value)
    return out


@pytest.mark.parametrize("remedy", EXAMPLES, ids=lambda r: r.scheme)
def test_each_scheme_is_worded_in_each_framework_own_terms(remedy):
    torch_text, keras_text = render(remedy, "torch"), render(remedy, "keras")
    assert torch_text == render(remedy) and torch_text != keras_text
    for text in (torch_text, keras_text):
        assert text.endswith(".") and text[0].isupper() and "  " not in text
        assert "None" not in text and "{" not in text
        for needed in mentions(remedy):
            assert needed in text, f"{needed!r} missing from: {text}"
    for word in TORCH_WORDS:
        assert word not in keras_text, f"{word!r} in Keras wording: {keras_text}"
    for word in KERAS_WORDS:
        assert word not in torch_text, f"{word!r} in PyTorch wording: {torch_text}"


def test_parameters_reach_the_code_each_framework_runs():
    leaky = Remedy("leaky-he", ("l0",), {"slope": 0.2})
    assert "a=0.2, nonlinearity='leaky_relu'" in render(leaky)
    assert "VarianceScaling(scale=1.923" in render(leaky, "keras")  # 2 / (1 + 0.2**2)
    clip = Remedy("clip-global-norm", (), {"max_norm": 0.5, "stopgap": True})
    assert "clip_grad_norm_(model.parameters(), max_norm=0.5)" in render(clip)
    keras_clip = render(clip, "keras")
    assert keras_clip.startswith("Until then, clip the global gradient norm: "
                                 "global_clipnorm=0.5 on the optimizer")
    # global_clipnorm, never clipnorm= or clipvalue= as the advice, and the reason why
    assert "not clipnorm=, which clips each variable separately" in keras_clip
    assert "changes the gradient's direction" in keras_clip
    spikes = render(Remedy("clip-spikes", (), {"step": 9, "typical_norm": 2.0}))
    assert "c from 1 to 20" in spikes and "step 9" in spikes
    sigmoid = Remedy("replace-sigmoid", ("l0",), {"activation": "hardsigmoid"})
    assert 'activation="hard_sigmoid"' in render(sigmoid, "keras")
    assert "nn.Hardsigmoid" in render(sigmoid)


def test_keras_words_what_the_guard_and_precision_do_there():
    nan = render(nonfinite.forward_remedy("enc"), "keras")
    assert "keras.callbacks.TerminateOnNaN()" in nan
    assert "guard watches torch optimizers only" in nan
    assert "gh.guard(...)" in render(nonfinite.forward_remedy("enc"))
    assert "SparseCategoricalCrossentropy(from_logits=True)" in render(
        Remedy("nonfinite-loss"), "keras")
    assert 'dtype="float32" on that layer' in render(Remedy("amp-float32", (), {
        "loss_scale": 0.5}), "keras")
    assert "unit_forget_bias=True" in render(through_time.vanishing_remedy("rnn"), "keras")


def test_steps_are_worded_in_order_after_the_first():
    r = through_time.exploding_remedy("rnn")
    assert [s.scheme for s in (r, *r.then)] == ["clip-global-norm", "orthogonal-recurrent"]
    text = render(r)
    assert text.index("clip_grad_norm_") < text.index("orthogonal_(w, gain=1.0)")
    assert "`rnn`" in text


def test_bad_remedies_and_frameworks_are_refused():
    with pytest.raises(ValueError, match="unknown remedy scheme 'magic'"):
        Remedy("magic")
    with pytest.raises(ValueError, match="not \\['gain'\\]"):
        Remedy("he", ("l0",), {"gain": 2.0})
    with pytest.raises(ConfigError, match="'jax'"):
        render(Remedy("nonfinite-loss"), "jax")


def finding(remedy: Remedy) -> Finding:
    return Finding(kind="exploding", module="l0", severity="warning", evidence={"r": 1e3},
                   message="m", modules=("l0",), prescription=remedy)


def test_a_finding_carries_the_data_and_its_torch_wording():
    r = Remedy("he", ("l0",), {"fan_in_var": math.nan})
    f = finding(r)
    assert f.remedy == render(r) and "kaiming_normal_" in f.remedy
    d = f.to_dict()
    assert list(d)[:7] == ["kind", "module", "severity", "evidence", "remedy", "message",
                           "modules"]
    assert d["prescription"] == {"scheme": "he", "layers": ["l0"],
                                 "params": {"fan_in_var": "nan"}, "then": []}
    back = from_record(*(d[k] for k in list(d)[:7]))
    assert back.prescription is None and back.remedy == f.remedy
    assert worded(back, "keras") is back  # no data: nothing to word it from


def test_keras_finding_rewords_from_the_data_and_changes_nothing_else():
    f = finding(Remedy("he", ("l0",), {"fan_in_var": 4.5}, then=(
        Remedy("clip-global-norm", (), {"max_norm": 1.0, "stopgap": True}),)))
    k = keras_finding(f)
    assert (k.kind, k.module, k.evidence, k.message, k.modules, k.prescription) == (
        f.kind, f.module, f.evidence, f.message, f.modules, f.prescription)
    assert 'kernel_initializer="he_normal"' in k.remedy and "4.5" in k.remedy
    assert "Until then, clip the global gradient norm: global_clipnorm=1.0" in k.remedy
    assert keras_remedy(f) == k.remedy == keras_remedy(f.prescription)
    assert worded(k, "torch") == f
    with pytest.raises(ConfigError, match="pass the Finding"):
        keras_remedy(f.remedy)


def training_findings() -> list[Finding]:
    sp = spike.Spike("global_norm", 12, 50.0, 1.2, 0.1, 40.0)
    return [spike.finding([sp]), guard.released(3, 10), amp.divergence(3, 0.5),
            producer.unguarded(3, [math.nan], ["a"], 1),
            producer.from_weight_grads(5, [math.nan], ["a"], {}, True),
            producer.from_weight_grads(5, [math.nan, 1.0], ["a", "b"], {}, False)]


@pytest.mark.parametrize("case", ["relu-exploding-20", "dead-relu-layer", "sigmoid-large-10",
                                  "rnn-exploding", "tanh-default-30"])
def test_every_rule_gives_its_remedy_as_data(case):
    model, inputs, targets = zoo.case(case).build()
    found = probe(model, inputs, targets).findings + training_findings()
    assert found
    for f in found:
        assert f.prescription is not None and f.remedy == render(f.prescription), f
        keras_text = keras_finding(f).remedy
        assert not any(word in keras_text for word in TORCH_WORDS), keras_text


def calls_to(tree: ast.AST, name: str) -> list[int]:
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == name]


def test_findings_and_remedies_are_built_in_rules_only():
    package = Path(gradhealth.__file__).parent
    for path in package.rglob("*.py"):
        if path.parent.name == "rules":
            continue
        tree = ast.parse(path.read_text())
        for name in ("Finding", "Remedy"):
            assert not calls_to(tree, name), f"{path}: {name}(...) outside rules/"
    keras_remedies = (package / "integrations" / "keras" / "remedies.py").read_text()
    imported = {a.name for node in ast.walk(ast.parse(keras_remedies))
                if isinstance(node, ast.Import) for a in node.names}
    assert "re" not in imported and len(keras_remedies.splitlines()) < 60  # no text rewriting


def test_the_gate_remedy_fits_the_cell_and_the_sequence_length():
    """Issue 17: an LSTM was told to 'replace nn.RNN with nn.LSTM', and 'bias 1', which is
    not enough over 300 steps."""
    assert through_time.forget_bias(300) == 4.2  # sigmoid(4.2)^300 = 0.0115 >= 1e-2
    assert through_time.forget_bias(50) == 2.4
    assert through_time.forget_bias(5) == through_time.forget_bias(None) == 1.0
    lstm = render(through_time.vanishing_remedy("lstm", 300, "LSTM"), "torch")
    assert "nn.RNN" not in lstm and "forget-gate bias to 4.2" in lstm and "300 steps" in lstm
    assert "unit_forget_bias=False" in render(through_time.vanishing_remedy(
        "lstm", 300, "LSTM"), "keras")
    rnn = render(through_time.vanishing_remedy("rnn", 300, "RNN"), "torch")
    assert "replace `rnn` with nn.LSTM or nn.GRU" in rnn
    gru = render(through_time.vanishing_remedy("gru", 300, "GRU"), "torch")
    assert "nn.LSTM" not in gru and "forget" not in gru
