"""ReplayBufferDataset / PreloadReplayBufferDataset: split, DataLoader use, waiting, closing,
error propagation, pin_memory/device and the refusal of DataLoader worker processes."""

from __future__ import annotations

import gc
import math
import pickle
import queue
import threading
import time
from fractions import Fraction

import pytest
import torch
from conftest import assert_aligned, coded_trajectory
from torch.utils.data import DataLoader

from rlinf_replay_buffer import TrajectoryReplayBuffer
from rlinf_replay_buffer.datasets import (
    DatasetClosedError,
    PrefetchError,
    PreloadReplayBufferDataset,
    ReplayBufferDataset,
    concat_batches,
    replay_buffer_collate_fn,
    split_batch_size,
)
from rlinf_replay_buffer.errors import EmptyBufferError, InvalidArgumentError

DATASETS = [ReplayBufferDataset, PreloadReplayBufferDataset]
DEMO_BASE = 50  # demo trajectories are coded 50, 51, ...: their codes are >= 50_000


def make_buffer(ids: range | list[int], seed: int = 1, images: bool = True) -> TrajectoryReplayBuffer:
    buf = TrajectoryReplayBuffer(seed=seed, sample_window_size=0)
    if ids:
        buf.add_trajectories([coded_trajectory(i, images=images) for i in ids])
    return buf


def codes(batch: dict) -> torch.Tensor:
    return batch["curr_obs"]["states"][:, 0]


class FakeBuffer:
    """A buffer stand-in: always ready, ``sample`` runs the given function."""

    def __init__(self, sample, ready: bool = True) -> None:
        self._sample = sample
        self.ready = ready

    def is_ready(self, min_size: int) -> bool:
        return self.ready

    def sample(self, num_chunks: int) -> dict:
        return self._sample(num_chunks)


def rows(n: int, value: float = 0.0) -> dict:
    return {"actions": torch.full((n, 2), value), "curr_obs": {"states": torch.full((n, 3), value)}}


def next_in_thread(it) -> tuple[threading.Thread, dict]:
    """Call next(it) on a thread; the result lands in out["batch"], out["stop"] or out["error"]."""
    out: dict = {}

    def run() -> None:
        try:
            out["batch"] = next(it)
        except StopIteration:
            out["stop"] = True
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- the split ------------------------------------------------------------------------------------
def test_split_sums_to_batch_size_for_every_size_and_ratio():
    for ratio in [0, 0.1, 0.25, 0.29, Fraction(1, 3), 0.5, 0.7, 0.99, 1]:
        exact = Fraction(str(ratio)) if isinstance(ratio, float) else Fraction(ratio)
        for batch_size in range(1, 130):
            replay, demo = split_batch_size(batch_size, ratio)
            assert replay + demo == batch_size and replay >= 0 and demo >= 0
            assert demo == math.floor(batch_size * exact)
    assert split_batch_size(7, 0.5) == (4, 3)  # the odd row goes to the replay buffer
    assert split_batch_size(1, 0.5) == (1, 0)
    assert split_batch_size(100, 0.29) == (71, 29)  # 0.29 is 29/100, not the double below it


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan"), float("inf"), "0.5", True, None])
def test_split_rejects_bad_ratio(ratio):
    with pytest.raises(InvalidArgumentError, match="demo_ratio"):
        split_batch_size(8, ratio)


# -- batches ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", DATASETS)
@pytest.mark.parametrize("batch_size", [7, 8])
def test_batch_rows_come_from_replay_then_demo(cls, batch_size):
    replay, demo = make_buffer(range(3)), make_buffer(range(DEMO_BASE, DEMO_BASE + 2))
    with cls(replay, demo, batch_size, 1, 1) as ds:
        for _, batch in zip(range(3), ds, strict=False):
            n_demo = batch_size // 2
            n_replay = batch_size - n_demo
            assert (ds.replay_batch_size, ds.demo_batch_size) == (n_replay, n_demo)
            assert batch["actions"].shape == (batch_size, 2)
            assert batch["curr_obs"]["main_images"].shape == (batch_size, 4, 4, 3)
            assert batch["curr_obs"]["main_images"].dtype == torch.uint8
            assert_aligned(batch, n=4)
            c = codes(batch)
            assert (c[:n_replay] < 3000).all(), "replay rows must come first"
            assert (c[n_replay:] >= DEMO_BASE * 1000).all(), "demo rows must come last"


