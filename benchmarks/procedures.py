"""What a child process does for one (case, contender): build the store, time it, return rows.

A row is a plain dict (JSON-serializable): ``table``, ``contender`` (label, with ``@level`` for
index-size cases), ``base`` (label without level), ``level``, ``status`` (``ok``, ``not
installed``, ``unsupported``, ``error``, ``cold: unavailable``), ``note``, ``median_s``,
``times``, ``warmup_times``, ``runs``, ``items`` (transitions per call), ``nbytes`` (bytes per
call), ``cached_bytes`` and ``extra`` (additional columns). The parent adds ratios.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .contenders import NotInstalled, Store, StoreConfig, Unsupported, module_for, split_label, variant_of
from .measure import (
    ColdCache,
    Timing,
    link_copy,
    time_calls,
    time_parts,
    total_bytes,
    touch_files,
)
from .scenarios import Case, TrajSpec, level_name, make_trajectory


@dataclass
class Options:
    """Measurement settings shared by every child."""

    warmup: int = 3
    repeats: int = 30
    max_seconds: float = 20.0
    tmp_root: str = "/tmp"
    cache_root: str = "/tmp/rlinf-bench-cache"
    seed: int = 0
    quick: bool = False
    refresh_cache: bool = False


def make_row(
    table: str,
    label: str,
    *,
    timing: Timing | None = None,
    items: int | None = None,
    nbytes: int | None = None,
    cached: int | None = None,
    note: str = "",
    level: int | None = None,
    status: str = "ok",
    extra: dict[str, Any] | None = None,
    ratio: bool = True,
) -> dict[str, Any]:
    """A result row (see the module docstring); ``ratio=False``: a reference that moves no data,
    shown without rates and ratio."""
    return {
        "table": table,
        "contender": label if level is None else f"{label} @{level_name(level)}",
        "base": label,
        "level": level,
        "status": status,
        "note": note,
        "median_s": timing.median if timing and timing.times else None,
        "times": list(timing.times) if timing else [],
        "warmup_times": list(timing.warmup) if timing else [],
        "runs": len(timing.times) if timing else 0,
        "items": items,
        "nbytes": nbytes,
        "cached_bytes": cached,
        "extra": extra or {},
        "no_ratio": not ratio,
    }


def leaves(batch: Any, prefix: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Flatten a nested batch (dicts, TensorDicts, tuple keys) to ``{"curr_obs.states": t}``."""
    if isinstance(batch, torch.Tensor):
        return {".".join(prefix): batch}
    out: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        out.update(leaves(value, prefix + (key if isinstance(key, tuple) else (key,))))
    return out


def check_batch(store: Store, n: int, spec: TrajSpec, allowed_extra: tuple[str, ...] = ()) -> str:
    """Sample once (untimed) and compare keys, shapes and dtypes with the spec; '' if all match.
    Keys in ``allowed_extra`` (e.g. a prioritized batch's ``indices`` and ``weights``) may be
    present too."""
    if not store.checkable:
        return ""
    store.prepare(n)
    return _check_leaves(leaves(store.sample(n)), [(n,)], spec, allowed_extra + store.extra_keys)


def _check_leaves(
    got: dict[str, torch.Tensor],
    leading: list[tuple[int, ...]],
    spec: TrajSpec,
    allowed_extra: tuple[str, ...],
) -> str:
    """Compare a flattened batch with the spec: every column, with one of the ``leading`` shapes."""
    problems = []
    for key, (shape, dtype) in spec.columns().items():
        name = ".".join(key)
        t = got.pop(name, None)
        if t is None:
            problems.append(f"{name} missing")
        elif all(tuple(t.shape) != (*lead, *shape) for lead in leading) or t.dtype != dtype:
            problems.append(f"{name} {tuple(t.shape)} {t.dtype}")
    extra = sorted(k for k in got if k not in allowed_extra)
    if extra:
        problems.append(f"extra keys {extra}")
    return "batch check: " + "; ".join(problems) if problems else ""


SEQUENCE_EXTRAS = ("mask",)
"""Keys a sequence batch may hold beside the columns (and the store's ``extra_keys``)."""


