"""What a run store holds, checked as it is read.

A store may have been damaged (a bad disk, a copy cut short) or crafted by hand. Every
value the reader takes from the file is checked against what the writer writes before it
is used: types of the per-step columns (in SQL, one scan), JSON text that parses to the
expected shape and is not nested absurdly deep, finding and skipped-step rows, layer
layouts and the length of every layer-statistic blob. Anything else is a ``StoreError``
naming the table, the row and the key, and saying the store is damaged; never a
``JSONDecodeError``, ``RecursionError``, ``KeyError`` or ``TypeError`` from deep inside.
Numbers themselves (huge, infinite, NaN) are data, not damage: a report draws what it can.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from gradhealth.errors import StoreError
from gradhealth.rules import incident
from gradhealth.rules.finding import SEVERITY_ORDER, Finding, from_record
from gradhealth.rules.incident import Incident
from gradhealth.store.format import FLOAT_COLUMNS, STEP_COLUMNS

MAX_DEPTH = 32
"""JSON nesting a store's values may have: the writer's deepest (a finding's evidence, the
run's configuration) is 3; a value nested deeper was not written by gradhealth."""
_NONFINITE = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}  # as Finding.to_dict
_NUMBER, _INT = ("integer", "real"), ("integer",)
STEP_TYPES = {"step": _INT, **{c: (*_NUMBER, "null") for c in FLOAT_COLUMNS},
              "nonfinite": _INT, "skipped": _INT, "clipped": (*_NUMBER, "null"),
              "wall_time": _NUMBER, "nan_mask": _INT}


def damaged(path: Path, where: str, what: str) -> StoreError:
    return StoreError(f"{path} is damaged: {where} {what}. It was changed outside gradhealth "
                      "or is corrupt; restore the file from a copy, or record the run again.")


