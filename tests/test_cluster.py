"""Beyond one machine, for real: two "nodes" that are two addresses of this machine (127.0.0.2 and 127.0.0.3),
reached by a real sshd and DeepSpeed's pdsh launcher, or each started on its own without ssh. The daemons are
started here and stopped here; one that cannot start fails the test with its log."""

import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
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


def start_daemon(command, log, ready, name, seconds=30):
    """Start a daemon in the foreground of its own process; wait until `ready()` holds, else fail with its log."""
    daemon = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + seconds
    while not ready():
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            pytest.fail(f"{name} did not start ({daemon.poll()}): {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return daemon


def node_state(env):
    """The Slurm node's state as sinfo reports it; None while slurmctld does not answer."""
    answer = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    return answer.stdout.strip() if answer.returncode == 0 else None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-machine Slurm cluster: munged with a key made here, slurmctld and slurmd reading a slurm.conf
    written here (one node of 2 CPUs, no cgroups, no accounting), on free ports. Yields the environment that
    Slurm's commands need (SLURM_CONF); cancels every job and stops the daemons after the module's tests."""
    tools = {tool: shutil.which(tool, path=f"{os.environ['PATH']}:/usr/sbin") for tool in ("munged", "slurmctld", "slurmd")}
    missing = [tool for tool, path in tools.items() if not path] + [
        tool for tool in ("sbatch", "scancel", "squeue", "sinfo") if not shutil.which(tool)]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: .ci/run installs slurm-wlm and munge")
    folder = tmp_path_factory.mktemp("slurm")
    (folder / "munge.key").write_bytes(os.urandom(1024))
    (folder / "munge.key").chmod(0o400)
    (folder / "state").mkdir()
    node = "node1"
    conf = folder / "slurm.conf"
    settings = {
        "ClusterName": "satehft", "SlurmctldHost": f"{socket.gethostname().split('.')[0]}(127.0.0.1)",
        "SlurmUser": pwd.getpwuid(os.getuid()).pw_name, "AuthType": "auth/munge", "CredType": "cred/munge",
        "AuthInfo": f"socket={folder / 'munge.sock'}", "StateSaveLocation": folder / "state",
        "SlurmdSpoolDir": folder / "spool", "SlurmctldPidFile": folder / "slurmctld.pid",
        "SlurmdPidFile": folder / "slurmd.pid", "SlurmctldPort": free_port(), "SlurmdPort": free_port(),
        "ProctrackType": "proctrack/pgid", "TaskPlugin": "task/none", "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU", "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none", "MpiDefault": "none", "ReturnToService": 2,
        "KillWait": 5, "SchedulerType": "sched/builtin",
    }
    conf.write_text("".join(f"{key}={value}\n" for key, value in settings.items()) +
                    f"NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=8000 State=UNKNOWN\n"
                    f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [start_daemon(
        [tools["munged"], "-F", "--force", f"--key-file={folder / 'munge.key'}", f"--socket={folder / 'munge.sock'}",
         f"--pid-file={folder / 'munged.pid'}", f"--seed-file={folder / 'munged.seed'}", f"--log-file={folder / 'munged.log'}"],
        folder / "munged.out", (folder / "munge.sock").exists, "munged")]
    try:
        daemons.append(start_daemon([tools["slurmctld"], "-D", "-f", str(conf)], folder / "slurmctld.log",
                                    lambda: node_state(env) is not None, "slurmctld"))
        daemons.append(start_daemon([tools["slurmd"], "-D", "-N", node, "-f", str(conf)], folder / "slurmd.log",
                                    lambda: node_state(env) == "idle", "slurmd"))
        yield SimpleNamespace(env=env, folder=folder)
    finally:
        subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=env)
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(timeout=30)


def sbatch(script, env, *options):
    submitted = subprocess.run(["sbatch", "--parsable", *options, str(script)], env=env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip().split(";")[0]


def wait_for_jobs(env, job, seconds, logs):
    """Until Slurm holds no task of `job`; after `seconds`, fail with the tasks' output."""
    deadline = time.monotonic() + seconds
    while subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            pytest.fail(f"job {job} still queued or running after {seconds} s:\n" +
                        "\n".join(log.read_text()[-3000:] for log in logs.glob("slurm-*.out")))
        time.sleep(0.5)


def test_a_slurm_array_runs_the_grid_and_a_cancelled_task_resubmitted_resumes(tmp_path, slurm, tiny_bert, rte_dir):
    """What `sat-ehft sweep --launchers` writes, submitted unchanged with sbatch to a real slurmctld: one array
    task per run (FT and EH-FT(BitFit) on RTE), both at once on the node's 2 CPUs, each with its own port. The
    EH-FT task is cancelled in Stage 2 after a checkpoint; resubmitted (sbatch --array=1), it resumes there.
    `sat-ehft report` then collects the whole grid."""
    grid = tmp_path / "grid"
    written = subprocess.run(
        [sys.executable, "-m", "sat_ehft", "sweep", "--tasks", "rte", "--methods", "ft", "ehft-bitfit", "--seeds", "3",
         "--model", str(tiny_bert), "--data-dir", str(rte_dir), "--out", str(grid),
         *[arg for setting in SMALL.replace("micro_batch_size=4", "micro_batch_size=8").split()
           for arg in ("--set", setting)],
         "--launchers", "--gpus-per-run", "0", "--slurm-cpus", "1", "--slurm-mem", "1G", "--slurm-time", "0:20:00",
         "--slurm-setup", f"source {shlex.quote(sys.prefix)}/bin/activate"],
        cwd=tmp_path, env=launch_env(), capture_output=True, text=True, timeout=120)
    assert written.returncode == 0, written.stderr
    env = {**launch_env(HF_HUB_OFFLINE="1"), "SLURM_CONF": slurm.env["SLURM_CONF"]}
    job = sbatch(grid / "slurm.sbatch", env)
    ehft = grid / "rte" / "ehft-bitfit" / "seed3"
    deadline, running_at_once = time.monotonic() + 300, 0
    while not (ehft / "stage2" / "checkpoint" / "epoch1").is_dir():
        assert time.monotonic() < deadline, "\n".join(log.read_text()[-3000:] for log in grid.glob("slurm-*.out"))
        running = subprocess.run(["squeue", "-h", "-j", job, "-t", "RUNNING"], env=env, capture_output=True, text=True)
        running_at_once = max(running_at_once, len(running.stdout.splitlines()))
        time.sleep(0.05)
    assert running_at_once == 2
    subprocess.run(["scancel", f"{job}_1"], env=env, check=True)
    wait_for_jobs(env, job, 300, grid)
    assert not (ehft / "result.json").exists()
    assert (grid / "rte" / "ft" / "seed3" / "result.json").is_file()
    first = [(grid / f"slurm-{job}_{task}.out").read_text() for task in (0, 1)]
    assert "CANCELLED" in first[1], first[1][-2000:]
    assert all(f"--master_port={29500 + task}" in first[task] for task in (0, 1))  # one port each, on one node

    again = sbatch(grid / "slurm.sbatch", env, "--array=1")
    wait_for_jobs(env, again, 300, grid)
    resumed = (grid / f"slurm-{again}_1.out").read_text()
    assert "stage2: resumed after epoch 1" in resumed, resumed[-3000:]
    assert (ehft / "result.json").is_file()
    reported = subprocess.run([sys.executable, "-m", "sat_ehft", "report", str(grid)], env=launch_env(),
                              capture_output=True, text=True, timeout=120)
    assert reported.returncode == 0, reported.stderr
    report = (grid / "report.md").read_text()
    assert "## Missing runs\n\nnone" in report and all(f"| rte | {m} | 3 |" in report for m in ("ft", "ehft-bitfit"))