@pytest.mark.parametrize("cls", DATASETS)
def test_without_demo_buffer_every_row_is_replay(cls):
    with cls(make_buffer(range(2)), None, 5, 1, 99) as ds:  # min_demo ignored without demo
        batch = next(iter(ds))
        assert (ds.replay_batch_size, ds.demo_batch_size) == (5, 0)
        assert batch["actions"].shape[0] == 5 and (codes(batch) < 2000).all()


@pytest.mark.parametrize("cls", DATASETS)
def test_buffer_getting_no_rows_is_neither_waited_for_nor_sampled(cls):
    empty = make_buffer([])
    with cls(empty, make_buffer([DEMO_BASE]), 4, 5, 1, demo_ratio=1.0) as ds:
        assert (codes(next(iter(ds))) >= DEMO_BASE * 1000).all()
    with cls(make_buffer([0]), empty, 4, 1, 5, demo_ratio=0) as ds:
        assert (codes(next(iter(ds))) < 1000).all()


def test_batch_transform_runs_on_the_whole_batch():
    def transform(batch: dict) -> dict:
        batch["rewards"] = batch["rewards"] * 0 + batch["actions"].shape[0]
        return batch

    with ReplayBufferDataset(make_buffer([0]), make_buffer([DEMO_BASE]), 6, batch_transform=transform) as ds:
        assert (next(iter(ds))["rewards"] == 6).all()


def test_preload_yields_the_same_batches_as_the_plain_dataset():
    plain = ReplayBufferDataset(make_buffer(range(3), seed=5), make_buffer([DEMO_BASE], seed=6), 9, 1, 1)
    preload = PreloadReplayBufferDataset(
        make_buffer(range(3), seed=5), make_buffer([DEMO_BASE], seed=6), 9, 1, 1, prefetch_size=2
    )
    with plain, preload:
        a_it, b_it = iter(plain), iter(preload)
        for _ in range(6):
            a, b = next(a_it), next(b_it)
            assert torch.equal(a["actions"], b["actions"])
            assert torch.equal(a["curr_obs"]["main_images"], b["curr_obs"]["main_images"])


# -- concatenation and collate -------------------------------------------------------------------
@pytest.mark.parametrize("cls", DATASETS)
def test_demo_buffer_with_other_fields_gives_a_clear_error(cls):
    replay, demo = make_buffer([0], images=True), make_buffer([DEMO_BASE], images=False)
    with cls(replay, demo, 4) as ds:
        it = iter(ds)
        if cls is ReplayBufferDataset:
            with pytest.raises(InvalidArgumentError, match=r"'curr_obs\.main_images' only in the replay"):
                next(it)
        else:
            with pytest.raises(PrefetchError, match="main_images") as info:
                next(it)
            assert isinstance(info.value.__cause__, InvalidArgumentError)


def test_concat_checks_dtype_and_row_shape():
    a = {"obs": {"x": torch.zeros(2, 3)}}
    wrong_dtype = r"'obs\.x' is float32 \[3\] in the replay batch but int64"
    with pytest.raises(InvalidArgumentError, match=wrong_dtype):
        concat_batches([a, {"obs": {"x": torch.zeros(1, 3, dtype=torch.int64)}}], ["replay", "demo"])
    with pytest.raises(InvalidArgumentError, match=r"float32 \[3\] in the replay batch but float32 \[4\]"):
        concat_batches([a, {"obs": {"x": torch.zeros(1, 4)}}], ["replay", "demo"])
    with pytest.raises(InvalidArgumentError, match="dict"):
        concat_batches([a, {"obs": torch.zeros(1, 3)}])
    out = concat_batches([a, {"obs": {"x": torch.ones(1, 3)}}])
    assert out["obs"]["x"].shape == (3, 3) and out["obs"]["x"][2].eq(1).all()


def test_collate_fn_unwraps_concatenates_and_rejects_empty():
    one = rows(3)
    assert replay_buffer_collate_fn([one]) is one
    assert replay_buffer_collate_fn(one) is one
    two = replay_buffer_collate_fn([rows(3, 0.0), rows(3, 1.0)])
    assert two["curr_obs"]["states"].shape == (6, 3) and two["actions"][3:].eq(1).all()
    with pytest.raises(InvalidArgumentError):
        replay_buffer_collate_fn([])


