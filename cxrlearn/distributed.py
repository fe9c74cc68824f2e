"""Data parallelism with PyTorch's DistributedDataParallel (DDP), started by `torchrun`.

Data parallelism runs one copy of the model per process (a GPU, or a share of the CPU
cores). Each process takes a different slice of every global batch, computes its own
gradients, and during `backward()` DDP averages the gradients of all processes with an
all-reduce, bucket by bucket while the rest of backward still runs. Every process then
takes the same optimizer step from the same weights, so the copies never drift apart.
With a mean loss and equal slices, the averaged gradient is exactly the gradient of the
whole global batch: N processes with batch B/N each train like one process with batch B.

The training loop (`cxrlearn.training`) stays the textbook loop; what data parallelism adds
to it lives here: `wrap` (DDP, or the model itself in one process), `epoch_sampler` and
`local_batch_size` (each rank's slice of every batch), `any_rank` (stop together),
`all_reduce_sum` (numbers over all ranks), `broadcast_buffers` (one set of BatchNorm
statistics), `barrier`, and `is_main` (rank 0 writes the files).

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
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from cxrlearn.errors import CxrlearnError

__all__ = ["DistEnv", "detect", "init_process_group", "is_distributed", "is_main",
           "world_size", "wrap", "epoch_sampler", "local_batch_size", "any_rank",
           "all_reduce_sum", "barrier", "broadcast_buffers", "use_sync_batchnorm",
           "shard_indices", "epoch_permutation", "averaged_gradient", "torchrun",
           "aborted_at_exit"]


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


def world_size() -> int:
    """Number of processes in the run (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that writes files and prints: rank 0, or the only process."""
    return not is_distributed() or dist.get_rank() == 0


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`DistributedDataParallel(model)` inside a process group, else `model` itself.

    DDP all-reduces the gradients during `backward()`; the caller keeps `model` (the plain
    module, shared with the wrapper) for evaluating and saving.
    """
    if not is_distributed():
        return model
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def local_batch_size(batch_size: int) -> int:
    """Each process's share of a global batch of `batch_size` images.

    Raises:
        CxrlearnError: The batch does not split evenly over the processes.
    """
    world = world_size()
    if batch_size % world:
        raise CxrlearnError(f"batch size {batch_size} does not split evenly over "
                            f"{world} processes")
    return batch_size // world


def epoch_sampler(dataset: Sized, seed: int, epoch: int) -> DistributedSampler:
    """The order of one epoch, as this process's slice of one shared permutation.

    The permutation is seeded by (seed, epoch), the same on every rank, so rank r of N takes
    every N-th index and the N slices of a batch are exactly the batch one process would
    take. Seeding by the epoch rather than running one generator on is also what lets a
    resumed run see the batches an uninterrupted one would have.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size(),  # type: ignore[arg-type]
                                 rank=dist.get_rank() if is_distributed() else 0,
                                 shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return sampler


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any process: a stop that every rank takes together."""
    return all_reduce_sum([float(flag)], device)[0] > 0


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


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """The indices rank `rank` of `world_size` gets, as `DistributedSampler(shuffle=False)`
    gives them.

    The n indices are padded by repeating them from the start until every rank gets
    ceil(n / world_size), then rank r takes every world_size-th index from r (strided, not
    contiguous: the slices of a batch then hold neighbouring examples).

    Args:
        n: Size of the data set, at least 1.
        rank: This process's number, 0..world_size-1.
        world_size: Number of processes, at least 1.

    Returns:
        ceil(n / world_size) indices in [0, n).

    Example:
        >>> shard_indices(5, 1, 2)
        [1, 3, 0]
    """
    if n < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need n >= 1 and 0 <= rank < world_size, got {n}, {rank}, "
                         f"{world_size}")
    per_rank = -(-n // world_size)  # ceil(n / world_size)
    total = per_rank * world_size
    order = list(range(n))
    order = (order * -(-total // n))[:total]  # pad by repeating from the start
    return order[rank:total:world_size]


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the n indices in `epoch`, shared by every rank: what
    `DistributedSampler(shuffle=True, seed=seed)` draws after `set_epoch(epoch)`.

    A permutation from a generator seeded with seed + epoch, the same on every rank, so the
    ranks' strided slices never overlap; a new epoch, a new order.

    Args:
        n: Size of the data set.
        seed: The run's seed, the same on every rank.
        epoch: The epoch, 0-based.

    Returns:
        A permutation of range(n).
    """
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).tolist()


def averaged_gradient(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      world_size: int) -> list[torch.Tensor]:
    """What DDP computes, simulated in one process: each of `world_size` ranks takes the
    strided slice x[r::N], computes the gradient of its mean loss, and the gradients are
    averaged (the all-reduce). With a mean loss and equal slices this equals the gradient of
    the whole batch.

    The model's `.grad` fields are left as they were.

    Args:
        model: The network (every rank holds the same weights).
        loss_fn: A loss that averages over the batch.
        x: The global batch.
        y: Its targets.
        world_size: N, which must divide the batch size.

    Returns:
        One averaged gradient per parameter that requires one, in `model.parameters()` order.

    Shape:
        x: (B, ...), y: (B,) with B divisible by N -> one tensor per parameter
    """
    if x.shape[0] % world_size:
        raise CxrlearnError(f"batch size {x.shape[0]} does not split evenly over "
                            f"{world_size} processes")
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for rank in range(world_size):
        loss = loss_fn(model(x[rank::world_size]), y[rank::world_size])  # this rank's slice
        # autograd.grad, not backward(): no .grad is touched, no zeroing needed.
        for t, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            t += g
    return [t / world_size for t in total]  # the all-reduce's mean


EXIT_ABORT = "terminate called without an active exception"
"""What a rank prints when gloo's shutdown race (see `aborted_at_exit`) kills it."""


def aborted_at_exit(job: subprocess.CompletedProcess) -> bool:
    """True when a `torchrun` job failed because one of its ranks died of gloo's exit race.

    On CPUs (gloo), PyTorch's worker threads of the process group outlive
    `destroy_process_group()`. A thread that finishes a collective releases its tensors a
    moment after the caller has moved on; if that caller is already shutting Python down,
    releasing a tensor still known to Python needs the interpreter lock, which no longer
    exists, and the C++ runtime aborts the process: SIGABRT, with `EXIT_ABORT` on stderr.
    `torchrun` then stops the other ranks and reports the job as failed, often after all
    its work is done. (A C++ stack trace of the abort shows the thread in
    `ProcessGroupGloo::runLoop`, releasing a tensor; pytorch/pytorch pull request 179291
    describes the same crash at interpreter shutdown.) It is rare on an idle machine and
    less so on a busy one: on a 2-core CPU beside three training processes, 2 of 100 jobs of
    `tests/ddp_worker.py` aborted this way.

    The test: the job failed, the first failure `torchrun` reports ("Root Cause") is a
    SIGABRT, and `EXIT_ABORT` is in its stderr. A Python error in a rank is not this.
    """
    if job.returncode == 0 or EXIT_ABORT not in job.stderr:
        return False
    cause = job.stderr.rpartition("Root Cause")[2]
    return "SIGABRT" in cause


def torchrun(
    args: Sequence[str], processes: int = 2, *, env: Mapping[str, str] | None = None,
    timeout: float | None = None, before_retry: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run `python -m torch.distributed.run --standalone --nproc-per-node N ARGS` here.

    `python -m torch.distributed.run` is the `torchrun` command, started with this Python.
    `--standalone` runs the rendezvous on this machine, on a free port. The output is
    captured (text), and returned with the exit status, as `subprocess.run` does.

    A job that `aborted_at_exit` runs once more: the abort is a race in PyTorch, not in
    the job. `before_retry` is called first, to give the second run a clean start (for
    `cxrlearn train`, remove the run folder: it refuses to write into a finished run).
    The failed first run is kept as `.first_try` on the result (None when there was none).
    Any other failure is returned as it is.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(processes), *args]

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else dict(env))

    job, first = run(), None
    if aborted_at_exit(job):
        if before_retry is not None:
            before_retry()
        job, first = run(), job
    job.first_try = first  # type: ignore[attr-defined]
    return job
