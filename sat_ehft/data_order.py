"""The order a stage's training examples come in, how many optimizer steps it makes, and when it is evaluated.

Config `data_order`:
- 'reshuffle': a fresh order every epoch (DistributedSampler seeded by the run's seed and the epoch), each epoch
  ending with its own partial batch, so a stage has ceil(N / B) x E steps; dev is evaluated after every
  `eval_every`-th epoch and the last.
- 'original', as the authors' code ran (the SAT fork's data_utils/configure_data.py:91-93, 321-335 and
  training/deepspeed_training.py:127-128, 412): one permutation of the training set per seed, repeated every
  epoch and replayed by Stage 2; the stage is one run of batches across epoch boundaries, ceil(N x E / B) steps
  with only the last batch partial; dev is evaluated every N // B steps (times `eval_every`) and after the last.

Either way a stage runs in rounds, each ending with a record in metrics.jsonl, maybe an evaluation and a
checkpoint: an epoch ('reshuffle') or the steps between two evaluations ('original'). A record's `epoch` is
the number of epochs done when it was written (whole under 'reshuffle'; under 'original', e.g. 0.896 on CB,
whose 250 examples make evaluations every 7 steps of 32). A stage resumes at the start of a round.
"""

import math
from functools import partial

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

from sat_ehft.batching import LengthGroupedBatches, collate, sequences
from sat_ehft.config import evaluated_epochs


def stage_plan(features, config, epochs, rank, world_size, seed, pad_id):
    """The plan of a stage of `epochs` epochs over `features` on this rank, as config.data_order says."""
    plans = {"reshuffle": Reshuffled, "original": OriginalOrder}
    return plans[config.data_order](features, config, epochs, rank, world_size, seed, pad_id)


def accumulation_steps(config, world_size):
    """Micro-batches per optimizer step on each rank."""
    accumulation, remainder = divmod(config.batch_size, config.micro_batch_size * world_size)
    if remainder or not accumulation:
        raise ValueError(f"batch_size={config.batch_size} is not a multiple of micro_batch_size="
                         f"{config.micro_batch_size} x {world_size} ranks")
    return accumulation


class Reshuffled:
    def __init__(self, features, config, epochs, rank, world_size, seed, pad_id):
        self.sampler = DistributedSampler(features, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        collate_batch = partial(collate, pad_id=pad_id)
        if config.group_by_length:
            lengths = [sum(map(len, sequences(f["input_ids"]))) for f in features]
            self.sampler = LengthGroupedBatches(self.sampler, lengths, config.micro_batch_size, seed=seed)
            self.loader = DataLoader(features, batch_sampler=self.sampler, collate_fn=collate_batch)
        else:
            self.loader = DataLoader(features, batch_size=config.micro_batch_size, sampler=self.sampler,
                                     collate_fn=collate_batch)
        self.rounds = epochs
        self.total_steps = math.ceil(len(self.loader) / accumulation_steps(config, world_size)) * epochs
        self.evaluated = set(evaluated_epochs(epochs, config.eval_every))

    def batches(self, round_index):
        """This rank's micro-batches of round (epoch) `round_index`, 0-based: a fresh order each epoch."""
        self.sampler.set_epoch(round_index)
        return self.loader

    def evaluates(self, round_index):
        return round_index + 1 in self.evaluated

    def epoch(self, round_index):
        return round_index + 1


class OriginalOrder:
    def __init__(self, features, config, epochs, rank, world_size, seed, pad_id):
        self.features, self.pad_id = features, pad_id
        self.batch_size, self.rank, self.world_size = config.batch_size, rank, world_size
        self.accumulation = accumulation_steps(config, world_size)
        # one permutation per seed, whatever the stage: Stage 2 replays Stage 1's order
        self.order = np.tile(np.random.RandomState(seed).permutation(len(features)), epochs)
        self.total_steps = math.ceil(len(self.order) / self.batch_size)
        self.interval = max(1, len(features) // self.batch_size) * config.eval_every  # steps between evaluations
        self.rounds = math.ceil(self.total_steps / self.interval)

    def steps(self, round_index):
        """The optimizer steps (0-based) of round `round_index`."""
        return range(round_index * self.interval, min((round_index + 1) * self.interval, self.total_steps))

    def micro_batches(self, step):
        """This rank's micro-batches of optimizer step `step`: its global batch cut into accumulation x ranks
        parts, the a-th micro-step of rank r taking part a x ranks + r. The last, partial batch is cut as evenly
        as it goes, repeating its first examples where it has fewer than parts (as DistributedSampler pads)."""
        batch = self.order[step * self.batch_size:(step + 1) * self.batch_size]
        parts = self.accumulation * self.world_size
        if len(batch) < parts:
            batch = np.resize(batch, parts)
        pieces = np.array_split(batch, parts)
        return [pieces[a * self.world_size + self.rank].tolist() for a in range(self.accumulation)]

    def batches(self, round_index):
        """This rank's micro-batches of round `round_index`, in order."""
        indices = [part for step in self.steps(round_index) for part in self.micro_batches(step)]
        return DataLoader(self.features, batch_sampler=indices, collate_fn=partial(collate, pad_id=self.pad_id))

    def evaluates(self, round_index):
        return True

    def epoch(self, round_index):
        """Epochs done at the end of the round: examples seen over the training set's size."""
        seen = min(self.steps(round_index).stop * self.batch_size, len(self.order))
        return round(seen / len(self.features), 4)
