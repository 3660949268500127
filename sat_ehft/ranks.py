"""Which process this is among the data-parallel ranks; a lone process (no process group) is rank 0 of 1."""

import os
import socket
from datetime import timedelta

import torch.distributed as dist

TIMEOUT_VARIABLE = "SAT_EHFT_COLLECTIVE_TIMEOUT"


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
    return gathered(mine)


def gathered(mine):
    """Every rank's `mine` (any picklable value), in rank order (each rank calls this)."""
    world_size = rank_and_world_size()[1]
    if world_size == 1:
        return [mine]
    everyone = [None] * world_size
    dist.all_gather_object(everyone, mine)
    return everyone


def launch_started():
    """When this launch began (epoch seconds): DeepSpeed's runner or launcher process above this one, where it was
    started by them, else this process."""
    import psutil

    process, started = psutil.Process(), psutil.Process().create_time()
    for ancestor in process.parents():
        if not any("deepspeed" in part for part in ancestor.cmdline()):
            break
        started = min(started, ancestor.create_time())
    return started


def collective_timeout():
    """How long a rank waits in a collective for the others before it fails: SAT_EHFT_COLLECTIVE_TIMEOUT seconds,
    torch's 30 minutes when unset. A rank that died before a collective (on this node or another) stops the
    others after this; one that dies inside a collective stops them at once (its connections close)."""
    value = os.environ.get(TIMEOUT_VARIABLE, "1800")
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_VARIABLE}={value!r}: expected a number of seconds above 0")
    return timedelta(seconds=seconds)


def join_sat_groups(timeout):
    """Make SAT's model-parallel groups (size 1) now, under `timeout`. SAT makes them when the first model is
    built, with torch's default timeout: torch.distributed.new_group does not inherit the process group's, so a
    rank that never arrived would keep the others waiting there for 30 minutes."""
    from sat import mpu

    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", str(dist.get_world_size())))
    c10d = dist.distributed_c10d
    default, c10d.default_pg_timeout = c10d.default_pg_timeout, timeout
    try:
        mpu.initialize_model_parallel(1)
    finally:
        c10d.default_pg_timeout = default
