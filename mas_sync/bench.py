"""``python -m mas_sync.bench``: runs the benchmarks of :mod:`mas_sync.tools.bench`."""

import sys

from .tools.bench import format_table, main, run

__all__ = ["format_table", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())
