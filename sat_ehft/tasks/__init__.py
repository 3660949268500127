"""The nine tasks of the paper, registered by name. Adding a task: one file here plus one import line."""

from sat_ehft.tasks.base import DataError, Encoding, Example, Task, encode_examples, selection_metric
from sat_ehft.tasks.registry import TASKS, get_task, register

from sat_ehft.tasks import rte, boolq, copa, cb, wic, mrpc, qnli, cola, stsb  # noqa: E402,F401  (registers)

__all__ = ["DataError", "Encoding", "Example", "Task", "TASKS", "encode_examples", "get_task", "register",
           "selection_metric"]
