"""Everyday architectures at their library's default initialisation: the healthy half of
the real-architecture zoo (``gradhealth.zoo.real``).

Built from constructors and configs only, nothing downloaded: torchvision's image models
(through ``zoo.vision``, which makes its CUDA wheel import beside a CPU torch), Hugging
Face ``transformers`` models from small configs (the library's own ``_init_weights``),
``nn.TransformerEncoder`` pre- and post-LN and a recurrent language model. Sizes are
small enough for a CPU test (64x64 images, batch 16; sequences of 32, batch 8) and keep
each architecture's structure: every block type, its normalisation, its residual path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradhealth.zoo.vision import import_torchvision

IMAGE = 64  # pixels a side: every torchvision classifier here accepts it
IMAGE_BATCH = 16  # at least rules/dead_units.MIN_BATCH
CLASSES = 10
VOCAB = 1000
SEQ = 32
SEQ_BATCH = 8


def images(seed: int, size: int = IMAGE, batch: int = IMAGE_BATCH,
           classes: int = CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-like inputs at ImageNet-normalised scale, and class labels.

    Each image has its own mean colour, smooth structure (8x8 noise upsampled) and fine
    texture, so images differ from one another as photographs do. White noise would not
    do: its global average is the same (about 0) for every image, so every feature after
    a global pooling (squeeze-excitation, the classifier's input) is constant across the
    batch, and a rectifier there is zero for all of it or for none of it."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randn(batch, 3, 1, 1, generator=g) * 0.5
    shapes = F.interpolate(torch.randn(batch, 3, 8, 8, generator=g), size=(size, size),
                           mode="bilinear", align_corners=False)
    texture = torch.randn(batch, 3, size, size, generator=g) * 0.3
    x = colour + shapes + texture
    return x / x.std(), torch.randint(0, classes, (batch,), generator=g)


def tokens(seed: int, vocab: int = VOCAB, seq: int = SEQ,
           batch: int = SEQ_BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


def torchvision_model(name: str, **kwargs: Any) -> Callable[[], tuple]:
    """A torchvision classifier by its constructor's name, with a seeded image batch."""
    def build() -> tuple:
        tv = import_torchvision()
        model = getattr(tv.models, name)(num_classes=CLASSES, **kwargs)
        return (model, *images(5))
    return build


def vit() -> tuple:
    tv = import_torchvision()
    model = tv.models.VisionTransformer(image_size=IMAGE, patch_size=8, num_layers=4,
                                        num_heads=4, hidden_dim=128, mlp_dim=512,
                                        num_classes=CLASSES)
    return (model, *images(5))


def hugging_face(config: str, model: str, **kwargs: Any) -> Callable[[], tuple]:
    """A Hugging Face model from a small config (its own init), the labels in the inputs:
    the model returns its loss, as in a training loop."""
    def build() -> tuple:
        import transformers

        cfg = getattr(transformers, config)(**kwargs)
        net = getattr(transformers, model)(cfg)
        ids = tokens(6, vocab=cfg.vocab_size)
        if model.startswith("T5"):
            inputs = {"input_ids": ids, "labels": tokens(7, vocab=cfg.vocab_size)}
        else:
            inputs = {"input_ids": ids, "labels": ids}
        return net, inputs, None
    return build


HF_SMALL: dict[str, dict[str, Any]] = {
    "gpt2": dict(vocab_size=VOCAB, n_positions=64, n_embd=128, n_layer=4, n_head=4),
    "bert": dict(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=512, max_position_embeddings=64),
    "t5": dict(vocab_size=VOCAB, d_model=128, d_kv=32, d_ff=512, num_layers=2,
               num_decoder_layers=2, num_heads=4, decoder_start_token_id=0),
    "llama": dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=344,
                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64),
}


