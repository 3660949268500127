"""Every figure command writes its PNG and JSON on tiny runs; the numbers are checked."""

import json

import numpy as np
import pytest
import torch

from sat_ehft.analyze import FIGURES
from sat_ehft.backbone import load_backbone
from sat_ehft.config import Config
from sat_ehft.pipeline import RunSpec, run
from sat_ehft.weight_distance import backbone_distance

CONFIG = Config(epochs=2, batch_size=8, micro_batch_size=8, eval_batch_size=32, max_length=64, lr=1e-3,
                stage1_lr={"bitfit": 5e-3, "lora": 5e-3, "prefix": 5e-2, "lp": 1e-2}, track_weight_distance=True,
                weight_distance_every=3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert, rte_dir):
    root = tmp_path_factory.mktemp("runs")
    folders = {}
    for method, share in (("ft", 0.1), ("lp", 0.1), ("ehft-bitfit", 0.1), ("ehft-bitfit", 0.5)):
        config = Config(**{**CONFIG.__dict__, "stage1_share": share, "epochs": 4})
        folder = root / f"{method}-{share}"
        run(RunSpec("rte", method, str(tiny_bert), str(rte_dir), 3, config), folder, log=lambda line: None)
        folders[f"{method}-{share}"] = folder
    return folders


def written(out, name):
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out / f"{name}.json").read_text())


def test_figure1_feature_change_is_zero_for_a_frozen_backbone(tmp_path, runs):
    FIGURES["1"]([runs["lp-0.1"], runs["ft-0.1"]], tmp_path)
    data = written(tmp_path, "figure1_feature_change")
    rte = data["by_task"]["rte"]
    assert rte["lp"]["distance"] == {"mean": 0.0, "std": 0.0, "runs": 1}  # LP leaves the backbone as it was
    assert rte["ft"]["distance"]["mean"] == data["runs"][str(runs["ft-0.1"])]["distance"] > 0.01


def hf_head_inputs(tiny_bert, trained, features):
    """The head's input ([CLS] of the last layer) on `features`, computed by Hugging Face's BertModel with the
    pretrained weights overwritten by the backbone tensors of a stage's trained.pt: an independent reference."""
    from transformers import BertModel

    from sat_ehft.batching import collate
    from sat_ehft.convert import hf_state_dict

    backbone = load_backbone(tiny_bert)
    state = backbone.model.state_dict()
    state.update({name: value for name, value in trained.items() if name in state})
    model = BertModel.from_pretrained(tiny_bert, add_pooling_layer=False).eval()
    model.load_state_dict(hf_state_dict(backbone.config, state), strict=True)
    batch = collate(features, 0)
    with torch.no_grad():
        hidden = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).last_hidden_state
    return hidden[:, 0]


def test_figure1_stage1_to_final_distance_matches_hugging_face(tmp_path, runs, tiny_bert):
    from sat_ehft.analyze.features import encoded
    from sat_ehft.pipeline import read_run

    run = runs["ehft-bitfit-0.1"]
    FIGURES["1"]([run, runs["ft-0.1"]], tmp_path)
    data = written(tmp_path, "figure1_feature_change")
    _, features = encoded(read_run(run), load_backbone(tiny_bert).load_tokenizer(), "train")
    stage1, stage2 = (hf_head_inputs(tiny_bert, torch.load(run / s / "trained.pt", weights_only=True)["tensors"],
                                     features) for s in ("stage1", "stage2"))
    expected = float((stage2 - stage1).norm(dim=-1).mean())
    assert data["runs"][str(run)]["stage1_distance"] == pytest.approx(expected, rel=1e-4)
    # BitFit moved the features in Stage 1, so the two distances differ
    assert data["runs"][str(run)]["stage1_distance"] != pytest.approx(data["runs"][str(run)]["distance"], rel=1e-3)
    assert "stage1_distance" not in data["runs"][str(runs["ft-0.1"])]
    assert {m for m, keys in data["by_task"]["rte"].items() if "stage1_distance" in keys} == {"ehft-bitfit"}


def fresh_copies(runs, names, folder):
    """Copies of finished runs without their kept Figure 1 numbers, so that Figure 1 computes them."""
    import shutil

    copies = {}
    for name in names:
        copies[name] = shutil.copytree(runs[name], folder / name)
        (copies[name] / "feature_change.json").unlink(missing_ok=True)
    return copies


