"""`sat-ehft bench` on CPU: tiny shape, a handful of steps; the fields and how the ratio is made."""

import json

import pytest
import torch

from sat_ehft import bench
from sat_ehft.cli import main


def test_bench_cli_writes_both_sides_and_the_ratio_of_their_timings(tmp_path, shared_data, capsys):
    assert main(["bench", "--shape", "tiny", "--steps", "3", "--warmup", "1", "--batch-size", "8",
                 "--data-dir", str(shared_data), "--out", str(tmp_path / "bench.json")]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert {"device", "versions", "command", "lengths_from", "train_flops", "hf", "ours"} <= set(result)
    for side in ("hf", "ours"):
        figures = result[side]
        assert set(figures) == {"seconds", "samples_per_s", "real_tokens_per_s", "mfu", "peak_memory_gib",
                                "first_loss", "last_loss"}
        assert figures["samples_per_s"] == pytest.approx(3 * 8 / figures["seconds"])
        assert figures["mfu"] is None and figures["peak_memory_gib"] is None  # no CPU peak FLOP/s or CUDA memory
    assert result["ratio_ours_over_hf"] == result["hf"]["seconds"] / result["ours"]["seconds"]
    assert result["ratio_ours_over_hf"] == pytest.approx(result["ours"]["samples_per_s"] / result["hf"]["samples_per_s"])
    assert "ours / HF:" in capsys.readouterr().out
    assert result["unpad"] is True


def test_bench_padded_option_keeps_our_side_on_the_padded_layout(monkeypatch):
    built = []
    real_our_step = bench.our_step

    def recording_our_step(*args):
        model, loss, optimizer = real_our_step(*args)
        built.append(model)
        return model, loss, optimizer

    monkeypatch.setattr(bench, "our_step", recording_our_step)
    result = bench.bench(shape="tiny", batch_size=4, steps=1, warmup=0, lengths=(6, 11), unpad=False)
    assert result["unpad"] is False and built[0].unpad is False


def test_batches_follow_the_lengths_and_flops_count_real_tokens():
    batches = bench.make_batches([5, 9], batch_size=4, count=3, vocab=100)
    for ids, mask, labels in batches:
        assert set(mask.sum(1).tolist()) <= {5, 9} and ids.shape[1] == mask.sum(1).max()
        assert (ids[mask == 0] == 1).all()  # padding id
    config = bench.hf_config("roberta", "tiny")
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    hidden, layers, inner = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_token = 6 * layers * (4 * hidden ** 2 + 2 * hidden * inner)
    assert bench.train_flops(config, mask) == per_token * 7 + 12 * layers * hidden * (3 * 3 + 4 * 4)


def test_both_sides_start_from_the_same_initialised_weights_and_train_with_finite_losses(monkeypatch):
    from sat_ehft.convert import sat_state_dict

    built = {}

    def recording(side, build):
        def wrapper(*args):
            model, loss, optimizer = build(*args)
            built[side] = {k: v.clone() for k, v in model.state_dict().items()}
            return model, loss, optimizer

        return wrapper

    monkeypatch.setattr(bench, "hf_step", recording("hf", bench.hf_step))
    monkeypatch.setattr(bench, "our_step", recording("ours", bench.our_step))
    result = bench.bench(shape="tiny", batch_size=4, steps=2, warmup=0, lengths=(6, 11))
    config = {**bench.hf_config("roberta", "tiny").to_dict(), "model_type": "roberta"}
    backbone, _ = sat_state_dict(config, built["hf"])
    assert all(torch.equal(built["ours"][name], value) for name, value in backbone.items())
    for name, value in backbone.items():  # an initialisation, not uninitialised memory (NaN, 1e38, zeros)
        assert torch.isfinite(value).all() and value.abs().max() <= 1, name
        if value.ndim == 2:
            assert (value != 0).float().mean() > 0.95, name
    for side in ("hf", "ours"):  # a binary head at initialisation: a loss near ln 2, and it stays finite
        assert 0.5 < result[side]["first_loss"] < 0.9 and 0.5 < result[side]["last_loss"] < 0.9


def test_a_side_whose_loss_is_not_finite_is_refused():
    model = torch.nn.Linear(3, 1)
    batches = [(torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2))] * 2

    def loss(ids, mask, labels):
        return model(ids).sum() * float("nan")

    with pytest.raises(bench.NonFiniteBenchLoss, match="the loss became"):
        bench.measure(model, loss, lambda: torch.optim.SGD(model.parameters(), lr=0.1), batches, 1, "fp32",
                      torch.device("cpu"))
