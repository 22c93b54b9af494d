"""Multi-process training through PyTorch's own machinery: `torchrun` sets WORLD_SIZE / RANK / LOCAL_RANK,
we join the process group (NCCL on CUDA, Gloo on CPU) and wrap the model in DistributedDataParallel."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "setup_distributed", "pick_device"]


def pick_device(name: str, *, local_rank: int = 0) -> torch.device:
    """`train.device` -> a torch.device ("auto": CUDA when available, one GPU per local rank)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device asks for CUDA but no GPU is visible; set train.device = 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device asks for MPS but it is not available; set train.device = 'cpu'")
    return device


@dataclass
class DistEnv:
    """This process's place in the job (a single process has rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_distributed(device_name: str) -> tuple[DistEnv, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1; returns (env, this process's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(), pick_device(device_name)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = pick_device(device_name, local_rank=local_rank)
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   owns_group=owns), device
