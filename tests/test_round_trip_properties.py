"""Property tests: what ``add_trajectories`` accepts, a buffer directory gives back bit for bit.

Hypothesis generates calls of one to three trajectories in RLinf's layout (``docs/format.md``):
``[T, B, ...]`` tensors of every dtype, with any bit pattern (NaN payloads, ``-0.0``, the
extreme integers), odd per-step shapes (zero-size and size-1 dimensions), ``T = 1`` and
``B = 1``, non-contiguous inputs, extra rows per rollout epoch, dict keys with dots, spaces and
non-ASCII letters, ``model_weights_id`` up to 128 characters and ``model_update_count`` on both
sides of the index's range. Some calls hold what the buffer refuses (a key starting with ``.`` or
holding ``/``, a dtype not every format stores, a count outside ``[0, 2**48)``).

For every format, through an auto-save directory and through ``save_checkpoint``, either

* ``add_trajectories`` raises :class:`InvalidTrajectoryError` naming the trajectory and the reason,
  and nothing changes: the size, the counters, the files on disk; or
* after ``flush``/``close``, loading the directory (``load_checkpoint``, reopening it as the
  ``auto_save_path``, and the public readers ``read_directory``/``read_rows``) gives back every
  transition bit for bit, with the ids, counts and weights ids given.

The default run is small (``MAX_EXAMPLES`` per case, derandomized); the ``soak`` variant
(``-m soak`` or ``RLINF_SOAK=1``) explores ``SOAK_EXAMPLES`` random cases per format and path.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlinf_replay_buffer import InvalidTrajectoryError, Trajectory, TrajectoryReplayBuffer
from rlinf_replay_buffer.directory import read_directory
from rlinf_replay_buffer.store import read_rows
from rlinf_replay_buffer.trajectory import (
    ACTION_LIKE,
    DICT_FIELDS,
    DONE_LIKE,
    MAX_INDEX_INT,
    STEP_FIELDS,
    STORABLE_DTYPES,
    default_weights_id,
    file_dict_from_columns,
)

FORMATS = ("pt", "pkl", "segment")
PATHS = ("auto_save", "save_checkpoint")
MAX_EXAMPLES = 25
SOAK_EXAMPLES = int(os.environ.get("RLINF_SOAK_EXAMPLES", "400"))

#: dtypes some format cannot store: ``add_trajectories`` refuses them
UNSTORABLE_DTYPES = (torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2)
#: the signed integer dtype of each element size: values are drawn as its integers and viewed
#: as the wanted dtype, so every bit pattern can occur
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
OPTIONAL_STEP_FIELDS = tuple(f for f in STEP_FIELDS if f != "rewards")
#: keys a rollout may well use: dots, spaces, non-ASCII letters, all of them
NAMED_KEYS = (
    "states",
    "cam.rgb",
    "main images",
    "wrist.cam 2",
    "камера",
    "相机.深度",
    "Ünïcödé key",
    "a..b",
    "x.",
    "tab\there",
)
BAD_KEYS = (".hidden", "a/b", "/", ".")


# -- comparing bits -------------------------------------------------------------------------------
def bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` as integers of the same element size (bool as uint8): equal bits, equal values."""
    t = t.contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t.view(_BITS[t.element_size()])


def assert_same_bits(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype}, expected {expected.dtype}"
    assert tuple(got.shape) == tuple(expected.shape), (
        f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    )
    assert torch.equal(bits(got), bits(expected)), f"{what}: the values differ bit for bit"


def row_set(columns: dict, keys: list) -> set[bytes]:
    """The distinct transitions of ``columns`` (column key -> ``[N, ...]``), each as the bytes of
    its row in every column, ``keys`` in order."""
    n = int(columns[keys[0]].shape[0])
    parts = [bits(columns[k]).reshape(n, math.prod(columns[k].shape[1:])).view(torch.uint8) for k in keys]
    matrix = torch.cat(parts, dim=1)
    if matrix.shape[1] == 0:
        return {b""}
    return {bytes(row.numpy()) for row in torch.unique(matrix, dim=0)}


