"""The shell entry points and the DeepSpeed launcher, run as a user runs them (separate processes)."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, tiny_bert_folder

from sat_ehft.sweep import LAUNCH_VARIABLES

SMALL = "epochs=2 batch_size=8 micro_batch_size=8 eval_batch_size=32 max_length=64 lr=1e-3"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**extra):
    """This pytest process's environment without its own one-rank group's rendezvous settings."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    return {**env, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **extra}


def test_ehft_rte_script_runs_both_stages_and_skips_them_when_rerun(tmp_path, tiny_bert, rte_dir):
    """Also: DeepSpeed's shared-memory op is not built, so the lock of a build killed midway (here a stale one in
    an empty extensions folder) cannot stop a launch; done.json counts the time from launch to the first step;
    SAT's and DeepSpeed's notices are not printed."""
    extensions = tmp_path / "torch_extensions"
    (extensions / "deepspeed_shm_comm").mkdir(parents=True)
    (extensions / "deepspeed_shm_comm" / "lock").touch()
    env = launch_env(MODEL=str(tiny_bert), DATA_DIR=str(rte_dir), OUT=str(tmp_path / "run"), NUM_GPUS="0",
                     SEED="2", SET=SMALL, TORCH_EXTENSIONS_DIR=str(extensions))
    del env["DS_ACCELERATOR"]  # as a user's: sat-ehft chooses DeepSpeed's CPU accelerator, quietly
    launched = time.monotonic()
    first = subprocess.run(["bash", "finetune_scripts/ehft_rte.sh"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
    took = time.monotonic() - launched
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stage 1 of 2" in first.stdout and "stage 2 of 2" in first.stdout
    assert "shm_comm" not in first.stdout + first.stderr and os.listdir(extensions / "deepspeed_shm_comm") == ["lock"]
    # no screen of notices before the run's own lines: SAT's INFO lines, DeepSpeed's "no GPU found"
    assert not [line for line in first.stderr.splitlines() if "[INFO]" in line or "Setting accelerator" in line]
    costs = [json.loads((tmp_path / "run" / stage / "done.json").read_text())["cost"] for stage in ("stage1", "stage2")]
    assert all(0 < cost["setup_seconds"] < cost["startup_seconds"] for cost in costs)
    assert sum(cost["startup_seconds"] + cost["train_seconds"] for cost in costs) < took
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["method"] == "ehft-bitfit" and result["seed"] == 2 and list(result["stages"]) == ["stage1", "stage2"]
    run_config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert run_config["epochs"] == 2 and run_config["lr"] == 1e-3  # configs/rte.yaml, then SET
    # output that is no terminal (here a pipe) gets a line per epoch, as each stage's progress.log does
    for stage, epochs in (("stage1", 1), ("stage2", 1)):
        records = [json.loads(line) for line in (tmp_path / "run" / stage / "metrics.jsonl").read_text().splitlines()]
        logged = (tmp_path / "run" / stage / "progress.log").read_text().splitlines()
        assert len(logged) == len(records) and all(line in first.stdout for line in logged)
        for record, line in zip(records, logged):
            expected = (f"{stage} epoch {record['epoch']:g}/{epochs} step {record['step']}: train loss "
                        f"{record['train_loss']:.4f}, accuracy {record['train_accuracy']:.4f}; dev accuracy "
                        f"{record['accuracy']:.4f}")
            assert re.fullmatch(re.escape(expected) + r" \(\d+ s\)", line), line
    again = subprocess.run(["bash", "finetune_scripts/ehft_rte.sh"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0
    # Stage 1 is skipped without a launch; Stage 2's launch checks the folder, skips and prints the result
    assert "== rte ehft-bitfit: stage 1 of 2 already finished, skipped" in again.stdout
    assert "stage 1 of 2 ->" not in again.stdout and "ehft-bitfit stage2: already finished, skipped" in again.stdout
    assert "rte ehft-bitfit seed 2: best accuracy" in again.stdout


def step_losses(folder):
    return [json.loads(line)["loss"] for line in (folder / "train" / "train_loss.jsonl").read_text().splitlines()]


def test_two_processes_under_the_deepspeed_launcher_match_one(tmp_path, rte_dir, minilm_dir):
    """Data parallelism: 2 ranks x micro-batch 4 follow the loss curve of 1 rank x micro-batch 8."""
    model = tiny_bert_folder(tmp_path / "tiny-bert", minilm_dir, dropout=0.0)
    common = ["train", "--task", "rte", "--method", "ft", "--model", str(model), "--data-dir", str(rte_dir),
              "--seed", "5", "--config", str(REPO / "configs" / "rte.yaml")]
    overrides = [arg for pair in ("epochs=2", "batch_size=8", "max_length=64", "lr=1e-3") for arg in ("--set", pair)]
    one = subprocess.run([sys.executable, "-m", "sat_ehft", *common, "--out", str(tmp_path / "one"), *overrides,
                          "--set", "micro_batch_size=8"], cwd=REPO, env=launch_env(), capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "--no_local_rank",
                          "--module", "sat_ehft", *common, "--out", str(tmp_path / "two"), *overrides,
                          "--set", "micro_batch_size=4"], cwd=REPO, env=launch_env(), capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    single, parallel = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert len(single) == len(parallel) == 8  # 32 rows / global batch 8, 2 epochs
    assert max(abs(a - b) for a, b in zip(single, parallel)) < 1e-4
    assert single[0] != single[-1]


# Scores the dev rows of STS-B and COPA with a seeded random head on the tiny BERT and writes (rank 0) the
# scores, the metrics and how many batches each rank scored: argv[1] model folder, argv[2] data folder,
# argv[3] output file.
EVALUATE = """
import json, sys, torch
import torch.distributed as dist
from pathlib import Path
from sat_ehft.backbone import load_backbone
from sat_ehft.classifier import build_classifier
from sat_ehft.config import Config
from sat_ehft.methods import get_method
from sat_ehft.tasks import Encoding, encode_examples, get_task
from sat_ehft.trainer import ensure_distributed, evaluate, head_scores
rank, world_size = ensure_distributed()
found = {"world_size": world_size}
for name, rows in (("sts-b", 45), ("copa", 29)):
    backbone = load_backbone(sys.argv[1])  # the classifier is built on (and changes) the backbone's model
    tokenizer = backbone.load_tokenizer()
    task = get_task(name)
    dev = encode_examples(task, task.read(sys.argv[2], "dev")[:rows], tokenizer, Encoding(64))
    torch.manual_seed(0)
    model, _ = build_classifier(backbone, task, get_method("ft").stages[0], Config())
    calls, encode = [], model.encode
    model.encode = lambda *args, **kwargs: calls.append(1) or encode(*args, **kwargs)
    found[name] = {"scores": head_scores(model, dev, 8, tokenizer.pad_token_id, "cpu").tolist(),
                   "metrics": evaluate(model, task, dev, 8, tokenizer.pad_token_id, "cpu")}
    batches = [None] * world_size
    dist.all_gather_object(batches, len(calls))
    found[name]["batches per rank"] = batches
if rank == 0:
    Path(sys.argv[3]).write_text(json.dumps(found))
"""


def test_two_ranks_share_the_evaluation_and_get_the_one_rank_scores_bit_for_bit(tmp_path, tiny_bert, shared_data):
    script = tmp_path / "evaluate.py"
    script.write_text(EVALUATE)
    arguments = [str(script), str(tiny_bert), str(shared_data)]
    one = subprocess.run([sys.executable, *arguments, str(tmp_path / "one.json")], cwd=REPO, env=launch_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "--no_local_rank",
                          *arguments, str(tmp_path / "two.json")], cwd=REPO, env=launch_env(), capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    single, shared = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert (single.pop("world_size"), shared.pop("world_size")) == (1, 2)
    # head_scores and evaluate each score the 6 (STS-B) and 4 (COPA) batches once: each rank did half
    assert [single[t].pop("batches per rank") for t in ("sts-b", "copa")] == [[12], [8]]
    assert [shared[t].pop("batches per rank") for t in ("sts-b", "copa")] == [[6, 6], [4, 4]]
    assert single == shared  # every score and metric, bit for bit
    assert len(single["sts-b"]["scores"]) == 45 and len(single["copa"]["scores"]) == 29


def bitfit_command(out, model, data, *settings):
    """sat-ehft train of an EH-FT (BitFit) RTE run, 6 epochs: 1 in Stage 1, 5 in Stage 2."""
    return [sys.executable, "-m", "sat_ehft", "train", "--task", "rte", "--method", "ehft-bitfit", "--model", str(model),
            "--data-dir", str(data), "--seed", "7", "--out", str(out), "--config", str(REPO / "configs" / "rte.yaml"),
            *[arg for pair in ("epochs=6", "max_length=64", "lr=1e-3", *settings) for arg in ("--set", pair)]]


def same_outcome(run, reference):
    """Both runs logged the same epochs and steps in both stages and trained the same tensors."""
    import torch

    for stage in ("stage1", "stage2"):
        for name in ("metrics.jsonl", "train_loss.jsonl"):
            assert (run / stage / name).read_text() == (reference / stage / name).read_text(), f"{stage}/{name}"
        trained, expected = (torch.load(r / stage / "trained.pt", weights_only=True)["tensors"] for r in (run, reference))
        assert trained.keys() == expected.keys() and all(torch.equal(trained[n], expected[n]) for n in expected)


# Runs `python -m sat_ehft` with one function of sat_ehft wrapped so that the process SIGKILLs itself at a chosen
# moment: argv[1] module, argv[2] function, argv[3] a text the call's arguments must hold, argv[4:] the CLI.
KILL_AT_CALL = """
import importlib, os, signal, sys
module = importlib.import_module(sys.argv[1])
original = getattr(module, sys.argv[2])
def killing(*args, **kwargs):
    if sys.argv[3] in " ".join(map(str, args)):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(module, sys.argv[2], killing)
from sat_ehft.cli import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.fixture(scope="module")
def small_whole_run(tmp_path_factory, tiny_bert, rte_dir):
    out = tmp_path_factory.mktemp("whole") / "run"
    run = subprocess.run(bitfit_command(out, tiny_bert, rte_dir, "checkpoint_minutes=0"), cwd=REPO, env=launch_env(),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


@pytest.mark.parametrize("module, function, when, leaves", [
    # mid-write: Stage 2's epoch-3 files are written, its manifest and rename are not
    ("sat_ehft.checkpoints", "_commit", "stage2/checkpoint/.epoch3.partial", "removed {out}/stage2/checkpoint/.epoch3.partial"),
    # Stage 1's trained.pt is written, its done.json is not: Stage 1 is resumed after its last epoch, not retrained
    ("sat_ehft.pipeline", "write_json", "stage1/done.json", "stage1: resumed after epoch 1"),
])
def test_a_kill_mid_checkpoint_or_before_done_json_reruns_to_the_uninterrupted_result(
        tmp_path, tiny_bert, rte_dir, small_whole_run, module, function, when, leaves):
    import signal

    out = tmp_path / "cut"
    command = bitfit_command(out, tiny_bert, rte_dir, "checkpoint_minutes=0")
    killed = subprocess.run([sys.executable, "-c", KILL_AT_CALL, module, function, str(out / when), *command[3:]],
                            cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    rerun = subprocess.run(command, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert leaves.format(out=out) in rerun.stdout
    same_outcome(out, small_whole_run)


def test_a_stage_trained_after_another_in_the_same_process_counts_its_start_up_from_that_ones_end(small_whole_run):
    stage1, stage2 = (json.loads((small_whole_run / stage / "done.json").read_text())["cost"]
                      for stage in ("stage1", "stage2"))
    # Stage 1's start-up holds the imports and the process group; Stage 2's its own model, data and engine only,
    # not Stage 1's training
    assert 0 < stage2["setup_seconds"] <= stage2["startup_seconds"] < stage1["startup_seconds"]


def test_quickstart_offline_without_data_says_how_to_get_it(tmp_path):
    env = launch_env(DATA_DIR=str(tmp_path / "no-data"), OUT=str(tmp_path / "runs"), HF_HUB_OFFLINE="1")
    run = subprocess.run(["bash", "finetune_scripts/quickstart.sh"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.startswith(f"quickstart: no CB files in {tmp_path / 'no-data'}/superglue/CB/ and the Hugging "
                                 "Face hub can't be used (HF_HUB_OFFLINE=1 is set). Download SuperGLUE's CB")
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_scripts_pass_the_method_as_data_and_report_an_unknown_one(tmp_path, tiny_bert, rte_dir):
    planted = tmp_path / "planted"
    method = f"ft').stages)); __import__('pathlib').Path('{planted}').touch(); print(('"
    env = launch_env(MODEL=str(tiny_bert), DATA_DIR=str(rte_dir), OUT=str(tmp_path / "run"), NUM_GPUS="0",
                     METHOD=method)
    run = subprocess.run(["bash", "finetune_scripts/common.sh", "rte", method], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and not planted.exists()
    assert run.stderr.startswith(f"common.sh: unknown method '{method}'; known methods: bitfit")


def test_hub_setting_makes_the_scripts_read_the_hub(tmp_path, tiny_bert):
    env = launch_env(MODEL=str(tiny_bert), OUT=str(tmp_path / "run"), NUM_GPUS="0", HUB="1", HF_HUB_OFFLINE="1",
                     SET="max_length=64")  # the tiny model's positions
    run = subprocess.run(["bash", "finetune_scripts/common.sh", "rte", "ft"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2  # offline here: the hub is asked for, and refused at once
    assert "cannot fetch dataset aps/super_glue/rte from the Hugging Face hub: HF_HUB_OFFLINE=1 is set" in run.stderr


LATE_RANK = """import datetime, sys, time
import torch.distributed as dist
print("imported", flush=True)
sys.stdin.readline()
dist.init_process_group("gloo", rank=1, world_size=2, timeout=datetime.timedelta(seconds=60))
print("joined", flush=True)
time.sleep(120)
"""
FIRST_RANK = """import time
from sat_ehft.trainer import ensure_distributed
started = time.monotonic()
try:
    ensure_distributed()
except RuntimeError as err:
    print(f"failed after {time.monotonic() - started:.1f} s: {type(err).__name__}")
else:
    print("ensure_distributed returned")
"""


def store_listens(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_rank_that_stops_answering_fails_the_others_after_the_collective_timeout(tmp_path):
    """Rank 1 joins the process group, then never makes SAT's groups (as a rank that died there): rank 0 fails
    after SAT_EHFT_COLLECTIVE_TIMEOUT, not after torch's 30 minutes (new_group does not inherit the timeout)."""
    port, timeout = free_port(), 20
    env = launch_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                     SAT_EHFT_COLLECTIVE_TIMEOUT=str(timeout))
    late = subprocess.Popen([sys.executable, "-c", LATE_RANK], env={**env, "RANK": "1"}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert late.stdout.readline() == "imported\n"
    first = subprocess.Popen([sys.executable, "-c", FIRST_RANK], env={**env, "RANK": "0", "LOCAL_RANK": "0"}, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not store_listens(port):  # then rank 1 may join at once
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        late.stdin.write("go\n")
        late.stdin.flush()
        assert late.stdout.readline() == "joined\n"
        output, errors = first.communicate(timeout=300)  # torch's default would wait 1800 s
    finally:
        late.kill()
        first.kill()
    verdict = output.strip().splitlines()[-1]
    assert verdict.startswith("failed after") and verdict.endswith("DistStoreError"), output + errors
    assert float(verdict.split()[2]) >= timeout


def test_the_collective_timeout_must_be_positive_seconds(monkeypatch):
    from sat_ehft.ranks import collective_timeout

    monkeypatch.setenv("SAT_EHFT_COLLECTIVE_TIMEOUT", "90")
    assert collective_timeout().total_seconds() == 90
    for bad in ("0", "-5", "ten"):
        monkeypatch.setenv("SAT_EHFT_COLLECTIVE_TIMEOUT", bad)
        with pytest.raises(ValueError, match=f"SAT_EHFT_COLLECTIVE_TIMEOUT='{bad}': expected a number of seconds"):
            collective_timeout()


GROUP_MADE_ELSEWHERE = """import sys, torch, torch.distributed as dist
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1], rank=0, world_size=1)
from sat_ehft.trainer import ensure_distributed
import deepspeed
import deepspeed.comm.comm
ensure_distributed()
model = torch.nn.Linear(2, 2)
deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     config={"train_batch_size": 1})
print("shm op:", deepspeed.comm.comm.cdb.shm_comm_op)
"""


def test_no_shared_memory_op_is_built_where_the_process_group_was_made_before(tmp_path):
    """SAT's AutoModel.from_pretrained makes a process group of its own; DeepSpeed's engine then builds its
    shared-memory op (45 s of g++, and a lock that a kill leaves behind) unless ensure_distributed stops it."""
    extensions = tmp_path / "torch_extensions"
    made = subprocess.run([sys.executable, "-c", GROUP_MADE_ELSEWHERE, str(free_port())], cwd=REPO, text=True,
                          env=launch_env(TORCH_EXTENSIONS_DIR=str(extensions)), capture_output=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    assert made.stdout.strip().splitlines()[-1] == "shm op: None"
    assert not (extensions / "deepspeed_shm_comm").exists()
