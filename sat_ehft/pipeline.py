"""A run: the method's stages in order, the head (and, for -reserve, the PET part) carried across.

This is the only place that knows stages follow each other. Each stage starts from the pretrained
backbone loaded afresh (EH-FT, section 2.2: "restore the pretrained backbone back to theta_f^0 and only
keep the trained head"); what a stage `carries` is read from the previous stage's trained.pt.

Run folder (the contract with everything that reads results):
  run.json                     task, method, model, data, seed, config, library versions
  .lock                        held by the running process: one writer per folder
  <stage>/metrics.jsonl        one line per epoch: epoch, step, lr, train_loss, train_accuracy, head_norm, dev
                               metrics and collapsed (on the epochs evaluated: eval_every)
  <stage>/train_loss.jsonl     one line per optimizer step: step, loss (mean over ranks), backbone_grad_norm at
                               logging points
  <stage>/tensorboard/         the same, for TensorBoard
  <stage>/dev_predictions.json gold labels and each evaluated epoch's dev predictions (report's bootstrap)
  <stage>/cost.json            seconds spent training, evaluating, checkpointing; checkpoint bytes (every start)
  <stage>/checkpoint/          the last resumable checkpoint (sat_ehft.checkpoints; removed when the stage ends)
  <stage>/trained.pt           the stage's trained tensors (head weights and biases included), their digest, the
                               backbone's id, the run and stage that trained them (origin)
  <stage>/best.pt              the final stage's best dev epoch's, as trained.pt, with its epoch (config save_best)
  <stage>/progress.log         a line per epoch (printed too where the output is no terminal)
  <stage>/done.json            best and last scores, epochs, LR, seconds, cost, fp16 steps skipped, where each rank
                               ran, origin: the stage is finished
  model/                       the final classifier as a SAT checkpoint folder (config save_model), with
                               trained_by.json: its origin and its tensors' digest
  result.json                  the final stage's best and last scores, the seed, every stage's summary
"""

import dataclasses
import errno
import fcntl
import json
import os
import random
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from sat_ehft import checkpoints
from sat_ehft.atomic import atomic_dir, atomic_path, load_tensors, read_json, tensors_digest, write_json
from sat_ehft.backbone import load_backbone
from sat_ehft.classifier import build_classifier
from sat_ehft.convert import HF_ORIGIN_SUBDIR, TOKENIZER_SUBDIR, copy_tokenizer_files, write_sat_checkpoint
from sat_ehft.encoded_cache import encoded_split
from sat_ehft.folders import tokenizer_folder
from sat_ehft.methods import get_method
from sat_ehft.mixins import bias_names
from sat_ehft.mixins.child_tuning import mask_to_child_network
from sat_ehft.ranks import barrier, is_main, layout
from sat_ehft.runspec import RunSpec, described, differing_keys
from sat_ehft.tasks import Encoding, get_task, selection_metric
from sat_ehft.precision import resolve_precision, skipped_steps
from sat_ehft.trainer import (BestKeeper, StageBudget, StageFiles, earlier_starts_seconds, ensure_distributed,
                              train_stage)
from sat_ehft.weight_distance import WeightDistanceLog


def versions():
    import deepspeed
    import transformers
    from importlib.metadata import version

    return {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "transformers": transformers.__version__,
            "SwissArmyTransformer": version("SwissArmyTransformer")}


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def check_writable(out):
    """Make the run folder and write a file in it now, so that a wrong --out fails before anything is loaded.
    Rank 0 only: it alone writes the folder (the others, on this node or another, would race it for the probe)."""
    if not is_main():
        return
    with atomic_path(Path(out) / ".writable") as probe:
        probe.write_bytes(b"")
    (Path(out) / ".writable").unlink()


def refuse_links(out):
    """A run folder holds no symbolic link: sat-ehft writes and deletes there (checkpoints, trained tensors,
    results), and never through a link to somewhere else."""
    links = [os.path.join(folder, name) for folder, dirs, files in os.walk(out) for name in dirs + files
             if os.path.islink(os.path.join(folder, name))]
    if links:
        raise ValueError(f"{out}: holds symbolic links ({', '.join(links[:3])}{' ...' if len(links) > 3 else ''}); "
                         "sat-ehft never writes or deletes through a link in a run folder: remove them")


