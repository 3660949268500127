"""Whole runs on CPU through deepspeed.initialize: a tiny BERT backbone, real RTE rows."""

import json
import time

import pytest
import torch

from sat_ehft.backbone import load_backbone
from sat_ehft.config import Config
from sat_ehft.methods import get_method
from sat_ehft.pipeline import RunSpec, load_carried, prepare_stage, run, summarize
from sat_ehft.tasks import get_task

CONFIG = Config(epochs=2, batch_size=8, micro_batch_size=8, eval_batch_size=32, max_length=64, lora_r=2,
                prefix_len=3, stage1_lr={"bitfit": 5e-3, "lora": 5e-3, "prefix": 5e-2, "lp": 1e-2}, lr=1e-3)


def spec_for(method, tiny_bert, rte_dir, **changes):
    return RunSpec(task="rte", method=method, model=str(tiny_bert), data_dir=str(rte_dir), seed=3,
                   config=Config(**{**CONFIG.__dict__, **changes}))


def test_eval_every_scores_every_nth_epoch_and_the_last_and_picks_the_best_among_them(tmp_path, tiny_bert, rte_dir):
    folder = tmp_path / "run"
    result = run(spec_for("lp-ft", tiny_bert, rte_dir, epochs=6, stage1_share=0.34, eval_every=3), folder,
                 log=lambda line: None)
    logs = {stage: [json.loads(line) for line in (folder / stage / "metrics.jsonl").read_text().splitlines()]
            for stage in ("stage1", "stage2")}
    assert [r["epoch"] for r in logs["stage1"] if "accuracy" in r] == [2]  # 2 epochs: only the last
    assert [r["epoch"] for r in logs["stage2"] if "accuracy" in r] == [3, 4]  # 4 epochs: the 3rd and the last
    assert all("train_loss" in r for records in logs.values() for r in records)
    scores = [r["accuracy"] for r in logs["stage2"] if "accuracy" in r]
    assert result["best"] == max(scores) and result["last"] == scores[-1]
    assert result["max_over_all_stages"] == max(scores + [logs["stage1"][-1]["accuracy"]])


@pytest.mark.parametrize("method", ["ft", "lp-ft", "ehft-bitfit", "ehft-lora", "ehft-prefix", "mixout", "child-tuning-d"])
def test_methods_run_end_to_end(tmp_path, tiny_bert, rte_dir, method):
    result = run(spec_for(method, tiny_bert, rte_dir), tmp_path / "run", log=lambda line: None)
    stages = [stage.name for stage in get_method(method).stages]
    assert list(result["stages"]) == stages and result["seed"] == 3 and result["metric"] == "accuracy"
    final = [json.loads(line) for line in (tmp_path / "run" / stages[-1] / "metrics.jsonl").read_text().splitlines()]
    assert result["last"] == final[-1]["accuracy"] and result["best"] == max(r["accuracy"] for r in final)
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == result
    if method == "child-tuning-d":  # what its Fisher selected, reported
        assert set(result["stages"]["train"]["child_tuning"]) == {"mask_applied", "keep", "fisher_nonzero_fp16",
                                                                  "kept_by_original_rule"}
    for stage in stages:
        assert not (tmp_path / "run" / stage / "checkpoint").exists()  # removed once the stage is done


def test_a_resumed_stages_seconds_include_what_its_earlier_starts_recorded(tmp_path, tiny_bert, rte_dir):
    """A stage killed after 1,000 recorded seconds (here: its done.json taken away, its cost.json set so) and
    started again reports its wall time over both starts, not the second start's alone."""
    spec, folder = spec_for("ft", tiny_bert, rte_dir), tmp_path / "run"
    run(spec, folder, log=lambda line: None)
    for finished in (folder / "result.json", folder / "train" / "done.json"):
        finished.unlink()
    cost = json.loads((folder / "train" / "cost.json").read_text())
    (folder / "train" / "cost.json").write_text(json.dumps({**cost, "train_seconds": 1000.0, "eval_seconds": 20.0,
                                                            "checkpoint_seconds": 5.0}))
    started = time.perf_counter()
    stage = run(spec, folder, log=lambda line: None)["stages"]["train"]
    took = time.perf_counter() - started
    assert 1025.0 < stage["seconds"] < 1025.0 + took
    assert stage["cost"]["train_seconds"] > 1000.0  # the cost record goes on from the earlier start's too


