"""A stage's checkpoints (sat_ehft.checkpoints): whole or absent, only what trains, never a way to run code, and
a resume that starts after the last whole checkpoint and ends as an uninterrupted run."""

import errno
import json
import os
import pickle
import shutil
import stat

import pytest
import torch
from test_trainer import CONFIG, Interrupted, classifier, interrupt_after, run_ft

from sat_ehft import checkpoints
from sat_ehft.atomic import atomic_path, file_sha256
from sat_ehft.cli import error_message
from sat_ehft.config import Config
from sat_ehft.methods import get_method
from sat_ehft.trainer import BestKeeper, StageBudget, StageFiles, train_stage


def train(tmp_path, rte_features, pad_id, folder, method="ehft-bitfit", epochs=2, callbacks=(), clock=None, best=None,
          **config):
    task, train_rows, dev = rte_features
    model, trainable = classifier(tmp_path, task, get_method(method).stages[0])
    extra = {"clock": clock} if clock else {}
    extra.update({"best": best} if best else {})
    records, cost = train_stage(model, trainable, task, train_rows, dev, Config(**{**CONFIG.__dict__, **config}),
                                StageBudget(lr=1e-3, epochs=epochs), seed=3, pad_id=pad_id,
                                files=StageFiles(tmp_path / folder), callbacks=callbacks, **extra)
    return model, trainable, records, cost


def logged(folder, name="metrics.jsonl"):
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def test_a_checkpoint_is_a_renamed_tag_with_a_manifest_and_only_the_trained_tensors(tmp_path, rte_features,
                                                                                   minilm_tokenizer):
    pad = minilm_tokenizer.pad_token_id
    sizes = {}
    for method in ("ehft-bitfit", "ft"):
        model, trainable, _, cost = train(tmp_path, rte_features, pad, method, method=method, epochs=1)
        folder = tmp_path / method / "checkpoint"
        assert sorted(p.name for p in folder.iterdir()) == ["epoch1", "latest"]  # no temporary tag left
        assert (folder / "latest").read_text() == "epoch1\n"
        manifest = json.loads((folder / "epoch1" / checkpoints.MANIFEST).read_text())
        on_disk = {f.name: f.stat().st_size for f in (folder / "epoch1").iterdir() if f.name != checkpoints.MANIFEST}
        assert manifest == {"tag": "epoch1", "files": on_disk,
                            "sha256": {name: file_sha256(folder / "epoch1" / name) for name in on_disk}}
        assert cost["checkpoint_bytes"] == sum(on_disk.values()) and cost["checkpoints"] == 1
        saved = checkpoints.safe_load(folder / "epoch1" / "mp_rank_00_model_states.pt")["module"]
        buffers = {name for name, _ in model.named_buffers()}
        assert set(saved) - buffers == trainable  # the frozen backbone is not saved again
        sizes[method] = cost["checkpoint_bytes"]
    assert sizes["ehft-bitfit"] < sizes["ft"] / 10


def test_the_time_rule_checkpoints_mid_stage_and_a_resume_starts_after_that_checkpoint(tmp_path, rte_features,
                                                                                       minilm_tokenizer, capsys):
    """Each epoch 'takes' 10 minutes on a fake clock; with checkpoint_minutes=25 the checkpoints fall after
    epochs 4 and 6 (the last). A run interrupted after epoch 5 resumes after epoch 4, not from the start."""
    pad = minilm_tokenizer.pad_token_id
    _, _, whole, _ = train(tmp_path, rte_features, pad, "whole", epochs=6)
    now = [0.0]

    def ten_minutes_pass(model, record):
        now[0] += 600

    pointer, tags = tmp_path / "cut" / "checkpoint" / "latest", []

    def note_checkpoint(model, record):
        tags.append(pointer.read_text().strip() if pointer.exists() else None)

    with pytest.raises(Interrupted):
        train(tmp_path, rte_features, pad, "cut", epochs=6, clock=lambda: now[0], checkpoint_minutes=25,
              callbacks=[note_checkpoint, ten_minutes_pass, interrupt_after(5)])
    assert tags == [None, None, None, "epoch4", "epoch4"]
    assert [r["epoch"] for r in logged(tmp_path / "cut")] == [1, 2, 3, 4, 5]
    capsys.readouterr()
    now[0], trained = 0.0, []
    _, _, resumed, cost = train(tmp_path, rte_features, pad, "cut", epochs=6, clock=lambda: now[0],
                                checkpoint_minutes=25,
                                callbacks=[ten_minutes_pass, lambda m, r: trained.append(r["epoch"])])
    assert "cut: resumed after epoch 4" in capsys.readouterr().out
    assert trained == [5, 6]
    assert resumed == whole and logged(tmp_path / "cut") == whole
    assert cost["checkpoints"] == 2  # epoch 4 before the interruption, epoch 6 after it


