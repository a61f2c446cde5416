"""Measuring: model -> taps -> statistics -> per-layer records. Measures; never judges.

``catalog`` is the module vocabulary (what kind of module this is); ``taps`` hooks a
model's calls; ``stats`` reduces tensors on device; ``fetch`` copies the numbers to the
host in one transfer; ``records`` turns them into ``LayerStats`` (``layer``); ``params``
measures per-parameter norms each step; ``snapshot`` restores what a pass changed;
``loss`` makes the scalar a probe differentiates; ``wrappers`` finds the module under DDP
and ``torch.compile``; ``distributed`` says how each statistic reduces across processes,
and ``shards`` takes the norms of FSDP2-sharded tensors.
"""
