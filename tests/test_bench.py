"""A smoke run of the benchmark harness: it runs and prints its table.

Speed targets are not checked here (the figures of a test run on a shared
machine mean little); they live in ``python -m mas_sync.bench``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from mas_sync.bench import format_table

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_quick_benchmark_prints_its_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mas_sync.bench", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout
    for load in (
        "one-to-one burst, raw redis-py publish (ceiling)",
        "one-to-one burst, mas_sync send()",
        "ratio mas_sync / raw redis-py",
        "send_many(), 100 a batch, into one agent",
        "paced 2,000 msg/s, mas_sync",
        "paced 10,000 msg/s, mas_sync",
        "request/reply round trip, mas_sync",
        "discover() among 1,000 agents, mas_sync",
        "start 100 agents in one process",
    ):
        assert load in table
    assert "threads left after stop: 0" in table
    assert " lost" not in table.replace("; 0 lost", "")


def test_format_table_aligns_columns() -> None:
    text = format_table([("a", "1 msg/s", ""), ("longer load", "22", "note")])
    lines = text.splitlines()
    assert lines[0] == lines[2] == lines[-1]
    assert lines[3].startswith("a            1 msg/s")