class CreatesAFolder:
    """A pickle that, when unpickled without weights_only, creates a folder: what an attacker would plant."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.makedirs, (str(self.path),)


def plant(tag_folder, marker):
    """Overwrite the checkpoint's last file with a code-running pickle, and its manifest to match."""
    victim = sorted(f for f in tag_folder.iterdir() if f.suffix == ".pt")[-1]
    torch.save({"module": {}, "payload": CreatesAFolder(marker)}, victim)
    manifest = json.loads((tag_folder / checkpoints.MANIFEST).read_text())
    manifest["files"][victim.name] = victim.stat().st_size
    manifest["sha256"][victim.name] = file_sha256(victim)
    (tag_folder / checkpoints.MANIFEST).write_text(json.dumps(manifest))
    return victim


@pytest.mark.parametrize("precision, zero_stage", [("fp32", 0), ("fp32", 1), ("fp32", 2), ("bf16", 0), ("bf16", 2)])
def test_a_planted_pickle_is_never_run_and_real_checkpoints_load_weights_only(tmp_path, rte_features, minilm_tokenizer,
                                                                              capsys, precision, zero_stage):
    pad, settings = minilm_tokenizer.pad_token_id, {"precision": precision, "zero_stage": zero_stage}
    with pytest.raises(Interrupted):
        train(tmp_path, rte_features, pad, "run", callbacks=[interrupt_after(1)], **settings)
    shutil.copytree(tmp_path / "run", tmp_path / "planted")
    capsys.readouterr()
    train(tmp_path, rte_features, pad, "run", **settings)  # the real checkpoint loads with weights_only
    assert "run: resumed after epoch 1" in capsys.readouterr().out
    marker = tmp_path / "code-ran"
    victim = plant(tmp_path / "planted" / "checkpoint" / "epoch1", marker)
    with pytest.raises(checkpoints.CheckpointError, match=f"{victim}: holds pickled objects that are not tensors"):
        train(tmp_path, rte_features, pad, "planted", **settings)
    assert not marker.exists()
    assert (victim.parent / checkpoints.MANIFEST).exists()  # refused, left as it is for inspection


def test_deepspeeds_own_loads_are_weights_only(tmp_path, rte_features, minilm_tokenizer, monkeypatch):
    """Even past the verification, DeepSpeed's load_checkpoint unpickles with weights_only."""
    pad = minilm_tokenizer.pad_token_id
    with pytest.raises(Interrupted):
        train(tmp_path, rte_features, pad, "run", callbacks=[interrupt_after(1)], zero_stage=1)
    marker = tmp_path / "code-ran"
    plant(tmp_path / "run" / "checkpoint" / "epoch1", marker)
    monkeypatch.setattr(checkpoints, "problem_with", lambda tag_folder, trainable: None)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train(tmp_path, rte_features, pad, "run", zero_stage=1)
    assert not marker.exists()


