"""A small pre-LN transformer language model, and its training run under ``gh.watch``.

The model follows the recipe Wortsman et al. 2023 study (Sec. 2): pre-normalisation
blocks of causal self-attention (``nn.MultiheadAttention``) and a 4x GELU MLP, learned
positions, a final LayerNorm and an untied output layer. qk-layernorm is put in by
``gradhealth.fixes.qk_layernorm_``, the fix the attention_logit_growth finding prescribes.
The loop is theirs too: AdamW with beta2 0.95 and eps 1e-8, the global gradient norm
clipped at 1, a linear warm-up then cosine decay to 0, the z-loss 1e-4 when asked.
Every run is watched and stored; what the lab reports is read back from the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradhealth._watch import watch
from gradhealth.fixes.qk_norm import qk_layernorm_
from gradhealth.fixes.z_loss import z_loss
from gradhealth.store.reader import load

__all__ = ["Recipe", "RunResult", "TinyLM", "train_lm"]


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False, is_causal=True)[0]
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """Pre-LN decoder: ``layers`` blocks of width ``d`` with ``heads`` heads."""

    def __init__(self, vocab: int, seq: int, d: int, heads: int, layers: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.mask: torch.Tensor
        self.register_buffer("mask", torch.ones(seq, seq, dtype=torch.bool).triu(1),
                             persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        mask = self.mask[:t, :t]
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln_f(x))


@dataclass(frozen=True)
class Recipe:
    """One run's set-up (the variant: ``qk_norm``, ``z_loss``)."""

    lr: float
    steps: int
    batch: int
    d: int
    heads: int
    layers: int
    qk_norm: bool
    z_loss: bool
    warmup: float  # fraction of the steps
    sample_every: int  # the watch's
    seed: int


@dataclass
class RunResult:
    recipe: Recipe
    losses: np.ndarray  # the cross-entropy (no z-loss) at every step
    sampled: np.ndarray  # the watch's sampled steps
    logit_max: np.ndarray  # largest attention logit over the layers at each sampled step
    log_z: np.ndarray  # mean log Z of the output at each sampled step
    findings: list[tuple[str, str, int | None]]  # (kind, module, step)
    extremes: dict[str, float]  # over the run: what each new rule reads, at its worst

    def first(self, kind: str) -> int | None:
        steps = [s for k, _, s in self.findings if k == kind and s is not None]
        return min(steps) if steps else None


def train_lm(recipe: Recipe, tokens: torch.Tensor, store: Path,
             device: torch.device) -> RunResult:
    """Train one ``TinyLM`` on ``tokens`` (n, T + 1) under ``gh.watch`` into ``store``."""
    torch.manual_seed(recipe.seed)
    vocab, seq = int(tokens.max()) + 1, tokens.shape[1] - 1
    model = TinyLM(vocab, seq, recipe.d, recipe.heads, recipe.layers).to(device)
    if recipe.qk_norm:
        qk_layernorm_(model)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.0)
    gen = torch.Generator().manual_seed(recipe.seed)
    data = tokens.to(device)
    warm = max(1, int(recipe.warmup * recipe.steps))
    with watch(model, opt, store=store, sample_every=recipe.sample_every) as w:
        for step in range(recipe.steps):
            scale = ((step + 1) / warm if step < warm else
                     0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, recipe.steps - warm))))
            for group in opt.param_groups:
                group["lr"] = recipe.lr * scale
            batch = data[torch.randint(0, data.shape[0], (recipe.batch,), generator=gen)
                         .to(device)]
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))
            total = loss + z_loss(logits) if recipe.z_loss else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            w.log_loss(loss)
            opt.step()
    run = load(store)
    losses = np.asarray(run.steps["loss"], dtype=float)
    sampled, logit_max = _stat(run, "attn_logit_max", np.nanmax)
    _, log_z = _stat(run, "log_z", np.nanmean)
    findings = [(f.kind, f.module, s) for f, s in zip(run.findings, run.finding_steps)]
    return RunResult(recipe, losses, sampled, logit_max, log_z, findings, _extremes(run))


def _stat(run, name: str, reduce) -> tuple[np.ndarray, np.ndarray]:
    steps, _, values = run.layer_stat(name)
    keep = ~np.all(np.isnan(values), axis=1)
    with np.errstate(all="ignore"):
        return steps[keep], reduce(values[keep], axis=1)


def _extremes(run) -> dict[str, float]:
    """The largest logit, the lowest head's smallest share of uniform entropy, the log Z
    range, the largest update ratio and the smallest gradient RMS / eps of the run."""
    values = {name: run.layer_stat(name)[2] for name in (
        "attn_logit_max", "attn_entropy_min", "attn_entropy_uniform", "log_z",
        "update_ratio", "adam_grad_rms")}
    with np.errstate(all="ignore"):
        share = values["attn_entropy_min"] / values["attn_entropy_uniform"]
        return {"logit_max": float(np.nanmax(values["attn_logit_max"])),
                "entropy_share_min": float(np.nanmin(share)),
                "log_z_min": float(np.nanmin(values["log_z"])),
                "log_z_max": float(np.nanmax(values["log_z"])),
                "update_ratio_max": float(np.nanmax(values["update_ratio"])),
                "adam_ratio_min": float(np.nanmin(values["adam_grad_rms"])) / 1e-8}
