"""The task registry: a task file calls `register(...)`; `sat_ehft.tasks` imports every task file."""

TASKS = {}


def register(task):
    if task.name in TASKS:
        raise ValueError(f"task '{task.name}' is registered twice")
    TASKS[task.name] = task
    return task


def _key(name):
    return name.lower().replace("-", "").replace("_", "")


def get_task(name):
    """The task called `name`, ignoring case, '-' and '_' (so "STS-B", "stsb" and "sts_b" all work)."""
    by_key = {_key(n): task for n, task in TASKS.items()}
    if _key(name) not in by_key:
        raise KeyError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    return by_key[_key(name)]
