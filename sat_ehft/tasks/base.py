"""What every task shares: reading the official files, label parsing, encoding, error messages.

A task is a `Task` (or subclass) instance registered in `sat_ehft.tasks`. It knows its files, its
inputs and its metric, and nothing about methods or training.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from sat_ehft.batching import sequences
from sat_ehft.tokenizer import check_unk_rate

SPLITS = ("train", "dev", "test")  # the official test splits carry no labels
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
HUB_NO_LABEL = -1  # the hub's label on test rows
UNK_CHECK_CHUNK = 256  # examples per UNK-rate check: one encoding "batch"


class DataError(ValueError):
    """Bad or missing data; the message names the file (and line) and what was expected."""


@dataclass(frozen=True)
class Example:
    fields: dict  # the task's input fields, named as in SuperGLUE/GLUE
    label: object  # class index (int) or regression target (float); None where the file has none (test)
    source: str  # "file:line", for messages about this example
    id: int  # the official example id (SuperGLUE idx, GLUE index), else the row number from 0


def read_jsonl(path):
    """Yield (line number, object) for each line of an official SuperGLUE jsonl file."""
    lines = _read_lines(path)
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: malformed JSON ({err.msg}); expected one JSON object a line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, found {type(record).__name__}")
        yield number, record


def read_tsv(path, columns, header, optional=None):
    """Yield (line number, {field: text}) from an official GLUE tsv file.

    `columns` maps our field names to header names (when `header`) or to column indices (headerless,
    as CoLA); `optional` maps fields to header names that are read when the header has them. Fields are
    split on tabs only: GLUE text holds quotes that csv quoting would eat.
    """
    lines = _read_lines(path)
    start = 1
    if header:
        names = lines[0].split("\t")
        absent = [c for c in columns.values() if c not in names]
        if absent:
            raise DataError(f"{path}:1: header lacks column(s) {absent}; found {names}")
        present = {field: name for field, name in (optional or {}).items() if name in names}
        index = {field: names.index(name) for field, name in {**columns, **present}.items()}
        width, lines, start = len(names), lines[1:], 2
        if not lines:
            raise DataError(f"{path}: has a header but no rows")
    else:
        index, width = dict(columns), max(columns.values()) + 1
    for number, line in enumerate(lines, start=start):
        cells = line.split("\t")
        if len(cells) != width:
            raise DataError(f"{path}:{number}: expected {width} tab-separated fields, found {len(cells)}")
        yield number, {field: cells[i] for field, i in index.items()}


def _read_lines(path):
    """The file's lines, split on newlines only: str.splitlines would also split on U+2028/U+2029 and other
    separators that JSON strings and GLUE text may hold. Trailing blank lines are dropped; a blank line inside
    is an error, as is a byte that is not UTF-8 (the line is named)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # the official MRPC files start with a byte-order mark
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: byte 0x{data[err.start]:02x} is not UTF-8 ({err.reason}); "
                        "expected a UTF-8 text file") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path}: empty file")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(f"{path}:{number}: empty line")
    return lines


@dataclass(frozen=True)
class Encoding:
    """How examples become token ids, besides the task and the tokenizer (the config keys of the same names)."""

    max_length: int
    pair_input: str = "standard"  # 'original': the original code's segment order, only the first one truncated

    @classmethod
    def of(cls, config):
        return cls(config.max_length, config.pair_input)


