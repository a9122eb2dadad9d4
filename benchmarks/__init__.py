"""The benchmark (``make bench``, ``python -m benchmarks``), outside the wheel, as dramatiq
keeps its ``benchmarks/`` beside its package: every performance figure in one run, with the
peers (pgqueuer, procrastinate, plain Dramatiq) doing the same job on the same servers."""
