from sat_ehft.tasks.base import Task
from sat_ehft.tasks.registry import register

register(Task("qnli", benchmark="glue", folder="QNLI", text_fields=("question", "sentence"),
              labels=("entailment", "not_entailment"), metrics=("accuracy",), hub=("nyu-mll/glue", "qnli"),
              tsv_columns={"question": "question", "sentence": "sentence", "label": "label"},
              original_order=("sentence", "question")))
