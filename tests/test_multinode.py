"""Multi-node training on a simulated two-node cluster: this one machine, two DeepSpeed launchers over
loopback, each a "node" of the same hostfile (`localhost` and `127.0.0.1`, one rank each). Each launch
mode is driven through its real script: launchers/node.sh (one launcher per node, no ssh),
launchers/slurm.sbatch (with stand-ins for srun/scontrol) and launchers/multinode.sh (DeepSpeed's pdsh
mode, with stand-ins for pdsh/ssh that start each "host" locally). The hostfile checks run in-process.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from launch import ROOT, fake_bin, fp32_params, free_port, losses

from megadna import rundir as ckpt
from megadna.errors import InputError
from megadna.rundir import RunDir
from megadna.train.distributed import weights_fingerprint
from megadna.train.hostfile import Host, check_reachable, parse_hostfile

VENV_BIN = Path(sys.executable).parent
TWO_NODES = "localhost slots=1\n127.0.0.1 slots=1\n"
STEPS = 4


def _env(**extra) -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e['PATH']}"  # node.sh & co. call `python` and `deepspeed`
    e["OMP_NUM_THREADS"] = "1"  # two ranks share two cores
    # A JIT-built DeepSpeed op (the CPU shm all-reduce, fused Adam) is cached under
    # ~/.cache/torch_extensions, keyed by name only: environments at other paths on the same machine
    # rebuild it over each other (a minute each). Keep this interpreter's builds beside it.
    e.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    e["MASTER_PORT"] = str(free_port())
    # Every failure path must end in bounded time, also a broken test: no 600-s default waits.
    e["MEGADNA_DIST_TIMEOUT_S"] = "120"
    e.update({k: str(v) for k, v in extra.items()})
    return e


def _train_args(data, save_dir, max_steps, *more) -> list[str]:
    return ["--deepspeed_config", str(ROOT / "ds_configs" / "cpu_tiny.json"), "--progress", "false", "--data", str(data),
            "--save_dir", str(save_dir), "--max_steps", str(max_steps), "--save_interval", str(max_steps),
            "--eval_interval", "0", "--log_interval", "1", "--num_workers", "1", "--record_samples", "true", *map(str, more)]


def _start(cmd, env, log: Path) -> subprocess.Popen:
    # Own session per "node", so a node can be killed as a whole (launcher, ranks, loader workers).
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _steps_logged(save: Path) -> int:
    try:  # complete lines only: the trainer may be writing the next one
        return RunDir(save).metrics.read_text().count("\n")
    except FileNotFoundError:
        return 0


def _finish(procs: list[subprocess.Popen], logs: list[Path], timeout=420) -> list[str]:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            _kill_group(p.pid)
    outs = [log.read_text() for log in logs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, f"exit {p.returncode}\n{out[-6000:]}"
    return outs


# --------------------------------------------------------------------------------------------------
# A real two-node job (node.sh), then a copy of it resumed under SLURM (slurm.sbatch)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_node_run(real_shards, tmp_path_factory):
    """Two `launchers/node.sh` processes, node ranks 0 and 1 of one hostfile, train STEPS steps and
    write one checkpoint at the end."""
    tmp = tmp_path_factory.mktemp("two_node")
    hostfile = tmp / "hostfile"
    hostfile.write_text(TWO_NODES)
    save = tmp / "run"
    env = _env()
    logs = [tmp / f"node{n}.log" for n in (0, 1)]
    procs = [_start([str(ROOT / "launchers" / "node.sh"), str(hostfile), str(n), "127.0.0.1", *_train_args(real_shards, save, STEPS)], env, logs[n])
             for n in (0, 1)]
    return {"save": save, "out": _finish(procs, logs), "data": real_shards}


@pytest.mark.slow
def test_two_node_job_trains_one_world_and_writes_one_checkpoint(two_node_run):
    save, (out0, out1) = two_node_run["save"], two_node_run["out"]
    assert "node rank 0" in out0 and "node rank 1" in out1
    assert f"step {STEPS}/{STEPS}" in out0
    assert json.loads(RunDir(save).config.read_text())["world_size"] == 2
    assert len(losses(save)) == STEPS

    # Exactly one checkpoint: one completion marker, one copy of the model states (rank 0's), one
    # ZeRO-2 optimizer shard per rank.
    (step, d), = RunDir(save).complete_checkpoints()
    assert step == STEPS
    assert len(list(RunDir(save).checkpoints.rglob(ckpt.META))) == 1
    assert sorted(p.name for p in d.glob("*.pt")) == ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    meta = ckpt.read_meta(d)
    assert meta["world_size"] == 2 and meta["samples_consumed"] == STEPS * 2 * 8 and meta["order_batch"] == 16


@pytest.mark.slow
def test_two_node_job_ranks_hold_identical_weights(two_node_run):
    """Each rank hashes its own full copy of the weights at the save, and the save goes ahead only if
    every hash equals rank 0's (megadna.train.distributed.check_replicas; a mismatch fails the run). The hash
    recorded is the hash of the weights rank 0 wrote, and those equal the fp32 master weights put
    together from both ranks' ZeRO shards: rank 1's half of the update agrees with rank 0's copy."""
    (_, d), = RunDir(two_node_run["save"]).complete_checkpoints()
    saved = torch.load(d / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
    assert ckpt.read_meta(d)["weights_sha256"] == weights_fingerprint(saved).hex()
    masters = fp32_params(d)
    assert masters.keys() <= saved.keys() and len(masters) > 10
    for name, w in masters.items():
        assert torch.equal(w, saved[name].float()), name  # cpu_tiny trains in fp32: bitwise


@pytest.mark.slow
def test_two_node_job_ranks_read_disjoint_data(two_node_run):
    """The data order of the run (world size 2, micro batch and seed of the run's config): global batches
    of 16 take one sample from each of 16 lanes; rank r's half of every batch comes from lanes 8r..8r+7
    for the whole epoch, so node 0's rank and node 1's read disjoint windows. What the two ranks really
    trained on (--record_samples) is that order."""
    from megadna.data.stream import StreamConfig, WindowStream

    cfg = json.loads(RunDir(two_node_run["save"]).config.read_text())
    sc = StreamConfig(split="train", micro_batch=cfg["deepspeed"]["train_micro_batch_size_per_gpu"], num_workers=cfg["train"]["num_workers"], seed=cfg["train"]["seed"])
    streams = [WindowStream(two_node_run["data"], sc, rank=r, world_size=cfg["world_size"]) for r in (0, 1)]
    assert cfg["data_order"] == {"order_batch": 16, "quotas": [16], "lanes": [16]}
    windows = []
    for r, s in enumerate(streams):
        lanes = s.lanes_read(s.batches_per_epoch)
        assert lanes == {(0, 0, lane) for lane in range(8 * r, 8 * r + 8)}
        got = [(m["source"], m["contig"], m["start"], m["strand"]) for _, _, lane in lanes for _, m, _ in s.lane_samples(0, 0, lane, with_meta=True)]
        assert len(got) == len(set(got)) == s.batches_per_epoch * 8
        windows.append(set(got))
    assert not windows[0] & windows[1]
    recorded = [r["samples"] for r in RunDir(two_node_run["save"]).read_metrics()]
    assert len(recorded) == STEPS and len({k for step in recorded for k in step}) == STEPS * 16
    for r, s in enumerate(streams):  # rank r's half of each global batch: its own micro batches, in order
        want = [sid for k in range(STEPS) for _, _, _, sid, _ in s.samples(s.deal.first(k), 8)]
        assert [k for step in recorded for k in step[8 * r:8 * r + 8]] == want


FAKE_SCONTROL = """\
#!/bin/bash
# stand-in: `scontrol show hostnames LIST` prints the allocation's hosts
[ "$1 $2" = "show hostnames" ] && printf '%s\\n' $FAKE_SLURM_HOSTS
"""

FAKE_SRUN = """\
#!/bin/bash
# stand-in for srun: one task per host of the allocation, run here with the variables srun sets, each
# task in its own process group. A SIGTERM to this srun reaches every process of every task, as
# slurmstepd delivers a signal for the step (--signal=TERM@120, preemption).
set -m
while [[ $1 == --* ]]; do shift; done
echo $$ > "$FAKE_SLURM_DIR/srun.pid"
i=0; pids=()
for h in $FAKE_SLURM_HOSTS; do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURMD_NODENAME=$h "$@" & pids+=($!); i=$((i + 1))
done
trap 'for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done' TERM
rc=0
for p in "${pids[@]}"; do
    while :; do wait "$p"; r=$?; [ $r -gt 128 ] && kill -0 "$p" 2>/dev/null && continue; break; done
    [ $r -ne 0 ] && rc=$r
done
exit $rc
"""


@pytest.mark.slow
def test_slurm_job_resumes_the_two_node_run_and_saves_on_preemption(two_node_run, tmp_path):
    """launchers/slurm.sbatch on a two-node "allocation" (stand-in scontrol/srun that run each task
    here): the job resumes the two-node run from its checkpoint (--resume auto), then gets SLURM's
    SIGTERM on every process of the step, as before the time limit or on preemption. Both nodes stop
    after the same step, save it, and the job's log reads as one run."""
    save = tmp_path / "run"
    shutil.copytree(two_node_run["save"], save)  # leave the module's run as it was for the other tests
    bin_dir = tmp_path / "bin"
    fake_bin(bin_dir, {"scontrol": FAKE_SCONTROL, "srun": FAKE_SRUN})
    port = _free_port_between(20000, 40000)
    job_id = 100000 + port - 20000  # the batch script's port, 20000 + job id mod 20000, is then free
    env = _env(PATH=f"{bin_dir}{os.pathsep}{_env()['PATH']}", FAKE_SLURM_HOSTS="localhost 127.0.0.1", FAKE_SLURM_DIR=tmp_path,
               SLURM_JOB_ID=job_id, SLURM_JOB_NODELIST="fake[0-1]", SLURM_JOB_NUM_NODES=2, SLURM_SUBMIT_DIR=tmp_path,
               MEGADNA_ROOT=ROOT, MEGADNA_SLOTS_PER_NODE=1)
    env.pop("MASTER_PORT")  # the batch script derives one from the job id
    log = tmp_path / "slurm.out"
    proc = subprocess.Popen(["bash", str(ROOT / "launchers" / "slurm.sbatch"), *_train_args(two_node_run["data"], save, 400)],
                            cwd=tmp_path, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.time()
        while _steps_logged(save) < STEPS + 1:  # the resumed run has taken a step of its own
            assert proc.poll() is None, f"ended early ({proc.returncode}):\n{log.read_text()[-4000:]}"
            assert time.time() - t0 < 300, log.read_text()[-4000:]
            time.sleep(0.3)
        os.kill(int((tmp_path / "srun.pid").read_text()), signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        _kill_group(proc.pid)
    out = log.read_text()
    assert f"job {job_id}, 2 node(s) x 1 rank(s), master localhost:{port}" in out  # 20000 + job id mod 20000
    assert f"resuming from {save / 'checkpoints' / ckpt.tag_for(STEPS)} at global_step {STEPS}" in out
    saved = [int(line.rsplit("global_step ", 1)[1].split()[0]) for line in out.splitlines() if "preemption signal: saving at global_step" in line]
    assert len(saved) == 2 and saved[0] == saved[1] > STEPS, out[-4000:]  # both nodes, the same step
    assert [s for s, _ in RunDir(save).complete_checkpoints()] == [STEPS, saved[0]]
    assert ckpt.read_meta(RunDir(save).checkpoint(saved[0]))["world_size"] == 2
    steps = [json.loads(line)["step"] for line in RunDir(save).metrics.read_text().splitlines()]
    assert steps == list(range(1, saved[0] + 1))  # one run, continued
    assert not (tmp_path / f"hostfile.{job_id}").exists()  # the generated hostfile is cleaned up


@pytest.mark.slow
def test_the_two_node_run_resumes_on_one_node_with_the_same_global_batches(two_node_run, tmp_path):
    """A node is lost: the two-node checkpoint (2 ranks x micro 8) continues on one node with one rank.
    The DeepSpeed config gives train_batch_size 16 and no accumulation (megadna derives 2), the ZeRO-2
    state goes through the universal checkpoint, and the next global batches are the order's next ones."""
    from launch import pretrain_cmd, run

    from megadna.data.stream import StreamConfig, WindowStream

    save = tmp_path / "run"
    shutil.copytree(two_node_run["save"], save)
    cfg = json.loads((ROOT / "ds_configs" / "cpu_tiny.json").read_text())
    del cfg["gradient_accumulation_steps"]
    (tmp_path / "ds.json").write_text(json.dumps(cfg | {"train_batch_size": 16}))
    args = _train_args(two_node_run["data"], save, 2 * STEPS)[2:]  # less its --deepspeed_config: pretrain_cmd gives ds.json
    proc = run(pretrain_cmd(*args, num_gpus=1, ds_config=str(tmp_path / "ds.json")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"at global_step {STEPS} (samples consumed: {STEPS * 16}, world size 2 -> 1)" in proc.stdout
    recorded = [r["samples"] for r in RunDir(save).read_metrics()]
    order = WindowStream(two_node_run["data"], StreamConfig(micro_batch=16, seed=0))
    assert recorded == [[sid for _, _, _, sid, _ in order.samples(16 * g, 16)] for g in range(2 * STEPS)]
    meta = ckpt.read_meta(RunDir(save).checkpoint(2 * STEPS))
    assert (meta["world_size"], meta["accum"], meta["samples_consumed"]) == (1, 2, 2 * STEPS * 16)
    assert [p.name for p in RunDir(save).universal.iterdir()] == [ckpt.tag_for(STEPS)]


# --------------------------------------------------------------------------------------------------
# Failures end in bounded time
# --------------------------------------------------------------------------------------------------


FAKE_SSH = """\
#!/bin/bash
# stand-in for ssh: every "host" is this machine; answers the launchers' probes, runs nothing
for a in "$@"; do [ "$a" = hostname ] && { echo fake-host; exit 0; }; done
exit 0
"""

FAKE_PDSH = """\
#!/bin/bash
# stand-in for pdsh -w h1,h2 CMD: runs CMD here once per host (%n: the host's index), each in its own
# process group, whose id goes to $FAKE_PDSH_DIR/<index>.pgid so a test can kill one "node".
set -m
while [[ $1 == -* ]]; do case $1 in -w|-f) shift 2;; *) shift;; esac; done
cmd="$*"
case "$cmd" in pkill*) echo "fake pdsh: not running '$cmd'"; exit 0;; esac  # DeepSpeed's cleanup: never here
echo "fake pdsh: $cmd"
pids=()
for i in 0 1; do bash -c "${cmd//%n/$i}" & pids+=($!); echo $! > "$FAKE_PDSH_DIR/$i.pgid"; done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc
"""


@pytest.mark.slow
def test_killed_node_ends_the_job_in_bounded_time(real_shards, tmp_path):
    """launchers/multinode.sh (pdsh runs launchers/node.sh on every host; stand-in pdsh/ssh) on two "nodes"; once training
    runs, node 1 is SIGKILLed whole (launcher, rank, loader worker): node 0 must exit non-zero soon,
    not hang. The kernel closes the dead rank's sockets, so node 0's next collective fails at once."""
    bin_dir, pgids = tmp_path / "bin", tmp_path / "pgids"
    pgids.mkdir()
    fake_bin(bin_dir, {"ssh": FAKE_SSH, "pdsh": FAKE_PDSH})
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(TWO_NODES)
    save = tmp_path / "run"
    env = _env(PATH=f"{bin_dir}{os.pathsep}{_env()['PATH']}", FAKE_PDSH_DIR=pgids, MASTER_ADDR="127.0.0.1")
    log = tmp_path / "multinode.log"
    proc = _start([str(ROOT / "launchers" / "multinode.sh"), str(hostfile), *_train_args(real_shards, save, 400)], env, log)
    try:
        t0 = time.time()
        while _steps_logged(save) < 2:
            assert proc.poll() is None, f"ended early ({proc.returncode}):\n{log.read_text()[-4000:]}"
            assert time.time() - t0 < 300, log.read_text()[-4000:]
            time.sleep(0.3)
        node1 = int((pgids / "1.pgid").read_text())
        _kill_group(node1)
        t_kill = time.time()
        rc = proc.wait(timeout=120)
        detect_s = time.time() - t_kill
    finally:
        _kill_group(proc.pid)
        for f in pgids.iterdir():
            _kill_group(int(f.read_text()))
    out = log.read_text()
    assert rc != 0, out[-4000:]
    assert detect_s < 60, f"node 0 took {detect_s:.0f} s to give up"
    assert "Connection closed by peer" in out or "Connection reset by peer" in out, out[-4000:]
    # multinode.sh forwarded env.sh's variables to the remote launchers (exported into each host's node.sh).
    assert "export MEGADNA_DIST_TIMEOUT_S=120;" in out and "export OMP_NUM_THREADS=1;" in out
    print(f"node 0 exited {rc} {detect_s:.1f} s after node 1 was killed")


RENDEZVOUS = """
import sys, time
from megadna.errors import InputError
from megadna.train import distributed
t0 = time.time()
try:
    distributed.init(timeout=1)
    print("NO ERROR")
except InputError as e:
    print(f"INPUT ERROR {time.time() - t0:.2f} {e}")
"""


def _rendezvous(rank: int, port: int) -> tuple[str, float]:
    """distributed.init as one rank of a two-node, one-rank-per-node job, in a fresh process (the
    pytest process may already hold a process group from an in-process training test)."""
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_SIZE="1", CROSS_RANK=str(rank), CROSS_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", RENDEZVOUS], env=env, capture_output=True, text=True, timeout=120).stdout.strip().splitlines()[-1]
    assert out.startswith("INPUT ERROR "), out
    _, _, seconds, message = out.split(" ", 3)
    return message, float(seconds)


def test_rendezvous_names_the_missing_node():
    message, seconds = _rendezvous(0, free_port())
    assert re.match(r"^node rank 1 of 2 \(rank 1\) did not join within 1 s: is its launcher running\? check the hostfile", message), message
    assert seconds < 5


def test_rendezvous_without_a_master_says_so():
    message, seconds = _rendezvous(1, _closed_port())
    assert re.search(r"rank 1 \(node rank 1 of 2, host .*\) could not reach the master \(node 0\) at 127\.0\.0\.1:\d+ in \d+ s: is node 0 started\?", message), message
    assert seconds < 8


def test_rendezvous_port_taken_on_the_master():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        message, _ = _rendezvous(0, taken.getsockname()[1])
    assert re.search(r"MASTER_PORT \d+ is already in use on 127\.0\.0\.1: another job on this node\?", message), message


# --------------------------------------------------------------------------------------------------
# Consistency checks across ranks (two gloo processes, no DeepSpeed engine)
# --------------------------------------------------------------------------------------------------

CHECKS = """
import json, os, sys, time
from pathlib import Path
import torch, torch.distributed as dist
from megadna.train import distributed
from megadna.errors import InputError

dist.init_process_group("gloo")
rank, out = dist.get_rank(), {}

def attempt(name, fn):
    try:
        out[name] = ["ok", fn()]
    except (InputError, distributed.ReplicaDivergence) as e:
        out[name] = [type(e).__name__, str(e)]

attempt("same", lambda: distributed.check_consistent({"k": 6, "shards": ["a", "b"]}, "resolved config"))
attempt("manifest", lambda: distributed.check_consistent({"sha256": "abc" if rank == 0 else "abd"}, "data manifest", hint="shards/ differs between nodes?"))
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
attempt("replicas_equal", lambda: distributed.check_replicas(model))
with torch.no_grad():
    model[1].bias[0] += 1e-7 * rank  # one ulp-ish drift on rank 1 only
attempt("replicas_drift", lambda: distributed.check_replicas(model))
attempt("shared_dir", lambda: distributed.check_shared_dir(Path(sys.argv[1]) / "shared", "--save_dir"))
attempt("local_dir", lambda: distributed.check_shared_dir(Path(sys.argv[1]) / f"local{rank}", "--save_dir"))
out["peer_lost"] = distributed.peer_failure(RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:4321. "
                                                         "This is typically caused by a remote worker crashing."))
out["not_peer"] = distributed.peer_failure(RuntimeError("CUDA out of memory"))

# A group made after init (as DeepSpeed makes its data-parallel group) must honour the limit too:
# rank 1 stays silent, as a frozen node would, and rank 0's collective gives up after 2 s.
distributed.timeout_new_groups(2.0)
group = dist.new_group(ranks=[0, 1])
if rank == 0:
    t0 = time.time()
    try:
        dist.all_reduce(torch.ones(1), group=group)
        out["frozen_peer"] = ["no error", time.time() - t0]
    except RuntimeError as e:
        out["frozen_peer"] = ["RuntimeError", time.time() - t0]
else:
    time.sleep(4)
print("RESULT " + json.dumps(out), flush=True)
# Rank 0 holds a timed-out gloo group: tearing it down at interpreter exit sometimes aborts in C++
# ("terminate called without an active exception"). What is under test is above; leave at once.
os._exit(0)
"""


def test_ranks_that_differ_are_named_on_every_rank(tmp_path):
    script = tmp_path / "checks.py"
    script.write_text(CHECKS)
    port = free_port()
    procs = []
    for r in (0, 1):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_SIZE="1", CROSS_RANK=str(r), CROSS_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    r0, r1 = results
    assert r0["same"] == r1["same"] and r0["same"][0] == "ok"
    for r in results:  # every rank raises the same message, naming the odd rank and its node
        assert r["manifest"] == ["InputError", "rank 1 (node 1) has a different data manifest than rank 0 (node 0): shards/ differs between nodes?"]
        assert r["replicas_equal"][0] == "ok"
        assert r["replicas_drift"][0] == "ReplicaDivergence" and r["replicas_drift"][1].startswith("rank 1 (node 1) holds different model weights")
        assert r["shared_dir"][0] == "ok"
        assert r["local_dir"][0] == "InputError" and "rank(s) 1 (node 1) do not see" in r["local_dir"][1]
    assert r0["replicas_equal"] == r1["replicas_equal"]
    assert r0["frozen_peer"][0] == "RuntimeError" and r0["frozen_peer"][1] < 6, r0["frozen_peer"]
    assert r1["peer_lost"].startswith("rank 1 (node rank 1 of 2, host ") and "lost contact with another rank in a collective" in r1["peer_lost"]
    assert "Connection closed by peer [127.0.0.1]:4321)" in r1["peer_lost"] and "--resume auto" in r1["peer_lost"]
    assert r1["not_peer"] is None


# --------------------------------------------------------------------------------------------------
# Hostfile checks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("worker-0 slots=8\nworker-1\n", r"hosts, line 2: 'worker-1' is not 'host slots=N'"),
    ("worker-0 slots=8\nworker-1 slots=0\n", r"hosts, line 2: slots=0 for worker-1: a node needs at least one slot"),
    ("worker-0 slots=-2\n", r"hosts, line 1: slots=-2 for worker-0"),
    ("worker-0 slots=eight\n", r"hosts, line 1: slots='eight' is not a whole number"),
    ("worker-0 slots=2.5\n", r"hosts, line 1: slots='2.5' is not a whole number"),
    ("worker-0 slots=8\n# a comment\nWorker-0 slots=8\n", r"hosts, line 3: host Worker-0 is listed twice \(first on line 1\)"),
    ("", r"hosts: no hosts \(the file is empty or only comments\)"),
    ("# only a comment\n\n   \n", r"hosts: no hosts"),
    ("root@worker-0 slots=8\n", r"hosts, line 1: 'root@worker-0' is not a host name"),
    ("worker-0 slots=8 gpus=4\n", r"hosts, line 1: 'worker-0 slots=8 gpus=4' is not 'host slots=N'"),
])
def test_bad_hostfiles_are_refused_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "hosts"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        parse_hostfile(path)


def test_good_hostfile_with_comments_parses_in_node_order(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# cluster\n\nworker-0 slots=8   # node 0: the master\n  10.0.0.2\tslots=4\n")
    assert parse_hostfile(path) == [Host("worker-0", 8, 3), Host("10.0.0.2", 4, 4)]
    example = parse_hostfile(ROOT / "launchers" / "hostfile.example")
    assert [h.slots for h in example] == [8, 8]


def _free_port_between(lo: int, hi: int) -> int:
    import random

    for port in random.Random().sample(range(lo, hi), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {lo}..{hi}")


def _closed_port() -> int:
    with socket.socket() as s:  # bound but never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hosts_are_named_in_bounded_time(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 slots=1\nno-such-node.invalid slots=1\n")
    hosts = parse_hostfile(path)
    t0 = time.time()
    with pytest.raises(InputError) as e:
        check_reachable(path, hosts, port=_closed_port(), timeout_s=2)
    assert time.time() - t0 < 6
    msg = str(e.value)
    assert "2 of 2 host(s) unreachable" in msg
    assert "127.0.0.1 (" in msg and "line 1): TCP port" in msg
    assert "no-such-node.invalid (" in msg and "line 2)" in msg


def test_host_without_passwordless_ssh_is_named(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text("#!/bin/bash\necho 'worker-1: Permission denied (publickey).' >&2\nexit 255\n")
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "hosts"
    path.write_text("worker-1 slots=8\n")
    with pytest.raises(InputError, match=r"worker-1 \(.*hosts, line 1\): passwordless ssh failed: worker-1: Permission denied \(publickey\)\."):
        check_reachable(path, parse_hostfile(path), timeout_s=2, ssh=True)


def test_reachable_host_passes(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        path = tmp_path / "hosts"
        path.write_text("127.0.0.1 slots=2\n")
        check_reachable(path, parse_hostfile(path), port=server.getsockname()[1], timeout_s=2)


@pytest.mark.parametrize("script, args", [("node.sh", ["1", "127.0.0.1"]), ("multinode.sh", [])])
def test_launchers_check_the_hostfile_before_launching(tmp_path, script, args):
    path = tmp_path / "hosts"
    path.write_text("worker-0 slots=8\nworker-0 slots=8\n")
    proc = subprocess.run([str(ROOT / "launchers" / script), str(path), *args, "--max_steps", "1"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"error: {path}, line 2: host worker-0 is listed twice" in proc.stderr
    assert "deepspeed" not in proc.stdout.lower()  # stopped before any launcher ran


def test_node_rank_outside_the_hostfile_is_refused(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(TWO_NODES)
    proc = subprocess.run([str(ROOT / "launchers" / "node.sh"), str(path), "2", "127.0.0.1"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "node rank 2 is out of range: the hostfile lists 2 node(s), ranks 0..1" in proc.stderr


def test_check_hostfile_tool_summarises_the_layout(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("a slots=2\nb slots=1\n")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "check_hostfile.py"), str(path), "--nodes", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "2 node(s), world size 3: node 0 = a (ranks 0-1, master); node 1 = b (rank 2)" in proc.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "check_hostfile.py"), str(path), "--nodes", "3"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "lists 2 node(s), expected 3" in bad.stderr


def test_shell_scripts_parse():
    for name in ("env.sh", "node.sh", "multinode.sh", "slurm.sbatch"):
        subprocess.run(["bash", "-n", str(ROOT / "launchers" / name)], check=True)


def test_a_stale_op_build_lock_is_named_instead_of_waited_on(tmp_path, monkeypatch):
    from megadna.errors import InputError
    from megadna.train import distributed

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "fused_adam" / "lock"
    lock.parent.mkdir()
    lock.touch()
    distributed.check_build_locks()  # a build in progress: wait on it, as torch does
    with pytest.raises(InputError, match=r"fused_adam/lock: build lock of DeepSpeed op 'fused_adam', 20 min old"):
        distributed.check_build_locks(now=lock.stat().st_mtime + 20 * 60)
