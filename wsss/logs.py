"""Logging for rule scripts: everything (logging, warnings, tqdm on stderr, tracebacks) goes to the rule's log."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def logged(log_path: str | os.PathLike, level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Send this process's logging and stderr to ``log_path`` for the duration; record a failure's traceback."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        previous_level = root.level
        root.addHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(True)
        try:
            with contextlib.redirect_stderr(stream):
                yield logging.getLogger("wsss")
        except BaseException:
            stream.write(traceback.format_exc())
            # Snakemake shows stderr of failed jobs; repeat the last line there so the cause is visible.
            print(f"error, see {log_path}: {traceback.format_exc().strip().splitlines()[-1]}", file=sys.stderr)
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(previous_level)
            logging.captureWarnings(False)
