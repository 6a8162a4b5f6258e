"""Exit codes and one-line errors at the edges of a run: a bad argument after the process group exists
exits 2 every time (never SIGABRT), launchers/node.sh passes SIGTERM on and returns the ranks' code
after their save, bad DeepSpeed configs and a torn metrics.jsonl are one line, not a traceback."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch import ROOT, env, fake_bin, free_port, pretrain_cmd, run

from megadna.errors import InputError
from megadna.rundir import RunDir
from megadna.train import load_ds_config
from megadna.train.logger import _open_metrics

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """~390 windows of a synthetic genome: enough for 2 ranks x 1 worker x micro batch 8, train and val."""
    from megadna.data.genome import WindowConfig
    from megadna.data.shard_writer import ShardConfig, write_shards
    from megadna.data.synthetic import write_synthetic_fasta

    tmp = tmp_path_factory.mktemp("exits")
    fasta = write_synthetic_fasta(tmp / "g.fa.gz", n_contigs=2, length=100_000, seed=1)
    write_shards([fasta], tmp / "shards", WindowConfig(window=510, stride=255, val_fraction=0.1), ShardConfig(samples_per_shard=200))
    return tmp / "shards"


def _ds_config(tmp_path: Path, **changes) -> Path:
    cfg = json.loads((ROOT / "ds_configs" / "cpu_tiny.json").read_text()) | changes
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    return path


def _node_env(**extra) -> dict:
    e = env()
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e['PATH']}"  # node.sh calls `python`
    e["MASTER_PORT"] = str(free_port())
    e["MEGADNA_DIST_TIMEOUT_S"] = "120"
    e.update({k: str(v) for k, v in extra.items()})
    return e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


# --------------------------------------------------------------------------------------------------
# Exit 2 after the process group exists: always 2, never SIGABRT
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_tokenizer_on_two_ranks_exits_2_every_time(small_shards, tmp_path):
    """The tokenizer is read after the gloo process group is up. Exiting through the interpreter's
    shutdown then aborted now and then ("terminate called without an active exception": exit 250, 2
    runs in 20); entry_point(owns_process_group=True) ends such a process with os._exit(2)."""
    for i in range(5):
        proc = run(pretrain_cmd("--data", small_shards, "--save_dir", tmp_path / f"run{i}", "--tokenizer", tmp_path / "no_such_tokenizer"), timeout=300)
        errors = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, f"run {i}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        # One line per rank that got to print it (DeepSpeed's launcher SIGTERMs the other rank when one exits).
        assert 1 <= len(errors) <= 2 and all("unknown tokenizer" in e and "no_such_tokenizer" in e for e in errors), errors
        assert "terminate called" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


# --------------------------------------------------------------------------------------------------
# The per-node launcher: SIGTERM is passed on, the launcher waits, the ranks' code is its code
# --------------------------------------------------------------------------------------------------


FAKE_RANK = """\
import json, os, signal, sys, time
from pathlib import Path
out, rank = Path(sys.argv[2]), int(os.environ["RANK"])  # argv[1]: --local_rank=i
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")
(out / f"env{rank}.json").write_text(json.dumps({k: os.environ.get(k) for k in keys} | {"argv": sys.argv[1:]}))
if rank == int(os.environ.get("FAKE_FAIL_RANK", "-1")):
    sys.exit(3)
stop = []
signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("FAKE_STUBBORN") else lambda *a: stop.append(1))
(out / f"ready{rank}").touch()
while not stop:
    time.sleep(0.05)
time.sleep(1.5)  # "saving a checkpoint"
(out / f"saved{rank}").touch()
sys.exit(int(os.environ.get("FAKE_CODE", "0")))
"""


def _fake_node(tmp_path: Path, hostfile: str = "localhost slots=2\n", node_rank: int = 0, **extra):
    """launchers/node.sh running FAKE_RANK as its script: each rank records its environment, waits for
    SIGTERM, "saves" for 1.5 s and exits FAKE_CODE (FAKE_FAIL_RANK exits 3 at once)."""
    script = tmp_path / "fake_rank.py"
    script.write_text(FAKE_RANK)
    (tmp_path / "hostfile").write_text(hostfile)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [str(ROOT / "launchers" / "node.sh"), str(tmp_path / "hostfile"), str(node_rank), "127.0.0.1", str(out), "--flag", "a b"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_node_env(MEGADNA_SCRIPT=script, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, out


def _wait_ready(proc, out: Path, n: int) -> None:
    t0 = time.time()
    while len(list(out.glob("ready*"))) < n:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 60
        time.sleep(0.05)


def _sigterm_when_ready(cmd: list[str], cwd: Path, env: dict, out: Path, ranks: int) -> tuple[int, list[str], str]:
    """Start a launcher in its own process group, SIGTERM the group once `ranks` stand-in ranks are up,
    and return (exit code, the ranks that had saved when it returned, its output)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_ready(proc, out, ranks)
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=60)
        saved_at_exit = sorted(p.name for p in out.glob("saved*"))
    finally:
        _kill(proc)
    return rc, saved_at_exit, proc.stdout.read()


