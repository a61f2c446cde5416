import pytest
import torch

import gradhealth  # noqa: F401  (before any test imports transformers: zoo.vision's guard)

# One intra-op thread: the suite's tensors are small, and with several processes on two
# cores OpenMP's spinning threads can slow a step a hundredfold (seen here under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def no_hooks_left(model: torch.nn.Module) -> bool:
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            return False
        if getattr(m, "_backward_pre_hooks", None):
            return False
    return True


def state_copy(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def same_state(model: torch.nn.Module, saved: dict) -> bool:
    now = model.state_dict(keep_vars=True)
    return now.keys() == saved.keys() and all(torch.equal(now[k].detach(), saved[k]) for k in saved)
