"""The head and PET mixins against independent references (PEFT; attention recomputed by hand)."""

import math

import numpy as np
import pytest
import torch
from conftest import padded_batch, tiny_hf_model

from sat_ehft.backbone import load_backbone
from sat_ehft.hf_modeling import pool_features
from sat_ehft.mixins import ClassificationHead, LoRAMixin, PrefixTuningMixin, add_head, bias_names

PEFT_NAMES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
              "dense": "attention.output.dense"}


def sat_copy(tmp_path, hf):
    hf.save_pretrained(tmp_path / "hf")
    return load_backbone(tmp_path / "hf").model.eval()


@pytest.mark.parametrize("kind", ["roberta", "bert"])
@pytest.mark.parametrize("targets", [("query", "value"), ("query", "key", "value", "dense")])
def test_lora_matches_peft(tmp_path, kind, targets):
    from peft import LoraConfig, get_peft_model

    hf = tiny_hf_model(kind, hidden=32, layers=2, heads=4)
    sat = sat_copy(tmp_path, hf)
    pattern = r".*\.(" + "|".join(PEFT_NAMES[t].replace(".", r"\.") for t in targets) + ")"
    peft_model = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=pattern)).eval()
    lora = LoRAMixin(num_layers=2, hidden_size=32, r=4, alpha=8, targets=targets)
    generator = torch.Generator().manual_seed(3)
    modules = dict(peft_model.named_modules())
    with torch.no_grad():
        for layer in range(2):
            for target in targets:
                peft_layer = modules[f"base_model.model.encoder.layer.{layer}.{PEFT_NAMES[target]}"]
                for part in ("A", "B"):
                    value = torch.randn(lora.layers[layer][f"{target}_{part}"].shape, generator=generator) * 0.3
                    lora.layers[layer][f"{target}_{part}"].copy_(value)
                    getattr(peft_layer, f"lora_{part}")["default"].weight.copy_(value)
    sat.add_mixin("lora", lora)
    ids, mask = padded_batch(120, [11, 7, 3], pad_id=hf.config.pad_token_id)
    with torch.no_grad():
        expected = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = sat.encode(ids, mask)
    assert (got - expected)[mask.bool()].abs().max() < 1e-5
    with torch.no_grad(), peft_model.disable_adapter():
        unadapted = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got - unadapted)[mask.bool()].abs().max() > 1e-2  # the adapter really changes the output
    sat.del_mixin("lora")
    with torch.no_grad():
        assert (sat.encode(ids, mask) - unadapted)[mask.bool()].abs().max() < 1e-5


def reference_prefix_forward(hf, ids, mask, prefix):
    """The HF model's weights, attention recomputed layer by layer with prefix keys/values prepended."""
    embeddings = hf.embeddings(input_ids=ids)
    heads, size = hf.config.num_attention_heads, hf.config.hidden_size // hf.config.num_attention_heads
    batch, length = ids.shape
    visible = torch.cat([torch.ones(batch, prefix[0].shape[2]), mask.float()], dim=1)
    bias = (1.0 - visible)[:, None, None, :] * torch.finfo(torch.float32).min
    hidden = embeddings
    for layer, (prefix_k, prefix_v) in zip(hf.encoder.layer, prefix):
        attention = layer.attention

        def split(x):
            return x.view(batch, length, heads, size).transpose(1, 2)

        q = split(attention.self.query(hidden))
        k = torch.cat([prefix_k.expand(batch, -1, -1, -1), split(attention.self.key(hidden))], dim=2)
        v = torch.cat([prefix_v.expand(batch, -1, -1, -1), split(attention.self.value(hidden))], dim=2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(size) + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, heads * size)
        attended = attention.output.LayerNorm(attention.output.dense(context) + hidden)
        hidden = layer.output.LayerNorm(layer.output.dense(layer.intermediate(attended)) + attended)
    return hidden


@pytest.mark.parametrize("unpad", [True, False], ids=["packed-layout", "padded-layout"])
@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_prefix_tuning_matches_hand_computed_attention(tmp_path, kind, unpad):
    hf = tiny_hf_model(kind, hidden=32, layers=2, heads=4)
    sat = sat_copy(tmp_path, hf)
    sat.unpad = unpad
    prefix = PrefixTuningMixin(num_layers=2, num_heads=4, head_size=8, prefix_len=5, init_std=0.5)
    sat.add_mixin("prefix", prefix)
    ids, mask = padded_batch(120, [13, 6], pad_id=hf.config.pad_token_id, seed=2)
    with torch.no_grad():
        expected = reference_prefix_forward(hf, ids, mask, [p for p in prefix.prefix])
        got = sat.encode(ids, mask)
        without = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got - expected)[mask.bool()].abs().max() < 1e-5
    assert (got - without)[mask.bool()].abs().max() > 1e-2


