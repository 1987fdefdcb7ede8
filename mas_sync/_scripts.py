"""The Lua scripts of ``mas_sync/lua/``, each read from the package once per process."""

from __future__ import annotations

import functools
from importlib import resources


@functools.lru_cache(maxsize=None)
def load_script(name: str) -> str:
    """The text of ``mas_sync/lua/<name>.lua``, read on first use and then kept.

    Raises:
        FileNotFoundError: no such script in the package.
    """
    scripts = resources.files("mas_sync").joinpath("lua")
    return scripts.joinpath(f"{name}.lua").read_text(encoding="utf-8")
