"""Benchmarks, run as modules (`python -m bench`, `python -m bench.roundtrip`), never from
the test suite."""
