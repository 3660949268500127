"""`sat-ehft predict`: a finished run's classifier on dev (its metrics equal the run's) and on label-less test
files, written as jsonl or as the GLUE/SuperGLUE servers' files."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from sat_ehft.batching import collate, model_inputs
from sat_ehft.cli import main
from sat_ehft.config import Config
from sat_ehft.pipeline import RunSpec, run
from sat_ehft.predict import Predictions, load_classifier, predict, write_predictions
from sat_ehft.runspec import described
from sat_ehft.tasks import get_task

CONFIG = Config(epochs=2, batch_size=8, micro_batch_size=8, eval_batch_size=5, max_length=64, lr=1e-3, lora_r=2,
                prefix_len=3, stage1_lr={"bitfit": 5e-3, "lora": 5e-3, "prefix": 5e-2, "lp": 1e-2})
# (task, method, config changes): every objective, pooling and final-stage mixin, both classifier sources.
RUNS = [("rte", "ehft-bitfit", {}), ("cb", "ft", {"save_model": True}), ("copa", "ehft-lora", {}),
        ("wic", "prefix", {}), ("sts-b", "ft", {}), ("mrpc", "ehft-lora-reserve", {"save_model": True}),
        ("cola", "lp-ft", {})]


def official_subset(root, shared_data, task, rows=24):
    """The first `rows` lines of the task's train and dev files (and the header line of a GLUE file)."""
    for split in ("train", "dev"):
        source = task.file(shared_data, split)
        lines = source.read_text(encoding="utf-8").splitlines()
        keep = 1 if task.benchmark == "glue" and task.tsv_header else 0
        target = task.file(root, split)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(lines[:rows + keep]) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data, tiny_bert):
    root = tmp_path_factory.mktemp("predict")
    folders = {}
    for name, method, changes in RUNS:
        data = official_subset(root / "data", shared_data, get_task(name))
        spec = RunSpec(name, method, str(tiny_bert), str(data), 2, Config(**{**CONFIG.__dict__, **changes}))
        run(spec, root / name, log=lambda line: None)
        folders[name] = root / name
    return folders


def final_stage_last(run_dir):
    result = json.loads((run_dir / "result.json").read_text())
    return list(result["stages"].values())[-1]["last"]


@pytest.mark.parametrize("name", [name for name, _, _ in RUNS])
def test_dev_metrics_equal_the_runs_last_epoch(runs, name):
    classifier = load_classifier(runs[name], "last")
    expected_source = "model" if (runs[name] / "model").is_dir() else "trained.pt"
    assert classifier.source.name == expected_source
    predictions = predict(classifier, "dev")
    last = final_stage_last(runs[name])
    assert predictions.metrics == {metric: last[metric] for metric in get_task(name).metrics}


def test_the_best_weights_are_the_best_epochs_and_the_last_the_last_epochs(tmp_path, shared_data, tiny_bert, capsys):
    """save_best keeps the final stage's best dev epoch: predict's dev predictions and metrics with `--weights
    best` are the run's own at that epoch, with `last` at the last (STS-B: real-valued predictions, each epoch's
    its own). A run that kept no best.pt gives its last epoch's and says so; the model card names the epoch."""
    task = get_task("sts-b")
    data = official_subset(tmp_path / "data", shared_data, task)
    spec = RunSpec("sts-b", "ft", str(tiny_bert), str(data), 2, Config(**{**CONFIG.__dict__, "epochs": 4}))
    stage = run(spec, tmp_path / "run", log=lambda line: None)["stages"]["train"]
    assert stage["best"]["epoch"] != stage["last"]["epoch"]  # else best and last could not be told apart
    kept = json.loads((tmp_path / "run" / "train" / "dev_predictions.json").read_text())["epochs"]
    for weights in ("best", "last"):
        classifier = load_classifier(tmp_path / "run", weights)
        assert classifier.weights == f"the {weights} epoch's (epoch {stage[weights]['epoch']})"
        predictions = predict(classifier, "dev")
        assert predictions.predicted.tolist() == pytest.approx(kept[str(stage[weights]["epoch"])], abs=1e-5)
        assert predictions.metrics == pytest.approx({m: stage[weights][m] for m in task.metrics}, abs=1e-6)
    assert main(["predict", str(tmp_path / "run")]) == 0
    assert f"of {tmp_path / 'run' / 'train' / 'best.pt'}, the best epoch's (epoch {stage['best']['epoch']}) weights" \
        in capsys.readouterr().out
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf"), "--weights", "last"]) == 0
    assert f"these weights are the last epoch's (epoch {stage['last']['epoch']})" in (tmp_path / "hf" / "README.md").read_text()
    (tmp_path / "run" / "train" / "best.pt").unlink()
    assert load_classifier(tmp_path / "run").weights == (
        f"the last epoch's (epoch {stage['last']['epoch']}; the run kept no train/best.pt: save_best off, or "
        "trained before it existed)")


