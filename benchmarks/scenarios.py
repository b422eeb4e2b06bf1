"""Scenario sizes, the cases each scenario runs, and the seeded synthetic trajectories.

Every contender receives the same trajectories: trajectory ``i`` of a spec is generated from
``numpy.random.default_rng([seed, i])`` whatever the contender, so contents are identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Key = tuple[str, ...]
WEIGHTS_ID = "6f1c5e9a-3b1d-4c2e-9a57-1d2b3c4d5e6f"
CAMERAS = ("main_images", "wrist_images")
FLAGS = ("dones", "terminations", "truncations")


@dataclass(frozen=True)
class TrajSpec:
    """Shape of one trajectory: ``T`` steps of ``B`` envs, RLinf's fields in the aligned layout."""

    name: str
    steps: int
    envs: int
    action_dim: int
    states_dim: int = 0
    image_hw: int = 0
    #: trajectory ``i`` gets ``model_update_count = i // update_every`` (0: always 0)
    update_every: int = 0

    @property
    def transitions(self) -> int:
        """Transitions per trajectory (``T * B``)."""
        return self.steps * self.envs

    def columns(self) -> dict[Key, tuple[tuple[int, ...], torch.dtype]]:
        """Every column with its per-transition shape and dtype."""
        cols: dict[Key, tuple[tuple[int, ...], torch.dtype]] = {
            ("actions",): ((self.action_dim,), torch.float32),
            ("rewards",): ((1,), torch.float32),
        }
        for flag in FLAGS:
            cols[(flag,)] = ((1,), torch.bool)
        for obs in ("curr_obs", "next_obs"):
            if self.states_dim:
                cols[(obs, "states")] = ((self.states_dim,), torch.float32)
            if self.image_hw:
                for cam in CAMERAS:
                    cols[(obs, cam)] = ((self.image_hw, self.image_hw, 3), torch.uint8)
        return cols

    @property
    def bytes_per_transition(self) -> int:
        """Bytes of one transition summed over all columns."""
        total = 0
        for shape, dtype in self.columns().values():
            total += int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        return total

    @property
    def trajectory_bytes(self) -> int:
        """Bytes of one trajectory's tensors."""
        return self.bytes_per_transition * self.transitions

    def describe(self) -> str:
        """One-line summary such as ``B=32, T=50, 0.58 MB``."""
        obs = []
        if self.states_dim:
            obs.append(f"states {self.states_dim}")
        if self.image_hw:
            obs.append(f"2 cameras {self.image_hw}x{self.image_hw}x3 uint8")
        return (
            f"B={self.envs}, T={self.steps}, {' + '.join(obs)}, actions {self.action_dim}, "
            f"{self.trajectory_bytes / 1e6:.3g} MB per trajectory"
        )


