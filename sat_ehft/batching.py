"""Encoded examples -> padded tensors. Batches are padded to their own longest sequence; COPA's
choices become consecutive rows (example 0 choice 1, example 0 choice 2, example 1 choice 1, ...)."""

import torch


def _rows(value):
    return value if value and isinstance(value[0], list) else [value]


def collate(features, pad_id):
    """{'input_ids', 'attention_mask', 'token_type_ids' [rows, longest], 'labels' [examples], 'spans'?}."""
    ids = [row for f in features for row in _rows(f["input_ids"])]
    types = [row for f in features for row in _rows(f["token_type_ids"])]
    longest = max(len(row) for row in ids)
    batch = {
        "input_ids": torch.tensor([row + [pad_id] * (longest - len(row)) for row in ids]),
        "attention_mask": torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids]),
        "token_type_ids": torch.tensor([row + [0] * (longest - len(row)) for row in types]),
        "labels": torch.tensor([f["label"] for f in features]),
    }
    if "spans" in features[0]:
        batch["spans"] = torch.tensor([f["spans"] for f in features])
    return batch


def model_inputs(batch):
    """The keyword arguments of `Backbone.encode` held in a collated batch."""
    return {k: v for k, v in batch.items() if k != "labels"}