def _shown(value: Any) -> str:
    if value is None:
        return "NULL"
    kind = {str: "text", bytes: "a blob", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def json_value(path: Path, where: str, text: Any) -> Any:
    """``text`` parsed as JSON (non-finite constants as the strings ``"nan"``, ``"inf"``)."""
    if not isinstance(text, str):
        raise damaged(path, where, f"holds {_shown(text)}, expected JSON text")
    try:
        value = json.loads(text, parse_constant=_NONFINITE.__getitem__)
    except RecursionError:
        raise damaged(path, where, f"is JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise damaged(path, where, f"is not valid JSON ({e})") from None
    if _deeper_than(value, MAX_DEPTH):
        raise damaged(path, where, f"is JSON nested deeper than {MAX_DEPTH} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict)
                                                   else item))
    return False


def meta(path: Path, rows: list[tuple[Any, Any]]) -> dict[str, Any]:
    out = {}
    for key, text in rows:
        if not isinstance(key, str):
            raise damaged(path, "table meta", f"has a key that is {_shown(key)}, expected text")
        out[key] = json_value(path, f"meta {key!r}", text)
    return out


def check_steps(path: Path, conn: sqlite3.Connection) -> None:
    """StoreError naming the first row of ``steps`` with a value of the wrong type (one
    scan in SQLite; afterwards the columns convert to numpy safely)."""
    names = (*STEP_COLUMNS, "nan_mask")
    wrong = " OR ".join(f"typeof({c}) NOT IN ({', '.join(repr(t) for t in STEP_TYPES[c])})"
                        for c in names)
    row = conn.execute(f"SELECT {', '.join(names)} FROM steps WHERE {wrong} LIMIT 1").fetchone()
    if row is None:
        return
    for name, value in zip(names, row):
        kind = {int: "integer", float: "real", type(None): "null"}.get(type(value), "other")
        if kind not in STEP_TYPES[name]:
            raise damaged(path, f"steps row step={row[0]!r}", f"column {name!r} holds "
                          f"{_shown(value)}, expected {' or '.join(STEP_TYPES[name])}")


def _text(path: Path, where: str, key: str, value: Any, null: bool = False) -> None:
    if not (isinstance(value, str) or (null and value is None)):
        raise damaged(path, where, f"{key} holds {_shown(value)}, expected text")


def _step(path: Path, where: str, value: Any, null: bool) -> None:
    if not (isinstance(value, int) or (null and value is None)):
        raise damaged(path, where, f"step holds {_shown(value)}, expected an integer")


def findings(path: Path, rows: list[tuple]) -> tuple[list[Finding], list[int | None]]:
    """Findings and their steps from ``(finding_id, step, kind, module, severity, evidence,
    remedy, message, modules)`` rows."""
    found, steps = [], []
    for fid, step, kind, module, severity, evidence, remedy, message, modules in rows:
        where = f"findings row {fid}"
        _step(path, where, step, null=True)
        for key, value in (("kind", kind), ("module", module), ("remedy", remedy),
                           ("message", message)):
            _text(path, where, key, value)
        _severity(path, where, severity)
        ev = _json_object(path, f"{where} evidence", evidence)
        mods = json_value(path, f"{where} modules", modules)
        if not (isinstance(mods, list) and all(isinstance(m, str) for m in mods)):
            raise damaged(path, f"{where} modules", "is not a JSON list of module names")
        found.append(from_record(kind, module, severity, ev, remedy, message, mods))
        steps.append(step)
    return found, steps


INCIDENT_DATA = {"kinds": "names", "modules": "names", "peak": "numbers",
                 "before": "numbers", "after": "numbers", "onsets": "steps",
                 "reported": "steps or null", "findings": "count", "members": "members"}
"""What each key of an incident's ``data`` JSON holds (``Incident.to_dict``)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _holds(value: Any, what: str) -> bool:
    if what == "names":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if what == "count":
        return _is_int(value)
    if what == "members":  # [kind, module, step or null] of each finding
        return isinstance(value, list) and all(
            isinstance(m, list) and len(m) == 3 and isinstance(m[0], str)
            and isinstance(m[1], str) and (m[2] is None or _is_int(m[2])) for m in value)
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        return False
    if what == "numbers":  # non-finite numbers are the strings of Finding.to_dict
        return all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   or v in _NONFINITE.values() for v in value.values())
    return all(_is_int(v) or (what == "steps or null" and v is None) for v in value.values())


def incidents(path: Path, rows: list[tuple]) -> list[Incident]:
    """Incidents from ``(incident_id, onset, end_step, kind, module, severity, outcome,
    message, remedy, data)`` rows."""
    found = []
    for number, onset, end, kind, module, severity, result, text, remedy, data in rows:
        where = f"incidents row {number}"
        for key, value in (("onset", onset), ("end_step", end)):
            if not _is_int(value):
                raise damaged(path, where, f"{key} holds {_shown(value)}, expected an integer")
        for key, value in (("kind", kind), ("module", module), ("outcome", result),
                           ("message", text), ("remedy", remedy)):
            _text(path, where, key, value)
        _severity(path, where, severity)
        extra = _json_object(path, f"{where} data", data)
        for key, what in INCIDENT_DATA.items():
            if not _holds(extra.get(key), what):
                raise damaged(path, f"{where} data", f"key {key!r} holds "
                              f"{_shown(extra.get(key))}, expected {what}")
        fields = {k: extra[k] for k in INCIDENT_DATA}
        found.append(incident.from_record({
            **fields, "number": number, "onset": onset, "end": end, "kind": kind,
            "module": module, "severity": severity, "outcome": result, "message": text,
            "remedy": remedy}))
    return found


def skipped(path: Path, rows: list[tuple]) -> list[tuple[int, str, str | None]]:
    """``(step, reason, module)`` from ``(skip_id, step, reason, module)`` rows."""
    for sid, step, reason, module in rows:
        where = f"skipped row {sid}"
        _step(path, where, step, null=False)
        _text(path, where, "reason", reason)
        _text(path, where, "module", module, null=True)
    return [(step, reason, module) for _, step, reason, module in rows]


def names(path: Path, table: str, rows: list[tuple[int, Any]]) -> dict[int, str]:
    """``{id: name}`` of the ``layers`` or ``stats`` table."""
    for rid, name in rows:
        _text(path, f"{table} row {rid}", "name", name)
    return dict(rows)


def layouts(path: Path, rows: list[tuple[int, Any]], layers: dict[int, str]
            ) -> dict[int, list[int]]:
    """``{layout_id: [layer_id, ...]}``, every id a known layer, none twice."""
    out = {}
    for lid, text in rows:
        ids = json_value(path, f"layouts row {lid}", text)
        ok = (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                            for i in ids) and len(set(ids)) == len(ids))
        if not ok:
            raise damaged(path, f"layouts row {lid}", "is not a JSON list of distinct layer ids")
        unknown = [i for i in ids if i not in layers]
        if unknown:
            raise damaged(path, f"layouts row {lid}", f"names layer ids {unknown[:5]} that the "
                          "layers table does not hold")
        out[lid] = ids
    return out


def check_layer_rows(path: Path, stat: str, rows: list[tuple], layout_of: dict[int, list[int]]
                     ) -> None:
    """Each ``(step, layout_id, value)`` row of a statistic: an integer step, a known layout
    and a blob of one float64 per layer of it."""
    for step, layout, value in rows:
        where = f"layer_stats row ({stat!r}, step {step!r})"
        _step(path, where, step, null=False)
        if layout not in layout_of:
            raise damaged(path, where, f"names layout {layout!r}, which the layouts table "
                          "does not hold")
        if not isinstance(value, bytes) or len(value) != 8 * len(layout_of[layout]):
            size = f"{len(value)} bytes" if isinstance(value, bytes) else _shown(value)
            raise damaged(path, where, f"holds {size}, expected a blob of "
                          f"{len(layout_of[layout])} float64 values (one per layer)")


def floats(rows: list[tuple], cols: int) -> np.ndarray:
    """The checked blobs of ``rows`` as a ``(len(rows), cols)`` float64 array."""
    return np.frombuffer(b"".join(r[2] for r in rows), dtype="<f8").reshape(len(rows), cols)


def _severity(path: Path, where: str, value: Any) -> None:
    if value not in SEVERITY_ORDER:
        raise damaged(path, where, f"severity holds {_shown(value)}, expected one of "
                      f"{', '.join(SEVERITY_ORDER)}")


def _json_object(path: Path, where: str, text: Any) -> dict:
    """A JSON object read from ``text`` (any other JSON value: the store is damaged)."""
    value = json_value(path, where, text)
    if not isinstance(value, dict):
        raise damaged(path, where, f"is a JSON {type(value).__name__}, expected an object")
    return value
