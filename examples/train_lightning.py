"""Lightning: ``Trainer.fit`` on a small classifier (needs ``pip install lightning``).

Nothing here knows about gradhealth; ``gradhealth run examples/train_lightning.py`` watches
the LightningModule through the optimizer Lightning steps.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning.pytorch as L
except ImportError:  # an older install
    import pytorch_lightning as L  # type: ignore[no-redef]


class Classifier(L.LightningModule):
    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                                  nn.Linear(64, 4))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--progress", action="store_true", help="Lightning's progress bar")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = (x[:, :4].argmax(dim=1))
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=args.progress)
    trainer.fit(Classifier(), loader)
    print(f"done: {trainer.global_step} steps")


if __name__ == "__main__":
    main()
