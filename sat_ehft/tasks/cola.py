from sat_ehft.tasks.base import Task
from sat_ehft.tasks.registry import register

# The official CoLA train/dev files have no header: source, label, original mark, sentence. The test file has
# one: index, sentence.
register(Task("cola", benchmark="glue", folder="CoLA", text_fields=("sentence",),
              labels=("0", "1"), metrics=("matthews", "accuracy"), hub=("nyu-mll/glue", "cola"),
              tsv_columns={"label": 1, "sentence": 3}, tsv_header=False, test_tsv_columns={"sentence": "sentence"}))
