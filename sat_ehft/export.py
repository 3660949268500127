"""`sat-ehft export RUN OUT`: a finished run's classifier as a Hugging Face folder.

OUT holds config.json, model.safetensors (the backbone in Hugging Face's names under `roberta.`/`bert.`, the
head under `head.`), modeling_ehft.py (sat_ehft.hf_modeling: torch and transformers only), the tokenizer and a
model card. `AutoModelForSequenceClassification.from_pretrained(OUT, trust_remote_code=True)` rebuilds it; its
model_type (`ehft-roberta`/`ehft-bert`) makes transformers refuse to load it without that flag rather than
put a fresh, untrained head on the backbone. A final stage's LoRA is merged into the weights; Mixout changes
nothing at evaluation. Prefix-tuning's prefixes have no place in Hugging Face's encoders: such runs are refused.

The folder is checked before it is put in place: it must reload with no missing, unexpected or mismatched
tensor, and give the same logits as our classifier on sample inputs; otherwise nothing is written.
"""

import json
import shutil
from importlib.metadata import version
from pathlib import Path

import torch

from sat_ehft import hf_modeling
from sat_ehft.atomic import atomic_dir
from sat_ehft.convert import hf_config_dict, hf_kind, hf_state_dict, read_hf_origin
from sat_ehft.mixins import HEAD_NAME
from sat_ehft.mixins.lora import merged_state
from sat_ehft.pipeline import run_encoding
from sat_ehft.predict import load_classifier
from sat_ehft.tasks import get_task
from sat_ehft.precision import resolve_precision

# Mixins that leave the classifier a plain encoder plus the head once exported (LoRA: merged).
EXPORTABLE_MIXINS = (HEAD_NAME, "lora", "mixout")
# Largest |logit difference| accepted between our classifier and the reloaded folder, by training precision.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}
ORIGIN_KEYS_DROPPED = ("architectures", "auto_map", "_name_or_path", "transformers_version", "torch_dtype", "dtype")
# What a tokenizer's tokenizer_config.json keeps of how it was last called or loaded, not of the tokenizer.
TOKENIZER_CALL_STATE = ("max_length", "truncation_strategy", "stride", "pad_to_multiple_of", "local_files_only",
                        "is_local")


class ExportError(RuntimeError):
    """The exported folder does not reload as the same classifier."""


def exported_weights(classifier, extras):
    """{Hugging Face name: tensor} of the classifier: the encoder under its base-model prefix, the head as `head.`;
    `extras` are the tensors its backbone's conversion kept (see read_hf_origin)."""
    specs = classifier.config["ehft_mixins"]
    unsupported = sorted(set(specs) - set(EXPORTABLE_MIXINS))
    if unsupported:
        raise ValueError(f"{classifier.source}: the classifier has {', '.join(unsupported)}, which Hugging Face's "
                         "encoders cannot express; export works for runs whose final stage has only "
                         f"{', '.join(EXPORTABLE_MIXINS)} (every EH-FT method's Stage 2)")
    state = classifier.model.state_dict()
    if "lora" in specs:
        state = merged_state(state, specs["lora"])
    kind = hf_kind(classifier.config)
    weights = {f"{kind}.{name}": value for name, value in hf_state_dict(classifier.config, state, extras).items()}
    head = f"mixins.{HEAD_NAME}."
    weights.update({f"head.{k[len(head):]}": v.detach().cpu().clone() for k, v in state.items() if k.startswith(head)})
    return weights


def exported_config(classifier, origin, weights):
    """config.json: the backbone's Hugging Face config (`origin`, or rebuilt) plus the head, the labels and where
    the code lives."""
    kind, task = hf_kind(classifier.config), get_task(classifier.spec.task)
    base = {k: v for k, v in hf_config_dict(classifier.config, origin).items() if k not in ORIGIN_KEYS_DROPPED}
    head = classifier.model.get_mixin(HEAD_NAME)
    names = list(task.labels) if task.labels else ["score"]
    prefix, model_class = f"Ehft{kind.capitalize()}", f"Ehft{kind.capitalize()}ForSequenceClassification"
    return {**base, "model_type": f"ehft-{kind}", "architectures": [model_class],
            "auto_map": {"AutoConfig": f"modeling_ehft.{prefix}Config",
                         "AutoModelForSequenceClassification": f"modeling_ehft.{model_class}"},
            "ehft_head": {"pooling": head.pooling, "choices": head.choices, "num_outputs": head.out.out_features,
                          "inner_size": head.dense.out_features, "objective": task.objective,
                          "pooler": any(name.startswith(f"{kind}.pooler.") for name in weights)},
            "id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)},
            "problem_type": "regression" if task.is_regression else "single_label_classification",
            "ehft_run": {"task": task.name, "method": classifier.spec.method, "seed": classifier.spec.seed}}