class Task:
    """A sentence or sentence-pair task: one sequence per example, classified or regressed.

    Subclasses change `encode` (COPA: two sequences; WiC: word spans), `check_record` and
    `extra_fields`.
    """

    def __init__(self, name, *, benchmark, folder, text_fields, labels, metrics, hub,
                 truncation="longest_first", tsv_columns=None, tsv_header=True, test_tsv_columns=None,
                 label_range=None, original_order=None, original_metric=None):
        self.name = name
        self.benchmark = benchmark  # "superglue" (jsonl) or "glue" (tsv)
        self.folder = folder  # e.g. "RTE": files live in DATA_DIR/<benchmark>/<folder>/
        self.text_fields = text_fields  # the one or two fields that make the model's input
        self.labels = labels  # official label strings in class-index order; None = regression
        self.metrics = metrics  # metric names; the first one selects the best epoch
        self.hub = hub  # datasets.load_dataset arguments, e.g. ("aps/super_glue", "rte")
        self.truncation = truncation  # tokenizer truncation strategy for too-long pairs
        self.tsv_columns = tsv_columns  # GLUE: field -> header name (or column index)
        self.tsv_header = tsv_header
        self.test_tsv_columns = test_tsv_columns  # GLUE test files laid out unlike train/dev (CoLA's has a header)
        self.label_range = label_range  # regression: the (low, high) a target must lie in
        self.original_order = original_order  # the pair in the original code's order, where it differs
        # the metric the paper's numbers most probably are (the original code logged several), where its text
        # names another: config best_metric 'original' selects and reports it
        self.original_metric = original_metric or metrics[0]

    @property
    def is_regression(self):
        return self.labels is None

    @property
    def num_classes(self):
        return 1 if self.is_regression else len(self.labels)

    @property
    def objective(self):
        """How scores become a loss and predictions (see sat_ehft.objective)."""
        if self.is_regression:
            return "regression"
        if self.choices > 1:
            return "choice"
        return "binary" if self.num_classes == 2 else "multiclass"

    @property
    def head_outputs(self):
        """Scores per sequence: one for regression, binary (a single logit, as the original code) and choices."""
        return self.num_classes if self.objective == "multiclass" else 1

    extra_fields = ()  # fields a subclass needs beyond the text ones
    pooling = "cls"  # what the head reads: the first token, or (WiC) the target-word spans
    choices = 1  # sequences scored against each other per example (COPA: 2)

    @property
    def required_fields(self):
        return (*self.text_fields, *self.extra_fields)

    def file(self, data_dir, split):
        if split not in SPLITS:
            raise DataError(f"task {self.name} has no split '{split}'; known: {', '.join(SPLITS)}")
        suffix = "jsonl" if self.benchmark == "superglue" else "tsv"
        name = {"train": "train", "dev": "val" if self.benchmark == "superglue" else "dev", "test": "test"}[split]
        return Path(data_dir) / self.benchmark / self.folder / f"{name}.{suffix}"

    def read(self, data_dir, split):
        """The examples of `split` from the official files under `data_dir`."""
        path = self.file(data_dir, split)
        if not path.is_file():
            raise DataError(f"{path}: missing; expected the official {self.folder} {split} file "
                            f"laid out as DATA_DIR/{self.benchmark}/{self.folder}/{path.name}")
        if self.benchmark == "superglue":
            records = read_jsonl(path)
        else:
            records = read_tsv(path, *self.tsv_layout(split))
        return [self.example(record, f"{path}:{number}", row, labelled=split != "test")
                for row, (number, record) in enumerate(records)]

    def tsv_layout(self, split):
        """(columns, header, optional columns) of this task's GLUE file for `split`: test files have no label
        column (a label column, if there, is still read), and the `index` column is read where there is one."""
        if split == "test" and self.test_tsv_columns is not None:
            columns, header = dict(self.test_tsv_columns), True
        else:
            columns, header = dict(self.tsv_columns), self.tsv_header
        optional = {"idx": "index"}
        if split == "test" and "label" in columns:
            optional["label"] = columns.pop("label")
        return columns, header, optional

    def read_split(self, data_dir, split):
        """The examples of `split`: from the official files under `data_dir`, or from the hub when it is None."""
        return self.read(data_dir, split) if data_dir else self.read_hub(split)

    def read_hub(self, split):
        """The examples of `split` from the Hugging Face hub (online only)."""
        from sat_ehft.hub import require_hub

        if split not in SPLITS:
            raise DataError(f"task {self.name} has no split '{split}'; known: {', '.join(SPLITS)}")
        require_hub(f"dataset {'/'.join(self.hub)}", "Pass --data-dir with the official files instead.")
        import datasets

        rows = datasets.load_dataset(*self.hub, split=HUB_SPLITS[split])
        examples = []
        for number, row in enumerate(rows):
            record = {**row, "label": self.hub_label(row["label"])}
            examples.append(self.example(record, f"hub {'/'.join(self.hub)}[{split}]#{number + 1}", number,
                                         labelled=split != "test"))
        return examples

    def hub_label(self, raw):
        """The official label of a hub row: the hub stores class indices in the order of self.labels, and -1
        where there is no label (test rows)."""
        if raw == HUB_NO_LABEL:
            return None
        return raw if self.is_regression else self.labels[raw]

    def example(self, record, source, row, labelled=True):
        """The Example of one record; `row` (from 0) is its id when the record has no idx. Unless `labelled`
        (the test split), the label may be absent."""
        needed = (*self.required_fields, "label") if labelled else self.required_fields
        for field in needed:
            if field not in record or record[field] is None:
                raise DataError(f"{source}: missing field '{field}'")
        self.check_record(record, source)
        label = record.get("label")
        return Example(fields={f: record[f] for f in self.required_fields}, source=source,
                       label=None if label is None else self.parse_label(label, source),
                       id=self.parse_id(record.get("idx", row), source))

    @staticmethod
    def parse_id(raw, source):
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise DataError(f"{source}: idx/index {raw!r} is not an integer") from None

    def check_record(self, record, source):
        for field in self.text_fields:
            if not isinstance(record[field], str):
                raise DataError(f"{source}: field '{field}' should be text, found {record[field]!r}")

    def parse_label(self, raw, source):
        if self.is_regression:
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise DataError(f"{source}: label {raw!r} is not a number") from None
            low, high = self.label_range or (float("-inf"), float("inf"))
            if not low <= value <= high:
                raise DataError(f"{source}: label {raw!r} is outside the range [{low}, {high}]")
            return value
        text = raw if isinstance(raw, str) else json.dumps(raw)  # JSON true/1 -> "true"/"1"
        if text not in self.labels:
            raise DataError(f"{source}: unknown label {raw!r}; expected one of {list(self.labels)}")
        return self.labels.index(text)

    def encoding_settings(self):
        """What, besides the text, the tokenizer and the Encoding, decides this task's encoded examples (a
        subclass with settings of its own adds them): part of the key of the encoded-data cache."""
        return {"task": self.name, "class": type(self).__name__, "text_fields": self.text_fields,
                "labels": self.labels, "truncation": self.truncation, "original_order": self.original_order}

    def input_fields(self, encoding):
        """(the text fields in the order they enter the model, the truncation strategy) under `encoding`: the
        original code put BoolQ's passage and QNLI's sentence first and truncated only the first segment."""
        if encoding.pair_input == "original" and len(self.text_fields) == 2:
            return self.original_order or self.text_fields, "only_first"
        return self.text_fields, self.truncation

    def encode(self, example, tokenizer, encoding):
        """Token ids for the model: {'input_ids', 'token_type_ids', 'label'} (lists of ints)."""
        fields, truncation = self.input_fields(encoding)
        tokens = tokenizer(*[example.fields[f] for f in fields], truncation=truncation, max_length=encoding.max_length)
        return {**ids_and_types(tokens), "label": example.label}

    def lengths(self, feature):
        """Token counts of one encoded example (one per sequence: COPA has two)."""
        return [len(ids) for ids in sequences(feature["input_ids"])]


