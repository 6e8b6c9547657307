"""The process group of a torchrun launch, as the training loop asks about it."""
from __future__ import annotations

import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return dist_info()[0] == 0


def barrier() -> None:
    if dist_info()[1] > 1:
        dist.barrier()