def test_node_launcher_gives_each_rank_deepspeeds_environment(tmp_path):
    proc, out = _fake_node(tmp_path, hostfile="hostA slots=2\nhostB slots=3\n", node_rank=1)
    try:
        _wait_ready(proc, out, 3)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        _kill(proc)
    envs = [json.loads((out / f"env{r}.json").read_text()) for r in (2, 3, 4)]
    assert [(e["RANK"], e["LOCAL_RANK"]) for e in envs] == [("2", "0"), ("3", "1"), ("4", "2")]
    assert {(e["WORLD_SIZE"], e["LOCAL_SIZE"], e["CROSS_RANK"], e["CROSS_SIZE"], e["MASTER_ADDR"], e["CUDA_VISIBLE_DEVICES"]) for e in envs} == {("5", "3", "1", "2", "127.0.0.1", "0,1,2")}
    assert [e["argv"] for e in envs] == [[f"--local_rank={i}", str(out), "--flag", "a b"] for i in range(3)]


@pytest.mark.parametrize("code", [0, 5])
def test_sigterm_to_the_node_is_passed_on_and_the_launcher_returns_the_ranks_code(tmp_path, code):
    """SIGTERM to the whole process group, as SLURM or `kill -TERM -<pgid>` sends it: the launcher
    stays until both ranks have "saved" (1.5 s after the signal) and exits with their code."""
    proc, out = _fake_node(tmp_path, FAKE_CODE=code)
    try:
        _wait_ready(proc, out, 2)
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=60)
        saved_at_exit = sorted(p.name for p in out.glob("saved*"))
    finally:
        _kill(proc)
    assert saved_at_exit == ["saved0", "saved1"]
    assert rc == code
    assert "SIGTERM: passed on to the ranks" in proc.stdout.read()


def test_a_failed_rank_stops_its_siblings_and_sets_the_exit_code(tmp_path):
    proc, out = _fake_node(tmp_path, FAKE_FAIL_RANK=1)
    try:
        rc = proc.wait(timeout=60)
    finally:
        _kill(proc)
    assert rc == 3
    assert (out / "saved0").exists()  # rank 0 got SIGTERM and finished before the launcher exited
    assert "local rank 1 exited with 3: stopping the other ranks" in proc.stdout.read()


def test_a_sibling_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    proc, out = _fake_node(tmp_path, hostfile="localhost slots=3\n", FAKE_FAIL_RANK=2, FAKE_STUBBORN=1, MEGADNA_KILL_GRACE_S=1)
    try:
        rc = proc.wait(timeout=60)
    finally:
        _kill(proc)
    assert rc == 3 and not list(out.glob("saved*"))
    assert "2 rank(s) still running 1 s after SIGTERM: SIGKILL" in proc.stdout.read()


FAKE_SSH = """\
#!/bin/bash
# stand-in for ssh: every "host" is this machine; answers the launcher's probes
for a in "$@"; do [ "$a" = hostname ] && { echo 127.0.0.1; exit 0; }; done
exit 0
"""

FAKE_PDSH = """\
#!/bin/bash
# stand-in for pdsh -S -w h1,h2 CMD: every "host" is this machine. A job command runs once per host
# (%n: the host's index), each in its own process group; a pkill runs once (the hosts are one machine).
set -m
while [[ $1 == -* ]]; do case $1 in -w) hosts=$2; shift 2;; -f) shift 2;; *) shift;; esac; done
cmd="$*"
case "$cmd" in pkill*) echo "fake pdsh: $cmd" >&2; bash -c "$cmd"; exit 0;; esac
pids=(); i=0
for h in ${hosts//,/ }; do bash -c "${cmd//%n/$i}" & pids+=($!); i=$((i + 1)); done
rc=0; for p in "${pids[@]}"; do wait "$p" || { r=$?; [ $r -gt $rc ] && rc=$r; }; done; exit $rc
"""