def flat_batch(batch: dict, keys: list) -> dict:
    """A sampled batch's tensors by column key (``("curr_obs", "cam.rgb")``)."""
    return {k: batch[k[0]] if len(k) == 1 else batch[k[0]][k[1]] for k in keys}


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = Path(root) / name
            out[str(full.relative_to(path))] = full.read_bytes()
    return out


# -- generated calls ------------------------------------------------------------------------------
@dataclass
class Case:
    """One ``add_trajectories`` call and what must come of it."""

    schema: dict  # column key -> (dtype, per-step shape)
    trajectories: list[Trajectory]
    expected_rows: list[dict]  # per trajectory: column key -> aligned rows [T * B, ...]
    expected_meta: list[tuple]  # per trajectory: (T, B, weights id, update count, max_episode_length)
    refusals: list[list[str]] = field(default_factory=list)  # per trajectory: regexes of its faults

    @property
    def schema_ok(self) -> bool:
        """Whether the fields themselves can be stored (a baseline trajectory can then be added)."""
        return all(
            dtype in STORABLE_DTYPES and (len(k) == 1 or not (k[1].startswith(".") or "/" in k[1]))
            for k, (dtype, _) in self.schema.items()
        )


def tensor_of(draw, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    """A tensor of ``shape`` whose elements are any bit pattern of ``dtype`` (bool: 0 or 1): a
    few drawn values (Hypothesis favours the extremes: the smallest and largest integers, the
    bit patterns of NaN, infinities and ``-0.0``), mixed with random bits."""
    if dtype == torch.bool:
        pool, carrier = draw(st.lists(st.integers(0, 1), min_size=1, max_size=2)), torch.uint8
        info_min, info_max = 0, 2  # randint's upper bound is exclusive
    else:
        carrier = _BITS[torch.empty((), dtype=dtype).element_size()]
        info = torch.iinfo(carrier)
        info_min, info_max = info.min, info.max
        pool = draw(st.lists(st.integers(info_min, info_max), min_size=1, max_size=4))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    values = torch.randint(info_min, info_max, shape, dtype=carrier, generator=gen)
    pick = torch.randint(0, len(pool) + 1, shape, generator=gen)
    chosen = torch.tensor(pool + [0], dtype=carrier)[pick]
    values = torch.where(pick < len(pool), chosen, values)
    return values.to(torch.bool) if dtype == torch.bool else values.view(dtype)


def role(key: tuple) -> str:
    if key[0] in DONE_LIKE:
        return "done"
    return "action" if key[0] in ACTION_LIKE else "step"


@st.composite
def schemas(draw, refusable: bool) -> dict:
    """Fields with dtypes and per-step shapes; with ``refusable``, one call in ten has a column of
    a dtype some format cannot store, and one in ten a key the buffer refuses."""
    dtypes = st.sampled_from(STORABLE_DTYPES)
    row_shape = st.lists(st.integers(0, 3), max_size=3).map(tuple)  # zero-size and size-1 dims too
    names = st.one_of(
        st.sampled_from(NAMED_KEYS),
        st.text(
            alphabet=st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=12
        ).filter(lambda s: not s.startswith(".")),
    )
    schema = {("rewards",): (draw(dtypes), draw(row_shape))}
    for name in draw(st.sets(st.sampled_from(OPTIONAL_STEP_FIELDS), max_size=4)):
        schema[(name,)] = (draw(dtypes), draw(row_shape))
    for name in DICT_FIELDS:
        for sub in draw(st.sets(names, max_size=2)):
            schema[(name, sub)] = (draw(dtypes), draw(row_shape))
    # Hypothesis favours the first of sampled_from's choices: most calls have no fault
    fault = draw(st.sampled_from(["none"] * 8 + ["dtype", "key"])) if refusable else "none"
    if fault == "dtype":
        key = draw(st.sampled_from(sorted(schema)))
        schema[key] = (draw(st.sampled_from(UNSTORABLE_DTYPES)), schema[key][1])
    elif fault == "key":
        schema[(draw(st.sampled_from(DICT_FIELDS)), draw(st.sampled_from(BAD_KEYS)))] = (
            draw(dtypes),
            draw(row_shape),
        )
    return schema


@st.composite
def calls(draw, refusable: bool = True) -> Case:
    schema = draw(schemas(refusable))
    case = Case(schema, [], [], [], [])
    for _ in range(draw(st.integers(1, 3))):
        num_steps, num_envs = draw(st.integers(1, 4)), draw(st.integers(1, 3))
        epochs = draw(st.sampled_from([e for e in range(1, num_steps + 1) if num_steps % e == 0]))
        rlinf_layout = draw(st.booleans())
        raw: dict = {}
        rows: dict = {}
        faults: list[str] = []
        for key, (dtype, shape) in schema.items():
            aligned = tensor_of(draw, dtype, (num_steps, num_envs, *shape))
            rows[key] = aligned.reshape(num_steps * num_envs, *shape)
            value = aligned
            if rlinf_layout and role(key) != "step" and draw(st.booleans()):
                # RLinf's rollout layout: one extra row per epoch, first (done-like) or last
                extra = tensor_of(draw, dtype, (epochs, 1, num_envs, *shape))
                blocks = aligned.reshape(epochs, num_steps // epochs, num_envs, *shape)
                parts = [extra, blocks] if role(key) == "done" else [blocks, extra]
                value = torch.cat(parts, dim=1).reshape(num_steps + epochs, num_envs, *shape)
            if draw(st.integers(0, 3)) == 0:  # a non-contiguous view of the same values
                wide = torch.zeros((value.shape[0], 2 * num_envs, *shape), dtype=dtype)
                wide[:, ::2] = value
                value = wide[:, ::2]
            raw[key] = value
            if dtype not in STORABLE_DTYPES:
                faults.append(f"has dtype {str(dtype).removeprefix('torch.')}.*use one of")
            if len(key) == 2 and (key[1].startswith(".") or "/" in key[1]):
                faults.append("keys must be non-empty strings")
        weights_id = draw(
            st.one_of(
                st.none(),
                st.just(""),
                st.just("w" * 128),
                st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_\-]{0,127}\Z"),
                st.from_regex(r"\A[A-Za-z0-9](\.?[A-Za-z0-9_\-]){0,60}\Z"),
            )
        )
        count = draw(st.one_of(st.just(0), st.just(MAX_INDEX_INT - 1), st.integers(0, MAX_INDEX_INT - 1)))
        source = draw(st.sampled_from(["given"] * 7 + ["versions", "versions"] + ["outside"] * refusable))
        if source == "versions":
            count = None  # the maximum of versions, if any, else 0
        elif source == "outside":
            count = draw(st.one_of(st.integers(MAX_INDEX_INT, 2**64), st.integers(-(2**20), -1)))
        max_episode_length = draw(st.one_of(st.none(), st.integers(0, 1000), st.integers(-(2**70), 2**70)))
        versions = raw.get(("versions",))
        if count is None:
            derived = 0
            if versions is not None and versions.numel():
                top = float(versions.max())
                derived = int(top) if math.isfinite(top) and top >= 0 else 0
            expected_count = derived
        else:
            expected_count = count
        if expected_count < 0:
            faults.append("model_update_count must be a non-negative int")
        elif expected_count >= MAX_INDEX_INT:
            faults.append(
                r"model_update_count.* too large: the trajectory index stores it as an int in \[0, 2\*\*48\)"
            )
        fields = file_dict_from_columns(raw, max_episode_length, weights_id, count)
        case.trajectories.append(Trajectory(**fields))
        case.expected_rows.append(rows)
        expected_weights = default_weights_id(versions) if weights_id is None else weights_id
        case.expected_meta.append((num_steps, num_envs, expected_weights, expected_count, max_episode_length))
        case.refusals.append(faults)
    return case


def baseline(schema: dict) -> tuple[Trajectory, dict, tuple]:
    """A plain trajectory of the case's fields (T = B = 1, all zeros), added before the call."""
    fields: dict = {"max_episode_length": 1, "model_weights_id": "baseline", "model_update_count": 7}
    rows = {}
    for key, (dtype, shape) in schema.items():
        value = torch.zeros((1, 1, *shape), dtype=dtype)
        rows[key] = value.reshape(1, *shape)
        if len(key) == 1:
            fields[key[0]] = value
        else:
            fields.setdefault(key[0], {})[key[1]] = value
    return Trajectory(**fields), rows, (1, 1, "baseline", 7, 1)


# -- checks ---------------------------------------------------------------------------------------
def check_directory(path: Path, schema: dict, rows: list[dict], meta: list[tuple]) -> None:
    """The public readers give back every trajectory of ``path``: rows bit for bit, and metadata."""
    contents, found = read_directory(str(path))
    assert found is not None and set(found) == set(schema)
    for key, (dtype, shape) in schema.items():
        assert (found[key].dtype, found[key].row_shape) == (dtype, shape), key
    assert [r.trajectory_id for r in contents.records] == list(range(len(rows)))
    for record, expected, (t, b, weights, count, mel) in zip(contents.records, rows, meta, strict=True):
        assert (record.num_steps, record.num_envs) == (t, b)
        assert (record.model_weights_id, record.model_update_count) == (weights, count)
        assert record.max_episode_length == mel
        got = read_rows(record, found)
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert_same_bits(got[key], value, f"{path} trajectory {record.trajectory_id} {key}")


def check_buffer(buf: TrajectoryReplayBuffer, schema: dict, rows: list[dict]) -> None:
    """Sampling ``buf`` gives exactly the expected transitions, bit for bit: every row drawn is
    one of them and, drawn 64 times as often as there are rows, each of them is drawn."""
    keys = sorted(schema)
    total = sum(int(r[("rewards",)].shape[0]) for r in rows)
    assert (buf.size, buf.total_samples) == (len(rows), total)
    expected = set().union(*(row_set(r, keys) for r in rows))
    batch = flat_batch(buf.sample(64 * total), keys)
    for key in keys:
        dtype, shape = schema[key]
        assert batch[key].dtype == dtype and tuple(batch[key].shape[1:]) == shape, key
    drawn = row_set(batch, keys)
    assert drawn <= expected, "a sampled transition is not one that was added"
    assert drawn == expected, "some added transition is never drawn"


def run_case(case: Case, fmt: str, path: str) -> None:
    with tempfile.TemporaryDirectory(prefix="roundtrip-") as tmp:
        root = Path(tmp)
        auto = root / "auto"
        rows: list[dict] = []
        meta: list[tuple] = []
        kwargs = {"trajectory_format": fmt, "sample_window_size": 0, "seed": 3}
        if path == "auto_save":
            buf = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(auto), **kwargs)
        else:
            buf = TrajectoryReplayBuffer(**kwargs)
        try:
            if case.schema_ok:
                traj, base_rows, base_meta = baseline(case.schema)
                assert buf.add_trajectories([traj]) == [0]
                rows, meta = [base_rows], [base_meta]
            buf.flush()
            before = snapshot(root)
            counters = (buf.size, buf.total_samples, buf.trajectory_counter)
            bad = next((i for i, faults in enumerate(case.refusals) if faults), None)
            if bad is not None:
                reasons = "|".join(f"(?:{r})" for r in case.refusals[bad])
                with pytest.raises(InvalidTrajectoryError, match=rf"^trajectory {bad}: (?:.*)(?:{reasons})"):
                    buf.add_trajectories(case.trajectories)
                buf.flush()
                assert (buf.size, buf.total_samples, buf.trajectory_counter) == counters
                assert snapshot(root) == before, "a refused add changed files on disk"
                if not rows:
                    return  # nothing was added: nothing to read back
            else:
                ids = buf.add_trajectories(case.trajectories)
                assert ids == list(range(len(rows), len(rows) + len(case.trajectories)))
                rows += case.expected_rows
                meta += case.expected_meta
            check_buffer(buf, case.schema, rows)
            if path == "save_checkpoint":
                buf.save_checkpoint(str(root / "ckpt"))
            buf.flush()
        finally:
            buf.close()
        saved = auto if path == "auto_save" else root / "ckpt"
        check_directory(saved, case.schema, rows, meta)
        loaded = TrajectoryReplayBuffer(**kwargs)
        loaded.load_checkpoint(str(saved))
        check_buffer(loaded, case.schema, rows)
        loaded.save_checkpoint(str(root / "again"))  # what was loaded saves and loads again
        check_directory(root / "again", case.schema, rows, meta)
        if path == "auto_save":  # reopening the directory continues it
            reopened = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(auto), **kwargs)
            try:
                check_buffer(reopened, case.schema, rows)
            finally:
                reopened.close()
            check_directory(auto, case.schema, rows, meta)


