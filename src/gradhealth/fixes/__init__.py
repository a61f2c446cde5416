"""Remedies as explicit, in-place module surgery; each returns a list of ``Change``.

- ``init``: Glorot, He, LeCun and orthogonal initialisation; ``lsuv``: LSUV;
  ``gates``: an LSTM's forget-gate bias.
- ``activations``: swap saturating or dying activations for non-saturating ones.
- ``norm``: insert BatchNorm after Linear / Conv layers.
- ``qk_norm``: qk-layernorm, LayerNorm on each head's queries and keys of attention.
- ``z_loss``: the z-loss term of a training loss (not surgery: a function of the logits).
- ``graph``: which activation follows each layer (used by all of the above).
"""

from gradhealth.fixes.activations import swap_activations_
from gradhealth.fixes.change import Change
from gradhealth.fixes.gates import forget_bias_
from gradhealth.fixes.graph import FollowingActivation, following_activations
from gradhealth.fixes.init import (
    glorot_normal_,
    glorot_uniform_,
    he_normal_,
    he_uniform_,
    identity_recurrent_,
    lecun_normal_,
    orthogonal_,
)
from gradhealth.fixes.lsuv import lsuv_
from gradhealth.fixes.norm import insert_batchnorm_
from gradhealth.fixes.qk_modules import QKNormMultiheadAttention
from gradhealth.fixes.qk_norm import qk_layernorm_
from gradhealth.fixes.z_loss import z_loss

__all__ = [
    "Change",
    "FollowingActivation",
    "following_activations",
    "forget_bias_",
    "glorot_normal_",
    "glorot_uniform_",
    "he_normal_",
    "he_uniform_",
    "identity_recurrent_",
    "insert_batchnorm_",
    "lecun_normal_",
    "lsuv_",
    "orthogonal_",
    "QKNormMultiheadAttention",
    "qk_layernorm_",
    "swap_activations_",
    "z_loss",
]
