"""`sat-ehft export`: the way back to Hugging Face (bit-identical for an untrained backbone), and a finished
run's classifier reloaded by transformers alone with the same logits."""

import json

import pytest
import torch
from conftest import tiny_hf_model
from test_predict import official_subset

from sat_ehft.backbone import load_sat_folder
from sat_ehft.cli import main
from sat_ehft.config import Config
from sat_ehft.convert import (IGNORED_KEYS, convert_hf_folder, hf_state_dict, read_hf_origin,
                              read_hf_state_dict)
from sat_ehft.export import ExportError, export_run
from sat_ehft.pipeline import RunSpec, run, run_encoding
from sat_ehft.predict import load_classifier, predict
from sat_ehft.tasks import Encoding, encode_examples, get_task
from sat_ehft.trainer import head_scores

CONFIG = Config(epochs=2, batch_size=8, micro_batch_size=8, eval_batch_size=8, max_length=64, lr=1e-3, lora_r=2,
                prefix_len=3, stage1_lr={"bitfit": 5e-3, "lora": 5e-3, "prefix": 5e-2, "lp": 1e-2})


def hf_tensors(folder, kind):
    """The HF checkpoint's tensors as a backbone names them: no `roberta.`/`bert.` prefix, no buffers."""
    state = {k.removeprefix(f"{kind}."): v for k, v in read_hf_state_dict(folder).items()}
    return {k: v for k, v in state.items() if k not in IGNORED_KEYS}


@pytest.mark.parametrize("kind", ["roberta", "bert", "minilm"])
def test_hf_to_sat_to_hf_is_bit_identical(tmp_path, kind, minilm_dir):
    if kind == "minilm":
        source, kind = minilm_dir, "bert"
    else:
        source = tmp_path / "hf"
        tiny_hf_model(kind, type_vocab=1 if kind == "roberta" else 2).save_pretrained(source)
    original = hf_tensors(source, kind)
    backbone = load_sat_folder(convert_hf_folder(source, tmp_path / "sat"))
    origin, extras = read_hf_origin(backbone.folder)
    back = hf_state_dict(backbone.config, backbone.model.state_dict(), extras)
    assert sorted(back) == sorted(original) and any(k.startswith("pooler.") for k in back)
    for name, value in original.items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value), name
    assert origin == json.loads((source / "config.json").read_text())


def test_a_trained_roberta_position_table_unfolds_to_the_same_embedding_sums(tmp_path):
    tiny_hf_model("roberta", type_vocab=1).save_pretrained(tmp_path / "hf")
    backbone = load_sat_folder(convert_hf_folder(tmp_path / "hf", tmp_path / "sat"))
    _, extras = read_hf_origin(backbone.folder)
    state = backbone.model.state_dict()
    folded = state["transformer.position_embeddings.weight"]
    state["transformer.position_embeddings.weight"] = trained = folded.clone()
    trained[5:9] += 0.25  # rows 5..8 moved in training; the others are as converted
    back = hf_state_dict(backbone.config, state, extras)
    positions, token_type = back["embeddings.position_embeddings.weight"], back["embeddings.token_type_embeddings.weight"]
    assert torch.allclose(positions + token_type[0], trained, atol=1e-6)
    untouched = [row for row in range(len(trained)) if not 5 <= row < 9]
    assert torch.equal(positions[untouched], extras["embeddings.position_embeddings.weight"][untouched])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data, minilm_dir, tiny_roberta):
    """Finished runs on all-MiniLM-L6-v2 (every pooling, choices, regression, merged LoRA) and a tiny RoBERTa."""
    root = tmp_path_factory.mktemp("export")
    folders = {}
    for name, task, method, model in (("rte", "rte", "ehft-lora-reserve", minilm_dir), ("wic", "wic", "ft", minilm_dir),
                                      ("copa", "copa", "ehft-bitfit", minilm_dir), ("sts-b", "sts-b", "ft", minilm_dir),
                                      ("roberta-cb", "cb", "ehft-bitfit", tiny_roberta)):
        data = official_subset(root / "data", shared_data, get_task(task), rows=16)
        run(RunSpec(task, method, str(model), str(data), 4, CONFIG), root / name, log=lambda line: None)
        folders[name] = root / name
    return folders


