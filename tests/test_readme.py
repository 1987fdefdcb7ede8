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
    # As typed, on the main interpreter, before the runs on the others.
    main = ci.index("\npython3 -m venv .venv\n")
    assert main < ci.index('\npip install -q -e ".[test]"\n', main) < ci.index(
        "\npython -m pytest\n", main) < ci.index("\nrun_suite oldest")


def test_the_readme_runs_the_example_apps_as_the_tests_do() -> None:
    from .test_contrib_flask import gunicorn_args

    flask_run = literal_block_after("the development server (port 5000) runs it as")
    assert "MAS_REDIS_URL=" in flask_run
    assert "flask --app examples/flask_app/app.py:create_app run" in flask_run
    assert "127.0.0.1:5000/" in flask_run
    gunicorn = literal_block_after("with two workers on port 8000, as")
    assert "MAS_REDIS_URL=" in gunicorn and "127.0.0.1:8000/" in gunicorn
    assert f"'{gunicorn_args(8000)[-1]}'" in gunicorn
    django = literal_block_after("The example project\nruns as")
    assert django.count("MAS_REDIS_URL=") == 2


def test_the_supported_versions_are_the_declared_floors() -> None:
    import configparser

    from mas_sync._redis import CLUSTER_MIN_REDIS_PY

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    floors = dict(
        requirement.partition(">=")[::2]
        for requirement in setup["options"]["install_requires"].split()
    )
    python = setup["options"]["python_requires"].partition(">=")[2]
    section = README[README.index("\nSupported versions\n"):README.index("\nTesting\n")]
    table = section[:section.index("CI (")]

    def row(name: str) -> str:
        return next(line for line in table.splitlines() if line.startswith(name))

    assert row("Python").split()[1] == python
    assert f"``python_requires = >={python}``" in row("Python")
    assert row("redis-py").split()[1] == floors["redis"]
    assert f"cluster mode needs {'.'.join(map(str, CLUSTER_MIN_REDIS_PY))}" in row("redis-py")
    assert row("pydantic").split()[1] in (floors["pydantic"], floors["pydantic"] + ".0")
    assert f"**Python {python}**" in section and f"**redis-py {floors['redis']}**" in section
    # CI runs the oldest Python with these floors pinned, and leaves the slow tests
    # out of the runs on other interpreters only.
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'run_suite oldest "$OLDEST_PYTHON" "$SYSTEM_REDIS" no -c "$FLOORS"' in ci
    assert "python_requires = >=" in ci and 'setup["options"]["install_requires"]' in ci
    assert ci.count('-m "not slow"') == 1 and 'pytest -q -m "not slow"' in ci
