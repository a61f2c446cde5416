"""``keras_probe``: the probe's findings for Keras 3 models on the torch backend.

KERAS_BACKEND is read once, when keras is first imported: it is set here, at the top, as
in test_integrations_keras.py (whichever of the two runs first chooses torch).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

keras = pytest.importorskip("keras", reason="needs the keras extra")
if keras.backend.backend() != "torch":
    pytest.skip(f"keras was imported with the {keras.backend.backend()!r} backend before this "
                f"module could choose torch", allow_module_level=True)

from conftest import no_hooks_left  # noqa: E402
from gradhealth import probe  # noqa: E402
from gradhealth.errors import (  # noqa: E402
    ConfigError,
    ForwardError,
    InputMismatchError,
    UnsupportedModelError,
)
from gradhealth.integrations import keras_probe as lazily_exported  # noqa: E402
from gradhealth.integrations.keras import keras_probe  # noqa: E402
from gradhealth.measure.stats import QUANTILES  # noqa: E402

TORCH_WORDS = ("torch.", "nn.", "gh.", "gradhealth.", "layer.weight", "clip_grad_norm_",
               "kaiming", "xavier", "weight_hh")


def data(n=128, d=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype("float32"), rng.integers(0, classes, n)


def mlp(activation, init="glorot_uniform", depth=10, width=32, d=32, norm=False):
    """``depth`` hidden Dense layers (fused activation, or Dense, BN, Activation) + a head."""
    keras.backend.clear_session()  # layer names restart at "dense"
    keras.utils.set_random_seed(0)
    layers = [keras.Input(shape=(d,))]
    for _ in range(depth):
        if norm:
            layers += [keras.layers.Dense(width, kernel_initializer=init),
                       keras.layers.BatchNormalization(), keras.layers.Activation(activation)]
        else:
            layers.append(keras.layers.Dense(width, activation=activation,
                                             kernel_initializer=init))
    layers.append(keras.layers.Dense(10))
    model = keras.Sequential(layers)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  optimizer=keras.optimizers.SGD(learning_rate=0.1))
    return model


def torch_twin(model) -> nn.Sequential:
    """The same fused-sigmoid MLP as torch modules, on the same weights (kernel = W^T)."""
    modules: list[nn.Module] = []
    for layer in model.layers:
        linear = nn.Linear(*layer.kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(layer.kernel.value.T)
            linear.bias.copy_(layer.bias.value)
        modules.append(linear)
        if layer.activation.__name__ == "sigmoid":
            modules.append(nn.Sigmoid())
    return nn.Sequential(*modules)


def test_a_deep_sigmoid_mlp_vanishes_and_is_told_in_keras_terms():
    model = mlp("sigmoid")  # Keras's default init, glorot_uniform
    x, y = data()
    report = keras_probe(model, x, y)
    assert [f.kind for f in report.findings] == ["vanishing"]
    f = report.findings[0]
    names = {layer.name for layer in model.layers}
    assert f.module == "dense" and set(f.modules) <= names and len(f.modules) >= 3
    assert f.evidence["activation"] == "sigmoid" and f.severity == "critical"
    for word in TORCH_WORDS:
        assert word not in f.remedy, f.remedy
    assert 'replace activation="sigmoid" of `dense`' in f.remedy
    assert 'kernel_initializer="he_normal"' in f.remedy
    assert "keras.layers.BatchNormalization()" in f.remedy
    # the fused activation is its own entry, read by the rules as nn.Linear then nn.Sigmoid
    dense, act = report.layers["dense"], report.layers["dense.activation"]
    assert (dense.role, dense.type) == ("layer", "Dense")
    assert dense.activation_after == "dense.activation"
    assert (act.role, act.activation, act.inputs_from) == ("activation", "sigmoid", ("dense",))
    assert report.layers["dense_1"].inputs_from == ("dense.activation",)
    assert act.saturation is not None and report.meta["framework"] == "keras"

    # the torch twin on the same weights gets the same verdict from gh.probe
    twin = probe(torch_twin(model), torch.from_numpy(x), torch.from_numpy(y))
    [g] = twin.findings
    assert g.kind == "vanishing" and len(g.modules) == len(f.modules)
    for key in ("grad_ratio_input_to_output", "per_layer_factor", "fan_in_var"):
        assert f.evidence[key] == pytest.approx(g.evidence[key], rel=1e-4), key


def test_an_exploding_relu_mlp_is_prescribed_he_init_and_global_clipnorm_in_keras_terms():
    # fan_in * Var(W) = 6, three times He's 2: the gradient grows sqrt(3)x per ReLU layer
    model = mlp("relu", init=keras.initializers.RandomNormal(stddev=(6 / 32) ** 0.5, seed=0),
                depth=20)
    x, y = data()
    [f] = keras_probe(model, x, y).findings
    assert f.kind == "exploding" and f.evidence["activation"] == "relu"
    r = f.prescription
    assert r.scheme == "he" and r.layers == f.modules and r.layers[0] == "dense"
    assert r.params["fan_in_var"] == pytest.approx(6, rel=0.1)
    assert [(s.scheme, s.params["max_norm"]) for s in r.then] == [("clip-global-norm", 1.0)]
    for word in TORCH_WORDS:
        assert word not in f.remedy, f.remedy
    assert f.remedy.startswith("Re-initialise `dense`, `dense_1`")
    assert f'fan_in*Var(W) = {r.params["fan_in_var"]:.3g}' in f.remedy
    assert 'kernel_initializer="he_normal"' in f.remedy
    assert "Until then, clip the global gradient norm: global_clipnorm=1.0 on the optimizer" in (
        f.remedy)


@pytest.mark.parametrize("case", ["relu-he", "batchnorm-relu", "batchnorm-sigmoid"])
def test_healthy_keras_models_come_back_clean(case):
    model = {"relu-he": lambda: mlp("relu", init="he_normal"),
             "batchnorm-relu": lambda: mlp("relu", norm=True),
             "batchnorm-sigmoid": lambda: mlp("sigmoid", norm=True)}[case]()
    x, y = data()
    report = keras_probe(model, x, y)
    assert report.findings == [] and report.ok
    assert len([s for s in report.layers.values() if s.role == "layer"]) == 11


def reference_model():
    keras.backend.clear_session()
    keras.utils.set_random_seed(1)
    big = keras.initializers.RandomNormal(stddev=0.6, seed=1)
    model = keras.Sequential([
        keras.Input(shape=(12,)),
        keras.layers.Dense(16, activation="sigmoid", kernel_initializer=big,
                           bias_initializer=keras.initializers.RandomNormal(seed=2)),
        keras.layers.Dense(16, activation="relu",
                           bias_initializer=keras.initializers.Constant(-0.3)),
        keras.layers.Dense(4),
    ])
    model.compile(loss="mse")
    return model


def test_per_layer_numbers_equal_a_torch_autograd_reference():
    model = reference_model()
    rng = np.random.default_rng(3)
    x = (3 * rng.standard_normal((24, 12))).astype("float32")
    y = rng.standard_normal((24, 4)).astype("float32")
    report = keras_probe(model, x, y)

    k1, b1, k2, b2, k3, b3 = [v.value.detach().clone().requires_grad_(True)
                              for v in model.trainable_weights]
    xt = torch.from_numpy(x).requires_grad_(True)
    z1 = xt @ k1 + b1
    a1 = torch.sigmoid(z1)
    z2 = a1 @ k2 + b2
    a2 = torch.relu(z2)
    z3 = a2 @ k3 + b3
    loss = ((z3 - torch.from_numpy(y)) ** 2).mean()
    outs = {"dense": z1, "dense.activation": a1, "dense_1": z2, "dense_1.activation": a2,
            "dense_2": z3}
    weights = [k1, b1, k2, b2, k3, b3]
    grads = torch.autograd.grad(loss, list(outs.values()) + weights + [xt])
    rms = lambda t: t.pow(2).mean().sqrt().item()  # noqa: E731
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)  # noqa: E731
    for (name, out), grad in zip(outs.items(), grads):
        s = report.layers[name]
        close(s.out_mean, out.mean().item())
        close(s.out_std, out.std(unbiased=False).item())
        close(s.out_rms, rms(out))
        close(s.grad_norm, grad.norm().item())
        close(s.grad_rms, rms(grad))
        close(s.out_quantiles, torch.quantile(out.detach().flatten(), torch.tensor(QUANTILES)))
        close(s.grad_quantiles, torch.quantile(grad.flatten(), torch.tensor(QUANTILES)))
        assert s.nonfinite_out == s.nonfinite_grad == s.nonfinite_in == 0 and s.calls == 1
    wgrads = grads[len(outs):-1]
    for i, name in enumerate(["dense", "dense_1", "dense_2"]):
        s, k, b = report.layers[name], weights[2 * i], weights[2 * i + 1]
        close(s.weight_norm, torch.cat([k.flatten(), b]).norm().item())
        close(s.weight_grad_norm, torch.cat([wgrads[2 * i].flatten(), wgrads[2 * i + 1]]).norm()
              .item())
        close(s.weight_var_fan_in, k.var(unbiased=False).item() * k.shape[0])
        assert (s.fan_in, s.fan_out, s.n_params) == (k.shape[0], k.shape[1], k.numel() + b.numel())
    sat = ((a1 <= 0.02) | (a1 >= 0.98)).float().mean().item()
    dead = (a2 == 0).all(dim=0).float().mean().item()
    assert 0 < sat < 1 and 0 < dead < 1  # the reference exercises both statistics
    close(report.layers["dense.activation"].saturation, sat)
    close(report.layers["dense_1.activation"].dead_fraction, dead)
    close(report.meta["loss"], loss.item())
    close(report.meta["input_grad_rms"], rms(grads[-1]))
    assert report.meta["batch_size"] == 24 and report.layers[""].type == "Sequential"


def stateful_model():
    """Dropout (a seed generator), BatchNormalization (moving statistics), an activity
    regularizer (layer losses): everything a training-mode call writes."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(shape=(32,)),
        keras.layers.Dense(32, activation="tanh", activity_regularizer="l2"),
        keras.layers.Dropout(0.5),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(10),
    ])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  optimizer=keras.optimizers.SGD(learning_rate=0.1))
    return model


