"""The lab: every experiment's quick run reproduces its expected outcome, writes a real
figure, and the command exits non-zero when an outcome is not reproduced.

Marked slow: the whole file takes about 5 minutes on an idle 2-core CPU (the eight quick
runs are most of it: wortsman2023's 12 transformer runs about 3.5 minutes, the seven
others 65 s) and 6-8 minutes when the machine is busy.
"""

import io
import json
import math

import numpy as np
import pytest
import torch
from rich.console import Console

from gradhealth.cli import main
from gradhealth.errors import DataNotFoundError
from gradhealth.lab import EXPERIMENTS, load_experiment, resolve_names, run_lab
from gradhealth.lab import data as lab_data
from gradhealth.lab.data import fashion_mnist
from gradhealth.lab.experiment import Check, Outcome, choose_device, fmt

pytestmark = pytest.mark.slow


def _console() -> Console:
    return Console(file=io.StringIO(), width=140, color_system=None)


def _fashion_mnist_present() -> bool:
    try:
        lab_data.load_fashion_mnist(limit=1)
    except DataNotFoundError:
        return False
    return True


def _figure_is_real(path) -> None:
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > 20_000
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert float(np.std(pixels[..., :3])) > 0.05  # not blank: curves, axes, text


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_run_reproduces_the_published_outcome(name, tmp_path):
    if name == "article" and not _fashion_mnist_present():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    console = _console()
    rc = run_lab([name], quick=True, out_dir=tmp_path, console=console)
    text = console.file.getvalue()
    assert rc == 0, text
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["passed"] and result["checks"], text
    assert all(c["passed"] for c in result["checks"])
    assert all(len(row) == len(result["columns"]) for row in result["rows"])
    columns = [c.lower() for c in result["columns"]]
    assert any("published" in c for c in columns) and any("ours" in c for c in columns)
    _figure_is_real(tmp_path / f"{name}.png")
    assert "reproduced" in text and "NOT REPRODUCED" not in text


def test_cli_exits_nonzero_when_an_outcome_is_not_reproduced(tmp_path, monkeypatch, capsys):
    from gradhealth.lab import pascanu2013

    monkeypatch.setattr(pascanu2013, "LAW_TOLERANCE", 0.0)  # no measurement can pass this
    threads = torch.get_num_threads()
    rc = main(["lab", "pascanu2013", "--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # the runner's one-thread setting is undone
    assert rc == 1
    assert "NOT REPRODUCED" in out and "FAIL" in out
    assert json.loads((tmp_path / "pascanu2013.json").read_text())["passed"] is False
    assert (tmp_path / "pascanu2013.png").is_file()  # the figure is still written


def test_cli_lists_and_rejects_unknown_names(capsys):
    assert main(["lab", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)
    assert main(["lab", "no-such-experiment"]) == 2
    err = capsys.readouterr().out
    assert "no-such-experiment" in err and "edge-of-chaos" in err


@pytest.mark.parametrize("device, says", [
    ("gpu", "expects a torch device"),
    pytest.param("cuda", "sees no CUDA device", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="CUDA is present here")),
    ("cuda:99" if torch.cuda.is_available() else "cuda:1",
     "CUDA device(s) here" if torch.cuda.is_available() else "sees no CUDA device"),
])
def test_cli_rejects_a_device_it_cannot_use_before_writing_anything(tmp_path, capsys, device,
                                                                      says):
    out = tmp_path / "out"
    assert main(["lab", "he2015", "--device", device, "--out", str(out)]) == 2
    assert says in " ".join(capsys.readouterr().out.split())
    assert not out.exists()


def test_missing_fashion_mnist_is_reported_and_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    monkeypatch.delenv(lab_data.FASHION_MNIST_ENV, raising=False)
    console = _console()
    assert run_lab(["article"], quick=True, out_dir=tmp_path / "out", console=console) == 1
    text = console.file.getvalue()
    assert "not run, its data set is missing" in text
    assert "apt-get install dataset-fashion-mnist" in text
    assert "NOT RUN (data missing)" in text


def test_batchnorm_falls_back_to_digits_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    monkeypatch.delenv(lab_data.FASHION_MNIST_ENV, raising=False)
    console = _console()
    assert run_lab(["batchnorm"], quick=True, out_dir=tmp_path, console=console) == 0
    text = " ".join(console.file.getvalue().split())
    assert "Fashion-MNIST not found" in text and "digits instead" in text


# ------------------------------------------------------------------ pure pieces


def test_edge_of_chaos_mean_field_matches_the_published_critical_point():
    from gradhealth.lab import edge_of_chaos as eoc

    assert eoc.critical_sw2() == pytest.approx(1.761, abs=5e-4)
    assert eoc.chi_1(eoc.critical_sw2()) == pytest.approx(1.0, abs=1e-9)
    # Ordered phase: c* = 1 and chi_c = chi_1; chaotic phase: c* < 1.
    assert eoc.c_star(1.2) == 1.0 and eoc.chi_c(1.2) == pytest.approx(eoc.chi_1(1.2))
    assert eoc.c_star(3.0) < 1.0
    # q* is a fixed point of its own map.
    q = eoc.q_star(2.0)
    z, w = np.polynomial.hermite_e.hermegauss(81)
    assert q == pytest.approx(2.0 * np.sum(w / w.sum() * np.tanh(np.sqrt(q) * z) ** 2) + 0.05)


def test_linear_rnn_jacobian_is_rho_to_the_t():
    from gradhealth.lab.pascanu2013 import autograd_norm, jacobian_norms

    for rho in (0.9, 1.1):
        assert autograd_norm(rho, 50, 20, seed=3) == pytest.approx(rho**50, rel=1e-10)
        assert jacobian_norms(rho, 50, 20, seed=3, tanh=False)[-1] == pytest.approx(
            rho**50, rel=1e-10)


def test_keras_he_normal_has_the_keras_variance():
    from gradhealth.lab.article import keras_he_normal_

    torch.manual_seed(0)
    w = keras_he_normal_(torch.empty(300, 784))
    assert float(w.var()) == pytest.approx(2.0 / 784, rel=0.02)
    assert float(w.abs().max()) <= 2 * math.sqrt(2.0 / 784) / 0.8796 + 1e-6


def test_outcome_without_checks_is_not_reproduced_and_fmt():
    assert not Outcome("x", "t", ("a",), [], []).passed
    assert Outcome("x", "t", ("a",), [], [Check("c", "m", True)]).passed
    assert fmt(None) == "-" and fmt(float("nan")) == "nan" and fmt(0.000123456) == "0.000123"
    assert choose_device(quick=True).type == "cpu"
    assert resolve_names([]) == list(EXPERIMENTS)
    assert all(load_experiment(n).NAME == n for n in EXPERIMENTS)


def test_cli_rejects_an_out_path_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert main(["lab", "he2015", "--quick", "--out", str(taken)]) == 2
    assert "expected --out to name a folder" in " ".join(capsys.readouterr().out.split())
    assert taken.read_text() == "mine"
