"""Bad input gets a clear error from one hierarchy, and the model loses nothing."""

import pytest
import torch
from torch import nn

from conftest import no_hooks_left, same_state, state_copy
from gradhealth import probe
from gradhealth.errors import (
    DisconnectedLossError,
    GradHealthError,
    InputMismatchError,
    LossNotScalarError,
    NoTrainableParametersError,
    TargetMismatchError,
    UnsupportedModelError,
)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 32)
        self.norm = nn.BatchNorm1d(32)

    def forward(self, x):
        return self.norm(self.fc(x))


class Net(nn.Module):
    def __init__(self, head_in=32):
        super().__init__()
        self.encoder = Encoder()
        self.act = nn.ReLU()
        self.head = nn.Linear(head_in, 3)

    def forward(self, x):
        return self.head(self.act(self.encoder(x)))


def check_untouched(model, saved, modes, rng):
    assert same_state(model, saved)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert no_hooks_left(model)


CASES = {
    "wrong feature size": (Net(), torch.randn(8, 15), torch.randint(0, 3, (8,)), {},
                           InputMismatchError, "encoder.fc"),
    "wrong dtype": (Net(), torch.randint(0, 5, (8, 16)), torch.randint(0, 3, (8,)), {},
                    InputMismatchError, "encoder.fc"),
    "fails after BatchNorm ran": (Net(head_in=31), torch.randn(8, 16), torch.randint(0, 3, (8,)),
                                  {}, InputMismatchError, "head"),
    "class out of range": (Net(), torch.randn(8, 16), torch.full((8,), 7), {},
                           TargetMismatchError, "[0, 2]"),
    "CE shape mismatch": (Net(), torch.randn(8, 16), torch.randint(0, 3, (4,)), {},
                          TargetMismatchError, "(8, 3)"),
    "MSE shape mismatch": (Net(), torch.randn(8, 16), torch.randn(8, 5), {},
                           TargetMismatchError, "(8, 5)"),
    "loss not scalar": (Net(), torch.randn(8, 16), torch.randn(8, 3),
                        {"loss_fn": lambda o, t: (o - t) ** 2}, LossNotScalarError, "(8, 3)"),
    "no targets, no loss": (Net(), torch.randn(8, 16), None, {}, LossNotScalarError, "loss_fn"),
    "detached loss": (Net(), torch.randn(8, 16), None,
                      {"loss_fn": lambda o: o.detach().sum()}, DisconnectedLossError,
                      "requires_grad"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_error_is_clear_and_model_unchanged(name):
    model, x, y, kwargs, error, needle = CASES[name]
    model.eval()  # probe switches to train mode internally; eval must come back
    saved, modes = state_copy(model), [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    with pytest.raises(error) as info:
        probe(model, x, y, **kwargs)
    assert isinstance(info.value, GradHealthError)
    assert needle in str(info.value)
    if error is InputMismatchError:
        assert info.value.module == needle
        assert "rejected" in str(info.value)
    check_untouched(model, saved, modes, rng)


def test_no_trainable_parameters():
    model = Net().requires_grad_(False)
    with pytest.raises(NoTrainableParametersError, match="requires_grad"):
        probe(model, torch.randn(8, 16), torch.randint(0, 3, (8,)))
    assert no_hooks_left(model)


def test_not_a_module():
    with pytest.raises(UnsupportedModelError, match="torch.nn.Module"):
        probe(lambda x: x, torch.randn(2, 2))


def test_errors_are_also_builtin_exceptions():
    with pytest.raises(ValueError):
        probe(Net(), torch.randn(8, 15), torch.randint(0, 3, (8,)))


def test_loss_fn_exception_leaves_no_trace():
    model = Net()
    saved = state_copy(model)

    def broken(out, t):
        raise RuntimeError("user bug")

    with pytest.raises(RuntimeError, match="user bug"):
        probe(model, torch.randn(8, 16), torch.randn(8, 3), loss_fn=broken)
    assert same_state(model, saved) and no_hooks_left(model)


def test_an_empty_batch_is_a_clear_error():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    saved = state_copy(model)
    for targets in (torch.randint(0, 3, (0,)), torch.randn(0, 3)):
        with pytest.raises(InputMismatchError, match="empty one"):
            probe(model, torch.randn(0, 16), targets)
    assert same_state(model, saved) and no_hooks_left(model)


def test_a_loss_fn_that_is_not_callable_and_bad_fix_rounds_are_clear_errors():
    from gradhealth import fix
    from gradhealth.errors import ConfigError

    model = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 16), torch.randint(0, 3, (16,))
    with pytest.raises(ConfigError, match="loss_fn= expects a function"):
        probe(model, x, y, loss_fn=3)
    with pytest.raises(ConfigError, match="max_rounds"):
        fix(model, x, y, max_rounds=0)
    assert no_hooks_left(model)