def check_run_folder(spec, out, log=print):
    """Refuse a run folder whose run.json describes another run (sat_ehft.runspec.differing_keys) that kept
    something: a finished stage or a checkpoint. One that kept nothing (it failed before its first checkpoint,
    say on a bad setting) is cleared for this run, so that the corrected command needs no folder deleted by hand."""
    path = Path(out) / "run.json"
    if not path.is_file():
        return
    recorded = read_json(path)
    differing = differing_keys(spec, recorded)
    if not differing:
        return
    stages = [Path(out) / stage.name for stage in get_method(recorded["method"]).stages]
    marks = [stage / name for stage in stages for name in ("done.json", "trained.pt", "checkpoint/latest")]
    kept = [str(mark) for mark in (*marks, Path(out) / "result.json") if mark.is_file()]
    if kept:
        raise ValueError(f"{path}: this folder belongs to another run (differs in {', '.join(differing)}) that "
                         f"kept {', '.join(kept)}; use a new --out")
    for stage in stages:
        if stage.is_dir() and not stage.is_symlink():
            shutil.rmtree(stage)
    path.unlink()
    log(f"{out}: cleared the run recorded there (differing in {', '.join(differing)}), which kept no finished "
        "stage or checkpoint")


def record_run(spec, out):
    """Write run.json, once this run's model, tokenizer and data have opened: a first start that fails leaves
    the folder free for the corrected command."""
    path = Path(out) / "run.json"
    if is_main() and not path.is_file():
        write_json(path, {**described(spec), "versions": versions()})


@contextmanager
def run_folder_lock(out):
    """One writer per run folder: rank 0 holds an exclusive lock on RUN/.lock for the whole run (the system
    releases it when the process ends, however it ends). A second run on the folder fails at once, naming
    the holder."""
    if not is_main():
        yield
        return
    try:
        descriptor = os.open(Path(out) / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RuntimeError(f"{Path(out) / '.lock'}: a symbolic link; sat-ehft never writes through a link in a "
                               "run folder: remove it") from None
        raise
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 256, 0).decode(errors="replace").strip() or "another process"
            raise RuntimeError(f"{out}: in use by another sat-ehft run ({holder}); wait for it to end, "
                               "or use another --out") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(descriptor)


# What a stage can carry over from the previous one -> how to find those tensors in a model.
def carried_names(model, what, config):
    names = [n for n, _ in model.named_parameters()]
    if what == "bias":
        return set(bias_names(model, config.bitfit_final_layernorm))
    if what == "bitfit-head":  # left out, the biases keep the fresh head's initial values
        head = carried_names(model, "head", config)
        return head if config.bitfit_head_bias == "carry" else {n for n in head if not n.endswith(".bias")}
    return {n for n in names if n.startswith(f"mixins.{what}.")}


def load_carried(model, path, carries, fingerprint, origin, config):
    """Copy what `carries` names (as `config` selects it) from a previous stage's trained.pt into `model`,
    checking it comes from `origin` (this run's previous stage, see stage_origin) and fits."""
    saved = load_trained(path, origin)
    if saved["backbone"] != fingerprint:
        raise ValueError(f"{path}: trained on another backbone (weights {saved['backbone']}, this one {fingerprint}); "
                         "a head only fits the backbone it was trained with")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for what in carries:
            for name in sorted(carried_names(model, what, config)):
                if name not in saved["tensors"]:
                    raise ValueError(f"{path}: has no tensor '{name}' to carry ({what})")
                value = saved["tensors"][name]
                if value.shape != params[name].shape:
                    raise ValueError(f"{path}: '{name}' has shape {list(value.shape)}, but this task's model "
                                     f"needs {list(params[name].shape)}; the head was trained for another task")
                params[name].copy_(value)


def load_trained(path, origin=None):
    """A stage's trained.pt (or best.pt); unreadable, it names itself and how to get a good one. Given `origin`
    (stage_origin of the run and stage that should have trained it), one trained by another run is refused."""
    advice = f"delete the folder {Path(path).parent} and rerun the training command: that stage is trained again"
    saved = load_tensors(path, advice)
    check_trained_by(path, saved, saved["tensors"], origin, advice)
    return saved


def check_trained_by(source, recorded, tensors, origin, advice):
    """Weights (`source`: a trained.pt, best.pt or model/ folder holding `tensors`) must hold the tensors their
    record's digest was taken of and, given `origin`, come from that run and stage. Files of older versions,
    which record no digest or origin, are checked on what they record."""
    if "digest" in recorded and tensors_digest(tensors) != recorded["digest"]:
        raise ValueError(f"{source}: damaged: its tensors differ from the ones written (their SHA-256 digest); "
                         f"{advice}")
    differing = [] if origin is None else origin_differences(recorded.get("origin") or {}, origin)
    if differing:
        raise ValueError(f"{source}: trained by another run ({'; '.join(differing)}); a run only uses what its own "
                         "stages trained")