def _soak_selected(config: pytest.Config) -> bool:
    return os.environ.get("RLINF_SOAK") == "1" or "soak" in (config.getoption("markexpr") or "")


_FAST = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_SOAK = settings(
    max_examples=SOAK_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the properties -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_what_add_accepts_reads_back_bit_identical_or_add_refuses_it(fmt, path):
    @_FAST
    @given(case=calls())
    def prop(case: Case) -> None:
        run_case(case, fmt, path)

    prop()


@pytest.mark.soak
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_what_add_accepts_reads_back_bit_identical_soak(fmt, path, request):
    if not _soak_selected(request.config):
        pytest.skip("soak test: run with -m soak or RLINF_SOAK=1")

    @_SOAK
    @given(case=calls())
    def prop(case: Case) -> None:
        run_case(case, fmt, path)

    prop()


# -- the cases the properties were written for, spelled out ---------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_an_update_count_beyond_the_index_range_is_refused_and_nothing_changes(tmp_path, fmt):
    auto = tmp_path / "auto"
    buf = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(auto), trajectory_format=fmt)
    try:
        good = Trajectory(rewards=torch.zeros(2, 1, 1), model_update_count=MAX_INDEX_INT - 1)
        buf.add_trajectories([good])
        buf.flush()
        before = snapshot(auto)
        with pytest.raises(
            InvalidTrajectoryError,
            match=r"trajectory 1: model_update_count is 1152921504606846976, too large.*\[0, 2\*\*48\)",
        ):
            buf.add_trajectories([good, Trajectory(rewards=torch.zeros(2, 1, 1), model_update_count=2**60)])
        with pytest.raises(
            InvalidTrajectoryError, match=r"the maximum of versions.*pass a model_update_count"
        ):
            buf.add_trajectories(
                [Trajectory(rewards=torch.zeros(2, 1, 1), versions=torch.full((2, 1, 1), 1e18))]
            )
        buf.flush()
        assert (buf.size, buf.trajectory_counter) == (1, 1)
        assert snapshot(auto) == before
    finally:
        buf.close()
    loaded = TrajectoryReplayBuffer()
    loaded.load_checkpoint(str(auto))
    record = read_directory(str(auto))[0].records[0]
    assert (loaded.size, record.model_update_count) == (1, MAX_INDEX_INT - 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_observation_keys_with_dots_spaces_and_other_letters_round_trip(tmp_path, fmt):
    keys = ["cam.rgb", "main images", "камера.глубина", "a..b", "x."]
    obs = {k: torch.full((3, 2, 2), float(i)) for i, k in enumerate(keys)}
    traj = Trajectory(rewards=torch.zeros(3, 2, 1), curr_obs=obs, next_obs={"cam.rgb": obs["cam.rgb"] + 1})
    auto = tmp_path / "auto"
    buf = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(auto), trajectory_format=fmt)
    buf.add_trajectories([traj])
    buf.close()
    loaded = TrajectoryReplayBuffer()
    loaded.load_checkpoint(str(auto))
    batch = loaded.sample(64)
    assert sorted(batch["curr_obs"]) == sorted(keys) and list(batch["next_obs"]) == ["cam.rgb"]
    for i, k in enumerate(keys):
        assert (batch["curr_obs"][k] == float(i)).all()
    assert (batch["next_obs"]["cam.rgb"] == 1.0).all()


