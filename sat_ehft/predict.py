"""Predictions of a finished run's classifier on a dev or test split.

The classifier is the run's final stage with the weights of its best dev epoch (`weights="best"`: the final
stage's best.pt, config `save_best`) or of its last (`"last"`: `RUN/model` when it was saved, config
`save_model`, else the final stage's trained.pt), on the pretrained backbone. A run without best.pt (save_best
off, or trained before it existed) gives its last epoch's, and says so. It runs in the precision the run trained
in (DeepSpeed casts the whole module, so the run's own dev scores were computed in it) with the run's eval batch
size, so that the dev metrics equal the run's record of that epoch.

Two output formats:
- `jsonl`: one line per example, {"idx", "label" (the label name; the score for regression), "score" (the
  label's probability; the score for regression), "probabilities" (per label), "gold" (where known)};
- `leaderboard`: the file the GLUE or SuperGLUE server takes for this task (RTE.jsonl, MRPC.tsv, ...).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sat_ehft import metrics, objective
from sat_ehft.atomic import write_text
from sat_ehft.methods import get_method
from sat_ehft.pipeline import (BEST_WEIGHTS, check_saved_model, read_run, rebuild_stage_model, run_encoding, stage_done,
                              stage_origin)
from sat_ehft.tasks import DataError, encode_examples, get_task
from sat_ehft.precision import resolve_precision
from sat_ehft.runspec import WEIGHTS
from sat_ehft.trainer import collapsed, head_scores

MODEL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = ("jsonl", "leaderboard")


@dataclass
class Classifier:
    model: torch.nn.Module
    tokenizer: object
    spec: object  # the run's RunSpec
    source: Path  # RUN/model, or the final stage's trained.pt or best.pt
    config: dict  # the SAT model_config.json of the classifier, its head and PET mixins under "ehft_mixins"
    folder: Path  # the SAT folder its backbone came from (RUN/model, or the pretrained backbone's)
    weights: str  # which epoch's weights, in words: "the best epoch's (epoch 3)"


def run_spec(out):
    """The RunSpec of the run folder `out`, from its run.json."""
    if not (Path(out) / "run.json").is_file():
        raise FileNotFoundError(f"{Path(out) / 'run.json'}: missing; {out} is not a run folder (sat-ehft train --out)")
    return read_run(out)


def read_examples(spec, split, data_dir=None, hub=False):
    """The examples of `split`: from the hub, from `data_dir`, or from the run's own data (run.json's folder, or
    the hub). Cheap, so predict reads them before it loads the model; a file missing under run.json's folder says
    where that folder came from."""
    task = get_task(spec.task)
    if hub or data_dir:
        return task.read_split(None if hub else data_dir, split)
    try:
        return task.read_split(spec.data_dir, split)
    except DataError as err:
        raise DataError(f"{err} (DATA_DIR {spec.data_dir} is the one the run's run.json records; pass --data-dir "
                        "to read another)") from None


def load_classifier(out, weights="best"):
    """The finished run's final classifier with its best or last epoch's weights (see the module docstring), in
    eval mode on the CPU."""
    from sat_ehft.backbone import load_sat_folder
    from sat_ehft.convert import TOKENIZER_SUBDIR
    from sat_ehft.folders import load_model_tokenizer

    out = Path(out)
    spec = run_spec(out)
    final = get_method(spec.method).stages[-1]
    done = stage_done(out, final)
    if not done:
        raise ValueError(f"{out}: {final.name} has not finished; rerun the training command to finish it first")
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: expected best or last")
    saved, best = out / "model", out / final.name / BEST_WEIGHTS
    if weights == "best" and best.is_file():
        backbone, model, spec = rebuild_stage_model(out, final.name, BEST_WEIGHTS)
        tokenizer, source = backbone.load_tokenizer(), best
        chosen = f"the best epoch's (epoch {done['best']['epoch']})"
    elif saved.is_dir():
        backbone = load_sat_folder(saved)
        model, source = backbone.model.eval(), saved
        check_saved_model(saved, model, stage_origin(spec, final))
        model.unpad = spec.config.unpad
        # Folders saved before the tokenizer was copied beside the weights use the run's backbone's.
        tokenizer = load_model_tokenizer(saved if (saved / TOKENIZER_SUBDIR).is_dir() else spec.model)
    else:
        backbone, model, spec = rebuild_stage_model(out, final.name)
        tokenizer, source = backbone.load_tokenizer(), out / final.name / "trained.pt"
    if weights == "last" or best.is_file():
        chosen = chosen if source == best else f"the last epoch's (epoch {done['last']['epoch']})"
    else:
        chosen = (f"the last epoch's (epoch {done['last']['epoch']}; the run kept no {final.name}/{BEST_WEIGHTS}: "
                  "save_best off, or trained before it existed)")
    return Classifier(model.to(MODEL_DTYPES[resolve_precision(spec.config.precision)]), tokenizer, spec, source,
                      backbone.config, backbone.folder, chosen)


@dataclass
class Predictions:
    task: object
    examples: list
    predicted: torch.Tensor  # class indices, or scores for regression
    probabilities: torch.Tensor  # [examples, classes]; None for regression
    metrics: dict  # the task's metrics where every example has a label, else None

    @property
    def collapsed(self):
        """The one label every example got (regression: the one value, where the spread is under 1% of the
        gold labels'), or None: a classifier that does not tell examples apart."""
        if len(self.examples) < 2:
            return None
        if self.task.is_regression:
            gold = [e.label for e in self.examples]
            spread = self.metrics is not None and collapsed(self.predicted.numpy(), gold, self.task)
            return f"about {self.predicted.mean().item():.3f}" if spread else None
        labels = set(self.predicted.tolist())
        return f"'{self.task.labels[labels.pop()]}'" if len(labels) == 1 else None

    def rows(self):
        """One dict per example: idx, label (name, or score), score, probabilities, gold (where known)."""
        rows = []
        for index, example in enumerate(self.examples):
            value = self.predicted[index].item()
            if self.task.is_regression:
                row = {"idx": example.id, "label": value, "score": value}
            else:
                names = self.task.labels
                row = {"idx": example.id, "label": names[value], "score": self.probabilities[index, value].item(),
                       "probabilities": dict(zip(names, self.probabilities[index].tolist()))}
            if example.label is not None:
                row["gold"] = example.label if self.task.is_regression else self.task.labels[example.label]
            rows.append(row)
        return rows


def predict(classifier, split, data_dir=None, hub=False, device=None, examples=None):
    """Predictions of `classifier` on `examples`, or on `split` read as read_examples reads it."""
    spec, task = classifier.spec, get_task(classifier.spec.task)
    examples = read_examples(spec, split, data_dir, hub) if examples is None else examples
    features = encode_examples(task, examples, classifier.tokenizer, run_encoding(spec))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    scores = head_scores(classifier.model.to(device), features, spec.config.eval_batch_size,
                         classifier.tokenizer.pad_token_id, device)
    predicted = objective.predict(scores, task.objective)
    labelled = all(e.label is not None for e in examples)
    scored = metrics.compute(task.metrics, predicted.numpy(), [e.label for e in examples]) if labelled else None
    return Predictions(task, examples, predicted, objective.probabilities(scores, task.objective), scored)


def default_output(run, split, fmt):
    """RUN/predictions/SPLIT.jsonl (jsonl), or the folder RUN/leaderboard/SPLIT (leaderboard files)."""
    return Path(run) / "predictions" / f"{split}.jsonl" if fmt == "jsonl" else Path(run) / "leaderboard" / split


def leaderboard_file(task):
    """The file name the benchmark's server expects for `task`: RTE.jsonl, ..., MRPC.tsv, STS-B.tsv."""
    return f"{task.folder}.{'jsonl' if task.benchmark == 'superglue' else 'tsv'}"


def submission_value(task, row):
    """A prediction as the servers take it: label strings as they are, except class names that are numbers
    (MRPC, CoLA, COPA: 0/1), which are written as numbers; regression scores clipped to the label range."""
    if task.is_regression:
        low, high = task.label_range
        return min(max(row["label"], low), high)
    return int(row["label"]) if row["label"].isdigit() else row["label"]


def leaderboard_text(task, rows):
    """SuperGLUE: one {"idx", "label"} object a line. GLUE: a tab-separated `index  prediction` table."""
    if task.benchmark == "superglue":
        return "".join(json.dumps({"idx": row["idx"], "label": submission_value(task, row)}) + "\n" for row in rows)
    values = [submission_value(task, row) for row in rows]
    cells = [f"{value:.3f}" if task.is_regression else str(value) for value in values]
    return "index\tprediction\n" + "".join(f"{row['idx']}\t{cell}\n" for row, cell in zip(rows, cells))


def write_predictions(predictions, out, fmt):
    """Write `predictions` as `fmt`: the jsonl file `out`, or the leaderboard file inside the folder `out`.
    Returns the file written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {FORMATS}")
    rows = predictions.rows()
    if fmt == "jsonl":
        path = Path(out)
        if path.is_dir():
            raise IsADirectoryError(f"--out {out}: a folder; jsonl predictions go to a file (a folder takes "
                                    "--format leaderboard)")
        write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    else:
        path = Path(out) / leaderboard_file(predictions.task)
        write_text(path, leaderboard_text(predictions.task, rows))
    return path
