"""Attention logits, output log Z and Adam's moments, each measured where it is a known fact.

References: logits recomputed by hand (q @ k^T / sqrt(d) with the mask), entropies from
torch's own softmax, log Z from torch.logsumexp, Adam's v from its state; then the
findings: a 3-layer pre-LN encoder whose q/k projections are scaled 12x
(docs/science.md#transformer-era-instabilities), a head whose bias pushes log Z to -100,
gradients scaled below Adam's eps.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradhealth as gh
from gradhealth.measure.attention import AttentionTap
from gradhealth.measure.attention_sums import attention_sums

NEW_KINDS = {"attention_logit_growth", "logit_divergence", "adam_epsilon", "update_ratio"}


def reference(q, k, allowed):
    """(max |logit| over allowed entries, per-head mean row entropy) by hand."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    p = logits.masked_fill(~allowed, -math.inf).softmax(-1)
    entropy = -(p * torch.where(p > 0, p.log(), torch.zeros(()))).sum(-1)
    return logits[allowed.expand_as(logits)].abs().max().item(), entropy.mean((0, 2))


def finish(tap: AttentionTap) -> dict:
    from gradhealth.measure.fetch import Fetch

    fetch = Fetch()
    tap.queue(fetch, [])
    fetch.resolve()
    return tap.fields(fetch)


class SDPA(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x):
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 4, 4).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_sdpa_logits_and_entropy_match_a_hand_computation():
    torch.manual_seed(0)
    m, x = SDPA(), torch.randn(3, 8, 16)
    tap = AttentionTap(m)
    tap.start()
    m(x)
    tap.stop()
    got = finish(tap)[""]
    q, k, _ = m.qkv(x).view(3, 8, 3, 4, 4).permute(2, 0, 3, 1, 4)
    peak, entropy = reference(q, k, torch.ones(8, 8, dtype=torch.bool).tril())
    assert got["attn_logit_max"] == pytest.approx(peak, rel=1e-5)
    assert got["attn_entropy"] == pytest.approx(entropy.mean().item(), rel=1e-5)
    assert got["attn_entropy_min"] == pytest.approx(entropy.min().item(), rel=1e-5)
    assert got["attn_entropy_uniform"] == pytest.approx(
        sum(math.log(i + 1) for i in range(8)) / 8, rel=1e-6)
    assert got["attn_heads"] == 4
    assert torch._C._len_torch_function_stack() == 0  # the mode is gone


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_with_masks_matches_a_hand_computation(batch_first, need_weights):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    holder = nn.Module()
    holder.att = mha
    x = torch.randn(2, 6, 16)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    tap = AttentionTap(holder)
    tap.start()
    inp = x if batch_first else x.transpose(0, 1)
    mha(inp, inp, inp, key_padding_mask=pad, attn_mask=causal, need_weights=need_weights)
    tap.stop()
    got = finish(tap)["att"]
    q = F.linear(x, mha.in_proj_weight[:16], mha.in_proj_bias[:16]).view(2, 6, 4, 4)
    k = F.linear(x, mha.in_proj_weight[16:32], mha.in_proj_bias[16:32]).view(2, 6, 4, 4)
    allowed = ~(causal.view(1, 1, 6, 6) | pad.view(2, 1, 1, 6))
    peak, entropy = reference(q.transpose(1, 2), k.transpose(1, 2), allowed)
    assert got["attn_logit_max"] == pytest.approx(peak, rel=1e-5)
    assert got["attn_entropy"] == pytest.approx(entropy.mean().item(), rel=1e-5)


def test_additive_masks_at_the_dtype_minimum_are_left_out():
    torch.manual_seed(2)
    q, k = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    blocked = torch.zeros(5, 5, dtype=torch.bool)
    blocked[:, 3:] = True
    additive = torch.zeros(5, 5).masked_fill(blocked, torch.finfo(torch.float16).min)
    sums = attention_sums(q, k, mask=additive.half())
    peak, _ = reference(q, k, ~blocked)
    assert sums.max_abs.item() == pytest.approx(peak, rel=1e-5)
    assert sums.count.item() == 2 * 2 * 5 * 3


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_hugging_face_attention_is_observed_the_same_through_sdpa_and_eager(family):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    seen = {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = hf_model(transformers, family, impl)
        ids = torch.randint(0, 50, (2, 8))
        mask = torch.ones(2, 8, dtype=torch.long)
        mask[1, 6:] = 0  # padding: masked keys are left out
        report = gh.probe(model, {"input_ids": ids, "attention_mask": mask},
                          loss_fn=lambda out: out.logits.float().logsumexp(-1).mean())
        seen[impl] = {n: (s.attn_logit_max, s.attn_entropy, s.attn_entropy_uniform,
                          s.attn_heads) for n, s in report.layers.items()
                      if s.attn_logit_max is not None}
        assert any(s.log_z_classes == 50 for s in report.layers.values())
        assert torch._C._len_torch_function_stack() == 0
    assert len(seen["sdpa"]) == 2 and set(seen["sdpa"]) == set(seen["eager"])
    for name, numbers in seen["sdpa"].items():
        assert numbers == pytest.approx(seen["eager"][name], rel=1e-4)
        assert numbers[3] == 4 and 0 < numbers[0] < 1  # small logits at init


def hf_model(transformers, family: str, impl: str) -> nn.Module:
    """A 2-layer, 4-head model of ``family`` with the attention implementation ``impl``."""
    if family == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16, bos_token_id=0,
            eos_token_id=0, attn_implementation=impl))
    if family == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, vocab_size=50, attn_implementation=impl))
    return transformers.BertForMaskedLM(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        vocab_size=50, attn_implementation=impl))