def hf_logits(folder, task, examples):
    """Logits of the exported folder from transformers alone: its own tokenizer, its own modeling code."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    features = encode_examples(task, examples, tokenizer, Encoding(64))
    from sat_ehft.batching import collate, model_inputs

    with torch.no_grad():
        return model(**model_inputs(collate(features, tokenizer.pad_token_id))).logits


@pytest.mark.parametrize("name", ["rte", "wic", "copa", "sts-b", "roberta-cb"])
def test_exported_classifier_gives_our_logits_through_transformers_alone(runs, name, tmp_path, capsys):
    assert main(["export", str(runs[name]), str(tmp_path / "hf")]) == 0
    assert "reloaded and checked" in capsys.readouterr().out
    classifier = load_classifier(runs[name])
    task = get_task(classifier.spec.task)
    examples = task.read(runs[name].parent / "data", "dev")
    features = encode_examples(task, examples, classifier.tokenizer, Encoding(64))
    ours = head_scores(classifier.model, features, 8, classifier.tokenizer.pad_token_id, "cpu")
    theirs = hf_logits(tmp_path / "hf", task, examples)
    if task.objective == "binary":  # our one logit l is exported as the two logits [0, l]
        assert theirs.shape == (len(examples), 2) and not theirs[:, 0].any()
        theirs = theirs[:, 1:]
    assert theirs.shape == ours.shape == (len(examples), task.choices if task.choices > 1 else task.head_outputs)
    assert (theirs - ours).abs().max() < 1e-4
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["ehft_head"]["pooling"] == task.pooling and config["ehft_head"]["objective"] == task.objective
    assert config["problem_type"] == ("regression" if task.is_regression else "single_label_classification")


@pytest.mark.parametrize("name", ["rte", "roberta-cb"])
def test_an_export_reads_right_the_three_ways_hugging_face_users_read_it(runs, name, tmp_path):
    """softmax with id2label, argmax with id2label, and the text-classification pipeline each give
    `sat-ehft predict`'s labels and probabilities on the dev pairs, for a binary task (RTE: one logit trained,
    exported as [0, l]; a one-logit export read as label 0 with probability 1.0, always) and a 3-class one (CB)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    export_run(runs[name], tmp_path / "hf")
    classifier = load_classifier(runs[name])
    predictions = predict(classifier, "dev")
    rows = predictions.rows()
    fields, truncation = predictions.task.input_fields(run_encoding(classifier.spec))
    pairs = [[e.fields[field] for field in fields] for e in predictions.examples]
    if predictions.task.objective == "binary":  # a one-logit export's softmax read 1.0 for every example
        assert all(row["score"] < 0.99 for row in rows)

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**tokenizer(*zip(*pairs), truncation=truncation, max_length=64, padding=True,
                                   return_tensors="pt")).logits
    names = model.config.id2label
    by_softmax = [{names[i]: p for i, p in enumerate(row)} for row in logits.softmax(-1).tolist()]
    assert all(abs(read[label] - p) < 1e-5 for read, row in zip(by_softmax, rows) for label, p in row["probabilities"].items())
    assert [names[i] for i in logits.argmax(-1).tolist()] == [row["label"] for row in rows]

    classify = pipeline("text-classification", model=str(tmp_path / "hf"), trust_remote_code=True)
    read = classify([{"text": first, "text_pair": second} for first, second in pairs], truncation=truncation,
                    max_length=64)
    assert [r["label"] for r in read] == [row["label"] for row in rows]
    assert all(abs(r["score"] - row["score"]) < 1e-5 for r, row in zip(read, rows))


