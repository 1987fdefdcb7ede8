"""A smoke run of the benchmark harness: it runs and prints its table.

Speed targets are not checked here (the figures of a test run on a shared
machine mean little); they live in ``python -m mas_sync.bench``.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from mas_sync.bench import format_table
from mas_sync.tools.bench import readme_tables

ROOT = pathlib.Path(__file__).resolve().parent.parent


# Past the suite's 60 s, up to the 120 s the run itself is given: on a busy
# 2-core machine the quick run takes over a minute.
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_benchmark_prints_its_table(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "run.json"
    result = subprocess.run(
        [sys.executable, "-m", "mas_sync.bench", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout
    _check_document(json.loads(out.read_text()), table)
    assert re.search(r"mas_sync benchmark: \d+ s in all \(pubsub \d+ s, reliable \d+ s, security \d+ s,"
                     r" behaviours \d+ s\)", result.stderr)
    # The README's tables come from the file, running nothing.
    readme = subprocess.run(
        [sys.executable, "-m", "mas_sync.bench", "--readme", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert readme.returncode == 0, readme.stderr
    assert readme.stdout.startswith("Measured on ")
    assert "without hiredis" in readme.stdout or "with hiredis" in readme.stdout
    assert readme.stdout.count("    ====") == 4 * 3  # four tables, three rules each
    for row in json.loads(out.read_text())["rows"]:
        assert re.search(r"\n    " + re.escape(row["what"]) + r" +" + re.escape(row["figure"]), readme.stdout)
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
        "reliable burst, raw redis-py XADD/XREADGROUP/XACK (ceiling)",
        "reliable burst, mas_sync send()",
        "ratio reliable / pub/sub send()",
        "reliable send_many(), 100 a batch, acknowledged",
        "paced 2,000 msg/s, mas_sync reliable",
        "ratio 2 instances / 1, 1 worker",
        "poison message to agent.dlq:{id}, mas_sync",
        "chaos: duplicates",
        "chaos: reclaim after a kill",
        "pub/sub burst, signed, receiver require_signed",
        "ratio signed / unsigned",
        "rate limit 100/s (burst 100), 2 instances",
        'rate_limit="100/s", 2 instances of a reliable agent',
        "request_future() from one thread, then wait for all",
        "request_many() over 50 agents, 5 silent, timeout 0.5 s",
        "the same with handler_timeout=5",
        "@periodic(0.01) over",
    ):
        assert load in table
    assert "threads left after stop: 0" in table
    assert "after 3 deliveries, 3 handler calls" in table
    # Nothing is lost, whatever the speed of the machine.
    figures = {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line)[1]
               for line in table.splitlines() if re.search(r"\w\s{2,}\S", line)}
    assert figures["chaos: 1,000 messages, SIGKILL every 500 received: not handled"] == "0"
    assert figures["Redis restarted mid-run (AOF): acknowledged sends not handled"].startswith("0 of ")
    assert " lost" not in table.replace("; 0 lost", "")


def _check_document(document: dict, table: str = "") -> None:
    """What ``--json`` writes: the machine's facts, every row with its samples and targets."""
    machine = document["machine"]
    assert machine["cores"] >= 1 and machine["python"] == sys.version.split()[0]
    assert isinstance(machine["hiredis"], bool) and machine["redis_server"] and machine["redis_py"]
    assert "mas_framework" in machine and machine["date"][:2] == "20" and len(machine["load_average"]) == 3
    # What the machine charges for a wake and a round trip, measured before the loads.
    assert machine["thread_wake_us"] > 0 and machine["publish_cpu_us"] > 0
    assert document["seconds"] > 0 and document["quick"] is True
    rows = document["rows"]
    assert rows and all(row["part"] in ("pubsub", "reliable", "security", "behaviours") for row in rows)
    for row in rows:
        # A row with a target says whether it was met, and ends with MISSED when it was not.
        assert (row["met"] is None) == (row["target"] is None), row
        assert row["note"].endswith("MISSED") == (row["met"] is False), row
        if table:
            assert row["what"] in table and row["figure"] in table
    assert document["missed"] == [row["what"] for row in rows if row["met"] is False]
    by_what = {row["what"]: row for row in rows}
    if "one-to-one burst, mas_sync send()" in by_what:
        # Interleaved rounds (two when quick): a sample a round, the median and the range shown.
        burst = by_what["one-to-one burst, mas_sync send()"]
        assert len(burst["samples"]) == 2 and "median of 2 rounds" in burst["note"]
        assert by_what["slowest mas_sync round / median raw redis-py round"]["target"] == ">= 1.00"
        assert by_what["ratio 16 threads / 1 thread, one agent's send()"]["target"] == ">= 2.50"
        paced = by_what["paced 10,000 msg/s, mas_sync"]
        assert len(paced["samples"]) == 2 and all("p99" in run for run in paced["samples"])
        assert "worst P99" in paced["note"] and "P99 <= 2 ms" in paced["target"]
        assert by_what["request/reply round trip, mas_sync"]["target"] == "P50 <= 0.35 ms, P99 <= 1 ms"
        if machine["mas_framework"]:
            assert "request/reply round trip, async framework" in by_what
            assert "request/reply P50, mas_sync / async framework" in by_what


