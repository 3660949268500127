"""The SAT backbone carries the HF weights exactly: hidden states match HF transformers."""

import json
import time

import pytest
import torch
from conftest import padded_batch, perturb_, tiny_hf_model

from sat_ehft.backbone import BertBackbone, RobertaBackbone, load_backbone
from sat_ehft.convert import convert_hf_folder, sat_model_config, write_sat_checkpoint
from sat_ehft.hub import HubUnavailable

SHAPES = [dict(hidden=32, layers=2, heads=4), dict(hidden=48, layers=3, heads=6), dict(hidden=64, layers=1, heads=2)]


def hf_and_sat(tmp_path, kind, **shape):
    hf = tiny_hf_model(kind, **shape)
    hf.save_pretrained(tmp_path / "hf")
    return hf, load_backbone(tmp_path / "hf").model.eval()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("type_vocab", [1, 2])
def test_roberta_matches_hf_on_padded_batches(tmp_path, shape, type_vocab):
    hf, sat = hf_and_sat(tmp_path, "roberta", type_vocab=type_vocab, **shape)
    # A dropped (rather than folded) token-type row would shift every token by this much.
    assert hf.embeddings.token_type_embeddings.weight[0].abs().max() > 0.1
    ids, mask = padded_batch(120, [17, 9, 4, 17], pad_id=hf.config.pad_token_id)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = sat.encode(ids, mask)
    assert isinstance(sat, RobertaBackbone)
    assert (got - expected)[mask.bool()].abs().max() < 1e-5


@pytest.mark.parametrize("shape", SHAPES)
def test_bert_matches_hf_with_token_types(tmp_path, shape):
    hf, sat = hf_and_sat(tmp_path, "bert", **shape)
    ids, mask = padded_batch(120, [12, 20, 5], pad_id=0, seed=1)
    types = (torch.arange(ids.shape[1]) >= 6).long().expand_as(ids) * mask
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = sat.encode(ids, mask, types)
        without_types = sat.encode(ids, mask)
    assert isinstance(sat, BertBackbone)
    assert (got - expected)[mask.bool()].abs().max() < 1e-5
    assert (without_types - expected)[mask.bool()].abs().max() > 1e-3  # the token types are really used


def test_minilm_matches_hf(minilm_dir, minilm_tokenizer, shared_data):
    from transformers import BertModel

    from sat_ehft.tasks import get_task

    task = get_task("rte")
    examples = task.read(shared_data, "dev")[:8]
    batch = minilm_tokenizer([e.fields["premise"] for e in examples], [e.fields["hypothesis"] for e in examples],
                             padding=True, truncation=True, max_length=128, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # really padded
    hf = BertModel.from_pretrained(str(minilm_dir)).eval()
    sat = load_backbone(minilm_dir).model.eval()
    with torch.no_grad():
        expected = hf(**batch).last_hidden_state
        got = sat.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert (got - expected)[batch["attention_mask"].bool()].abs().max() < 1e-4


def test_sat_automodel_loads_converted_folder(tmp_path):
    from sat.model.base_model import AutoModel

    hf = tiny_hf_model("roberta")
    hf.save_pretrained(tmp_path / "hf")
    convert_hf_folder(tmp_path / "hf", tmp_path / "sat")
    ours = load_backbone(tmp_path / "sat").model.eval()
    theirs, _ = AutoModel.from_pretrained(str(tmp_path / "sat"))
    assert type(theirs) is RobertaBackbone
    theirs.eval()
    ids, mask = padded_batch(120, [10, 6], pad_id=1)
    with torch.no_grad():
        assert torch.equal(theirs.encode(ids, mask), ours.encode(ids, mask))


def test_sat_native_checkpoint_loads_without_lm_head(tmp_path):
    """A folder written by SAT's own RobertaModel (LM head included) loads as a backbone."""
    from sat.model.official.roberta_model import RobertaModel

    hf = tiny_hf_model("roberta")
    config = {**sat_model_config(hf.config.to_dict()), "model_class": "RobertaModel"}
    args = RobertaModel.get_args(**{k: v for k, v in config.items() if k != "model_class"})
    native = perturb_(RobertaModel(args))
    (tmp_path / "native").mkdir()
    write_sat_checkpoint(tmp_path / "native", config, native.state_dict())
    loaded = load_backbone(tmp_path / "native").model
    expected = {k: v for k, v in native.state_dict().items() if not k.startswith("mixins.bert-final.")}
    assert set(loaded.state_dict()) == set(expected)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())


def test_conversion_is_cached(tmp_path):
    hf = tiny_hf_model("bert")
    hf.save_pretrained(tmp_path / "hf")
    first = load_backbone(tmp_path / "hf", cache_dir=tmp_path / "cache").folder
    stamp = (first / "1" / "mp_rank_00_model_states.pt").stat().st_mtime_ns
    second = load_backbone(tmp_path / "hf", cache_dir=tmp_path / "cache").folder
    assert first == second and list((tmp_path / "cache").iterdir()) == [first]
    assert (first / "1" / "mp_rank_00_model_states.pt").stat().st_mtime_ns == stamp


def test_convert_refuses_to_overwrite(tmp_path):
    tiny_hf_model("bert").save_pretrained(tmp_path / "hf")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="out"):
        convert_hf_folder(tmp_path / "hf", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_convert_rejects_unknown_tensors_and_types(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_hf_model("bert").save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(weights)
    save_file({**tensors, "encoder.layer.0.adapter.weight": torch.zeros(2)}, weights)
    with pytest.raises(ValueError, match=r"adapter\.weight"):
        convert_hf_folder(tmp_path / "hf", tmp_path / "out1")
    save_file({k: v for k, v in tensors.items() if "layer.1.output.dense.bias" not in k}, weights)
    with pytest.raises(KeyError, match=r"encoder\.layer\.1\.output\.dense\.bias"):
        convert_hf_folder(tmp_path / "hf", tmp_path / "out2")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"config\.json.*gpt2"):
        convert_hf_folder(tmp_path / "hf", tmp_path / "out3")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("name", ["roberta-large", "bert-large-cased", "sat:roberta-large"])
def test_model_names_fail_fast_offline(name):
    start = time.monotonic()
    with pytest.raises(HubUnavailable, match="local"):
        load_backbone(name)
    assert time.monotonic() - start < 10


def test_missing_local_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_backbone(tmp_path / "nope")


def test_a_folder_of_another_architecture_is_named_as_such_before_its_weights_are_looked_for(tmp_path):
    """A folder holding only a GPT-2 config.json was reported as missing model.safetensors; and a damaged
    config.json gives an error naming it."""
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12, "vocab_size": 50257}))
    with pytest.raises(ValueError, match=f"{folder / 'config.json'}: model_type 'gpt2' is not supported; expected "
                                         r"one of \('roberta', 'bert'\)"):
        load_backbone(folder, cache_dir=tmp_path / "cache")
    (folder / "config.json").write_text('{"model_type": "bert", ')
    with pytest.raises(ValueError, match=f"{folder / 'config.json'}: damaged, not valid JSON"):
        load_backbone(folder, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