def interrupted_twice(tmp_path, rte_features, pad):
    """A 3-epoch run stopped after epoch 2, its checkpoint folder holding a whole epoch1 beside epoch2 (as a
    kill between the new tag's rename and the old one's removal leaves it)."""
    with pytest.raises(Interrupted):
        run_ft(tmp_path, rte_features, pad, "cut", callbacks=[interrupt_after(1)])
    shutil.copytree(tmp_path / "cut" / "checkpoint" / "epoch1", tmp_path / "epoch1-copy")
    with pytest.raises(Interrupted):
        run_ft(tmp_path, rte_features, pad, "cut", callbacks=[interrupt_after(2)])
    folder = tmp_path / "cut" / "checkpoint"
    shutil.copytree(tmp_path / "epoch1-copy", folder / "epoch1")
    return folder


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def whole_and_cut_after_epoch2(tmp_path, rte_features, pad):
    """An uninterrupted run's records, and the checkpoint folder of run "cut", interrupted after epoch 2."""
    _, whole_records = run_ft(tmp_path, rte_features, pad, "whole")
    with pytest.raises(Interrupted):
        run_ft(tmp_path, rte_features, pad, "cut", callbacks=[interrupt_after(2)])
    return whole_records, tmp_path / "cut" / "checkpoint"


def resume_cut(tmp_path, rte_features, pad, capsys):
    """Run "cut" again: (its model, the epochs it trained, its records, what it printed)."""
    capsys.readouterr()
    trained = []
    model, records = run_ft(tmp_path, rte_features, pad, "cut", callbacks=[lambda m, r: trained.append(r["epoch"])])
    return model, trained, records, capsys.readouterr().out


def test_a_broken_checkpoint_is_set_aside_and_the_stage_resumes_from_the_last_whole_one(tmp_path, rte_features,
                                                                                       minilm_tokenizer, capsys):
    pad = minilm_tokenizer.pad_token_id
    whole, whole_records = run_ft(tmp_path, rte_features, pad, "whole")
    folder = interrupted_twice(tmp_path, rte_features, pad)
    (folder / "latest").write_text("")  # DeepSpeed's pointer, emptied by a crash: not needed to resume
    truncate(folder / "epoch2" / "mp_rank_00_model_states.pt")  # a power loss after the rename (no fsync)
    resumed, trained, records, out = resume_cut(tmp_path, rte_features, pad, capsys)
    assert f"{folder / 'epoch2'}: not a whole checkpoint (mp_rank_00_model_states.pt has" in out
    assert f"moved to {folder / 'epoch2.broken'}" in out and "cut: resumed after epoch 1" in out
    assert trained == [2, 3] and records == whole_records
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    assert (folder / "epoch2.broken" / "mp_rank_00_model_states.pt").is_file()  # set aside, not deleted
    assert (folder / "latest").read_text() == "epoch3\n"


def test_an_unreadable_only_checkpoint_restarts_the_stage(tmp_path, rte_features, minilm_tokenizer, capsys):
    whole_records, folder = whole_and_cut_after_epoch2(tmp_path, rte_features, minilm_tokenizer.pad_token_id)
    (folder / "latest").write_text("epoch7\n")  # names a missing tag
    states = folder / "epoch2" / "mp_rank_00_model_states.pt"
    truncate(states)
    manifest = json.loads((folder / "epoch2" / checkpoints.MANIFEST).read_text())
    manifest["files"][states.name] = states.stat().st_size  # the size matches: only reading it shows the damage
    del manifest["sha256"]  # as an older version's manifest
    (folder / "epoch2" / checkpoints.MANIFEST).write_text(json.dumps(manifest))
    _, trained, records, out = resume_cut(tmp_path, rte_features, minilm_tokenizer.pad_token_id, capsys)
    assert "mp_rank_00_model_states.pt is unreadable" in out
    assert trained == [1, 2, 3] and records == whole_records


