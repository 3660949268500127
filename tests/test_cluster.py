"""Beyond one machine, for real: two "nodes" that are two addresses of this machine (127.0.0.2 and 127.0.0.3),
reached by a real sshd and DeepSpeed's pdsh launcher, or each started on its own without ssh. The daemons are
started here and stopped here; one that cannot start fails the test with its log."""

import json
import os
import shutil
import socket
import subprocess
import time
from types import SimpleNamespace

import psutil
import pytest
import torch
from conftest import REPO
from test_launch import free_port, launch_env

NODES = ("127.0.0.2", "127.0.0.3")
# RTE, both stages of EH-FT(BitFit), sized for seconds: 32 rows, global batch 8 (4 per rank), 3 epochs (1 + 2),
# a checkpoint after every epoch
SMALL = "epochs=3 batch_size=8 micro_batch_size=4 eval_batch_size=32 max_length=64 lr=1e-3 checkpoint_minutes=0"
# A rank that died before a collective stops the others after this many seconds (sat_ehft.ranks)
COLLECTIVE_TIMEOUT = 60


@pytest.fixture(scope="module", autouse=True)
def nothing_left_running(tmp_path_factory):
    """After the module: no process of its launches is left, whichever node (or sshd session) started it."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    left = [p for p in psutil.process_iter(["cmdline"]) if any(base in arg for arg in p.info["cmdline"] or [])]
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:  # ended meanwhile
            pass
    assert not [p.info["cmdline"][:4] for p in left if not p.info["cmdline"][0].startswith("sshd")]


def wait_for_port(address, port, process, log, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sshd exited ({process.returncode}): {log.read_text()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex((address, port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"sshd is not listening on {address}:{port} after {seconds} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def ssh_nodes(tmp_path_factory):
    """An sshd listening on both node addresses with a host key and a client key made here, and a bin folder
    whose `ssh` reads this test's ssh config (what ~/.ssh/config does on a cluster; the user's own is left
    alone). Stopped, and its files removed, after the module's tests."""
    missing = [tool for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "pdsh") if not shutil.which(tool)]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: .ci/run installs openssh-server, openssh-client and pdsh")
    folder = tmp_path_factory.mktemp("ssh")
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    shutil.copy(folder / "id.pub", folder / "authorized_keys")
    port, log = free_port(), folder / "sshd.log"
    (folder / "sshd_config").write_text(
        f"Port {port}\n" + "".join(f"ListenAddress {node}\n" for node in NODES) +
        f"HostKey {folder / 'host_key'}\nAuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin yes\nLogLevel VERBOSE\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(folder / "sshd_config"), "-E", str(log)])
    try:
        for node in NODES:
            wait_for_port(node, port, sshd, log)
        (folder / "ssh_config").write_text(
            f"Host {' '.join(NODES)}\n  Port {port}\n  IdentityFile {folder / 'id'}\n  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n")
        (folder / "bin").mkdir()
        (folder / "bin" / "ssh").write_text(f"#!/bin/sh\nexec {shutil.which('ssh')} -F {folder / 'ssh_config'} \"$@\"\n")
        (folder / "bin" / "ssh").chmod(0o755)
        yield SimpleNamespace(bin=folder / "bin", log=log)
    finally:
        sshd.terminate()
        sshd.wait(timeout=30)


@pytest.fixture(scope="module")
def one_node_two_ranks(tmp_path_factory, tiny_bert, rte_dir):
    """The reference: the same run on 2 ranks of one node (NUM_GPUS=2: DeepSpeed's local launcher)."""
    out = tmp_path_factory.mktemp("one-node") / "run"
    finished = run_script(out, tiny_bert, rte_dir, NUM_GPUS="2", MASTER_PORT=str(free_port()))
    assert finished.returncode == 0, finished.stderr[-3000:]
    return out


def script_env(out, tiny_bert, rte_dir, **settings):
    return launch_env(MODEL=str(tiny_bert), DATA_DIR=str(rte_dir), OUT=str(out), SEED="3", SET=SMALL,
                      HF_HUB_OFFLINE="1", SAT_EHFT_COLLECTIVE_TIMEOUT=str(COLLECTIVE_TIMEOUT), **settings)


def run_script(out, tiny_bert, rte_dir, **settings):
    return subprocess.run(["bash", "finetune_scripts/ehft_rte.sh"], cwd=REPO, capture_output=True, text=True,
                          env=script_env(out, tiny_bert, rte_dir, **settings), timeout=600)


def start_nodes(logs, out, tiny_bert, rte_dir, hostfile, port):
    """The README's no-ssh launch: the same command on each node, with its NODE_RANK and the first node's
    address, each in its own session (so that a failed test can stop all of it); output to logs[node]."""
    return [subprocess.Popen(["bash", "finetune_scripts/ehft_rte.sh"], cwd=REPO, stdout=log.open("w"),
                             stderr=subprocess.STDOUT, start_new_session=True,
                             env=script_env(out, tiny_bert, rte_dir, HOSTFILE=str(hostfile), NODE_RANK=str(rank),
                                            MASTER_ADDR=NODES[0], MASTER_PORT=port))
            for rank, log in enumerate(logs)]


def wait_for(nodes, logs, seconds):
    """Each node's exit status, once all have ended; after `seconds`, stop them all and fail with their logs."""
    deadline = time.monotonic() + seconds
    try:
        return [node.wait(timeout=max(0.0, deadline - time.monotonic())) for node in nodes]
    except subprocess.TimeoutExpired:
        stop(nodes)
        pytest.fail(f"still running after {seconds} s:\n" + "\n".join(log.read_text()[-3000:] for log in logs))


def stop(nodes):
    for node in nodes:
        if node.poll() is None:
            os.killpg(node.pid, 9)
            node.wait()


def rank_process(node):
    """The training process (one rank) that a node's launcher started."""
    ranks = [p for p in psutil.Process(node.pid).children(recursive=True) if p.cmdline()[1:4] == ["-u", "-m", "sat_ehft"]]
    assert len(ranks) == 1, ranks
    return ranks[0]


def assert_same_run(out, reference):
    """Bit for bit the reference's: every stage's trained tensors and per-step losses, and the result's scores.
    Equal bits are expected, not a tolerance: each rank gets the same micro-batches and seeds as in the
    reference, and gloo's allreduce over two ranks adds the same two numbers in the same order on any layout."""
    for stage in ("stage1", "stage2"):
        ours, theirs = (torch.load(folder / stage / "trained.pt", weights_only=True)["tensors"] for folder in (out, reference))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours), stage
        assert (out / stage / "train_loss.jsonl").read_text() == (reference / stage / "train_loss.jsonl").read_text()
    ours, theirs = (json.loads((folder / "result.json").read_text()) for folder in (out, reference))
    assert (ours["best"], ours["last"], ours["max_over_all_stages"]) == \
        (theirs["best"], theirs["last"], theirs["max_over_all_stages"])


