"""Process-group setup for `torchrun` and the few collectives training needs.

`torchrun --nproc_per_node N -m training train ...` sets RANK, WORLD_SIZE and
LOCAL_RANK. Training then joins a process group (NCCL on CUDA, gloo on the
CPU), shards the samples across processes, and only rank 0 writes files or
reports progress. Without those variables everything runs in one process.

NOTE: only single-machine CPU runs (gloo, 2 processes) have been exercised.
The NCCL path is written but untested here, and a multi-node run needs
`--out` on a filesystem that every node shares, because all ranks read the
checkpoint and the feature cache from it.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group that torchrun describes, or return a single-process context.

    A process group that the caller already initialized is reused.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        # Feature extraction on a CPU can keep one rank busy for many minutes
        # before the next collective, longer than the default 10-minute timeout.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
        logger.info("joined process group: rank %d of %d, backend %s", rank, world_size, backend)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=dist.get_backend())


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def all_gather_objects(context: DistributedContext, value: Any) -> list[Any]:
    """Return `value` from every rank, in rank order (a one-element list without a group)."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def gather_sharded(context: DistributedContext, count: int, local: torch.Tensor) -> torch.Tensor:
    """Reassemble `count` rows, where rank r computed rows r, r + world_size, ..., into one tensor in order."""
    if not context.enabled:
        return local
    pieces = all_gather_objects(context, local.cpu())
    # A rank with no rows (fewer items than processes) sends an empty (0, 0) tensor.
    shaped = [piece for piece in pieces if len(piece)]
    if not shaped:
        return local
    full = torch.empty((count, *shaped[0].shape[1:]), dtype=shaped[0].dtype)
    for rank, piece in enumerate(pieces):
        if len(piece):
            full[rank::context.world_size] = piece
    return full


def cleanup(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