def keras_state(model):
    return {
        "values": [v.value.detach().clone() for v in model.variables],
        "grads": [None if v.value.grad is None else v.value.grad.clone()
                  for v in model.trainable_variables],
        "objects": [id(v.value) for v in model.variables],
        "losses": [list(layer._losses) for layer in model.layers],
        "activations": [vars(layer).get("activation") for layer in model.layers],
        "flags": [(layer.trainable, layer.built, layer._called) for layer in model.layers],
        "rng": torch.get_rng_state(),
    }


def assert_as_before(model, before):
    after = keras_state(model)
    assert all(torch.equal(a, b) for a, b in zip(before["values"], after["values"]))
    assert all((a is None and b is None) or torch.equal(a, b)
               for a, b in zip(before["grads"], after["grads"]))
    assert torch.equal(before["rng"], after["rng"])
    for key in ("objects", "flags"):
        assert before[key] == after[key], key
    assert all(len(a) == len(b) and all(p is q for p, q in zip(a, b))
               for a, b in zip(before["losses"], after["losses"]))
    assert all(a is b for a, b in zip(before["activations"], after["activations"]))
    assert no_hooks_left(model) and all(no_hooks_left(layer) for layer in model.layers)


def test_the_model_is_left_bit_identical_with_no_wrapper():
    model = stateful_model()
    x, y = data(n=64)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # .grad, moving statistics set
    expected = model(x[:8], training=False)
    before = keras_state(model)  # after that call: it replaced the layers' losses
    report = keras_probe(model, x, y)
    assert_as_before(model, before)
    assert torch.equal(model(x[:8], training=False), expected)
    # the probe did run in training mode: it saw batch statistics and dropout's zeros
    assert report.layers["dropout"].out_rms > report.layers["dense.activation"].out_rms
    assert report.meta["loss"] > 0


