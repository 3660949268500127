"""One training stage on `deepspeed.initialize`: the loop, per-epoch dev evaluation, a JSONL log.

The trainer knows nothing of methods or tasks beyond the task's objective and metrics: it takes a
model whose trainable parameters are already chosen, the encoded data, a peak LR and a number of
epochs. One process on CPU and N processes under the `deepspeed` launcher run the same code.
"""

import json
import math
import os
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from sat_ehft import metrics, objective
from sat_ehft.batching import collate, model_inputs


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


@dataclass(frozen=True)
class StageBudget:
    lr: float  # peak learning rate
    epochs: int


def ensure_distributed():
    """A process group for DeepSpeed: the launcher's, else a one-process group on this machine."""
    for name, default in (("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(name, default)
    if not dist.is_initialized():
        import deepspeed

        if "MASTER_PORT" not in os.environ:
            from sat.helpers import get_free_port

            os.environ["MASTER_PORT"] = str(get_free_port())
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def deepspeed_config(config, world_size):
    accumulation, remainder = divmod(config.batch_size, config.micro_batch_size * world_size)
    if remainder or not accumulation:
        raise ValueError(f"batch_size={config.batch_size} is not a multiple of micro_batch_size="
                         f"{config.micro_batch_size} x {world_size} ranks")
    ds = {"train_batch_size": config.batch_size, "train_micro_batch_size_per_gpu": config.micro_batch_size,
          "gradient_accumulation_steps": accumulation, "gradient_clipping": config.clip_grad,
          "zero_optimization": {"stage": config.zero_stage}, "steps_per_print": 2 ** 31}
    if config.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    if config.precision == "fp16":  # DeepSpeed >= 0.17 rejects a non-integer min_loss_scale
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16, "min_loss_scale": 1}
    return ds


def linear_schedule(total_steps, warmup_share):
    """LR multiplier: linear warm-up over `warmup_share` of the steps, then linear decay to 0."""
    warmup = max(1, round(total_steps * warmup_share))

    def multiplier(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return multiplier


def make_optimizer(model, trainable, lr, config):
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm gains."""
    params = [(n, p) for n, p in model.named_parameters() if n in trainable]
    groups = [{"params": [p for _, p in params if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for _, p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(config.adam_betas),
                             eps=config.adam_eps)


@torch.no_grad()
def evaluate(model, task, features, batch_size, pad_id, device):
    """{metric: value} of `model` on encoded `features` (every rank evaluates the whole dev set)."""
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    for start in range(0, len(features), batch_size):
        batch = {k: v.to(device) for k, v in collate(features[start:start + batch_size], pad_id).items()}
        scores = model.encode(**model_inputs(batch))
        predictions.append(objective.predict(scores, task.objective).cpu())
        labels.append(batch["labels"].cpu())
    model.train(was_training)
    return metrics.compute(task.metrics, torch.cat(predictions).numpy(), torch.cat(labels).numpy())


def train_stage(model, trainable, task, train_features, dev_features, config, budget, *, seed, pad_id, log_path):
    """Train `model` for `budget`; append one JSON line per epoch to `log_path` (rank 0); return the records."""
    import deepspeed

    rank, world_size = ensure_distributed()
    sampler = DistributedSampler(train_features, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(train_features, batch_size=config.micro_batch_size, sampler=sampler,
                        collate_fn=partial(collate, pad_id=pad_id))
    ds_config = deepspeed_config(config, world_size)
    total_steps = math.ceil(len(loader) / ds_config["gradient_accumulation_steps"]) * budget.epochs
    optimizer = make_optimizer(model, trainable, budget.lr, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, config.warmup))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    records = []
    for epoch in range(budget.epochs):
        sampler.set_epoch(epoch)  # a fresh order every epoch (SAT's loop reuses one)
        engine.train()
        losses = []
        for batch in loader:
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            loss = objective.loss(engine.module.encode(**model_inputs(batch)), batch["labels"], task.objective)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"epoch {epoch + 1}, step {engine.global_steps + 1}: loss is {loss.item()}")
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        record = {"epoch": epoch + 1, "step": engine.global_steps, "lr": scheduler.get_last_lr()[0],
                  "train_loss": sum(losses) / len(losses),
                  **evaluate(engine.module, task, dev_features, config.eval_batch_size, pad_id, engine.device)}
        records.append(record)
        if rank == 0:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
    return records