@pytest.mark.parametrize("name", ["rte", "cb", "copa", "sts-b"])
def test_the_runs_kept_dev_predictions_are_its_last_epochs_one_per_example(runs, name):
    """What the report's bootstrap resamples: one prediction per dev example (a COPA question, not a choice),
    the ones `predict` makes with the final weights, and the gold labels in the file's order."""
    predictions = predict(load_classifier(runs[name], "last"), "dev")
    final = list(json.loads((runs[name] / "result.json").read_text())["stages"])[-1]
    kept = json.loads((runs[name] / final / "dev_predictions.json").read_text())
    examples = get_task(name).read(runs[name].parent / "data", "dev")
    assert kept["gold"] == [e.label for e in examples]
    last = kept["epochs"][str(final_stage_last(runs[name])["epoch"])]
    assert len(last) == len(examples)
    assert last == pytest.approx(predictions.predicted.tolist(), abs=1e-5)


@pytest.mark.parametrize("name", ["rte", "cb", "copa", "sts-b"])
def test_jsonl_rows_agree_with_the_metrics(runs, name, tmp_path):
    predictions = predict(load_classifier(runs[name]), "dev")
    path = write_predictions(predictions, tmp_path / "dev.jsonl", "jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    task = get_task(name)
    assert [r["idx"] for r in rows] == [e.id for e in task.read(runs[name].parent / "data", "dev")]
    predicted, gold = [r["label"] for r in rows], [r["gold"] for r in rows]
    if task.is_regression:
        assert [r["score"] for r in rows] == predicted
        assert np.corrcoef(predicted, gold)[0, 1] == pytest.approx(predictions.metrics["pearson"], abs=1e-6)
        return
    assert skm.accuracy_score(gold, predicted) == predictions.metrics["accuracy"]
    for row in rows:
        probabilities = row["probabilities"]
        assert list(probabilities) == list(task.labels) and sum(probabilities.values()) == pytest.approx(1)
        assert row["score"] == probabilities[row["label"]] == max(probabilities.values())


def test_cli_predicts_a_label_less_test_file_as_a_leaderboard_file(runs, tmp_path, capsys):
    data = runs["rte"].parent / "data"
    dev = [json.loads(line) for line in (data / "superglue/RTE/val.jsonl").read_text().splitlines()]
    test = [{"premise": r["premise"], "hypothesis": r["hypothesis"], "idx": 100 + i} for i, r in enumerate(dev)]
    (data / "superglue/RTE/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    assert main(["predict", str(runs["rte"]), "--split", "test", "--format", "leaderboard", "--out",
                 str(tmp_path / "submission")]) == 0
    out = capsys.readouterr().out
    assert f"rte test: {len(test)} predictions of {runs['rte'] / 'stage2' / 'best.pt'}, the best epoch's" in out
    assert "metrics" not in out  # a test file has no labels
    submitted = [json.loads(line) for line in (tmp_path / "submission" / "RTE.jsonl").read_text().splitlines()]
    # The same inputs as dev, so the same predictions, now under the test ids.
    dev_rows = predict(load_classifier(runs["rte"]), "dev").rows()
    assert submitted == [{"idx": 100 + i, "label": row["label"]} for i, row in enumerate(dev_rows)]

    assert main(["predict", str(runs["rte"])]) == 0  # dev, jsonl, into the run folder
    assert "metrics: accuracy" in capsys.readouterr().out
    assert len((runs["rte"] / "predictions" / "dev.jsonl").read_text().splitlines()) == len(dev)
    # RUN/leaderboard a link to another folder: predict refuses to write through it, before loading anything
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (runs["rte"] / "leaderboard").symlink_to(elsewhere)
    try:
        assert main(["predict", str(runs["rte"]), "--format", "leaderboard"]) == 2
    finally:
        (runs["rte"] / "leaderboard").unlink()
    assert f"{runs['rte']}: holds symbolic links ({runs['rte'] / 'leaderboard'})" in capsys.readouterr().err
    assert not list(elsewhere.iterdir())


