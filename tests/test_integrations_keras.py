"""Keras 3 on the torch backend: the article's model trains with model.fit under the callback.

KERAS_BACKEND is read once, when keras is first imported, so it is set here, at the top,
before anything in this process imports keras (no other test module imports it).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

keras = pytest.importorskip("keras", reason="needs the keras extra")
if keras.backend.backend() != "torch":
    pytest.skip(f"keras was imported with the {keras.backend.backend()!r} backend before this "
                f"module could choose torch", allow_module_level=True)

from conftest import no_hooks_left  # noqa: E402
from gradhealth import (
    LayerStats,  # noqa: E402
    load,  # noqa: E402
    probe,  # noqa: E402
    zoo,  # noqa: E402
)
from gradhealth.errors import ConfigError, DataNotFoundError  # noqa: E402
from gradhealth.integrations.keras import (
    GradHealthKerasCallback,
    keras_finding,
    keras_probe,
    keras_remedy,
    layer_view,
)
from gradhealth.lab.data import load_digits, load_fashion_mnist  # noqa: E402
from gradhealth.rules import activation, nonfinite, spike, through_time  # noqa: E402


def article_data():
    """A slice of Fashion-MNIST (the article's data), or scikit-learn's digits without it."""
    try:
        split = load_fashion_mnist(limit=320)
        return split.x_train[:, 0].numpy(), split.y_train.numpy(), (28, 28)
    except DataNotFoundError:
        split = load_digits(standardize=False)
        return (split.x_train[:320].reshape(-1, 8, 8).numpy(), split.y_train[:320].numpy(),
                (8, 8))


def article_model(shape) -> keras.Model:
    """Géron, ch. 11: BN, Dense + He init + LeakyReLU(0.2), softmax head, SGD(clipvalue=1)."""
    keras.backend.clear_session()  # layer names restart at "dense"
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(shape=shape),
        keras.layers.Flatten(),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(300, kernel_initializer="he_normal"),
        keras.layers.LeakyReLU(negative_slope=0.2),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(100, kernel_initializer="he_normal"),
        keras.layers.LeakyReLU(negative_slope=0.2),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(loss="sparse_categorical_crossentropy",
                  optimizer=keras.optimizers.SGD(learning_rate=1e-2, clipvalue=1.0),
                  metrics=["accuracy"])
    return model


def test_fit_records_the_gradients_backward_left_and_kerass_loss(tmp_path):
    x, y, shape = article_data()
    model = article_model(shape)
    params = [v.value for v in model.trainable_weights]
    owner = {id(v.value): v.path.split("/")[-2] for v in model.trainable_weights}
    # reference: every gradient as backward accumulates it, before the optimizer's
    # clipvalue and update
    captured: dict[int, torch.Tensor] = {}
    handles = [p.register_post_accumulate_grad_hook(
        lambda p: captured.__setitem__(id(p), p.grad.clone())) for p in params]
    norms, layer_norms, logged = [], [], []

    class Reference(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            grads = [captured[id(p)] for p in params]
            norms.append(torch.nn.utils.get_total_norm(grads).item())
            by_layer: dict[str, list[torch.Tensor]] = {}
            for p in params:
                by_layer.setdefault(owner[id(p)], []).append(captured[id(p)])
            layer_norms.append({k: torch.nn.utils.get_total_norm(g).item()
                                for k, g in by_layer.items()})
            logged.append(logs["loss"])

    health = GradHealthKerasCallback(store=tmp_path / "run.db", flush_every=4)
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False,
                        validation_data=(x[:64], y[:64]), callbacks=[Reference(), health])
    for h in handles:
        h.remove()

    run = load(tmp_path / "run.db")
    n = len(x) // 32
    np.testing.assert_array_equal(run.steps["step"], np.arange(n))
    np.testing.assert_allclose(run.steps["global_norm"], norms, rtol=1e-5)
    steps, layers, values = run.layer_stat("weight_grad_norm")
    assert layers == ["batch_normalization", "dense", "batch_normalization_1", "dense_1",
                      "batch_normalization_2", "dense_2"]
    for j, name in enumerate(layers):
        np.testing.assert_allclose(values[:, j], [r[name] for r in layer_norms], rtol=1e-5)
    # Keras logs the running mean of the epoch's batch losses; ours are the batch losses
    loss = run.steps["loss"]
    np.testing.assert_allclose(np.cumsum(loss) / np.arange(1, n + 1), logged, rtol=1e-5)
    np.testing.assert_allclose(loss.mean(), history.history["loss"][-1], rtol=1e-5)
    assert run.meta["model"] == "Sequential"

    assert "compute_loss" not in vars(model)  # the wrapper is gone
    assert no_hooks_left(model) and all(no_hooks_left(layer) for layer in model.layers)
    assert health.report().meta["framework"] == "keras"


def sigmoid_mlp(depth=10, width=32):
    """Keras's default init (glorot_uniform) under sigmoid: the gradient vanishes."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(width,))]
                             + [keras.layers.Dense(width, activation="sigmoid")
                                for _ in range(depth)] + [keras.layers.Dense(10)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  optimizer=keras.optimizers.SGD(learning_rate=0.01))
    return model


def test_sampled_steps_measure_activations_and_find_the_vanishing_layers(tmp_path):
    model = sigmoid_mlp()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((256, 32)).astype("float32"), rng.integers(0, 10, 256)
    # reference for step 0: the probe of the same batch on the same (not yet updated) weights
    probed = keras_probe(model, x[:32], y[:32])
    health = GradHealthKerasCallback(store=tmp_path / "run.db", flush_every=4, sample_every=3)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False, callbacks=[health])

    assert health.watch.journal.counts["samples"] == 3  # steps 0, 3, 6 of 8
    [f] = [f for f in health.findings if f.kind == "vanishing"]
    assert f.module == "dense" and "sigmoid" in f.remedy
    assert 'kernel_initializer="he_normal"' in f.remedy and "nn." not in f.remedy
    run = load(tmp_path / "run.db")
    steps, layers, values = run.layer_stat("grad_norm")
    np.testing.assert_array_equal(steps, [0, 3, 6])
    assert "dense.activation" in layers and "dense_9" in layers
    for stat in ("out_rms", "grad_norm", "saturation"):
        steps, layers, values = run.layer_stat(stat)
        for j, name in enumerate(layers):
            expected = getattr(probed.layers[name], stat)
            if expected is None:
                assert np.isnan(values[0, j]), (stat, name)
            else:
                np.testing.assert_allclose(values[0, j], expected, rtol=1e-5, err_msg=name)
    assert no_hooks_left(model) and all(no_hooks_left(layer) for layer in model.layers)
    assert all(not hasattr(vars(layer)["activation"], "__wrapped__") for layer in model.layers)
    assert health.report().layers["dense.activation"].activation == "sigmoid"


