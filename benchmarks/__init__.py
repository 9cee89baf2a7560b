"""Benchmarks of asl-jax (speed and memory): printed, written to ``benchmarks/results/*.json``,
and to their section of BENCHMARKS.md with ``--update-doc``.

Run from the repository root, e.g. ``python -m benchmarks.loss``. Benchmarks print ratios measured
side by side in one process; they are never part of the test suite's pass/fail criteria.
"""
