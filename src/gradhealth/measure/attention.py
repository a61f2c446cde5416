"""Attention logits of a tapped pass: the pre-softmax query-key logits of every attention
call, reduced on device to their largest magnitude, RMS, and the row entropy per head.

Dehghani et al. 2023 (ViT-22B) saw these logits grow during training until the attention
rows were almost one-hot (entropy near 0) and the loss diverged
(docs/science.md#transformer-era-instabilities). What is observed, and how:

- ``F.scaled_dot_product_attention`` (any caller: a user's module, Hugging Face's
  ``sdpa`` attention of GPT-2, Llama, BERT...): a ``TorchFunctionMode`` sees the call
  with its ``q``, ``k``, mask, ``is_causal``, ``scale`` and ``enable_gqa``, and recomputes
  ``q @ k^T * scale`` (plus an additive mask) beside the kernel, which never forms it;
- a softmax over the last axis (``F.softmax``, ``torch.softmax``, ``Tensor.softmax``) called
  inside a module whose class name contains "Attention" or "Attn": its input *is* the
  logits (Hugging Face's ``eager`` attention, most hand-written attention);
- ``nn.MultiheadAttention``: a forward pre-hook recomputes ``q`` and ``k`` from the call's
  query and key and the module's own projection weights (its fused kernel is opaque).

Entries a mask removes (a boolean mask, ``is_causal``, or an additive mask at -inf or
below half the dtype's lowest value, as Hugging Face writes it) are left out. The module
named is the innermost module of the model whose ``forward`` is on the Python stack when
the attention runs. The reductions (float32, chunked, on device) are
``measure.attention_sums``'.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from gradhealth.measure.attention_sums import Sums, mha_sums, sdpa_sums, softmax_sums
from gradhealth.measure.fetch import Fetch

SOFTMAXES = (F.softmax, torch.softmax, torch.Tensor.softmax)
FRAMES = 40  # how far up the Python stack the owning module is looked for


class AttentionTap(TorchFunctionMode):
    """Observe every attention call of ``model`` while started (``start``/``stop``); the
    numbers are in ``sums`` by module name. The mode is pushed by ``start`` and popped by
    ``stop``: start it right before a forward and stop it right after, so nothing else's
    mode is pushed in between."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.sums: dict[str, Sums] = {}
        self.names = {id(m): name for name, m in model.named_modules()}
        self.errors: dict[str, str] = {}
        self._handles: list[Any] = []
        self._active = False
        self._slots: dict[str, tuple[int | None, ...]] = {}

    def start(self) -> None:
        for name, m in self.model.named_modules():
            # a subclass with its own forward (QKNormMultiheadAttention) is seen through
            # its softmax or SDPA call instead: its q and k are not the projections'
            if isinstance(m, nn.MultiheadAttention) and \
                    type(m).forward is nn.MultiheadAttention.forward:
                self._handles.append(m.register_forward_pre_hook(
                    self._mha_hook(name), with_kwargs=True))
        self.__enter__()
        self._active = True

    def stop(self) -> None:
        """Pop the mode and remove the hooks (idempotent)."""
        if self._active:
            self._active = False
            self.__exit__(None, None, None)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- the signal protocol (records.LayerPlan) -----------------------------------
    def queue(self, fetch: Fetch, calls: Sequence[Any]) -> set[str]:
        self._slots = {name: tuple(fetch.add(t) for t in (s.max_abs, s.sumsq, s.count,
                                                          s.entropy, s.uniform, s.rows))
                       for name, s in self.sums.items()}
        self.sums = {}
        return set(self._slots)

    def fields(self, fetch: Fetch) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, slots in self._slots.items():
            peak, sumsq, count = (fetch.scalar(s) for s in slots[:3])
            entropy, uniform, rows = (fetch.get(s) or [] for s in slots[3:])
            if not count or not sum(rows):
                continue
            assert peak is not None and sumsq is not None  # queued together with count
            per_head = [e / r for e, r in zip(entropy, rows) if r]
            out[name] = {"attn_logit_max": peak, "attn_logit_rms": math.sqrt(sumsq / count),
                         "attn_entropy": sum(per_head) / len(per_head),
                         "attn_entropy_min": min(per_head),
                         "attn_entropy_uniform": sum(uniform) / sum(rows),
                         "attn_heads": len(entropy)}
        return out

    # -- observation ------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention or func in SOFTMAXES:
            self._observe(func, args, kwargs)
        return func(*args, **kwargs)

    def _observe(self, func, args: tuple, kwargs: dict) -> None:
        owner = self._owner()
        if owner is None:
            return
        name, module = owner
        try:
            sums: Sums | None = (sdpa_sums(*args, **kwargs)
                                 if func is F.scaled_dot_product_attention
                                 else softmax_sums(module, args, kwargs))
        except Exception as err:  # a statistic must never break the user's model
            self.errors[name] = f"{type(err).__name__}: {err}"
            return
        if sums is not None:
            self._add(name, sums)

    def _owner(self) -> tuple[str, nn.Module] | None:
        frame: FrameType | None = sys._getframe(2)
        for _ in range(FRAMES):
            if frame is None:
                return None
            code = frame.f_code
            if code.co_argcount and code.co_varnames[0] == "self":
                me = frame.f_locals.get("self")
                name = self.names.get(id(me))
                if name is not None and isinstance(me, nn.Module):
                    return name, me
            frame = frame.f_back
        return None

    def _add(self, name: str, sums: Sums) -> None:
        seen = self.sums.get(name)
        if seen is None:
            self.sums[name] = sums
        else:
            seen.add(sums)

    def _mha_hook(self, name: str):
        def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> None:
            try:
                sums = mha_sums(module, args, kwargs)
            except Exception as err:
                self.errors[name] = f"{type(err).__name__}: {err}"
                return
            self._add(name, sums)

        return hook
