"""Which trainable parameters a model has, which module owns each, and their norms per step.

``ParamLayout`` fixes the order of the trainable parameters once (module by module, as
``model.named_modules()`` walks them, a shared parameter counted once under its first
owner), so one row of a device buffer holds one norm per parameter. Norms are taken with
``torch._foreach_norm`` (one fused kernel per device and dtype on CUDA, as
``torch.nn.utils.get_total_norm``), half-precision tensors reduced in float32, and
written straight into that row: nothing is copied to the host here.

Per-module numbers are aggregated on the host, after the one copy per flush window:
a module's norm is the L2 norm of its own parameters' norms (``per_module``).

Under FSDP2 (parameters are DTensors) every norm here is the full parameter's: taken on
the local shards, then reduced over the shard groups in one collective per step
(``gradhealth.measure.shards.Shards``; ``measure.distributed`` declares how each reduces); under
DDP, whose gradients are identical on every rank, nothing is reduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from gradhealth.measure.shards import Shards

HALF = (torch.float16, torch.bfloat16)


@dataclass
class ParamLayout:
    params: list[nn.Parameter]
    names: list[str]  # qualified parameter names
    modules: list[str]  # qualified names of the modules owning parameters, model order
    starts: np.ndarray  # index of each module's first parameter (params are contiguous)
    device: torch.device
    _groups: list[tuple[list[int], torch.dtype | None]] = field(default_factory=list)
    _index_cache: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)
    _spare: torch.Tensor | None = None
    shards: Shards | None = None  # None unless some parameter is a DTensor (FSDP2)
    outside: list[nn.Parameter] = field(default_factory=list)  # frozen: no grad, none asked
    _fused: bool = False  # try the one fused norm call first (set by ``of``)
    signature: tuple[int, ...] | None = None  # the optimizer's group sizes when taken
    # modules holding a parameter another module owns (GPT-2's lm_head: wte's weight):
    # holder -> owner; the holder has no weight_grad_norm column of its own
    tied: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, model: nn.Module, optimizer: Any = None) -> ParamLayout:
        """The parameters a step updates: the model's trainable ones, in module order, then
        any the optimizer holds that the model does not own (owned by ``""``, the root).

        A frozen parameter (``requires_grad=False`` and no gradient) is left out but kept
        in ``outside``: when it gets a gradient (a layer unfrozen mid-run), ``stale`` says
        so and the caller takes a new layout; so does a parameter group added to the
        optimizer.
        """
        candidates: list[tuple[str, str, nn.Parameter]] = []
        seen: set[int] = set()
        owner_of: dict[int, str] = {}
        tied: dict[str, str] = {}
        for mname, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    owner_of[id(p)] = mname
                    candidates.append((mname, f"{mname}.{pname}" if mname else pname, p))
                elif owner_of.get(id(p), mname) != mname:
                    tied.setdefault(mname, owner_of[id(p)])
        for g, group in enumerate(getattr(optimizer, "param_groups", ())):
            for i, p in enumerate(group["params"]):
                if id(p) not in seen:
                    seen.add(id(p))
                    candidates.append(("", f"<optimizer>.param_groups.{g}.{i}", p))
        params, names, owners, outside = [], [], [], []
        # the root's own parameters and the optimizer's extra ones together (one block per
        # owner: ``per_module`` sums contiguous runs), then the rest in module order
        for owner, name, p in sorted(candidates, key=lambda c: c[0] != ""):
            if p.requires_grad or p.grad is not None:
                params.append(p)
                names.append(name)
                owners.append(owner)
            else:
                outside.append(p)
        modules = list(dict.fromkeys(owners))
        first: dict[str, int] = {}
        for i, m in enumerate(owners):
            first.setdefault(m, i)
        starts = np.array([first[m] for m in modules], dtype=np.int64)
        device = params[0].device if params else torch.device("cpu")
        layout = cls(params, names, modules, starts, device, shards=Shards.of(params),
                     outside=outside, signature=_signature(optimizer), tied=tied)
        by_key: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            by_key.setdefault((p.device, p.dtype), []).append(i)
        layout._groups = [(idx, torch.float32 if dtype in HALF else None)
                          for (_, dtype), idx in by_key.items()]
        layout._fused = len(layout._groups) == 1
        return layout

    def stale(self, optimizer: Any = None) -> bool:
        """Whether the parameters a step updates changed since this layout was taken: a
        parameter group was added, or a parameter left out got a gradient. Host-side
        metadata only (no device synchronisation); a frozen model part costs one
        attribute read per parameter tensor per step."""
        groups = getattr(optimizer, "param_groups", None)
        if groups is not None:  # a few attribute reads: once per step, on the step's path
            sizes = self.signature
            if sizes is None or len(groups) != len(sizes):
                return True
            for group, size in zip(groups, sizes):
                if len(group["params"]) != size:
                    return True
        return bool(self.outside) and any(p.grad is not None for p in self.outside)

    @property
    def buffer_dtype(self) -> torch.dtype:
        """float64 when some parameter is float64 (so its norm is not rounded), else float32."""
        wide = any(p.dtype == torch.float64 for p in self.params)
        return torch.float64 if wide else torch.float32

    def __len__(self) -> int:
        return len(self.params)

    @property
    def owners(self) -> list[str]:
        """The owning module of each parameter, in parameter order."""
        ends = list(self.starts[1:]) + [len(self.params)]
        return [m for m, a, b in zip(self.modules, self.starts, ends) for _ in range(int(b - a))]

    # -- on device, no host synchronisation ------------------------------------------
    def grad_norms_into(self, out: torch.Tensor) -> None:
        """Write each parameter's gradient L2 norm into ``out`` (0 where ``.grad`` is None)."""
        self._norms_into([p.grad for p in self.params], out)

    def grad_norms(self) -> tuple[torch.Tensor, ...] | None:
        """Each parameter's gradient L2 norm as the one fused call returns them (0-d
        tensors, in layout order, not stacked), or None where that call does not apply
        (a gradient missing or sparse, several devices or dtypes, sharded parameters):
        then ``grad_norms_into`` writes them."""
        if self.shards is not None:
            return None
        return self._fused_norms([p.grad for p in self.params])

    def weight_norms_into(self, out: torch.Tensor) -> None:
        self._norms_into(self._values(), out)

    def update_norms_into(self, before: list[torch.Tensor], out: torch.Tensor) -> None:
        """||p_now - p_before|| per parameter; ``before`` is consumed (overwritten in place)."""
        with torch.no_grad():
            torch._foreach_sub_(before, self._values())
        self._norms_into(before, out)

    def copy_weights(self) -> list[torch.Tensor]:
        """A transient copy of every parameter (for the update of one sampled step).

        One flat allocation and one copy when all parameters share a device and dtype
        (views of it are returned), instead of an allocation per parameter.
        """
        values = self._values()
        with torch.no_grad():
            if len(self._groups) != 1:
                return [v.clone() for v in values]
            if self.device.type == "cpu":
                # kept between samples on the CPU, where a fresh allocation of this size
                # costs a page fault per 4 KiB (~1 ms per 4 MB); a GPU's caching allocator
                # reuses the block anyway, so there the copy stays transient
                if self._spare is None:
                    self._spare = torch.empty(sum(v.numel() for v in values),
                                              dtype=values[0].dtype)
                flat = torch.cat([v.reshape(-1) for v in values], out=self._spare)
            else:
                flat = torch.cat([v.reshape(-1) for v in values])
            return [f.view_as(v) for f, v in zip(flat.split([v.numel() for v in values]),
                                                 values)]

    def _values(self) -> list[torch.Tensor]:
        """The parameters' values this rank holds (its local shards under FSDP2)."""
        values = [p.detach() for p in self.params]
        return values if self.shards is None else self.shards.local(values)

    def _norms_into(self, tensors: Sequence[torch.Tensor | None], out: torch.Tensor) -> None:
        if self.shards is None:
            self._local_norms_into(tensors, out)
            return
        self._local_norms_into(self.shards.local(tensors), out)
        self.shards.full_norms_(out)  # one collective, on every rank, every call

    def _fused_norms(self, tensors: Sequence[torch.Tensor | None]
                     ) -> tuple[torch.Tensor, ...] | None:
        """One fused call when every tensor shares a device and dtype; None otherwise."""
        if not self._fused:
            return None
        try:
            with torch.no_grad():  # create_graph=True leaves gradients that require grad
                return torch._foreach_norm(cast(list[torch.Tensor], tensors), 2.0,
                                           dtype=self._groups[0][1])
        except (TypeError, NotImplementedError, RuntimeError):
            # a gradient missing (None) or sparse: the general path, from now on (such a
            # model keeps its unused or sparse parameters; a new layout tries again)
            self._fused = False
            return None

    def _local_norms_into(self, tensors: Sequence[torch.Tensor | None],
                          out: torch.Tensor) -> None:
        fused = self._fused_norms(tensors)
        if fused is not None:
            if fused[0].dtype == out.dtype:
                torch.stack(fused, out=out)
            else:
                out.copy_(torch.stack(fused))
            return
        # general path: some gradients missing, several devices/dtypes, or sparse gradients
        present: list[int] = []  # parameter index of each norm below
        norms: list[torch.Tensor] = []
        for idx, dtype in self._groups:
            dense: list[int] = []
            dense_tensors: list[torch.Tensor] = []
            for i in idx:
                t = tensors[i]
                if t is None:
                    continue
                if t.layout == torch.strided:
                    dense.append(i)
                    dense_tensors.append(t)
                else:  # sparse embedding gradients
                    present.append(i)
                    norms.append(torch.linalg.vector_norm(t.coalesce().values(),
                                                          dtype=torch.float32)
                                 .to(out.device, out.dtype))
            if dense:
                with torch.no_grad():
                    got = torch._foreach_norm(dense_tensors, 2.0, dtype=dtype)
                present.extend(dense)
                norms.extend(n.to(out.device, out.dtype, non_blocking=True) for n in got)
        out.zero_()
        if present:
            key = tuple(present)
            index = self._index_cache.get(key)
            if index is None:
                index = torch.tensor(present, dtype=torch.long).to(out.device)
                self._index_cache[key] = index
            out.index_copy_(0, index, torch.stack(norms))

    # -- on the host, after the flush copy ---------------------------------------------
    def per_module(self, norms: np.ndarray) -> np.ndarray:
        """(..., n_params) per-parameter norms -> (..., n_modules) per-module L2 norms."""
        if not len(self.modules):
            return norms[..., :0]
        return np.sqrt(np.add.reduceat(np.square(norms), self.starts, axis=-1))


def _signature(optimizer: Any) -> tuple[int, ...] | None:
    """The sizes of an optimizer's parameter groups: a group added (``add_param_group``)
    or a parameter appended to one changes it."""
    groups = getattr(optimizer, "param_groups", None)
    return None if groups is None else tuple(len(g["params"]) for g in groups)