@pytest.mark.parametrize("code", [0, 5])
def test_multinode_sh_passes_sigterm_to_every_host_and_returns_their_code(tmp_path, code):
    """launchers/multinode.sh over (stand-in) pdsh: SIGTERM to its process group reaches every host's
    ranks through `pdsh pkill`, while pdsh itself, in its own session, keeps the hosts' output; the
    script exits after every rank has "saved", with the largest host code."""
    bin_dir = tmp_path / "bin"
    fake_bin(bin_dir, {"ssh": FAKE_SSH, "pdsh": FAKE_PDSH})
    script = tmp_path / "fake_rank.py"
    script.write_text(FAKE_RANK)
    (tmp_path / "hostfile").write_text("localhost slots=1  # node 0\n127.0.0.1 slots=2\n")
    out = tmp_path / "out"
    out.mkdir()
    e = _node_env(MEGADNA_SCRIPT=script, FAKE_CODE=code)
    e["PATH"] = f"{bin_dir}{os.pathsep}{e['PATH']}"
    rc, saved_at_exit, log = _sigterm_when_ready([str(ROOT / "launchers" / "multinode.sh"), str(tmp_path / "hostfile"), str(out), "--flag", "a b"],
                                                 tmp_path, e, out, 3)
    assert saved_at_exit == ["saved0", "saved1", "saved2"], log
    assert rc == code, log
    assert "multinode.sh: SIGTERM: passed on to the ranks on every host" in log
    envs = [json.loads((out / f"env{r}.json").read_text()) for r in range(3)]
    assert [(x["RANK"], x["CROSS_RANK"], x["WORLD_SIZE"], x["MASTER_ADDR"]) for x in envs] == [("0", "0", "3", "127.0.0.1"), ("1", "1", "3", "127.0.0.1"), ("2", "1", "3", "127.0.0.1")]
    assert envs[2]["argv"] == ["--local_rank=1", str(out), "--flag", "a b"]


FAKE_SCONTROL = """\
#!/bin/bash
[ "$1 $2" = "show hostnames" ] && printf '%s\\n' $FAKE_SLURM_HOSTS
"""

FAKE_SRUN = """\
#!/bin/bash
# stand-in for srun: one task per host, here, each in its own process group; a SIGTERM to srun reaches
# every process of every task, as slurmstepd delivers it. Exits with the largest task code.
set -m
while [[ $1 == --* ]]; do shift; done
i=0; pids=()
for h in $FAKE_SLURM_HOSTS; do SLURM_NODEID=$i SLURMD_NODENAME=$h "$@" & pids+=($!); i=$((i + 1)); done
trap 'for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done' TERM
rc=0
for p in "${pids[@]}"; do
    while :; do wait "$p"; r=$?; [ $r -gt 128 ] && kill -0 "$p" 2>/dev/null && continue; break; done
    [ $r -gt $rc ] && rc=$r
done
exit $rc
"""