def test_stage2_starts_from_the_pretrained_backbone_and_the_stage1_head(tmp_path, tiny_bert, rte_dir):
    """EH-FT(BitFit)'s Stage 2: the pretrained backbone and the Stage-1 head's weights; its biases carried, or
    (bitfit_head_bias: reinit, as the original code) those of a fresh head, here plain finetuning's."""
    spec = spec_for("ehft-bitfit", tiny_bert, rte_dir)
    run(spec, tmp_path, log=lambda line: None)
    stage1 = torch.load(tmp_path / "stage1" / "trained.pt", weights_only=True)["tensors"]
    pretrained = load_backbone(tiny_bert).model.state_dict()
    assert any(not torch.equal(stage1[n], pretrained[n]) for n in stage1 if not n.startswith("mixins."))
    start = prepare_stage(spec, tmp_path, 1).model.state_dict()
    for name, value in pretrained.items():  # BitFit's trained biases are gone: bit-identical backbone
        assert torch.equal(start[name], value), name
    heads = [n for n in start if n.startswith("mixins.head.")]
    assert sorted(heads) == ["mixins.head.dense.bias", "mixins.head.dense.weight", "mixins.head.out.bias",
                             "mixins.head.out.weight"]
    weights, biases = [n for n in heads if n.endswith("weight")], [n for n in heads if n.endswith("bias")]
    assert all(torch.equal(start[n], stage1[n]) for n in heads)  # carried whole (bitfit_head_bias: carry)
    # another config is another run (its Stage 2 refuses this run's Stage 1): its own Stage 1, trained alike
    reinit_spec = spec_for("ehft-bitfit", tiny_bert, rte_dir, bitfit_head_bias="reinit")
    run(reinit_spec, tmp_path / "reinit", stage_number=1, log=lambda line: None)
    reinit_stage1 = torch.load(tmp_path / "reinit" / "stage1" / "trained.pt", weights_only=True)["tensors"]
    assert all(torch.equal(reinit_stage1[n], stage1[n]) for n in stage1)
    reinit = prepare_stage(reinit_spec, tmp_path / "reinit", 1).model.state_dict()
    fresh = prepare_stage(spec_for("ft", tiny_bert, rte_dir), tmp_path / "ft", 0).model.state_dict()
    assert not any(torch.equal(stage1[n], fresh[n]) for n in biases)  # Stage 1 trained them: the two can be told apart
    assert all(torch.equal(reinit[n], stage1[n]) for n in weights) and all(torch.equal(reinit[n], fresh[n]) for n in biases)


def test_reserve_keeps_the_stage1_lora(tmp_path, tiny_bert, rte_dir):
    spec = spec_for("ehft-lora-reserve", tiny_bert, rte_dir)
    run(spec, tmp_path, log=lambda line: None)
    stage1 = torch.load(tmp_path / "stage1" / "trained.pt", weights_only=True)["tensors"]
    start = prepare_stage(spec, tmp_path, 1)
    lora = {n: v for n, v in start.model.state_dict().items() if n.startswith("mixins.lora.")}
    assert lora and all(torch.equal(v, stage1[n]) for n, v in lora.items())
    assert set(lora) <= start.trainable