def test_head_pooling_and_shapes():
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16)
    cls_head = ClassificationHead(16, 3)
    assert cls_head.dense.weight.shape == (2048, 16) and cls_head.out.weight.shape == (3, 2048)
    assert 0.004 < cls_head.dense.weight.std() < 0.006
    expected = cls_head.out(torch.relu(cls_head.dense(hidden[:, 0])))
    assert torch.allclose(cls_head.final_forward(hidden), expected)

    spans = torch.tensor([[[1, 3], [4, 5]], [[2, 3], [3, 7]], [[1, 2], [5, 6]]])
    span_head = ClassificationHead(16, 1, pooling="spans")
    pooled = pool_features(hidden, "spans", spans)
    row = 1
    first, second = hidden[row, 2:3].mean(0), hidden[row, 3:7].mean(0)
    assert torch.allclose(pooled[row], torch.cat([hidden[row, 0], first, second, (first - second).abs(), first * second]))
    assert torch.allclose(span_head.final_forward(hidden, spans=spans), span_head.out(torch.relu(span_head.dense(pooled))))

    copa_head = ClassificationHead(16, 1, choices=2)
    rows = torch.randn(4, 5, 16)  # 2 examples x 2 choices, an example's choices on consecutive rows
    with torch.no_grad():
        scores = copa_head.final_forward(rows)
        by_hand = [[copa_head.out(torch.relu(copa_head.dense(rows[2 * example + choice, 0])))[0] for choice in (0, 1)]
                   for example in (0, 1)]  # each choice scored alone from its first token
    assert torch.allclose(scores, torch.tensor(by_hand), atol=1e-6)


def test_head_replaces_hidden_states_output(tmp_path):
    sat = sat_copy(tmp_path, tiny_hf_model("bert"))
    ids, mask = padded_batch(120, [9, 4], pad_id=0)
    with torch.no_grad():
        hidden = sat.encode(ids, mask)
        add_head(sat, ClassificationHead(32, 2))
        assert torch.allclose(sat.encode(ids, mask), sat.get_mixin("head").final_forward(hidden), atol=1e-6)


def test_bitfit_selects_the_backbone_biases(tmp_path):
    sat = sat_copy(tmp_path, tiny_hf_model("roberta"))
    add_head(sat, ClassificationHead(32, 2))
    names = bias_names(sat)
    expected = {n for n, _ in sat.named_parameters() if n.endswith("bias") and not n.startswith("mixins.")}
    assert set(names) == expected and len(names) == 2 * 6 + 1  # 2 layers x (2 LayerNorms + 4 Linears), final LN


def test_mixout_keeps_the_expectation_of_the_weights():
    from sat_ehft.mixins.mixout import mixout_weight

    torch.manual_seed(0)
    p, draws = 0.7, 4000
    weight, pretrained = torch.randn(32, 32), torch.randn(32, 32)
    samples = torch.stack([mixout_weight(weight, pretrained, p) for _ in range(draws)])
    # One draw is w0 with probability p, else (w - p w0) / (1 - p): its spread is known exactly.
    spread = (p * (1 - p)) ** 0.5 * (weight - pretrained).abs() / (1 - p)
    z = (samples.mean(0) - weight) / (spread / draws ** 0.5)
    assert z.abs().max() < 5 and abs(z.mean()) < 0.2
    took_pretrained = torch.isclose(samples, pretrained.expand(draws, -1, -1), atol=1e-5)
    assert abs(took_pretrained.float().mean() - p) < 0.01


def test_mixout_mixin_trains_stochastically_and_evaluates_plainly(tmp_path):
    from sat_ehft.mixins import MixoutMixin, attach

    hf = tiny_hf_model("bert", dropout=0.0)
    sat = sat_copy(tmp_path, hf)
    ids, mask = padded_batch(120, [9, 5], pad_id=0)
    with torch.no_grad():
        plain = sat.encode(ids, mask)
    attach(sat, {"mixout": {"p": 0.5}})
    assert isinstance(sat.get_mixin("mixout"), MixoutMixin) and not list(sat.get_mixin("mixout").state_dict())
    with torch.no_grad():
        for parameter in sat.transformer.parameters():
            parameter.add_(0.05)  # move away from the snapshot, so mixing in pretrained weights shows
        moved = sat.eval().encode(ids, mask)
        assert (moved - plain).abs().max() > 1e-3
        sat.train()
        first, second = sat.encode(ids, mask), sat.encode(ids, mask)
    assert (first - second).abs().max() > 1e-3 and (first - moved).abs().max() > 1e-3
    sat.del_mixin("mixout")  # the same weights with no Mixout at all: what evaluation must compute
    with torch.no_grad():
        assert torch.equal(sat.eval().encode(ids, mask), moved)