def test_a_graph_built_before_the_probe_can_still_be_backpropagated():
    """Issue 16, item 13: the moving statistics are restored without bumping their
    version counters (an inference-mode BatchNormalization saved them for backward)."""
    model = stateful_model()
    x, y = data(n=64)
    loss = model(torch.as_tensor(x[:8]), training=False).sum()
    versions = [v.value._version for v in model.variables]
    keras_probe(model, x, y)
    loss.backward()
    assert [v.value._version for v in model.variables] == versions


class Boom(keras.layers.Layer):
    """A layer that raises on demand, after a fused activation was wrapped."""

    armed = False

    def call(self, x):
        if self.armed:
            raise RuntimeError("boom: this layer refuses")
        return x


def test_a_model_that_raises_gets_a_clear_error_and_keeps_nothing():
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input(shape=(32,)),
                              keras.layers.Dense(8, activation="sigmoid"),
                              keras.layers.BatchNormalization(), Boom(name="boom"),
                              keras.layers.Dense(10)])
    model.compile(loss="sparse_categorical_crossentropy")
    model.layers[2].armed = True
    x, y = data(n=16)
    before = keras_state(model)
    with pytest.raises(ForwardError, match="boom: this layer refuses") as err:
        keras_probe(model, x, y)  # the model's own error: not read as a shape mismatch
    assert err.value.module == "boom" and "Keras layer 'boom' raised RuntimeError" in str(
        err.value)
    assert isinstance(err.value.__cause__, RuntimeError)
    assert_as_before(model, before)
    # a batch of the wrong shape is refused the same way, naming what was passed
    model.layers[2].armed = False
    with pytest.raises(InputMismatchError, match=r"shape=\(16, 5\)"):
        keras_probe(model, x[:, :5], y)
    assert_as_before(model, before)


