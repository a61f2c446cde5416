"""The command line never writes a report over what it must not: the run store it reads,
any run store, or a file that is not a gradhealth report (without --force)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gradhealth as gh
from gradhealth.cli import main


def said(capsys) -> str:
    """What the command printed, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture
def store(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    path = tmp_path / "run.db"
    with gh.watch(model, opt, store=path, flush_every=5, sample_every=5):
        for _ in range(10):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return path


def test_report_refuses_to_overwrite_its_own_run_store(store, capsys):
    before = store.read_bytes()
    assert main(["report", str(store), "-o", str(store)]) == 2
    assert "is the run store this report is made from" in said(capsys)
    assert store.read_bytes() == before and len(gh.load(store).steps) == 10


def test_report_refuses_any_run_store_even_with_force(store, tmp_path, capsys):
    other = tmp_path / "other.db"
    other.write_bytes(store.read_bytes())
    assert main(["report", str(store), "-o", str(other), "--force"]) == 2
    assert "never replaces one" in said(capsys)
    assert len(gh.load(other).steps) == 10


def test_report_replaces_a_foreign_file_only_with_force(store, tmp_path, capsys):
    notes = tmp_path / "notes.html"
    notes.write_text("<p>my notes</p>")
    assert main(["report", str(store), "-o", str(notes)]) == 2
    assert "not a gradhealth HTML report" in said(capsys)
    assert notes.read_text() == "<p>my notes</p>"
    assert main(["report", str(store), "-o", str(notes), "--force"]) == 0
    assert 'name="generator" content="gradhealth"' in notes.read_text()
    # a report gradhealth wrote is replaced without asking: commands can be re-run
    assert main(["report", str(store), "-o", str(notes)]) == 0


def test_probe_refuses_a_folder_as_json_path_and_leaves_no_temporary(tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["probe", "relu-he-30", "--json", str(folder)]) == 2
    assert "is a folder" in said(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert list(folder.iterdir()) == []


def test_probe_json_replaces_its_own_report_but_not_a_foreign_file(tmp_path, capsys):
    own, foreign = tmp_path / "r.json", tmp_path / "config.json"
    foreign.write_text('{"lr": 0.1}')
    assert main(["probe", "relu-he-30", "--json", str(foreign)]) == 2
    assert json.loads(foreign.read_text()) == {"lr": 0.1}
    assert main(["probe", "relu-he-30", "--json", str(own)]) == 0
    assert main(["probe", "relu-he-30", "--json", str(own)]) == 0
    assert json.loads(own.read_text())["ok"] is True
    capsys.readouterr()