@pytest.mark.parametrize("dtype", UNSTORABLE_DTYPES, ids=str)
def test_a_dtype_some_format_cannot_store_is_refused_naming_the_allowed_ones(dtype):
    buf = TrajectoryReplayBuffer()
    actions = torch.zeros(2, 1, 3).to(dtype)
    with pytest.raises(
        InvalidTrajectoryError, match=r"trajectory 0: actions has dtype .*use one of bool, uint8, .*bfloat16"
    ):
        buf.add_trajectories([Trajectory(rewards=torch.zeros(2, 1, 1), actions=actions)])
    assert (buf.size, buf.schema) == (0, None)


def test_string_subclass_keys_and_weights_ids_are_stored_as_plain_strings(tmp_path):
    np = pytest.importorskip("numpy")
    traj = Trajectory(
        rewards=torch.zeros(2, 1, 1),
        model_weights_id=np.str_("policy-3"),
        curr_obs={np.str_("cam.rgb"): torch.ones(2, 1, 2)},
    )
    for fmt in FORMATS:
        auto = tmp_path / fmt
        buf = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(auto), trajectory_format=fmt)
        buf.add_trajectories([traj])
        buf.close()
        loaded = TrajectoryReplayBuffer()
        loaded.load_checkpoint(str(auto))
        assert (loaded.sample(4)["curr_obs"]["cam.rgb"] == 1).all()
        assert read_directory(str(auto))[0].records[0].model_weights_id == "policy-3"


