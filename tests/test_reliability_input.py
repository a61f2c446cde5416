"""Bad input: a clipper's options out of their domain, and bad command lines.

Every bad command line exits 2 with one paragraph saying what was expected, no traceback,
and writes nothing: not in the working folder, not next to its inputs.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path

import pytest

from gradhealth import RunStore
from gradhealth.cli import main
from gradhealth.clip import AGC, AutoClip, ClipNorm, ClipNormPerParameter, ClipValue, ZClip
from gradhealth.errors import ConfigError

BAD_THRESHOLDS = (0, 0.0, -1, -1e-9, math.nan, math.inf, -math.inf, True, "1", None)


THRESHOLDS = {"ClipValue": ClipValue, "ClipNorm": ClipNorm,
              "ClipNormPerParameter": ClipNormPerParameter, "AGC": AGC,
              "AGC.eps": lambda v: AGC(0.01, eps=v), "ZClip.z_thresh": lambda v: ZClip(z_thresh=v),
              "ZClip.eps": lambda v: ZClip(eps=v)}


@pytest.mark.parametrize("make", THRESHOLDS.values(), ids=THRESHOLDS.keys())
@pytest.mark.parametrize("value", BAD_THRESHOLDS, ids=repr)
def test_a_clipper_refuses_a_threshold_that_is_not_a_positive_number(make, value):
    with pytest.raises(ConfigError, match="(?i)expected .* got"):
        make(value)


def test_clipper_counts_and_percentiles_are_checked():
    assert ClipNorm(1.0, norm_type=math.inf).norm_type == math.inf  # the max-norm is fine
    for norm_type in (0, -1, math.nan, -math.inf, True, "2"):
        with pytest.raises(ConfigError, match="norm_type"):
            ClipNorm(1.0, norm_type=norm_type)
    for bad in (0, -5, math.nan, 100.5, math.inf, True, "50"):
        with pytest.raises(ConfigError, match="percentile"):
            AutoClip(bad)
    for history in (0, 1.5, math.nan, True, "3"):
        with pytest.raises(ConfigError, match="history"):
            AutoClip(history=history)
    for warmup in (0, 1.5, math.nan, -3, True):
        with pytest.raises(ConfigError, match="warmup_steps"):
            ZClip(warmup_steps=warmup)
    for alpha in (0, 1, math.nan, -0.5, "0.9"):
        with pytest.raises(ConfigError, match="alpha"):
            ZClip(alpha=alpha)
    AutoClip(100.0, history=3)
    ZClip(alpha=0.9, z_thresh=3, warmup_steps=2, eps=1e-8)


SCRIPTS = {
    "ok.py": "import torch\nfrom torch import nn\ndef build():\n    return nn.Sequential("
             "nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(8, 4), "
             "torch.randint(0, 2, (8,))\n",
    "exits.py": "import sys\ndef build():\n    sys.exit(0)\n",
    "exits3.py": "def build():\n    raise SystemExit(3)\n",
    "exits_on_import.py": "import sys\nsys.exit(0)\ndef build():\n    pass\n",
    "raises.py": "def build():\n    return 1 / 0\n",
    "syntax.py": "def build(:\n",
    "recurses.py": "def build():\n    return build()\n",
    "returns_int.py": "def build():\n    return 5\n",
    "returns_numbers.py": "def build():\n    return 5, 6\n",
    "needs_arg.py": "def build(x):\n    return x\n",
    "wrong_inputs.py": "import torch\nfrom torch import nn\ndef build():\n    return "
                       "nn.Linear(4, 2), torch.randn(3, 7)\n",
    "wrong_targets.py": "import torch\nfrom torch import nn\ndef build():\n    return "
                        "nn.Linear(4, 2), torch.randn(3, 4), torch.randn(5, 9)\n",
    "frozen.py": "import torch\nfrom torch import nn\ndef build():\n    m = nn.Linear(4, 2)\n"
                 "    m.requires_grad_(False)\n    return m, torch.randn(3, 4)\n",
    "constant.py": "build = 3\n",
}

# {d}: the inputs folder (a store, scripts, foreign files); the command runs in an empty
# working folder, where default outputs (report.html, gradhealth-lab) would land
BAD_CALLS = {
    "no command": [],
    "unknown command": ["frobnicate"],
    "probe without target": ["probe"],
    "probe unknown case": ["probe", "no-such-case"],
    "probe empty module": ["probe", ":build"],
    "probe empty function": ["probe", "{d}/ok.py:"],
    "probe colon only": ["probe", ":"],
    "probe missing file": ["probe", "{d}/missing.py:build"],
    "probe folder as file": ["probe", "{d}/folder.py:build"],
    "probe folder as module": ["probe", "{d}:build"],
    "probe unknown module": ["probe", "no_such_module_for_gh:build"],
    "probe relative module": ["probe", ".relative:build"],
    "probe not callable": ["probe", "os:sep"],
    "probe constant": ["probe", "{d}/constant.py:build"],
    "probe returns str": ["probe", "os:getcwd"],
    "probe build exits 0": ["probe", "{d}/exits.py:build"],
    "probe build exits 3": ["probe", "{d}/exits3.py:build"],
    "probe exits on import": ["probe", "{d}/exits_on_import.py:build"],
    "probe build raises": ["probe", "{d}/raises.py:build"],
    "probe syntax error": ["probe", "{d}/syntax.py:build"],
    "probe build recurses": ["probe", "{d}/recurses.py:build"],
    "probe returns int": ["probe", "{d}/returns_int.py:build"],
    "probe returns numbers": ["probe", "{d}/returns_numbers.py:build"],
    "probe build needs arg": ["probe", "{d}/needs_arg.py:build"],
    "probe wrong inputs": ["probe", "{d}/wrong_inputs.py:build"],
    "probe wrong targets": ["probe", "{d}/wrong_targets.py:build"],
    "probe frozen model": ["probe", "{d}/frozen.py:build"],
    "probe store as target": ["probe", "{d}/run.db"],
    "probe store as module": ["probe", "{d}/run.db:build"],
    "probe sqlite file as script": ["probe", "{d}/run.py:build"],
    "probe unknown flag": ["probe", "relu-he-30", "--bogus"],
    "probe json without path": ["probe", "relu-he-30", "--json"],
    "probe json into folder": ["probe", "{d}/ok.py:build", "--json", "{d}/folder.py"],
    "probe json over store": ["probe", "{d}/ok.py:build", "--json", "{d}/run.db"],
    "probe json over foreign": ["probe", "{d}/ok.py:build", "--json", "{d}/notes.txt"],
    "probe json unwritable": ["probe", "{d}/ok.py:build", "--json", "/proc/gh/r.json"],
    "probe html into folder": ["probe", "{d}/ok.py:build", "--html", "{d}"],
    "probe html over store": ["probe", "{d}/ok.py:build", "--html", "{d}/run.db"],
    "probe html over foreign": ["probe", "{d}/ok.py:build", "--html", "{d}/notes.txt"],
    "probe html under a file": ["probe", "{d}/ok.py:build", "--html", "{d}/notes.txt/a/r.html"],
    "probe json and html one path": ["probe", "{d}/ok.py:build", "--json", "r.out",
                                     "--html", "r.out"],
    "report without store": ["report"],
    "report missing store": ["report", "{d}/missing.db"],
    "report folder": ["report", "{d}"],
    "report foreign file": ["report", "{d}/notes.txt"],
    "report empty file": ["report", "{d}/empty.db"],
    "report sqlite not a store": ["report", "{d}/foreign.db"],
    "report newer store": ["report", "{d}/newer.db"],
    "report unfinished store": ["report", "{d}/unfinished.db"],
    "report html as store": ["report", "{d}/page.html"],
    "report over itself": ["report", "{d}/run.db", "-o", "{d}/run.db"],
    "report over another store": ["report", "{d}/run.db", "-o", "{d}/other.db", "--force"],
    "report over foreign": ["report", "{d}/run.db", "-o", "{d}/notes.txt"],
    "report into folder": ["report", "{d}/run.db", "-o", "{d}"],
    "report empty output": ["report", "{d}/run.db", "-o", ""],
    "report under a file": ["report", "{d}/run.db", "-o", "{d}/notes.txt/r.html"],
    "report threshold text": ["report", "{d}/run.db", "--clip-threshold", "high"],
    "report threshold nan": ["report", "{d}/run.db", "--clip-threshold", "nan"],
    "report threshold inf": ["report", "{d}/run.db", "--clip-threshold", "inf"],
    "report threshold 1e400": ["report", "{d}/run.db", "--clip-threshold", "1e400"],
    "report threshold zero": ["report", "{d}/run.db", "--clip-threshold", "0"],
    "report threshold negative": ["report", "{d}/run.db", "--clip-threshold=-1"],
    "report two stores": ["report", "{d}/run.db", "{d}/other.db"],
    "lab unknown experiment": ["lab", "--quick", "no-such-experiment"],
    "lab seed -1": ["lab", "--quick", "he2015", "--seed", "-1"],
    "lab seed 2**70": ["lab", "--quick", "he2015", "--seed", "1180591620717411303424"],
    "lab seed 2**32": ["lab", "--quick", "he2015", "--seed", "4294967296"],
    "lab seed text": ["lab", "--quick", "he2015", "--seed", "abc"],
    "lab seed float": ["lab", "--quick", "he2015", "--seed", "1.5"],
    "lab device nonsense": ["lab", "--quick", "he2015", "--device", "nonsense"],
    "lab device missing gpu": ["lab", "--quick", "he2015", "--device", "cuda:99"],
    "lab out is a file": ["lab", "--quick", "he2015", "--out", "{d}/notes.txt"],
    "lab out unwritable": ["lab", "--quick", "he2015", "--out", "/proc/gh/lab"],
    "demo out is a file": ["demo", "--out", "{d}/notes.txt"],
    "demo out unwritable": ["demo", "--out", "/proc/gh/demo"],
    "demo unknown flag": ["demo", "--fast"],
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    for name, text in SCRIPTS.items():
        (d / name).write_text(text)
    (d / "folder.py").mkdir()
    (d / "notes.txt").write_text("my notes\n")
    (d / "empty.db").write_bytes(b"")
    (d / "page.html").write_text("<html><body>hello</body></html>")
    with RunStore.create(d / "run.db", {"model": "m"}) as store:
        store.write_steps({"step": [0, 1], "loss": [1.0, 0.5], "global_norm": [2.0, 1.0]})
    shutil.copy(d / "run.db", d / "other.db")
    shutil.copy(d / "run.db", d / "run.py")
    for name, version in (("newer.db", 99), ("unfinished.db", 0)):
        shutil.copy(d / "run.db", d / name)
        with sqlite3.connect(d / name) as conn:
            conn.execute(f"PRAGMA user_version = {version}")
    with sqlite3.connect(d / "foreign.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    return d


def tree(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folders`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for folder in folders for p in [folder, *folder.rglob("*")]}


def test_there_are_at_least_50_distinct_bad_calls():
    assert len(BAD_CALLS) >= 50
    assert len({tuple(argv) for argv in BAD_CALLS.values()}) == len(BAD_CALLS)


@pytest.mark.parametrize("argv", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_a_bad_command_line_exits_2_with_one_paragraph_and_writes_nothing(
        argv, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")
    before = tree(inputs, tmp_path)
    try:
        code = main([a.format(d=inputs) for a in argv])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    said = (out + err).strip()
    assert code == 2, said
    assert said and "Traceback" not in said and "\n\n" not in said, said
    lines = said.splitlines()  # unwrapped (COLUMNS): the message alone, nothing before it
    assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("usage:")), said
    assert tree(inputs, tmp_path) == before, said


def test_a_build_function_that_exits_is_not_a_healthy_probe(inputs, capsys):
    assert main(["probe", f"{inputs}/exits.py:build"]) == 2
    said = " ".join(capsys.readouterr().out.split())
    assert "healthy" not in said
    assert "build() exited (SystemExit: 0) instead of returning" in said