def test_an_unfinished_run_is_refused(tmp_path, tiny_bert, rte_dir):
    spec = RunSpec("rte", "ehft-bitfit", str(tiny_bert), str(rte_dir), 1, CONFIG)
    run(spec, tmp_path, stage_number=1, log=lambda line: None)
    with pytest.raises(ValueError, match="stage2 has not finished"):
        load_classifier(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        load_classifier(tmp_path / "stage1")


# Hand-made test files in each benchmark's official test layout (no labels), and the file each server takes.
STSB_TEST_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
TEST_FILES = {
    "rte": ['{"premise": "A cat sat.", "hypothesis": "A cat.", "idx": 0}',
            '{"premise": "A dog ran.", "hypothesis": "A cat ran.", "idx": 1}'],
    "cb": ['{"premise": "It rained.", "hypothesis": "It was wet.", "idx": 0}',
           '{"premise": "It rained.", "hypothesis": "It was dry.", "idx": 1}',
           '{"premise": "It rained.", "hypothesis": "It was cold.", "idx": 2}'],
    "boolq": ['{"question": "is it wet", "passage": "It rained.", "idx": 0}',
              '{"question": "is it dry", "passage": "It rained.", "idx": 1}'],
    "copa": ['{"premise": "I fell.", "choice1": "I tripped.", "choice2": "I sang.", "question": "cause", "idx": 0}',
             '{"premise": "I ate.", "choice1": "I was full.", "choice2": "I was hungry.", "question": "effect", '
             '"idx": 1}'],
    "wic": ['{"word": "bank", "sentence1": "The bank was open.", "sentence2": "The river bank.", "idx": 0, '
            '"start1": 4, "end1": 8, "start2": 10, "end2": 14}',
            '{"word": "run", "sentence1": "I run.", "sentence2": "We run.", "idx": 1, '
            '"start1": 2, "end1": 5, "start2": 3, "end2": 6}'],
    "mrpc": ["index\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1\t2\tHe ran.\tHe jogged.", "1\t3\t4\tIt fell.\tIt flew."],
    "qnli": ["index\tquestion\tsentence", "0\tWho ran?\tHe ran.", "1\tWho sang?\tThe sky is blue."],
    "cola": ["index\tsentence", "0\tThe cat sat.", "1\tCat the sat."],
    "sts-b": [STSB_TEST_HEADER, "0\tmain-news\tf\t2012\t0\tnone\tnone\tA cat.\tA cat.",
              "1\tmain-news\tf\t2012\t1\tnone\tnone\tA cat.\tA car.", "2\tmain-news\tf\t2012\t2\tnone\tnone\tA.\tB."],
}
# (what the classifier "predicts" per example: class index or score, the file the server expects, its text)
SUBMISSIONS = {
    "rte": ([1, 0], "RTE.jsonl", '{"idx": 0, "label": "not_entailment"}\n{"idx": 1, "label": "entailment"}\n'),
    "cb": ([0, 1, 2], "CB.jsonl", '{"idx": 0, "label": "entailment"}\n{"idx": 1, "label": "contradiction"}\n'
                                  '{"idx": 2, "label": "neutral"}\n'),
    "boolq": ([1, 0], "BoolQ.jsonl", '{"idx": 0, "label": "true"}\n{"idx": 1, "label": "false"}\n'),
    "copa": ([0, 1], "COPA.jsonl", '{"idx": 0, "label": 0}\n{"idx": 1, "label": 1}\n'),
    "wic": ([0, 1], "WiC.jsonl", '{"idx": 0, "label": "false"}\n{"idx": 1, "label": "true"}\n'),
    "mrpc": ([1, 0], "MRPC.tsv", "index\tprediction\n0\t1\n1\t0\n"),
    "qnli": ([0, 1], "QNLI.tsv", "index\tprediction\n0\tentailment\n1\tnot_entailment\n"),
    "cola": ([1, 0], "CoLA.tsv", "index\tprediction\n0\t1\n1\t0\n"),
    "sts-b": ([5.7, 2.3456, -0.2], "STS-B.tsv", "index\tprediction\n0\t5.000\n1\t2.346\n2\t0.000\n"),
}


@pytest.mark.parametrize("name", sorted(SUBMISSIONS))
def test_leaderboard_files_have_the_servers_format(tmp_path, name):
    task = get_task(name)
    path = task.file(tmp_path / "data", "test")
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(TEST_FILES[name]) + "\n", encoding="utf-8")
    examples = task.read(tmp_path / "data", "test")
    assert all(e.label is None for e in examples)
    values, filename, text = SUBMISSIONS[name]
    predicted = torch.tensor(values)
    probabilities = None if task.is_regression else torch.nn.functional.one_hot(predicted, task.num_classes).float()
    predictions = Predictions(task, examples, predicted, probabilities, metrics=None)
    written = write_predictions(predictions, tmp_path / "submission", "leaderboard")
    assert written == tmp_path / "submission" / filename
    assert written.read_text(encoding="utf-8") == text
    with pytest.raises(IsADirectoryError, match=f"--out {tmp_path / 'submission'}: a folder; jsonl predictions go "
                                                "to a file"):
        write_predictions(predictions, tmp_path / "submission", "jsonl")