class EncoderClassifier(nn.Module):
    """Token embedding + learned positions, ``nn.TransformerEncoder``, mean-pooled head."""

    def __init__(self, norm_first: bool, d: int = 128, depth: int = 4, vocab: int = VOCAB):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(SEQ, d))
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.1, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d) if norm_first else nn.Identity()
        self.head = nn.Linear(d, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(ids) + self.pos)
        return self.head(self.norm(h).mean(dim=1))


def encoder(norm_first: bool) -> Callable[[], tuple]:
    def build() -> tuple:
        g = torch.Generator().manual_seed(8)
        return (EncoderClassifier(norm_first), tokens(6),
                torch.randint(0, CLASSES, (SEQ_BATCH,), generator=g))
    return build


class RecurrentLM(nn.Module):
    """Embedding -> LSTM (or GRU) -> Linear over the vocabulary: a word-level language
    model (Zaremba et al. 2014's medium size is 650 units; this is the small 200)."""

    def __init__(self, vocab: int = 10000, d: int = 200, layers: int = 2, cell: str = "LSTM"):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.rnn = getattr(nn, cell)(d, d, layers, batch_first=True, dropout=0.2)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.drop(self.embed(ids)))
        return self.head(self.drop(out))


def recurrent_lm(cell: str) -> Callable[[], tuple]:
    def build() -> tuple:
        ids = tokens(9, vocab=10000, seq=SEQ + 1, batch=16)
        return RecurrentLM(cell=cell), ids[:, :-1], ids[:, 1:]
    return build


BUILDERS: dict[str, tuple[Callable[[], tuple], str]] = {
    "resnet18": (torchvision_model("resnet18"), "torchvision default (He fan_out, BN gamma 1)"),
    "resnet50": (torchvision_model("resnet50"), "bottleneck blocks, BN after every conv"),
    "vgg11": (torchvision_model("vgg11"), "11 plain conv/linear layers, He fan_out init"),
    "vgg11-bn": (torchvision_model("vgg11_bn"), "the same with BatchNorm"),
    "mobilenet-v3-small": (torchvision_model("mobilenet_v3_small"),
                           "inverted residuals, hardswish, squeeze-excitation (hardsigmoid)"),
    "efficientnet-b0": (torchvision_model("efficientnet_b0"),
                        "MBConv, SiLU, squeeze-excitation (sigmoid), stochastic depth"),
    "densenet121": (torchvision_model("densenet121"), "dense concatenation, BN-ReLU-conv"),
    "convnext-tiny": (torchvision_model("convnext_tiny"),
                      "depthwise 7x7, LayerNorm, GELU, layer scale 1e-6"),
    "regnet-y-400mf": (torchvision_model("regnet_y_400mf"), "RegNet with squeeze-excitation"),
    "shufflenet-v2": (torchvision_model("shufflenet_v2_x0_5"), "channel shuffle, split"),
    "vit": (vit, "torchvision VisionTransformer, 4 pre-LN blocks"),
    "gpt2": (hugging_face("GPT2Config", "GPT2LMHeadModel", **HF_SMALL["gpt2"]),
             "decoder-only, pre-LN, initializer_range 0.02"),
    "bert": (hugging_face("BertConfig", "BertForMaskedLM", **HF_SMALL["bert"]),
             "encoder, post-LN, initializer_range 0.02"),
    "t5": (hugging_face("T5Config", "T5ForConditionalGeneration", **HF_SMALL["t5"]),
           "encoder-decoder, RMS norm, no biases"),
    "llama": (hugging_face("LlamaConfig", "LlamaForCausalLM", **HF_SMALL["llama"]),
              "decoder-only, RMSNorm, SwiGLU, rotary positions"),
    "encoder-pre-ln": (encoder(True), "nn.TransformerEncoder, norm_first=True"),
    "encoder-post-ln": (encoder(False), "nn.TransformerEncoder, norm_first=False"),
    "lstm-lm": (recurrent_lm("LSTM"), "Embedding -> 2-layer LSTM -> Linear over 10k words"),
    "gru-lm": (recurrent_lm("GRU"), "the same with a GRU"),
}