def sample_inputs(classifier, seed=0):
    """A padded batch of random token ids (no padding id inside the text, which RoBERTa would read as padding),
    with spans for WiC and two rows per example for COPA: what both classifiers are compared on."""
    task, pad_id = get_task(classifier.spec.task), classifier.tokenizer.pad_token_id
    lengths = [12, 9, 12, 7]
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(pad_id + 1, classifier.config["vocab_size"], (len(lengths), max(lengths)), generator=generator)
    mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    inputs = {"input_ids": ids.masked_fill(mask == 0, pad_id), "attention_mask": mask,
              "token_type_ids": torch.zeros_like(ids)}
    if task.pooling == "spans":
        inputs["spans"] = torch.tensor([[[1, 3], [4, 6]]] * len(lengths))
    return inputs


def check_export(folder, classifier):
    """Reload `folder` as transformers would and compare its logits with our classifier's; returns the largest
    |difference|. Raises ExportError on any missing/unexpected/mismatched tensor or a difference over tolerance."""
    from transformers import AutoModelForSequenceClassification

    reloaded, info = AutoModelForSequenceClassification.from_pretrained(
        str(folder), trust_remote_code=True, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value and key != "error_msgs"}
    if problems or info.get("error_msgs"):
        raise ExportError(f"{folder}: the exported classifier does not reload tensor for tensor: {problems or info}")
    dtype = next(classifier.model.parameters()).dtype
    inputs = sample_inputs(classifier)
    with torch.no_grad():
        ours = classifier.model.cpu().eval().encode(**inputs).float()
        theirs = reloaded.to(dtype).eval()(**inputs).logits.float()
    if get_task(classifier.spec.task).objective == "binary":
        ours = hf_modeling.two_label_logits(ours)
    difference = (ours - theirs).abs().max().item()
    tolerance = TOLERANCE[resolve_precision(classifier.spec.config.precision)]
    if not difference <= tolerance:
        raise ExportError(f"{folder}: the reloaded classifier's logits differ from sat-ehft's by {difference:.3g} "
                          f"(over {tolerance})")
    return difference


def head_description(task):
    """What the head reads and what its logits mean, for the model card."""
    reads = ("the target word's spans (`spans` [batch, 2, 2]: first token and last token + 1 of the word in each "
             "sentence) and the first token" if task.pooling == "spans" else "the first token")
    if task.choices > 1:
        reads += f"; each example is {task.choices} rows, one per choice, and the logits are [batch, {task.choices}]"
    if task.objective == "binary":
        meaning = (f"one logit l, returned as the two logits [0, l]: softmax gives P({task.labels[1]}) = sigmoid(l), "
                   "argmax the label, as `id2label` and the text-classification pipeline read them")
    elif task.choices > 1:
        meaning = "one logit per choice, softmax over the choices"
    else:
        meaning = "the score itself" if task.is_regression else "one logit per label: " + ", ".join(task.labels)
    return f"The head reads {reads}. Objective: {task.objective} ({meaning})."


def usage(task, encoding):
    """The card's snippet: load, then encode the fields in the order the run trained with, truncated as it was."""
    fields, truncation = task.input_fields(encoding)
    if task.objective == "regression":
        read = "score = model(**inputs).logits[0, 0]  # the predicted similarity"
    else:
        read = f"probabilities = model(**inputs).logits.softmax(-1)  # {', '.join(task.labels)} (config id2label)"
    special = ("" if task.pooling == "cls" and task.choices == 1 else
               f"# {task.name} examples become inputs as sat_ehft.tasks encodes them (see below); the call is theirs\n")
    return f"""```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer

folder = "."  # this folder
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # config.json names modeling_ehft.py
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
{special}{", ".join(fields)} = {", ".join('"..."' for _ in fields)}  # in the order the classifier was trained with
inputs = tokenizer({", ".join(fields)}, truncation="{truncation}", max_length={encoding.max_length}, return_tensors="pt")
{read}
```"""


