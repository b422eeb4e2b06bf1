"""Datasets that feed batches sampled from replay buffers to a torch training loop.

:class:`ReplayBufferDataset` and :class:`PreloadReplayBufferDataset` are ``IterableDataset``\\ s
with the call shape RLinf's learners use::

    dataset = PreloadReplayBufferDataset(
        replay_buffer=replay, demo_buffer=demo, batch_size=256,
        min_replay_buffer_size=10, min_demo_buffer_size=1, prefetch_size=5,
    )
    loader = DataLoader(dataset, batch_size=1, num_workers=0, collate_fn=replay_buffer_collate_fn)
    batch = next(iter(loader))   # batch["actions"]: [256, ...]

Every item the datasets yield is one whole training batch: the nested dict of ``[batch_size, ...]``
tensors that :meth:`TrajectoryReplayBuffer.sample` returns, the first ``replay_batch_size`` rows
drawn from the replay buffer and the remaining ``demo_batch_size`` rows from the demo buffer.
Iteration never ends on its own; :meth:`ReplayBufferDataset.close` ends it.
"""

from __future__ import annotations

import logging
import math
import numbers
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any, Protocol

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .errors import DatasetClosedError, EmptyBufferError, InvalidArgumentError, PrefetchError
from .validate import check_bool, check_int

logger = logging.getLogger("rlinf_replay_buffer")

Batch = dict[str, Any]
"""A batch: ``{"actions": [N, ...], ..., "curr_obs": {"states": [N, ...], ...}, ...}``."""

BatchTransform = Callable[[Batch], Batch]

# Waiting for the buffers to fill: the first re-check after 1 ms, doubling up to 50 ms. A waiting
# iterator thus wakes at most 20 times a second, and close() interrupts any of these sleeps.
_FIRST_DELAY = 0.001
_MAX_DELAY = 0.05
# How often a blocked prefetch put (queue full) or get (queue empty) re-checks for close().
_QUEUE_POLL = 0.05


class SampleSource(Protocol):
    """What the datasets need of a buffer (``TrajectoryReplayBuffer`` has both)."""

    def is_ready(self, min_size: int) -> bool: ...

    def sample(self, num_chunks: int) -> Batch: ...


# -- arguments ----------------------------------------------------------------------------------
def _buffer_arg(name: str, value: Any) -> SampleSource:
    if not (callable(getattr(value, "sample", None)) and callable(getattr(value, "is_ready", None))):
        raise InvalidArgumentError(
            f"{name} must be a TrajectoryReplayBuffer (an object with sample() and is_ready()), "
            f"got {type(value).__name__}"
        )
    return value