@pytest.mark.parametrize("name", ["rte", "sts-b", "roberta-cb"])
def test_the_model_cards_snippet_run_as_written_gives_predicts_scores(runs, name, tmp_path, monkeypatch):
    """The card's code, run in the exported folder with a dev example's fields put in its placeholders, gives
    `sat-ehft predict`'s probabilities (STS-B: its score): the fields in training order, truncated as in
    training. The saved tokenizer keeps nothing of its last call (truncation, padding, max_length)."""
    export_run(runs[name], tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    predictions = predict(load_classifier(runs[name]), "dev")
    fields, _ = predictions.task.input_fields(run_encoding(load_classifier(runs[name]).spec))
    longest = max(predictions.examples, key=lambda e: sum(len(e.fields[f]) for f in fields))  # truncated if any is
    placeholder = '"..."'
    placeholders = f"{', '.join(fields)} = {', '.join(placeholder for _ in fields)}"
    assert placeholders in snippet
    snippet = snippet.replace(placeholders, f"{', '.join(fields)} = {', '.join(repr(longest.fields[f]) for f in fields)}")
    monkeypatch.chdir(tmp_path / "hf")
    namespace = {}
    exec(snippet, namespace)
    row = predictions.rows()[predictions.examples.index(longest)]
    if predictions.task.is_regression:
        assert namespace["score"].item() == pytest.approx(row["score"], abs=1e-5)
    else:
        assert namespace["probabilities"][0].tolist() == pytest.approx(list(row["probabilities"].values()), abs=1e-5)
    saved = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert not {"max_length", "truncation_strategy", "local_files_only"} & set(saved)
    assert saved["model_max_length"] == 64  # the length the classifier was trained on
    backend = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    assert backend["truncation"] is None and backend["padding"] is None


def test_model_card_names_the_run_and_its_scores(runs, tmp_path):
    export_run(runs["rte"], tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    result = json.loads((runs["rte"] / "result.json").read_text())
    recorded = json.loads((runs["rte"] / "run.json").read_text())
    assert "# rte classifier: ehft-lora-reserve, seed 4" in card
    assert f"best {result['best']:.4f} (epoch {result['best_epoch']})" in card and f"last {result['last']:.4f}" in card
    assert f"| backbone | {recorded['model']} |" in card and f"| data | {recorded['data_dir']} |" in card
    assert f"transformers {recorded['versions']['transformers']}" in card and "sat-ehft 0.1.0" in card
    assert "| `lora_r` | `2` |" in card


def test_an_export_that_would_not_reload_exactly_is_not_written(runs, tmp_path, monkeypatch):
    import sat_ehft.export

    real = sat_ehft.export.exported_weights
    monkeypatch.setattr(sat_ehft.export, "exported_weights",
                        lambda classifier, extras: {k: v for k, v in real(classifier, extras).items()
                                                    if k != "head.out.bias"})
    with pytest.raises(ExportError, match="does not reload tensor for tensor"):
        export_run(runs["sts-b"], tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf*"))  # nor its temporary folder


@pytest.mark.parametrize("shift, refused", [(1e-2, True), (2e-5, False)])  # fp32 tolerance: 1e-4
def test_an_export_whose_logits_drift_past_the_tolerance_is_not_written(runs, tmp_path, monkeypatch, shift, refused):
    """Every tensor reloads, but the head's output bias is off by `shift`: the logits differ by exactly that."""
    import sat_ehft.export

    real = sat_ehft.export.exported_weights

    def shifted(classifier, extras):
        weights = real(classifier, extras)
        return {**weights, "head.out.bias": weights["head.out.bias"] + shift}

    monkeypatch.setattr(sat_ehft.export, "exported_weights", shifted)
    if refused:
        with pytest.raises(ExportError, match=r"logits differ from sat-ehft's by 0\.01 \(over 0\.0001\)"):
            export_run(runs["sts-b"], tmp_path / "hf")
        assert not (tmp_path / "hf").exists()
    else:
        assert export_run(runs["sts-b"], tmp_path / "hf")[0] == pytest.approx(shift, rel=0.05)


def test_prefix_runs_and_existing_folders_are_refused(tmp_path, tiny_bert, rte_dir, runs):
    run(RunSpec("rte", "prefix", str(tiny_bert), str(rte_dir), 1, Config(**{**CONFIG.__dict__, "epochs": 1})),
        tmp_path / "prefix", log=lambda line: None)
    with pytest.raises(ValueError, match="the classifier has prefix, which Hugging Face's encoders cannot express"):
        export_run(tmp_path / "prefix", tmp_path / "hf")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export_run(runs["sts-b"], tmp_path / "taken")