def test_rerun_skips_finished_stages_and_refuses_another_config(tmp_path, tiny_bert, rte_dir):
    spec = spec_for("ehft-bitfit", tiny_bert, rte_dir)
    run(spec, tmp_path, stage_number=1, log=lambda line: None)
    assert not (tmp_path / "stage2").exists() and not (tmp_path / "result.json").exists()
    stamp = (tmp_path / "stage1" / "done.json").stat().st_mtime_ns
    lines = []
    result = run(spec, tmp_path, stage_number=2, log=lines.append)
    assert result["stages"]["stage1"] == json.loads((tmp_path / "stage1" / "done.json").read_text())
    run(spec, tmp_path, log=lines.append)
    assert lines[-2:] == ["ehft-bitfit stage1: already finished, skipped", "ehft-bitfit stage2: already finished, skipped"]
    assert (tmp_path / "stage1" / "done.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"run\.json: this folder belongs to another run \(differs in seed, config\.lr\)"):
        run(RunSpec(**{**spec.__dict__, "seed": 4, "config": Config(**{**CONFIG.__dict__, "lr": 2e-3})}), tmp_path)
    # a run.json written before a config key existed: the key counts as its default
    recorded = json.loads((tmp_path / "run.json").read_text())
    del recorded["config"]["eval_every"], recorded["config"]["recipe"]
    (tmp_path / "run.json").write_text(json.dumps(recorded))
    run(spec, tmp_path, log=lines.append)
    assert lines[-1] == "ehft-bitfit stage2: already finished, skipped"
    with pytest.raises(ValueError, match=r"another run \(differs in config\.eval_every\)"):
        run(RunSpec(**{**spec.__dict__, "config": Config(**{**CONFIG.__dict__, "eval_every": 2})}), tmp_path)
    done = tmp_path / "stage1" / "done.json"
    done.write_text(done.read_text()[:40])  # damaged after it was written
    with pytest.raises(ValueError, match=f"{done}: unreadable .*; delete it and rerun: that stage is trained again"):
        run(spec, tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"stage1_lr": {"bitfit": -1.0, "lora": 5e-4, "prefix": 5e-3, "lp": 1e-3}},
     "stage1_lr's bitfit must be a finite number above 0, got -1.0"),
    ({"stage1_lr": {"bitfit": float("nan"), "lora": 5e-4, "prefix": 5e-3, "lp": 1e-3}},
     "stage1_lr's bitfit must be a finite number above 0, got nan"),
    ({"lr": float("inf")}, "lr must be a finite number above 0, got inf"),
])
def test_learning_rates_are_checked_with_the_config(changes, message):
    with pytest.raises(ValueError, match=f"invalid config: {message}"):
        Config(**{**CONFIG.__dict__, **changes})


def test_a_run_that_failed_before_keeping_anything_leaves_its_folder_to_the_corrected_command(tmp_path, tiny_bert,
                                                                                           rte_dir, monkeypatch):
    """max_length past the backbone's positions stops before anything is written; a failure after run.json but
    before the first checkpoint leaves a folder that the corrected command clears and uses, while a folder
    whose run kept a finished stage is still refused."""
    import sat_ehft.pipeline

    positions = load_backbone(tiny_bert).max_tokens  # BERT: its position table's rows
    assert positions == json.loads((tiny_bert / "config.json").read_text())["max_position_embeddings"]
    too_long = spec_for("ehft-bitfit", tiny_bert, rte_dir, max_length=positions + 1)
    with pytest.raises(ValueError, match=f"max_length={positions + 1}: {tiny_bert} holds sequences of at most "
                                         f"{positions} tokens; set max_length to {positions} or less"):
        run(too_long, tmp_path / "run")
    assert not (tmp_path / "run" / "run.json").exists()

    def fails_after_an_epoch(*args, files, **kwargs):  # its logs written, no checkpoint yet
        files.folder.mkdir(parents=True)
        (files.folder / "progress.log").write_text("stage1 epoch 1/1 step 4: train loss nan\n")
        raise RuntimeError("failed after an epoch")
    monkeypatch.setattr(sat_ehft.pipeline, "train_stage", fails_after_an_epoch)
    with pytest.raises(RuntimeError, match="failed after an epoch"):
        run(spec_for("ehft-bitfit", tiny_bert, rte_dir, lr=5.0), tmp_path / "run")
    assert (tmp_path / "run" / "run.json").is_file() and (tmp_path / "run" / "stage1" / "progress.log").is_file()
    monkeypatch.undo()
    lines = []
    corrected = spec_for("ehft-bitfit", tiny_bert, rte_dir)
    run(corrected, tmp_path / "run", stage_number=1, log=lines.append)
    assert lines[0] == (f"{tmp_path / 'run'}: cleared the run recorded there (differing in config.lr), which kept "
                        "no finished stage or checkpoint")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["lr"] == CONFIG.lr
    assert "nan" not in (tmp_path / "run" / "stage1" / "progress.log").read_text()  # the failed run's logs went
    with pytest.raises(ValueError, match=r"another run \(differs in config\.lr\) that kept .*stage1/done\.json"):
        run(spec_for("ehft-bitfit", tiny_bert, rte_dir, lr=5.0), tmp_path / "run")