def check_sequences(store: Store, num: int, length: int, spec: TrajSpec) -> tuple[str, float]:
    """Draw ``num`` runs of ``length`` once (untimed in the table; its time is returned, as the
    first call pays one-off set-up) and check the batch: ``[num, length, ...]`` or the flat
    ``[num * length, ...]`` of a sampler that does not reshape."""
    store.prepare_sequences(num, length)
    t0 = time.perf_counter()
    batch = store.sample_sequences(num, length)
    seconds = time.perf_counter() - t0
    if not store.checkable:
        return "", seconds
    note = _check_leaves(
        leaves(batch), [(num, length), (num * length,)], spec, SEQUENCE_EXTRAS + store.extra_keys
    )
    return note, seconds


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def fill(store: Store, spec: TrajSpec, count: int, seed: int) -> None:
    """Add trajectories ``0 .. count-1`` one at a time."""
    for i in range(count):
        store.add(make_trajectory(spec, i, seed))


def _timed(opts: Options, fn: Callable[[], object], **kw: Any) -> Timing:
    args = {"warmup": opts.warmup, "repeats": opts.repeats, "max_seconds": opts.max_seconds}
    args.update(kw)
    return time_calls(fn, **args)


# -- cached directories of tiny trajectories -------------------------------------------------


def cached_tiny_dir(opts: Options, spec: TrajSpec, fmt: str, count: int, refresh: bool = False) -> str:
    """A directory of ``count`` tiny trajectories written by ``ours`` in ``fmt`` (closed, so its
    index is complete), built once and cached under ``opts.cache_root``."""
    from rlinf_replay_buffer import TrajectoryReplayBuffer

    path = os.path.join(opts.cache_root, f"{spec.name}-{fmt}-{count}-seed{opts.seed}")
    marker = path + ".complete"
    if refresh:
        shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(marker):
            os.remove(marker)
    if os.path.exists(marker) and os.path.isdir(path):
        return path
    shutil.rmtree(path, ignore_errors=True)
    building = path + ".building"
    shutil.rmtree(building, ignore_errors=True)
    os.makedirs(opts.cache_root, exist_ok=True)
    print(f"    building {path} (once; cached for later runs)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        buf = TrajectoryReplayBuffer(
            seed=opts.seed,
            enable_cache=True,
            cache_size=1,
            sample_window_size=1000,
            auto_save=True,
            auto_save_path=building,
            trajectory_format=fmt,
        )
    except ValueError as exc:
        raise Unsupported(f"trajectory_format={fmt!r} rejected: {exc}") from exc
    for start in range(0, count, 1000):
        stop = min(count, start + 1000)
        buf.add_trajectories([make_trajectory(spec, i, opts.seed) for i in range(start, stop)])
    buf.flush()
    buf.close()
    os.rename(building, path)
    with open(marker, "w") as f:
        json.dump({"count": count, "format": fmt, "seconds": time.perf_counter() - t0}, f)
    return path


def _directory_format(label: str) -> str:
    """Which cached directory a contender reads: ours in its own format, the others pt."""
    name, variant = split_label(label)
    return variant if name == "ours" and variant else "pt"


# -- procedures ------------------------------------------------------------------------------


