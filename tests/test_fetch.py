"""``Fetch``: many device numbers, one copy; each slot reads back what was added."""

import pytest
import torch

from gradhealth.measure.fetch import Fetch


def test_slots_read_back_scalars_vectors_and_groups_in_order():
    f = Fetch()
    loss = torch.tensor(2.5, requires_grad=True) * 1  # a tensor in a graph: detached
    slots = [f.add(loss), f.add(None), f.add((torch.tensor(1.0), torch.tensor([2.0, 3.0]),
                                              torch.tensor(4, dtype=torch.int32))),
             f.add(torch.ones(2, 2, dtype=torch.bfloat16)), f.add(torch.tensor([True, False]))]
    f.resolve()
    assert slots[1] is None and f.get(None) is None
    assert [f.get(s) for s in slots if s is not None] == [
        [2.5], [1.0, 2.0, 3.0, 4.0], [1.0] * 4, [1.0, 0.0]]
    assert f.scalar(slots[2]) == 1.0


def test_add_after_start_and_get_before_resolve_are_errors():
    f = Fetch()
    slot = f.add(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="before Fetch.resolve"):
        f.get(slot)
    f.start()
    assert f.ready()  # CPU: nothing to wait for
    with pytest.raises(RuntimeError, match="after Fetch.start"):
        f.add(torch.tensor(2.0))
    f.resolve()
    assert f.get(slot) == [1.0]
