"""Which process this is among the data-parallel ranks; a lone process (no process group) is rank 0 of 1."""

import torch.distributed as dist


def rank_and_world_size():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main():
    return rank_and_world_size()[0] == 0


def barrier():
    if rank_and_world_size()[1] > 1:
        dist.barrier()
