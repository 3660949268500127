from sat_ehft.tasks.base import Task
from sat_ehft.tasks.registry import register

# Regression on the 0-5 similarity score. The paper reports Pearson for RoBERTa, Spearman for BERT.
register(Task("sts-b", benchmark="glue", folder="STS-B", text_fields=("sentence1", "sentence2"),
              labels=None, metrics=("pearson", "spearman"), hub=("nyu-mll/glue", "stsb"), label_range=(0.0, 5.0),
              tsv_columns={"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"}))
