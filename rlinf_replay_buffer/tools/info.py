"""A summary of a buffer directory: what ``rlinf-buffer info`` prints."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..directory import read_directory
from ..trajectory import key_name
from .progress import Progress


@dataclass
class FieldInfo:
    """One field: dotted name, per-transition shape and dtype (e.g. ``torch.uint8``)."""

    name: str
    shape: list[int]
    dtype: str


@dataclass
class DirectoryInfo:
    """What a buffer directory holds.

    Attributes:
        path: the directory.
        trajectory_format: ``pt``, ``pkl`` or ``segment``.
        format_version: the metadata's ``format_version`` (0: written by RLinf).
        trajectories, transitions: counts (transitions = sum of ``T * B``).
        bytes: bytes of the trajectory data on disk (files, or segment rows).
        fields: every field with its per-transition shape and dtype.
        model_update_counts: ``(lowest, highest)`` ``model_update_count`` (``None`` if empty).
        model_weights_ids: distinct weight ids.
        trajectory_ids: ``(first, last)`` id in index order (``None`` if empty).
        next_trajectory_id: the id the next added trajectory gets.
        steps: ``(min, max)`` steps ``T`` per trajectory; envs likewise for ``B``.
        checksummed: trajectories whose index entry has a ``crc32``.
        journal_entries: index entries not yet folded into ``trajectory_index.json``.
    """

    path: str
    trajectory_format: str
    format_version: int
    trajectories: int
    transitions: int
    bytes: int
    fields: list[FieldInfo] = field(default_factory=list)
    model_update_counts: tuple[int, int] | None = None
    model_weights_ids: int = 0
    trajectory_ids: tuple[int, int] | None = None
    next_trajectory_id: int = 0
    steps: tuple[int, int] | None = None
    envs: tuple[int, int] | None = None
    checksummed: int = 0
    journal_entries: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return asdict(self)


def describe_directory(path: str, progress: Progress | None = None) -> DirectoryInfo:
    """Read a buffer directory's index (not its data) and summarize it.

    Raises:
        BufferNotFoundError, CorruptBufferError, UnsafeFileError: as loading would.
    """
    contents, schema = read_directory(path, progress=progress)
    records = contents.records
    size = 0
    seen_files: set[str] = set()
    row_bytes = schema.row_bytes if schema is not None else 0
    for r in records:
        if r.row is not None:
            size += r.num_transitions * row_bytes
        elif r.path is not None and r.path not in seen_files:
            seen_files.add(r.path)
            size += os.path.getsize(r.path)
    counts = [r.model_update_count for r in records]
    version = contents.metadata.get("format_version", 0)
    return DirectoryInfo(
        path=contents.path,
        trajectory_format=contents.fmt,
        format_version=version if isinstance(version, int) else 0,
        trajectories=len(records),
        transitions=sum(r.num_transitions for r in records),
        bytes=size,
        fields=[FieldInfo(key_name(k), list(s.row_shape), str(s.dtype)) for k, s in (schema or {}).items()],
        model_update_counts=(min(counts), max(counts)) if counts else None,
        model_weights_ids=len({r.model_weights_id for r in records}),
        trajectory_ids=(records[0].trajectory_id, records[-1].trajectory_id) if records else None,
        next_trajectory_id=contents.counter,
        steps=(min(r.num_steps for r in records), max(r.num_steps for r in records)) if records else None,
        envs=(min(r.num_envs for r in records), max(r.num_envs for r in records)) if records else None,
        checksummed=sum(r.checksum is not None for r in records),
        journal_entries=contents.journal_entries,
    )


def format_info(info: DirectoryInfo) -> str:
    """The table ``rlinf-buffer info`` prints."""

    def mib(n: int) -> str:
        return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"

    def span(pair: tuple[int, int] | None) -> str:
        if pair is None:
            return "-"
        return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}..{pair[1]}"

    rows = [
        ("path", info.path),
        ("format", f"{info.trajectory_format} (format_version {info.format_version})"),
        (
            "trajectories",
            f"{info.trajectories} (ids {span(info.trajectory_ids)}, next {info.next_trajectory_id})",
        ),
        ("transitions", str(info.transitions)),
        ("steps x envs", f"{span(info.steps)} x {span(info.envs)}"),
        ("bytes on disk", mib(info.bytes)),
        (
            "model versions",
            f"update counts {span(info.model_update_counts)}, {info.model_weights_ids} weight id(s)",
        ),
        ("checksums", f"{info.checksummed} of {info.trajectories} entries"),
    ]
    if info.journal_entries:
        rows.append(("journal", f"{info.journal_entries} entries not yet compacted"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if info.fields:
        name_w = max(len(f.name) for f in info.fields)
        shape_w = max(len(str(f.shape)) for f in info.fields)
        lines.append("fields:")
        lines += [f"  {f.name:<{name_w}}  {str(f.shape):<{shape_w}}  {f.dtype}" for f in info.fields]
    return "\n".join(lines)