def test_a_robertas_longest_sequence_leaves_out_its_padding_offset(tiny_roberta):
    """RoBERTa numbers positions from padding_idx + 1: roberta-large's 514 rows hold 512 tokens (its tokenizer's
    model_max_length)."""
    config = json.loads((tiny_roberta / "config.json").read_text())
    assert load_backbone(tiny_roberta).max_tokens == config["max_position_embeddings"] - config["pad_token_id"] - 1


def test_a_link_in_a_run_folder_is_refused_and_nothing_it_points_at_is_touched(tmp_path, tiny_bert, rte_dir):
    """A .lock that links elsewhere was truncated through the link; a checkpoint folder that linked elsewhere had
    its epochN folders deleted and written there. Both are refused now, and the targets stay as they were."""
    spec, folder, outside = spec_for("ehft-bitfit", tiny_bert, rte_dir), tmp_path / "run", tmp_path / "outside"
    (outside / "epoch1").mkdir(parents=True)
    (outside / "keep.txt").write_text("mine")
    folder.mkdir()
    (folder / ".lock").symlink_to(outside / "keep.txt")
    with pytest.raises(RuntimeError, match=r"\.lock: a symbolic link; sat-ehft never writes through a link"):
        run(spec, folder)
    (folder / ".lock").unlink()
    (folder / "stage1").mkdir()
    (folder / "stage1" / "checkpoint").symlink_to(outside)
    with pytest.raises(ValueError, match=f"{folder}: holds symbolic links \\({folder}/stage1/checkpoint\\)"):
        run(spec, folder)
    assert (outside / "keep.txt").read_text() == "mine" and sorted(p.name for p in outside.iterdir()) == ["epoch1", "keep.txt"]
    assert not (folder / "run.json").exists()


def test_bitfit_reserve_carries_the_biases_its_stage1_trained(tmp_path, tiny_bert, rte_dir):
    spec = spec_for("ehft-bitfit-reserve", tiny_bert, rte_dir, bitfit_final_layernorm=False)
    run(spec, tmp_path, log=lambda line: None)
    stage1 = torch.load(tmp_path / "stage1" / "trained.pt", weights_only=True)["tensors"]
    assert "transformer.final_layernorm.bias" not in stage1  # the original code's BitFit set
    start = prepare_stage(spec, tmp_path, 1)
    carried = {n: v for n, v in start.model.state_dict().items() if n in stage1}
    assert carried.keys() == stage1.keys() and all(torch.equal(v, stage1[n]) for n, v in carried.items())


@pytest.mark.parametrize("room", [True, False])
def test_prefix_runs_leave_room_for_their_prefixes(tmp_path, tiny_bert, rte_dir, room):
    from sat_ehft.pipeline import run_encoding

    spec = spec_for("ehft-prefix", tiny_bert, rte_dir, prefix_in_length=room, prefix_len=5)
    longest = 64 - 5 if room else 64
    assert run_encoding(spec).max_length == longest
    assert run_encoding(spec_for("ft", tiny_bert, rte_dir, prefix_in_length=room)).max_length == 64
    ready = prepare_stage(spec, tmp_path, 0)
    assert max(len(f["input_ids"]) for f in ready.train + ready.dev) == longest  # RTE rows run past 64 tokens


def test_a_run_picks_and_reports_its_best_epoch_by_the_configured_metric(tmp_path, tiny_bert, shared_data):
    """Table 2 reports STS-B's Spearman correlation: the best epoch is chosen by it, not by Pearson."""
    data = tmp_path / "data" / "glue" / "STS-B"
    data.mkdir(parents=True)
    for split, count in (("train", 33), ("dev", 17)):  # the header, then the rows
        lines = (shared_data / "glue" / "STS-B" / f"{split}.tsv").read_text(encoding="utf-8-sig").splitlines()[:count]
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def spec(metric):
        return RunSpec(task="sts-b", method="ft", model=str(tiny_bert), data_dir=str(tmp_path / "data"), seed=3,
                       config=Config(**{**CONFIG.__dict__, "epochs": 4, "best_metric": metric}))

    result = run(spec("spearman"), tmp_path / "run", log=lambda line: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: r["spearman"])
    assert (result["metric"], result["best"], result["best_epoch"]) == ("spearman", best["spearman"], best["epoch"])
    with pytest.raises(ValueError, match="best_metric='f1': task sts-b reports pearson, spearman"):
        run(spec("f1"), tmp_path / "other", log=lambda line: None)
    assert not (tmp_path / "other" / "run.json").exists()


