"""Benchmark suite for ``TrajectoryReplayBuffer``: run ``python benchmarks/run.py`` (see README.md)."""