def test_mixout_column_draw_swaps_whole_input_columns():
    from sat_ehft.mixins.mixout import mixout_weight

    torch.manual_seed(0)
    p, weight, pretrained = 0.7, torch.randn(16, 400), torch.randn(16, 400)
    mixed = mixout_weight(weight, pretrained, p, draw="column")
    kept = torch.isclose(mixed, (weight - p * pretrained) / (1 - p), atol=1e-6)
    swapped = torch.isclose(mixed, pretrained, atol=1e-6)
    assert (kept ^ swapped).all()  # each entry is one or the other
    assert (kept == kept[:1]).all()  # the same choice down every column
    assert abs(swapped[0].float().mean() - p) < 0.08  # 400 columns, each swapped with probability p
    elementwise = torch.isclose(mixout_weight(weight, pretrained, p), pretrained, atol=1e-6)
    assert not (elementwise == elementwise[:1]).all()  # the default draw differs within a column


@pytest.mark.parametrize("zero_dropout", [True, False])
def test_the_original_mixout_sets_every_dropout_to_zero(tmp_path, zero_dropout):
    from sat_ehft.mixins import attach

    sat = sat_copy(tmp_path, tiny_hf_model("bert", dropout=0.1))
    attach(sat, {"mixout": {"p": 0.7, "draw": "column", "zero_dropout": zero_dropout}})
    rates = {m.p for m in sat.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == ({0.0} if zero_dropout else {0.1})


@pytest.mark.parametrize("head", [True, False])
def test_the_original_mixout_mixes_the_head_towards_its_initial_weights(tmp_path, head):
    """mixout_head (the original code wrapped every Linear): in training the head's Linear layers are mixed
    with their initial (random) weights, whole input columns at a time; evaluation uses them as they are."""
    from sat_ehft.mixins import attach

    sat = sat_copy(tmp_path, tiny_hf_model("bert", dropout=0.0))
    ids, mask = padded_batch(120, [9, 5], pad_id=0)
    attach(sat, {"head": {"hidden_size": 32, "num_outputs": 3},
                 "mixout": {"p": 0.7, "draw": "column", "zero_dropout": True, "head": head}})
    classifier = sat.get_mixin("head")
    initial = {name: getattr(classifier, name).weight.detach().clone() for name in ("dense", "out")}
    with torch.no_grad():
        for name in initial:  # the head trained away from its initial weights; the backbone still pretrained,
            getattr(classifier, name).weight.add_(0.05)  # so that mixing it changes nothing beyond rounding
        plain = sat.eval().encode(ids, mask)
        sat.train()
        first, second = sat.encode(ids, mask), sat.encode(ids, mask)
        assert ((first - second).abs().max() > 1e-3) == head
        assert torch.equal(sat.eval().encode(ids, mask), plain)
    if head:
        sat.train()
        weight = classifier.dense.weight.detach()
        mixed = classifier.mix_weight("dense", weight)
        kept = torch.isclose(mixed, (weight - 0.7 * initial["dense"]) / 0.3, atol=1e-6)
        swapped = torch.isclose(mixed, initial["dense"], atol=1e-6)
        assert (kept ^ swapped).all() and (kept == kept[:1]).all() and swapped.any() and kept.any()


def test_original_fisher_clips_each_tensors_gradient_to_norm_one_before_squaring():
    from sat_ehft.mixins.child_tuning import fisher_information

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    batches = [torch.randn(4, 8) * scale for scale in (0.1, 10.0, 50.0)]  # small and large gradients

    def losses():
        for x in batches:
            yield model(x).pow(2).mean()

    names = [n for n, _ in model.named_parameters()]
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x in batches:
        grads = torch.autograd.grad(model(x).pow(2).mean(), list(model.parameters()))
        for name, grad in zip(names, grads):
            expected[name] += (grad * min(1.0, 1.0 / (grad.norm().item() + 1e-6))) ** 2
    clipped = fisher_information(model, names, losses(), clip=1.0).fp32
    plain = fisher_information(model, names, losses()).fp32
    for name in names:
        torch.testing.assert_close(clipped[name], expected[name], rtol=1e-5, atol=1e-9)
    assert any(not torch.allclose(clipped[n], plain[n]) for n in names)  # the large batches were clipped


def test_the_fp16_fisher_underflows_as_the_originals_and_its_selection_is_numpys_percentile_rule():
    """The original summed fp16 squares of fp16 gradients: entries whose gradients stay below ~1.7e-4 square to
    0. Checked against numpy's float16 arithmetic, and the share its `>= np.percentile(r, 90)` rule keeps."""
    from sat_ehft.mixins.child_tuning import fisher_information, original_selection

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    with torch.no_grad():
        model[0].weight[:16].mul_(1e-3)  # a quarter of the first layer's rows with tiny gradients
    names = [n for n, _ in model.named_parameters()]
    data = [torch.randn(8, 64) * 0.1 for _ in range(3)]  # small gradients, as a large model's mostly are
    fisher = fisher_information(model, names, (model(x).pow(2).mean() for x in data))
    expected = {n: np.zeros(tuple(p.shape), np.float16) for n, p in model.named_parameters()}
    for x in data:
        grads = torch.autograd.grad(model(x).pow(2).mean(), list(model.parameters()))
        for name, grad in zip(names, grads):
            half = grad.numpy().astype(np.float16)
            expected[name] = expected[name] + half * half  # numpy keeps float16 throughout
    for name in names:
        assert np.array_equal(fisher.fp16[name].numpy(), expected[name]), name
    values = np.concatenate([expected[n].ravel().astype(np.float32) for n in names])
    assert 0.05 < np.mean(values > 0) < 0.95  # some underflowed, some did not (fp32 has no zeros here)
    assert all(bool((fisher.fp32[n] > 0).all()) for n in names if n.endswith("weight"))
    for keep in (0.1, 0.3):
        chosen = original_selection(fisher.fp16, keep)
        threshold = np.percentile(values, 100 * (1 - keep))
        assert chosen == {"fisher_nonzero_fp16": float(np.mean(values > 0)),
                          "kept_by_original_rule": float(np.mean(values >= threshold))}
    many_zeros = original_selection({"w": torch.zeros(100, dtype=torch.float16)}, 0.1)
    assert many_zeros == {"fisher_nonzero_fp16": 0.0, "kept_by_original_rule": 1.0}  # >= 0 keeps every entry


def test_child_tuning_masks_keep_the_requested_fraction_and_block_the_rest():
    from sat_ehft.mixins.child_tuning import fisher_information, install_gradient_masks, top_fraction_masks

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    names = [n for n, _ in model.named_parameters()]
    data = [(torch.randn(4, 8), torch.randn(4, 1)) for _ in range(5)]
    fisher = fisher_information(model, names, ((model(x) - y).pow(2).mean() for x, y in data)).fp32
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in data:  # the same sum of squared gradients, computed independently
        grads = torch.autograd.grad((model(x) - y).pow(2).mean(), list(model.parameters()))
        for n, g in zip(names, grads):
            expected[n] += g ** 2
    assert all(torch.allclose(fisher[n], expected[n]) for n in names)
    total = sum(p.numel() for p in model.parameters())
    for keep in (0.1, 0.3, 1.0):
        masks = top_fraction_masks(fisher, keep)
        assert sum(int(m.sum()) for m in masks.values()) == round(keep * total)
    masks = top_fraction_masks(fisher, 0.3)
    smallest_kept = min(fisher[n][m].min() for n, m in masks.items() if m.any())
    assert all((fisher[n][~m] <= smallest_kept).all() for n, m in masks.items())
    install_gradient_masks(model, masks)
    x, y = data[0]
    (model(x) - y).pow(2).mean().backward()
    assert all(((p.grad != 0) <= masks[n]).all() for n, p in model.named_parameters())


@pytest.mark.parametrize("unpad", [False, True], ids=["padded-layout", "packed-layout"])
@pytest.mark.parametrize("lengths", [[12, 12, 12], [12, 7, 3], [9, 7, 3]], ids=["full", "padded", "all-short"])
def test_sdpa_attention_matches_sat_default_attention(tmp_path, lengths, unpad):
    """Outputs and gradients of the SDPA hook, on SAT's padded layout or on packed rows, against SAT's own
    attention on the padded layout (the hook removed)."""
    sat = sat_copy(tmp_path, tiny_hf_model("roberta", dropout=0.0))
    sat.unpad = unpad
    ids, mask = padded_batch(120, lengths, pad_id=1, width=12)
    weights = torch.randn(len(lengths), 12, 32, generator=torch.Generator().manual_seed(1)) * mask[..., None]

    def output_and_grads():
        sat.zero_grad()
        out = sat.encode(ids, mask)
        (out * weights).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in sat.named_parameters()}

    fast, fast_grads = output_and_grads()
    sat.del_mixin("sdpa-attention")
    sat.unpad = False
    reference, reference_grads = output_and_grads()
    assert (fast - reference)[mask.bool()].abs().max() < 1e-5
    assert all(torch.allclose(fast_grads[n], reference_grads[n], atol=1e-5, rtol=1e-4) for n in reference_grads)
