from sat_ehft.tasks.base import Task
from sat_ehft.tasks.registry import register

# (question, passage): only the passage is cut when the pair is too long. The original code: (passage, question).
register(Task("boolq", benchmark="superglue", folder="BoolQ", text_fields=("question", "passage"),
              labels=("false", "true"), metrics=("accuracy",), hub=("aps/super_glue", "boolq"),
              truncation="only_second", original_order=("passage", "question")))
