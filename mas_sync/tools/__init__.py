"""Tools beside the library, which the library never imports.

- :mod:`mas_sync.tools.demo`: ``python -m mas_sync demo``, a small multi-agent
  system that runs on its own;
- :mod:`mas_sync.tools.bench`: ``python -m mas_sync.bench``, the benchmarks.
"""