def make_trajectory(spec: TrajSpec, index: int, seed: int = 0) -> Any:
    """Trajectory ``index`` of ``spec``: random but reproducible, identical for every contender.

    ``next_obs[t]`` equals ``curr_obs[t + 1]`` (as in a real rollout) but is its own tensor.
    """
    from rlinf_replay_buffer import Trajectory

    rng = np.random.default_rng([seed, index])
    T, B = spec.steps, spec.envs

    def obs_pair(frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(frames[:-1].copy()), torch.from_numpy(frames[1:].copy())

    curr: dict[str, torch.Tensor] = {}
    nxt: dict[str, torch.Tensor] = {}
    if spec.states_dim:
        curr["states"], nxt["states"] = obs_pair(
            rng.standard_normal((T + 1, B, spec.states_dim), dtype=np.float32)
        )
    if spec.image_hw:
        hw = spec.image_hw
        for cam in CAMERAS:
            curr[cam], nxt[cam] = obs_pair(rng.integers(0, 256, (T + 1, B, hw, hw, 3), dtype=np.uint8))
    dones = rng.random((T, B, 1)) < 0.02
    terminations = dones & (rng.random((T, B, 1)) < 0.5)
    return Trajectory(
        max_episode_length=T,
        model_weights_id=WEIGHTS_ID,
        model_update_count=index // spec.update_every if spec.update_every else 0,
        actions=torch.from_numpy(rng.uniform(-1, 1, (T, B, spec.action_dim)).astype(np.float32)),
        rewards=torch.from_numpy(rng.standard_normal((T, B, 1), dtype=np.float32)),
        dones=torch.from_numpy(dones),
        terminations=torch.from_numpy(terminations),
        truncations=torch.from_numpy(dones & ~terminations),
        curr_obs=curr,
        next_obs=nxt,
    )


def trajectory_columns(traj: Any, spec: TrajSpec) -> dict[Key, torch.Tensor]:
    """The trajectory's columns as ``[T * B, ...]`` views (the order of ``spec.columns()``)."""
    out: dict[Key, torch.Tensor] = {}
    for key in spec.columns():
        value = getattr(traj, key[0])
        if len(key) == 2:
            value = value[key[1]]
        out[key] = value.reshape(-1, *value.shape[2:])
    return out


def nest(flat: Mapping[Key, torch.Tensor]) -> dict:
    """``{("curr_obs", "states"): t}`` -> ``{"curr_obs": {"states": t}}``."""
    out: dict = {}
    for key, value in flat.items():
        if len(key) == 1:
            out[key[0]] = value
        else:
            out.setdefault(key[0], {})[key[1]] = value
    return out


# -- the scenarios ---------------------------------------------------------------------------

MEMORY_CONTENDERS = ("limit", "ours", "rlinf_reference", "torchrl_lazy", "torchrl_memmap")
DISK_CONTENDERS = (
    "limit",
    "pread_rows",
    "ours[pt]",
    "ours[segment]",
    "rlinf_reference[pt]",
    "torchrl_memmap",
)
QUICKSTART_CONTENDERS = ("limit", "ours[pt]", "ours[pkl]", "ours[segment]", "rlinf_reference[pt]")
LATENCY_CONTENDERS = (
    "limit",
    "limit[ring]",
    "ours[memory]",
    "ours[pt]",
    "ours[segment]",
    "rlinf_reference[memory]",
    "rlinf_reference[pt]",
    "torchrl_lazy",
    "torchrl_memmap",
)
WRITE_CONTENDERS = ("limit", "ours[pt]", "ours[segment]", "rlinf_reference[pt]", "torchrl_memmap")
INDEX_CONTENDERS = ("limit", "ours[pt]", "ours[segment]", "rlinf_reference[pt]")
# the scale scenario loads a directory in every format of ours; at 1M, pkl is left out (building
# its directory takes as long as pt's, about half an hour, and its index is read as pt's is)
SCALE_CONTENDERS = ("limit", "ours[pt]", "ours[pkl]", "ours[segment]", "rlinf_reference[pt]")
# the sampler scenarios: every table also has ``ours[uniform]``, the plain sample() of as many
# rows, which the "vs uniform" column divides by
SEQUENCE_CONTENDERS = (
    "limit",
    "ours[uniform]",
    "ours[sequences]",
    "ours[sequences_pad]",
    "torchrl_slice",
    "torchrl_slice_pad",
    "torchrl_slice_nocache",
)
PRIORITY_CONTENDERS = ("limit", "ours[uniform]", "ours[prioritized]", "torchrl_lazy", "torchrl_prioritized")
FRESHNESS_CONTENDERS = (
    "limit",
    "ours[uniform]",
    "ours[stale_none]",
    "ours[stale_half]",
    "torchrl_lazy",
    "torchrl_stale_half",
)
RATE_CONTENDERS = ("limit", "ours[uniform]", "ours[rate_limited]", "ours[limiter_only]")
# the memory scenario: one child per command, each on the same directory 10x the cache
COMMAND_CONTENDERS = (
    "ours[load]",
    "ours[info]",
    "ours[sample]",
    "ours[verify]",
    "ours[view]",
    "ours[export]",
    "ours[merge]",
    "ours[split]",
)
# the ray scenario: the sharded buffer against the local one (the "vs local" column divides by
# ``ours[local]``); each ray contender's child starts its own local Ray cluster
RAY_CONTENDERS = ("ours[local]", "ours[ray-1]", "ours[ray-2]")


@dataclass(frozen=True)
class Case:
    """One unit of work: one child process per (case, contender) runs it and reports rows.

    ``kind`` selects the procedure in :mod:`benchmarks.procedures`: ``sample`` (in memory),
    ``disk`` (warm and cold page cache), ``latency`` (add), ``write`` (disk throughput),
    ``tiny`` (add+flush with ``count`` trajectories indexed), ``scale`` (load, open, sample
    with ``count`` trajectories in the directory), ``sequences`` (``batches[0]`` runs of each
    length in ``seq_lens``), ``prioritized`` (sample and update priorities), ``rate_limited``
    (an add/sample loop), ``ray`` (``sample(n)`` for each of ``batches``, then the latency of
    one ``add_trajectories([traj])``, from a buffer holding ``window`` trajectories on disk with
    a cache as large as the window). ``params`` are sampler settings passed to the contenders
    (:attr:`benchmarks.contenders.StoreConfig.params`).
    """

    scenario: str
    name: str
    kind: str
    spec: TrajSpec
    contenders: tuple[str, ...]
    window: int = 0
    cache_size: int = 0
    batches: tuple[int, ...] = ()
    count: int = 0
    seq_lens: tuple[int, ...] = ()
    params: tuple[tuple[str, Any], ...] = ()

    def tables(self) -> list[str]:
        """Titles of the tables this case contributes rows to (shared across cases)."""
        s = self.scenario
        if self.kind == "sample":
            return [f"{s}: sample({n})" for n in self.batches]
        if self.kind == "disk":
            return [f"{s} {temp}: sample({n})" for n in self.batches for temp in ("warm", "cold")]
        if self.kind == "latency":
            mb = self.spec.trajectory_bytes / 1e6
            return [f"add latency: one {self.spec.name} trajectory ({mb:.3g} MB)"]
        if self.kind == "write":
            mb = self.count * self.spec.trajectory_bytes / 1e6
            return [
                f"write throughput: {self.count} {self.spec.name} trajectories ({mb:.4g} MB), add until flush"
            ]
        if self.kind == "tiny":
            return ["add+flush of one tiny trajectory (T=2, B=1) vs trajectories indexed"]
        if self.kind == "memory":
            mb = self.count * self.spec.trajectory_bytes / 1e6
            cache_mb = self.cache_size * self.spec.trajectory_bytes / 1e6
            return [
                f"memory: each command once on a {mb:.4g} MB directory of {self.count} {self.spec.name} "
                f"trajectories, cache {self.cache_size} ({cache_mb:.3g} MB)"
            ]
        if self.kind == "scale":
            n = self.batches[0]
            return [
                f"{s}: load_checkpoint into a fresh buffer (window {self.window}, cache {self.cache_size})",
                f"{s}: open (continue) an auto-save directory (cache {self.cache_size})",
                f"{s}: sample({n}) from the opened directory, window {self.window}",
            ]
        if self.kind == "sequences":
            n = self.batches[0]
            return [f"{s}: sample_sequences({n}, {length}), {n * length:,} rows" for length in self.seq_lens]
        if self.kind == "prioritized":
            n = self.batches[0]
            return [f"{s}: sample({n}) + update_priorities({n})"]
        if self.kind == "rate_limited":
            n, k = self.batches[0], dict(self.params)["samples_per_add"]
            return [
                f"{s}: sample({n}) in an add/sample loop ({k} samples per add)",
                f"{s}: add_trajectories([traj]) in the same loop",
            ]
        if self.kind == "ray":
            mb = self.spec.trajectory_bytes / 1e6
            return [f"{s} {self.spec.name}: sample({n})" for n in self.batches] + [
                f"{s} {self.spec.name}: add_trajectories([traj]) of one trajectory ({mb:.3g} MB)"
            ]
        raise ValueError(f"unknown case kind {self.kind!r}")


@dataclass(frozen=True)
class Scenario:
    """A named group of cases with a one-line description printed above its tables."""

    name: str
    description: str
    cases: tuple[Case, ...]


def level_name(count: int) -> str:
    """``100000`` -> ``100k``."""
    if count >= 1000 and count % 1000 == 0:
        return f"{count // 1000}k"
    return str(count)


def build_scenarios(quick: bool = False) -> dict[str, Scenario]:
    """All scenarios at full size, or ~100x smaller with ``quick``."""
    if quick:
        state = TrajSpec("state", steps=10, envs=4, action_dim=4, states_dim=42)
        images = TrajSpec("images", steps=20, envs=1, action_dim=7, states_dim=7, image_hw=32)
        vla = TrajSpec("vla", steps=4, envs=2, action_dim=7, image_hw=64)
        windows = {"state": 20, "images": 6, "vla": 4}
        batches = {"state": (64, 128), "images": (16,), "vla": (16,)}
        write_counts = {"state": 4, "images": 2}
        tiny_levels, scale_levels, scale_window, scale_batch = (20, 100, 400), (20, 400), 10, 16
        big_levels = (20, 4000)
    else:
        state = TrajSpec("state", steps=50, envs=32, action_dim=4, states_dim=42)
        images = TrajSpec("images", steps=200, envs=1, action_dim=7, states_dim=7, image_hw=128)
        vla = TrajSpec("vla", steps=24, envs=8, action_dim=7, image_hw=256)
        windows = {"state": 1000, "images": 60, "vla": 20}
        batches = {"state": (1024, 6400), "images": (256,), "vla": (512,)}
        write_counts = {"state": 200, "images": 20}
        tiny_levels, scale_levels, scale_window, scale_batch = (
            (1000, 10000, 100000),
            (1000, 100000),
            1000,
            1024,
        )
        big_levels = (1000, 1000000)
    tiny = TrajSpec("tiny", steps=2, envs=1, action_dim=4, states_dim=42)
    specs = {"state": state, "images": images, "vla": vla}

    def window_text(name: str) -> str:
        w = windows[name]
        return f"window {w} trajectories ({w * specs[name].transitions:,} transitions)"

    out: dict[str, Scenario] = {}
    for name in ("state", "images", "vla"):
        out[name] = Scenario(
            name,
            f"{specs[name].describe()}; {window_text(name)}, all in memory",
            (
                Case(
                    name,
                    "sample",
                    "sample",
                    specs[name],
                    MEMORY_CONTENDERS,
                    window=windows[name],
                    batches=batches[name],
                ),
            ),
        )
    for name in ("state", "images"):
        w = windows[name]
        out[f"disk_{name}"] = Scenario(
            f"disk_{name}",
            f"{specs[name].describe()}; {window_text(name)} on disk (auto_save), "
            f"cache {max(1, w // 10)}; cold = files dropped from the page cache before every call",
            (
                Case(
                    f"disk_{name}",
                    "sample",
                    "disk",
                    specs[name],
                    DISK_CONTENDERS,
                    window=w,
                    cache_size=max(1, w // 10),
                    batches=batches[name][:1],
                ),
            ),
        )
    # the seed's quick start: TrajectoryReplayBuffer(seed=1234, enable_cache=True, cache_size=5,
    # sample_window_size=100, auto_save=True, trajectory_format=...) over 100 state trajectories
    quick_window, quick_cache = (20, 1) if quick else (100, 5)
    out["quickstart"] = Scenario(
        "quickstart",
        f"the seed's quick start: {specs['state'].describe()}; window {quick_window}, "
        f"cache {quick_cache}, auto_save in each format; cold = files dropped from the page cache",
        (
            Case(
                "quickstart",
                "sample",
                "disk",
                specs["state"],
                QUICKSTART_CONTENDERS,
                window=quick_window,
                cache_size=quick_cache,
                batches=(64,) if quick else (256,),
            ),
        ),
    )
    add_cases: list[Case] = []
    for name in ("state", "images"):
        w = windows[name]
        add_cases.append(
            Case(
                "add",
                f"latency_{name}",
                "latency",
                specs[name],
                LATENCY_CONTENDERS,
                window=w,
                cache_size=max(1, w // 10),
            )
        )
    for name in ("state", "images"):
        w = windows[name]
        add_cases.append(
            Case(
                "add",
                f"write_{name}",
                "write",
                specs[name],
                WRITE_CONTENDERS,
                window=write_counts[name],
                cache_size=max(1, write_counts[name] // 10),
                count=write_counts[name],
            )
        )
    for level in tiny_levels:
        add_cases.append(
            Case(
                "add",
                f"tiny_{level_name(level)}",
                "tiny",
                tiny,
                INDEX_CONTENDERS,
                window=scale_window,
                cache_size=scale_window,
                count=level,
            )
        )
    out["add"] = Scenario(
        "add",
        f"caller latency of add_trajectories([traj]) (state: {state.describe()}; images: "
        f"{images.describe()}); disk write throughput; add+flush cost vs index size",
        tuple(add_cases),
    )
    out.update(sampler_scenarios(quick))
    out["ray"] = ray_scenario(quick)
    memory_count = 4 if quick else write_counts["images"]
    out["memory"] = Scenario(
        "memory",
        f"peak RSS of load_checkpoint + sample(256) and of every command-line tool on a directory "
        f"of {memory_count} image trajectories ({images.describe()}), 10x the cache; bound: "
        "1.2 x cached bytes + 300 MB",
        (
            Case(
                "memory",
                "commands",
                "memory",
                images,
                COMMAND_CONTENDERS,
                window=0,
                cache_size=max(1, memory_count // 10),
                batches=(256,),
                count=memory_count,
            ),
        ),
    )
    for name, levels, contenders in (
        ("scale", scale_levels, SCALE_CONTENDERS),
        ("scale_1m", big_levels, INDEX_CONTENDERS),
    ):
        out[name] = Scenario(
            name,
            f"directories of {', '.join(level_name(n) for n in levels)} tiny trajectories "
            f"({tiny.describe()}); window {scale_window}, cache {scale_window}",
            tuple(
                Case(
                    name,
                    f"n{level_name(level)}",
                    "scale",
                    tiny,
                    contenders,
                    window=scale_window,
                    cache_size=scale_window,
                    batches=(scale_batch,),
                    count=level,
                )
                for level in levels
            ),
        )
    return out


def sampler_scenarios(quick: bool = False) -> dict[str, Scenario]:
    """The samplers beside the uniform one (sequences, prioritized, freshness, rate limiter),
    each against ``ours[uniform]`` (a plain ``sample`` of as many rows) and, where TorchRL has
    the same sampler, against TorchRL; all in memory."""
    if quick:
        spec = TrajSpec("sampler", steps=20, envs=2, action_dim=7, states_dim=42)
        window, n, num_seq, seq_lens = 10, 64, 16, (4, 8)
    else:
        spec = TrajSpec("sampler", steps=50, envs=16, action_dim=7, states_dim=42)
        window, n, num_seq, seq_lens = 1000, 1024, 256, (8, 32)
    total = window * spec.transitions
    where = f"{spec.describe()}; window {window} trajectories ({total:,} transitions), in memory"
    alpha, beta, eps = 0.6, 0.4, 1e-6
    out: dict[str, Scenario] = {}
    out["sequences"] = Scenario(
        "sequences",
        f"{where}; {num_seq} runs of L consecutive steps of one env that never cross an episode end "
        f"(ours[sequences_pad], torchrl_slice_pad: padded after it, with a mask), against "
        f"sample({num_seq} * L) (ours[uniform]) and TorchRL's SliceSampler",
        (
            Case(
                "sequences",
                "sequences",
                "sequences",
                spec,
                SEQUENCE_CONTENDERS,
                window=window,
                batches=(num_seq,),
                seq_lens=seq_lens,
            ),
        ),
    )
    out["prioritized"] = Scenario(
        "prioritized",
        f"{where}; proportional prioritized sampling (alpha {alpha}, beta {beta}, eps {eps:g}): "
        f"sample({n}), then update the {n} sampled priorities (values drawn untimed)",
        (
            Case(
                "prioritized",
                "prioritized",
                "prioritized",
                spec,
                PRIORITY_CONTENDERS,
                window=window,
                batches=(n,),
                params=(("alpha", alpha), ("beta", beta), ("eps", eps)),
            ),
        ),
    )
    every = max(1, window // 100)  # 100 model updates over the window
    versions = window // every
    fresh_spec = TrajSpec(
        "sampler", spec.steps, spec.envs, spec.action_dim, spec.states_dim, update_every=every
    )
    out["freshness"] = Scenario(
        "freshness",
        f"{where}; model_update_count = i // {every} ({versions} versions); stale_half: "
        f"max_staleness={versions // 2 - 1} (the older half of the window is stale), stale_none: "
        f"max_staleness={versions} (nothing stale, the check runs)",
        (
            Case(
                "freshness",
                "freshness",
                "sample",
                fresh_spec,
                FRESHNESS_CONTENDERS,
                window=window,
                batches=(n,),
                params=(("stale_half", versions // 2 - 1), ("stale_none", versions)),
            ),
        ),
    )
    per_add = 4
    spi = per_add * n / spec.transitions
    band = spi * spec.transitions + n  # the widest step either side makes
    out["rate_limited"] = Scenario(
        "rate_limited",
        f"{where}; one thread alternates add_trajectories([traj]) and {per_add} x sample({n}); "
        f"RateLimiter(samples_per_insert={spi:g}, min_size_to_sample={window * spec.transitions:,}, "
        f"error_buffer={band:g}): the loop stays inside the band, so nothing ever waits",
        (
            Case(
                "rate_limited",
                "rate_limited",
                "rate_limited",
                spec,
                RATE_CONTENDERS,
                window=window,
                batches=(n,),
                params=(
                    ("samples_per_add", per_add),
                    ("samples_per_insert", spi),
                    ("min_size_to_sample", window * spec.transitions),
                    ("error_buffer", band),
                ),
            ),
        ),
    )
    return out


def ray_scenario(quick: bool = False) -> Scenario:
    """``RayTrajectoryReplayBuffer`` with 1 and 2 shards against the local buffer, on the
    ``state`` and ``images`` trajectories: ``sample(n)`` and one ``add_trajectories([traj])``.

    Every contender auto-saves (``pt``) with a cache as large as its window, so sampling reads
    memory: the local buffer in-process, the shards in their actors, whose parts travel through
    Ray's object store. With ``N`` shards each samples its newest ``window / N`` trajectories
    (round-robin routing), so every contender samples from the same newest ``window``.
    """
    if quick:
        state = TrajSpec("state", steps=10, envs=4, action_dim=4, states_dim=42)
        images = TrajSpec("images", steps=20, envs=1, action_dim=7, states_dim=7, image_hw=32)
        windows = {"state": 20, "images": 6}
        batches = {"state": (32, 128), "images": (16,)}
    else:
        state = TrajSpec("state", steps=50, envs=32, action_dim=4, states_dim=42)
        images = TrajSpec("images", steps=200, envs=1, action_dim=7, states_dim=7, image_hw=128)
        windows = {"state": 1000, "images": 60}
        batches = {"state": (256, 4096), "images": (256,)}
    specs = {"state": state, "images": images}
    where = "; ".join(
        f"{name}: {specs[name].describe()}, window {windows[name]} trajectories "
        f"({windows[name] * specs[name].transitions:,} transitions)"
        for name in specs
    )
    return Scenario(
        "ray",
        f"RayTrajectoryReplayBuffer with 1 and 2 shard actors (num_cpus=0.5 each; every child "
        f"starts its own local Ray cluster, ray.init(num_cpus=2)) against the local "
        f"TrajectoryReplayBuffer (in-process); all auto_save pt with a cache as large as the "
        f"window (N shards: window / N each); {where}",
        tuple(
            Case(
                "ray",
                name,
                "ray",
                specs[name],
                RAY_CONTENDERS,
                window=windows[name],
                cache_size=windows[name],
                batches=batches[name],
            )
            for name in ("state", "images")
        ),
    )
