"""Progress in rule logs: lines a person can tail, not carriage-return redraws."""

from __future__ import annotations

import io

from wsss.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_whole_lines_with_count_rate_and_eta():
    log = io.StringIO()
    for _ in progress(range(7), total=7, desc="GradCAM shard 00003", stream=log, mininterval=0, miniters=1):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) >= 2 and all(line.startswith("GradCAM shard 00003:") for line in lines)
    assert "7/7" in lines[-1] and "img/s" in lines[-1]
    assert "<" in lines[1]  # elapsed<remaining: the ETA


def test_a_terminal_gets_a_live_bar():
    terminal = _Terminal()
    for _ in progress(range(3), total=3, desc="dense CRF", stream=terminal):
        pass
    assert "\r" in terminal.getvalue()