def _sample_rows(
    store: Any,
    case: Case,
    tables: Sequence[str],
    label: str,
    opts: Options,
    extra: Callable[[Timing], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per ``case.batches`` size: check a batch, then time ``store.sample(n)``."""
    rows = []
    for n, table in zip(case.batches, tables, strict=True):
        note = _join(check_batch(store, n, case.spec), store.note)
        timing = _timed(opts, lambda n=n: store.sample(n), before=lambda n=n: store.prepare(n))
        rows.append(
            make_row(
                table,
                label,
                timing=timing,
                items=n,
                nbytes=n * case.spec.bytes_per_transition,
                cached=store.cached_bytes(),
                note=note,
                extra=None if extra is None else extra(timing),
            )
        )
    return rows


def _sample(case: Case, label: str, opts: Options, work: str, rows: list[dict[str, Any]]) -> None:
    mod, variant = module_for(label), variant_of(label)
    path = os.path.join(work, "store")
    os.makedirs(path)
    cfg = StoreConfig(
        case.spec, case.window, case.window, case.cache_size, path, opts.seed, dict(case.params)
    )
    store = mod.create(variant, "sample", cfg)
    try:
        fill(store, case.spec, case.window, opts.seed)
        store.flush()
        rows.extend(_sample_rows(store, case, case.tables(), label, opts))
    finally:
        store.close()


def _disk(case: Case, label: str, opts: Options, work: str, rows: list[dict[str, Any]]) -> None:
    mod, variant = module_for(label), variant_of(label)
    path = os.path.join(work, "store")
    os.makedirs(path)
    cfg = StoreConfig(case.spec, case.window, case.window, case.cache_size, path, opts.seed)
    store = mod.create(variant, "disk", cfg)
    tables = iter(case.tables())
    try:
        fill(store, case.spec, case.window, opts.seed)
        store.flush()
        for n in case.batches:
            warm_table, cold_table = next(tables), next(tables)
            nbytes = n * case.spec.bytes_per_transition
            note = check_batch(store, n, case.spec)
            store.prepare(n)
            touch_files(store.files())
            timing = _timed(opts, lambda n=n: store.sample(n), before=lambda n=n: store.prepare(n))
            rows.append(
                make_row(
                    warm_table,
                    label,
                    timing=timing,
                    items=n,
                    nbytes=nbytes,
                    cached=store.cached_bytes(),
                    note=note,
                )
            )
            cold = ColdCache()
            if not cold.machine_supports(work):
                rows.append(make_row(cold_table, label, status="cold: unavailable", note=cold.note()))
                continue

            def before(n: int = n, cold: ColdCache = cold) -> None:
                store.prepare(n)
                cold.drop(store.files())

            timing = _timed(opts, lambda n=n: store.sample(n), before=before, warmup=min(1, opts.warmup))
            rows.append(
                make_row(
                    cold_table,
                    label,
                    timing=timing,
                    items=n,
                    nbytes=nbytes,
                    cached=store.cached_bytes(),
                    note=_join(note, cold.note()),
                )
            )
    finally:
        store.close()


def _latency(case: Case, label: str, opts: Options, work: str, rows: list[dict[str, Any]]) -> None:
    mod, variant = module_for(label), variant_of(label)
    path = os.path.join(work, "store")
    os.makedirs(path)
    capacity = opts.warmup + opts.repeats + 1
    cfg = StoreConfig(case.spec, capacity, case.window, case.cache_size, path, opts.seed)
    store = mod.create(variant, "latency", cfg)
    traj = make_trajectory(case.spec, 0, opts.seed)
    try:
        timing = _timed(opts, lambda: store.add(traj), after=store.flush)
        extra = {"first add ms": timing.warmup[0] * 1e3} if timing.warmup else {}
        rows.append(
            make_row(
                case.tables()[0],
                label,
                timing=timing,
                items=case.spec.transitions,
                nbytes=case.spec.trajectory_bytes,
                cached=store.cached_bytes(),
                note=_join("timed: the add call only; flush() runs untimed after each add", store.flush_note),
                extra=extra,
            )
        )
    finally:
        store.close()


def _write(case: Case, label: str, opts: Options, work: str, rows: list[dict[str, Any]]) -> None:
    mod, variant = module_for(label), variant_of(label)
    trajs = [make_trajectory(case.spec, i, opts.seed) for i in range(case.count)]
    state: dict[str, Any] = {"k": 0, "bytes": 0}

    def before() -> None:
        path = os.path.join(work, f"w{state['k']}")
        state["k"] += 1
        os.makedirs(path)
        cfg = StoreConfig(case.spec, case.count, case.count, case.cache_size, path, opts.seed)
        state["path"], state["store"] = path, mod.create(variant, "write", cfg)

    def run() -> None:
        store = state["store"]
        for t in trajs:
            store.add(t)
        store.flush()

    def after() -> None:
        store = state["store"]
        state["bytes"] = total_bytes(store.files())
        state["note"] = store.flush_note
        store.close()
        shutil.rmtree(state["path"], ignore_errors=True)

    timing = _timed(
        opts,
        run,
        before=before,
        after=after,
        warmup=min(1, opts.warmup),
        repeats=max(1, min(opts.repeats, 5)),
    )
    rows.append(
        make_row(
            case.tables()[0],
            label,
            timing=timing,
            items=case.count * case.spec.transitions,
            nbytes=state["bytes"],
            note=_join("MB/s counts the bytes of the files written", state.get("note", "")),
            extra={"file MB": state["bytes"] / 1e6},
        )
    )


def _with_directory(
    case: Case, label: str, opts: Options, use: Callable[[str], None], needs_dir: bool = True
) -> None:
    """Run ``use(cached_dir)``; if it fails on a cached directory, rebuild that once and retry."""
    fmt = _directory_format(label)
    src = cached_tiny_dir(opts, case.spec, fmt, case.count)
    try:
        use(src)
    except (NotInstalled, Unsupported):
        raise
    except Exception:
        traceback.print_exc(file=sys.stderr)
        print("    retrying with a rebuilt cached directory", file=sys.stderr, flush=True)
        use(cached_tiny_dir(opts, case.spec, fmt, case.count, refresh=True))


def _tiny(case: Case, label: str, opts: Options, work: str, rows: list[dict[str, Any]]) -> None:
    mod, variant = module_for(label), variant_of(label)
    tiny = make_trajectory(case.spec, 10**7 + case.count, opts.seed)
    counter = [0]

    def use(src: str) -> None:
        counter[0] += 1
        dst = os.path.join(work, f"dir{counter[0]}")
        link_copy(src, dst)
        cfg = StoreConfig(case.spec, case.count + 100, case.window, case.cache_size, dst, opts.seed)
        t0 = time.perf_counter()
        if mod.__name__.endswith(".limit"):
            store = mod.create(variant, "tiny", cfg)
            open_s = None
        else:
            store = mod.open_existing(variant, dst, cfg)
            open_s = time.perf_counter() - t0
        try:

            def add_flush() -> None:
                store.add(tiny)
                store.flush()

            timing = _timed(opts, add_flush)
            extra: dict[str, Any] = {"indexed": store.indexed()}
            if open_s is not None:
                extra["open s"] = open_s
            rows.append(
                make_row(
                    case.tables()[0],
                    label,
                    timing=timing,
                    items=case.spec.transitions,
                    nbytes=case.spec.trajectory_bytes,
                    cached=store.cached_bytes(),
                    level=case.count,
                    note=store.flush_note,
                    extra=extra,
                )
            )
        finally:
            store.close()

    _with_directory(case, label, opts, use)


def _scale(case: Case, label: str, opts: Options, work: str, rows: list[dict[str, Any]]) -> None:
    mod, variant = module_for(label), variant_of(label)
    t_load, t_open, t_sample = case.tables()
    n = case.batches[0]
    counter = [0]

    def use(src: str) -> None:
        cfg = StoreConfig(case.spec, case.window, case.window, case.cache_size, src, opts.seed)
        held: dict[str, Store] = {}

        def new_fresh() -> None:
            if "load" in held:
                held.pop("load").close()
            held["load"] = mod.fresh(variant, cfg)

        timing = _timed(
            opts,
            lambda: held["load"].load(src),
            before=new_fresh,
            warmup=min(1, opts.warmup),
            repeats=max(1, min(opts.repeats, 10)),
        )
        loaded = held.pop("load")
        rows.append(
            make_row(
                t_load,
                label,
                timing=timing,
                cached=loaded.cached_bytes(),
                level=case.count,
                extra={"indexed": loaded.indexed()},
            )
        )
        loaded.close()

        def copy_dir() -> None:
            if "open" in held:
                held.pop("open").close()
            counter[0] += 1
            held["dst"] = os.path.join(work, f"dir{counter[0]}")  # type: ignore[assignment]
            link_copy(src, held["dst"])  # type: ignore[arg-type]

        def open_dir() -> None:
            held["open"] = mod.open_existing(variant, held["dst"], cfg)  # type: ignore[arg-type]

        timing = _timed(opts, open_dir, before=copy_dir, warmup=0, repeats=max(1, min(opts.repeats, 3)))
        store = held.pop("open")
        try:
            rows.append(
                make_row(
                    t_open,
                    label,
                    timing=timing,
                    cached=store.cached_bytes(),
                    level=case.count,
                    extra={"indexed": store.indexed()},
                )
            )
            note = check_batch(store, n, case.spec)
            timing = _timed(opts, lambda: store.sample(n), before=lambda: store.prepare(n))
            rows.append(
                make_row(
                    t_sample,
                    label,
                    timing=timing,
                    items=n,
                    nbytes=n * case.spec.bytes_per_transition,
                    cached=store.cached_bytes(),
                    level=case.count,
                    note=note,
                    extra={"indexed": store.indexed()},
                )
            )
        finally:
            store.close()

    _with_directory(case, label, opts, use)


def _ranks_of(path: str) -> str:
    """A folder of two ``rank_*`` directories, each a hard-linked copy of ``path`` (for merge)."""
    ranks = path + "-ranks"
    if not os.path.isdir(ranks):
        building = ranks + ".building"
        shutil.rmtree(building, ignore_errors=True)
        for rank in (0, 1):
            link_copy(path, os.path.join(building, f"rank_{rank}"))
        os.rename(building, ranks)
    return ranks


def _memory(case: Case, label: str, opts: Options, work: str, rows: list[dict[str, Any]]) -> None:
    """Run one command (the label's variant) once, in process, on a directory 10x the cache; the
    parent records this child's peak RSS. ``load`` is the library call: a buffer with
    ``cache_size`` loads the directory and samples once."""
    from rlinf_replay_buffer import TrajectoryReplayBuffer
    from rlinf_replay_buffer.cli import main

    (table,) = case.tables()
    src = cached_tiny_dir(opts, case.spec, "pt", case.count)
    command = variant_of(label)
    out = os.path.join(work, "out")
    argv = {
        "info": ["info", src, "--quiet"],
        "sample": ["sample", src, "--num-chunks", str(case.batches[0]), "--quiet"]
        + ["--sample-window-size", "0"],
        "verify": ["verify", src, "--quiet"],
        "view": ["view", src, "--trajectory", "0", "--out", out + ".png", "--quiet"],
        "export": ["export", src, "--out", out + ".parquet", "--quiet"],
        "merge": ["merge", "--source-path", _ranks_of(src), "--save-path", out, "--copy", "--quiet"],
        "split": ["split", "--source-path", src, "--save-path", out, "--copy", "--quiet"]
        + ["--split-count", str(case.count // 2)],
    }

    def run() -> None:
        if command == "load":
            buf = TrajectoryReplayBuffer(sample_window_size=0, cache_size=case.cache_size)
            buf.load_checkpoint(src)
            buf.sample(case.batches[0])
            rows_cached[0] = buf.get_stats()["cached_bytes"]
            buf.close()
            return
        with open(os.devnull, "w") as sink:
            stdout, sys.stdout = sys.stdout, sink
            try:
                code = main(argv[command])
            finally:
                sys.stdout = stdout
        if code != 0:
            raise RuntimeError(f"rlinf-buffer {' '.join(argv[command])} exited with status {code}")

    rows_cached = [None]
    timing = _timed(opts, run, warmup=0, repeats=1)
    rows.append(make_row(table, label, timing=timing, cached=rows_cached[0], ratio=False))


def _sampler_store(case: Case, label: str, opts: Options, mode: str) -> Store:
    """An in-memory store for a sampler scenario, holding ``case.window`` trajectories."""
    cfg = StoreConfig(
        case.spec, case.window, case.window, case.cache_size, None, opts.seed, dict(case.params)
    )
    return module_for(label).create(variant_of(label), mode, cfg)


def _sequences(case: Case, label: str, opts: Options, work: str, rows: list[dict[str, Any]]) -> None:
    store = _sampler_store(case, label, opts, "sequences")
    num = case.batches[0]
    try:
        fill(store, case.spec, case.window, opts.seed)
        for length, table in zip(case.seq_lens, case.tables(), strict=True):
            note, first = check_sequences(store, num, length, case.spec)
            timing = _timed(
                opts,
                lambda length=length: store.sample_sequences(num, length),
                before=lambda length=length: store.prepare_sequences(num, length),
            )
            rows.append(
                make_row(
                    table,
                    label,
                    timing=timing,
                    items=num * length,
                    nbytes=num * length * case.spec.bytes_per_transition,
                    cached=store.cached_bytes(),
                    note=note,
                    extra={"first call ms": first * 1e3},
                )
            )
    finally:
        store.close()


def _prioritized(case: Case, label: str, opts: Options, work: str, rows: list[dict[str, Any]]) -> None:
    store = _sampler_store(case, label, opts, "prioritized")
    n = case.batches[0]
    gen = torch.Generator().manual_seed(opts.seed + 1)  # the same priorities for every contender
    state: dict[str, Any] = {}

    def before() -> None:
        store.prepare(n)
        state["priorities"] = torch.rand(n, generator=gen) * 2.0  # |TD error|-like values

    def sample() -> None:
        state["batch"] = store.sample(n)

    def update() -> None:
        store.update(state["batch"], state["priorities"])

    try:
        fill(store, case.spec, case.window, opts.seed)
        note = _join(check_batch(store, n, case.spec, allowed_extra=("indices", "weights")), store.note)
        timing, (t_sample, t_update) = time_parts(
            [sample, update],
            warmup=opts.warmup,
            repeats=opts.repeats,
            max_seconds=opts.max_seconds,
            before=before,
        )
        extra: dict[str, Any] = {"sample ms": float(np.median(t_sample)) * 1e3}
        if store.updates_priorities:
            extra["update ms"] = float(np.median(t_update)) * 1e3
        rows.append(
            make_row(
                case.tables()[0],
                label,
                timing=timing,
                items=n,
                nbytes=n * case.spec.bytes_per_transition,
                cached=store.cached_bytes(),
                note=note,
                extra=extra,
            )
        )
    finally:
        store.close()


def _rate_limited(case: Case, label: str, opts: Options, work: str, rows: list[dict[str, Any]]) -> None:
    """One thread: add one trajectory, then ``samples_per_add`` samples, repeated; every add and
    every sample call is timed on its own. The trajectories added come from a pool of four
    made untimed (the window's oldest leave as they come in)."""
    store = _sampler_store(case, label, opts, "rate_limited")
    n, per_add = case.batches[0], dict(case.params)["samples_per_add"]
    t_sample, t_add = case.tables()
    adds, samples = Timing(), Timing()
    try:
        fill(store, case.spec, case.window, opts.seed)
        note = check_batch(store, n, case.spec)
        pool = [make_trajectory(case.spec, case.window + i, opts.seed) for i in range(4)]
        spent = 0.0
        for k in range(opts.warmup + 10 * opts.repeats):
            timed = k >= opts.warmup
            t0 = time.perf_counter()
            store.add(pool[k % len(pool)])
            dt = time.perf_counter() - t0
            (adds.times if timed else adds.warmup).append(dt)
            spent += dt if timed else 0.0
            for _ in range(per_add):
                store.prepare(n)
                t0 = time.perf_counter()
                store.sample(n)
                dt = time.perf_counter() - t0
                (samples.times if timed else samples.warmup).append(dt)
                spent += dt if timed else 0.0
            if len(adds.times) >= 3 and spent > opts.max_seconds:
                break
        data = store.moves_data
        if not data:
            note = _join(note, "the RateLimiter alone (acquire_sample / acquire_insert), no data moved")
        rows.append(
            make_row(
                t_sample,
                label,
                timing=samples,
                items=n if data else None,
                nbytes=n * case.spec.bytes_per_transition if data else None,
                cached=store.cached_bytes(),
                note=note,
                ratio=data,
            )
        )
        rows.append(
            make_row(
                t_add,
                label,
                timing=adds,
                items=case.spec.transitions if data else None,
                nbytes=case.spec.trajectory_bytes if data else None,
                cached=store.cached_bytes(),
                note="" if data else note,
                ratio=data,
            )
        )
    finally:
        store.close()


def _ray(case: Case, label: str, opts: Options, work: str, rows: list[dict[str, Any]]) -> None:
    """Fill ``case.window`` trajectories (one ``add`` each, then ``flush``), time ``sample(n)``
    for each of ``case.batches``, then one ``add_trajectories([traj])`` at a time (``flush()``
    untimed after each, as in the add scenario). Beside the median, every row reports the 90th
    percentile of its timed calls (``p90 ms``: Ray calls have long tails). The store's start-up
    (``ray.init`` and the shards' start, or the local constructor) is timed once and reported
    as ``start s``."""
    mod, variant = module_for(label), variant_of(label)
    path = os.path.join(work, "store")
    os.makedirs(path)
    cfg = StoreConfig(case.spec, case.window, case.window, case.cache_size, path, opts.seed)
    t0 = time.perf_counter()
    store = mod.create(variant, "ray", cfg)
    start_s = time.perf_counter() - t0
    *sample_tables, add_table = case.tables()

    def extra(timing: Timing, **more: Any) -> dict[str, Any]:
        out = {"p90 ms": float(np.percentile(timing.times, 90)) * 1e3, **more}
        rss = store.workers_peak_rss_mb()
        if rss is not None:
            out["shards peak RSS MB"] = rss
        return out

    try:
        fill(store, case.spec, case.window, opts.seed)
        store.flush()
        rows.extend(
            _sample_rows(
                store, case, sample_tables, label, opts, extra=lambda t: extra(t, **{"start s": start_s})
            )
        )
        traj = make_trajectory(case.spec, case.window, opts.seed)  # a new one, re-added each call
        timing = _timed(opts, lambda: store.add(traj), after=store.flush)
        rows.append(
            make_row(
                add_table,
                label,
                timing=timing,
                items=case.spec.transitions,
                nbytes=case.spec.trajectory_bytes,
                cached=store.cached_bytes(),
                note=_join("timed: the add call only; flush() runs untimed after each add", store.note),
                extra=extra(timing, **({"first add ms": timing.warmup[0] * 1e3} if timing.warmup else {})),
            )
        )
    finally:
        store.close()


PROCEDURES: dict[str, Callable[[Case, str, Options, str, list[dict[str, Any]]], None]] = {
    "sample": _sample,
    "disk": _disk,
    "latency": _latency,
    "write": _write,
    "tiny": _tiny,
    "scale": _scale,
    "sequences": _sequences,
    "prioritized": _prioritized,
    "rate_limited": _rate_limited,
    "ray": _ray,
    "memory": _memory,
}


def expected_rows(case: Case, label: str) -> list[tuple[str, str]]:
    """(table, contender) pairs a case reports for a label (used to fill in failures)."""
    shown = f"{label} @{level_name(case.count)}" if case.kind in ("tiny", "scale") else label
    return [(table, shown) for table in case.tables()]


PREPARE = "@prepare"
"""Pseudo-contender: build the cached directories a case reads, in its own child process (so
that no contender's peak RSS includes building them)."""


def prepare_case(case: Case, opts: Options) -> None:
    """Build the cached directories of tiny trajectories a ``tiny``/``scale`` case reads
    (rebuilt with ``opts.refresh_cache``)."""
    if case.kind == "memory":
        _ranks_of(cached_tiny_dir(opts, case.spec, "pt", case.count, refresh=opts.refresh_cache))
        return
    if case.kind not in ("tiny", "scale"):
        return
    for fmt in dict.fromkeys(_directory_format(label) for label in case.contenders):
        try:
            cached_tiny_dir(opts, case.spec, fmt, case.count, refresh=opts.refresh_cache)
        except Unsupported:
            pass  # the contender reports it
        except Exception:
            traceback.print_exc(file=sys.stderr)  # the contenders retry and report it


def run_case(case: Case, label: str, opts: Options) -> list[dict[str, Any]]:
    """Run one (case, contender); always returns one row per table of the case."""
    if label == PREPARE:
        prepare_case(case, opts)
        return []
    rows: list[dict[str, Any]] = []
    status, note = "ok", ""
    os.makedirs(opts.tmp_root, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"rlinf-bench-{case.scenario}-{case.name}-", dir=opts.tmp_root)
    try:
        PROCEDURES[case.kind](case, label, opts, work, rows)
    except NotInstalled as exc:
        status, note = "not installed", str(exc)
    except Unsupported as exc:
        status, note = "unsupported", str(exc)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        status, note = "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    have = {(r["table"], r["contender"]) for r in rows}
    level = case.count if case.kind in ("tiny", "scale") else None
    for table, shown in expected_rows(case, label):
        if (table, shown) not in have:
            rows.append(
                make_row(table, label, level=level, status=status if status != "ok" else "error", note=note)
            )
    return rows