@pytest.mark.parametrize("best_metric, task, chosen", [("original", "mrpc", "accuracy"), ("", "mrpc", "f1"),
                                                        ("original", "rte", "accuracy"), ("original", "sts-b", "pearson")])
def test_best_metric_original_selects_what_the_papers_column_most_probably_is(best_metric, task, chosen):
    """MRPC under the original recipe: the best epoch and the reported score are accuracy's (the paper's column
    is very probably accuracy), not F1's, whose best epoch differs here; other tasks keep their first metric."""
    records = [{"epoch": 1, "f1": 0.90, "accuracy": 0.84, "pearson": 0.7}, {"epoch": 2, "f1": 0.88, "accuracy": 0.86,
                                                                            "pearson": 0.8}]
    summary = summarize(get_task(task), records, Config(best_metric=best_metric))
    assert summary["metric"] == chosen
    assert summary["best"] == max(records, key=lambda r: r[chosen])


def test_stage2_needs_stage1(tmp_path, tiny_bert, rte_dir):
    with pytest.raises(ValueError, match="stage1 has not finished; run it first"):
        run(spec_for("ehft-lora", tiny_bert, rte_dir), tmp_path, stage_number=2)


def test_a_head_from_another_task_or_backbone_is_refused(tmp_path, tiny_bert, rte_dir, shared_data, minilm_dir):
    cb_dir = tmp_path / "cb-data" / "superglue"
    (cb_dir / "CB").mkdir(parents=True)
    for split in ("train", "val"):
        (cb_dir / "CB" / f"{split}.jsonl").write_text(
            "\n".join((shared_data / "superglue/CB" / f"{split}.jsonl").read_text().splitlines()[:16]) + "\n")
    cb = RunSpec(task="cb", method="ehft-bitfit", model=str(tiny_bert), data_dir=str(cb_dir.parent), seed=3, config=CONFIG)
    run(cb, tmp_path / "cb", stage_number=1, log=lambda line: None)
    rte_model = prepare_stage(spec_for("ft", tiny_bert, rte_dir), tmp_path / "unused", 0)
    fingerprint = load_backbone(tiny_bert).fingerprint
    head = tmp_path / "cb" / "stage1" / "trained.pt"
    cb_origin = {"task": "cb", "method": "ehft-bitfit", "seed": 3, "stage": "stage1"}
    with pytest.raises(ValueError, match=r"trained\.pt: trained by another run \(task 'cb', not 'rte'; seed 3, not 4\)"):
        load_carried(rte_model.model, head, ("head",), fingerprint, {**cb_origin, "task": "rte", "seed": 4}, CONFIG)
    # A file that claims this run's origin is still checked against the model:
    with pytest.raises(ValueError, match=r"'mixins\.head\.out\.bias' has shape \[3\], but this task's model needs \[1\]"):
        load_carried(rte_model.model, head, ("head",), fingerprint, cb_origin, CONFIG)
    other = load_backbone(minilm_dir).fingerprint
    with pytest.raises(ValueError, match="trained on another backbone"):
        load_carried(rte_model.model, head, ("head",), other, cb_origin, CONFIG)


def test_a_same_shaped_head_from_another_run_is_refused(tmp_path, tiny_bert, rte_dir):
    """Another seed's Stage-1 head has the right shape and backbone; its trained.pt says whose it is."""
    run(spec_for("ehft-bitfit", tiny_bert, rte_dir), tmp_path / "seed3", stage_number=1, log=lambda line: None)
    other_seed = RunSpec(**{**spec_for("ehft-bitfit", tiny_bert, rte_dir).__dict__, "seed": 5})
    run(other_seed, tmp_path / "seed5", stage_number=1, log=lambda line: None)
    (tmp_path / "seed5" / "stage1" / "trained.pt").write_bytes((tmp_path / "seed3" / "stage1" / "trained.pt").read_bytes())
    with pytest.raises(ValueError, match=r"trained by another run \(seed 3, not 5\)"):
        run(other_seed, tmp_path / "seed5", stage_number=2, log=lambda line: None)
    # a Stage 1 of an older sat-ehft, which recorded no origin and no digest, is used (the README's upgrade promise)
    saved = torch.load(tmp_path / "seed3" / "stage1" / "trained.pt", weights_only=True)
    torch.save({"tensors": saved["tensors"], "backbone": saved["backbone"]}, tmp_path / "seed5" / "stage1" / "trained.pt")
    result = run(other_seed, tmp_path / "seed5", stage_number=2, log=lambda line: None)
    assert result["seed"] == 5 and list(result["stages"]) == ["stage1", "stage2"]


