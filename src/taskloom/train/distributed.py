"""Data-parallel training under `torchrun`: each process takes its share of every global batch and the
gradients are combined across processes before each optimizer step.

    torchrun --nproc-per-node 2 -m taskloom train task.yaml --out runs/rt

The global batch (`--batch-size`) is the same as in one process: process r of W takes rows r, r+W, ...
of it, so the loss curve matches a single-process run at the same global batch. Every process keeps
the same weights (same seed, same combined gradients, same optimizer); only rank 0 writes. gloo on
CPU, nccl on CUDA. Without torchrun's environment this is a world of one and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The process's place in a torchrun world (WORLD_SIZE, RANK, LOCAL_RANK), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(rank=int(os.environ.get("RANK", "0")), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def start(world: World, device: str) -> str:
    """Join the process group; on CUDA each process takes its own GPU. Returns the device to use."""
    if world.size == 1:
        return device
    import torch
    import torch.distributed as dist

    if device == "cuda":
        torch.cuda.set_device(world.local_rank)
        device = f"cuda:{world.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def stop(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def shard(rows: list, world: World) -> list:
    """This process's rows of a global batch."""
    return rows[world.rank :: world.size] if world.size > 1 else rows


def sum_gradients(params: list, world: World) -> None:
    """Gradients become the global batch's: each process's loss is already weighted by its share of
    the batch's rows (train/loop.py), so the sum over processes, in one flat buffer, is the global gradient."""
    if world.size == 1:
        return
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    at = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[at : at + n].view_as(g).clone()
        at += n


def global_sum(values: list[float], world: World) -> list[float]:
    """Element-wise sum of small per-process numbers (loss parts, token counts) over the world."""
    if world.size == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_flag(flag: bool, world: World) -> bool:
    """Rank 0's decision (e.g. "a fault happened") reaches every process, so all stop together."""
    if world.size == 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0])
    dist.broadcast(t, 0)
    return bool(t.item())
