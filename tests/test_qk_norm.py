"""The remedies for transformer-era instabilities: qk-layernorm by module surgery, z-loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradhealth as gh
from gradhealth.errors import ConfigError, FixRefusedError
from gradhealth.fixes import QKNormMultiheadAttention, qk_layernorm_, z_loss


def holder(mha: nn.Module) -> nn.Module:
    m = nn.Module()
    m.att = mha
    return m


def by_hand(mha, new, x):
    """qk-layernorm attention of one batch-first call, from the module's own weights."""
    e, h, d = mha.embed_dim, mha.num_heads, mha.head_dim
    w, b = mha.in_proj_weight, mha.in_proj_bias
    q, k, v = (F.linear(x, w[i * e:(i + 1) * e], b[i * e:(i + 1) * e]).view(*x.shape[:2], h, d)
               for i in range(3))
    q, k = new.q_norm(q), new.k_norm(k)
    att = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) / math.sqrt(d)).softmax(-1)
    out = (att @ v.transpose(1, 2)).transpose(1, 2).reshape(*x.shape[:2], e)
    return mha.out_proj(out)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_is_swapped_keeping_its_parameters(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    model = holder(mha)
    params = list(mha.parameters())
    changes = qk_layernorm_(model)
    new = model.att
    assert isinstance(new, QKNormMultiheadAttention) and [c.module for c in changes] == ["att"]
    assert all(any(p is q for q in new.parameters()) for p in params)  # the optimizer's own
    assert "LayerNorm(4)" in changes[0].what and "optimizer" in changes[0].why
    with torch.no_grad():
        new.q_norm.weight.uniform_(0.5, 2.0)
        new.k_norm.bias.normal_()
    x = torch.randn(2, 5, 16)
    inp = x if batch_first else x.transpose(0, 1)
    out, weights = new(inp, inp, inp)
    fast, none = new(inp, inp, inp, need_weights=False)
    expected = by_hand(mha, new, x)
    got = out if batch_first else out.transpose(0, 1)
    assert torch.allclose(got, expected, atol=1e-5) and none is None
    assert torch.allclose(out, fast, atol=1e-5) and weights.shape == (2, 5, 5)


def test_masks_mean_what_they_mean_in_multihead_attention():
    torch.manual_seed(1)
    model = holder(nn.MultiheadAttention(8, 2, batch_first=True))
    qk_layernorm_(model)
    x = torch.randn(3, 6, 8)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[2, 4:] = True
    a, w = model.att(x, x, x, attn_mask=causal, key_padding_mask=pad)
    b, _ = model.att(x, x, x, attn_mask=causal, key_padding_mask=pad, need_weights=False)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.all(w[:, causal] == 0) and torch.all(w[2][:, 4:] == 0)
    # a later token cannot change an earlier position's output under the causal mask
    y = x.clone()
    y[:, -1] += 10
    c, _ = model.att(y, y, y, attn_mask=causal, need_weights=False)
    d, _ = model.att(x, x, x, attn_mask=causal, need_weights=False)
    assert torch.allclose(c[:, :-1], d[:, :-1], atol=1e-5)


def test_what_cannot_be_patched_is_refused_and_the_model_left_alone():
    kv = holder(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(FixRefusedError, match="add_bias_kv"):
        qk_layernorm_(kv, names=["att"])
    assert type(kv.att) is nn.MultiheadAttention

    class MyAttention(nn.Module):  # a fused projection whose layout only its code knows
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, -1)
            return F.scaled_dot_product_attention(q, k, v)

    with pytest.raises(FixRefusedError, match="'att' look like attention.*LayerNorm"):
        qk_layernorm_(holder(MyAttention()))
    done = holder(nn.MultiheadAttention(8, 2))
    qk_layernorm_(done)
    with pytest.raises(FixRefusedError, match="normalised already"):
        qk_layernorm_(done, names=["att"])
    with pytest.raises(ConfigError, match="eps"):
        qk_layernorm_(done, eps=0)


def test_a_failing_forward_rolls_every_edit_back():
    model = nn.Sequential(nn.Linear(8, 8))
    model.add_module("att", nn.MultiheadAttention(8, 2, batch_first=True))
    before = model.att
    with pytest.raises(FixRefusedError, match="rolled back"):
        qk_layernorm_(model, example_inputs=torch.randn(2, 3, 8))  # Sequential passes 1 arg
    assert model.att is before


@pytest.mark.parametrize("family, attention", [("gpt2", "transformer.h.0.attn"),
                                               ("llama", "model.layers.0.self_attn"),
                                               ("bert", "bert.encoder.layer.0.attention.self")])
def test_hugging_face_families_are_patched_and_their_logits_bounded(family, attention):
    transformers = pytest.importorskip("transformers")
    from test_attention_signals import hf_model

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = hf_model(transformers, family, "sdpa")
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():  # grow the query/key projections 50x: unbounded logits
        for name, p in model.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj", "query", "key", "c_attn")):
                p.mul_(50)

    def loss(out):
        return out.logits.float().logsumexp(-1).mean()

    grown = gh.probe(model, ids, loss_fn=loss).layers[attention].attn_logit_max
    changes = qk_layernorm_(model, example_inputs=ids)
    assert attention in [c.module for c in changes] and "renamed" in changes[0].what
    bounded = gh.probe(model, ids, loss_fn=loss).layers[attention].attn_logit_max
    head_dim = 8
    assert grown > 50 and bounded <= math.sqrt(head_dim) * 1.01  # |q| |k| / sqrt(d)
    assert any(k.endswith(".proj.weight") for k in model.state_dict())


def test_z_loss_is_the_mean_squared_log_normaliser():
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 11) * 3
    log_z = torch.logsumexp(logits, -1)
    assert z_loss(logits).item() == pytest.approx(1e-4 * log_z.square().mean().item())
    assert gh.z_loss(logits, coef=0.5).item() == pytest.approx(
        0.5 * log_z.square().mean().item())
    mask = torch.zeros(4, 7, dtype=torch.bool)
    mask[:, :3] = True
    assert z_loss(logits, mask=mask).item() == pytest.approx(
        1e-4 * log_z[:, :3].square().mean().item())
    assert z_loss(logits, mask=torch.zeros(4, 7, dtype=torch.bool)).item() == 0
    logits.requires_grad_(True)
    z_loss(logits.half().float()).backward()
    assert logits.grad is not None
    for bad in (-1.0, float("nan"), True, "1e-4"):
        with pytest.raises(ConfigError, match="coef"):
            z_loss(logits, coef=bad)
    with pytest.raises(ConfigError, match="mask"):
        z_loss(logits, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="logits"):
        z_loss(torch.ones(3, dtype=torch.long))