def stage_origin(spec, stage):
    """What a trained.pt records of the run and stage that trained it: the run as run.json describes it (model,
    data, seed, config) and the stage."""
    return {"task": spec.task, "method": spec.method, "seed": spec.seed, "stage": stage.name, "run": described(spec)}


def origin_differences(recorded, origin):
    """How a trained.pt's recorded origin differs from `origin`. Only what the file records is compared: files of
    older versions record less (none at all, or no `run`), and a config key added since counts as its default."""
    differing = [f"{key} {recorded[key]!r}, not {value!r}" for key, value in origin.items()
                 if key != "run" and key in recorded and recorded[key] != value]
    if "run" in recorded and "run" in origin:
        differing += [f"differs in {key}" for key in differing_keys(read_spec(origin["run"]), recorded["run"])
                      if key not in origin]
    return differing


BEST_WEIGHTS = "best.pt"


def trained_tensors(model, trainable):
    """A copy, in fp32 on the host, of the tensors a stage trains."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if n in trainable}


def write_trained(tensors, fingerprint, origin, path, **extra):
    with atomic_path(path) as tmp:
        torch.save({"tensors": tensors, "digest": tensors_digest(tensors), "backbone": fingerprint, "origin": origin,
                    **extra}, tmp)


def best_keeper(ready, spec, stage, folder):
    """Keeps the final stage's best epoch in STAGE/best.pt (trained.pt's layout, plus the epoch and its record)."""
    task = get_task(spec.task)

    def write(tensors, record):
        write_trained(tensors, ready.backbone.fingerprint, stage_origin(spec, stage), folder / BEST_WEIGHTS,
                      epoch=record["epoch"], record=record)
    return BestKeeper(selection_metric(task, spec.config), partial(trained_tensors, trainable=ready.trainable), write)


def check_best(folder, done):
    """best.pt must hold the epoch done.json calls best. A kill between best.pt and the checkpoint after it,
    followed by a resume that trains differently (nondeterministic kernels), could leave another: then it is
    removed, and predict and export fall back to the last epoch, saying so."""
    path = folder / BEST_WEIGHTS
    if path.is_file() and load_trained(path).get("epoch") != done["best"]["epoch"]:
        path.unlink()
        print(f"warning: {path} did not hold the best epoch ({done['best']['epoch']}) after a resume; removed: "
              "the run keeps its last epoch's weights only", file=sys.stderr, flush=True)


MODEL_ORIGIN = "trained_by.json"


def saved_state(model):
    """The model's state as save_model writes it: floating tensors in fp32, on the host."""
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in model.state_dict().items()}


def save_model(model, backbone, folder, origin):
    """The classifier as a SAT checkpoint folder that SAT's AutoModel (after importing sat_ehft.backbone) loads,
    with the backbone's tokenizer files, what it kept of its Hugging Face source (for sat-ehft export), and
    trained_by.json: the run and stage that trained it (`origin`) and its tensors' digest."""
    state = saved_state(model)
    with atomic_dir(folder) as tmp:
        write_sat_checkpoint(tmp, backbone.config, state)
        write_json(tmp / MODEL_ORIGIN, {"origin": origin, "digest": tensors_digest(state)})
        copy_tokenizer_files(tokenizer_folder(backbone.folder), tmp / TOKENIZER_SUBDIR)
        if (backbone.folder / HF_ORIGIN_SUBDIR).is_dir():
            shutil.copytree(backbone.folder / HF_ORIGIN_SUBDIR, tmp / HF_ORIGIN_SUBDIR)


def check_saved_model(folder, model, origin):
    """A RUN/model folder loaded as `model` must have been trained by `origin` (stage_origin of its run's final
    stage) and hold the tensors it was saved with. Folders saved before trained_by.json existed are trusted."""
    path = Path(folder) / MODEL_ORIGIN
    if path.is_file():
        check_trained_by(folder, read_json(path), saved_state(model), origin,
                         "delete it and use --weights best, or the stage's trained.pt")


def summarize(task, records, config):
    """Best (by the selection metric) and last epoch records, among the evaluated epochs (see eval_every)."""
    metric = selection_metric(task, config)
    evaluated = [r for r in records if metric in r]
    return {"metric": metric, "best": max(evaluated, key=lambda r: r[metric]), "last": evaluated[-1]}


def run_encoding(spec):
    """How a run encodes its examples (training, evaluation, prediction alike). With `prefix_in_length`, a run
    of a prefix method leaves room for the prefixes: the original code's prefix runs took 495 + 17 = 512."""
    encoding = Encoding.of(spec.config)
    uses_prefix = any("prefix" in stage.mixins for stage in get_method(spec.method).stages)
    if spec.config.prefix_in_length and uses_prefix:
        return dataclasses.replace(encoding, max_length=encoding.max_length - spec.config.prefix_len)
    return encoding


