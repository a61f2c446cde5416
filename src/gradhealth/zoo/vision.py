"""torchvision's model constructors beside a CPU build of torch.

The torchvision wheel on PyPI that pairs with the project's pinned torch (0.28.0 for
torch 2.13.0; it declares ``torch==2.13.0``, which the CPU build ``2.13.0+cpu`` satisfies,
so ``pip install -e ".[test]"`` pulls nothing more) is built against CUDA: its C++
extension (``torchvision/_C.so``) needs ``libtorch_cuda`` and fails to load beside a CPU
torch. torchvision then still imports, except that it registers fake kernels for two of
its operators (``torchvision::nms``, ``torchvision::qnms``) without checking that they
exist, and that import raises "operator torchvision::nms does not exist".

``ensure_operators`` loads the real extension where it loads (a CUDA torch), and
otherwise declares stand-in schemas for those operators, whose kernels raise. The
pure-Python model constructors (ResNet, VGG, MobileNet, EfficientNet, DenseNet, ConvNeXt,
ViT, ...) need none of its C++ operators. Hugging Face ``transformers`` imports
torchvision whenever it is installed, so ``import gradhealth`` installs
``install_import_guard``: an import hook that runs ``ensure_operators`` just before the
first ``import torchvision`` of the process, and does nothing else (it never imports
torchvision itself, nor torch's extension, until then).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from typing import Any

import torch

_STAND_INS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
              "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_LIBRARY: list[Any] = []  # the stand-ins' torch.library.Library, kept alive


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    folder = list(spec.submodule_search_locations)[0]
    for name in os.listdir(folder):
        if name.startswith("_C.") and name.endswith((".so", ".pyd")):
            try:
                torch.ops.load_library(os.path.join(folder, name))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def _missing(name: str):
    def kernel(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError(f"torchvision::{name} needs torchvision's C++ extension, which "
                           f"does not load beside this build of torch")
    return kernel


def ensure_operators() -> None:
    """Make ``import torchvision`` work: its operators real, or declared as stand-ins."""
    _remove_guard()  # the look-up below would run it again
    if _LIBRARY or importlib.util.find_spec("torchvision") is None or _extension_loads():
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _STAND_INS:
        name = schema.split("(")[0]
        lib.define(schema)
        lib.impl(name, _missing(name), "CompositeExplicitAutograd")
    _LIBRARY.append(lib)


class _ImportGuard(importlib.abc.MetaPathFinder):
    """Runs ``ensure_operators`` before the first import of torchvision, then leaves."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "torchvision":
            _remove_guard()
            try:
                ensure_operators()
            except Exception:  # never break an import over this: torchvision says why
                pass
        return None  # the ordinary finders import it


def _remove_guard() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _ImportGuard)]


def install_import_guard() -> None:
    """Make a later ``import torchvision`` (ours or a library's) work beside a CPU torch."""
    if "torchvision" in sys.modules or any(isinstance(f, _ImportGuard) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _ImportGuard())


def import_torchvision() -> Any:
    """``torchvision``, imported (raises ImportError when it is not installed)."""
    ensure_operators()
    import torchvision

    return torchvision