def ranks(out, stage):
    return json.loads((out / stage / "done.json").read_text())["ranks"]


def test_two_nodes_over_ssh_run_both_stages_as_two_ranks_of_one_node(tmp_path, ssh_nodes, one_node_two_ranks,
                                                                     tiny_bert, rte_dir):
    """The README's multi-node command: HOSTFILE=... bash finetune_scripts/ehft_rte.sh, DeepSpeed's pdsh launcher
    starting one rank on each node over ssh, the master address found by DeepSpeed (`hostname -I` on the first)."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{node} slots=1\n" for node in NODES))
    out = tmp_path / "run"
    finished = run_script(out, tiny_bert, rte_dir, HOSTFILE=str(hostfile), MASTER_PORT=str(free_port()),
                          PATH=f"{ssh_nodes.bin}:{os.environ['PATH']}")
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "== passed to every node: PATH " in finished.stdout
    launched = [line for line in (finished.stdout + finished.stderr).splitlines() if "cmd = pdsh" in line]
    assert len(launched) == 2 and all(f"-w {','.join(NODES)}" in line for line in launched)  # one pdsh per stage
    assert all(f"export SAT_EHFT_CACHE={os.environ['SAT_EHFT_CACHE']}" in line for line in launched)  # travelled
    for stage in ("stage1", "stage2"):  # rank 1 ran on the second node, reached at its own address
        assert ranks(out, stage) == [{"rank": 0, "node_rank": 0, "host": socket.gethostname(), "ssh_address": NODES[0]},
                                     {"rank": 1, "node_rank": 1, "host": socket.gethostname(), "ssh_address": NODES[1]}]
    assert ranks(one_node_two_ranks, "stage2") == [{"rank": r, "node_rank": 0, "host": socket.gethostname()}
                                                   for r in (0, 1)]
    assert_same_run(out, one_node_two_ranks)
    sessions = ssh_nodes.log.read_text()
    assert all(f"on {node} port" in sessions for node in NODES)  # sshd saw a connection to each address


def test_two_nodes_without_ssh_stop_together_when_a_rank_dies_and_resume_to_the_same_run(tmp_path, one_node_two_ranks,
                                                                                         tiny_bert, rte_dir):
    """As on Kubernetes or a cluster without ssh between nodes: the same command on each node with its own
    NODE_RANK and the first node's address; no ssh, no pdsh (PATH has none of ours). In Stage 2, after its first
    epoch's checkpoint, the rank on the second node is frozen (a second launch on the folder is refused by the
    lock meanwhile), then killed: both nodes stop within seconds, the first saying that a rank stopped. The same
    command again resumes Stage 2 from the checkpoint and ends as the uninterrupted run on one node."""
    hostfile, out, port = tmp_path / "hostfile", tmp_path / "run", str(free_port())
    hostfile.write_text("".join(f"{node} slots=1\n" for node in NODES))
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = start_nodes(logs, out, tiny_bert, rte_dir, hostfile, port)
    checkpoint = out / "stage2" / "checkpoint" / "epoch1"
    try:
        while not checkpoint.is_dir():
            assert all(node.poll() is None for node in nodes), "\n".join(log.read_text()[-3000:] for log in logs)
            time.sleep(0.02)
        second = rank_process(nodes[1])
        second.suspend()
        holder = rank_process(nodes[0])
        refused = run_script(out, tiny_bert, rte_dir, NUM_GPUS="0")  # one process, as on a login node
        assert refused.returncode != 0
        assert f"in use by another sat-ehft run (pid {holder.pid} on {socket.gethostname()})" in refused.stderr
        second.kill()
    except BaseException:
        stop(nodes)
        raise
    killed = time.monotonic()
    assert all(code != 0 for code in wait_for(nodes, logs, COLLECTIVE_TIMEOUT + 60)), [log.read_text() for log in logs]
    stopped_after = time.monotonic() - killed
    assert stopped_after < 30, stopped_after  # at once: the dead rank's connections closed
    assert "a rank of this launch stopped" in logs[0].read_text()
    assert not (out / "stage2" / "done.json").exists()

    nodes = start_nodes(logs, out, tiny_bert, rte_dir, hostfile, port)
    assert wait_for(nodes, logs, 600) == [0, 0], [log.read_text()[-3000:] for log in logs]
    assert "== rte ehft-bitfit: stage 1 of 2 already finished, skipped" in logs[0].read_text()  # no launch
    assert "stage2: resumed after epoch 1" in logs[0].read_text()
    for stage in ("stage1", "stage2"):
        assert [(r["rank"], r["node_rank"]) for r in ranks(out, stage)] == [(0, 0), (1, 1)]
    assert_same_run(out, one_node_two_ranks)
    print(f"both nodes stopped {stopped_after:.1f} s after the kill")


def test_a_node_rank_without_the_master_address_is_refused(tmp_path, tiny_bert, rte_dir):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{node} slots=1\n" for node in NODES))
    finished = run_script(tmp_path / "run", tiny_bert, rte_dir, HOSTFILE=str(hostfile), NODE_RANK="1")
    assert finished.returncode != 0
    assert "NODE_RANK needs MASTER_ADDR, the address of the first node of the hostfile" in finished.stderr
    assert not (tmp_path / "run").exists()