def test_errors_teach_what_to_do():
    with pytest.raises(UnsupportedModelError, match="gradhealth.probe"):
        keras_probe(nn.Linear(2, 2), torch.zeros(1, 2))
    keras.backend.clear_session()
    unbuilt = keras.Sequential([keras.layers.Dense(4)])
    with pytest.raises(UnsupportedModelError, match="keras.Input"):
        keras_probe(unbuilt, np.zeros((2, 3), "float32"))
    model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(4)])
    with pytest.raises(ConfigError, match="loss="):
        keras_probe(model, np.zeros((2, 3), "float32"), np.zeros((2, 4), "float32"))
    report = keras_probe(model, np.ones((2, 3), "float32"), np.zeros((2, 4), "float32"),
                         loss="mse")
    assert report.meta["loss"] > 0 and lazily_exported is keras_probe


def test_keras_layers_speak_the_shared_vocabulary():
    """Every kind the Keras catalog produces is a ``gradhealth.measure.catalog`` kind, with
    the band and rectifier the catalog gives the torch twin."""
    from gradhealth.integrations.keras.catalog import entries
    from gradhealth.measure import catalog
    from gradhealth.measure.catalog import Band

    keras.backend.clear_session()
    names = sorted(n for n in dir(keras.activations)
                   if not n.startswith("_") and n not in ("get", "serialize", "deserialize"))
    layers = [keras.Input(shape=(4,))]
    layers += [keras.layers.Dense(4, activation=n, name=f"d_{n}") for n in names]
    layers += [keras.layers.ReLU(max_value=6.0, name="relu6"),
               keras.layers.ReLU(max_value=3.0, name="relu3"),
               keras.layers.ReLU(negative_slope=0.1, name="leaky"),
               keras.layers.LeakyReLU(name="leaky_relu"), keras.layers.PReLU(name="prelu"),
               keras.layers.ELU(name="elu"), keras.layers.Softmax(name="softmax"),
               keras.layers.Activation("hard_tanh", name="act_hard_tanh"),
               keras.layers.Activation("softmax", name="act_softmax")]
    found = {e.name: e for e in entries(keras.Sequential(layers))}
    for e in found.values():
        assert e.unit.activation is None or e.unit.activation in catalog.KINDS, e.name
        assert e.what.band == catalog.band(e.unit.activation) or e.name == "relu3", e.name
        assert e.what.rectifier == (e.unit.activation in catalog.RECTIFIERS), e.name
        assert e.unit.role == ("activation" if e.unit.activation else e.unit.role), e.name

    kind = {name: e.unit.activation for name, e in found.items()}
    expected = {"d_relu6": "relu6", "d_hard_sigmoid": "hardsigmoid", "d_hard_silu": "hardswish",
                "d_swish": "silu", "d_hard_tanh": "hardtanh", "d_celu": "celu",
                "d_softmax": None, "d_sigmoid": "sigmoid"}
    assert {n: kind[f"{n}.activation"] for n in expected} == expected
    assert "d_linear.activation" not in found  # Keras's default is no activation
    assert [kind[n] for n in ("relu6", "relu3", "leaky", "leaky_relu", "prelu", "elu",
                              "softmax", "act_hard_tanh", "act_softmax")] == [
        "relu6", "relu", "leaky_relu", "leaky_relu", "prelu", "elu", None, "hardtanh", None]
    assert found["relu3"].what.band == Band(None, 3.0)
    assert found["relu6"].what.band == catalog.saturation_band(nn.ReLU6()) == Band(None, 6.0)
    assert found["act_hard_tanh"].what.band == catalog.saturation_band(nn.Hardtanh())
    assert found["d_hard_sigmoid.activation"].what.band == catalog.saturation_band(
        nn.Hardsigmoid())
    assert (found["softmax"].unit.role, found["d_softmax.activation"].unit.role) == (
        "other", "other")