def test_a_checkpoint_changed_at_the_same_size_is_set_aside(tmp_path, rte_features, minilm_tokenizer, capsys):
    """Bytes inside the largest tensor record overwritten with 1e30 at the same size (bit rot) resumed silently
    and reached the final weights. The manifest's SHA-256 finds it: set aside, and the stage trains again from
    the start (it had no other checkpoint)."""
    whole_records, folder = whole_and_cut_after_epoch2(tmp_path, rte_features, minilm_tokenizer.pad_token_id)
    states = max((folder / "epoch2").glob("*.pt"), key=lambda path: path.stat().st_size)
    data = bytearray(states.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = torch.full((1024,), 1e30).numpy().tobytes()
    states.write_bytes(bytes(data))
    _, trained, records, out = resume_cut(tmp_path, rte_features, minilm_tokenizer.pad_token_id, capsys)
    assert f"{states.name} does not match its SHA-256 in the manifest (changed after it was written)" in out
    assert trained == [1, 2, 3] and records == whole_records
    assert (folder / "epoch2.broken" / states.name).read_bytes() == bytes(data)


def test_a_checkpoint_without_a_trained_tensor_is_refused_naming_it(tmp_path, rte_features, minilm_tokenizer, capsys):
    """Loading is not strict (frozen tensors are not saved), so a missing trained tensor would silently keep its
    initial value: such a checkpoint is set aside with the tensor's name, and the stage trains again."""
    whole_records, folder = whole_and_cut_after_epoch2(tmp_path, rte_features, minilm_tokenizer.pad_token_id)
    states = folder / "epoch2" / "mp_rank_00_model_states.pt"
    saved = checkpoints.safe_load(states)
    del saved["module"]["mixins.head.out.bias"]
    torch.save(saved, states)
    manifest = json.loads((folder / "epoch2" / checkpoints.MANIFEST).read_text())
    manifest["files"][states.name] = states.stat().st_size  # size and checksum agree: only the content is short
    manifest["sha256"][states.name] = file_sha256(states)
    (folder / "epoch2" / checkpoints.MANIFEST).write_text(json.dumps(manifest))
    _, trained, records, out = resume_cut(tmp_path, rte_features, minilm_tokenizer.pad_token_id, capsys)
    assert f"{folder / 'epoch2'}: not a whole checkpoint (lacks trained tensors ['mixins.head.out.bias'])" in out
    assert trained == [1, 2, 3] and records == whole_records


def test_a_full_disk_during_a_checkpoint_says_where_keeps_the_last_one_and_a_rerun_resumes(
        tmp_path, rte_features, minilm_tokenizer, monkeypatch, capsys):
    pad = minilm_tokenizer.pad_token_id
    _, whole_records = run_ft(tmp_path, rte_features, pad, "whole")
    import deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine as engine_module

    real_save = torch.save

    def disk_fills_at_epoch2(state, path, **kwargs):
        if ".epoch2.partial" in str(path):
            open(path, "wb").write(b"PK\x03\x04 half a file")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 146717440 vs 146717328")
        real_save(state, path, **kwargs)

    monkeypatch.setattr(engine_module.torch, "save", disk_fills_at_epoch2)
    with pytest.raises(OSError) as failure:
        run_ft(tmp_path, rte_features, pad, "cut")
    folder = tmp_path / "cut" / "checkpoint"
    assert failure.value.errno == errno.ENOSPC
    message = error_message(failure.value)
    assert message.startswith(f"{folder / '.epoch2.partial'}: No space left on device (") and "MiB free there" in message
    assert sorted(p.name for p in folder.iterdir()) == ["epoch1", "latest"]  # the half-written tag is gone
    monkeypatch.setattr(engine_module.torch, "save", real_save)
    capsys.readouterr()
    _, records = run_ft(tmp_path, rte_features, pad, "cut")
    assert "cut: resumed after epoch 1" in capsys.readouterr().out and records == whole_records


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_an_atomic_write_gets_the_permissions_of_the_umask_as_a_plain_write_does(tmp_path, mask):
    """A run's results on a shared file system stay readable by whom the user's umask lets read them."""
    from sat_ehft.atomic import write_json

    before = os.umask(mask)
    try:
        write_json(tmp_path / "result.json", {"best": 1.0})
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode)