def test_weights_trained_by_another_run_are_refused_by_predict_and_export(tmp_path, tiny_bert, rte_dir):
    """Another run's best.pt, model/ or trained.pt swapped into a run folder (same task, method and seed; another
    lr) was used, and its export carried this run's card. Each weights file records the run that trained it."""
    from sat_ehft.export import export_run

    for name, lr in (("mine", 1e-3), ("other", 2e-3)):
        config = Config(**{**CONFIG.__dict__, "lr": lr, "epochs": 1, "save_model": True})
        run(RunSpec("rte", "ft", str(tiny_bert), str(rte_dir), 2, config), tmp_path / name, log=lambda line: None)
    mine, other = tmp_path / "mine", tmp_path / "other"
    # best: best.pt; last: model/ where the run saved it, else trained.pt
    for weights, path in (("last", "model"), ("best", "train/best.pt"), ("last", "train/trained.pt")):
        shutil.rmtree(mine / "model", ignore_errors=True)  # "last" reads trained.pt where there is no model/
        if path == "model":
            shutil.copytree(other / path, mine / path)
        else:
            (mine / path).write_bytes((other / path).read_bytes())
        with pytest.raises(ValueError, match=f"{mine / path}: trained by another run \\(differs in config.lr\\); a "
                                             "run only uses what its own stages trained"):
            load_classifier(mine, weights)
        with pytest.raises(ValueError, match="trained by another run"):
            export_run(mine, tmp_path / f"hf-{weights}", weights)
        assert not (tmp_path / f"hf-{weights}").exists()


def test_weights_changed_after_they_were_written_are_refused(runs, tmp_path):
    """A same-size change inside a trained.pt, best.pt or model/ (bit rot, a careless edit) went unnoticed: each
    records its tensors' digest, which every reader checks."""
    folder = tmp_path / "cb"
    shutil.copytree(runs["cb"], folder)  # FT with save_model: best.pt, model/ and trained.pt
    for weights, path in (("best", "train/best.pt"), ("last", "model/1/mp_rank_00_model_states.pt"),
                          ("last", "train/trained.pt")):
        saved = torch.load(folder / path, weights_only=True)
        tensors = saved["module" if path.startswith("model") else "tensors"]
        tensors["mixins.head.dense.weight"][0, 0] += 1e-3
        torch.save(saved, folder / path)
        damaged = folder / ("model" if path.startswith("model") else path)
        with pytest.raises(ValueError, match=f"{damaged}: damaged: its tensors differ from the ones"):
            load_classifier(folder, weights)
        if path.startswith("model"):
            shutil.rmtree(folder / "model")  # so that "last" reads trained.pt next


def test_predictions_of_one_class_for_every_example_are_flagged_on_the_console(tmp_path, capsys, monkeypatch):
    """A collapsed classifier (one label for every example, labelled or not) is named by predict, and a run
    whose best epoch collapsed is named by train, on stderr (result.json alone said so before)."""
    import sat_ehft.pipeline
    import sat_ehft.predict

    task = get_task("rte")
    path = task.file(tmp_path / "data", "test")
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(TEST_FILES["rte"]) + "\n", encoding="utf-8")
    examples = task.read(tmp_path / "data", "test")
    one = Predictions(task, examples, torch.tensor([1, 1]), torch.tensor([[0.4, 0.6], [0.3, 0.7]]), None)
    assert one.collapsed == "'not_entailment'"
    assert Predictions(task, examples, torch.tensor([1, 0]), torch.tensor([[0.4, 0.6], [0.7, 0.3]]), None).collapsed is None
    stsb = get_task("sts-b")
    labelled = [dataclasses.replace(e, label=label) for e, label in zip(examples, (1.0, 4.0))]
    assert Predictions(stsb, labelled, torch.tensor([2.5, 2.5001]), None, {"pearson": 0.0}).collapsed == "about 2.500"
    assert Predictions(stsb, labelled, torch.tensor([1.5, 3.5]), None, {"pearson": 1.0}).collapsed is None

    class Run:
        spec = RunSpec("rte", "ft", "model", "data", 1, Config())
        source, weights = tmp_path / "train" / "best.pt", "the best epoch's (epoch 1)"
    monkeypatch.setattr(sat_ehft.predict, "run_spec", lambda run: Run.spec)
    monkeypatch.setattr(sat_ehft.predict, "read_examples", lambda *args: examples)
    monkeypatch.setattr(sat_ehft.predict, "load_classifier", lambda run, weights: Run())
    monkeypatch.setattr(sat_ehft.predict, "predict", lambda *args, **kwargs: one)
    assert main(["predict", str(tmp_path), "--out", str(tmp_path / "out.jsonl")]) == 0
    assert "warning: every prediction is 'not_entailment': the classifier does not tell the examples apart" \
        in capsys.readouterr().err
    monkeypatch.setattr(sat_ehft.pipeline, "run", lambda spec, out, stage_number: {
        "task": "rte", "method": "ft", "seed": 1, "metric": "accuracy", "best": 0.5, "best_epoch": 1, "last": 0.5,
        "collapsed": True})
    assert main(["train", "--task", "rte", "--method", "ft", "--model", "m", "--data-dir", "d", "--seed", "1",
                 "--out", str(tmp_path / "run")]) == 0
    assert f"warning: {tmp_path / 'run'}: even the best epoch predicted one class for every dev example" \
        in capsys.readouterr().err