def encoder(scale: float, seed: int = 0) -> nn.Module:
    """The 3-layer pre-LN encoder of docs/science.md (d = 64, 4 heads), q/k scaled."""
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True,
                                       norm_first=True)
    enc = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    with torch.no_grad():
        for block in enc.layers:
            block.self_attn.in_proj_weight[:128] *= scale
    return nn.Sequential(enc, nn.Linear(64, 10))


def _probe(model):
    torch.manual_seed(5)
    x, y = torch.randn(16, 32, 64), torch.randint(0, 10, (16, 32))
    return gh.probe(model, x, y, loss_fn=lambda o, t: F.cross_entropy(o.reshape(-1, 10),
                                                                        t.reshape(-1)))


def test_scaled_query_key_projections_are_attention_logit_growth():
    healthy, sick = _probe(encoder(1.0)), _probe(encoder(12.0))
    for s in (s for s in healthy.layers.values() if s.attn_logit_max is not None):
        assert 2 < s.attn_logit_max < 4  # science.md: healthy 2-4
        assert 3.3 < s.attn_entropy < math.log(32)  # 3.3 of ln 32 = 3.47
    assert not healthy.kinds() & NEW_KINDS
    grown = sick.by_kind("attention_logit_growth")
    assert {f.module for f in grown} == {f"0.layers.{i}.self_attn" for i in range(3)}
    for f in grown:
        assert 290 < f.evidence["logit_max"] < 440
        assert f.evidence["entropy_fraction"] < 0.05 and f.severity == "critical"
        assert "qk_layernorm_" in f.remedy and f.prescription.scheme == "qk-layernorm"


def test_a_head_bias_far_below_zero_is_logit_divergence():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 20))
    x, y = torch.randn(64, 8), torch.randint(0, 20, (64,))
    calm = gh.probe(model, x, y)
    assert calm.layers["2"].log_z == pytest.approx(
        torch.logsumexp(model(x), -1).mean().item(), rel=1e-5)
    assert not calm.kinds() & NEW_KINDS
    with torch.no_grad():
        model[2].bias.fill_(-100.0)
    drift = gh.probe(model, x, y).by_kind("logit_divergence")
    assert [f.module for f in drift] == ["2"]
    assert drift[0].evidence["log_z"] == pytest.approx(-100 + math.log(20), abs=1.0)
    assert "gradhealth.z_loss(logits, coef=0.0001)" in drift[0].remedy


def _train(loss_scale: float, steps: int = 6, seen: list | None = None):
    """Six AdamW steps, sampled at steps 0 and 5; ``seen`` gets the first layer's v and
    step count as the sample at step 5 read them (before that step's update)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))

    def snapshot(optimizer, args, kwargs):
        state = [optimizer.state[p] for p in model[0].parameters()]
        if seen is not None and state[0] and float(state[0]["step"]) == 5:
            seen.append((torch.cat([s["exp_avg_sq"].flatten() for s in state]),
                         float(state[0]["step"])))

    with gh.watch(model, opt, sample_every=5, flush_every=5) as w:
        opt.register_step_pre_hook(snapshot)  # after the watch's: the same state
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y) * loss_scale
            loss.backward()
            opt.step()
        report = w.report()
    return model, opt, report


def test_adam_gradient_rms_is_read_from_its_second_moment():
    seen: list = []
    _, _, report = _train(1.0, seen=seen)
    (v, step), = seen
    got = report.layers["0"].adam_grad_rms
    assert report.layers["0"].adam_eps == 1e-8
    assert got == pytest.approx(math.sqrt(v.mean().item() / (1 - 0.999 ** step)), rel=1e-5)
    assert not report.kinds() & NEW_KINDS


def test_gradients_scaled_below_eps_are_adam_epsilon():
    _, _, report = _train(1e-9)
    found = report.by_kind("adam_epsilon")
    assert {f.module for f in found} == {"0", "2"}
    for f in found:
        assert f.evidence["ratio"] < 10 and f.evidence["suggested_eps"] <= f.evidence[
            "grad_rms"] / 1000
        assert f"eps={f.evidence['suggested_eps']!r}" in f.remedy
