"""The task registry: a task file calls `register(...)`; `sat_ehft.tasks` imports every task file."""

from sat_ehft.registry import Registry

# Names compare ignoring case, '-' and '_', so "STS-B", "stsb" and "sts_b" are one task.
TASKS = Registry("task", normalize=lambda name: name.lower().replace("-", "").replace("_", ""))
register = TASKS.register
get_task = TASKS.get_item
