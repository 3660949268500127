"""Features of rebuilt models: the head's input (the backbone's pooled final-layer output, Figure 1)
and the head's 2048-d hidden layer (Figure 4)."""

import torch

from sat_ehft.batching import collate, model_inputs
from sat_ehft.encoded_cache import encoded_split
from sat_ehft.pipeline import run_encoding
from sat_ehft.tasks import get_task


def encoded(spec, tokenizer, split):
    task = get_task(spec.task)
    return task, encoded_split(task, spec.data_dir, split, tokenizer, run_encoding(spec))


@torch.no_grad()
def head_inputs_and_hidden(model, features, pad_id, batch_size=64):
    """(pooled backbone features [n, d], head hidden layer [n, 2048], labels [n]) of `model` (which has a head)."""
    captured = {}  # the head's first layer sees the pooled features and computes the hidden layer
    hook = model.get_mixin("head").dense.register_forward_hook(
        lambda m, inputs, out: captured.update(pooled=inputs[0], hidden=torch.relu(out)))
    pooled, hidden, labels = [], [], []
    try:
        for start in range(0, len(features), batch_size):
            batch = collate(features[start:start + batch_size], pad_id)
            model.encode(**model_inputs(batch))
            pooled.append(captured["pooled"])
            hidden.append(captured["hidden"])
            labels.append(batch["labels"])
    finally:
        hook.remove()
    return torch.cat(pooled), torch.cat(hidden), torch.cat(labels)


def feature_change(before, after):
    """Mean over examples of the L2 distance between two feature matrices."""
    return float((after - before).norm(dim=-1).mean())
