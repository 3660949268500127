"""Which process this is among the data-parallel ranks; a lone process (no process group) is rank 0 of 1."""

import os
import socket

import torch.distributed as dist


def rank_and_world_size():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main():
    return rank_and_world_size()[0] == 0


def barrier():
    if rank_and_world_size()[1] > 1:
        dist.barrier()


def layout():
    """Where every rank ran, in rank order (each rank calls this): its node's rank among the launch's nodes
    (DeepSpeed's launcher sets CROSS_RANK), the host's name and, where the node was reached over ssh (a pdsh
    launch), the address it was reached at. done.json keeps it: a multi-node run shows each node took part."""
    mine = {"rank": rank_and_world_size()[0], "node_rank": int(os.environ.get("CROSS_RANK", 0)),
            "host": socket.gethostname()}
    if os.environ.get("SSH_CONNECTION"):  # "client address, client port, server address, server port"
        mine["ssh_address"] = os.environ["SSH_CONNECTION"].split()[2]
    if rank_and_world_size()[1] == 1:
        return [mine]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone
