"""The live one-line status of ``gradhealth run``: the last line of the terminal, on stderr.

The line sits below the script's own output and never inside it: while it is shown,
``sys.stdout`` and ``sys.stderr`` are wrapped so that each write of the script first
erases the line (and returns the cursor to where the script left it), writes, then
draws the line again below. A progress bar that redraws its own line with ``\\r`` keeps
it; the status goes on the line under it. Output written to the file descriptors
directly (a C extension, a child process) bypasses the wrappers and may share a line
with the status until the next redraw.

Shown only when stderr is a terminal; otherwise (a pipe, a CI log) nothing is drawn and
``gradhealth run`` prints one final line instead. The text changes at most every
``training.session.TICK_S`` seconds (the session's tick, after an optimizer step) from
numbers already on the host: nothing here reads a device tensor.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
from typing import Any, TextIO

ERASE = "\r\x1b[K"
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|[\x00-\x08\x0b-\x1f]")


def visible(text: str) -> int:
    """How many columns ``text`` advances the cursor (escape sequences take none)."""
    return len(_CONTROL.sub("", text))


class StatusLine:
    """The status line on ``stream`` (a terminal): ``install``, ``update(text)``, ``remove``."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.text = ""
        self._lock = threading.RLock()
        self._shown = False
        self._below = False  # drawn under an unfinished line of the script's
        self._col = 0  # the cursor's column in the script's output
        self._saved: tuple[Any, Any] | None = None

    def install(self) -> None:
        """Wrap ``sys.stdout`` (when it is a terminal too) and ``sys.stderr``."""
        self._saved = (sys.stdout, sys.stderr)
        if _isatty(sys.stdout):
            sys.stdout = _Wrapped(sys.stdout, self)
        sys.stderr = _Wrapped(sys.stderr, self)

    def remove(self) -> None:
        """Erase the line and give the script's streams back (idempotent)."""
        with self._lock:
            self._erase()
            self.stream.flush()
            if self._saved is not None:
                sys.stdout, sys.stderr = self._saved
                self._saved = None

    def update(self, text: str) -> None:
        with self._lock:
            self.text = text
            self._erase()
            self._draw()
            self.stream.flush()

    def around(self, stream: TextIO, text: str) -> int:
        """Write the script's ``text`` to ``stream`` with the line out of its way."""
        with self._lock:
            self._erase()
            self.stream.flush()
            written = stream.write(text)
            stream.flush()
            self._track(text)
            self._draw()
            self.stream.flush()
            return written

    def _track(self, text: str) -> None:
        cut = max(text.rfind("\n"), text.rfind("\r"))
        self._col = visible(text[cut + 1:]) if cut >= 0 else self._col + visible(text)

    def _draw(self) -> None:
        if not self.text:
            return
        width = shutil.get_terminal_size((100, 24)).columns - 1
        line = self.text if len(self.text) <= width else self.text[:max(0, width - 1)] + "…"
        self._below = self._col > 0
        self.stream.write(("\n" if self._below else "\r") + line + "\x1b[K")
        self._shown = True

    def _erase(self) -> None:
        if not self._shown:
            return
        self.stream.write(ERASE)
        if self._below:  # back up to the end of the script's unfinished line
            self.stream.write("\x1b[1A" + (f"\x1b[{self._col}C" if self._col else ""))
        self._shown = self._below = False


class _Wrapped:
    """A text stream whose writes go around the status line; everything else passes."""

    def __init__(self, stream: Any, status: StatusLine):
        self._stream, self._status = stream, status

    def write(self, text: str) -> int:
        return self._status.around(self._stream, text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
