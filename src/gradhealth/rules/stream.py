"""Exploding gradients at one boundary of the residual stream.

A model built as a stack of repeated blocks (a transformer's layers, a ResNet stage) has
a residual stream: the input of the first block and each block's output. The depth
profile (``rules.depth``) compares thirds of its weight layers; a jump at a single
boundary is diluted there: a decoder-only transformer with a huge initialisation range
has its gradient multiplied by 1e4 and more between its first block's output and its
input (the embedding), while the blocks among themselves grow it only a few times,
because the first block's branches read the unit-scale embedding through LayerNorm
(backward gain 1/sigma ~ 1) with huge weights, and the later ones a stream the first
block has already made huge (1/sigma small). Measured along the stream, each block's
dL/d(input) over dL/d(output) is one step of the product of Jacobians that Pascanu et al.
2013 (Sec. 2.1) bound, and more than ``EXPLODING_RATIO`` (the depth rule's two orders of
magnitude) across one block is an explosion there (docs/science.md#the-residual-stream).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gradhealth.measure.layer import LayerStats
from gradhealth.rules import exploding
from gradhealth.rules.exploding import CLIP_NORM, CRITICAL_RATIO, EXPLODING_RATIO
from gradhealth.rules.finding import Finding
from gradhealth.rules.remedy import Remedy

MIN_BLOCKS = 2
"""A stack of at least this many blocks of one type makes a stream."""

_INDEXED = re.compile(r"^(.*?)(\d+)$")  # parent and prefix, index: ``h.3``, ``layer_3``
_STACKS = frozenset({"Sequential", "ModuleList", "ModuleDict"})
"""Plain containers: a stack of them is a stack of stages, not of blocks."""


@dataclass(frozen=True)
class Stream:
    """One stack of blocks: where its input comes from and the gradient at each point."""

    source: str  # the module whose output is the first block's input ("": none)
    blocks: tuple[str, ...]
    gauges: tuple[float, ...]  # ||dL/d(input of block 0)||, then ||dL/d(output of block i)||

    def steps(self) -> list[tuple[str, float]]:
        """Each block with its dL/d(input) over dL/d(output)."""
        return [(b, self.gauges[i] / self.gauges[i + 1]) for i, b in enumerate(self.blocks)
                if self.gauges[i + 1] > 0]


def _usable(s: LayerStats | None) -> bool:
    return (s is not None and s.grad_norm is not None and math.isfinite(s.grad_norm)
            and s.nonfinite_grad == 0)


def _within(name: str, block: str) -> bool:
    """``name`` is ``block`` or inside it (a block's output is its last module's)."""
    return name == block or name.startswith(block + ".")


def streams(layers: Mapping[str, LayerStats]) -> list[Stream]:
    """Every stack of ``MIN_BLOCKS`` or more blocks of one type, numbered children of one
    parent (``layers.0``, ``layers.1``, ...), each called once and reading the one before
    it (or the last module inside it) as its first input; cut where the chain breaks."""
    groups: dict[str, list[LayerStats]] = defaultdict(list)
    for s in layers.values():
        m = _INDEXED.match(s.name)
        if m and s.role == "container" and s.calls == 1 and s.type not in _STACKS:
            groups[m.group(1)].append(s)
    found = []
    for members in groups.values():
        members.sort(key=lambda s: int(_INDEXED.match(s.name).group(2)))  # type: ignore[union-attr]
        chain = [members[0]]
        for s in members[1:]:
            if s.type == chain[0].type and s.inputs_from and _within(s.inputs_from[0],
                                                                    chain[-1].name):
                chain.append(s)
            else:
                break
        first = chain[0]
        source = first.inputs_from[0] if first.inputs_from else ""
        start = first.input_grad_norm
        if start is None and _usable(layers.get(source)):
            start = layers[source].grad_norm
        if len(chain) < MIN_BLOCKS or start is None or not math.isfinite(start) \
                or not all(map(_usable, chain)):
            continue
        found.append(Stream(source, tuple(s.name for s in chain),
                            (start, *(s.grad_norm or 0.0 for s in chain))))
    return found


def check(layers: Mapping[str, LayerStats], meta: Mapping[str, Any]) -> list[Finding]:
    """An exploding finding per stream with a step over ``EXPLODING_RATIO``, when the
    depth profile (``rules.exploding``) has not already reported the explosion."""
    if exploding.check(layers, meta):
        return []
    findings = []
    for stream in streams(layers):
        block, ratio = max(stream.steps(), key=lambda step: step[1], default=("", 0.0))
        if ratio <= EXPLODING_RATIO:
            continue
        others = [r for b, r in stream.steps() if b != block]
        findings.append(Finding(
            kind="exploding", module=block,
            severity="critical" if ratio > CRITICAL_RATIO else "warning",
            evidence={"grad_ratio_input_to_output": ratio, "threshold": EXPLODING_RATIO,
                      "boundary": block, "stream_source": stream.source,
                      "blocks": len(stream.blocks),
                      "largest_other_step": max(others) if others else None,
                      "grad_norms_along_stream": list(stream.gauges)},
            prescription=Remedy("clip-global-norm", params={"max_norm": CLIP_NORM,
                                                            "stopgap": True}),
            modules=(block,),
            message=(f"the gradient grows {ratio:.3g}x across `{block}` alone (from its "
                     f"output to its input), along the residual stream of "
                     f"{len(stream.blocks)} blocks")))
    return findings