@pytest.mark.parametrize("cls", DATASETS)
def test_dataloader_as_rlinf_uses_it(cls):
    replay, demo = make_buffer(range(2)), make_buffer([DEMO_BASE])
    # the exact call RLinf's learners make: keywords, prefetch_size passed to either class
    with cls(
        replay_buffer=replay,
        demo_buffer=demo,
        batch_size=6,
        min_replay_buffer_size=1,
        min_demo_buffer_size=1,
        prefetch_size=3,
    ) as ds:
        loader = DataLoader(
            ds, batch_size=1, num_workers=0, drop_last=True, collate_fn=replay_buffer_collate_fn
        )
        it = iter(loader)
        for _ in range(3):
            batch = next(it)
            assert batch["actions"].shape == (6, 2) and batch["curr_obs"]["states"].shape == (6, 3)
            assert_aligned(batch, n=4)
        two = next(iter(DataLoader(ds, batch_size=2, collate_fn=replay_buffer_collate_fn)))
        assert two["actions"].shape == (12, 2)
        plain = next(iter(DataLoader(ds, batch_size=None)))
        assert plain["actions"].shape == (6, 2)


# -- waiting and closing ----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", DATASETS)
def test_waiting_for_the_buffer_sleeps_and_close_ends_it_promptly(cls):
    ds = cls(make_buffer([]), None, 4, 1, 0)
    thread, out = next_in_thread(iter(ds))
    time.sleep(0.1)  # let the wait settle into its longest sleeps
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(0.5)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    assert thread.is_alive() and not out, "next() must block while the buffer is empty"
    assert cpu < 0.2 * wall, f"waiting used {cpu:.3f} s of CPU in {wall:.3f} s: it spins"
    start = time.monotonic()
    ds.close()
    thread.join(1.0)
    assert not thread.is_alive() and out == {"stop": True}
    assert time.monotonic() - start < 0.5, "close() must end the wait promptly"
    if cls is PreloadReplayBufferDataset:
        assert not ds.sample_thread.is_alive()


@pytest.mark.parametrize("cls", DATASETS)
def test_wait_ends_when_enough_trajectories_arrive(cls):
    replay = make_buffer([0])
    with cls(replay, None, 4, 3, 0) as ds:
        thread, out = next_in_thread(iter(ds))
        time.sleep(0.15)
        assert not out, "one trajectory is not enough for min_replay_buffer_size=3"
        replay.add_trajectories([coded_trajectory(1), coded_trajectory(2)])
        thread.join(1.0)
        assert out["batch"]["actions"].shape == (4, 2)


@pytest.mark.parametrize("cls", DATASETS)
def test_close_is_idempotent_and_iter_after_close_raises(cls):
    ds = cls(make_buffer([0]), None, 2)
    ds.close()  # before any iteration: no thread to stop
    ds.close()
    assert ds.closed
    with pytest.raises(DatasetClosedError):
        iter(ds)
    ds2 = cls(make_buffer([0]), None, 2)
    it = iter(ds2)
    next(it)
    ds2.close()
    ds2.close()
    with pytest.raises(StopIteration):
        next(it)


def test_close_with_a_full_queue_stops_the_thread_promptly():
    ds = PreloadReplayBufferDataset(make_buffer(range(2)), None, 4, 1, 0, prefetch_size=2)
    it = iter(ds)
    next(it)
    deadline = time.monotonic() + 2
    while not ds.preload_queue.full() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ds.preload_queue.full(), "the producer should have filled the queue"
    start = time.monotonic()
    ds.close()
    assert time.monotonic() - start < 0.5 and not ds.sample_thread.is_alive()
    assert ds.preload_queue.empty()


def test_close_from_batch_transform_does_not_deadlock():
    holder: dict = {}

    def transform(batch: dict) -> dict:
        holder["ds"].close()
        return batch

    ds = PreloadReplayBufferDataset(make_buffer([0]), None, 2, batch_transform=transform)
    holder["ds"] = ds
    thread, out = next_in_thread(iter(ds))
    thread.join(1.0)
    assert out == {"stop": True}
    ds.sample_thread.join(1.0)
    assert not ds.sample_thread.is_alive()


def test_dropping_the_dataset_stops_its_thread():
    ds = PreloadReplayBufferDataset(make_buffer([0]), None, 2, prefetch_size=1)
    it = iter(ds)
    next(it)
    thread = ds.sample_thread
    del ds, it
    gc.collect()
    thread.join(1.0)
    assert not thread.is_alive()