@pytest.mark.slow
def test_only_security_measures_signing_and_rate_limits() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mas_sync.bench", "--only", "security", "--quick", "--json", "-"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # --json -: the document alone on standard output
    _check_document(document)
    assert document["only"] == "security" and {row["part"] for row in document["rows"]} == {"security"}
    table = format_table([(row["what"], row["figure"], row["note"]) for row in document["rows"]])
    assert "pub/sub burst, signed, receiver require_signed" in table
    assert "ratio signed / unsigned" in table
    row = next(line for line in table.splitlines() if line.startswith("rate limit 100/s"))
    assert "2 instances, a sender trying 1,000 msg/s" in row
    assert re.search(r"\d+\.\d msg/s accepted", row) and "deviation" in row
    assert "0 failed open" in table
    row = next(line for line in table.splitlines() if line.startswith('rate_limit="100/s"'))
    assert re.search(r"\d+\.\d msg/s handled", row) and "refused as rate_limited" in row
    assert "one-to-one burst" not in table and "reliable burst" not in table


def test_only_names_a_half() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mas_sync.bench", "--only", "streams"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert result.returncode == 2
    assert all(part in result.stderr for part in ("pubsub", "reliable", "security"))


def test_format_table_aligns_columns() -> None:
    text = format_table([("a", "1 msg/s", ""), ("longer load", "22", "note")])
    lines = text.splitlines()
    assert lines[0] == lines[2] == lines[-1]
    assert lines[3].startswith("a            1 msg/s")


def test_rounds_must_be_positive() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mas_sync.bench", "--rounds", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert result.returncode == 2 and "--rounds" in result.stderr


def test_readme_tables_say_how_they_were_measured() -> None:
    document = {
        "machine": {"date": "2026-11-26T06:00:00+00:00", "cores": 2, "machine": "x86_64", "system": "Linux",
                    "python": "3.11.7", "redis_py": "8.1.0", "hiredis": False, "redis_server": "7.0.15",
                    "mas_framework": None, "load_average": [0.5, 0.4, 0.3], "load_average_after": [1.5, 1, 1],
                    "thread_wake_us": 26.4, "publish_cpu_us": 91.0},
        "seconds": 170.2, "command": ["python", "-m", "mas_sync.bench"],
        "rows": [{"what": "a burst", "figure": "1 msg/s", "note": "", "part": "pubsub"},
                 {"what": "a ratio", "figure": "0.50", "note": "(target >= 0.90) MISSED", "part": "security"}],
        "missed": ["a ratio"],
    }
    text = readme_tables(document)
    assert text.startswith("Measured on 2026-11-26 on a 2-core x86_64 machine")
    assert "without hiredis" in text and "mas-framework not installed" in text
    assert ("load average 0.50 at the start and 1.50 at the end; a thread woken in 26 µs,"
            " a raw PUBLISH round trip 91 µs of CPU; 170 s in all") in text
    # A run written before the machine's costs were measured still prints.
    for fact in ("thread_wake_us", "publish_cpu_us"):
        del document["machine"][fact]
    assert "at the end; 170 s in all" in readme_tables(document)
    assert "``python -m mas_sync.bench --json run.json``" in text
    assert "Pub/sub delivery" in text and "The protections" in text and "Reliable delivery" not in text
    assert "    a ratio  0.50    (target >= 0.90) MISSED" in text
    assert text.endswith("Targets missed: 1 (a ratio).")