def test_a_failed_first_start_leaves_the_folder_free(tmp_path, tiny_bert, rte_dir):
    wrong = RunSpec(**{**spec_for("ft", tiny_bert, rte_dir).__dict__, "data_dir": str(tmp_path / "no-data")})
    with pytest.raises(ValueError, match="train.jsonl: missing"):
        run(wrong, tmp_path / "run", log=lambda line: None)
    assert not (tmp_path / "run" / "run.json").exists()
    result = run(spec_for("ft", tiny_bert, rte_dir), tmp_path / "run", log=lambda line: None)  # the corrected command
    assert result["method"] == "ft"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data_dir"] == str(rte_dir)


def test_a_second_writer_is_refused_at_once_and_a_dead_holder_blocks_nothing(tmp_path, tiny_bert, rte_dir):
    import os
    import signal
    import socket
    import subprocess
    import sys

    from sat_ehft.pipeline import run_folder_lock

    spec = spec_for("ft", tiny_bert, rte_dir)
    (tmp_path / "run").mkdir()
    with run_folder_lock(tmp_path / "run"):
        with pytest.raises(RuntimeError, match=rf"run: in use by another sat-ehft run \(pid {os.getpid()} on "
                                               rf"{socket.gethostname()}\); wait for it to end, or use another --out"):
            run(spec, tmp_path / "run", log=lambda line: None)
    assert not (tmp_path / "run" / "run.json").exists()  # the refused run wrote nothing
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom sat_ehft.pipeline import run_folder_lock\n"
                               "with run_folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)",
                               str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    while holder.stdout.readline().strip() != "locked":  # DeepSpeed's import prints first
        assert holder.poll() is None
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert run(spec, tmp_path / "run", log=lambda line: None)["method"] == "ft"  # the dead holder's lock went with it


def test_saved_classifier_loads_back_with_sat_automodel(tmp_path, tiny_bert, rte_dir):
    from sat.model.base_model import AutoModel

    from sat_ehft.batching import collate, model_inputs

    spec = spec_for("ehft-lora-reserve", tiny_bert, rte_dir, save_model=True)
    run(spec, tmp_path, log=lambda line: None)
    model, _ = AutoModel.from_pretrained(str(tmp_path / "model"))
    trained = torch.load(tmp_path / "stage2" / "trained.pt", weights_only=True)["tensors"]
    state = model.state_dict()
    assert set(model.mixins) == {"bert-type", "hidden-states", "sdpa-attention", "head", "lora"}
    assert all(torch.equal(state[n], v) for n, v in trained.items())
    start = prepare_stage(spec, tmp_path, 1)
    batch = collate(start.dev[:4], start.tokenizer.pad_token_id)
    with torch.no_grad():
        scores = model.eval().encode(**model_inputs(batch))
    assert scores.shape == (4, 1)


def test_child_tuning_stage_updates_only_its_child_network(tmp_path, tiny_bert, rte_dir):
    from sat_ehft.batching import collate, model_inputs
    from sat_ehft.objective import loss

    ready = prepare_stage(spec_for("child-tuning-d", tiny_bert, rte_dir, child_tuning_keep=0.2), tmp_path, 0)
    batch = collate(ready.train[:8], ready.tokenizer.pad_token_id)
    loss(ready.model.encode(**model_inputs(batch)), batch["labels"], "binary").backward()
    backbone = [(n, p) for n, p in ready.model.named_parameters() if not n.startswith("mixins.") or ".bert-type." in n]
    moving = sum(int((p.grad != 0).sum()) for _, p in backbone)
    assert 0 < moving <= round(0.2 * sum(p.numel() for _, p in backbone))
    head = ready.model.get_mixin("head").dense.weight.grad
    assert (head != 0).float().mean() > 0.3  # the head is never masked (only ReLU-dead units have no gradient)