def test_folders_are_recorded_absolute_and_predict_reads_the_data_before_the_model(tmp_path, monkeypatch, capsys):
    """train records --model and --data-dir absolute and normalised (run.json is read from anywhere); predict
    reads the split before it loads the model, and a file missing under run.json's data folder says that the
    folder came from run.json."""
    import sat_ehft.pipeline
    import sat_ehft.predict

    started = []
    monkeypatch.setattr(sat_ehft.pipeline, "run", lambda spec, out, stage_number: started.append(spec))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    assert main(["train", "--task", "rte", "--method", "ft", "--model", "model/../model", "--data-dir", "x/../data",
                 "--seed", "1", "--out", "run"]) == 0
    assert (started[0].model, started[0].data_dir) == (str(tmp_path / "model"), str(tmp_path / "data"))

    def no_model(*args):
        raise AssertionError("the model was loaded before the data was read")
    monkeypatch.setattr(sat_ehft.predict, "load_classifier", no_model)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps(described(started[0])))
    assert main(["predict", "run"]) == 2
    assert (f"{tmp_path}/data/superglue/RTE/val.jsonl: missing; expected the official RTE dev file laid out as "
            f"DATA_DIR/superglue/RTE/val.jsonl (DATA_DIR {tmp_path}/data is the one the run's run.json records; pass "
            "--data-dir to read another)") in capsys.readouterr().err
    assert main(["predict", "run", "--data-dir", "elsewhere", "--split", "test"]) == 2
    error = capsys.readouterr().err
    assert "elsewhere/superglue/RTE/test.jsonl: missing" in error and "run.json" not in error  # given, not recorded


@pytest.mark.parametrize("method, changes, encoded_at, dtype", [
    ("prefix", {"prefix_in_length": True, "max_length": 40}, 37, torch.float32),  # 40 - 3 prefixes
    ("ft", {"precision": "bf16", "max_length": 40}, 40, torch.bfloat16),
])
def test_predict_encodes_and_computes_as_the_run_did(tmp_path, shared_data, tiny_bert, method, changes, encoded_at,
                                                     dtype):
    """A prefix run leaves room for its prefixes (RTE premises run past 40 tokens, so the room shows); a bf16
    run predicts in bf16. The reference: the run's trained model, encoded and cast here by hand."""
    from sat_ehft.pipeline import rebuild_stage_model
    from sat_ehft.tasks import Encoding, encode_examples

    data = official_subset(tmp_path / "data", shared_data, get_task("rte"))
    config = Config(**{**CONFIG.__dict__, "epochs": 1, **changes})
    run(RunSpec("rte", method, str(tiny_bert), str(data), 2, config), tmp_path / "run", log=lambda line: None)
    predictions = predict(load_classifier(tmp_path / "run"), "dev", device="cpu")
    backbone, model, _ = rebuild_stage_model(tmp_path / "run", "train")
    task = get_task("rte")
    examples = task.read(data, "dev")
    features = encode_examples(task, examples, backbone.load_tokenizer(), Encoding(encoded_at))
    assert max(len(f["input_ids"]) for f in features) == encoded_at  # truncation at work
    batch = collate(features, backbone.load_tokenizer().pad_token_id)
    with torch.no_grad():
        logits = model.to(dtype).eval().encode(**model_inputs(batch)).float()[:, 0]
    assert torch.allclose(predictions.probabilities[:, 1], torch.sigmoid(logits), atol=1e-6)
