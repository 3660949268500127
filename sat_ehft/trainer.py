"""One training stage on `deepspeed.initialize`: the loop, per-epoch dev evaluation, a JSONL log.

The trainer knows nothing of methods or tasks beyond the task's objective and metrics: it takes a
model whose trainable parameters are already chosen, the encoded data, a peak LR and a number of
epochs. One process on CPU and N processes under the `deepspeed` launcher run the same code.
"""

import importlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from sat_ehft import checkpoints, host_memory, metrics, objective
from sat_ehft.atomic import write_json, write_text
from sat_ehft.batching import collate, model_inputs
from sat_ehft.data_order import accumulation_steps, stage_plan
from sat_ehft.mixins import HEAD_NAME, is_backbone_parameter
from sat_ehft.precision import deepspeed_precision, resolve_precision
from sat_ehft.ranks import collective_timeout, gathered, join_sat_groups, launch_started, rank_and_world_size
from sat_ehft.tracking import Trackers


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


@dataclass(frozen=True)
class StageBudget:
    lr: float  # peak learning rate
    epochs: int


def ensure_distributed():
    """A process group for DeepSpeed: the launcher's, else a one-process group on this machine; SAT's groups
    within it. Every collective waits at most sat_ehft.ranks.collective_timeout() for the other ranks."""
    for name, default in (("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(name, default)
    # DeepSpeed builds its shared-memory op with g++ (about 45 s on a new machine, per environment) and loads it
    # for every CPU process group, though only its inference all-reduce uses it, never training; a build killed
    # midway leaves a lock that makes every later launch wait forever. So none is built, also where the caller
    # made the process group (deepspeed.initialize then builds it). (The module by its name: deepspeed.comm's
    # own `torch` attribute is torch itself.)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if not dist.is_initialized():
        import deepspeed

        if "MASTER_PORT" not in os.environ:
            from sat.helpers import get_free_port

            os.environ["MASTER_PORT"] = str(get_free_port())
        timeout = collective_timeout()
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
        join_sat_groups(timeout)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return dist.get_rank(), dist.get_world_size()


def deepspeed_config(config, world_size):
    return {"train_batch_size": config.batch_size, "train_micro_batch_size_per_gpu": config.micro_batch_size,
            "gradient_accumulation_steps": accumulation_steps(config, world_size), "gradient_clipping": config.clip_grad,
            "zero_optimization": {"stage": config.zero_stage}, "steps_per_print": 2 ** 31,
            **deepspeed_precision(config)}


def skip_lone_all_reduce(engine, world_size, config):
    """In a one-process world, stop DeepSpeed's gradient all-reduce after each backward: averaging over one rank
    is the identity, yet it copies every gradient into a flat buffer, all-reduces it and copies it back (3-8% of
    an all-MiniLM-L6-v2 step on 2 CPU cores). ZeRO's optimizers move gradients into their partitions in that
    call, so they keep it."""
    if world_size == 1 and config.zero_stage == 0:
        engine.enable_backward_allreduce = False


def linear_schedule(total_steps, warmup_share):
    """LR multiplier: linear warm-up over `warmup_share` of the steps, then linear decay to 0."""
    warmup = max(1, round(total_steps * warmup_share))

    def multiplier(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return multiplier


# SAT's finetune loop (get_learning_rate_scheduler): LR held at 5% of peak over the first 100 steps.
SAT_AUTO_WARMUP_STEPS, SAT_AUTO_WARMUP_RATE = 100, 0.05


def sat_annealing_schedule(total_steps, warmup_share):
    """LR multiplier of AnnealingLR as the original code's finetune runs used it ('linear' decay), from the SAT
    fork (0.1.9) it shipped, training/learning_rates.py:43-50: a flat 5% of peak over the first 100 steps,
    linear warm-up over `warmup_share` of the steps, then a linear decay that ends at `warmup_share` of peak,
    not 0. Past the hold it equals SAT 0.4.12's AnnealingLR, which takes the smaller of 5% and the warm-up
    during the hold instead. Step s (0-based) gets AnnealingLR's value at iteration s + 1."""
    warmup = warmup_share * total_steps

    def multiplier(step):
        iteration = step + 1
        if iteration <= SAT_AUTO_WARMUP_STEPS:
            return SAT_AUTO_WARMUP_RATE
        if warmup > 0 and iteration <= warmup:
            return iteration / warmup
        return (total_steps - (iteration - warmup)) / total_steps

    return multiplier


LR_SCHEDULES = {"linear": linear_schedule, "sat-annealing": sat_annealing_schedule}


def held_lr_warning(config, total_steps, lr, stage):
    """A warning when every step of a stage falls inside sat-annealing's hold (it then trains at 5% of its LR
    throughout, and nothing else says so), naming the keys that fix it; None otherwise."""
    if config.lr_schedule != "sat-annealing" or total_steps > SAT_AUTO_WARMUP_STEPS:
        return None
    return (f"warning: {stage} has {total_steps} steps, all inside lr_schedule sat-annealing's hold at "
            f"{SAT_AUTO_WARMUP_RATE:.0%} of the LR for the first {SAT_AUTO_WARMUP_STEPS} steps: it trains at "
            f"{lr * SAT_AUTO_WARMUP_RATE:.3g} throughout. Set lr_schedule=linear, or more epochs or a smaller "
            "batch_size, for a stage that reaches its LR")


def make_optimizer(model, trainable, lr, config):
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm gains. Fused: one
    kernel for the whole update instead of a few per parameter group (torch has it on CPU and CUDA)."""
    params = [(n, p) for n, p in model.named_parameters() if n in trainable]
    groups = [{"params": [p for _, p in params if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for _, p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(config.adam_betas),
                             eps=config.adam_eps, fused=True)


@torch.no_grad()
def head_scores(model, features, batch_size, pad_id, device):
    """The head's outputs for encoded `features`, in order, on the CPU ([examples, outputs or choices]).

    Under several ranks, each scores every world-size-th batch and all of them get every score. The batches
    are the ones a lone rank makes, so the scores (and metrics) are the same bits as on one rank.
    """
    was_training = model.training
    model.eval()
    starts = range(0, len(features), batch_size)
    rank, world_size = rank_and_world_size()
    scores = {}
    for start in starts[rank::world_size]:
        batch = {k: v.to(device) for k, v in collate(features[start:start + batch_size], pad_id).items()}
        scores[start] = model.encode(**model_inputs(batch)).cpu()
    scores = {start: score for share in gathered(scores) for start, score in share.items()}
    model.train(was_training)
    host_memory.release_freed()  # its batches vary in length too (training's evaluations and sat-ehft predict)
    return torch.cat([scores[start] for start in starts])


def predict_features(model, task, features, batch_size, pad_id, device):
    """`model`'s predictions (class indices, a COPA question's choice, or regression scores) for encoded
    `features`, in order, as a numpy array (each rank scores its share, see head_scores)."""
    return objective.predict(head_scores(model, features, batch_size, pad_id, device), task.objective).numpy()


def score(task, predictions, features):
    """{metric: value, 'collapsed': bool} of `predictions` against labelled `features`. collapsed: every
    example got the same class (regression: predictions spread less than 1% of the labels' standard
    deviation), the signature of a failed run."""
    gold = [f["label"] for f in features]
    return {**metrics.compute(task.metrics, predictions, gold), "collapsed": collapsed(predictions, gold, task)}


def evaluate(model, task, features, batch_size, pad_id, device):
    """score() of `model`'s predictions for labelled `features`."""
    return score(task, predict_features(model, task, features, batch_size, pad_id, device), features)


def collapsed(predictions, gold, task):
    if task.is_regression:
        return bool(np.std(predictions) < 0.01 * np.std(gold))
    return len(set(predictions.tolist())) == 1


@dataclass(frozen=True)
class StageFiles:
    """Where one stage writes: per-epoch metrics, per-step training loss, TensorBoard, resumable checkpoints and
    what they cost."""

    folder: Path

    @property
    def metrics(self):
        return self.folder / "metrics.jsonl"

    @property
    def steps(self):
        return self.folder / "train_loss.jsonl"

    @property
    def checkpoints(self):
        return self.folder / "checkpoint"

    @property
    def cost(self):
        return self.folder / "cost.json"

    @property
    def predictions(self):
        return self.folder / "dev_predictions.json"

    @property
    def tensorboard(self):
        return self.folder / "tensorboard"

    @property
    def progress_log(self):
        return self.folder / "progress.log"


class _Progress:
    """The resumable state of a stage: finished epochs, their records, the per-step losses, and the dev
    predictions of each evaluated epoch ({"epoch number": [prediction per dev example]})."""

    def __init__(self, state=None):
        state = state or {}
        self.epoch = state.get("epoch", 0)
        self.records = state.get("records", [])
        self.step_losses = state.get("step_losses", [])
        self.predictions = state.get("predictions", {})

    def client_state(self):
        """What a checkpoint keeps beside the weights (every rank calls this; rank 0's copy is saved)."""
        return {"epoch": self.epoch, "records": self.records, "step_losses": self.step_losses,
                "predictions": self.predictions, "rng_by_rank": _rng_states_by_rank()}


def _rng_states_by_rank():
    """Every rank's random number generator states, in rank order: each rank resumes its own (their dropout
    draws differ), or a resumed multi-rank stage would not end as the uninterrupted one."""
    return gathered({"torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None})


def _set_rng_states(state, rank):
    """This rank's saved states; with a checkpoint of fewer ranks (or one from before rng_by_rank), rank 0's."""
    saved = state.get("rng_by_rank") or [{"torch": state["torch_rng"], "cuda": state["cuda_rng"]}]
    mine = saved[rank] if rank < len(saved) else saved[0]
    torch.set_rng_state(mine["torch"])
    if mine["cuda"] is not None:
        torch.cuda.set_rng_state(mine["cuda"])


def _write_jsonl(path, rows):
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _write_logs(files, progress, rank, gold):
    if rank == 0:
        _write_jsonl(files.metrics, progress.records)
        _write_jsonl(files.steps, progress.step_losses)
        # what a run's bootstrap interval resamples (sat_ehft.stats): gold and predictions per dev example
        write_text(files.predictions, json.dumps({"gold": gold, "epochs": progress.predictions}) + "\n")


def _restore(engine, files, trainable, rank, gold):
    """Resume from the newest whole checkpoint, if any: weights, optimizer, LR schedule, RNG, logs. Says so."""
    report = partial(print, flush=True) if rank == 0 else (lambda message: None)
    state = checkpoints.restore(engine, files.checkpoints, trainable, report=report)
    if state is None:
        return _Progress()
    _set_rng_states(state, rank)
    report(f"{files.folder.name}: resumed after epoch {state['epoch']} from {files.checkpoints}")
    if rank == 0:
        note_progress(files, f"{files.folder.name}: resumed after epoch {state['epoch']}")
    progress = _Progress(state)
    _write_logs(files, progress, rank, gold)  # drops epochs logged after that checkpoint: they train again
    return progress


class CheckpointPolicy:
    """When to checkpoint: after the last epoch, and after any epoch that ends `minutes` or more after the
    previous checkpoint (or the stage's start)."""

    def __init__(self, minutes, last_epoch, clock):
        self.seconds, self.last_epoch, self.clock = minutes * 60, last_epoch, clock
        self.since = clock()

    def due(self, epoch):
        return epoch == self.last_epoch or self.clock() - self.since >= self.seconds

    def saved(self):
        self.since = self.clock()


def _read_cost(files, on_cpu):
    """What the stage has cost so far, over every start (work a kill threw away cost time too). On a CPU also
    the CPU time its process used training and evaluating: against its threads x the wall time, how much of
    the cores it got (a GPU run's host CPU time says nothing of its cost, so it has none)."""
    if files.cost.is_file():
        return json.loads(files.cost.read_text(encoding="utf-8"))
    return {"train_seconds": 0.0, "eval_seconds": 0.0, "checkpoint_seconds": 0.0, "checkpoint_bytes": 0,
            "checkpoints": 0, **({"cpu_seconds": 0.0} if on_cpu else {})}


def recorded_seconds(cost):
    """The seconds a stage's cost record holds: training, evaluation and checkpoints over its starts."""
    return sum(cost[key] for key in ("train_seconds", "eval_seconds", "checkpoint_seconds"))


def earlier_starts_seconds(files):
    """What the stage's earlier starts recorded (0 for a first start): a resumed stage's wall time includes it."""
    return recorded_seconds(_read_cost(files, on_cpu=False))


def _save(engine, files, progress, cost, best):
    started = time.perf_counter()
    if best is not None:
        best.flush()
    cost["checkpoint_bytes"] += checkpoints.save(engine, files.checkpoints, progress.epoch, progress.client_state())
    cost["checkpoints"] += 1
    cost["checkpoint_seconds"] += time.perf_counter() - started


def _mean_over_ranks(values):
    """`values` (a device tensor) averaged over the ranks, on the host: one sync for all of them."""
    values = values.double()
    if dist.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values.tolist()


class StepLosses:
    """The optimizer steps' losses (and, at logging points, the backbone's gradient norm), kept on the device
    and read at logging points only (every `log_every` steps and at the epoch's end): reading a value on the
    host stalls the device's queue. A non-finite loss is found there and stops the stage, naming the steps."""

    def __init__(self, progress, trackers, files, log_every):
        self.progress, self.trackers, self.files, self.log_every = progress, trackers, files, log_every
        self.pending = []  # (step, loss, backbone gradient norm or None), on the device

    def logs(self, step):
        return step % self.log_every == 0

    def add(self, step, loss, grad_norm=None):
        self.pending.append((step, loss, grad_norm))
        if self.logs(step):
            self.read()

    def read(self):
        if not self.pending:
            return
        steps = [step for step, _, _ in self.pending]
        norms = [norm for _, _, norm in self.pending if norm is not None]
        values = _mean_over_ranks(torch.stack([loss for _, loss, _ in self.pending] + norms))
        losses, norms = values[:len(steps)], iter(values[len(steps):])
        with_norm = [norm is not None for _, _, norm in self.pending]
        self.pending = []
        bad = next((step for step, value in zip(steps, losses) if not math.isfinite(value)), None)
        if bad is not None:
            span = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
            raise NonFiniteLoss(f"{self.files.folder}: {span}: loss is {losses[steps.index(bad)]} at step {bad}; "
                                f"the last good checkpoint is kept in {self.files.checkpoints}")
        for step, value, has_norm in zip(steps, losses, with_norm):
            row = {"step": step, "loss": value, **({"backbone_grad_norm": next(norms)} if has_norm else {})}
            self.progress.step_losses.append(row)
            self.trackers.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step)


def backbone_grad_norm(engine, names, precision):
    """The L2 norm of the trained backbone tensors' gradients, before clipping, on the device (None when the
    stage trains none of the backbone). Call between backward and step (DeepSpeed assembles ZeRO's shards)."""
    from deepspeed.utils import safe_get_full_grad

    grads = [safe_get_full_grad(p) for n, p in engine.module.named_parameters() if n in names]
    grads = [g.float() for g in grads if g is not None]
    if not grads:
        return None
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return norm / getattr(engine.optimizer, "loss_scale", 1.0) if precision == "fp16" else norm


@dataclass
class BestKeeper:
    """Keeps the best evaluated epoch's weights (rank 0): `snapshot(model)` copies them when an epoch's `metric`
    beats every earlier epoch's (the first of equals stays best, as the stage's summary picks it), and
    `write(tensors, record)` stores that copy with the next checkpoint, so that a resumed stage holds the best
    of the epochs it keeps, never one of those it trains again."""

    metric: str
    snapshot: object
    write: object
    pending: tuple = None

    def consider(self, model, record, earlier):
        if self.metric in record and all(record[self.metric] > r[self.metric] for r in earlier if self.metric in r):
            self.pending = (self.snapshot(model), record)

    def flush(self):
        if self.pending is not None:
            self.write(*self.pending)
            self.pending = None


def train_stage(model, trainable, task, train_features, dev_features, config, budget, *, seed, pad_id, files,
                callbacks=(), step_callbacks=(), clock=time.monotonic, best=None, since=None):
    """Train `model` for `budget`; return (per-epoch records, cost: seconds spent training, evaluating and
    checkpointing, checkpoint bytes written).

    After every epoch: dev metrics (every `config.eval_every` epochs and after the last), then metrics.jsonl
    and train_loss.jsonl rewritten atomically, then a checkpoint in `files.checkpoints` when
    `config.checkpoint_minutes` have passed since the last one (and after the last epoch; see
    sat_ehft.checkpoints; `best`, a BestKeeper, writes the best epoch so far just before it), then each
    callback gets (model, record). A rerun with the same arguments resumes after the last checkpoint and ends
    as an uninterrupted run would. A NaN loss
    raises NonFiniteLoss when read (every `config.log_every` steps, see StepLosses) and leaves the last good
    checkpoint. Each of `step_callbacks` gets (model, step) after every optimizer step. `clock` (seconds)
    drives the checkpoint policy. `since` (epoch seconds): where this start's start-up is counted from; by
    default the launch (sat_ehft.ranks.launch_started).
    """
    import deepspeed

    rank, world_size = ensure_distributed()
    files.folder.mkdir(parents=True, exist_ok=True)
    plan = stage_plan(train_features, config, budget.epochs, rank, world_size, seed, pad_id)
    warning = held_lr_warning(config, plan.total_steps, budget.lr, files.folder.name)
    if warning and rank == 0:
        print(warning, file=sys.stderr, flush=True)
    optimizer = make_optimizer(model, trainable, budget.lr, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LR_SCHEDULES[config.lr_schedule](plan.total_steps,
                                                                                              config.warmup))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                      config=deepspeed_config(config, world_size))
    skip_lone_all_reduce(engine, world_size, config)
    gold = [f["label"] for f in dev_features]
    progress, cost = _restore(engine, files, trainable, rank, gold), _read_cost(files, engine.device.type == "cpu")
    policy = CheckpointPolicy(config.checkpoint_minutes, plan.rounds, clock)
    trackers = Trackers(files, config, rank)
    step_losses = StepLosses(progress, trackers, files, config.log_every)
    precision = resolve_precision(config.precision)
    backbone = ({n for n in trainable if is_backbone_parameter(n)}, precision)
    cost["startup_seconds"] = round(time.time() - (since or launch_started()), 2)  # this start's, to its first step
    cost["cpu_threads"] = torch.get_num_threads()  # this start's: its seconds depend on them
    for round_index in range(progress.epoch, plan.rounds):  # progress.epoch: rounds done (epochs under reshuffle)
        started, cpu_started = time.perf_counter(), time.process_time()
        skipped = engine.skipped_steps
        epoch = plan.epoch(round_index)
        training = _train_epoch(engine, plan.batches(round_index), task, step_losses,
                                f"{files.folder.name} epoch {epoch}/{budget.epochs}", rank, backbone, step_callbacks)
        evaluated = time.perf_counter()
        dev = {}
        if plan.evaluates(round_index):
            predictions = predict_features(engine.module, task, dev_features, config.eval_batch_size, pad_id,
                                           engine.device)
            dev = score(task, predictions, dev_features)
            progress.predictions = {**progress.predictions, str(epoch): predictions.tolist()}
        record = {"epoch": epoch, "step": engine.global_steps, "lr": scheduler.get_last_lr()[0], **training,
                  **_skipped(engine, skipped, precision), **dev}
        cost["train_seconds"] += evaluated - started
        cost["eval_seconds"] += time.perf_counter() - evaluated
        if "cpu_seconds" in cost:  # absent on a GPU, and in a stage begun before it was recorded: part would mislead
            cost["cpu_seconds"] += time.process_time() - cpu_started
        if best is not None and rank == 0:
            best.consider(engine.module, record, progress.records)
        progress.epoch, progress.records = round_index + 1, progress.records + [record]
        _write_logs(files, progress, rank, gold)
        if policy.due(round_index + 1):
            _save(engine, files, progress, cost, best if rank == 0 else None)
            policy.saved()
        if rank == 0:
            write_json(files.cost, cost)
            show_progress(files, progress_line(files.folder.name, record, budget.epochs, task, cost))
        trackers.log(epoch_scalars(record, task), record["step"])
        trackers.flush()
        for callback in callbacks:
            callback(engine.module, record)
    trackers.close()
    return progress.records, cost


def epoch_scalars(record, task):
    """An epoch record as tracker scalars: the dev metrics (and `collapsed`) under dev/, the rest (training loss
    and accuracy over the epoch, LR, head norm, epoch) under epoch/; the step is the scalars' x."""
    dev = {*task.metrics, "collapsed"}
    return {f"{'dev' if key in dev else 'epoch'}/{key}": value for key, value in record.items() if key != "step"}


def progress_line(stage, record, epochs, task, cost):
    """One epoch in a line: stage, epoch, step, training loss (and accuracy), dev metrics, time spent so far."""
    train = f"train loss {record['train_loss']:.4f}" + (
        f", accuracy {record['train_accuracy']:.4f}" if "train_accuracy" in record else "")
    dev = ", ".join(f"{name} {record[name]:.4f}" for name in task.metrics if name in record)
    return (f"{stage} epoch {record['epoch']:g}/{epochs} step {record['step']}: {train}"
            f"{'; dev ' + dev if dev else ''} ({recorded_seconds(cost):.0f} s)")


def note_progress(files, line):
    """Append `line` to the stage's progress.log (a kill may leave epochs there that then train again)."""
    with files.progress_log.open("a", encoding="utf-8") as log:
        log.write(line + "\n")


def show_progress(files, line):
    """note_progress, and print `line` where tqdm's bar is off (output that is not a terminal: Slurm logs,
    nohup, a pipe, CI), so that such a log shows the run moving."""
    note_progress(files, line)
    if not sys.stdout.isatty():
        print(line, flush=True)


def _skipped(engine, before, precision):
    """With fp16, the optimizer steps the loss scaler skipped this epoch (an overflow lowers the scale; not an
    error)."""
    return {"skipped_steps": engine.skipped_steps - before} if precision == "fp16" else {}


def _train_epoch(engine, loader, task, step_losses, description, rank, backbone, step_callbacks):
    """One pass over this rank's micro-batches; return their mean loss and (classification) the training
    accuracy, over every rank, read once at the end. `backbone`: (trained backbone tensor names, precision)
    for the gradient norm at logging points; each of `step_callbacks` gets (model, step) after each step."""
    micro_losses, epoch_loss, micro_batches = [], torch.zeros((), device=engine.device), 0
    correct, seen = torch.zeros((), device=engine.device), 0
    engine.train()
    for batch in tqdm(loader, desc=description, disable=None if rank == 0 else True, leave=False):
        micro_batches += 1
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        scores = engine.module.encode(**model_inputs(batch))
        loss = objective.loss(scores, batch["labels"], task.objective)
        micro_losses.append(loss.detach())
        epoch_loss += micro_losses[-1]
        if not task.is_regression:
            correct += (objective.predict(scores.detach(), task.objective) == batch["labels"]).sum()
            seen += len(batch["labels"])
        boundary = engine.is_gradient_accumulation_boundary()
        engine.backward(loss)
        norm = backbone_grad_norm(engine, *backbone) if boundary and step_losses.logs(engine.global_steps + 1) else None
        engine.step()
        if boundary:
            step_losses.add(engine.global_steps, torch.stack(micro_losses).mean(), norm)
            micro_losses = []
            for callback in step_callbacks:
                callback(engine.module, engine.global_steps)
            if engine.global_steps % host_memory.RELEASE_EVERY_STEPS == 0:
                host_memory.release_freed()
    step_losses.read()
    seen = torch.tensor(float(seen), device=engine.device)
    loss, correct, seen, norm = _mean_over_ranks(torch.stack([epoch_loss / micro_batches, correct, seen,
                                                              head_norm(engine.module)]))
    accuracy = {} if task.is_regression else {"train_accuracy": correct / seen}
    return {"train_loss": loss, **accuracy, "head_norm": norm}


def head_norm(model):
    """The L2 norm of the head's weights and biases together, on the device."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach().float())
                                                 for p in model.get_mixin(HEAD_NAME).parameters()]))
