"""One stage through deepspeed.initialize on CPU, on real RTE rows and a tiny BERT backbone."""

import json

import pytest
import torch
from conftest import tiny_hf_model

from sat_ehft import metrics
from sat_ehft.backbone import load_backbone
from sat_ehft.classifier import build_classifier
from sat_ehft.config import Config
from sat_ehft.methods import get_method
from sat_ehft.tasks import encode_examples, get_task
from sat_ehft.trainer import NonFiniteLoss, StageBudget, evaluate, linear_schedule, train_stage

CONFIG = Config(batch_size=8, micro_batch_size=4, eval_batch_size=16, max_length=64, warmup=0.1, clip_grad=1.0)


@pytest.fixture(scope="module")
def rte_features(shared_data, minilm_tokenizer):
    task = get_task("rte")
    train = encode_examples(task, task.read(shared_data, "train")[:24], minilm_tokenizer, 64)
    dev = encode_examples(task, task.read(shared_data, "dev")[:20], minilm_tokenizer, 64)
    return task, train, dev


def classifier(tmp_path, task, stage):
    tiny_hf_model("bert", vocab=30522, hidden=32, layers=2, heads=4).save_pretrained(tmp_path / "bert")
    torch.manual_seed(0)
    return build_classifier(load_backbone(tmp_path / "bert"), task, stage, CONFIG)


def test_bitfit_stage_trains_only_its_parameters_and_logs_each_epoch(tmp_path, rte_features, minilm_tokenizer):
    task, train, dev = rte_features
    model, trainable = classifier(tmp_path, task, get_method("ehft-bitfit").stages[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    records = train_stage(model, trainable, task, train, dev, CONFIG, StageBudget(lr=1e-2, epochs=3), seed=1,
                          pad_id=minilm_tokenizer.pad_token_id, log_path=tmp_path / "metrics.jsonl")
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == trainable  # every trainable tensor moved, nothing else did
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == records and [r["epoch"] for r in logged] == [1, 2, 3]
    assert [r["step"] for r in logged] == [3, 6, 9]  # 24 rows / global batch 8
    assert logged[-1]["train_loss"] < logged[0]["train_loss"]
    # The logged dev accuracy is the model's: recompute it independently from its predictions.
    model.eval()
    from sat_ehft.batching import collate, model_inputs

    batch = collate(dev, minilm_tokenizer.pad_token_id)
    with torch.no_grad():
        predicted = (model.encode(**model_inputs(batch))[:, 0] > 0).long()
    assert logged[-1]["accuracy"] == pytest.approx(metrics.accuracy(predicted.numpy(), batch["labels"].numpy()))
    assert evaluate(model, task, dev, 7, minilm_tokenizer.pad_token_id, "cpu") == {"accuracy": logged[-1]["accuracy"]}


def test_non_finite_loss_names_the_step(tmp_path, rte_features, minilm_tokenizer):
    task, train, dev = rte_features
    model, trainable = classifier(tmp_path, task, get_method("ft").stages[0])
    with torch.no_grad():
        model.get_mixin("head").out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 1: loss is nan"):
        train_stage(model, trainable, task, train, dev, CONFIG, StageBudget(lr=1e-3, epochs=1), seed=1,
                    pad_id=minilm_tokenizer.pad_token_id, log_path=tmp_path / "metrics.jsonl")


def test_linear_schedule_warms_up_then_decays_to_zero():
    multiplier = linear_schedule(total_steps=20, warmup_share=0.1)
    assert [multiplier(s) for s in (0, 1, 2, 11, 20)] == [0.5, 1.0, 1.0, 0.5, 0.0]