@pytest.mark.parametrize("code", [0, 5])
def test_slurm_sbatch_waits_through_sigterm_and_returns_the_ranks_code(tmp_path, code):
    """SIGTERM to the batch script's process group (the script and srun, as on preemption): the script
    must not die and take the job step with it; it waits for srun, which waits for every node."""
    bin_dir = tmp_path / "bin"
    fake_bin(bin_dir, {"scontrol": FAKE_SCONTROL, "srun": FAKE_SRUN})
    script = tmp_path / "fake_rank.py"
    script.write_text(FAKE_RANK)
    out = tmp_path / "out"
    out.mkdir()
    e = _node_env(MEGADNA_SCRIPT=script, FAKE_CODE=code, FAKE_SLURM_HOSTS="localhost 127.0.0.1", SLURM_JOB_ID=4242, SLURM_JOB_NODELIST="fake[0-1]",
                  SLURM_JOB_NUM_NODES=2, SLURM_SUBMIT_DIR=tmp_path, MEGADNA_ROOT=ROOT, MEGADNA_SLOTS_PER_NODE=1)
    e["PATH"] = f"{bin_dir}{os.pathsep}{e['PATH']}"
    rc, saved_at_exit, log = _sigterm_when_ready(["bash", str(ROOT / "launchers" / "slurm.sbatch"), str(out)], tmp_path, e, out, 2)
    assert saved_at_exit == ["saved0", "saved1"], log
    assert rc == code, log
    assert "slurm.sbatch: SIGTERM: waiting for every node to save and exit" in log


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_node_sh_returns_0_only_after_the_preemption_checkpoint_is_complete(small_shards, tmp_path):
    """Two real CPU ranks under launchers/node.sh; SIGTERM to the process group mid-run. The launcher
    must still be there while the ranks save, exit after the checkpoint is complete and every rank has
    ended, and return 0. (The `deepspeed` command itself exits -15 at once: see docs/MULTINODE.md.)"""
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    save = tmp_path / "run"
    args = ["--deepspeed_config", ROOT / "ds_configs" / "cpu_tiny.json", "--progress", "false", "--data", small_shards, "--save_dir", save,
            "--max_steps", 400, "--save_interval", 1000, "--eval_interval", 0, "--log_interval", 1, "--num_workers", 1]
    proc = subprocess.Popen([str(ROOT / "launchers" / "node.sh"), str(tmp_path / "hostfile"), "0", "127.0.0.1", *map(str, args)], cwd=ROOT,
                            env=_node_env(), stdout=open(tmp_path / "log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.time()
        while not (RunDir(save).metrics.exists() and RunDir(save).metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None, (tmp_path / "log").read_text()[-4000:]
            assert time.time() - t0 < 300, (tmp_path / "log").read_text()[-4000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        while proc.poll() is None:
            assert time.time() - t0 < 420, (tmp_path / "log").read_text()[-4000:]
            time.sleep(0.02)
        complete_at_exit = RunDir(save).complete_checkpoints()
    finally:
        _kill(proc)
    log = (tmp_path / "log").read_text()
    pids = [int(p) for p in log.split("started (pids ", 1)[1].split(")", 1)[0].split()]
    assert proc.returncode == 0, log[-4000:]
    assert complete_at_exit and complete_at_exit[-1][0] == len(RunDir(save).read_metrics()), log[-4000:]
    assert not any(_alive(p) for p in pids)
    assert log.count("preemption signal: saving at global_step") == 2


# --------------------------------------------------------------------------------------------------
# DeepSpeed configs: one line naming the file and the key, before anything starts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu is 0; it must be an integer >= 1"),
    ({"train_micro_batch_size_per_gpu": -8}, "train_micro_batch_size_per_gpu is -8"),
    ({"train_micro_batch_size_per_gpu": "auto"}, 'train_micro_batch_size_per_gpu is "auto"'),
    ({"train_micro_batch_size_per_gpu": 2.5}, "train_micro_batch_size_per_gpu is 2.5"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps is 0; it must be an integer >= 1"),
    ({"gradient_accumulation_steps": True}, "gradient_accumulation_steps is true"),
])
def test_batch_sizes_below_one_are_refused_naming_file_and_key(tmp_path, changes, message):
    path = _ds_config(tmp_path, **changes)
    with pytest.raises(InputError, match=rf"^{path}: {message}"):
        load_ds_config(str(path), max_steps=3)


def test_train_batch_size_sets_the_accumulation_for_the_world_size_or_is_refused_with_the_figures(tmp_path):
    cfg = json.loads((ROOT / "ds_configs" / "cpu_tiny.json").read_text())
    del cfg["gradient_accumulation_steps"]
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg | {"train_batch_size": 32}))
    # micro 8: 4 steps on 1 rank, 2 on 2, 1 on 4 -- the same global batch on any of them
    assert [load_ds_config(str(path), 3, world)["gradient_accumulation_steps"] for world in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(InputError, match=rf"^{path}: train_batch_size 32 is not micro batch 8 x 3 rank\(s\) x a whole number"):
        load_ds_config(str(path), 3, 3)
    path.write_text(json.dumps(cfg | {"train_batch_size": 32, "gradient_accumulation_steps": 1}))
    with pytest.raises(InputError, match=rf"^{path}: train_batch_size 32 != micro batch 8 x gradient_accumulation_steps 1 x 2 rank"):
        load_ds_config(str(path), 3, 2)
    assert load_ds_config(str(path), 3, 4)["gradient_accumulation_steps"] == 1
    path.write_text(json.dumps(cfg | {"train_batch_size": "32"}))
    with pytest.raises(InputError, match=r'train_batch_size is "32"'):
        load_ds_config(str(path), 3, 1)


class _NoHalfAccelerator:
    """A stand-in for DeepSpeed's CPU accelerator on a CPU without fp16 kernels (mkldnn)."""

    def is_fp16_supported(self):
        return False

    def is_bf16_supported(self):
        return True

    def device_name(self, index=None):
        return "cpu"


@pytest.mark.parametrize("section", ["fp16", "bfloat16"])
def test_precision_the_accelerator_lacks_is_refused_naming_file_and_fp32_config(tmp_path, monkeypatch, section):
    import deepspeed.accelerator

    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: _NoHalfAccelerator())
    if section == "bfloat16":
        monkeypatch.setattr(_NoHalfAccelerator, "is_bf16_supported", lambda self: False)
    path = _ds_config(tmp_path, **{section: {"enabled": True}})
    kind = "fp16" if section == "fp16" else "bf16"
    with pytest.raises(InputError, match=rf"^{path}: {section} is enabled, but this machine's cpu accelerator cannot train in {kind}; "
                                         r"use an fp32 config such as ds_configs/cpu_tiny\.json"):
        load_ds_config(str(path), max_steps=3)
    # fp16 switched off, or a device that has it: no complaint
    load_ds_config(str(_ds_config(tmp_path, **{section: {"enabled": False}})), max_steps=3)


@pytest.mark.slow
def test_micro_batch_0_is_one_line_and_exit_2_under_the_launcher(small_shards, tmp_path):
    path = _ds_config(tmp_path, train_micro_batch_size_per_gpu=0)
    proc = run(pretrain_cmd("--data", small_shards, "--save_dir", tmp_path / "run", num_gpus=1, ds_config=str(path)), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {path}: train_micro_batch_size_per_gpu is 0; it must be an integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------------
# metrics.jsonl cut by a crash mid-write
# --------------------------------------------------------------------------------------------------


def _metrics(tmp_path: Path, text: bytes) -> RunDir:
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir()
    run_dir.metrics.write_bytes(text)
    return run_dir


def _lines(steps) -> bytes:
    return b"".join(json.dumps({"step": s, "loss": 1.0}).encode() + b"\n" for s in steps)


@pytest.mark.parametrize("tail", [b'{"step": 5, "lo', b'{"step": 5, "loss": 1.0', b"\x00\x00\x00\x00", b'{"step": 5}\xff\xfe\n'])
def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog, tail):
    run_dir = _metrics(tmp_path, _lines(range(1, 5)) + tail)
    with caplog.at_level(logging.WARNING):
        _open_metrics(run_dir, resume_step=3).close()
    assert [r["step"] for r in run_dir.read_metrics()] == [1, 2, 3]
    assert f"{run_dir.metrics}, line 5: dropped an incomplete last line" in caplog.text


@pytest.mark.parametrize("text, message", [
    (_lines([1]) + b'{"step": 2, "lo\n' + _lines([3]), r"metrics\.jsonl, line 2: not valid JSON: .*; metrics\.jsonl only logs the run: repair that line or move the file away"),
    (_lines([1]) + b"[2]\n" + _lines([3]), r"metrics\.jsonl: record 2 is \[2\], not a step record with an integer 'step'"),
])
def test_a_malformed_metrics_line_before_the_last_names_the_line(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        _open_metrics(_metrics(tmp_path, text), resume_step=3)


@pytest.mark.slow
def test_resume_after_a_torn_metrics_line(small_shards, tmp_path):
    save = tmp_path / "run"
    common = ("--data", small_shards, "--save_dir", save, "--max_steps", 4, "--save_interval", 2, "--eval_interval", 0, "--log_interval", 1, "--num_workers", 0)
    first = run(pretrain_cmd(*common, "--stop_at_step", 2, num_gpus=1), timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    with open(RunDir(save).metrics, "ab") as f:
        f.write(b'{"step": 3, "loss": 8.3')  # the crash came mid-write of step 3's line
    resumed = run(pretrain_cmd(*common, num_gpus=1), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "dropped an incomplete last line" in resumed.stderr
    assert [r["step"] for r in RunDir(save).read_metrics()] == [1, 2, 3, 4]
