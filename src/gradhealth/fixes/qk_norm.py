"""qk-layernorm by module surgery: LayerNorm on each head's queries and keys.

Attention logits q.k/sqrt(d) grow with the query and key projections; at high learning
rates they grow until attention rows are one-hot and the loss diverges (Dehghani et al.
2023). Normalising q and k per head bounds the logits by the norms' gains and makes the
final loss far less sensitive to the learning rate (Wortsman et al. 2023, Sec. 3.1.1;
docs/science.md#transformer-era-instabilities). What can be patched:

- ``nn.MultiheadAttention``: replaced under its name by ``QKNormMultiheadAttention``, which
  shares its parameters (the optimizer keeps training them) and adds ``q_norm``/``k_norm``;
- Hugging Face attention with separate ``q_proj``/``k_proj`` Linear layers and a
  ``head_dim`` (Llama, Mistral, Qwen2 and the other Llama-style families): both
  projections wrapped in ``HeadNorm`` (before the rotary embedding, as Qwen3 and OLMo 2);
- BERT-style self-attention (``query``/``key`` and ``attention_head_size``): the same;
- GPT-2 (``GPT2Attention``, self-attention): the fused ``c_attn`` wrapped in ``FusedQKNorm``.

Anything else, a hand-written attention with its own fused projection included, cannot be
patched from outside: its layout of q, k and v is its own code's; the refusal says so. The
wrapped projections' state_dict keys gain a ``.proj`` (each ``Change`` lists them). The new
norms' parameters are in no existing optimizer: create it after this fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from gradhealth.errors import ConfigError, FixRefusedError
from gradhealth.fixes.change import Change
from gradhealth.fixes.forward import call, preserved_state, require_module
from gradhealth.fixes.qk_modules import FusedQKNorm, HeadNorm, QKNormMultiheadAttention
from gradhealth.fixes.transaction import Transaction

__all__ = ["qk_layernorm_"]

_WHY = ("Dehghani et al. 2023; Wortsman et al. 2023, Sec. 3.1.1: LayerNorm on queries and keys "
        "bounds the attention logits; create the optimizer after this fix (new parameters)")
ATTENTION_NAMES = ("attention", "attn")

Patch = Callable[[nn.Module, nn.Module, str, float], str]
"""(model root, the attention module, its name, eps) -> what was done."""


def qk_layernorm_(model: nn.Module, *, names: Iterable[str] | None = None, eps: float = 1e-5,
                  example_inputs: Any = None) -> list[Change]:
    """Put LayerNorm on each head's queries and keys of every attention module it can
    patch (or of those in ``names``), in place; one ``Change`` each.

    ``FixRefusedError`` (model unchanged) when nothing can be patched, or a named module
    cannot; with ``example_inputs`` the model is run once after the surgery and every edit
    rolled back if it fails.
    """
    require_module(model, "qk_layernorm_")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise ConfigError(f"qk_layernorm_(eps=...) expects a small positive number such as "
                          f"1e-5, got {eps!r}")
    modules = dict(model.named_modules())
    targets = _targets(modules, names)
    transaction = Transaction(model)
    changes: list[Change] = []
    try:
        for name, patch in targets:
            what = patch(model, modules[name], name, float(eps))
            changes.append(Change(name, what, _WHY))
        if example_inputs is not None:
            with preserved_state(model):
                call(model, example_inputs)
    except Exception as error:
        transaction.rollback()
        raise FixRefusedError(
            f"qk-layernorm broke the model ({type(error).__name__}: {error}); every edit was "
            f"rolled back and the model is unchanged.") from error
    return changes


def patch_of(module: nn.Module) -> Patch | None:
    """How ``module`` gets qk-layernorm, or None (not an attention it knows, or one
    already normalised)."""
    if isinstance(module, QKNormMultiheadAttention) or hasattr(module, "q_norm"):
        return None
    if isinstance(module, nn.MultiheadAttention):
        return None if module.bias_k is not None or module.add_zero_attn else _swap_mha
    for q, k, dim in (("q_proj", "k_proj", "head_dim"), ("query", "key", "attention_head_size")):
        if (isinstance(getattr(module, q, None), nn.Linear)
                and isinstance(getattr(module, k, None), nn.Linear)
                and isinstance(getattr(module, dim, None), int)):
            return _wrapper(q, k, dim)
    if (type(module).__name__ == "GPT2Attention" and not getattr(module, "is_cross_attention", True)
            and isinstance(getattr(module, "head_dim", None), int)):
        return _fused_gpt2
    return None


def _targets(modules: dict[str, nn.Module], names: Iterable[str] | None
             ) -> list[tuple[str, Patch]]:
    if names is not None:
        found = []
        for name in names:
            module = modules.get(name)
            patch = patch_of(module) if module is not None else None
            if patch is None:
                raise FixRefusedError(
                    f"cannot put qk-layernorm into {name!r}: "
                    + ("no such module" if module is None else _why_not(module))
                    + ". The model is unchanged.")
            found.append((name, patch))
        return found
    found = [(n, p) for n, m in modules.items() if (p := patch_of(m)) is not None]
    if not found:
        others = [n for n, m in modules.items()
                  if any(f in type(m).__name__.lower() for f in ATTENTION_NAMES)]
        raise FixRefusedError(
            "found no attention module qk_layernorm_ can patch (nn.MultiheadAttention, "
            "Llama-style q_proj/k_proj, BERT query/key, GPT-2 c_attn)"
            + (f"; {', '.join(repr(n) for n in others[:6])} look like attention but their "
               f"q/k layout is their own code's: apply LayerNorm(head_dim) to q and k in "
               f"their forward, before q @ k^T" if others else "")
            + ". The model is unchanged.")
    return found


def _why_not(module: nn.Module) -> str:
    if isinstance(module, QKNormMultiheadAttention) or hasattr(module, "q_norm"):
        return "its queries and keys are normalised already"
    if isinstance(module, nn.MultiheadAttention):
        return "add_bias_kv and add_zero_attn are not supported"
    return (f"{type(module).__name__} is not an attention module gradhealth knows how to "
            f"patch; apply LayerNorm(head_dim) to q and k in its forward, before q @ k^T")


def _swap_mha(model: nn.Module, old: nn.Module, name: str, eps: float) -> str:
    assert isinstance(old, nn.MultiheadAttention)  # patch_of chose this patch for one
    weight = old.out_proj.weight
    new = QKNormMultiheadAttention(
        old.embed_dim, old.num_heads, dropout=old.dropout, bias=old.in_proj_bias is not None,
        kdim=old.kdim, vdim=old.vdim, batch_first=old.batch_first, eps=eps,
        device=weight.device, dtype=weight.dtype)
    for key, p in old._parameters.items():  # the same tensors: the optimizer keeps them
        new._parameters[key] = p
    new.out_proj = old.out_proj
    new.train(old.training)
    parent, _, child = name.rpartition(".")
    if not name:
        raise FixRefusedError("qk_layernorm_ cannot replace the model itself; wrap it in a "
                              "parent module first. The model is unchanged.")
    setattr(model.get_submodule(parent), child, new)
    return (f"replaced nn.MultiheadAttention by QKNormMultiheadAttention (same parameters, "
            f"new q_norm and k_norm: LayerNorm({old.head_dim}))")


def _wrapper(q: str, k: str, dim: str) -> Patch:
    def patch(model: nn.Module, module: nn.Module, name: str, eps: float) -> str:
        head_dim = getattr(module, dim)
        for attr in (q, k):
            setattr(module, attr, HeadNorm(getattr(module, attr), head_dim, eps))
        keys = ", ".join(f"{name}.{a}.weight -> {name}.{a}.proj.weight" for a in (q, k))
        return (f"{q} and {k} each followed by LayerNorm({head_dim}) per head; state_dict "
                f"keys renamed: {keys}")

    return patch


def _fused_gpt2(model: nn.Module, module: nn.Module, name: str, eps: float) -> str:
    head_dim, width = int(module.head_dim), int(module.split_size)  # type: ignore[arg-type]
    proj = module.get_submodule("c_attn")
    module.c_attn = FusedQKNorm(proj, width, head_dim, eps)
    return (f"c_attn's queries and keys each followed by LayerNorm({head_dim}) per head; "
            f"state_dict keys renamed: {name}.c_attn.weight -> {name}.c_attn.proj.weight")
