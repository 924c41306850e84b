"""Data-parallel training under ``torchrun``: which process this is, on which device.

``torchrun --nproc_per_node=N -m robopolicy train CONFIG`` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set; each trains on its own batches and DistributedDataParallel
averages gradients. NCCL is used across GPUs, gloo on CPU (which is how CI tests it). Run
without torchrun, everything here is a single process and a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from robopolicy.errors import ConfigError


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """The process that logs, saves and evaluates."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to call for the loss: DDP across processes, the model itself alone."""
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    @torch.no_grad()
    def in_sync(self, model: torch.nn.Module) -> bool:
        """Whether every process holds the same weights, as data parallelism must keep them
        (checked on a weighted sum of all parameters; also a barrier)."""
        if self.world_size == 1:
            return True
        flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
        weights = torch.linspace(1.0, 2.0, len(flat), dtype=torch.float64, device=flat.device)
        fingerprint = (flat * weights).sum().reshape(1)
        low, high = fingerprint.clone(), fingerprint.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        return bool(low == high)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" is the local rank's GPU when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda requested but no CUDA GPU is available; use "
                              "device=auto or device=cpu")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def start(device: str = "auto") -> Process:
    """Join the process group torchrun set up (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = pick_device(device, local_rank)
    if world_size == 1:
        return Process(device=torch_device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
    return Process(dist.get_rank(), world_size, torch_device)


def stop(process: Process) -> None:
    if process.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
