"""Hugging Face: ``Trainer.train`` on a tiny BERT built from a config (nothing downloaded;
needs ``pip install transformers accelerate``).

Nothing here knows about gradhealth; ``gradhealth run examples/train_hf.py`` watches the
model through the torch optimizer the Trainer steps, with the loss the model returns.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments


class Tokens(torch.utils.data.Dataset):
    """Random token sequences with a label that depends on them."""

    def __init__(self, n: int = 256, length: int = 16, vocab: int = 100):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)
        self.labels = self.ids[:, 0] % 3

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=32, num_labels=3)
    model = BertForSequenceClassification(config)
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(output_dir=out, max_steps=args.steps,
                                     per_device_train_batch_size=16, learning_rate=1e-3,
                                     logging_steps=max(1, args.steps // 4), report_to=[],
                                     save_strategy="no", use_cpu=True, disable_tqdm=True,
                                     dataloader_num_workers=0, log_level="error")
        result = Trainer(model=model, args=training, train_dataset=Tokens()).train()
    print(f"done: {result.global_step} steps, training loss {result.training_loss:.4f}")


if __name__ == "__main__":
    main()
