from sat_ehft.tasks.base import Task
from sat_ehft.tasks.registry import register

register(Task("rte", benchmark="superglue", folder="RTE", text_fields=("premise", "hypothesis"),
              labels=("entailment", "not_entailment"), metrics=("accuracy",), hub=("aps/super_glue", "rte")))
