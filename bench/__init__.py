"""Benchmark of flask_oa_recall against a bare Flask endpoint; run ``python -m bench``.

See ``bench/README.md`` for what it measures and ``bench/RESULTS.md`` for the last run.
"""