def test_figure1_passes_the_pretrained_backbone_once_per_training_set(tmp_path, runs, monkeypatch):
    """Every run of one task and backbone has the same pretrained features: Figure 1 over four runs of three
    methods computes them once, and gives each run the distances it gets alone."""
    from sat_ehft.analyze import figures

    names = list(runs)
    alone = {}
    for name, copy in fresh_copies(runs, names, tmp_path / "alone").items():
        alone[name] = FIGURES["1"]([copy], tmp_path / "alone-figure" / name)["runs"][str(copy)]
    strips = []
    strip = figures._strip_to_pretrained
    monkeypatch.setattr(figures, "_strip_to_pretrained", lambda *args: strips.append(args) or strip(*args))
    copies = fresh_copies(runs, names, tmp_path / "together")
    together = FIGURES["1"](list(copies.values()), tmp_path / "together-figure")["runs"]
    assert len(strips) == 1
    for name, copy in copies.items():
        entry, own = together[str(copy)], alone[name]
        assert entry.keys() == own.keys() and entry["method"] == own["method"]
        assert {k: entry[k] for k in own if k.endswith("distance")} == pytest.approx(
            {k: own[k] for k in own if k.endswith("distance")}, rel=1e-6)
    assert alone["ft-0.1"]["distance"] > 0.01 and alone["lp-0.1"]["distance"] == 0.0


def test_runs_of_another_training_set_or_backbone_get_their_own_pretrained_features(runs):
    import dataclasses

    from sat_ehft.analyze.figures import pretrained_features_key
    from sat_ehft.pipeline import rebuild_stage_model

    backbone, model, spec = rebuild_stage_model(runs["ft-0.1"], "train")
    key = pretrained_features_key(backbone, model, spec)
    shorter = dataclasses.replace(spec, config=dataclasses.replace(spec.config, max_length=32))
    other_data = dataclasses.replace(spec, data_dir=str(runs["ft-0.1"]))
    other_backbone = dataclasses.replace(backbone, folder=runs["ft-0.1"])
    assert len({key, pretrained_features_key(backbone, model, shorter), pretrained_features_key(backbone, model, other_data),
                pretrained_features_key(other_backbone, model, spec),
                pretrained_features_key(backbone, model, dataclasses.replace(spec, task="cb"))}) == 5
    assert pretrained_features_key(*rebuild_stage_model(runs["ehft-bitfit-0.5"], "stage2")) == key


def test_figure4_tsne_has_a_point_per_example(tmp_path, runs):
    FIGURES["4"]([runs["ehft-bitfit-0.1"], runs["ft-0.1"]], tmp_path)
    data = written(tmp_path, "figure4_tsne")
    entry = data[str(runs["ehft-bitfit-0.1"])]
    assert entry["stage"] == "stage1" and len(entry["train"]["x"]) == 32 and len(entry["dev"]["label"]) == 16
    assert data[str(runs["ft-0.1"])]["stage"] == "random head"


def test_figure5_weight_distance_matches_the_trained_weights(tmp_path, runs, tiny_bert):
    FIGURES["5"]([runs["ft-0.1"], runs["lp-0.1"]], tmp_path)
    data = written(tmp_path, "figure5_weight_distance")
    assert set(data[str(runs["lp-0.1"])]["distance"]) == {0.0}
    ft = data[str(runs["ft-0.1"])]
    trained = torch.load(runs["ft-0.1"] / "train" / "trained.pt", weights_only=True)["tensors"]
    pretrained = dict(load_backbone(tiny_bert).model.named_parameters())
    # The L2 norm of every backbone entry's change, flattened into one vector, written out here
    change = torch.cat([(trained[name].double() - value.detach().double()).flatten()
                        for name, value in pretrained.items()])
    assert ft["distance"][-1] == pytest.approx(float(torch.linalg.vector_norm(change)), rel=1e-5)
    assert ft["step"] == [3, 4, 6, 8, 9, 12, 15, 16]  # every 3 steps, and each epoch's end (4 steps each)
    assert ft["distance"] == sorted(ft["distance"])