def test_keras_fans_follow_keras_kernels_and_the_weight_reads_as_torchs():
    from gradhealth.integrations.keras.catalog import entries

    keras.backend.clear_session()
    model = keras.Sequential([keras.Input(shape=(12, 12, 3)), keras.layers.Conv2D(8, 3),
                              keras.layers.Flatten(), keras.layers.Dense(5)])
    found = {e.name: e.unit for e in entries(model)}
    conv, dense = found["conv2d"], found["dense"]
    # Keras kernels are (..., in, units): fan_in = 3*3*3, fan_out = 8*3*3 (its initializers')
    assert (conv.fans, dense.fans) == ((27, 72), (800, 5))
    assert conv.weight.shape == (8, 3, 3, 3) and dense.weight.shape == (5, 800)
    assert conv.weight.data_ptr() == model.layers[0].kernel.value.data_ptr()  # a view
    assert found["flatten"].pass_through and conv.feeds and not found["flatten"].feeds


def test_read_only_numpy_arrays_are_probed_without_a_warning():
    """Issue 17: np.frombuffer gives a read-only array; model.fit takes it silently, and so
    must keras_probe (pytest turns warnings into errors)."""
    model = mlp("relu", init="he_normal")
    x, y = data()
    x_ro = np.frombuffer(x.tobytes(), dtype=x.dtype).reshape(x.shape)
    y_ro = np.frombuffer(y.tobytes(), dtype=y.dtype).reshape(y.shape)
    assert not x_ro.flags.writeable and not y_ro.flags.writeable
    report = keras_probe(model, x_ro, y_ro)
    assert report.ok and x_ro.tobytes() == x.tobytes()
