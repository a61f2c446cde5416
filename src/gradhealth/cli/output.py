"""Where the command line may write a report, checked before any work is done.

A report never replaces what it was made from, nor a run store of any run, nor a file
that is not a gradhealth report of the same kind unless ``--force`` says so; a report
written earlier by gradhealth is replaced (commands can be re-run). Writes are atomic
(a temporary file in the same folder, then a rename), and a failed write leaves no
temporary file behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from gradhealth.errors import ConfigError
from gradhealth.report.html import GENERATOR
from gradhealth.store.format import is_run_store

_PEEK = 4096  # an HTML report names its generator in the first lines of its head


def check_output(path: str | os.PathLike, kind: str, flag: str, *,
                 inputs: Iterable[str | os.PathLike] = (), force: bool = False) -> Path:
    """``path`` if a ``kind`` ("html" or "json") report may be written there; a
    ConfigError saying why not and what to do otherwise."""
    out = Path(path)
    for source in inputs:
        if out.exists() and Path(source).exists() and out.samefile(source):
            raise ConfigError(f"{flag} {out} is the run store this report is made from; "
                              f"give the report its own path, e.g. {flag} report.html")
    if out.is_dir():
        raise ConfigError(f"{flag} {out} is a folder; give a file path, e.g. "
                          f"{flag} {out / ('report.' + kind)}")
    if not out.exists():
        _check_folder(out, kind, flag)
        return out
    if is_run_store(out):
        raise ConfigError(f"{flag} {out} is a gradhealth run store; a report never replaces "
                          f"one (not even with --force): choose another path")
    if not force and not _own(out, kind):
        raise ConfigError(f"{flag} {out} exists and is not a gradhealth {kind.upper()} report; "
                          f"choose another path, or pass --force to replace it")
    return out


def _check_folder(out: Path, kind: str, flag: str) -> None:
    """ConfigError unless a new file can be made at ``out``: a JSON report needs its folder
    to exist, an HTML report the nearest existing folder above it (``write_html`` makes
    the rest); either must be a writable folder."""
    parent = out.absolute().parent
    if kind == "html":
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    if not parent.is_dir():
        why = "is not a folder" if parent.exists() else "does not exist"
        raise ConfigError(f"{flag} {out}: cannot write the {kind.upper()} report there, its "
                          f"folder {parent} {why}; create the folder or choose another path")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {out}: cannot write the {kind.upper()} report there, the "
                          f"folder {parent} is not writable (read-only file system or "
                          f"permissions); choose a writable path")


def _own(path: Path, kind: str) -> bool:
    """Whether ``path`` holds a report of this kind that gradhealth wrote."""
    try:
        if kind == "html":
            with path.open("rb") as f:
                return GENERATOR.encode() in f.read(_PEEK)
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and {"ok", "findings", "layers", "meta"} <= data.keys()


def write_text(path: Path, text: str) -> None:
    """Write atomically: a crash never leaves a half-written file, a failure no temporary."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
