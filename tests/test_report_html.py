"""The HTML report: self-contained, escaped, complete, written atomically, and rendered by
a real browser (Debian's headless Chromium) without a blank page or a console error."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradhealth import Finding, RunStore, load, probe
from gradhealth.cli import main
from gradhealth.report import plots, rundata
from gradhealth.report.html import (
    Section,
    render_comparison_html,
    render_probe_html,
    render_run_html,
    write_html,
)
from gradhealth.zoo import case

EVIL = "<script>alert(1)</script>"
EVIL_TEXT = "&lt;script&gt;alert(1)&lt;/script&gt;"
LAYERS = ["0", "2", EVIL, "6"]


class EvilNet(nn.Module):
    """A sick sigmoid stack whose module names are markup, mathtext and quotes."""

    def __init__(self):
        super().__init__()
        names = ["a", EVIL, "$x$ & \"q'", "b", "c", "d", "e", "f"]
        for i, name in enumerate(names):
            self.add_module(name, nn.Linear(16 if i else 8, 16 if i < len(names) - 1 else 3))
            if i < len(names) - 1:
                self.add_module(f"act_{i}", nn.Sigmoid())

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x


@pytest.fixture(scope="module")
def sick_report():
    torch.manual_seed(0)
    model, x, y = case("sigmoid-default-10").build()
    return probe(model, x, y)


@pytest.fixture(scope="module")
def evil_report():
    torch.manual_seed(0)
    return probe(EvilNet(), torch.randn(64, 8), torch.randint(0, 3, (64,)))


def _finding(module: str, severity: str = "critical") -> Finding:
    return Finding(kind="vanishing", module=module, severity=severity,
                   evidence={"grad_ratio": 1e-7, "threshold": 0.01, "note": EVIL},
                   remedy=f"re-initialise `{module}` with He init <b>now</b>",
                   message=f"the gradient reaching `{module}` vanished", modules=(module, "0"))


def make_store(path: Path, n: int = 120) -> Path:
    """A run as gh.watch writes one: every-step weight-gradient norms, sampled dL/d(out)
    RMS, a spike, a non-finite step, clipping, a skipped step and a finding."""
    rng = np.random.default_rng(0)
    steps = np.arange(n)
    norm = np.exp(rng.normal(0.0, 0.3, n))
    norm[40] = 60.0
    norm[70] = np.nan
    meta = {"kind": "watch", "model": "EvilNet", "modules": LAYERS, "optimizer": "SGD",
            "clip_threshold": 2.0, "config": {"sample_every": 10, "flush_every": 50}}
    with RunStore.create(path, meta) as store:
        store.write_steps({"step": steps, "loss": 2.3 * np.exp(-steps / 60.0),
                           "global_norm": norm, "nonfinite": (~np.isfinite(norm)).astype(int),
                           "skipped": (steps == 70).astype(int), "clip_pre_norm": norm,
                           "clipped": (np.nan_to_num(norm, nan=0.0) > 2.0).astype(int)})
        depth = np.exp(-1.5 * np.arange(len(LAYERS)))[::-1]
        wg = depth[None, :] * np.exp(rng.normal(0, 0.1, (n, len(LAYERS))))
        store.write_layer_stats(steps, LAYERS, ["weight_grad_norm"], wg[:, :, None])
        sampled = steps[::10]
        names = ["", *LAYERS, "act"]  # sampled statistics cover every module
        ones = np.ones((len(sampled), 1))
        rms = np.concatenate([ones, wg[::10] / 10, ones], axis=1)
        store.write_layer_stats(sampled, names, ["grad_rms"], rms[:, :, None])
        store.write_findings([_finding(EVIL)], 40)
        store.write_skipped(70, "nonfinite: skipped by the guard", EVIL)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("run") / "run.db")


def _self_contained(page: str) -> None:
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"\w+://|//", text)  # no URL, not even a protocol-relative one
    for attr in re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attr.startswith(("data:image/png;base64,", "#")), attr
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.I)
    assert "url(" not in page and "@import" not in page
    assert "default-src 'none'" in page  # the browser refuses any fetch all the same


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)",
                                                    page)]


def _ids_unique(page: str) -> None:
    ids = re.findall(r'\bid="([^"]*)"', page)
    assert len(ids) == len(set(ids))
    for anchor in re.findall(r'href="#([^"]*)"', page):
        assert anchor in ids


def test_probe_page_is_complete_and_self_contained(sick_report):
    page = render_probe_html(sick_report, title="probe <of> sigmoid")
    _self_contained(page)
    _ids_unique(page)
    for anchor in ("summary", "flow", "findings", "activations", "layers"):
        assert f'id="{anchor}"' in page
    assert "<title>probe &lt;of&gt; sigmoid</title>" in page
    assert "problem(s) found: vanishing" in page and "remedy:" in page
    assert "grad_ratio_input_to_output" in page  # evidence, with its threshold
    images = _pngs(page)
    assert len(images) == 2 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in images)


def test_names_are_escaped_everywhere(evil_report, store):
    pages = [render_probe_html(evil_report), render_run_html(load(store), report=evil_report)]
    for page in pages:
        _self_contained(page)
        assert EVIL not in page and "<b>now</b>" not in page
        assert EVIL_TEXT in page
    assert "&lt;b&gt;now&lt;/b&gt;" in pages[1]  # remedies are text; `code` spans still work
    assert f"<code>{EVIL_TEXT}</code>" in pages[1]
    assert "$x$ &amp; &quot;q&#x27;" in pages[0]


def test_run_page_sections_and_numbers(store):
    page = render_run_html(load(store))
    _self_contained(page)
    _ids_unique(page)
    for anchor in ("summary", "training", "findings", "skipped"):
        assert f'id="{anchor}"' in page
    assert "gradhealth run report: run.db" in page
    assert "step 40" in page  # the finding's step
    assert "nonfinite: skipped by the guard" in page
    assert "heatmap of grad_rms per layer" in page and "heatmap of weight_grad_norm" in page
    # global norm + loss, flow of the run, two heatmaps; no percentiles in this store
    assert len(_pngs(page)) == 4
    assert "not recorded in this store" not in page  # meta["clip_threshold"] was used


def test_run_page_with_report_adds_probe_views(store, sick_report):
    page = render_run_html(load(store), report=sick_report, title="t")
    for anchor in ("flow", "activations", "layers", "training"):
        assert f'id="{anchor}"' in page
    assert "<h3>probe</h3>" in page


def test_comparison_page(store, sick_report, tmp_path):
    healthy = probe(*case("tanh-glorot-10").build()[:3])
    other = make_store(tmp_path / "after.db", n=90)
    page = render_comparison_html(
        Section("before <sick>", sick_report, load(store)),
        Section("after", healthy, load(other), notes=["swapped `Sigmoid` for `ReLU`"]))
    _self_contained(page)
    _ids_unique(page)
    assert "before &lt;sick&gt;" in page and "<code>Sigmoid</code>" in page
    assert "gradient flow per layer before and after" in page
    assert "loss over steps before and after" in page
    assert 'id="before-flow"' in page and 'id="after-flow"' in page


def test_comparison_of_reports_only(sick_report):
    page = render_comparison_html(Section("a", sick_report), Section("b", sick_report))
    _self_contained(page)
    assert len(_pngs(page)) == 1 + 2 * 2  # overlay + (flow, distributions) per side


def test_write_html_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "report.html"
    write_html(path, "old")
    seen = []
    real = os.replace

    def replace(src, dst):
        seen.append((Path(dst).read_text(), Path(src).read_text()))  # before the swap
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        write_html(path, "new" * 1000)
    assert seen == [("old", "new" * 1000)]
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == [path.name]
    monkeypatch.setattr(os, "replace", real)
    write_html(path, "new")
    assert path.read_text() == "new" and len(list(path.parent.iterdir())) == 1


def test_plots_survive_degenerate_data():
    # filterwarnings=error: no RuntimeWarning from log10(0), no glyph or mathtext warning
    nan, inf = float("nan"), float("inf")
    names = ["$a$", "b", "c"]
    for values in ([nan, 0.0, None], [1.0, inf, 1e-30], []):
        series = [plots.Series("s", names[: len(values)], values)]
        assert plots.gradient_flow_png(series, sick={"b": "warning"}).startswith(b"\x89PNG")
    assert plots.heatmap_png([0, 1], names, np.full((2, 3), nan)).startswith(b"\x89PNG")
    assert plots.heatmap_png([5], names, np.array([[0.0, 1.0, inf]])).startswith(b"\x89PNG")
    wide = np.exp(np.random.default_rng(0).normal(size=(2000, 300)))
    png = plots.heatmap_png(np.arange(2000), [f"l.{i}" for i in range(300)], wide)
    assert png.startswith(b"\x89PNG")
    assert plots.distributions_png(names, [None, (nan,) * 5, (0, 0, 0, 1, 2)]).startswith(b"\x89")
    empty = plots.Steps(step=np.arange(3), global_norm=np.full(3, nan))
    assert plots.global_norm_png(empty).startswith(b"\x89PNG")
    a = plots.gradient_flow_png([plots.Series("s", names, [1.0, 0.1, 0.01])])
    assert a == plots.gradient_flow_png([plots.Series("s", names, [1.0, 0.1, 0.01])])


def test_rundata_prefers_gradient_statistics(store, tmp_path):
    run = load(store)
    assert rundata.heatmap_stats(run) == ["grad_rms", "weight_grad_norm"]
    steps, names, values = rundata.layer_matrix(run, "grad_rms")
    assert names == LAYERS and len(steps) == 12 and np.isfinite(values).all()
    assert rundata.clip_threshold(run) == 2.0 and rundata.clip_threshold(run, 0.5) == 0.5
    view = rundata.steps_view(run, None)
    assert view.skipped_steps == [70] and view.nonfinite[70] == 1
    with RunStore.create(tmp_path / "other.db", {}) as s:
        s.write_steps({"step": [0, 1], "global_norm": [1.0, 2.0]})
        s.write_layer_stats([0, 1], ["x"], ["out_rms", "my_grad"], np.ones((2, 1, 2)))
    other = load(tmp_path / "other.db")
    assert rundata.heatmap_stats(other) == ["my_grad"]
    assert rundata.clip_threshold(other) is None
    page = render_run_html(other)  # a sparse store still renders
    _self_contained(page)
    assert "not recorded in this store" in page


def test_cli_report_and_probe_html(store, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(store), "-o", str(out)]) == 0
    assert EVIL_TEXT in out.read_text() and f"wrote {out}" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing.db"), "-o", str(out)]) == 2
    assert "no run store at" in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("not a store")
    assert main(["report", str(tmp_path / "notes.txt"), "-o", str(out)]) == 2
    assert "is not a gradhealth run store" in " ".join(capsys.readouterr().out.split())
    assert main(["report", str(store), "-o", str(tmp_path)]) == 2  # a folder, not a file
    assert "is a folder; give a file path" in " ".join(capsys.readouterr().out.split())
    probe_out = tmp_path / "p.html"
    assert main(["probe", "sigmoid-default-10", "--html", str(probe_out)]) == 1
    assert 'id="flow"' in probe_out.read_text()


# -- a real browser ------------------------------------------------------------------------
from browser import CHROMIUM, CONSOLE  # noqa: E402
from browser import chromium_log as _chromium
from browser import pixels as _pixels


def _near(px: np.ndarray, hex_colour: str, tol: int = 40) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(px.astype(int) - rgb).sum(axis=2) < tol).sum())


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/run installs it)")
@pytest.mark.slow
def test_pages_render_in_headless_chromium(sick_report, store, tmp_path):
    pytest.importorskip("PIL", reason="Pillow (a matplotlib dependency) checks the screenshot")
    control = tmp_path / "control.html"
    control.write_text("<!DOCTYPE html><p>x</p><script>throw new Error('control-boom')</script>")
    log = _chromium(control, tmp_path / "control.png", tmp_path)
    assert any("control-boom" in m for m in CONSOLE.findall(log)), (
        "Chromium's console log did not show the control page's error; the console check "
        f"cannot be trusted with this build:\n{log[-3000:]}")

    probe_page = render_probe_html(sick_report)
    tampered = write_html(tmp_path / "tampered.html", probe_page.replace(
        "</main>", '<img src="https://example.invalid/x.png"></main>'))
    log = _chromium(tampered, tmp_path / "tampered.png", tmp_path)
    assert any("Content Security Policy" in m and "example.invalid" in m
               for m in CONSOLE.findall(log)), "the page's CSP did not refuse an external image"

    pages = {"probe": probe_page, "run": render_run_html(load(store), report=sick_report)}
    # colours only the figures draw: the |dL/dW| series green, viridis' top (heatmap)
    marker = {"probe": "#2e7d32", "run": "#fde725"}
    for kind, html_text in pages.items():
        page = write_html(tmp_path / f"{kind}.html", html_text)
        shot = tmp_path / f"{kind}.png"
        messages = CONSOLE.findall(_chromium(page, shot, tmp_path))
        assert messages == [], f"console messages on the {kind} page: {messages}"
        px = _pixels(shot)
        assert px.shape == (2000, 1280, 3)
        non_white = (px.min(axis=2) < 245).mean()
        colours = len(np.unique(px.reshape(-1, 3), axis=0))
        assert non_white > 0.05 and colours > 500, (kind, non_white, colours)
        assert _near(px, marker[kind]) > 50, f"no figure visible on the {kind} page"