def test_a_full_disk_during_an_atomic_write_names_the_file_keeps_the_old_one_and_frees_the_new_ones_space(tmp_path):
    """As torch.save fails on a full disk: its writer, in the frame of a first error, holds the file open while a
    second error ('unexpected pos') is raised. The message read 0 MiB free while that handle kept the deleted
    file's space taken; now the handle is released and the message says how much the write took."""
    path = tmp_path / "trained.pt"
    path.write_bytes(b"the previous file")

    def torch_save_on_a_full_disk(target):
        try:
            writer = open(target, "wb")  # noqa: SIM115 (held open by the frame, as torch's writer is)
            writer.write(b"\0" * 3 * 2 ** 20)
            writer.flush()
            raise RuntimeError("basic_ios::clear: iostream error")
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 576 vs 534")

    with pytest.raises(OSError) as failure:
        with atomic_path(path) as tmp:
            torch_save_on_a_full_disk(tmp)
    assert failure.value.errno == errno.ENOSPC and failure.value.filename == str(path)
    assert path.read_bytes() == b"the previous file" and os.listdir(tmp_path) == ["trained.pt"]
    open_files = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                  if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [name for name in open_files if str(tmp_path) in name]  # the deleted temp file is closed
    assert error_message(failure.value).startswith(f"{path}: No space left on device (") and \
        "MiB free there now; the write failed after 3 MiB: it needs more; free some and rerun)" in \
        error_message(failure.value)


def test_the_best_epochs_weights_are_kept_and_written_with_the_checkpoint_after_them(tmp_path, rte_features,
                                                                                    minilm_tokenizer):
    """BestKeeper holds the best epoch so far (the first of equals) and writes it just before the next
    checkpoint (here after epochs 3, 5 and 6: 10 minutes an epoch, checkpoint_minutes=15). Killed after a new
    best (epoch 4) but before that checkpoint, the stage leaves the earlier best on disk; resumed, it trains
    epoch 4 again and ends with the best weights of an uninterrupted run."""
    pad, now = minilm_tokenizer.pad_token_id, [0.0]

    def keeper(written):
        def write(tensors, record):
            written.append((record["epoch"], tensors))
        return BestKeeper("accuracy", lambda model: {n: p.detach().clone() for n, p in model.named_parameters()}, write)

    def ten_minutes_pass(model, record):
        now[0] += 600

    def run(folder, written, *callbacks):
        now[0] = 0.0
        return train(tmp_path, rte_features, pad, folder, method="ft", epochs=6, clock=lambda: now[0], lr=3e-3,
                     checkpoint_minutes=15, best=keeper(written), callbacks=[ten_minutes_pass, *callbacks])

    weights, whole_written = {}, []
    _, _, whole, _ = run("whole", whole_written, lambda m, r: weights.setdefault(
        r["epoch"], {n: p.detach().clone() for n, p in m.named_parameters()}))
    accuracies = [r["accuracy"] for r in whole]
    best_epoch = accuracies.index(max(accuracies)) + 1
    assert best_epoch == 4, accuracies  # after the checkpoint of epoch 3, before that of epoch 5
    assert whole_written[-1][0] == best_epoch
    assert all(torch.equal(whole_written[-1][1][n], weights[best_epoch][n]) for n in weights[best_epoch])

    cut_written, resumed_written = [], []
    with pytest.raises(Interrupted):
        run("cut", cut_written, interrupt_after(4))
    assert cut_written and all(epoch <= 3 for epoch, _ in cut_written)  # epoch 4's best was never written
    run("cut", resumed_written)
    assert resumed_written[-1][0] == best_epoch
    assert all(torch.equal(resumed_written[-1][1][n], weights[best_epoch][n]) for n in weights[best_epoch])


def test_a_stages_end_removes_its_resumable_checkpoints_and_keeps_the_broken_ones(tmp_path):
    """Set-aside checkpoints were deleted with the rest when the stage ended, though the log had promised them
    "for inspection"; now they stay until the run folder is deleted, and the log says where."""
    folder = tmp_path / "checkpoint"
    for name in ("epoch3", "epoch2.broken", "epoch1.broken-2"):
        (folder / name).mkdir(parents=True)
        (folder / name / "mp_rank_00_model_states.pt").write_bytes(b"x")
    (folder / "latest").write_text("epoch3\n")
    lines = []
    checkpoints.remove_resumable(folder, report=lines.append)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch1.broken-2", "epoch2.broken"]
    assert sorted(lines) == [f"kept {folder / name}: a checkpoint set aside as broken, for inspection"
                             for name in ("epoch1.broken-2", "epoch2.broken")]
    for name in ("epoch1.broken-2", "epoch2.broken"):
        shutil.rmtree(folder / name)
    checkpoints.remove_resumable(folder, report=lines.append)
    assert not folder.exists()