def test_buffer_emptied_between_check_and_sample_is_waited_for_again():
    calls = {"n": 0}

    def sample(n: int) -> dict:
        calls["n"] += 1
        if calls["n"] == 1:
            raise EmptyBufferError("cleared under us")
        return rows(n, 1.0)

    with ReplayBufferDataset(FakeBuffer(sample), None, 3) as ds:
        assert next(iter(ds))["actions"].shape == (3, 2) and calls["n"] == 2


# -- errors from sampling ---------------------------------------------------------------------------
def test_sampling_error_reaches_the_consumer_with_its_cause():
    calls = {"n": 0}

    def sample(n: int) -> dict:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("disk on fire")
        return rows(n, calls["n"])

    ds = PreloadReplayBufferDataset(FakeBuffer(sample), None, 3, prefetch_size=4)
    it = iter(ds)
    assert next(it)["actions"][0, 0] == 1 and next(it)["actions"][0, 0] == 2  # queued before the error
    with pytest.raises(PrefetchError, match="disk on fire") as info:
        next(it)
    assert isinstance(info.value.__cause__, OSError)
    ds.sample_thread.join(1.0)
    assert not ds.sample_thread.is_alive()
    with pytest.raises(PrefetchError, match="disk on fire"):  # sticky, for every iterator
        next(iter(ds))
    ds.close()
    ds.close()


def test_sampling_error_in_plain_dataset_is_raised_as_is():
    def sample(n: int) -> dict:
        raise OSError("disk on fire")

    with ReplayBufferDataset(FakeBuffer(sample), None, 3) as ds, pytest.raises(OSError, match="disk on fire"):
        next(iter(ds))


def test_error_while_consumer_waits_wakes_it():
    gate = threading.Event()

    def sample(n: int) -> dict:
        gate.wait(2)
        raise ValueError("bad rows")

    ds = PreloadReplayBufferDataset(FakeBuffer(sample), None, 3)
    thread, out = next_in_thread(iter(ds))
    time.sleep(0.1)
    assert not out
    gate.set()
    thread.join(1.0)
    assert isinstance(out["error"], PrefetchError) and isinstance(out["error"].__cause__, ValueError)
    ds.close()


# -- pin_memory, device ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", DATASETS)
def test_pin_memory_and_device(cls):
    with cls(make_buffer([0]), None, 4, pin_memory=True, device="cpu") as ds:
        batch = next(iter(ds))
        assert batch["actions"].device.type == "cpu"
        assert batch["curr_obs"]["states"].is_pinned() == torch.cuda.is_available()
    with pytest.raises(InvalidArgumentError, match="device"):
        cls(make_buffer([0]), None, 4, device="not-a-device")


# -- processes and arguments ---------------------------------------------------------------------
@pytest.mark.parametrize("cls", DATASETS)
def test_dataloader_worker_processes_are_refused(cls):
    with cls(make_buffer([0]), None, 2) as ds:
        loader = DataLoader(
            ds,
            batch_size=1,
            num_workers=1,
            collate_fn=replay_buffer_collate_fn,
            multiprocessing_context="fork",
        )
        it = iter(loader)
        try:
            with pytest.raises(InvalidArgumentError, match="num_workers=0"):
                next(it)
        finally:
            # stop the worker now: left to the garbage collector, torch waits 5 s for it
            it._shutdown_workers()
        with pytest.raises(InvalidArgumentError, match="pickled"):
            pickle.dumps(ds)


def test_arguments_are_checked_and_rlinf_positional_order_works():
    buf = make_buffer([0])
    ds = PreloadReplayBufferDataset(buf, None, 8, 1, 0, 3)
    got = (ds.batch_size, ds.min_replay_buffer_size, ds.min_demo_buffer_size, ds.prefetch_size)
    assert got == (8, 1, 0, 3)
    ds.close()
    bad = [
        dict(batch_size=0),
        dict(min_replay_buffer_size=-1),
        dict(prefetch_size=0),
        dict(demo_ratio=2),
        dict(pin_memory="yes"),
        dict(batch_transform=3),
    ]
    for kwargs in bad:
        for cls in DATASETS:
            args = {"replay_buffer": buf, "demo_buffer": None, "batch_size": 4, **kwargs}
            with pytest.raises(InvalidArgumentError):
                cls(**args)
    with pytest.raises(InvalidArgumentError, match="replay_buffer"):
        ReplayBufferDataset(None, None, 4)
    with pytest.raises(InvalidArgumentError, match="demo_buffer"):
        ReplayBufferDataset(buf, object(), 4)


