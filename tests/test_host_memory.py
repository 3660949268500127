"""Freed CPU tensors' memory goes back to the system when the trainer releases it."""

import torch

from sat_ehft import host_memory


def resident_mib():
    with open("/proc/self/status", encoding="ascii") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024


def test_the_holes_tensors_of_varying_sizes_leave_in_the_heap_go_back_to_the_system():
    """What a CPU training loop does with batches of varying lengths: a freed 16 MB buffer raises glibc's mmap
    threshold, so the next buffers come from the heap; every other one is freed, and the survivors pin the heap
    so that none of the holes can go back by themselves."""
    torch.ones(4 << 20).sum()  # 16 MB, freed at once: it lifts the mmap threshold (to at most 32 MB)
    buffers = [torch.ones(256 * 1024 + 4096 * (i % 7)) for i in range(400)]  # about 1 MB each, touched
    freed_mib = sum(b.numel() * 4 for b in buffers[::2]) / 2 ** 20
    del buffers[::2]
    before = resident_mib()
    assert host_memory.release_freed()
    after = resident_mib()
    assert before - after > 0.8 * freed_mib, (before, after, freed_mib)
    assert all(bool((b == 1).all()) for b in buffers)  # the live ones are untouched
