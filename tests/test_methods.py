"""Every registered method: its stages, its exact trainable set, its budget split; plus the objectives."""

import pytest
import torch
from conftest import tiny_hf_model

from sat_ehft.backbone import load_backbone
from sat_ehft.batching import collate, model_inputs
from sat_ehft.classifier import build_classifier
from sat_ehft.config import Config
from sat_ehft.methods import METHODS, get_method
from sat_ehft.objective import loss, predict
from sat_ehft.tasks import Encoding, encode_examples, get_task

TABLE1 = ["bitfit", "child-tuning-d", "ehft-bitfit", "ehft-bitfit-reserve", "ehft-lora", "ehft-lora-reserve", "ehft-prefix",
          "ft", "lora", "lp", "lp-ft", "mixout", "prefix", "topk"]
CONFIG = Config(lora_r=2, prefix_len=3, top_k=1)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "roberta"
    tiny_hf_model("roberta", hidden=32, layers=2, heads=4).save_pretrained(folder)
    return folder


def expected_trainable(policy, names):
    """What each policy should train, written out independently of the implementation."""
    head = {n for n in names if n.startswith("mixins.head.")}
    select = {
        "all": set(names),
        "head": set(),
        "bias": {n for n in names if n.endswith(".bias") and not n.startswith("mixins.")},
        "lora": {n for n in names if n.startswith("mixins.lora.")},
        "prefix": {n for n in names if n.startswith("mixins.prefix.")},
        # top 1 of 2 HF layers: SAT layer 1 minus its input LayerNorm (HF layer 0's), plus the final LayerNorm
        "topk": {n for n in names if (n.startswith("transformer.layers.1.") and "input_layernorm" not in n)
                 or n.startswith("transformer.final_layernorm.")},
    }[policy]
    return head | select


def test_registry_covers_table1():
    assert sorted(METHODS) == TABLE1
    with pytest.raises(KeyError, match="unknown method 'mixout-x'; known methods: bitfit, child-tuning-d, ehft-bitfit"):
        get_method("mixout-x")


@pytest.mark.parametrize("name", TABLE1)
def test_each_stage_trains_exactly_its_parameters(hf_folder, name):
    task = get_task("rte")
    for stage in get_method(name).stages:
        model, trainable = build_classifier(load_backbone(hf_folder), task, stage, CONFIG)
        names = [n for n, _ in model.named_parameters()]
        assert trainable == expected_trainable(stage.trains, names)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
        assert set(model.mixins) == {"hidden-states", "sdpa-attention", "head", *stage.mixins}
        if stage.trains != "all":
            assert len(trainable) < len(names)


@pytest.mark.parametrize("name", ["bitfit", "ehft-bitfit", "ehft-bitfit-reserve", "topk"])
def test_the_original_codes_bitfit_and_topk_sets(hf_folder, name):
    """BitFit without the final LayerNorm's bias; Top-K as `all[21-23]`: SAT's last layers whole, the final
    LayerNorm frozen (here the top 1 of 2 layers)."""
    config = Config(**{**CONFIG.__dict__, "bitfit_final_layernorm": False, "top_k_layers": "sat"})
    stage = get_method(name).stages[0]
    model, trainable = build_classifier(load_backbone(hf_folder), get_task("rte"), stage, config)
    names = [n for n, _ in model.named_parameters()]
    head = {n for n in names if n.startswith("mixins.head.")}
    if stage.trains == "bias":
        expected = {n for n in names if n.endswith(".bias") and not n.startswith("mixins.")}
        expected.discard("transformer.final_layernorm.bias")
    else:
        expected = {n for n in names if n.startswith("transformer.layers.1.")}
    assert trainable == head | expected
    assert "transformer.layers.1.input_layernorm.weight" in trainable or stage.trains == "bias"


def test_the_config_reaches_the_lora_and_mixout_a_stage_builds(hf_folder):
    """lora_targets decides which projections get LoRA tensors; mixout_draw and mixout_zero_dropout reach the
    Mixout mixin (the original recipe's column draw and zero dropout), and the model's dropouts."""
    config = Config(**{**CONFIG.__dict__, "lora_targets": ("key", "dense"), "mixout_draw": "column",
                       "mixout_zero_dropout": True, "mixout_p": 0.8})
    model, _ = build_classifier(load_backbone(hf_folder), get_task("rte"), get_method("lora").stages[0], config)
    lora = [name for name, _ in model.named_parameters() if name.startswith("mixins.lora.")]  # ...layers.0.key_A
    adapted = {name.split(".")[4].rsplit("_", 1)[0] for name in lora}
    assert adapted == {"key", "dense"} and model.get_mixin("lora").targets == ("key", "dense")
    model, _ = build_classifier(load_backbone(hf_folder), get_task("rte"), get_method("mixout").stages[0], config)
    mixout = model.get_mixin("mixout")
    assert (mixout.p, mixout.draw, mixout.zero_dropout) == (0.8, "column", True)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}


