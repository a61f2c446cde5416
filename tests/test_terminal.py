"""The terminal rendering: exact content at a fixed width, sick layers marked, escaping."""

import torch
from torch import nn

from gradhealth import probe
from gradhealth.report.terminal import bar, to_text
from gradhealth.zoo import case


def test_sick_network_rendering_shows_flow_findings_and_remedies():
    model, x, y = case("relu-glorot-30").build()
    text = to_text(probe(model, x, y), width=100)
    assert "1 problem(s) found" in text
    assert "vanishing in `0`" in text
    assert "remedy: Re-initialise" in text and "kaiming_normal_" in text
    lines = [line for line in text.splitlines() if line.startswith("✗")]
    assert lines and lines[0].split()[1] == "0"  # the input layer is marked first


def test_healthy_rendering():
    model, x, y = case("relu-he-30").build()
    text = to_text(probe(model, x, y))
    assert "healthy: no findings" in text and "✗" not in text


def test_bar_is_log_scaled():
    assert len(bar(1.0, 1.0).plain) == 16
    assert len(bar(1e-4, 1.0).plain) == 8
    assert len(bar(1e-12, 1.0).plain) == 1
    assert bar(float("nan"), 1.0).plain == "?"


def test_module_names_are_text_not_markup():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module("[bold red]x[/]", nn.Linear(4, 2))

        def forward(self, x):
            return getattr(self, "[bold red]x[/]")(x)

    text = to_text(probe(Net(), torch.randn(8, 4), torch.randint(0, 2, (8,))))
    assert "[bold red]x[/]" in text
