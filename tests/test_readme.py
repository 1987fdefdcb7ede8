"""README.rst stays true: its quick start runs, its commands are those CI runs."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text()


def literal_block_after(marker: str) -> str:
    start = README.index(marker)
    rest = README[start:].split("::\n\n", 1)[1]
    lines = []
    for line in rest.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_quick_start_runs_as_written(redis_url) -> None:
    code = literal_block_after("Quick start\n-----------")
    assert 'REDIS_URL = "redis://localhost:6379"' in code
    code = code.replace('REDIS_URL = "redis://localhost:6379"', f"REDIS_URL = {redis_url!r}")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "other_agent received: {'hello': 'world'}" in result.stdout
    assert "my_agent received: {'reply': 'got it'}" in result.stdout
    assert "Found 1 NLP agents" in result.stdout
    assert "42\n" in result.stdout


def test_ci_runs_the_readme_test_command() -> None:
    command = literal_block_after("Run the tests").strip()
    assert command.endswith("&& python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r'pip install -e "\.\[test\]"', command)
    assert install and 'pip install -q -e ".[test]"' in ci
    assert ci.rstrip().endswith("python -m pytest")