# -- what RLinf's learners rely on -------------------------------------------------------------------
@pytest.mark.parametrize("cls", DATASETS)
def test_both_datasets_are_iterable_datasets(cls):
    from torch.utils.data import IterableDataset

    assert issubclass(cls, IterableDataset)
    with cls(make_buffer([0]), None, 2) as ds:
        assert isinstance(ds, IterableDataset)


def test_plain_dataset_accepts_prefetch_size_and_does_not_prefetch():
    replay = make_buffer([0])
    with ReplayBufferDataset(replay, None, 4, 1, 0, prefetch_size=10) as ds:
        assert not hasattr(ds, "sample_thread")
        assert next(iter(ds))["actions"].shape == (4, 2)
    with pytest.raises(InvalidArgumentError, match="prefetch_size must be an int >= 1"):
        ReplayBufferDataset(replay, None, 4, prefetch_size=0)


@pytest.mark.parametrize("cls", DATASETS)
def test_min_replay_buffer_size_set_after_the_loader_iterator_applies_to_the_next_batch(cls):
    # RLinf's RLT worker: build the dataset and iter(DataLoader(...)), then set the size to 1
    replay = make_buffer([0])
    ds = cls(
        replay_buffer=replay,
        demo_buffer=None,
        batch_size=4,
        min_replay_buffer_size=1000,
        min_demo_buffer_size=0,
        prefetch_size=2,
    )
    it = iter(DataLoader(ds, batch_size=1, num_workers=0, collate_fn=replay_buffer_collate_fn))
    thread, out = next_in_thread(it)
    time.sleep(0.15)
    assert not out, "one trajectory is not enough for min_replay_buffer_size=1000"
    ds.min_replay_buffer_size = 1
    thread.join(2.0)
    assert out["batch"]["actions"].shape == (4, 2)
    assert ds.min_replay_buffer_size == 1
    ds.close()


@pytest.mark.parametrize("cls", DATASETS)
def test_min_demo_buffer_size_set_after_construction_applies_to_the_next_batch(cls):
    ds = cls(make_buffer(range(2)), make_buffer([DEMO_BASE]), 4, 1, 5)
    thread, out = next_in_thread(iter(ds))
    time.sleep(0.15)
    assert not out, "one demo trajectory is not enough for min_demo_buffer_size=5"
    ds.min_demo_buffer_size = 1
    thread.join(2.0)
    assert out["batch"]["actions"].shape == (4, 2)
    ds.close()


@pytest.mark.parametrize("cls", DATASETS)
def test_raising_the_min_size_makes_the_next_batch_wait(cls):
    replay = make_buffer([0])
    ds = cls(replay, None, 2, 1, 0, prefetch_size=1)
    it = iter(ds)
    next(it)
    ds.min_replay_buffer_size = 3
    if cls is PreloadReplayBufferDataset:  # drop what was sampled before: the queued batch and
        time.sleep(0.2)  # the one the thread may have been putting
        for _ in range(3):
            try:
                ds.preload_queue.get(timeout=0.2)
            except queue.Empty:
                break
    thread, out = next_in_thread(it)
    time.sleep(0.15)
    assert not out, "the new minimum must hold the next batch back"
    replay.add_trajectories([coded_trajectory(1), coded_trajectory(2)])
    thread.join(2.0)
    assert out["batch"]["actions"].shape == (2, 2)
    ds.close()


@pytest.mark.parametrize("cls", DATASETS)
@pytest.mark.parametrize("name", ["min_replay_buffer_size", "min_demo_buffer_size"])
def test_bad_min_size_set_later_fails_naming_it_and_keeps_the_old_value(cls, name):
    with cls(make_buffer([0]), make_buffer([DEMO_BASE]), 2, 1, 1) as ds:
        for bad in (-1, "2", 1.5, True):
            with pytest.raises(InvalidArgumentError, match=f"{name} must be an int >= 0"):
                setattr(ds, name, bad)
        assert getattr(ds, name) == 1


@pytest.mark.parametrize("cls", DATASETS)
def test_close_before_iteration_is_safe_repeatable_and_quiet_at_collection(cls, monkeypatch):
    unraisable: list = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    ds = cls(make_buffer([0]), None, 2)
    ds.close()
    ds.close()
    if cls is PreloadReplayBufferDataset:
        assert ds.sample_thread is None
    del ds
    gc.collect()
    assert unraisable == []  # __del__ after close() reports nothing


def test_collate_fn_returns_the_one_batch_a_loader_of_batch_size_1_collects():
    batch = rows(5)
    assert replay_buffer_collate_fn([batch]) is batch
