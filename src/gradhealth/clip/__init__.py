"""Gradient clippers: call one after ``loss.backward()`` and before ``optimizer.step()``.

``ClipValue`` (``value``), ``ClipNorm`` and ``ClipNormPerParameter`` (``norm``), ``AGC``
(``agc``), ``AutoClip`` (``autoclip``), ``ZClip`` (``zclip``); the shared shell, the
result type and the AMP helper are in ``base``. Each call returns a ``ClipResult`` of
0-d tensors on the gradients' device and keeps ``last_pre_norm``, ``bind_count`` (how
often clipping changed something, a device tensor) and ``steps`` (a Python int). Nothing
here calls ``.item()``, ``float()`` or ``.cpu()`` on a tensor, and no decision branches
on the host: clip factors are device tensors applied by multiplication, so a clipper
never stalls the GPU.

Non-finite gradients: if the global gradient norm is inf or nan, every clipper leaves
the gradients exactly as they are (scaling by max_norm/inf = 0 would turn inf into nan,
and clamping would hide an overflow) and returns ``finite=False``; skip that step
(``torch.amp.GradScaler.step`` does so by itself).

Processes (``torchrun``): under DDP the gradients are all-reduced before clipping, so
the local norm is the global one and nothing more is reduced. Under FSDP2 (gradients
are DTensors) the clippers work on each rank's local shards and reduce the norms over
the shard groups (``gradhealth.measure.distributed``): the global norm, the threshold and the
clip factor are the same on every rank, as are ``clipped`` and ``finite``; AGC's
per-unit norms are the full units', and its ``clipped`` is MAX over ranks. Other
sharding schemes whose gradients are not DTensors (ZeRO, FSDP1 flat parameters) would
need their own reduction and are not supported.

Mixed precision: with ``torch.amp.GradScaler`` the gradients are multiplied by the loss
scale; clip after ``scaler.unscale_(optimizer)``, or pass ``optimizer=`` and
``scaler=`` to the clipper, which unscales first unless already done this step
(``unscale_grads_``).
"""

from gradhealth.clip.agc import AGC
from gradhealth.clip.autoclip import AutoClip

# importable as before the split, but not advertised in __all__
from gradhealth.clip.base import ClipResult, Params, total_norm, unscale_grads_  # noqa: F401
from gradhealth.clip.norm import ClipNorm, ClipNormPerParameter
from gradhealth.clip.value import ClipValue
from gradhealth.clip.zclip import ZClip

__all__ = [
    "AGC", "AutoClip", "ClipNorm", "ClipNormPerParameter", "ClipResult", "ClipValue", "ZClip",
    "unscale_grads_",
]
