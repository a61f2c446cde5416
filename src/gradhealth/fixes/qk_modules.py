"""The modules ``qk_layernorm_`` puts in: LayerNorm on each head's queries and keys.

qk-layernorm (Dehghani et al. 2023, ViT-22B; Wortsman et al. 2023, Sec. 3.1.1) applies a
LayerNorm over the head dimension to the queries and the keys before their dot product,
so a logit is bounded by the norms' gains rather than by the growing projection weights.
One LayerNorm(head_dim) for the queries and one for the keys, shared by the heads (as
Qwen3's and OLMo 2's q_norm/k_norm). With rotary embeddings the norm comes before the
rotation, where the projection's output is.

- ``QKNormMultiheadAttention``: ``nn.MultiheadAttention`` with ``q_norm``/``k_norm``,
  computed with ``F.scaled_dot_product_attention`` (the weights when asked for);
- ``HeadNorm``: a query or key projection (``nn.Linear``) followed by the norm on each
  head's slice of its output (Llama-style ``q_proj``/``k_proj``, BERT's ``query``/``key``);
- ``FusedQKNorm``: a fused q/k/v projection (GPT-2's ``c_attn``) whose q and k thirds are
  normalised per head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _head_norm(x: torch.Tensor, norm: nn.LayerNorm, head_dim: int) -> torch.Tensor:
    shape = x.shape
    return norm(x.reshape(*shape[:-1], -1, head_dim)).reshape(shape)


class HeadNorm(nn.Module):
    """``proj`` then LayerNorm over each ``head_dim`` slice of its output."""

    def __init__(self, proj: nn.Module, head_dim: int, eps: float = 1e-5):
        super().__init__()
        weight = next(proj.parameters())
        self.proj, self.head_dim = proj, head_dim
        self.norm = nn.LayerNorm(head_dim, eps=eps, device=weight.device, dtype=weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _head_norm(self.proj(x), self.norm, self.head_dim)


class FusedQKNorm(nn.Module):
    """A fused projection to [q, k, v] (each ``width`` wide) with q and k normalised per
    head of ``head_dim``."""

    def __init__(self, proj: nn.Module, width: int, head_dim: int, eps: float = 1e-5):
        super().__init__()
        weight = next(proj.parameters())
        self.proj, self.width, self.head_dim = proj, width, head_dim
        self.q_norm = nn.LayerNorm(head_dim, eps=eps, device=weight.device, dtype=weight.dtype)
        self.k_norm = nn.LayerNorm(head_dim, eps=eps, device=weight.device, dtype=weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.proj(x).split(self.width, dim=-1)
        return torch.cat([_head_norm(q, self.q_norm, self.head_dim),
                          _head_norm(k, self.k_norm, self.head_dim), v], dim=-1)


class QKNormMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with LayerNorm on each head's queries and keys.

    Takes the same arguments and masks (bool: True where a query may *not* attend, or
    additive floats; ``key_padding_mask``, ``attn_mask``, ``is_causal``) and returns the
    same (output, weights); ``add_bias_kv`` and ``add_zero_attn`` are not supported.
    """

    def __init__(self, *args, eps: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        if self.bias_k is not None or self.add_zero_attn:
            raise ValueError("QKNormMultiheadAttention supports neither add_bias_kv nor "
                             "add_zero_attn")
        device, dtype = self.out_proj.weight.device, self.out_proj.weight.dtype
        self.q_norm = nn.LayerNorm(self.head_dim, eps=eps, device=device, dtype=dtype)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=eps, device=device, dtype=dtype)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._project(query, key, value)
        n, h, lq, lk = q.shape[0], self.num_heads, q.shape[2], k.shape[2]
        mask = _additive(key_padding_mask, attn_mask, n, h, lq, lk, q.dtype)
        causal = bool(is_causal) and mask is None
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
            if causal:
                logits = logits.masked_fill(
                    ~torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(), -math.inf)
            if mask is not None:
                logits = logits + mask
            weights = F.dropout(torch.softmax(logits, dim=-1), p, self.training)
            out = weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, self.embed_dim))
        if not batched:
            return out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _project(self, query, key, value):
        e, h, d = self.embed_dim, self.num_heads, self.head_dim
        b = self.in_proj_bias
        biases = (b[:e], b[e:2 * e], b[2 * e:]) if b is not None else (None, None, None)
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            weights = (w[:e], w[e:2 * e], w[2 * e:])
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        heads = []
        for x, w, bias, norm in zip((query, key, value), weights, biases,
                                    (self.q_norm, self.k_norm, None)):
            y = F.linear(x, w, bias).view(x.shape[0], x.shape[1], h, d)
            heads.append((norm(y) if norm is not None else y).transpose(1, 2))
        return heads


def _additive(padding, attn, n: int, h: int, lq: int, lk: int,
              dtype: torch.dtype) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s masks as one additive (n or 1, h or 1, lq, lk) mask."""
    total = None
    for m, shape in ((padding, (n, 1, 1, lk)),
                     (attn, (1, 1, lq, lk) if attn is not None and attn.dim() == 2
                      else (n, h, lq, lk))):
        if m is None:
            continue
        m = m.reshape(shape)
        add = (torch.zeros(shape, dtype=dtype, device=m.device).masked_fill(m, -math.inf)
               if m.dtype == torch.bool else m.to(dtype))
        total = add if total is None else total + add
    return total
