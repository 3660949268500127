from sat_ehft.tasks.base import Task
from sat_ehft.tasks.registry import register

register(Task("mrpc", benchmark="glue", folder="MRPC", text_fields=("sentence1", "sentence2"),
              labels=("0", "1"), metrics=("f1", "accuracy"), hub=("nyu-mll/glue", "mrpc"),
              tsv_columns={"label": "Quality", "sentence1": "#1 String", "sentence2": "#2 String"}))