def ids_and_types(encoding):
    """{'input_ids', 'token_type_ids'} of one tokenizer encoding (RoBERTa's has no token types)."""
    ids = encoding["input_ids"]
    return {"input_ids": ids, "token_type_ids": encoding.get("token_type_ids") or [0] * len(ids)}


def encode_examples(task, examples, tokenizer, encoding):
    """Encode `examples` as `encoding` (an Encoding) says, checking the UNK rate chunk by chunk so that a wrong
    vocabulary fails loudly."""
    features = [task.encode(example, tokenizer, encoding) for example in examples]
    for start in range(0, len(features), UNK_CHECK_CHUNK):
        chunk = features[start:start + UNK_CHECK_CHUNK]
        ids = [seq for f in chunk for seq in sequences(f["input_ids"])]
        check_unk_rate(ids, tokenizer.unk_token_id, f"{task.name}, examples from {examples[start].source}")
    return features


def selection_metric(task, config):
    """The metric that picks the best epoch: config.best_metric; '' the task's first (the paper's text's);
    'original' the one the paper's numbers most probably are (MRPC: accuracy, see Task.original_metric)."""
    if config.best_metric == "original":
        return task.original_metric
    if config.best_metric and config.best_metric not in task.metrics:
        raise ValueError(f"best_metric={config.best_metric!r}: task {task.name} reports {', '.join(task.metrics)} "
                         "(or 'original')")
    return config.best_metric or task.metrics[0]
