"""Encoded examples -> padded tensors. Batches are padded to their own longest sequence; COPA's
choices become consecutive rows (example 0 choice 1, example 0 choice 2, example 1 choice 1, ...)."""

import random

import torch


def sequences(input_ids):
    """The rows of an encoded example: one sequence, or (COPA) one per choice."""
    return input_ids if input_ids and isinstance(input_ids[0], list) else [input_ids]


def collate(features, pad_id):
    """{'input_ids', 'attention_mask', 'token_type_ids' [rows, longest], 'labels' [examples], 'spans'?};
    no 'labels' for unlabelled examples (a test split)."""
    ids = [row for f in features for row in sequences(f["input_ids"])]
    types = [row for f in features for row in sequences(f["token_type_ids"])]
    longest = max(len(row) for row in ids)
    batch = {
        "input_ids": torch.tensor([row + [pad_id] * (longest - len(row)) for row in ids]),
        "attention_mask": torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids]),
        "token_type_ids": torch.tensor([row + [0] * (longest - len(row)) for row in types]),
    }
    if features[0]["label"] is not None:
        batch["labels"] = torch.tensor([f["label"] for f in features])
    if "spans" in features[0]:
        batch["spans"] = torch.tensor([f["spans"] for f in features])
    return batch


def model_inputs(batch):
    """The keyword arguments of `Backbone.encode` held in a collated batch."""
    return {k: v for k, v in batch.items() if k != "labels"}


class LengthGroupedBatches:
    """Batch sampler over a (distributed) sampler's indices that puts sequences of similar length together:
    each run of `pool` batches' worth of indices is sorted by length and cut into batches, and the batches
    are shuffled, so padding shrinks while every index is still seen once an epoch. Seeded by the epoch."""

    def __init__(self, sampler, lengths, batch_size, pool=50, seed=0):
        self.sampler, self.lengths, self.batch_size = sampler, lengths, batch_size
        self.pool, self.seed, self.epoch = pool * batch_size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        indices = list(self.sampler)
        batches = []
        for start in range(0, len(indices), self.pool):
            pool = sorted(indices[start:start + self.pool], key=lambda i: self.lengths[i], reverse=True)
            batches += [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        random.Random(self.seed * 100003 + self.epoch).shuffle(batches)
        return iter(batches)

    def __len__(self):
        return -(-len(self.sampler) // self.batch_size)
