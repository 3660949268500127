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
        assert set(figures) == {"seconds", "samples_per_s", "real_tokens_per_s", "mfu", "peak_memory_gib"}
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
