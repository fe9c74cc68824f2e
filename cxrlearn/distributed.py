"""Data parallelism with PyTorch's DistributedDataParallel (DDP), started by `torchrun`.

Data parallelism runs one copy of the model per process (a GPU, or a share of the CPU
cores). Each process takes a different slice of every global batch, computes its own
gradients, and during `backward()` DDP averages the gradients of all processes with an
all-reduce, bucket by bucket while the rest of backward still runs. Every process then
takes the same optimizer step from the same weights, so the copies never drift apart.
With a mean loss and equal slices, the averaged gradient is exactly the gradient of the
whole global batch: N processes with batch B/N each train like one process with batch B.

`torchrun --nproc-per-node N -m cxrlearn train ...` starts N processes and sets `RANK`,
`WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` in each; `detect()` reads
them. Backends: `nccl` between CUDA GPUs, `gloo` on CPUs. Rank 0 alone writes files and
prints; the others compute.

BatchNorm: each process normalises with the statistics of its own slice ("per-replica BN",
PyTorch's default). With small slices that is noisier than one big batch; `SyncBatchNorm`
all-reduces the statistics instead, at the price of a communication per BN layer (CUDA only).

Lesson: lessons/08_distributed_training.ipynb
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cxrlearn.errors import CxrlearnError

__all__ = ["DistEnv", "detect", "init_process_group", "is_distributed", "all_reduce_sum",
           "barrier", "broadcast_buffers", "use_sync_batchnorm"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a distributed run.

    Attributes:
        rank: This process's number, 0..world_size-1 (rank 0 writes files).
        world_size: Number of processes.
        local_rank: Number on this machine (picks the GPU).
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv | None:
    """The distributed environment that `torchrun` set, or None for a plain single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(env: DistEnv, device: torch.device) -> torch.device:
    """Join the process group (`nccl` for CUDA, `gloo` otherwise); returns this rank's device."""
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    return device


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity when not distributed)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def use_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm by SyncBatchNorm (statistics over the global batch).

    Raises:
        CxrlearnError: Not on CUDA, where PyTorch's SyncBatchNorm does not run.
    """
    if device.type != "cuda":
        raise CxrlearnError("SyncBatchNorm needs CUDA GPUs; on CPUs each process keeps its "
                            "own BatchNorm statistics (per-replica BN)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