def encoded_splits(task, spec, tokenizer):
    return [encoded_split(task, spec.data_dir, split, tokenizer, run_encoding(spec)) for split in ("train", "dev")]


@dataclass
class PreparedStage:
    backbone: object  # sat_ehft.backbone.Backbone, its model now the classifier
    model: torch.nn.Module
    trainable: set
    tokenizer: object
    train: list  # encoded examples
    dev: list
    reported: dict  # what done.json reports of how the stage was prepared (Child-Tuning_D's Fisher), by topic


def prepare_stage(spec, out, index):
    """The model a stage starts from: the pretrained backbone loaded afresh, a new head and the stage's
    mixins, then what the stage carries from the previous stage's trained.pt."""
    task, method = get_task(spec.task), get_method(spec.method)
    stage = method.stages[index]
    set_seed(spec.seed)
    backbone = load_backbone(spec.model)
    if run_encoding(spec).max_length > backbone.max_tokens:  # else an IndexError at the first step
        raise ValueError(f"max_length={spec.config.max_length}: {spec.model} holds sequences of at most "
                         f"{backbone.max_tokens} tokens; set max_length to {backbone.max_tokens} or less")
    tokenizer = backbone.load_tokenizer()
    train, dev = encoded_splits(task, spec, tokenizer)
    model, trainable = build_classifier(backbone, task, stage, spec.config)
    if stage.carries:
        previous = method.stages[index - 1]
        load_carried(model, Path(out) / previous.name / "trained.pt", stage.carries, backbone.fingerprint,
                     stage_origin(spec, previous), spec.config)
    reported = {}
    if stage.fisher_mask:
        reported["child_tuning"] = mask_to_child_network(model, task, train, spec.config.micro_batch_size,
                                                         tokenizer.pad_token_id, spec.config)
    return PreparedStage(backbone, model, trainable, tokenizer, train, dev, reported)


def training_config(config, stage):
    """The config a stage trains with: the original code's Child-Tuning_D ran its own optimizer
    (ChildTuningAdamW: betas (0.9, 0.999), no weight decay) whatever the other methods used."""
    if stage.fisher_mask and config.child_tuning_optimizer == "original":
        return dataclasses.replace(config, adam_betas=(0.9, 0.999), weight_decay=0.0)
    return config


def run_stage(spec, out, index, since=None):
    """Run stage `index` (0-based) of the method; return its done.json content. `since`: see train_stage."""
    task, method = get_task(spec.task), get_method(spec.method)
    stage, epochs = method.stages[index], method.stage_epochs(spec.config)[index]
    folder = Path(out) / stage.name
    started = time.perf_counter()
    ready = prepare_stage(spec, out, index)
    record_run(spec, out)
    setup_seconds = time.perf_counter() - started
    budget = StageBudget(lr=stage.peak_lr(spec.config), epochs=epochs)
    files = StageFiles(folder)
    earlier = earlier_starts_seconds(files)
    distance = [WeightDistanceLog(ready.model, folder, spec.config.weight_distance_every)] \
        if spec.config.track_weight_distance and is_main() else []
    final = index == len(method.stages) - 1
    keeper = best_keeper(ready, spec, stage, folder) if final and spec.config.save_best else None
    records, cost = train_stage(ready.model, ready.trainable, task, ready.train, ready.dev,
                                training_config(spec.config, stage), budget, seed=spec.seed,
                                pad_id=ready.tokenizer.pad_token_id, files=files, callbacks=distance,
                                step_callbacks=[log.on_step for log in distance], best=keeper, since=since)
    trainable_count = sum(p.numel() for n, p in ready.model.named_parameters() if n in ready.trainable)
    # cost: this start's set-up, and training, evaluation and checkpoints summed over every start of the stage;
    # seconds: this start's wall time and what the earlier ones recorded
    done = {"stage": stage.name, "epochs": epochs, "lr": budget.lr, "trainable_parameters": trainable_count,
            "precision": resolve_precision(spec.config.precision), "skipped_steps": skipped_steps(records),
            "ranks": layout(), "origin": stage_origin(spec, stage),
            "seconds": round(time.perf_counter() - started + earlier, 2),
            "cost": {"setup_seconds": round(setup_seconds, 2), **{k: round(v, 2) for k, v in cost.items()}},
            **ready.reported, **summarize(task, records, spec.config)}
    if is_main():
        write_trained(trained_tensors(ready.model, ready.trainable), ready.backbone.fingerprint,
                      stage_origin(spec, stage), folder / "trained.pt")
        check_best(folder, done)
        if spec.config.save_model and final:
            save_model(ready.model, ready.backbone, Path(out) / "model", stage_origin(spec, stage))
        write_json(folder / "done.json", done)
        checkpoints.remove_resumable(files.checkpoints)
    barrier()
    return done


