"""Integrations import their frameworks lazily and name the extra when one is missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from gradhealth.integrations._optional import MissingDependencyError, base_class, load


def test_a_missing_framework_names_the_extra_at_construction():
    Base = base_class(("no_such_framework_xyz",), "Callback", feature="the Frob callback",
                      extra="frob")

    class Adapter(Base):
        pass

    with pytest.raises(MissingDependencyError) as err:
        Adapter()
    assert isinstance(err.value, ImportError)
    assert "pip install 'gradhealth[frob]'" in str(err.value)
    assert "no_such_framework_xyz" in str(err.value)
    with pytest.raises(MissingDependencyError, match=r"gradhealth\[frob\]"):
        load(("no_such_framework_xyz",), feature="the Frob callback", extra="frob")


def test_the_first_importable_module_wins():
    assert load(("no_such_framework_xyz", "json"), feature="f", extra="e").__name__ == "json"


def test_adapters_import_their_framework_only_when_used():
    code = textwrap.dedent("""
        import sys
        import gradhealth, gradhealth.integrations
        import gradhealth.integrations.keras, gradhealth.integrations.keras.remedies
        heavy = ("lightning", "pytorch_lightning", "transformers", "keras", "tensorboard")
        print(sorted(m for m in heavy if m in sys.modules))
        print(sorted(gradhealth.integrations.__all__))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    loaded, names = out.stdout.splitlines()
    assert loaded == "[]"  # importing the keras adapter does not import keras either
    assert "GradHealthCallback" in names and "TensorBoardExporter" in names
