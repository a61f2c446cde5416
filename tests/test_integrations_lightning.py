"""Lightning: Trainer.fit runs its own loop; the callback's records against Lightning's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch", reason="needs the lightning extra")

from conftest import no_hooks_left  # noqa: E402
from gradhealth import load  # noqa: E402
from gradhealth.errors import ConfigError, StoreError  # noqa: E402
from gradhealth.integrations.lightning import GradHealthCallback  # noqa: E402

# torch 2.13 deprecates LeafSpec, which lightning/pytorch/utilities/_pytree.py still uses
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning")


class Classifier(L.LightningModule):
    """An MLP whose training_step calls its layers directly (never ``self(x)``)."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(),
                                  nn.Linear(32, 3))
        self.fail_at = fail_at
        self.raw_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and batch_idx == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        loss = nn.functional.cross_entropy(self.body(x), y)
        self.raw_losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class Reference(L.Callback):
    """What Lightning hands its callbacks, recorded without gradhealth (listed first)."""

    def __init__(self):
        self.norms: list[float] = []
        self.layer_norms: list[dict[str, float]] = []
        self.losses: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters()]
        self.norms.append(torch.nn.utils.get_total_norm(grads).item())
        self.layer_norms.append({
            name: torch.nn.utils.get_total_norm([p.grad for p in m.parameters()]).item()
            for name, m in pl_module.named_modules() if isinstance(m, nn.Linear)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())  # Lightning's: divided by accumulation


def data(n: int = 96) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long()),
                      batch_size=16)


def trainer(*callbacks, **kwargs) -> L.Trainer:
    options = dict(max_steps=6, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                   devices=1)
    options.update(kwargs)
    return L.Trainer(callbacks=list(callbacks), **options)


def test_fit_records_lightnings_gradients_before_clipping_and_its_loss(tmp_path):
    ref, health = Reference(), GradHealthCallback(store=tmp_path / "run.db", flush_every=4,
                                                  sample_every=3)
    module = Classifier()
    # clipping binds at 0.05: the records must be the pre-clip gradients Lightning passes on
    trainer(ref, health, gradient_clip_val=0.05).fit(module, data())

    run = load(tmp_path / "run.db")
    np.testing.assert_array_equal(run.steps["step"], np.arange(6))
    np.testing.assert_allclose(run.steps["global_norm"], ref.norms, rtol=1e-5)
    assert max(ref.norms) > 0.05
    np.testing.assert_allclose(run.steps["loss"], ref.losses, rtol=1e-6)
    steps, layers, values = run.layer_stat("weight_grad_norm")
    for j, name in enumerate(layers):
        np.testing.assert_allclose(values[:, j], [r[name] for r in ref.layer_norms], rtol=1e-5)
    # activation statistics on sampled steps 0 and 3, although training_step never calls self(x)
    steps, names, rms = run.layer_stat("out_rms")
    assert steps.tolist() == [0, 3] and "body.1" in names and np.isfinite(rms).all()

    assert health.watch.steps == 6 and health.report().meta["steps"] == 6
    assert no_hooks_left(module)


def test_accumulated_batches_make_one_record_with_the_mean_loss(tmp_path):
    ref, health = Reference(), GradHealthCallback(store=tmp_path / "run.db", sample_every=None)
    module = Classifier()
    trainer(ref, health, max_steps=3, accumulate_grad_batches=2).fit(module, data())

    run = load(tmp_path / "run.db")
    assert len(run.steps) == 3 and len(module.raw_losses) == 6
    np.testing.assert_allclose(run.steps["global_norm"], ref.norms, rtol=1e-5)
    pairs = np.reshape(module.raw_losses, (3, 2))
    np.testing.assert_allclose(run.steps["loss"], pairs.mean(axis=1), rtol=1e-6)
    # Lightning's own per-batch output is loss / accumulate_grad_batches; they sum to ours
    np.testing.assert_allclose(np.reshape(ref.losses, (3, 2)).sum(axis=1), pairs.mean(axis=1),
                               rtol=1e-6)


def test_an_exception_in_fit_closes_the_watch(tmp_path):
    health = GradHealthCallback(store=tmp_path / "run.db", flush_every=50)
    module = Classifier(fail_at=3)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(health).fit(module, data())
    assert no_hooks_left(module)
    assert load(tmp_path / "run.db").steps["step"].tolist() == [0, 1, 2]  # flushed on close


def test_refusals_come_before_training(tmp_path):
    (tmp_path / "old.db").write_bytes(b"")
    module = Classifier(fail_at=0)  # would raise if a training step ran
    with pytest.raises(StoreError, match="already exists"):
        trainer(GradHealthCallback(store=tmp_path / "old.db")).fit(module, data())
    with pytest.raises(ConfigError, match="flush_every"):
        GradHealthCallback(flush_every=0)


class MemoryLogger(L.loggers.Logger):
    def __init__(self):
        super().__init__()
        self.logged: list[tuple[int, dict]] = []

    name = "memory"
    version = 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def test_log_summary_sends_the_latest_numbers_to_the_loggers():
    logger = MemoryLogger()
    health = GradHealthCallback(flush_every=3, sample_every=None, log_summary=True)
    ref = Reference()
    trainer(ref, health, logger=logger, log_every_n_steps=1).fit(Classifier(), data())
    ours = [(step, m) for step, m in logger.logged if "gradhealth/global_norm" in m]
    assert [step for step, _ in ours] == [2, 5]
    np.testing.assert_allclose([m["gradhealth/global_norm"] for _, m in ours],
                               [ref.norms[2], ref.norms[5]], rtol=1e-5)
    assert all(m["gradhealth/findings"] >= 0 for _, m in ours)
