"""Whether a model has weights to measure: none on the meta device, no lazy module unset.

A model built under ``torch.device("meta")`` (or with an ``init_empty_weights`` helper)
has shapes but no values: its forward fails deep inside torch, or measures nothing.
A lazy module (``nn.LazyLinear``, ``nn.LazyConv2d``) draws its weights on its first
forward, from the global RNG: a probe that restores the RNG afterwards would leave
weights that repeat the next random draws of training, and a watch cannot record the
size of a model that has none yet. Both are refused before anything runs, with what to do.
"""

from __future__ import annotations

from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from gradhealth.errors import UnsupportedModelError


def require_materialised(model: nn.Module, verb: str) -> None:
    """Raise ``UnsupportedModelError`` unless every parameter and buffer of ``model`` holds
    values; ``verb`` (``"gh.probe"``, ``"gh.watch"``) says who asks."""
    for mname, module in model.named_modules():
        own = list(module._parameters.items()) + list(module._buffers.items())
        for key, tensor in own:
            if isinstance(tensor, (UninitializedParameter, UninitializedBuffer)):
                raise UnsupportedModelError(
                    f"{verb} expected initialised parameters, got the lazy module {mname!r} "
                    f"({type(module).__name__}) whose {key!r} is not materialised yet (its "
                    f"shape is set by its first forward). Run one forward on a real batch "
                    f"first, model(x), then call {verb}; {verb} does not do it for you, as "
                    f"the weights it drew would change the model and the random draws of "
                    f"your training.")
            if tensor is not None and tensor.is_meta:
                where = f"{mname}.{key}" if mname else key
                raise UnsupportedModelError(
                    f"{verb} expected a model with real weights, got {where!r} on the meta "
                    f"device (shapes without values: a model built under "
                    f"torch.device('meta') or an init_empty_weights helper). Materialise it "
                    f"first: model.to_empty(device='cpu') (or 'cuda'), then initialise the "
                    f"weights (each module's reset_parameters(), or load_state_dict of a "
                    f"checkpoint); or call {verb} on the real model.")
