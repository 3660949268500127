"""A stage's resumable checkpoints: whole or absent, and never a way to run code from a run folder.

Layout of STAGE/checkpoint/:
  epochN/               a complete checkpoint (DeepSpeed's files + manifest.json: each file's size and SHA-256);
                        at most one after a save
  .epochN.partial/      a write in progress; a kill leaves it behind and the next start removes it
  epochN.broken[-K]/    a checkpoint found incomplete, changed or unreadable on resume, set aside: kept when the
                        stage ends (its resumable checkpoints go), until the run folder is deleted
  latest                names the newest complete tag (for DeepSpeed's own tools, such as zero_to_fp32.py)

A tag becomes complete in one rename, after its files and manifest are on disk (fsync), so a power loss
or kill leaves either the previous checkpoint or the new one. Only trainable tensors and their optimizer
state are saved: a PET stage's checkpoint holds the few tensors it trains, not the frozen backbone.
Every load uses torch.load(weights_only=True), DeepSpeed's included, allowing only the few plain
DeepSpeed types its optimizer states hold.
"""

import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from sat_ehft.atomic import file_sha256, folder_bytes, raise_if_disk_full, write_text
from sat_ehft.ranks import barrier, is_main, rank_and_world_size

MANIFEST = "manifest.json"
POINTER = "latest"
TAG = re.compile(r"epoch(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint that must not be loaded (it holds pickled objects other than tensors); names its files."""


def deepspeed_safe_globals():
    """The non-tensor types DeepSpeed pickles into its checkpoints (ZeRO 1/2 and bf16 optimizer states):
    plain data classes, an enum and a named tuple; none runs code when rebuilt."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path, map_location=None, mmap=False):
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def tag_name(epoch):
    return f"epoch{epoch}"


def _fsync(path, directory=False):
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save(engine, folder, epoch, client_state):
    """Checkpoint `engine` after `epoch` (every rank calls this); return the bytes written."""
    folder, tag = Path(folder), tag_name(epoch)
    partial = folder / f".{tag}.partial"
    if is_main():
        shutil.rmtree(partial, ignore_errors=True)
    barrier()
    try:
        engine.save_checkpoint(str(folder), tag=partial.name, client_state=client_state, save_latest=False,
                               exclude_frozen_parameters=True)
    except (OSError, RuntimeError) as err:  # a full disk, say: free what this write took; the last checkpoint stays
        written = folder_bytes(partial)
        shutil.rmtree(partial, ignore_errors=True)
        raise_if_disk_full(err, partial, written)
        raise
    barrier()
    written = folder_bytes(partial)
    barrier()  # every rank has read the folder before rank 0 renames it
    if is_main():
        _commit(folder, partial, tag)
    barrier()
    return written


def _commit(folder, partial, tag):
    """Make the written `partial` folder the complete checkpoint `tag` (a manifest of its files' sizes and
    SHA-256s), then drop the older ones."""
    files = {f.name: f.stat().st_size for f in sorted(partial.iterdir())}
    for name in files:
        _fsync(partial / name)
    checksums = {name: file_sha256(partial / name) for name in files}
    (partial / MANIFEST).write_text(json.dumps({"tag": tag, "files": files, "sha256": checksums}, indent=2),
                                    encoding="utf-8")
    _fsync(partial / MANIFEST)
    os.rename(partial, folder / tag)
    _fsync(folder, directory=True)
    write_text(folder / POINTER, tag + "\n")
    for old in _complete_tags(folder):
        if old.name != tag:
            shutil.rmtree(old)


def _complete_tags(folder):
    """The epochN folders in `folder`, newest first."""
    tags = [p for p in folder.iterdir() if p.is_dir() and TAG.fullmatch(p.name)]
    return sorted(tags, key=lambda p: int(TAG.fullmatch(p.name).group(1)), reverse=True)


def problem_with(tag_folder, trainable):
    """Why `tag_folder` is not a whole checkpoint of the `trainable` tensors (None if it is). Raises
    CheckpointError for a file that holds pickled objects other than tensors."""
    manifest = tag_folder / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (the write did not finish)"
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))
        files, checksums = listed["files"], listed.get("sha256", {})  # manifests of older versions: sizes only
    except (ValueError, KeyError, UnicodeDecodeError) as err:
        return f"unreadable {MANIFEST} ({err})"
    for name, size in files.items():
        path = tag_folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
        if name in checksums and file_sha256(path) != checksums[name]:
            return f"{name} does not match its SHA-256 in the manifest (changed after it was written)"
        problem = _unreadable(path)
        if problem:
            return problem
    model_states = [name for name in files if name.endswith("model_states.pt")]
    if not model_states:
        return "no model states file"
    saved = set(safe_load(tag_folder / model_states[0], map_location="cpu", mmap=True)["module"])
    if not set(trainable) <= saved:
        return f"lacks trained tensors {sorted(set(trainable) - saved)[:3]}"
    return None


def _unreadable(path):
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as err:  # a truncated or corrupt zip fails in the reader's own words
        return f"{path.name} is unreadable ({type(err).__name__}: {err})"
    allowed = {f"{cls.__module__}.{cls.__qualname__}" for cls in deepspeed_safe_globals()}
    if unsafe - allowed:
        raise CheckpointError(f"{path}: holds pickled objects that are not tensors ({', '.join(sorted(unsafe - allowed))}), "
                              "which sat-ehft never writes; refusing to load it. Delete that checkpoint folder to "
                              "restart the stage, after finding out who wrote it")
    return None


def _choose(folder, trainable, report):
    """Rank 0: the newest whole checkpoint's tag (or None); removes unfinished writes and sets broken
    checkpoints aside, saying so."""
    for partial in folder.glob(".epoch*.partial"):
        shutil.rmtree(partial)
        report(f"removed {partial}: a checkpoint write that did not finish")
    for tag_folder in _complete_tags(folder):
        problem = problem_with(tag_folder, trainable)
        if problem is None:
            return tag_folder.name
        aside = _set_aside(tag_folder)
        report(f"{tag_folder}: not a whole checkpoint ({problem}); moved to {aside}")
    return None


def _set_aside(tag_folder):
    aside = tag_folder.with_name(tag_folder.name + ".broken")
    number = 1
    while aside.exists():
        number += 1
        aside = tag_folder.with_name(f"{tag_folder.name}.broken-{number}")
    os.rename(tag_folder, aside)
    return aside


def remove_resumable(folder, report=print):
    """At a stage's end: its resumable checkpoints go; checkpoints set aside as broken stay, for inspection,
    until the run folder is deleted, and the log says where."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if ".broken" in path.name:
            report(f"kept {path}: a checkpoint set aside as broken, for inspection")
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


def restore(engine, folder, trainable, report=print):
    """Load the newest whole checkpoint in `folder` into `engine` (every rank calls this); return its client
    state, or None when there is none to resume from."""
    folder = Path(folder)
    chosen = [None]
    if is_main() and folder.is_dir():
        chosen = [_choose(folder, trainable, report)]
    if rank_and_world_size()[1] > 1:
        dist.broadcast_object_list(chosen, src=0)
    if chosen[0] is None:
        return None
    engine.checkpoint_engine.load = safe_load  # DeepSpeed's own loader unpickles with weights_only=False
    _, client_state = engine.load_checkpoint(str(folder), tag=chosen[0], load_module_strict=False)
    return client_state
