"""The reports of a real model (issue 17): a Hugging Face Trainer run on GPT-2 from a
config. Every layer of the store is drawn (the tied lm_head included), the activation
panel holds activations only (GPT-2's NewGELUActivation among them), the Trainer's
post-clip norm is said to be post-clip, and Chromium renders figures that are not blank."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the test extra")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from browser import CHROMIUM, CONSOLE, chromium_dom, chromium_log, pixels  # noqa: E402
from gradhealth import load, probe  # noqa: E402
from gradhealth.integrations.transformers import GradHealthTrainerCallback  # noqa: E402
from gradhealth.report import rundata  # noqa: E402
from gradhealth.report.html import render_probe_html, render_run_html, write_html  # noqa: E402
from gradhealth.report.plots.distributions import symlog_scale  # noqa: E402
from gradhealth.report.plots.heatmap import _edges  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, length: int = 12, vocab: int = 80):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=80, n_positions=16))


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpt2")
    health = GradHealthTrainerCallback(store=tmp / "run.db", flush_every=2, sample_every=2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp / "out"), max_steps=6, per_device_train_batch_size=8,
        learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, log_level="error")  # max_grad_norm 1.0
    transformers.Trainer(model=gpt2(), args=args, train_dataset=Tokens(),
                         callbacks=[health]).train()
    return load(tmp / "run.db")


def holders(run) -> set[str]:
    return set(rundata.param_layers(run) or ()) | set(rundata.tied_layers(run))


def test_every_layer_of_the_store_is_in_the_per_layer_figures(trainer_run):
    run = trainer_run
    assert rundata.tied_layers(run) == {"lm_head": "transformer.wte"}
    for stat in rundata.heatmap_stats(run):
        _, names, values = rundata.layer_matrix(run, stat)
        assert set(names) == holders(run) and "lm_head" in names, stat
    _, names, wgrad = rundata.layer_matrix(run, "weight_grad_norm")
    # the tied weight's gradient is one tensor's: lm_head's column is wte's
    np.testing.assert_array_equal(wgrad[:, names.index("lm_head")],
                                  wgrad[:, names.index("transformer.wte")])
    quantiles = rundata.quantile_rows(run)
    assert quantiles is not None  # GPT-2's NewGELUActivation is an activation
    assert quantiles[0] == [n for n in quantiles[0] if n.endswith("mlp.act")]
    assert all(q is not None for q in quantiles[1])


def test_the_trainers_clip_is_said(trainer_run):
    view = rundata.steps_view(trainer_run, None)
    assert view.clipped_before == 1.0
    assert np.all(view.global_norm <= 1.0 + 1e-5)  # recorded after the Trainer's clip


def test_figures_read_on_any_scale():
    ordinary = [(-1.0, -0.5, 0.0, 0.5, 1.0), (-2.0, -1.0, 0.1, 1.0, 2.0)]
    assert symlog_scale(ordinary) is None
    assert symlog_scale(ordinary + [(1e15, 2e15, 3e15, 4e15, 4.2e15)]) == 4.0  # median spread
    assert _edges(np.array([0.0, 10.0, 20.0]))[0] == 0.0  # the axis does not start at -5


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_pages_of_a_real_model_render_with_every_layer_in_chromium(trainer_run, tmp_path):
    pytest.importorskip("PIL", reason="Pillow (a matplotlib dependency) checks the screenshot")
    model = gpt2()
    ids = Tokens().ids[:4]
    report = probe(model, {"input_ids": ids, "labels": ids})
    pages = {"probe": (render_probe_html(report), {s.name for s in report.flow()}),
             "run": (render_run_html(trainer_run), holders(trainer_run))}
    for kind, (text, expected) in pages.items():
        page = write_html(tmp_path / f"{kind}.html", text)
        shot = tmp_path / f"{kind}.png"
        assert CONSOLE.findall(chromium_log(page, shot, tmp_path)) == []
        px = pixels(shot)
        assert (px.min(axis=2) < 245).mean() > 0.05, f"the {kind} page is blank"
        dom = chromium_dom(page, tmp_path)
        figures = re.findall(r"<figure>(.*?)</figure>", dom, re.S)
        assert len(figures) >= 2, kind
        for fig in figures:  # each figure is an image with data in it, not an empty frame
            src = re.search(r'src="data:image/png;base64,([^"]+)"', fig)
            assert src and len(src.group(1)) > 5000, (kind, fig[:200])
        per_layer = [f for f in figures if "gradient flow" in f or "heatmap" in f]
        assert per_layer, kind
        for fig in per_layer:
            drawn = set(re.findall(r"<li><code class=\"name\">([^<]*)</code></li>", fig))
            assert drawn == expected, (kind, expected ^ drawn)
        assert "lm_head" in dom
    assert "recorded AFTER a clip at max_grad_norm 1" in pages["run"][0]
