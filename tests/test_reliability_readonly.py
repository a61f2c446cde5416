"""Run stores on read-only media: reading works (a killed writer's WAL included, with or
without its -shm index), and every write path says the media is read-only instead of
raising a raw OSError or opening a store it cannot write; nothing is changed.

The media are made read-only for real (EROFS): a read-only bind mount inside a user and
mount namespace (``unshare -rm``). Where that is not allowed and the tests do not run as
root, the folder and its files lose their write permission instead (EACCES).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gradhealth
from gradhealth import RunStore

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(gradhealth.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1"'

# Runs with argv[1] the read-only folder and argv[2] a writable one; prints one JSON line
# per operation: "ok ..." or the exception's class and message.
CHECKS = textwrap.dedent("""
    import json, sys, warnings
    from pathlib import Path
    import torch
    import gradhealth as gh
    from gradhealth import RunStore
    from gradhealth.cli import main
    ro, rw = Path(sys.argv[1]), Path(sys.argv[2])
    warnings.simplefilter("error")

    def attempt(name, call):
        try:
            result = call()
        except Exception as err:
            result = f"{type(err).__name__}: {err}"
        print(json.dumps([name, result]), flush=True)

    def read(name):
        run = gh.load(ro / name)
        steps, layers, values = run.layer_stat("g")
        return f"ok {len(run.steps)} steps, {len(steps)} layer rows, meta {run.meta}"

    for name in ("closed.db", "killed.db", "no-shm.db"):
        attempt(f"load {name}", lambda: read(name))
        attempt(f"open {name}", lambda: RunStore.open(ro / name).close() or "ok")
        attempt(f"overwrite {name}",
                lambda: RunStore.create(ro / name, overwrite=True).close() or "ok")
        attempt(f"report {name}", lambda: main(["report", str(ro / name),
                                                "-o", str(rw / f"{name}.html")]))
    attempt("create", lambda: RunStore.create(ro / "new.db").close() or "ok")
    attempt("create in a new folder", lambda: RunStore.create(ro / "sub" / "new.db"))
    attempt("watch", lambda: gh.watch(torch.nn.Linear(2, 2), store=ro / "w.db"))
    attempt("report into the media", lambda: main(["report", str(ro / "closed.db"),
                                                   "-o", str(ro / "r.html")]))
""")


def write(store: RunStore, start: int) -> None:
    store.write_steps({"step": [start, start + 1], "loss": [1.0, 0.5]})
    store.write_layer_stats([start, start + 1], ["a", "b"], ["g"], np.ones((2, 2, 1)))


@pytest.fixture
def media(tmp_path) -> Path:
    """A folder with a closed store, a killed writer's store (WAL and -shm left behind) and
    the same without its -shm (as an archive or a copy that skipped it leaves it)."""
    folder = tmp_path / "media"
    folder.mkdir()
    with RunStore.create(folder / "closed.db", {"run": "closed"}) as store:
        write(store, 0)
    live = RunStore.create(tmp_path / "live.db", {"run": "killed"})
    write(live, 0)
    write(live, 2)
    for suffix in ("", "-wal", "-shm"):  # what a SIGKILL leaves: the writer holds no lock
        shutil.copyfile(f"{tmp_path}/live.db{suffix}", f"{folder}/killed.db{suffix}")
        if suffix != "-shm":
            shutil.copyfile(f"{tmp_path}/live.db{suffix}", f"{folder}/no-shm.db{suffix}")
    live.close()
    with sqlite3.connect(f"{(folder / 'no-shm.db').as_uri()}?immutable=1", uri=True) as conn:
        # the main file alone holds no run yet: reading must replay the WAL
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    return folder


def run_read_only(folder: Path, writable: Path) -> dict[str, object]:
    """CHECKS with ``folder`` read-only; {operation: outcome}."""
    command = [sys.executable, "-c", CHECKS, str(folder), str(writable)]
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", READ_ONLY + ' && ! touch "$1/.w"',
                            "sh", str(folder)], capture_output=True) \
        if shutil.which("unshare") else None
    if probe is not None and probe.returncode == 0:
        command = ["unshare", "-rm", "sh", "-c", READ_ONLY + ' && shift && exec "$@"', "sh",
                   str(folder), *command]
    elif os.geteuid() != 0:
        for p in [*folder.iterdir(), folder]:
            p.chmod(0o555 if p.is_dir() else 0o444)
    else:
        pytest.skip("no read-only media here: unshare -rm is not allowed and root ignores "
                    "file permissions")
    try:
        proc = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    finally:
        for p in [folder, *folder.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(line) for line in proc.stdout.splitlines() if line.startswith("["))


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_read_only_media_can_be_read_and_refuse_writes_clearly(media, tmp_path):
    before = digest(media)
    out = run_read_only(media, tmp_path)
    assert out["load closed.db"] == "ok 2 steps, 2 layer rows, meta {'run': 'closed'}"
    # a killed writer's WAL holds the run: it is read with and without its -shm index
    assert out["load killed.db"] == "ok 4 steps, 4 layer rows, meta {'run': 'killed'}"
    assert out["load no-shm.db"] == "ok 4 steps, 4 layer rows, meta {'run': 'killed'}"
    for name in ("closed.db", "killed.db", "no-shm.db"):
        assert out[f"report {name}"] == 0
        for op in ("open", "overwrite"):
            said = out[f"{op} {name}"]
            assert said.startswith("StoreError: ") and "not writable" in said, said
    for op in ("create", "create in a new folder", "watch"):
        said = out[op]
        assert said.startswith("StoreError: ") and "writable" in said, said
    assert out["report into the media"] == 2
    assert digest(media) == before  # nothing was changed, created or removed


def test_an_unfinished_or_empty_store_says_what_it_is(tmp_path):
    from gradhealth import load
    from gradhealth.errors import StoreError

    path = tmp_path / "run.db"
    RunStore.create(path, {}).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 0")
    for call in (load, RunStore.open):
        with pytest.raises(StoreError, match="unfinished gradhealth run store: it carries "
                                             "gradhealth's application_id but schema version 0"):
            call(path)
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match=r"is an empty file \(0 bytes\)"):
        load(empty)