def read_run(out):
    """The RunSpec recorded in a run folder's run.json."""
    return read_spec(read_json(Path(out) / "run.json"))


def read_spec(recorded):
    """The RunSpec that run.json's content `recorded` describes."""
    from sat_ehft.config import load_config

    return RunSpec(task=recorded["task"], method=recorded["method"], model=recorded["model"],
                   data_dir=recorded["data_dir"], seed=recorded["seed"], config=load_config(overrides=recorded["config"]))


def rebuild_stage_model(out, stage_name, weights="trained.pt"):
    """The model as a finished stage left it: the pretrained backbone, that stage's head and mixins, and
    every tensor the stage trained (from its trained.pt, or `weights`: best.pt). Returns (backbone, model, spec)."""
    spec = read_run(out)
    method, task = get_method(spec.method), get_task(spec.task)
    stage = next(s for s in method.stages if s.name == stage_name)
    backbone = load_backbone(spec.model)
    model, _ = build_classifier(backbone, task, stage, spec.config)
    trained = load_trained(Path(out) / stage_name / weights, stage_origin(spec, stage))["tensors"]
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in trained.items():
            params[name].copy_(value)
    return backbone, model.eval(), spec


def stage_done(out, stage):
    """The stage's done.json, None if it has not finished."""
    path = Path(out) / stage.name / "done.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # written atomically, so damaged after the fact
        raise ValueError(f"{path}: unreadable ({err}); delete it and rerun: that stage is trained again") from None


def run(spec, out, stage_number=None, log=print):
    """Run the method's stages (or only `stage_number`, 1-based), skipping finished ones.

    Returns result.json's content once every stage is done, else None."""
    method = get_method(spec.method)
    selection_metric(get_task(spec.task), spec.config)
    method.check(spec.config)
    if stage_number is not None and not 1 <= stage_number <= len(method.stages):
        raise ValueError(f"--stage {stage_number}: method {method.name} has stages 1..{len(method.stages)}")
    numbers = range(1, len(method.stages) + 1) if stage_number is None else [stage_number]
    ensure_distributed()
    check_writable(out)
    with run_folder_lock(out):
        refuse_links(out)
        check_run_folder(spec, out, log)
        # The first stage trained in this process counts its start-up from the launch, a later one from the end
        # of the stage before it (not across that stage's training)
        since = None
        for number in numbers:
            stage = method.stages[number - 1]
            if stage_done(out, stage):
                log(f"{spec.method} {stage.name}: already finished, skipped")
                continue
            if number > 1 and not stage_done(out, method.stages[number - 2]):
                raise ValueError(f"{out}: {method.stages[number - 2].name} has not finished; run it first")
            done = run_stage(spec, out, number - 1, since)
            since = time.time()
            log(f"{spec.method} {stage.name}: best {done['metric']} {done['best'][done['metric']]:.4f} "
                f"(epoch {done['best']['epoch']}), last {done['last'][done['metric']]:.4f}")
        return write_result(spec, out, method)


def write_result(spec, out, method):
    stages = [stage_done(out, s) for s in method.stages]
    if not all(stages):
        return None
    final, metric = stages[-1], stages[-1]["metric"]
    records = [r for s in method.stages
               for r in map(json.loads, (Path(out) / s.name / "metrics.jsonl").read_text().splitlines())]
    # The original code reported a running maximum of each metric over every evaluation, Stage 1's included.
    maxima = {name: max(r[name] for r in records if name in r) for name in get_task(spec.task).metrics}
    result = {"task": spec.task, "method": spec.method, "seed": spec.seed, "metric": metric,
              "best": final["best"][metric], "best_epoch": final["best"]["epoch"], "last": final["last"][metric],
              # the best epoch predicted one class for every dev example (or one value): a failed run
              "collapsed": final["best"].get("collapsed"),
              "max_over_all_stages": maxima[metric], "max_over_all_stages_by_metric": maxima,
              # the score set beside the paper's: the original's running maximum where the run trained as it did
              "reported": "max_over_all_stages" if spec.config.data_order == "original" else "best",
              "stages": {s.name: done for s, done in zip(method.stages, stages)}}
    if is_main():
        write_json(Path(out) / "result.json", result)
    return result
