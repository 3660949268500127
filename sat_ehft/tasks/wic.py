"""WiC: the sentence pair plus the token spans of the target word, found from its character offsets."""

from sat_ehft.tasks.base import DataError, Task, ids_and_types
from sat_ehft.tasks.registry import register

OFFSETS = (("start1", "end1"), ("start2", "end2"))


class WicTask(Task):
    extra_fields = ("start1", "end1", "start2", "end2")
    pooling = "spans"

    def check_record(self, record, source):
        super().check_record(record, source)
        for sentence, (start, end) in zip(self.text_fields, OFFSETS):
            a, b, text = record[start], record[end], record[sentence]
            if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= len(text)):
                raise DataError(f"{source}: {start}/{end} = {a!r}/{b!r} is not a character span of "
                                f"{sentence} ({len(text)} characters)")

    def encode(self, example, tokenizer, encoding):
        """Adds 'spans': [[first, last + 1] of the word in sentence 1, the same in sentence 2]."""
        fields, truncation = self.input_fields(encoding)  # WiC keeps its order: sentence 1 is sequence 0
        tokens = tokenizer(*[example.fields[f] for f in fields], truncation=truncation,
                           max_length=encoding.max_length, return_offsets_mapping=True)
        sequence_ids = tokens.sequence_ids()
        spans = []
        for sequence, (start, end) in enumerate(OFFSETS):
            a, b = example.fields[start], example.fields[end]
            word = [i for i, (s, e) in enumerate(tokens["offset_mapping"])
                    if sequence_ids[i] == sequence and s < b and e > a]
            if not word:
                raise DataError(f"{example.source}: the target word of sentence {sequence + 1} was "
                                f"truncated away at max_length {encoding.max_length}")
            spans.append([word[0], word[-1] + 1])
        return {**ids_and_types(tokens), "spans": spans, "label": example.label}


register(WicTask("wic", benchmark="superglue", folder="WiC", text_fields=("sentence1", "sentence2"),
                 labels=("false", "true"), metrics=("accuracy",), hub=("aps/super_glue", "wic")))