def clean_tokenizer(folder, max_length):
    """Drop what training left in the saved tokenizer (the last call's truncation and padding, its max_length,
    local_files_only) so that plain calls behave as on a fresh tokenizer; model_max_length becomes the length the
    classifier was trained on, so `truncation=True` cuts there."""
    config_path, backend_path = folder / "tokenizer_config.json", folder / "tokenizer.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config = {key: value for key, value in config.items() if key not in TOKENIZER_CALL_STATE}
    config_path.write_text(json.dumps({**config, "model_max_length": max_length}, indent=2) + "\n", encoding="utf-8")
    if backend_path.is_file():
        backend = json.loads(backend_path.read_text(encoding="utf-8"))
        backend_path.write_text(json.dumps({**backend, "truncation": None, "padding": None}, ensure_ascii=False),
                                encoding="utf-8")


def model_card(classifier, run, difference):
    """README.md: what was trained, on what, how, the dev scores, the versions, and how to load it."""
    spec, run = classifier.spec, Path(run)
    result = json.loads((run / "result.json").read_text(encoding="utf-8"))
    recorded = json.loads((run / "run.json").read_text(encoding="utf-8"))
    task = get_task(spec.task)
    config_rows = "".join(f"| `{key}` | `{json.dumps(value)}` |\n" for key, value in recorded["config"].items())
    stage_rows = "".join(f"| {name} | {done['epochs']} | {done['lr']:g} | {done['best'][done['metric']]:.4f} "
                         f"(epoch {done['best']['epoch']}) | {done['last'][done['metric']]:.4f} |\n"
                         for name, done in result["stages"].items())
    versions = {**recorded.get("versions", {}), "sat-ehft": version("sat-ehft")}
    return f"""---
library_name: transformers
tags: [sat-ehft, eh-ft, text-classification]
---
# {task.name} classifier: {spec.method}, seed {spec.seed}

Finetuned with sat-ehft (EH-FT, *Parameter-Efficient Tuning Makes a Good Classification Head*, EMNLP 2022, as a
SwissArmyTransformer plugin) and exported by `sat-ehft export`.

{usage(task, run_encoding(spec))}

{head_description(task)}

## Training

| | |
|---|---|
| task | {task.name} ({task.benchmark}/{task.folder}) |
| data | {spec.data_dir or "the Hugging Face hub: " + "/".join(task.hub)} |
| backbone | {spec.model} |
| method | {spec.method} |
| seed | {spec.seed} |

Dev {result["metric"]} of the final stage: best {result["best"]:.4f} (epoch {result["best_epoch"]}),
last {result["last"]:.4f}; these weights are {classifier.weights}.

| stage | epochs | peak LR | best | last |
|---|---|---|---|---|
{stage_rows}
Config (the recipe; `sat-ehft train --set KEY=VALUE` changes one):

| key | value |
|---|---|
{config_rows}
Versions: {", ".join(f"{name} {value}" for name, value in versions.items())}.

Checked on export: the folder reloads with no missing or unexpected tensor, and its logits match sat-ehft's
classifier within {difference:.2g} on sample inputs.
"""


def export_run(run, out, weights="best"):
    """Write the run's final classifier, with its best or last epoch's weights, to the new folder `out` (see the
    module docstring); returns the check's largest logit difference and which weights, in words."""
    classifier = load_classifier(run, weights)
    origin, extras = read_hf_origin(classifier.folder)
    weights = exported_weights(classifier, extras)
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = exported_config(classifier, origin, weights)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        shutil.copy2(hf_modeling.__file__, tmp / "modeling_ehft.py")
        classifier.tokenizer.save_pretrained(str(tmp))
        clean_tokenizer(tmp, run_encoding(classifier.spec).max_length)
        difference = check_export(tmp, classifier)
        (tmp / "README.md").write_text(model_card(classifier, run, difference), encoding="utf-8")
    return difference, classifier.weights