def test_a_meta_tensor_is_refused_as_holding_no_data():
    buf = TrajectoryReplayBuffer()
    with pytest.raises(InvalidTrajectoryError, match="actions is on the 'meta' device and holds no data"):
        buf.add_trajectories(
            [Trajectory(rewards=torch.zeros(2, 1, 1), actions=torch.zeros(2, 1, 2, device="meta"))]
        )
    assert buf.size == 0


def test_segment_directories_written_with_dotted_keys_keep_loading(tmp_path):
    """What the earlier code wrote: ``metadata.json`` and ``segment.json`` name the column
    ``curr_obs.cam.rgb``, the key verbatim after the field and its dot; that reads back."""
    auto = tmp_path / "auto"
    buf = TrajectoryReplayBuffer(auto_save=True, auto_save_path=str(auto), trajectory_format="segment")
    buf.add_trajectories(
        [Trajectory(rewards=torch.zeros(2, 1, 1), curr_obs={"cam.rgb": torch.ones(2, 1, 3)})]
    )
    buf.close()
    fields = json.loads((auto / "metadata.json").read_text())["fields"]
    columns = json.loads((auto / "seg-000000" / "segment.json").read_text())["columns"]
    assert (
        "curr_obs.cam.rgb" in fields
        and {"name": "curr_obs.cam.rgb", "dtype": "float32", "shape": [3]} in columns
    )
    # column files are named by number only: the key never reaches a file name
    assert {p.name for p in (auto / "seg-000000").iterdir()} - {"segment.json"} == {"000.bin", "001.bin"}
    with contextlib.closing(TrajectoryReplayBuffer()) as loaded:
        loaded.load_checkpoint(str(auto))
        assert set(loaded.schema) == {("rewards",), ("curr_obs", "cam.rgb")}