def test_sampling_can_be_turned_off(tmp_path):
    model = sigmoid_mlp(depth=3)
    x = np.zeros((64, 32), "float32")
    health = GradHealthKerasCallback(sample_every=None)
    model.fit(x, np.zeros(64, int), batch_size=32, epochs=1, verbose=0, callbacks=[health])
    assert health.watch.journal.counts["samples"] == 0 and health.report().layers == {}


def test_layer_view_shares_the_keras_parameters():
    model = article_model((8, 8))
    view = layer_view(model)
    assert [n for n, _ in view.named_children()][:2] == ["batch_normalization", "dense"]
    assert view.dense.kernel is model.get_layer("dense").kernel.value
    assert sum(p.numel() for p in view.parameters()) == sum(
        int(np.prod(v.shape)) for v in model.trainable_weights)


def rule_remedies() -> list:
    """Every kind of remedy the rules prescribe, as data: the init schemes, the training
    rules', and those the probe finds on sick torch models."""
    group = [LayerStats(name="dense", type="Dense", order=0, calls=1, leaf=True, n_params=1,
                        weight_var_fan_in=0.33)]
    remedies = [activation.init_remedy(kind, group, "shrink")
                for kind in ("relu", "leaky_relu", "selu", "tanh", "sigmoid", "gelu", None)]
    remedies += [spike.remedy(["global_norm"], 12, None), through_time.vanishing_remedy("rnn"),
                 through_time.exploding_remedy("rnn"), nonfinite.forward_remedy("dense"),
                 nonfinite.backward_remedy("dense")]
    for name in ("relu-exploding-20", "dead-relu-layer", "sigmoid-large-10"):
        model, inputs, targets = zoo.case(name).build()
        remedies += [f.prescription for f in probe(model, inputs, targets).findings]
    return remedies


def test_every_remedy_reads_in_keras_terms():
    translated = [keras_remedy(r) for r in rule_remedies()]
    for text in translated:
        for torch_word in ("torch.", "nn.", "gh.", "gradhealth.", "layer.weight"):
            assert torch_word not in text, f"{torch_word!r} left in: {text}"
    joined = "\n".join(translated)
    for keras_words in ('kernel_initializer="he_normal"', "keras.layers.BatchNormalization()",
                        "keras.layers.LeakyReLU(negative_slope=0.2)", "global_clipnorm=1.0",
                        "clipvalue", 'kernel_initializer="lecun_normal"',
                        "VarianceScaling(scale=2 / (1 + a**2)"):
        assert keras_words in joined


def test_keras_finding_changes_the_remedy_only():
    model, inputs, targets = zoo.case("relu-exploding-20").build()
    [f] = [f for f in probe(model, inputs, targets).findings if f.kind == "exploding"]
    k = keras_finding(f)
    assert (k.kind, k.module, k.evidence, k.message, k.modules, k.prescription) == (
        f.kind, f.module, f.evidence, f.message, f.modules, f.prescription)
    assert "Until then, clip the global gradient norm after backward: torch.nn.utils." in f.remedy
    assert "Until then, clip the global gradient norm: global_clipnorm=1.0 on the optimizer" in (
        k.remedy)
    with pytest.raises(ConfigError, match="pass the Finding"):
        keras_remedy(f.remedy)  # text is not rewritten any more: the data is worded


def test_another_backend_is_refused_with_the_fix(monkeypatch):
    import gradhealth.integrations.keras.callback as adapter

    monkeypatch.setattr(adapter, "_CONCRETE", {})  # as if keras were seen for the first time
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    with pytest.raises(ConfigError, match="KERAS_BACKEND=torch") as err:
        GradHealthKerasCallback()
    assert "'tensorflow'" in str(err.value)
