"""Per-image progress for rule jobs: a live bar on a terminal, one plain line per update in a log file."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "progress"]

# A log file gets a line at most this often (and the first and last one), not a redraw per image.
LOG_INTERVAL_S = 15.0


class _Lines(io.TextIOBase):
    """A stream for tqdm that turns its carriage-return redraws into one line each."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "img",
             stream: TextIO | None = None, **options: Any) -> tqdm:
    """A tqdm bar on ``stream`` (stderr by default, which rule scripts send to their log).

    On a terminal it redraws in place; anywhere else (a log file) it writes a line with the count,
    rate and ETA every ``LOG_INTERVAL_S`` seconds, so ``tail -f`` on a job's log shows where it is.
    """
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, **options)
    options = {"mininterval": LOG_INTERVAL_S, "ascii": True, "ncols": 100, **options}
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=_Lines(stream), **options)
