"""The module under the wrappers: what DDP and ``torch.compile`` hide, looked through.

Hooks and names belong to the eager module: a ``DistributedDataParallel`` wrapper adds a
``module.`` prefix, a compiled module an ``_orig_mod.`` one, and hooks added to
submodules after compilation are not called by the compiled graph. The watch therefore
measures the eager module, and names every module as the user's own model does.
"""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module a ``DistributedDataParallel`` wraps (names without ``module.``); else
    ``model``. FSDP2's ``fully_shard`` changes modules in place: nothing to unwrap."""
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, DistributedDataParallel):
        model = model.module
    return model


def eager(model: nn.Module) -> tuple[nn.Module, bool]:
    """The eager module under any nesting of ``torch.compile`` and DDP wrappers
    (``compile(DDP(m))`` and ``DDP(compile(m))`` alike), and whether one was compiled."""
    compiled = False
    while True:
        inner = unwrap(model)
        original = getattr(inner, "_orig_mod", None)
        if type(inner).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
            model, compiled = original, True
        elif inner is model:
            return model, compiled
        else:
            model = inner