def test_child_tuning_zeroes_gradients_outside_its_mask_and_leaves_the_rest_exact(tmp_path, tiny_bert, rte_dir):
    """Against plain finetuning of the same model (same seed, so the same head) on the same batch, dropout off:
    the child network's gradients are finetuning's exactly, and finetuning's other gradients are zeroed."""
    from sat_ehft.batching import collate, model_inputs
    from sat_ehft.objective import loss

    grads = {}
    for method in ("ft", "child-tuning-d"):
        ready = prepare_stage(spec_for(method, tiny_bert, rte_dir, child_tuning_keep=0.02), tmp_path, 0)
        batch = collate(ready.train[:8], ready.tokenizer.pad_token_id)
        loss(ready.model.eval().encode(**model_inputs(batch)), batch["labels"], "binary").backward()
        grads[method] = {n: p.grad for n, p in ready.model.named_parameters() if not n.startswith("mixins.head.")}
    total = sum(g.numel() for g in grads["ft"].values())
    kept = {n: grads["child-tuning-d"][n] != 0 for n in grads["ft"]}
    assert all(torch.equal(grads["child-tuning-d"][n][kept[n]], grads["ft"][n][kept[n]]) for n in kept)
    assert 0 < sum(int(k.sum()) for k in kept.values()) <= round(0.02 * total)
    moving = sum(int((grads["ft"][n] != 0).sum()) for n in kept)  # most embedding rows get no gradient anyway
    zeroed = sum(int(((grads["ft"][n] != 0) & ~kept[n]).sum()) for n in kept)
    assert zeroed > 0.2 * moving  # a good share of what finetuning would move stays still


def test_child_tuning_as_the_original_ran_measures_its_fisher_but_masks_nothing(tmp_path, tiny_bert, rte_dir):
    """child_tuning_mask: false (the original recipe): every gradient is plain finetuning's, bit for bit, and the
    stage reports what the original's fp16 selection would have seen."""
    from sat_ehft.batching import collate, model_inputs
    from sat_ehft.objective import loss

    grads = {}
    for method in ("ft", "child-tuning-d"):
        ready = prepare_stage(spec_for(method, tiny_bert, rte_dir, child_tuning_keep=0.02, child_tuning_mask=False,
                                       child_tuning_fisher="original"), tmp_path, 0)
        batch = collate(ready.train[:8], ready.tokenizer.pad_token_id)
        loss(ready.model.eval().encode(**model_inputs(batch)), batch["labels"], "binary").backward()
        grads[method] = {n: p.grad for n, p in ready.model.named_parameters() if not n.startswith("mixins.head.")}
    assert all(torch.equal(grads["child-tuning-d"][n], grads["ft"][n]) for n in grads["ft"])
    reported = ready.reported["child_tuning"]
    assert (reported["mask_applied"], reported["keep"]) == (False, 0.02)
    assert 0 < reported["fisher_nonzero_fp16"] <= 1 and 0.02 <= reported["kept_by_original_rule"] <= 1


@pytest.mark.parametrize("fisher, clip, training", [("backbone", None, False), ("original", 1.0, True)])
def test_each_fisher_is_measured_as_configured(tmp_path, tiny_bert, rte_dir, monkeypatch, fisher, clip, training):
    """'original': in train mode (dropout on), each tensor's gradient clipped to norm 1; 'backbone': eval mode,
    unclipped. What fisher_information itself computes is tested against a hand-written reference (test_mixins)."""
    from sat_ehft.mixins import child_tuning

    seen, measure = [], child_tuning.fisher_information

    def spy(model, names, losses, clip=None):
        def watched():
            for loss in losses:
                seen.append((clip, model.training))
                yield loss
        return measure(model, names, watched(), clip)

    monkeypatch.setattr(child_tuning, "fisher_information", spy)
    prepare_stage(spec_for("child-tuning-d", tiny_bert, rte_dir, child_tuning_fisher=fisher), tmp_path, 0)
    assert seen and set(seen) == {(clip, training)}


