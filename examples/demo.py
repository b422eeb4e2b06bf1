"""End-to-end demo on a local buffer directory.

Writes synthetic robot rollouts (proprioceptive state, a 64x64 camera, 2 rollout epochs in
RLinf's row layout) with ``auto_save``, samples, saves a checkpoint, reloads it (whole and as
rank 0 of 2), and prints what happened: keys, shapes, dtypes and throughput.

    python examples/demo.py                 # in a fresh temporary directory
    python examples/demo.py --dir ./my-run  # in a directory of your choice (new or empty)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from rlinf_replay_buffer import Trajectory, TrajectoryReplayBuffer


def rollout(i: int, steps: int = 20, epochs: int = 2, envs: int = 4) -> Trajectory:
    """A synthetic rollout in RLinf's layout; every value encodes (trajectory, step)."""
    T = steps * epochs
    code = torch.arange(T, dtype=torch.float32)[:, None].expand(T, envs) + 1000 * i

    def extra(x: torch.Tensor, first: bool) -> torch.Tensor:
        blocks = x.reshape(epochs, steps, *x.shape[1:])
        pad = torch.zeros_like(blocks[:, :1])
        return torch.cat([pad, blocks] if first else [blocks, pad], 1).reshape(-1, *x.shape[1:])

    done = (torch.arange(T) % steps == steps - 1)[:, None, None].expand(T, envs, 1)
    image = torch.randint(0, 255, (T, envs, 64, 64, 3), dtype=torch.uint8)
    return Trajectory(
        max_episode_length=steps,
        model_weights_id="6f1c5e9a-3b1d-4c2e-9a57-1d2b3c4d5e6f",
        model_update_count=i // 4,
        actions=extra(code[..., None].expand(T, envs, 7).clone(), first=False),
        rewards=code[..., None].clone(),
        dones=extra(done.clone(), first=True),
        terminations=extra(torch.zeros(T, envs, 1, dtype=torch.bool), first=True),
        truncations=extra(done.clone(), first=True),
        curr_obs={"states": code[..., None].expand(T, envs, 9).clone(), "main_images": image},
        next_obs={"states": (code + 1)[..., None].expand(T, envs, 9).clone(), "main_images": image},
    )


def describe(batch: dict, prefix: str = "") -> None:
    """Print every key of a batch with its shape and dtype."""
    for key, value in batch.items():
        if isinstance(value, dict):
            describe(value, prefix=f"{prefix}{key}.")
        else:
            print(f"    {prefix + key:<22} {str(list(value.shape)):<20} {value.dtype}")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=None, help="working directory (new or empty)")
    p.add_argument("--trajectories", type=int, default=48)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args(argv)
    root = args.dir or tempfile.mkdtemp(prefix="rlinf-buffer-demo-")
    if os.path.isdir(root) and os.listdir(root):
        print(f"error: {root} is not empty; give a new or empty --dir", file=sys.stderr)
        return 1
    buffer_dir, ckpt_dir = os.path.join(root, "buffer"), os.path.join(root, "checkpoint")
    print(f"demo directory: {root}")

    data = [rollout(i) for i in range(args.trajectories)]
    with TrajectoryReplayBuffer(
        seed=1234,
        enable_cache=True,
        cache_size=8,
        sample_window_size=32,
        auto_save=True,
        auto_save_path=buffer_dir,
        trajectory_format="pt",
    ) as buffer:
        start = time.perf_counter()
        for i in range(0, len(data), 4):
            buffer.add_trajectories(data[i : i + 4])
        added = time.perf_counter() - start
        buffer.flush()
        durable = time.perf_counter() - start
        stats = buffer.get_stats()
        print(
            f"1. wrote {stats['size']} trajectories ({stats['total_samples']} transitions) to "
            f"{buffer_dir}: add_trajectories returned after {added * 1e3:.1f} ms, all files "
            f"durable after {durable * 1e3:.1f} ms"
        )
        print(
            f"   files on disk: {len([f for f in os.listdir(buffer_dir) if f.endswith('.pt')])}"
            f" trajectory files, e.g. {sorted(os.listdir(buffer_dir))[-3]}"
        )

        batch = buffer.sample(num_chunks=args.batch)
        print(f"2. sample(num_chunks={args.batch}) from the newest 32 trajectories:")
        describe(batch)
        aligned = bool(
            (batch["actions"][:, 0] == batch["curr_obs"]["states"][:, 0]).all()
            and (batch["next_obs"]["states"][:, 0] == batch["curr_obs"]["states"][:, 0] + 1).all()
        )
        print(f"   every row an aligned transition (action/obs/next_obs codes agree): {aligned}")
        repeats = 50
        start = time.perf_counter()
        for _ in range(repeats):
            buffer.sample(args.batch)
        secs = (time.perf_counter() - start) / repeats
        print(
            f"   throughput: {args.batch / secs:,.0f} transitions/s ({secs * 1e3:.2f} ms per "
            f"batch of {args.batch}; cache {stats['cached_trajectories']} trajectories, the rest "
            "read from disk)"
        )

        buffer.save_checkpoint(ckpt_dir)
        print(f"3. save_checkpoint -> {ckpt_dir} ({len(os.listdir(ckpt_dir))} files)")

    whole = TrajectoryReplayBuffer(seed=1234, sample_window_size=0)
    whole.load_checkpoint(ckpt_dir)
    rank0 = TrajectoryReplayBuffer(seed=1234, sample_window_size=0)
    rank0.load_checkpoint(ckpt_dir, is_distributed=True, local_rank=0, world_size=2)
    print(
        f"4. load_checkpoint: whole {whole.size} trajectories / {whole.total_samples} transitions;"
        f" rank 0 of 2: {rank0.size} trajectories (every other one, spanning the whole run)"
    )
    again = whole.sample(args.batch)
    print(
        f"   sampled {again['rewards'].shape[0]} transitions from the reloaded buffer; "
        f"next trajectory id: {whole.trajectory_counter}"
    )
    print("done")
    return 0 if aligned else 1


if __name__ == "__main__":
    sys.exit(main())
