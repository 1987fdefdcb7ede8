"""The Lua scripts shipped in mas_sync/lua/ and their loader."""

from __future__ import annotations

from importlib import resources

import pytest

from mas_sync._scripts import load_script

NAMES = sorted(
    entry.name[:-len(".lua")]
    for entry in resources.files("mas_sync").joinpath("lua").iterdir()
    if entry.name.endswith(".lua")
)


def test_the_package_holds_the_scripts() -> None:
    assert NAMES == [
        "breaker", "condemn", "delete_hash", "deregister", "instance_deregister",
        "instance_refresh", "instance_register", "nonces", "prune", "rate_limit", "refresh",
        "register",
        "select_page", "trim_stream", "write_hash",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_each_script_starts_with_a_header_naming_its_keys_and_arguments(name: str) -> None:
    text = load_script(name)
    header = text.split("\n\n", 1)[0].splitlines()
    assert all(line.startswith("--") for line in header)
    assert any("KEYS" in line for line in header) and any("ARGV" in line for line in header)


@pytest.mark.parametrize("name", NAMES)
def test_each_script_runs_on_redis(name: str, r) -> None:
    # SCRIPT LOAD compiles the script: a syntax error would be refused here.
    assert r.script_load(load_script(name))


def test_a_script_is_read_once_per_process() -> None:
    assert load_script("register") is load_script("register")


def test_an_unknown_script_is_an_error() -> None:
    with pytest.raises(FileNotFoundError):
        load_script("no_such_script")
