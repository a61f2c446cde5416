"""log Z of a model's output logits: the log of the softmax normaliser, per position.

For output logits y over C classes, Z = sum_j exp(y_j) and log Z = logsumexp(y). PaLM
(Chowdhery et al. 2022) saw it drift far from 0 in unstable runs and added the z-loss
1e-4 * log^2 Z to hold it there; Wortsman et al. 2023 (Sec. 3.2) reproduced the drift
(the logits becoming very negative) in small models (docs/science.md#transformer-era-instabilities).

``OutputLogZ`` reads the model's output on a tapped pass: ``output.logits`` (Hugging Face),
``output["logits"]``, or the output itself when it is a floating tensor whose last axis
has at least two classes. It measures the first forward of the pass, in float32 chunks
of at most ``CHUNK_ENTRIES`` entries, on device. The numbers belong to the head: the
module whose output *is* those logits, else the last weighted leaf whose output has as
many classes, else the model itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gradhealth.measure.fetch import Fetch

CHUNK_ENTRIES = 1 << 24
"""Logit entries converted to float32 at once (64 MB): GPT-2's 8 x 1024 x 50257 logits
would otherwise take 1.6 GB for one reduction."""
MIN_CLASSES = 2


def output_logits(output: Any) -> torch.Tensor | None:
    """The logits in a model's output, or None (see the module docstring)."""
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None:
        logits = output
    if (isinstance(logits, torch.Tensor) and logits.is_floating_point() and logits.dim() >= 2
            and logits.shape[-1] >= MIN_CLASSES):
        return logits
    return None


def log_z_sums(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of log Z, largest |log Z|, positions counted) over the finite positions."""
    rows = logits.detach().reshape(-1, logits.shape[-1])
    step = max(1, CHUNK_ENTRIES // rows.shape[1])
    total = peak = count = torch.zeros((), device=rows.device)
    with torch.no_grad():
        for start in range(0, rows.shape[0], step):
            lz = torch.logsumexp(rows[start:start + step].float(), dim=-1)
            finite = torch.isfinite(lz)
            lz = torch.where(finite, lz, torch.zeros((), device=lz.device))
            total = total + lz.sum()
            peak = torch.maximum(peak, lz.abs().amax())
            count = count + finite.sum(dtype=torch.float32)
    return total, peak, count


class OutputLogZ:
    """log Z of ``model``'s output logits on its first forward while started."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.logits: torch.Tensor | None = None  # the first output's, until ``queue``
        self.sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.head = ""
        self._handle: Any = None
        self._slots: tuple[int | None, ...] = ()

    def start(self) -> None:
        # prepend: before the watch's own root hook, which may end the sampled forward
        self._handle = self.model.register_forward_hook(self._hook, prepend=True)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.sums is not None:
            return
        logits = output_logits(output)
        if logits is None:
            return
        try:
            self.sums = log_z_sums(logits)
            self.logits = logits
        except Exception:  # a statistic must never break the user's model
            self.sums = None

    # -- the signal protocol (records.LayerPlan) -----------------------------------
    def queue(self, fetch: Fetch, calls: Sequence[Any]) -> set[str]:
        if self.sums is None or self.logits is None:
            return set()
        self.head = head_of(calls, self.logits)
        self._slots = tuple(fetch.add(t) for t in self.sums)
        self.classes = int(self.logits.shape[-1])
        self.logits = None  # the activations may be freed
        return {self.head}

    def fields(self, fetch: Fetch) -> dict[str, dict[str, Any]]:
        if not self._slots:
            return {}
        total, peak, count = (fetch.scalar(s) for s in self._slots)
        if not count:
            return {}
        assert total is not None and peak is not None  # queued together with count
        return {self.head: {"log_z": total / count, "log_z_max": peak,
                            "log_z_classes": self.classes}}


def head_of(calls: Sequence[Any], logits: torch.Tensor) -> str:
    """The module that produced ``logits`` (see the module docstring): the first call in
    completion order that returned them, so the innermost (a probe taps the containers
    that pass them on too)."""
    for call in calls:
        if call.output_ref is logits:
            return call.name
    for call in reversed(calls):
        out = call.output_ref
        weighted = call.leaf and any(True for _ in call.module.parameters(recurse=False))
        if weighted and out is not None and out.dim() >= 1 and out.shape[-1] == logits.shape[-1]:
            return call.name
    return ""