def _ratio_arg(value: Any) -> Fraction:
    """``demo_ratio`` as an exact fraction: a float counts as the decimal it prints as (0.3 is
    3/10, not the binary double just below it), so ``batch_size * demo_ratio`` has no rounding
    error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"demo_ratio must be a number in [0, 1], got {value!r}")
    if isinstance(value, numbers.Rational):
        ratio = Fraction(int(value.numerator), int(value.denominator))
    else:
        as_float = float(value)
        if not math.isfinite(as_float):
            raise InvalidArgumentError(f"demo_ratio must be a number in [0, 1], got {value!r}")
        ratio = Fraction(repr(as_float))
    if not 0 <= ratio <= 1:
        raise InvalidArgumentError(f"demo_ratio must be a number in [0, 1], got {value!r}")
    return ratio


def _device_arg(device: torch.device | str | int | None) -> torch.device | None:
    """The target device, fixed at construction: a bare ``"cuda"`` becomes the current CUDA
    device of the constructing thread (the prefetch thread's own current device may differ)."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"device: not a torch device: {device!r} ({exc})") from None
    if resolved.type == "cuda" and resolved.index is None and torch.cuda.is_available():
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def split_batch_size(batch_size: int, demo_ratio: float | Fraction = 0.5) -> tuple[int, int]:
    """Rows of a batch drawn from the replay and from the demo buffer.

    ``demo_rows = floor(batch_size * demo_ratio)`` and ``replay_rows = batch_size - demo_rows``:
    the two always sum to ``batch_size``, and an odd row left over goes to the replay buffer
    (``batch_size=7, demo_ratio=0.5`` gives ``(4, 3)``). A float ratio counts as the decimal it
    prints as (``split_batch_size(100, 0.29) == (71, 29)``).

    Args:
        batch_size: rows per batch (>= 1).
        demo_ratio: share of the rows drawn from the demo buffer, in ``[0, 1]``.

    Returns:
        ``(replay_rows, demo_rows)``, both >= 0.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    ratio = _ratio_arg(demo_ratio)
    demo_rows = math.floor(batch_size * ratio)
    return batch_size - demo_rows, demo_rows


# -- batches ------------------------------------------------------------------------------------
def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {list(value.shape[1:])}"
    return "a dict" if isinstance(value, Mapping) else type(value).__name__


def _concat_level(parts: Sequence[Mapping[str, Any]], names: Sequence[str], path: str) -> Batch:
    first = parts[0]
    for part, name in zip(parts[1:], names[1:], strict=True):
        if part.keys() != first.keys():
            only_first = sorted(set(first) - set(part))
            only_part = sorted(set(part) - set(first))
            detail = "; ".join(
                f"{', '.join(repr(path + k) for k in keys)} only in the {where} batch"
                for keys, where in ((only_first, names[0]), (only_part, name))
                if keys
            )
            raise InvalidArgumentError(
                f"cannot concatenate the {names[0]} and {name} batches: {detail}; both buffers "
                "must hold trajectories with the same fields"
            )
    out: Batch = {}
    for key in first:
        values = [part[key] for part in parts]
        where = path + key
        if all(isinstance(v, Mapping) for v in values):
            out[key] = _concat_level(values, names, where + ".")
            continue
        if all(isinstance(v, torch.Tensor) and v.dim() >= 1 for v in values):
            ref = values[0]
            for value, name in zip(values[1:], names[1:], strict=True):
                if value.dtype != ref.dtype or value.shape[1:] != ref.shape[1:]:
                    raise InvalidArgumentError(
                        f"cannot concatenate the {names[0]} and {name} batches: {where!r} is "
                        f"{_describe(ref)} in the {names[0]} batch but {_describe(value)} in the "
                        f"{name} batch; both buffers must hold the same dtype and per-transition "
                        "shape for every field"
                    )
            out[key] = torch.cat(values, dim=0)
            continue
        kinds = ", ".join(f"{_describe(v)} in the {n} batch" for v, n in zip(values, names, strict=True))
        raise InvalidArgumentError(
            f"cannot concatenate {where!r}: every value must be a tensor with a batch dimension "
            f"or a dict of them, got {kinds}"
        )
    return out


def concat_batches(batches: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> Batch:
    """Concatenate nested dict batches key by key along dim 0.

    Args:
        batches: dicts whose values are ``[N_i, ...]`` tensors or dicts of them (``sample()``
            batches). All must have the same keys at every level, and each field the same dtype
            and per-row shape.
        names: what to call each batch in error messages (default ``"batch 0"``, ...).

    Returns:
        A new dict of ``[sum(N_i), ...]`` tensors, rows in the order of ``batches``.

    Raises:
        InvalidArgumentError: no batch, or the batches differ in keys, dtypes or row shapes
            (the message names the field).
    """
    if isinstance(batches, Mapping) or not isinstance(batches, Sequence) or not batches:
        raise InvalidArgumentError("concat_batches takes a non-empty list of batches (dicts)")
    if names is None:
        names = [f"batch {i}" for i in range(len(batches))]
    if len(names) != len(batches):
        raise InvalidArgumentError("concat_batches: names must name every batch")
    for batch, name in zip(batches, names, strict=True):
        if not isinstance(batch, Mapping):
            raise InvalidArgumentError(f"the {name} batch is a {type(batch).__name__}, not a dict")
    return _concat_level(batches, names, "")


def replay_buffer_collate_fn(batch: Sequence[Batch] | Batch) -> Batch:
    """``collate_fn`` for a ``DataLoader`` over a replay-buffer dataset.

    The datasets yield whole batches, so there is nothing to stack:

    * ``DataLoader(ds, batch_size=1, collate_fn=replay_buffer_collate_fn)`` (RLinf's usage)
      passes a one-element list: its batch is returned unchanged.
    * ``DataLoader(ds, batch_size=k)`` with ``k > 1`` passes ``k`` batches: they are
      concatenated along dim 0 into one batch of ``k * batch_size`` rows.
    * ``DataLoader(ds, batch_size=None, collate_fn=...)`` passes the batch itself: returned
      unchanged.

    Raises:
        InvalidArgumentError: an empty list, or batches that cannot be concatenated.
    """
    if isinstance(batch, Mapping):
        return batch  # type: ignore[return-value]
    if not isinstance(batch, Sequence) or not batch:
        raise InvalidArgumentError(
            "replay_buffer_collate_fn takes the list of batches a DataLoader collects, got "
            f"{type(batch).__name__ if not isinstance(batch, Sequence) else 'an empty list'}"
        )
    if len(batch) == 1:
        return batch[0]
    return concat_batches(batch)


def _to_device(value: Any, pin: bool, device: torch.device | None) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_device(v, pin, device) for k, v in value.items()}
    if not isinstance(value, torch.Tensor):
        return value
    if pin and value.device.type == "cpu":
        value = value.pin_memory()
    if device is not None:
        value = value.to(device, non_blocking=pin and device.type == "cuda")
    return value


class _BatchSource:
    """What it takes to make one batch: the buffers, the split, the transform and the target.

    The prefetch thread holds this object and not the dataset, so that a dataset nobody refers to
    any more can be garbage collected (its ``__del__`` then stops the thread).
    """

    def __init__(
        self,
        parts: list[tuple[str, SampleSource, int]],
        min_sizes: dict[str, int],
        transform: BatchTransform | None,
        pin: bool,
        device: torch.device | None,
    ) -> None:
        self.parts = parts  # (name, buffer, rows) of every buffer with rows > 0
        # name -> trajectories the buffer must hold; the dataset's own dict, so a change of
        # dataset.min_replay_buffer_size reaches the next readiness check (also in the thread)
        self.min_sizes = min_sizes
        self.transform = transform
        self.pin = pin
        self.device = device

    def ready(self) -> bool:
        return all(buffer.is_ready(self.min_sizes[name]) for name, buffer, _ in self.parts)

    def wait_ready(self, stop: threading.Event) -> bool:
        """Block until every buffer is ready (True) or ``stop`` is set (False), sleeping between
        checks (1 ms, doubling to 50 ms) on ``stop`` so that setting it ends the wait at once."""
        delay = _FIRST_DELAY
        logged = False
        while not stop.is_set():
            if self.ready():
                return True
            if not logged:
                logged = True
                wanted = [
                    f"the {name} buffer to hold {self.min_sizes[name]} trajectories"
                    for name, _, _ in self.parts
                ]
                logger.info("waiting for %s", " and ".join(wanted))
            if stop.wait(delay):
                break
            delay = min(delay * 2, _MAX_DELAY)
        return False

    def make(self) -> Batch | None:
        """Sample one batch; ``None`` if a buffer was emptied since the readiness check."""
        try:
            batches = [buffer.sample(rows) for _, buffer, rows in self.parts]
        except EmptyBufferError:
            return None
        if len(batches) == 1:
            batch = batches[0]
        else:
            batch = concat_batches(batches, [name for name, *_ in self.parts])
        if self.transform is not None:
            batch = self.transform(batch)
        return _to_device(batch, self.pin, self.device)

    def next(self, stop: threading.Event) -> Batch | None:
        """The next batch, waiting for the buffers as long as needed; ``None`` once ``stop``."""
        while self.wait_ready(stop):
            batch = self.make()
            if batch is not None:
                return batch
            stop.wait(_MAX_DELAY)  # the buffer was cleared under us: wait for it to refill
        return None


# -- datasets -----------------------------------------------------------------------------------
class ReplayBufferDataset(IterableDataset):
    """An endless ``IterableDataset`` of batches sampled from a replay and a demo buffer.

    Each item is one whole batch: a dict of ``[batch_size, ...]`` tensors (the per-step fields of
    the trajectories, e.g. ``actions`` float32 ``[batch_size, action_dim]``, ``dones`` bool
    ``[batch_size, 1]``, and ``curr_obs``/``next_obs``/``forward_inputs`` as dicts of such
    tensors, in the buffers' stored dtypes). Rows ``[0, replay_batch_size)`` come from
    ``replay_buffer.sample(replay_batch_size)``, rows ``[replay_batch_size, batch_size)`` from
    ``demo_buffer.sample(demo_batch_size)``; see :func:`split_batch_size`. Sampling happens in
    the thread that calls ``next()``; :class:`PreloadReplayBufferDataset` samples ahead in a
    background thread.

    Before each batch the iterator waits until ``replay_buffer.is_ready(min_replay_buffer_size)``
    and ``demo_buffer.is_ready(min_demo_buffer_size)`` (sizes in trajectories; a buffer that gets
    no rows, because ``demo_ratio`` is 0 or 1 or the batch is too small, is neither waited for nor
    sampled). Both sizes are read again before every batch, so setting
    ``dataset.min_replay_buffer_size`` after construction (RLinf's RLT worker sets it to 1 once
    the loader's iterator exists) applies to the next batch. The wait sleeps between checks, so
    it costs no CPU, and ends at once on :meth:`close`.

    Use it with ``DataLoader(dataset, batch_size=1, num_workers=0,
    collate_fn=replay_buffer_collate_fn)``. The dataset must stay in the process that owns the
    buffers: iterating it in a DataLoader worker process (``num_workers > 0``) raises
    :class:`InvalidArgumentError`, and it cannot be pickled.

    Args:
        replay_buffer: the buffer of online trajectories (a ``TrajectoryReplayBuffer``, or any
            object with ``sample(num_chunks)`` and ``is_ready(min_size)``).
        demo_buffer: the buffer of demonstrations, or ``None`` to draw every row from
            ``replay_buffer``.
        batch_size: rows per batch (>= 1).
        min_replay_buffer_size: trajectories ``replay_buffer`` must hold before sampling.
        min_demo_buffer_size: trajectories ``demo_buffer`` must hold before sampling.
        demo_ratio: share of each batch drawn from ``demo_buffer`` (ignored without one).
        batch_transform: applied to every batch after concatenation, before ``pin_memory`` and
            ``device``.
        pin_memory: return batches in page-locked memory, for fast asynchronous copies to the
            GPU. Page-locked memory needs CUDA: without it (``torch.cuda.is_available()`` false)
            the flag has no effect and batches stay in ordinary memory.
        device: move every tensor of each batch to this device (``"cuda"`` means the current
            CUDA device at construction). ``None`` leaves batches where the buffer put them (CPU).
        prefetch_size: accepted so that one call can build either class (as RLinf does); this
            class does not prefetch and ignores it.
    """

    def __init__(
        self,
        replay_buffer: SampleSource,
        demo_buffer: SampleSource | None,
        batch_size: int,
        min_replay_buffer_size: int = 1,
        min_demo_buffer_size: int = 1,
        *,
        demo_ratio: float | Fraction = 0.5,
        batch_transform: BatchTransform | None = None,
        pin_memory: bool = False,
        device: torch.device | str | None = None,
        prefetch_size: int | None = None,
    ) -> None:
        self.replay_buffer = _buffer_arg("replay_buffer", replay_buffer)
        self.demo_buffer = None if demo_buffer is None else _buffer_arg("demo_buffer", demo_buffer)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self._min_sizes: dict[str, int] = {}
        self.min_replay_buffer_size = min_replay_buffer_size
        self.min_demo_buffer_size = min_demo_buffer_size
        ratio = _ratio_arg(demo_ratio)
        self.demo_ratio = float(ratio)
        if prefetch_size is not None:
            check_int("prefetch_size", prefetch_size, 1)
        if batch_transform is not None and not callable(batch_transform):
            raise InvalidArgumentError(f"batch_transform must be callable, got {batch_transform!r}")
        self.batch_transform = batch_transform
        self.pin_memory = check_bool("pin_memory", pin_memory)
        self.device = _device_arg(device)
        self.replay_batch_size, self.demo_batch_size = split_batch_size(
            self.batch_size, ratio if self.demo_buffer is not None else 0
        )

        parts = [("replay", self.replay_buffer, self.replay_batch_size)]
        if self.demo_buffer is not None:
            parts.append(("demo", self.demo_buffer, self.demo_batch_size))
        pin = pin_memory and torch.cuda.is_available()
        if pin_memory and not pin:
            logger.info("pin_memory=True has no effect without CUDA: batches stay in ordinary memory")
        self._source = _BatchSource(
            [p for p in parts if p[2] > 0], self._min_sizes, batch_transform, pin, self.device
        )
        self._stop = threading.Event()

    @property
    def min_replay_buffer_size(self) -> int:
        """Trajectories ``replay_buffer`` must hold before a batch is sampled. Settable at any
        time (RLinf's RLT worker sets it to 1 after building the dataset): the next readiness
        check uses the new value, also in a prefetch thread that is already waiting."""
        return self._min_sizes["replay"]

    @min_replay_buffer_size.setter
    def min_replay_buffer_size(self, value: int) -> None:
        self._min_sizes["replay"] = check_int("min_replay_buffer_size", value, 0)

    @property
    def min_demo_buffer_size(self) -> int:
        """Trajectories ``demo_buffer`` must hold before a batch is sampled; settable like
        :attr:`min_replay_buffer_size`."""
        return self._min_sizes["demo"]

    @min_demo_buffer_size.setter
    def min_demo_buffer_size(self, value: int) -> None:
        self._min_sizes["demo"] = check_int("min_demo_buffer_size", value, 0)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._stop.is_set()

    def _check_can_iterate(self) -> None:
        if self._stop.is_set():
            raise DatasetClosedError(f"{type(self).__name__} is closed; create a new one to sample again")
        if get_worker_info() is not None:
            raise InvalidArgumentError(
                f"{type(self).__name__} cannot run in a DataLoader worker process: use "
                "DataLoader(..., num_workers=0). A worker would sample a forked copy of the "
                "buffers that never sees new trajectories, and every worker would yield its own "
                "copy of the stream"
            )

    def __iter__(self) -> Iterator[Batch]:
        """An endless iterator of batches (see the class docstring); it ends when :meth:`close`
        is called, also while it waits for the buffers.

        Raises:
            DatasetClosedError: the dataset is already closed.
            InvalidArgumentError: called in a DataLoader worker process.
        """
        self._check_can_iterate()
        return self._iterate()

    def _iterate(self) -> Iterator[Batch]:
        while True:
            batch = self._source.next(self._stop)
            if batch is None:
                return
            yield batch

    def close(self) -> None:
        """End every iterator of this dataset, also one waiting for the buffers in another thread
        (its ``next()`` raises ``StopIteration``). Safe to call any number of times, from any
        thread. The buffers are not closed: they belong to the caller."""
        self._stop.set()

    def __enter__(self) -> ReplayBufferDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        raise InvalidArgumentError(
            f"{type(self).__name__} cannot be pickled or sent to another process (it samples "
            "buffers that live in this process); use DataLoader(..., num_workers=0)"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_size={self.batch_size}, replay_rows={self.replay_batch_size}, "
            f"demo_rows={self.demo_batch_size}, closed={self.closed})"
        )


class _Failed:
    """Queue marker: the prefetch thread raised (the exception is in ``_PrefetchState``)."""


class _PrefetchState:
    def __init__(self) -> None:
        self.failure: BaseException | None = None


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` into the bounded queue, giving up (False) once ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_QUEUE_POLL)
            return True
        except queue.Full:
            continue
    return False


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _prefetch(source: _BatchSource, q: queue.Queue, stop: threading.Event, state: _PrefetchState) -> None:
    """Body of the prefetch thread: fill ``q`` with batches until ``stop``; on an exception,
    record it and put the failure marker behind the batches already queued."""
    try:
        while True:
            batch = source.next(stop)
            if batch is None or not _put(q, batch, stop):
                return
    except BaseException as exc:  # noqa: BLE001 - everything must reach the consumer
        state.failure = exc
        _put(q, _Failed, stop)


class PreloadReplayBufferDataset(ReplayBufferDataset):
    """:class:`ReplayBufferDataset` that samples ahead in a background thread.

    The first ``iter()`` starts one daemon thread that waits for the buffers, samples batches
    exactly as :class:`ReplayBufferDataset` does (split, transform, ``pin_memory``, ``device``)
    and keeps up to ``prefetch_size`` of them in a queue; ``next()`` takes the oldest. All
    iterators of one dataset share that thread and queue (each batch goes to one of them). With
    buffers that do not change, the batches are the same, in the same order, as those of a
    :class:`ReplayBufferDataset` over the same buffers; new trajectories reach batches after the
    ``prefetch_size`` already queued.

    If sampling raises in the thread (for example the buffers' fields differ, or a read fails),
    the batches queued before are still delivered, then ``next()`` raises :class:`PrefetchError`
    with the original exception as ``__cause__``, and keeps raising it: the thread has stopped.

    :meth:`close` stops the thread promptly (it is never stuck on a full queue or a wait) and
    ends every iterator. The dataset is also a context manager, and dropping the last reference
    to it stops the thread.

    Args:
        prefetch_size: batches kept ready in the queue (>= 1; each holds ``batch_size`` rows).
        others: as for :class:`ReplayBufferDataset`.
    """

    def __init__(
        self,
        replay_buffer: SampleSource,
        demo_buffer: SampleSource | None,
        batch_size: int,
        min_replay_buffer_size: int = 1,
        min_demo_buffer_size: int = 1,
        prefetch_size: int = 5,
        *,
        demo_ratio: float | Fraction = 0.5,
        batch_transform: BatchTransform | None = None,
        pin_memory: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        self.prefetch_size = check_int("prefetch_size", prefetch_size, 1)
        super().__init__(
            replay_buffer,
            demo_buffer,
            batch_size,
            min_replay_buffer_size,
            min_demo_buffer_size,
            demo_ratio=demo_ratio,
            batch_transform=batch_transform,
            pin_memory=pin_memory,
            device=device,
        )
        self.preload_queue: queue.Queue = queue.Queue(maxsize=self.prefetch_size)
        self.sample_thread: threading.Thread | None = None
        self._state = _PrefetchState()
        self._start_lock = threading.Lock()

    def __iter__(self) -> Iterator[Batch]:
        """Start the prefetch thread (first call only) and return an iterator of its batches.

        Raises:
            DatasetClosedError: the dataset is already closed.
            InvalidArgumentError: called in a DataLoader worker process.
            PrefetchError: (from ``next()``) the prefetch thread failed.
        """
        self._check_can_iterate()
        with self._start_lock:
            if self.sample_thread is None:
                self.sample_thread = threading.Thread(
                    target=_prefetch,
                    args=(self._source, self.preload_queue, self._stop, self._state),
                    name="replay-buffer-prefetch",
                    daemon=True,
                )
                self.sample_thread.start()
        return self._iterate()

    def _failure(self) -> PrefetchError:
        cause = self._state.failure
        error = PrefetchError(f"the prefetch thread failed while sampling: {type(cause).__name__}: {cause}")
        error.__cause__ = cause
        error.__suppress_context__ = True
        return error

    def _iterate(self) -> Iterator[Batch]:
        while not self._stop.is_set():
            if self._state.failure is not None and self.preload_queue.empty():
                raise self._failure()
            try:
                item = self.preload_queue.get(timeout=_QUEUE_POLL)
            except queue.Empty:
                continue
            if item is _Failed:
                raise self._failure()
            yield item

    def close(self, timeout: float = 5.0) -> None:
        """Stop the prefetch thread and end every iterator (their ``next()`` raises
        ``StopIteration``). Queued batches are dropped. Safe to call any number of times, from
        any thread, also from ``batch_transform`` (then it does not wait for the thread).

        Args:
            timeout: seconds to wait for the thread to finish the batch it is sampling, if any;
                a thread still running after that is left to end by itself (it is a daemon and
                puts nothing more into the queue), with a warning.
        """
        self._stop.set()
        _drain(self.preload_queue)
        thread = self.sample_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning(
                    "the prefetch thread is still sampling %.1f s after close(); it will exit "
                    "when that sample returns",
                    timeout,
                )
        _drain(self.preload_queue)

    def __del__(self) -> None:
        # non-blocking: tell the thread to stop and release the queued batches
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        q = getattr(self, "preload_queue", None)
        if q is not None:  # without get(): at interpreter exit the queue module may be gone
            with q.mutex:
                q.queue.clear()
                q.not_full.notify_all()


__all__ = [
    "Batch",
    "DatasetClosedError",
    "PrefetchError",
    "PreloadReplayBufferDataset",
    "ReplayBufferDataset",
    "concat_batches",
    "replay_buffer_collate_fn",
    "split_batch_size",
]