def test_a_resumed_stage_replaces_the_distances_logged_past_its_checkpoint(tmp_path):
    from sat_ehft.weight_distance import WeightDistanceLog

    model = torch.nn.Module()
    model.transformer = torch.nn.Linear(2, 2)

    def train_epoch(log, first_step, epoch, shift):
        for step in (first_step, first_step + 1):
            with torch.no_grad():
                model.transformer.weight.add_(shift)
            log.on_step(model, step)
        log(model, {"epoch": epoch, "step": first_step + 1})

    log = WeightDistanceLog(model, tmp_path, every=1)
    train_epoch(log, 1, 1, 0.1)
    train_epoch(log, 3, 2, 0.1)  # then killed; the checkpoint is after epoch 1
    with torch.no_grad():
        model.transformer.weight.sub_(0.2)  # back to the weights of the epoch-1 checkpoint
    resumed = WeightDistanceLog(model, tmp_path, every=1)
    resumed.start = log.start  # the pretrained weights
    train_epoch(resumed, 3, 2, 0.3)  # epoch 2 trained again, differently
    rows = [json.loads(line) for line in (tmp_path / "weight_distance.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r.get("epoch") for r in rows] == [None, 1, None, 2]
    assert rows[3]["distance"] == pytest.approx(backbone_distance(model, log.start))


def test_figure6_and_7_read_the_run_files(tmp_path, runs):
    FIGURES["6"]([runs["ehft-bitfit-0.1"], runs["ehft-bitfit-0.5"]], tmp_path)
    data = written(tmp_path, "figure6_stage1_share")
    curve = data["rte share-of-total"]
    results = [json.loads((runs[f"ehft-bitfit-{s}"] / "result.json").read_text())["best"] for s in ("0.1", "0.5")]
    assert curve == {"share": [0.1, 0.5], "best_mean": [100 * r for r in results]}
    FIGURES["7"]([runs["ehft-bitfit-0.5"], runs["ft-0.1"]], tmp_path)
    data = written(tmp_path, "figure7_loss")
    ehft = data[str(runs["ehft-bitfit-0.5"])]
    stage2 = [json.loads(line) for line in (runs["ehft-bitfit-0.5"] / "stage2" / "train_loss.jsonl").read_text().splitlines()]
    assert ehft["loss"] == [r["loss"] for r in stage2] and ehft["step"][0] == 1  # Stage 2 from its own step 0
    assert ehft["stage1_steps"] == 2 * 4  # Stage 1: 2 epochs of 4 steps
    epochs = [json.loads(line) for line in (runs["ehft-bitfit-0.5"] / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert ehft["train_accuracy"] == [r["train_accuracy"] for r in epochs] and len(epochs) == 2
    assert ehft["epoch_step"] == [r["step"] for r in epochs]


def test_figure1_spreads_are_per_task_and_method_over_seeds():
    from sat_ehft.analyze.figures import _spread_by_task_and_method

    per_run = {"a": {"task": "cb", "method": "ft", "distance": 2.0}, "b": {"task": "cb", "method": "ft", "distance": 4.0},
               "c": {"task": "rte", "method": "ft", "distance": 10.0},
               "d": {"task": "cb", "method": "lp-ft", "distance": 1.0, "stage1_distance": 3.0}}
    spread = _spread_by_task_and_method(per_run, ("distance", "stage1_distance"))
    assert spread["cb"]["ft"] == {"distance": {"mean": 3.0, "std": pytest.approx(np.std([2.0, 4.0], ddof=1)), "runs": 2}}
    assert spread["rte"]["ft"]["distance"]["mean"] == 10.0  # another task is never mixed in
    assert spread["cb"]["lp-ft"]["stage1_distance"] == {"mean": 3.0, "std": 0.0, "runs": 1}


def test_figure1_keeps_each_finished_runs_numbers_and_needs_no_weights_after(tmp_path, runs):
    """Committed results keep no weights: a run's Figure 1 numbers are read back from RUN/feature_change.json
    while its result.json is unchanged, and computed afresh (here: refused, no weights) once it changes."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["ehft-bitfit-0.1"], run)
    first = FIGURES["1"]([run], tmp_path / "first")["runs"][str(run)]
    for stage in ("stage1", "stage2"):
        (run / stage / "trained.pt").unlink()
    assert FIGURES["1"]([run], tmp_path / "again")["runs"][str(run)] == first
    result = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**result, "seed": 99}))  # as a rerun of the run would
    with pytest.raises(FileNotFoundError, match="trained.pt: missing"):
        FIGURES["1"]([run], tmp_path / "stale")