def test_stage_plans():
    ehft = get_method("ehft-lora")
    assert [s.name for s in ehft.stages] == ["stage1", "stage2"]
    assert ehft.stages[0].peak_lr(CONFIG) == 5e-4 and ehft.stages[1].peak_lr(CONFIG) == CONFIG.lr
    assert ehft.stages[1].mixins == () and ehft.stages[1].carries == ("head",)
    assert get_method("ehft-lora-reserve").stages[1].carries == ("head", "lora")
    assert get_method("ehft-prefix").stages[0].peak_lr(CONFIG) == 5e-3
    assert get_method("lp-ft").stages[0].peak_lr(CONFIG) == 1e-3  # the original code's LP rate


@pytest.mark.parametrize("epochs, share, mode, expected", [
    (60, 0.1, "share-of-total", [6, 54]), (10, 0.1, "share-of-total", [1, 9]), (400, 0.3, "share-of-total", [120, 280]),
    (60, 0.5, "stage2-fixed", [30, 54]), (20, 0.9, "stage2-fixed", [18, 18]),
])
def test_stage_budgets(epochs, share, mode, expected):
    config = Config(epochs=epochs, stage1_share=share, stage1_mode=mode)
    assert get_method("ehft-bitfit").stage_epochs(config) == expected
    assert get_method("ft").stage_epochs(config) == [epochs]


@pytest.mark.parametrize("task_name, objective, outputs", [
    ("rte", "binary", 1), ("cb", "multiclass", 3), ("copa", "choice", 1), ("sts-b", "regression", 1),
    ("wic", "binary", 1)])
def test_heads_fit_tasks_end_to_end(tmp_path, shared_data, minilm_tokenizer, task_name, objective, outputs):
    """Real rows -> collated batch -> BERT backbone + head -> scores, loss and predictions."""
    task = get_task(task_name)
    assert task.objective == objective and task.head_outputs == outputs
    tiny_hf_model("bert", vocab=30522, hidden=32, layers=1, heads=4).save_pretrained(tmp_path / "bert")
    model, _ = build_classifier(load_backbone(tmp_path / "bert"), task, get_method("ft").stages[0], CONFIG)
    features = encode_examples(task, task.read(shared_data, "dev")[:6], minilm_tokenizer, Encoding(64))
    batch = collate(features, minilm_tokenizer.pad_token_id)
    scores = model.eval().encode(**model_inputs(batch))
    assert scores.shape == ((6, 2) if objective == "choice" else (6, outputs))
    value = loss(scores, batch["labels"], objective)
    assert value.ndim == 0 and torch.isfinite(value)
    assert predict(scores, objective).shape == (6,)


def test_losses_match_torch_references():
    torch.manual_seed(0)
    scores, binary = torch.randn(5, 1), torch.tensor([0, 1, 1, 0, 1])
    expected = -(binary * torch.log(torch.sigmoid(scores[:, 0])) + (1 - binary) * torch.log(1 - torch.sigmoid(scores[:, 0]))).mean()
    assert torch.allclose(loss(scores, binary, "binary"), expected)
    assert torch.equal(predict(scores, "binary"), (scores[:, 0] > 0).long())
    multi, labels = torch.randn(5, 3), torch.tensor([2, 0, 1, 1, 0])
    assert torch.allclose(loss(multi, labels, "multiclass"), -torch.log_softmax(multi, -1)[range(5), labels].mean())
    target = torch.rand(5) * 5
    assert torch.allclose(loss(scores, target, "regression"), ((scores[:, 0] - target) ** 2).mean())


def test_collate_pads_to_the_batch_maximum_and_groups_choices():
    features = [{"input_ids": [[5, 6, 7], [5, 8]], "token_type_ids": [[0, 0, 0], [0, 0]], "label": 1},
                {"input_ids": [[5], [5, 9, 9, 9]], "token_type_ids": [[0], [0, 0, 0, 0]], "label": 0}]
    batch = collate(features, pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [5, 8, 1, 1], [5, 1, 1, 1], [5, 9, 9, 9]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 2, 1, 4] and batch["labels"].tolist() == [1, 0]


def test_length_grouped_batches_cover_every_example_once_with_less_padding():
    import random

    from torch.utils.data import DistributedSampler

    from sat_ehft.batching import LengthGroupedBatches

    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(1000)]
    sampler = DistributedSampler(lengths, num_replicas=2, rank=1, shuffle=True, seed=3)
    grouped = LengthGroupedBatches(sampler, lengths, batch_size=16, pool=10, seed=3)
    grouped.set_epoch(0)
    first = list(grouped)
    assert sorted(i for batch in first for i in batch) == sorted(sampler)  # this rank's half, each once
    assert len(first) == len(grouped) == 32

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    plain = [list(sampler)[i:i + 16] for i in range(0, 500, 16)]
    assert padding(first) < padding(plain) / 3
    assert list(grouped) == first  # deterministic for a seed and epoch
    grouped.set_epoch(1)
    assert list(grouped) != first
