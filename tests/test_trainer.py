"""One stage through deepspeed.initialize on CPU, on real RTE rows and a tiny BERT backbone."""

import copy
import json
import time

import pytest
import torch
from conftest import tiny_hf_model

from sat_ehft import metrics, trainer
from sat_ehft.backbone import load_backbone
from sat_ehft.classifier import build_classifier
from sat_ehft.config import Config
from sat_ehft.methods import get_method
from sat_ehft.tasks import get_task
from sat_ehft.trainer import LR_SCHEDULES as TRAINER_SCHEDULES
from sat_ehft.trainer import (NonFiniteLoss, StageBudget, StageFiles, evaluate, head_scores, linear_schedule,
                              make_optimizer, sat_annealing_schedule, train_stage)

CONFIG = Config(batch_size=8, micro_batch_size=4, eval_batch_size=16, max_length=64, warmup=0.1, clip_grad=1.0,
                checkpoint_minutes=0)


def classifier(tmp_path, task, stage, dropout=0.1):
    tiny_hf_model("bert", vocab=30522, hidden=32, layers=2, heads=4, dropout=dropout).save_pretrained(tmp_path / "bert")
    torch.manual_seed(0)
    return build_classifier(load_backbone(tmp_path / "bert"), task, stage, CONFIG)


