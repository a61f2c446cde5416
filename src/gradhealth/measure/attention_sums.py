"""Attention logits reduced on device: their largest magnitude, RMS and row entropy.

Pure tensor reductions for ``measure.attention`` (which finds the calls): from the
logits themselves (a softmax's input), from ``q`` and ``k`` as
``F.scaled_dot_product_attention`` takes them, or from one ``nn.MultiheadAttention``
call's inputs and projection weights. Masked entries (a boolean mask, ``is_causal``, an
additive mask at -inf or below half its dtype's lowest value) are left out; logits are
recomputed in float32, ``CHUNK_ENTRIES`` at a time. Every sum here reduces across
processes with SUM, the maximum with MAX.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_ENTRIES = 1 << 22
"""Logit entries recomputed at once (16 MB in float32): a sampled step of GPT-2 small at
1024 tokens would otherwise hold 400 MB per layer."""
ATTENTION_NAMES = ("attention", "attn")
"""Fragments of a class name (any case) that mark a module whose softmax is attention."""


@dataclass
class Sums:
    """One module's attention numbers over its calls, on device."""

    heads: int
    max_abs: torch.Tensor  # largest |logit| over the unmasked entries
    sumsq: torch.Tensor
    count: torch.Tensor  # unmasked entries
    entropy: torch.Tensor  # (heads,) sum over rows of the row entropy, nats
    uniform: torch.Tensor  # (heads,) sum over rows of ln(unmasked keys)
    rows: torch.Tensor  # (heads,) rows with at least one unmasked key

    def add(self, other: Sums) -> None:
        self.max_abs = torch.maximum(self.max_abs, other.max_abs)
        self.sumsq, self.count = self.sumsq + other.sumsq, self.count + other.count
        if other.heads == self.heads:
            self.entropy = self.entropy + other.entropy
            self.uniform = self.uniform + other.uniform
            self.rows = self.rows + other.rows
        else:  # another head count (a shared module called two ways): pool the heads
            self.heads = 1
            self.entropy = self.entropy.sum(0, keepdim=True) + other.entropy.sum(0, keepdim=True)
            self.uniform = self.uniform.sum(0, keepdim=True) + other.uniform.sum(0, keepdim=True)
            self.rows = self.rows.sum(0, keepdim=True) + other.rows.sum(0, keepdim=True)


def logit_sums(logits: torch.Tensor, allowed: torch.Tensor | None = None,
               masked_below: float | None = None) -> Sums:
    """``Sums`` of (batch, heads, queries, keys) ``logits`` (a bool ``allowed`` broadcast
    to it says which entries attend; entries at or below ``masked_below``, by default half
    the lowest value of the logits' dtype, are masked). One chunk; ``attention_sums``
    chunks big tensors."""
    lg = logits.detach().float()
    low = torch.finfo(logits.dtype).min / 2 if masked_below is None else masked_below
    valid = torch.isfinite(lg) & (lg > low)
    if allowed is not None:
        valid = valid & allowed
    size = torch.zeros((), device=lg.device)
    mag = torch.where(valid, lg.abs(), size)
    p = torch.softmax(torch.where(valid, lg, torch.full((), -math.inf, device=lg.device)), -1)
    ent = torch.special.entr(torch.nan_to_num(p, nan=0.0)).sum(-1)  # (b, h, q)
    keys = valid.sum(-1)  # (b, h, q)
    has = keys > 0
    return Sums(heads=lg.shape[1], max_abs=mag.amax() if mag.numel() else size,
                sumsq=(mag * mag).sum(), count=valid.sum(dtype=torch.float32),
                entropy=torch.where(has, ent, size).sum((0, 2)),
                uniform=torch.log(keys.clamp_min(1).float()).sum((0, 2)),
                rows=has.sum((0, 2), dtype=torch.float32))


