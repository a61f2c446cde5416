"""Resolve a command-line TARGET to (model, inputs, targets).

A TARGET is a zoo case name (``relu-glorot-30``), or ``path/to/file.py:function`` or
``package.module:function`` naming a function that takes no argument and returns
``(model, inputs)`` or ``(model, inputs, targets)``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from gradhealth import zoo
from gradhealth.errors import ConfigError


def resolve(target: str) -> tuple[Any, Any, Any]:
    names = [c.name for c in zoo.CASES]
    if ":" not in target:
        if target in names:
            return zoo.case(target).build()
        if target.endswith(".py") or os.sep in target or "/" in target:
            raise ConfigError(
                f"expected FILE.py:FUNCTION (the function that returns model, inputs, "
                f"targets, after a colon), got {target!r} without one; e.g. "
                f"gradhealth probe {target}:build")
        close = difflib.get_close_matches(target, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"expected a zoo case or FILE.py:FUNCTION / package.module:FUNCTION, got "
            f"{target!r}, which is neither{hint}; gradhealth probe --list lists the zoo")
    where, _, func_name = target.rpartition(":")
    if not where or not func_name.isidentifier():
        raise ConfigError(f"expected FILE.py:FUNCTION or package.module:FUNCTION (a module or "
                          f"file before the colon, a function name after it), got {target!r}")
    module = _load(where)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"expected a function {func_name!r} in {where}, found none; "
                          f"define def {func_name}(): return model, inputs, targets")
    built = _run_user_code(f"{where}:{func_name}()", func)
    if not isinstance(built, tuple) or len(built) not in (2, 3):
        raise ConfigError(f"expected {func_name}() to return (model, inputs) or (model, "
                          f"inputs, targets), got {type(built).__name__}")
    return built if len(built) == 3 else (*built, None)


def _run_user_code(what: str, code: Any) -> Any:
    """Run the user's file or function; an exception in it becomes one clear line naming
    where it was raised (the innermost frame), not a traceback through gradhealth."""
    try:
        return code()
    except SystemExit as err:  # sys.exit() in a build function must not pass as a verdict
        raise ConfigError(f"{what} exited (SystemExit: {err.code!r}) instead of returning; "
                          f"nothing was probed. Remove the exit (keep script code under "
                          f"if __name__ == '__main__':) and run again") from None
    except Exception as err:
        raise ConfigError(f"{what} raised {type(err).__name__}: {err}{_where(err)}; fix it "
                          f"and run again") from err


def _where(err: BaseException) -> str:
    """" (at FILE:LINE)": where the user's code raised ``err`` (the innermost frame outside
    gradhealth and importlib; a syntax error's own position); "" when that is nowhere."""
    if isinstance(err, SyntaxError) and err.filename:
        return f" (at {err.filename}:{err.lineno})"
    ours = str(Path(__file__).parent.parent)
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith((ours, "<frozen"))]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _load(where: str):
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"expected a Python file at {where}, found none")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        # a .py file always gets a spec with a source loader; the check names the file
        # should importlib ever answer none
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {where} as a Python module")
        loader = spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        _run_user_code(f"importing {where}", lambda: loader.exec_module(module))
        return module
    if not all(part.isidentifier() for part in where.split(".")):
        raise ConfigError(f"expected a FILE.py path or an importable package.module before the "
                          f"colon, got {where!r}; a Python file must end in .py")
    imported = _run_user_code(f"importing {where}", lambda: _import(where))
    if isinstance(imported, ImportError):
        raise ConfigError(f"cannot import {where!r}: {imported}; give a FILE.py path or an "
                          f"importable module") from imported
    return imported


def _import(where: str) -> Any:
    """The module, or the ImportError saying why there is none (the module's own code
    raising is reported by ``_run_user_code``)."""
    try:
        return importlib.import_module(where)
    except ImportError as err:
        return err
