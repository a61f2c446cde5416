"""The gradhealth command line."""

import json

from gradhealth.cli import main


def test_probe_zoo_case_exit_code_and_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["probe", "relu-glorot-30", "--json", str(out)]) == 1
    data = json.loads(out.read_text())
    assert data["findings"][0]["kind"] == "vanishing"
    assert "vanishing" in capsys.readouterr().out
    assert main(["probe", "relu-he-30"]) == 0


def test_probe_user_file(tmp_path, capsys):
    script = tmp_path / "mine.py"
    script.write_text(
        "import torch\nfrom torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "
        "torch.randn(32, 4), torch.randint(0, 2, (32,))\n")
    assert main(["probe", f"{script}:build"]) == 0
    assert "healthy" in capsys.readouterr().out


def test_bad_target_is_a_clear_error(capsys):
    assert main(["probe", "relu-glorot-3"]) == 2
    err = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "expected a zoo case" in err and "did you mean relu-glorot-30" in err
    assert "--list" in err and "sigmoid-default-10" not in err  # not the whole zoo


def test_a_file_without_its_function_says_so_first(capsys):
    """Issue 17: `gradhealth probe file.py` printed the whole zoo before saying what was
    wrong."""
    assert main(["probe", "model.py"]) == 2
    err = " ".join(capsys.readouterr().out.split())
    assert "expected FILE.py:FUNCTION" in err and "gradhealth probe model.py:build" in err
    assert "relu-glorot-30" not in err


def test_list(capsys):
    assert main(["probe", "--list"]) == 0
    assert "rnn-exploding" in capsys.readouterr().out


def test_user_code_that_raises_is_one_clear_line(tmp_path, capsys):
    raises = tmp_path / "raises.py"
    raises.write_text("def build():\n    return 1 / 0\n")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_package_for_gradhealth\n")
    assert main(["probe", f"{raises}:build"]) == 2
    err = " ".join(capsys.readouterr().out.split())
    assert "build() raised ZeroDivisionError: division by zero" in err
    assert f"(at {raises}:2)" in err and "Traceback" not in err
    assert main(["probe", f"{broken}:build"]) == 2
    err = " ".join(capsys.readouterr().out.split())
    assert "raised ModuleNotFoundError" in err and f"(at {broken}:1)" in err


def test_an_unwritable_json_path_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "missing" / "r.json"
    assert main(["probe", "relu-he-30", "--json", str(target)]) == 2
    assert "cannot write the JSON report" in " ".join(capsys.readouterr().out.split())
    assert not (tmp_path / "missing").exists()