def attention_sums(q: torch.Tensor, k: torch.Tensor, scale: float | None = None, *,
                   mask: torch.Tensor | None = None, causal: bool = False,
                   blocked: bool = False) -> Sums:
    """``Sums`` of softmax(q k^T * scale + mask) for (batch, heads, queries, dim) ``q`` and
    (batch, heads or fewer, keys, dim) ``k``, as ``F.scaled_dot_product_attention`` reads
    them: ``scale`` 1/sqrt(dim) by default; a bool ``mask`` is True where a query may
    attend (``blocked=True``: True where it may not, ``nn.MultiheadAttention``'s sense), a
    float one is added; ``causal``: query i sees keys 0..i."""
    if k.shape[1] != q.shape[1] and q.shape[1] % k.shape[1] == 0:  # grouped-query
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    if mask is not None:
        mask = mask.detach()
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
        mask = mask.expand(b if mask.shape[0] != 1 else 1, *mask.shape[1:])
    tri = (torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
           if causal else None)
    # an additive mask blocks with -inf or its dtype's lowest value (Hugging Face)
    low = (torch.finfo(mask.dtype).min / 2 if mask is not None and mask.is_floating_point()
           else None)
    step = max(1, CHUNK_ENTRIES // max(1, h * lq * lk))
    total: Sums | None = None
    with torch.no_grad():
        for start in range(0, b, step):
            qc, kc = q[start:start + step].detach(), k[start:start + step].detach()
            logits = (qc.float() @ kc.float().transpose(-1, -2)) * scale
            allowed = tri
            if mask is not None:
                mc = mask if mask.shape[0] == 1 else mask[start:start + step]
                if mc.dtype == torch.bool:
                    mc = ~mc if blocked else mc
                    allowed = mc if allowed is None else allowed & mc
                else:
                    logits = logits + mc.float()
            sums = logit_sums(logits, allowed, low)
            if total is None:
                total = sums
            else:
                total.add(sums)
    assert total is not None  # b >= 1: one chunk at least
    return total


def sdpa_sums(query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False,
               scale=None, enable_gqa=False, **_: Any) -> Sums:
    q, k = _as_4d(query), _as_4d(key)
    return attention_sums(q, k, scale, mask=attn_mask, causal=bool(is_causal))


def softmax_sums(module: nn.Module, args: tuple, kwargs: dict) -> Sums | None:
    x = args[0] if args else kwargs.get("input")
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if not isinstance(x, torch.Tensor) or x.dim() < 3 or not x.is_floating_point():
        return None
    if dim is None or dim not in (-1, x.dim() - 1):
        return None
    if not any(f in type(module).__name__.lower() for f in ATTENTION_NAMES):
        return None
    if x.dim() == 3:  # (batch * heads, queries, keys): nn.MultiheadAttention's layout
        heads = int(getattr(module, "num_heads", 1) or 1)
        heads = heads if x.shape[0] % heads == 0 else 1
        x = x.reshape(x.shape[0] // heads, heads, *x.shape[1:])
    elif x.dim() > 4:
        x = x.reshape(-1, *x.shape[-3:])
    step = max(1, CHUNK_ENTRIES // max(1, x[0].numel()))
    total: Sums | None = None
    with torch.no_grad():
        for start in range(0, x.shape[0], step):
            chunk = logit_sums(x[start:start + step])
            if total is None:
                total = chunk
            else:
                total.add(chunk)
    return total


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 3:  # (batch, length, dim): one head
        return t.unsqueeze(1)
    if t.dim() > 4:
        return t.reshape(-1, *t.shape[-3:])
    return t


def mha_sums(m: nn.MultiheadAttention, args: tuple, kwargs: dict) -> Sums:
    """q k^T of one ``nn.MultiheadAttention`` call, from its inputs and weights."""
    query = args[0] if args else kwargs["query"]
    key = args[1] if len(args) > 1 else kwargs["key"]
    batched = query.dim() == 3
    if not batched:
        query, key = query.unsqueeze(0), key.unsqueeze(0)
    elif not m.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    e, h = m.embed_dim, m.num_heads
    bias = m.in_proj_bias
    b_q = bias[:e] if bias is not None else None
    b_k = bias[e:2 * e] if bias is not None else None
    with torch.no_grad():
        if m._qkv_same_embed_dim:
            assert m.in_proj_weight is not None  # the fused projection exists in this layout
            w_q, w_k = m.in_proj_weight[:e], m.in_proj_weight[e:2 * e]
        else:
            w_q, w_k = m.q_proj_weight, m.k_proj_weight
        q = F.linear(query.detach(), w_q.detach(), b_q)
        k = F.linear(key.detach(), w_k.detach(), b_k)
    n, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    q = q.view(n, lq, h, e // h).transpose(1, 2)
    k = k.view(n, lk, h, e // h).transpose(1, 2)
    mask = _mha_mask(kwargs, args, n, h, lq, lk, batched)
    causal = bool(kwargs.get("is_causal", False)) and mask is None
    return attention_sums(q, k, mask=mask, causal=causal, blocked=mask is not None
                          and mask.dtype == torch.bool)


def _mha_mask(kwargs: dict, args: tuple, n: int, h: int, lq: int, lk: int,
              batched: bool) -> torch.Tensor | None:
    """The call's key_padding_mask and attn_mask as one (n, h, lq, lk) mask, True (or an
    additive value) where a query may *not* attend, as ``nn.MultiheadAttention`` reads them."""
    padding = kwargs.get("key_padding_mask", args[3] if len(args) > 3 else None)
    attn = kwargs.get("attn_mask", args[5] if len(args) > 5 else None)
    masks: list[torch.Tensor] = []
    if padding is not None:
        pad = padding if batched else padding.unsqueeze(0)
        masks.append(pad.view(n, 1, 1, lk))
    if attn is not None:
        masks.append(attn.view(1, 1, lq, lk) if attn.dim() == 2 else attn.view(n, h, lq, lk))
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        out = masks[0]
        for m in masks[1:]:
            out = out | m
        return out
    # additive: a bool mask becomes -inf where blocked
    floats = [torch.zeros(m.shape, device=m.device).masked_fill(m, -math.inf)
              if m.dtype == torch.bool else m.float() for m in masks]
    total = floats[0]
    for f in floats[1:]:
        total = total + f
    return total