def test_bitfit_stage_trains_only_its_parameters_and_logs_each_epoch(tmp_path, rte_features, minilm_tokenizer):
    task, train, dev = rte_features
    model, trainable = classifier(tmp_path, task, get_method("ehft-bitfit").stages[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    records, _ = train_stage(model, trainable, task, train, dev, CONFIG, StageBudget(lr=1e-2, epochs=3), seed=1,
                             pad_id=minilm_tokenizer.pad_token_id, files=StageFiles(tmp_path / "stage"))
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == trainable  # every trainable tensor moved, nothing else did
    logged = [json.loads(line) for line in (tmp_path / "stage" / "metrics.jsonl").read_text().splitlines()]
    assert logged == records and [r["epoch"] for r in logged] == [1, 2, 3]
    assert [r["step"] for r in logged] == [3, 6, 9]  # 24 rows / global batch 8
    assert logged[-1]["train_loss"] < logged[0]["train_loss"]
    # The logged dev accuracy is the model's: recompute it independently from its predictions.
    model.eval()
    from sat_ehft.batching import collate, model_inputs

    batch = collate(dev, minilm_tokenizer.pad_token_id)
    with torch.no_grad():
        scores = model.encode(**model_inputs(batch))
        predicted = (scores[:, 0] > 0).long()
    # Evaluation switches dropout off itself (the model trains with dropout 0.1) and puts the mode back.
    assert torch.allclose(head_scores(model.train(), dev, 7, minilm_tokenizer.pad_token_id, "cpu"), scores, atol=1e-6)
    assert model.training
    assert logged[-1]["accuracy"] == pytest.approx(metrics.accuracy(predicted.numpy(), batch["labels"].numpy()))
    assert evaluate(model, task, dev, 7, minilm_tokenizer.pad_token_id, "cpu") == {
        "accuracy": logged[-1]["accuracy"], "collapsed": len(set(predicted.tolist())) == 1}
    # Every evaluated epoch's dev predictions are kept with the gold labels (what a bootstrap resamples).
    kept = json.loads((tmp_path / "stage" / "dev_predictions.json").read_text())
    assert kept["gold"] == batch["labels"].tolist() and sorted(kept["epochs"]) == ["1", "2", "3"]
    assert kept["epochs"]["3"] == predicted.tolist()
    assert all(metrics.accuracy(kept["epochs"][str(r["epoch"])], kept["gold"]) == r["accuracy"] for r in logged)
    with torch.no_grad():  # a head that answers "not entailment" whatever the input: a collapsed run
        model.get_mixin("head").out.weight.zero_()
        model.get_mixin("head").out.bias.fill_(5.0)
    collapsed = evaluate(model, task, dev, 7, minilm_tokenizer.pad_token_id, "cpu")
    assert collapsed["collapsed"] is True
    assert collapsed["accuracy"] == pytest.approx(sum(f["label"] == 1 for f in dev) / len(dev))


def test_a_regression_run_collapses_when_its_predictions_barely_spread():
    import numpy as np

    from sat_ehft.trainer import collapsed

    stsb, gold = get_task("sts-b"), [0.0, 1.0, 4.5, 5.0]
    assert collapsed(np.array([2.5, 2.5001, 2.4999, 2.5]), gold, stsb)
    assert not collapsed(np.array([1.0, 2.0, 3.0, 4.0]), gold, stsb)
    assert not collapsed(np.array([1, 0, 0, 0]), [1, 0, 1, 0], get_task("rte"))


def test_linear_schedule_warms_up_then_decays_to_zero():
    multiplier = linear_schedule(total_steps=20, warmup_share=0.1)
    assert [multiplier(s) for s in (0, 1, 2, 11, 20)] == [0.5, 1.0, 1.0, 0.5, 0.0]


@pytest.mark.parametrize("total_steps, warmup", [(80, 0.1), (300, 0.1), (1500, 0.06), (2000, 0.25)])
def test_sat_annealing_schedule_holds_5_percent_for_100_steps_then_is_sats_annealing_lr(total_steps, warmup):
    """Over the first 100 steps the fork that ran (SAT 0.1.9, training/learning_rates.py:43-44) returns
    `start_lr * auto_warmup_rate`, a flat 5%, written out here; after them the reference is SAT 0.4.12's scheduler
    built as SAT's finetune loop builds it (iteration 0, linear decay), which the fork equals there."""
    from argparse import Namespace

    from sat.training.deepspeed_training import get_learning_rate_scheduler

    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    sats_optimizer, our_optimizer = optimizer(), optimizer()
    args = Namespace(lr_decay_iters=None, train_iters=total_steps, mode="finetune", warmup=warmup, lr=1.0,
                     lr_decay_style="linear", lr_decay_ratio=0.1)
    sats = get_learning_rate_scheduler(sats_optimizer, 0, args)
    ours = torch.optim.lr_scheduler.LambdaLR(our_optimizer, sat_annealing_schedule(total_steps, warmup))
    for step in range(total_steps):  # the LR each optimizer step uses, then the scheduler steps
        ours_now, sats_now = our_optimizer.param_groups[0]["lr"], sats_optimizer.param_groups[0]["lr"]
        if step + 1 <= 100:
            assert ours_now == 0.05 and sats_now <= 0.05, step  # 0.4.12 takes min(5%, the ramp) here
        else:
            assert ours_now == pytest.approx(sats_now, abs=1e-12), step
        sats.step()
        ours.step()
    if total_steps > 100 and warmup * total_steps > 2:  # where 0.4.12's ramp starts below 5%, the two differ
        assert sat_annealing_schedule(total_steps, warmup)(0) > min(0.05, 1 / (warmup * total_steps))


def test_the_config_picks_the_schedule_every_stage_runs(tmp_path, rte_features, minilm_tokenizer, capsys):
    """...and a stage that never leaves sat-annealing's hold says so when it starts."""
    from sat_ehft.config import LR_SCHEDULES

    assert set(LR_SCHEDULES) == set(TRAINER_SCHEDULES)
    capsys.readouterr()
    _, records = run_ft(tmp_path, rte_features, minilm_tokenizer.pad_token_id, "sat", lr_schedule="sat-annealing")
    assert [r["lr"] for r in records] == pytest.approx([1e-3 * 0.05] * 3)  # 9 steps: SAT holds 5% for 100
    assert ("warning: sat has 9 steps, all inside lr_schedule sat-annealing's hold at 5% of the LR for the first "
            "100 steps: it trains at 5e-05 throughout. Set lr_schedule=linear") in capsys.readouterr().err
    _, records = run_ft(tmp_path, rte_features, minilm_tokenizer.pad_token_id, "linear")
    assert [r["lr"] for r in records] == pytest.approx([1e-3 * m for m in map(linear_schedule(9, 0.1), (3, 6, 9))])
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("recipe, weight_decay", [("original", 0.01), ("paper", 0.1)])
def test_each_recipe_reaches_the_optimizer_and_deepspeed(recipe, weight_decay):
    from sat_ehft.config import load_config
    from sat_ehft.trainer import deepspeed_config

    config = load_config(overrides={"recipe": recipe})
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    optimizer = make_optimizer(model, {n for n, _ in model.named_parameters()}, 1e-3, config)
    assert [(len(g["params"]), g["weight_decay"], g["betas"], g["eps"]) for g in optimizer.param_groups] == \
        [(1, weight_decay, (0.9, 0.98), 1e-6), (3, 0.0, (0.9, 0.98), 1e-6)]
    ds = deepspeed_config(config, world_size=1)
    assert ds["gradient_clipping"] == 0.1
    assert "fp16" not in ds and "bf16" not in ds  # on CPU both recipes train in fp32


class Interrupted(Exception):
    """Stands in for a kill right after an epoch's checkpoint."""


def interrupt_after(epoch):
    def callback(model, record):
        if record["epoch"] == epoch:
            raise Interrupted

    return callback


def run_ft(tmp_path, rte_features, pad_id, folder, epochs=3, callbacks=(), **config):
    task, train, dev = rte_features
    model, trainable = classifier(tmp_path, task, get_method("ft").stages[0])
    config = Config(**{**CONFIG.__dict__, **config})
    records, _ = train_stage(model, trainable, task, train, dev, config, StageBudget(lr=1e-3, epochs=epochs), seed=4,
                             pad_id=pad_id, files=StageFiles(tmp_path / folder), callbacks=callbacks)
    return model, records


def test_interrupted_stage_resumes_and_ends_as_an_uninterrupted_run(tmp_path, rte_features, minilm_tokenizer, capsys):
    pad = minilm_tokenizer.pad_token_id
    whole, whole_records = run_ft(tmp_path, rte_features, pad, "whole")
    with pytest.raises(Interrupted):
        run_ft(tmp_path, rte_features, pad, "cut", callbacks=[interrupt_after(2)], checkpoint_minutes=0)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    capsys.readouterr()
    epochs_run = []
    resumed, resumed_records = run_ft(tmp_path, rte_features, pad, "cut",  # dropout is on: RNG must be restored
                                      callbacks=[lambda model, record: epochs_run.append(record["epoch"])])
    assert f"cut: resumed after epoch 2 from {tmp_path / 'cut' / 'checkpoint'}" in capsys.readouterr().out
    assert epochs_run == [3]  # resumed, not restarted: only the missing epoch trained
    assert resumed_records == whole_records
    assert (tmp_path / "cut" / "dev_predictions.json").read_text() == (tmp_path / "whole" / "dev_predictions.json").read_text()
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    steps = [json.loads(line) for line in (tmp_path / "cut" / "train_loss.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 10))
    assert [p.name for p in (tmp_path / "cut" / "checkpoint").iterdir() if p.is_dir()] == ["epoch3"]


def test_a_cpu_stage_records_the_cpu_time_its_process_used_not_its_wall_time(tmp_path, rte_features,
                                                                             minilm_tokenizer):
    """Asleep for 0.25 s after each of its 3 steps, the stage uses no CPU: its cpu_seconds leave that out (what
    tells a run slowed by other work on its cores from one that had them). A stage begun before the record
    existed does not start one halfway."""
    task, train, dev = rte_features
    model, trainable = classifier(tmp_path, task, get_method("ft").stages[0])
    older = StageFiles(tmp_path / "older")
    older.folder.mkdir()
    older.cost.write_text(json.dumps({"train_seconds": 5.0, "eval_seconds": 1.0, "checkpoint_seconds": 0.0,
                                      "checkpoint_bytes": 0, "checkpoints": 0}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        costs = [train_stage(model, trainable, task, train, dev, CONFIG, StageBudget(lr=1e-3, epochs=1), seed=1,
                             pad_id=minilm_tokenizer.pad_token_id, files=files,
                             step_callbacks=[lambda model, step: time.sleep(0.25)])[1]
                 for files in (StageFiles(tmp_path / "new"), older)]
    finally:
        torch.set_num_threads(threads)
    new, resumed = costs
    assert new["cpu_threads"] == 1
    assert 0 < new["cpu_seconds"] < new["train_seconds"] + new["eval_seconds"] - 3 * 0.25 * 0.9
    assert "cpu_seconds" not in resumed and resumed["train_seconds"] > 5.0


def test_freed_host_memory_is_released_at_its_step_cadence_and_after_each_evaluation(tmp_path, rte_features,
                                                                                   minilm_tokenizer, monkeypatch):
    from sat_ehft import host_memory

    released = []
    monkeypatch.setattr(host_memory, "RELEASE_EVERY_STEPS", 2)
    monkeypatch.setattr(host_memory, "MALLOC_TRIM", lambda pad: released.append(pad))
    task, train, dev = rte_features
    model, trainable = classifier(tmp_path, task, get_method("ft").stages[0])
    train_stage(model, trainable, task, train, dev, CONFIG, StageBudget(lr=1e-3, epochs=2), seed=1,
                pad_id=minilm_tokenizer.pad_token_id, files=StageFiles(tmp_path / "stage"))
    assert len(released) == 3 + 2  # steps 2, 4 and 6 (3 an epoch), and the two evaluations


def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path, rte_features, minilm_tokenizer):
    def poison(model, record):
        with torch.no_grad():
            model.get_mixin("head").out.bias.fill_(float("nan"))

    with pytest.raises(NonFiniteLoss, match=r"nan: steps 4-5: loss is nan at step 4; the last good checkpoint is kept"):
        run_ft(tmp_path, rte_features, minilm_tokenizer.pad_token_id, "nan", callbacks=[poison], log_every=5,
               checkpoint_minutes=0)
    checkpoints = tmp_path / "nan" / "checkpoint"
    assert (checkpoints / "latest").read_text().strip() == "epoch1"
    saved = torch.load(checkpoints / "epoch1" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["module"].values())


def test_the_loss_is_read_on_the_host_at_logging_points_only(tmp_path, rte_features, minilm_tokenizer, monkeypatch):
    """Host reads of tensors from the trainer's own code: one per logging point plus one per epoch's mean loss,
    never one per step; yet every step's loss is logged, the same whatever log_every is."""
    import sys

    import sat_ehft.trainer

    reads = []
    for name in ("item", "tolist", "__bool__", "__float__"):
        def counted(tensor, *args, _original=getattr(torch.Tensor, name), _name=name):
            if sys._getframe(1).f_code.co_filename == sat_ehft.trainer.__file__:
                reads.append(_name)
            return _original(tensor, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    logs = {}
    for log_every in (100, 1):
        reads.clear()
        run_ft(tmp_path, rte_features, minilm_tokenizer.pad_token_id, f"every{log_every}", epochs=2, log_every=log_every)
        rows = (tmp_path / f"every{log_every}" / "train_loss.jsonl").read_text().splitlines()
        logs[log_every] = ([json.loads(row) for row in rows], len(reads))
    assert logs[100][1] == 2 * 2  # per epoch: the steps' losses at its end; its mean loss, accuracy, head norm
    assert logs[1][1] == 2 * (3 + 1)  # per epoch: each of its 3 steps; its means
    assert [r["loss"] for r in logs[100][0]] == [r["loss"] for r in logs[1][0]] and len(logs[1][0]) == 6
    # the backbone's gradient norm is taken at logging points only: every step here, never in 3-step epochs there
    assert all(r["backbone_grad_norm"] > 0 for r in logs[1][0]) and all(len(r) == 2 for r in logs[100][0])


def test_the_backbone_gradient_norm_covers_the_trained_backbone_tensors_only():
    from types import SimpleNamespace

    from sat_ehft.trainer import backbone_grad_norm

    model = torch.nn.Module()
    model.transformer, model.mixins = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)  # backbone, head
    grads = {"transformer.weight": torch.randn(2, 3), "transformer.bias": torch.randn(2), "mixins.weight": torch.randn(1, 2)}
    for name, parameter in model.named_parameters():
        parameter.grad = grads.get(name, torch.randn_like(parameter))
    engine = SimpleNamespace(module=model, optimizer=None)
    expected = torch.cat([grads["transformer.weight"].flatten(), grads["transformer.bias"]]).norm()
    assert backbone_grad_norm(engine, {"transformer.weight", "transformer.bias"}, "fp32") == pytest.approx(expected)
    assert backbone_grad_norm(engine, set(), "fp32") is None


def test_training_accuracy_and_head_norm_per_epoch(tmp_path, rte_features, minilm_tokenizer):
    """With LR 0 and no dropout the model does not change while it trains, so the epoch's training accuracy is
    the accuracy of its predictions on the training rows."""
    task, train, dev = rte_features
    model, trainable = classifier(tmp_path, task, get_method("ft").stages[0], dropout=0.0)
    records, _ = train_stage(model, trainable, task, train, dev, CONFIG, StageBudget(lr=0.0, epochs=1), seed=1,
                             pad_id=minilm_tokenizer.pad_token_id, files=StageFiles(tmp_path / "stage"))
    assert records[0]["train_accuracy"] == pytest.approx(
        evaluate(model, task, train, 8, minilm_tokenizer.pad_token_id, "cpu")["accuracy"])
    head = torch.cat([p.detach().flatten() for p in model.get_mixin("head").parameters()])
    assert records[0]["head_norm"] == pytest.approx(head.norm().item())


@pytest.mark.parametrize("precision, zero_stage, grouped", [("fp32", 1, True), ("bf16", 0, False), ("bf16", 2, False)])
def test_precisions_and_zero_stages_train(tmp_path, rte_features, minilm_tokenizer, precision, zero_stage, grouped):
    task, train, dev = rte_features
    config = Config(**{**CONFIG.__dict__, "precision": precision, "zero_stage": zero_stage, "group_by_length": grouped})
    model, trainable = classifier(tmp_path, task, get_method("ehft-lora").stages[0])
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    records, _ = train_stage(model, trainable, task, train, dev, config, StageBudget(lr=1e-2, epochs=2), seed=1,
                             pad_id=minilm_tokenizer.pad_token_id, files=StageFiles(tmp_path / "stage"))
    assert [r["step"] for r in records] == [3, 6]  # micro-batch 4, accumulation 2: 24 rows make 3 steps
    params = dict(model.named_parameters())
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert {p.dtype for p in params.values()} == {dtype}
    moved = {n for n in before if not torch.equal(before[n].to(dtype), params[n].detach())}  # frozen: only cast
    assert moved == trainable


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_one_process_stage_all_reduces_no_gradient_and_trains_as_with_deepspeeds_all_reduce(
        tmp_path, rte_features, minilm_tokenizer, monkeypatch, precision):
    task, train, dev = rte_features
    config = Config(**{**CONFIG.__dict__, "precision": precision})
    reduced, all_reduce = [], torch.distributed.all_reduce  # the element count of each all-reduced tensor
    monkeypatch.setattr(torch.distributed, "all_reduce",
                        lambda tensor, *args, **kwargs: reduced.append(tensor.numel()) or all_reduce(tensor, *args,
                                                                                                    **kwargs))

    def trained(name):
        """The parameters after 2 epochs of FT, and how many elements were all-reduced on the way."""
        model, trainable = classifier(tmp_path, task, get_method("ft").stages[0])
        reduced.clear()
        train_stage(model, trainable, task, train, dev, config, StageBudget(lr=1e-2, epochs=2), seed=1,
                    pad_id=minilm_tokenizer.pad_token_id, files=StageFiles(tmp_path / name))
        gradient_elements = sum(p.numel() for n, p in model.named_parameters() if n in trainable)
        return {n: p.detach().clone() for n, p in model.named_parameters()}, sum(reduced), gradient_elements

    skipped, skipped_elements, gradient_elements = trained("skipped")
    monkeypatch.setattr(trainer, "skip_lone_all_reduce", lambda *args: None)
    with_all_reduce, reduced_elements, _ = trained("with-all-reduce")
    assert reduced_elements >= 6 * gradient_elements  # DeepSpeed's own: every gradient at each of the 6 steps
    assert skipped_elements < 100  # a few scalars (the clipping norm) at most
    assert skipped.keys() == with_all_reduce.keys()
    assert all(torch.equal(skipped[n], with_all_reduce[n]) for n in skipped)  # bit for bit


def test_optimizer_is_fused_adamw_without_decay_on_vectors_and_steps_like_plain_adamw():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
    trainable = {"0.weight", "0.bias", "1.weight", "2.weight"}  # 1.bias and 2.bias stay frozen
    config = Config(weight_decay=0.1)
    optimizer = make_optimizer(model, trainable, 1e-2, config)
    assert optimizer.defaults["fused"]
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = ({names[id(p)] for p in group["params"]} for group in optimizer.param_groups)
    assert decayed == {"0.weight", "2.weight"} and plain == {"0.bias", "1.weight"}
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    reference_model = copy.deepcopy(model)
    reference = torch.optim.AdamW(  # torch's single-tensor loop, the textbook update
        [{"params": [p for n, p in reference_model.named_parameters() if n in decayed], "weight_decay": 0.1},
         {"params": [p for n, p in reference_model.named_parameters() if n in plain], "weight_decay": 0.0}],
        lr=1e-2, betas=config.adam_betas, eps=config.adam_eps, foreach=False)
    x = torch.randn(8, 6)
    for net, opt in ((model, optimizer), (reference_model, reference)):
        for _ in range(3):
            net(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    for (name, got), expected in zip(model.named_parameters(), reference_model.parameters()):
        assert torch.allclose(got, expected, atol=1e-6), name
    assert torch.equal(model[2].bias, reference_model[2].bias)


@pytest.fixture
def fresh_wandb():
    """wandb keeps its settings (WANDB_MODE, as the first wandb.init of the process saw it) in a process-wide
    singleton: each test starts and ends without one."""
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()


def wandb_records(path):
    """The protobuf records of a .wandb file: LevelDB-style log blocks, as wandb writes them."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending, records = path.read_bytes(), 7, b"", []  # 7: the ":W&B" file header
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = 32768 - position % 32768  # records never cross a 32 KiB block; a short tail is padding
        if left < 7:
            position += left
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        if position + 7 + length > len(data):  # still being written
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def wandb_history(folder, timeout=30):
    """The history rows ({key: value}, by step) of the one offline Weights & Biases run under `folder`. wandb's
    service may still be writing the file when finish() returns: wait for its exit record."""
    import time

    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    records = wandb_records(path)
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = wandb_records(path)
    rows = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.setdefault(items["_step"], {}).update(items)
    return rows


def test_report_to_wandb_offline_gets_the_logged_losses_and_metrics(tmp_path, rte_features, minilm_tokenizer,
                                                                     monkeypatch, fresh_wandb):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    task, train, dev = rte_features
    config = Config(**{**CONFIG.__dict__, "report_to": ("wandb",)})
    model, trainable = classifier(tmp_path, task, get_method("ehft-bitfit").stages[0])
    records, _ = train_stage(model, trainable, task, train, dev, config, StageBudget(lr=1e-2, epochs=2), seed=1,
                             pad_id=minilm_tokenizer.pad_token_id, files=StageFiles(tmp_path / "run" / "stage1"))
    history = wandb_history(tmp_path / "run" / "stage1")
    steps = [json.loads(line) for line in (tmp_path / "run" / "stage1" / "train_loss.jsonl").read_text().splitlines()]
    assert {step: row["train/loss"] for step, row in history.items()} == {s["step"]: s["loss"] for s in steps}
    for record in records:
        assert {k: history[record["step"]][f"dev/{k}"] for k in ("accuracy", "collapsed")} == \
            {k: record[k] for k in ("accuracy", "collapsed")}
        assert {k: history[record["step"]][f"epoch/{k}"] for k in record if k not in ("accuracy", "collapsed", "step")} \
            == {k: v for k, v in record.items() if k not in ("accuracy", "collapsed", "step")}
    assert not (tmp_path / "run" / "stage1" / "tensorboard").exists()  # only what report_to names


def test_report_to_wandb_without_a_login_says_what_to_do(tmp_path, monkeypatch, fresh_wandb):
    from sat_ehft.tracking import Trackers

    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    config = Config(report_to=("wandb",))
    with pytest.raises(RuntimeError, match=r"report_to names wandb, but Weights & Biases did not start \(.*API key.*\)\. "
                                           r"Run `wandb login` or set WANDB_API_KEY; WANDB_MODE=offline"):
        Trackers(StageFiles(tmp_path / "run" / "stage1"), config, rank=0)
    assert Trackers(StageFiles(tmp_path / "run" / "stage1"), config, rank=1).trackers == []  # only rank 0 reports


def test_each_epoch_trains_on_a_fresh_order_drawn_from_the_seed(tmp_path, rte_features, minilm_tokenizer, monkeypatch):
    """Epoch e visits the training rows in torch.randperm(n) drawn from seed + e (PyTorch's DistributedSampler's
    definition), a new order every epoch (SAT's loop reused one)."""
    task, train, _ = rte_features
    seen = record_training_rows(monkeypatch, train)
    run_ft(tmp_path, rte_features, minilm_tokenizer.pad_token_id, "order", epochs=2)
    orders = [torch.randperm(len(train), generator=torch.Generator().manual_seed(4 + epoch)).tolist() for epoch in (0, 1)]
    assert orders[0] != orders[1] and seen == orders[0] + orders[1]


def record_training_rows(monkeypatch, train):
    """The list that will hold the training rows (indices into `train`) in the order batches are made of them."""
    import sat_ehft.data_order as data_order

    row_of, seen, collate = {id(f): i for i, f in enumerate(train)}, [], data_order.collate

    def recording(features, pad_id):
        seen.extend(row_of[id(f)] for f in features if id(f) in row_of)  # training rows only, not dev
        return collate(features, pad_id)

    monkeypatch.setattr(data_order, "collate", recording)
    return seen


# 22 rows, global batch 8: 66 / 8 -> 9 steps over 3 epochs, the last of 2 rows; an evaluation every 22 // 8 = 2 steps
ORIGINAL_STEPS, ORIGINAL_EPOCHS = [2, 4, 6, 8, 9], [round(8 * s / 22, 4) for s in (2, 4, 6, 8)] + [3.0]


def test_the_original_order_repeats_one_permutation_and_resumes_mid_stage(tmp_path, rte_features, minilm_tokenizer,
                                                                         monkeypatch):
    """data_order original: one permutation per seed, the same every epoch (and, drawn from the seed alone, in a
    later stage); batches run across epoch boundaries (ceil(N x E / B) steps, the LR schedule spread over them);
    dev evaluated every N // B steps and after the last. A stage killed after its second evaluation resumes
    there and ends bit-identical to the uninterrupted run."""
    from sat_ehft.data_order import OriginalOrder

    task, train, dev = rte_features
    features, pad = (task, train[:22], dev), minilm_tokenizer.pad_token_id
    seen = record_training_rows(monkeypatch, train)
    whole, records = run_ft(tmp_path, features, pad, "whole", data_order="original")
    assert sorted(seen[:22]) == list(range(22)) and seen[:22] != list(range(22)) and seen == seen[:22] * 3
    stage2 = OriginalOrder(train[:22], CONFIG, 5, 0, 1, seed=4, pad_id=pad)  # another stage's plan, same seed
    assert stage2.order.tolist() == seen[:22] * 5
    assert [r["step"] for r in records] == ORIGINAL_STEPS and [r["epoch"] for r in records] == ORIGINAL_EPOCHS
    assert all("accuracy" in r for r in records)
    assert [r["lr"] for r in records] == pytest.approx([1e-3 * linear_schedule(9, 0.1)(s) for s in ORIGINAL_STEPS])
    kept = json.loads((tmp_path / "whole" / "dev_predictions.json").read_text())
    assert sorted(kept["epochs"], key=float) == [str(e) for e in ORIGINAL_EPOCHS]
    with pytest.raises(Interrupted):
        run_ft(tmp_path, features, pad, "cut", callbacks=[interrupt_after(ORIGINAL_EPOCHS[1])], data_order="original",
               checkpoint_minutes=0)
    trained = []
    resumed, resumed_records = run_ft(tmp_path, features, pad, "cut", data_order="original",
                                      callbacks=[lambda model, record: trained.append(record["step"])])
    assert trained == ORIGINAL_STEPS[2:]  # resumed after the second evaluation, not restarted
    assert resumed_records == records
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_the_original_order_splits_each_global_batch_over_ranks_and_accumulation_steps():
    """2 ranks x 2 micro-batches of 3 make a global batch of 12: each step's micro-batches, over the ranks, are
    exactly that step's 12 rows of the repeated permutation; the last, partial batch (30 x 2 = 60 rows = 5
    batches) fills every part, repeating rows where it has fewer than parts."""
    from sat_ehft.data_order import OriginalOrder

    config = Config(batch_size=12, micro_batch_size=3)
    features = [{"label": 0}] * 31
    plans = [OriginalOrder(features, config, 2, rank, 2, seed=7, pad_id=0) for rank in (0, 1)]
    stream = plans[0].order.tolist()
    assert plans[0].total_steps == 6 and plans[0].rounds == 3  # ceil(62 / 12); an evaluation every 31 // 12 = 2
    for step in range(5):
        parts = [part for plan in plans for part in plan.micro_batches(step)]
        assert all(len(part) == 3 for part in parts)
        assert sorted(i for part in parts for i in part) == sorted(stream[12 * step:12 * step + 12])
    last = [part for plan in plans for part in plan.micro_batches(5)]  # 2 rows left for 4 parts
    assert all(len(part) == 1 for part in last) and {i for part in last for i in part} == set(stream[60:])


def test_report_to_tensorboard_writes_the_logged_losses_and_metrics(tmp_path, rte_features, minilm_tokenizer):
    """The event files read back with TensorBoard's own reader hold every step's loss and every epoch's dev
    metrics, as the JSONL logs have them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task, train, dev = rte_features
    config = Config(**{**CONFIG.__dict__, "report_to": ("tensorboard",)})
    model, trainable = classifier(tmp_path, task, get_method("ft").stages[0])
    records, _ = train_stage(model, trainable, task, train, dev, config, StageBudget(lr=1e-3, epochs=2), seed=1,
                             pad_id=minilm_tokenizer.pad_token_id, files=StageFiles(tmp_path / "stage"))
    events = EventAccumulator(str(tmp_path / "stage" / "tensorboard"))
    events.Reload()
    steps = [json.loads(line) for line in (tmp_path / "stage" / "train_loss.jsonl").read_text().splitlines()]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (s["step"], pytest.approx(s["loss"], rel=1e-6)) for s in steps]
    assert [(e.step, e.value) for e in events.Scalars("dev/accuracy")] == [
        (r["step"], pytest.approx(r["accuracy"], rel=1e-6)) for r in records]
    # dev/ holds the dev metrics only; the epoch's training loss, LR and the like are under epoch/
    assert {tag for tag in events.Tags()["scalars"] if tag.startswith("dev/")} == {"dev/accuracy", "dev/collapsed"}
    assert [(e.step, e.value) for e in events.Scalars("epoch/train_loss")] == [
        (r["step"], pytest.approx(r["train_loss"], rel=1e-6)) for r in records]
    assert {"epoch/lr", "epoch/train_accuracy", "epoch/head_norm", "epoch/epoch"} <= set(events.Tags()["scalars"])


def test_a_stages_wandb_run_id_is_the_same_at_every_start_and_differs_between_stages(tmp_path, monkeypatch,
                                                                                      fresh_wandb):
    """A resumed stage reports into the run it started, not a new one: the id comes from the stage folder."""
    from sat_ehft.tracking import WandB

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = []
    for folder in ("stage1", "stage1", "stage2"):
        tracker = WandB(StageFiles(tmp_path / "run" / folder), CONFIG)
        ids.append(tracker.run.id)
        tracker.close()
    assert ids[0] == ids[1] != ids[2]
