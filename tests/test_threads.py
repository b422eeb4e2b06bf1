"""Real threads: adding, sampling and checkpointing at once never tears a row."""

from __future__ import annotations

import threading

import pytest
from conftest import assert_aligned, coded_trajectory

from rlinf_replay_buffer import TrajectoryReplayBuffer


@pytest.mark.parametrize("auto_save", [False, True])
def test_concurrent_add_sample_and_checkpoint_keep_rows_aligned(tmp_path, auto_save):
    kwargs = {"auto_save": True, "auto_save_path": str(tmp_path / "auto")} if auto_save else {}
    buf = TrajectoryReplayBuffer(sample_window_size=8, cache_size=3, **kwargs)
    buf.add_trajectories([coded_trajectory(0, n=3, e=2)])
    errors: list[BaseException] = []
    stop = threading.Event()

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
                stop.set()

        return run

    def adder():
        for i in range(1, 60):
            buf.add_trajectories([coded_trajectory(i, n=3, e=2)])
        stop.set()

    def sampler():
        while not stop.is_set():
            batch = buf.sample(64)
            assert_aligned(batch, n=3)

    def saver():
        k = 0
        while not stop.is_set():
            buf.save_checkpoint(str(tmp_path / f"ckpt{k % 2}"))
            k += 1

    threads = [threading.Thread(target=guard(f)) for f in (adder, sampler, sampler, saver)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    buf.close()
    assert buf.trajectory_counter == 60
    reloaded = TrajectoryReplayBuffer(sample_window_size=0)
    reloaded.load_checkpoint(str(tmp_path / "ckpt0"))
    assert_aligned(reloaded.sample(500), n=3)
