"""The README's Python examples run as written, on a small real model and loop."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def names() -> dict:
    """What the examples leave to the reader: a model, a batch, a loader, a loss (and the
    first example's ``import gradhealth as gh``, which the later ones read on from)."""
    import gradhealth as gh

    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(16, 16), nn.Sigmoid())],
                          nn.Linear(16, 3))
    inputs, targets = torch.randn(64, 16), torch.randint(0, 3, (64,))
    loader = [(inputs[i:i + 16], targets[i:i + 16]) for i in range(0, 64, 16)] * 3
    return {"gh": gh, "model": model, "inputs": inputs, "targets": targets, "loader": loader,
            "loss_fn": nn.functional.cross_entropy,
            "opt": torch.optim.SGD(model.parameters(), lr=0.1)}


def test_the_readme_has_the_three_examples():
    blocks = python_blocks()
    assert len(blocks) == 3
    assert "gh.probe(" in blocks[0] and "gh.fix(" in blocks[1] and "gh.watch(" in blocks[2]


@pytest.mark.parametrize("index", range(3), ids=["probe", "fix", "watch"])
def test_readme_example_runs(tmp_path, monkeypatch, index):
    monkeypatch.chdir(tmp_path)  # the watch example writes run.db here
    namespace = names()
    exec(compile(python_blocks()[index], f"README.md python block {index}", "exec"), namespace)
    if index == 0:
        assert namespace["report"].ok is False  # a 6-layer sigmoid net at default init
    elif index == 1:
        assert namespace["result"].changes and namespace["result"].ok
    else:
        run = namespace["run"]
        assert len(run.steps["global_norm"]) == len(namespace["loader"])
        assert (tmp_path / "run.db").is_file()
