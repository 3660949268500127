"""COPA as in the paper's code: two sequences "premise because/so choice", scored against each other."""

from sat_ehft.tasks.base import DataError, Task, ids_and_types
from sat_ehft.tasks.registry import register

CONNECTIVES = {"cause": "because", "effect": "so"}


def join_choice(premise, question, choice):
    """"The man turned on the faucet." + effect + "Water flowed." -> "The man turned on the faucet so water flowed.\""""
    choice = choice if choice.startswith("I ") else choice[:1].lower() + choice[1:]
    return f"{premise.rstrip().rstrip('.')} {CONNECTIVES[question]} {choice}"


class CopaTask(Task):
    extra_fields = ("question",)
    choices = 2

    def check_record(self, record, source):
        super().check_record(record, source)
        if record["question"] not in CONNECTIVES:
            raise DataError(f"{source}: question {record['question']!r} should be one of {list(CONNECTIVES)}")

    def encode(self, example, tokenizer, encoding):
        """Both choices as rows: {'input_ids': [ids1, ids2], 'token_type_ids': [...], 'label'}."""
        f = example.fields
        rows = [ids_and_types(tokenizer(join_choice(f["premise"], f["question"], f[choice]),
                                        truncation=self.truncation, max_length=encoding.max_length))
                for choice in ("choice1", "choice2")]
        return {"input_ids": [r["input_ids"] for r in rows],
                "token_type_ids": [r["token_type_ids"] for r in rows], "label": example.label}


register(CopaTask("copa", benchmark="superglue", folder="COPA", text_fields=("premise", "choice1", "choice2"),
                  labels=("0", "1"), metrics=("accuracy",), hub=("aps/super_glue", "copa")))
