"""Atomic writes: a reader (or a killed run) sees the old file or the new one, never half of one. And reads
of tensor files that name the file and what to do when it cannot be read."""

import errno
import hashlib
import json
import os
import shutil
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 would keep a shared cluster's collaborators out
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except RuntimeError as err:
        raise_if_disk_full(err, path, os.path.getsize(tmp))
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def umask():
    """The process's umask, as a file it creates gets, read without setting it where Linux tells it (os.umask
    reads it only by changing it, which races other threads creating files)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="utf-8").splitlines()
        return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration):
        mask = os.umask(0o077)
        os.umask(mask)
        return mask


def raise_if_disk_full(err, path, written):
    """torch.save reports a full disk as RuntimeError('... unexpected pos N vs M'): raise the OSError (ENOSPC,
    naming `path`, with `bytes_written`: what the write had taken) it stands for, so that the user is told where
    space ran out and how much is needed."""
    if isinstance(err, RuntimeError) and "unexpected pos" in str(err):
        release_frames(err)
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        full.bytes_written = written
        raise full from err


def release_frames(err):
    """Clear the local variables of the frames `err` and the errors it chains hold: torch.save's writer, there,
    keeps the failed file open, and with it its space taken, deleted or not, for as long as the error lives (a
    full disk's message read 0 MiB free)."""
    while err is not None:
        traceback.clear_frames(err.__traceback__)
        err = err.__cause__ or err.__context__


def folder_bytes(folder):
    """The bytes of the files in `folder` (0 where it is gone)."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file()) if Path(folder).is_dir() else 0


def file_sha256(path):
    """The file's SHA-256 (hex), read a MiB at a time: about 1 s for a 280 MB checkpoint on a 2-core CPU."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensors_digest(tensors):
    """SHA-256 (hex) of a {name: tensor} dict's names, dtypes, shapes and values: what a trained.pt or a saved
    model records of its own tensors, so that a reader notices a tensor changed after it was written."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu()
        digest.update(f"{name} {tensor.dtype} {list(tensor.shape)}\n".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_json(path):
    """A JSON file's content; a damaged one (sat-ehft writes atomically, so damaged after the fact: a truncated
    copy, a disk error) raises a ValueError that names it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: damaged, not valid JSON ({err})") from None


def write_json(path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def atomic_dir(path):
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds.

    Refuses to replace an existing folder, so nothing already written is ever lost.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load_tensors(path, advice):
    """The tensors in `path` (torch.load with weights_only, or safetensors); a missing or unreadable file (truncated,
    corrupt, not a checkpoint) raises an error naming it and `advice`, what to do about it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {advice}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and safetensors readers each fail in their own words
        raise ValueError(f"{path}: unreadable ({type(err).__name__}: {err}); {advice}") from None