def test_the_original_child_tuning_masks_the_layers_only_and_trains_with_its_own_adamw(tmp_path, tiny_bert, rte_dir):
    from sat_ehft.batching import collate, model_inputs
    from sat_ehft.objective import loss
    from sat_ehft.pipeline import training_config

    spec = spec_for("child-tuning-d", tiny_bert, rte_dir, child_tuning_keep=0.2, child_tuning_fisher="original",
                    child_tuning_optimizer="original")
    ready = prepare_stage(spec, tmp_path, 0)
    batch = collate(ready.train[:8], ready.tokenizer.pad_token_id)
    loss(ready.model.encode(**model_inputs(batch)), batch["labels"], "binary").backward()
    params = dict(ready.model.named_parameters())
    layers = [p for n, p in params.items() if n.startswith("transformer.layers.")]
    moving = sum(int((p.grad != 0).sum()) for p in layers)
    assert 0 < moving <= round(0.2 * sum(p.numel() for p in layers))  # the share is of the layers' entries
    for name in ("transformer.final_layernorm.weight", "transformer.position_embeddings.weight"):
        assert (params[name].grad != 0).float().mean() > 0.9, name  # outside the layers: not masked
    config = training_config(spec.config, get_method("child-tuning-d").stages[0])
    assert (config.adam_betas, config.weight_decay) == ((0.9, 0.999), 0.0)
    assert training_config(spec.config, get_method("ft").stages[0]) == spec.config


@pytest.mark.parametrize("data_order, reported", [("reshuffle", "best"), ("original", "max_over_all_stages")])
def test_result_takes_collapsed_from_the_best_epoch_and_the_running_maximum_over_both_stages(tmp_path, data_order,
                                                                                            reported):
    """Stage 1 scores above every Stage-2 epoch (the original code's number comes from it); Stage 2's best epoch
    is not its last, and only the last collapsed. Each metric keeps its own running maximum (MRPC's F1 and
    accuracy peak at different evaluations), and a run trained in the original's order reports that maximum."""
    from sat_ehft.pipeline import write_result

    epochs = {"stage1": [{"epoch": 1, "accuracy": 0.9, "f1": 0.7, "collapsed": False}],
              "stage2": [{"epoch": 1, "accuracy": 0.6, "f1": 0.95, "collapsed": False},
                         {"epoch": 2, "accuracy": 0.8, "f1": 0.8, "collapsed": False},
                         {"epoch": 3, "accuracy": 0.5, "f1": 0.5, "collapsed": True}]}
    for stage, records in epochs.items():
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        best = max(records, key=lambda r: r["accuracy"])
        (tmp_path / stage / "done.json").write_text(json.dumps({"metric": "accuracy", "best": best, "last": records[-1]}))
    spec = RunSpec(task="mrpc", method="lp-ft", model="m", data_dir="d", seed=3,
                   config=Config(**{**CONFIG.__dict__, "data_order": data_order}))
    result = write_result(spec, tmp_path, get_method("lp-ft"))
    assert (result["best"], result["best_epoch"], result["last"]) == (0.8, 2, 0.5)
    assert result["collapsed"] is False  # the best epoch's, not the last's
    assert result["max_over_all_stages"] == 0.9  # Stage 1 included
    assert result["max_over_all_stages_by_metric"] == {"f1": 0.95, "accuracy": 0.9}
    assert result["reported"] == reported
    assert json.loads((tmp_path / "result.json").read_text()) == result


def test_the_run_folder_stays_locked_while_every_stage_trains(tmp_path, tiny_bert, rte_dir, monkeypatch):
    """Another process opening RUN/.lock cannot take it while a stage runs (a new open file description, as a
    second sat-ehft would have), and can once the run has ended."""
    import fcntl
    import os

    import sat_ehft.pipeline as pipeline

    seen, real = [], pipeline.run_stage

    def probing(spec, out, index, since):
        descriptor = os.open(tmp_path / "run" / ".lock", os.O_RDWR)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(descriptor)
        return real(spec, out, index, since)

    monkeypatch.setattr(pipeline, "run_stage", probing)
    run(spec_for("lp-ft", tiny_bert, rte_dir), tmp_path / "run", log=lambda line: None)
    assert seen == ["held", "held"]
    descriptor = os.open(tmp_path / "run" / ".lock", os.O_RDWR)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released at the end
    os.close(descriptor)


def test_only_rank_0_probes_the_run_folder(tmp_path, monkeypatch):
    """Every rank used to write and then delete RUN/.writable: two ranks sharing the folder (two ranks of a node,
    or two nodes on a shared filesystem) raced, the loser's delete failed, and its death left the others
    waiting in their first collective."""
    from sat_ehft import pipeline

    monkeypatch.setattr(pipeline, "is_main", lambda: False)
    pipeline.check_writable(tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(pipeline, "is_main", lambda: True)
    pipeline.check_writable(tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # made, probed, the probe removed
