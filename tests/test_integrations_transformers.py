"""Hugging Face: Trainer.train runs its own loop; the callback's records against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="needs the transformers extra")
pytest.importorskip("accelerate", reason="needs the transformers extra")

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from conftest import no_hooks_left  # noqa: E402
from gradhealth import load  # noqa: E402
from gradhealth.clip import ClipNorm  # noqa: E402
from gradhealth.errors import ConfigError  # noqa: E402
from gradhealth.integrations.transformers import GradHealthTrainerCallback  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    """Random token sequences with a label that depends on them (nothing downloaded)."""

    def __init__(self, n: int = 64, length: int = 12, vocab: int = 60):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)
        self.labels = (self.ids[:, 0] % 3)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class Reference:
    """The gradient of each step as backward accumulates it, measured without gradhealth.

    Hooks on the parameters (``register_post_accumulate_grad_hook``) see every gradient
    before the Trainer or the watch clips it; without accumulation one backward is one step.
    """

    def __init__(self, model: nn.Module):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.grads: dict[int, torch.Tensor] = {}
        self.norms: list[float] = []
        self.handles = [p.register_post_accumulate_grad_hook(self._grab) for p in self.params]

    def _grab(self, p: torch.Tensor) -> None:
        self.grads[id(p)] = p.grad.detach().clone()
        if len(self.grads) == len(self.params):  # the step's backward is complete
            self.norms.append(torch.nn.utils.get_total_norm(list(self.grads.values())).item())
            self.grads.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=16,
                        num_labels=3)
    return BertForSequenceClassification(config)


def arguments(tmp_path, **kwargs) -> TrainingArguments:
    options = dict(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=8,
                   learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no",
                   use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                   log_level="error")
    options.update(kwargs)
    return TrainingArguments(**options)


def logged(trainer: Trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h and "train_runtime" not in h]


def assert_logged_loss(ours, trainer: Trainer) -> None:
    """Ours against the Trainer's logged loss: exact, or to its 4 decimals (transformers < 4.4x)."""
    theirs = logged(trainer, "loss")
    rounded = all(round(v, 4) == v for v in theirs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=5.01e-5 if rounded else 0.0)


def test_train_records_the_trainers_gradients_loss_and_learning_rate(tmp_path):
    model = tiny_bert()
    ref = Reference(model)
    health = GradHealthTrainerCallback(store=tmp_path / "run.db", flush_every=4, sample_every=5)
    # max_grad_norm=0: the Trainer does not clip, so the gradients backward left are what
    # the optimizer applies and what the watch sees in the optimizer's step hook
    trainer = Trainer(model=model, args=arguments(tmp_path, max_grad_norm=0.0),
                      train_dataset=Tokens(), callbacks=[health])
    trainer.train()
    ref.remove()

    run = load(tmp_path / "run.db")
    np.testing.assert_array_equal(run.steps["step"], np.arange(6))
    np.testing.assert_allclose(run.steps["global_norm"], ref.norms, rtol=1e-5)
    if logged(trainer, "grad_norm"):  # transformers >= 4.4x logs it even without clipping
        np.testing.assert_allclose(run.steps["global_norm"], logged(trainer, "grad_norm"),
                                   rtol=1e-5)
    # the loss is the model output's .loss, which the Trainer also logs at logging_steps=1
    assert_logged_loss(run.steps["loss"], trainer)
    # the learning rate each step used: the Trainer's default linear decay from 1e-3 over 6
    # steps (transformers >= 4.4x logs the same; older versions logged the next step's)
    np.testing.assert_allclose(run.steps["lr"], 1e-3 * (1 - np.arange(6) / 6), rtol=1e-12)
    assert "bert.encoder.layer.1.attention.self.query" in run.layers
    steps, _, rms = run.layer_stat("out_rms")
    assert steps.tolist() == [0, 5] and np.isfinite(rms).any()

    assert no_hooks_left(model)
    inner = trainer.optimizer.optimizer  # accelerate's wrapper holds the torch optimizer
    assert not inner._optimizer_step_pre_hooks and not inner._optimizer_step_post_hooks
    assert health.report().meta["steps"] == 6


class Regressor(nn.Module):
    """A plain torch module that returns its loss in a dict, as the Trainer accepts."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x, labels=None):
        out = self.net(x).squeeze(-1)
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


class Points(torch.utils.data.Dataset):
    def __init__(self, n: int = 64):
        g = torch.Generator().manual_seed(1)
        self.x = 3 * torch.randn(n, 4, generator=g)
        self.y = self.x.sum(dim=1) ** 2

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def test_clipping_moved_into_the_watch_records_the_pre_clip_norm(tmp_path):
    torch.manual_seed(0)
    model = Regressor()
    ref = Reference(model)
    health = GradHealthTrainerCallback(store=tmp_path / "run.db", clip=ClipNorm(1.0),
                                       sample_every=None)
    args = arguments(tmp_path, max_grad_norm=0.0, max_steps=4, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=Points(), callbacks=[health])
    trainer.train()
    ref.remove()

    run = load(tmp_path / "run.db")
    pre = ref.norms  # before anything clips
    assert len(pre) == 4 and min(pre) > 1.0  # the clip binds at every step
    if logged(trainer, "grad_norm"):  # the Trainer's own pre-clip norm, where it logs one
        np.testing.assert_allclose(logged(trainer, "grad_norm"), pre, rtol=1e-5)
    np.testing.assert_allclose(run.steps["global_norm"], pre, rtol=1e-5)
    np.testing.assert_allclose(run.steps["clip_pre_norm"], pre, rtol=1e-5)
    assert run.steps["clipped"].tolist() == [1.0] * 4
    assert_logged_loss(run.steps["loss"], trainer)
    assert no_hooks_left(model)


def test_refusals(tmp_path):
    health = GradHealthTrainerCallback(clip=ClipNorm(1.0))
    trainer = Trainer(model=Regressor(), args=arguments(tmp_path, remove_unused_columns=False),
                      train_dataset=Points(), callbacks=[health])
    with pytest.raises(ConfigError, match="clip twice"):
        trainer.train()  # max_grad_norm defaults to 1.0: the Trainer clips too
    with pytest.raises(ConfigError, match="clip="):
        GradHealthTrainerCallback(clip="yes")
