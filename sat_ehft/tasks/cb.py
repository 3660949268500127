from sat_ehft.tasks.base import Task
from sat_ehft.tasks.registry import register

register(Task("cb", benchmark="superglue", folder="CB", text_fields=("premise", "hypothesis"),
              labels=("entailment", "contradiction", "neutral"), metrics=("accuracy",), hub=("aps/super_glue", "cb")))
