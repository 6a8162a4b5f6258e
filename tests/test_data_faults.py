"""Data faults end a run, fast and by name: a rank whose shards are garbage exits with the one-line
error, its loader worker (which ignores SIGTERM) does not keep it alive, and the other rank follows
within seconds instead of waiting out the collective timeout."""

import multiprocessing
import os
import shutil
import subprocess
import sys
import time

import pytest
from launch import ROOT, env, free_port

from megadna.data.shards import read_manifest
from megadna.data.stream import StreamConfig, WindowStream

pytestmark = pytest.mark.slow

MICRO_BATCH = 8  # ds_configs/cpu_tiny.json's train_micro_batch_size_per_gpu


def _shards_of_rank(shard_dir, rank: int, world: int = 2) -> set[str]:
    """The train shards (relative paths) `rank` reads in epoch 0 with one loader worker and seed 0."""
    s = WindowStream(shard_dir, StreamConfig(micro_batch=MICRO_BATCH, num_workers=1, seed=0), rank=rank, world_size=world)
    return {seg.shard for _, epoch, lane in s.lanes_read(s.batches_per_epoch) for seg in s.sets[0].order.lane_segments(epoch, lane)}


def _rank_env(rank: int, port: int) -> dict:
    e = env()
    e.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
             MEGADNA_DIST_TIMEOUT_S="120")  # a rank left waiting would take 120 s: far past the bound asserted
    return e


def test_garbage_shards_on_one_rank_end_both_ranks_nonzero_within_seconds(real_shards, tmp_path):
    data = tmp_path / "shards"
    shutil.copytree(real_shards, data)
    # Rank 0's own shards (not the one it shares with rank 1) become garbage. Before the fix, the reader
    # padded the first shuffle block from the one readable shard, and the loader worker raised only in
    # the next block (step ~250): the rank printed the error and then hung at exit joining that worker.
    victims = _shards_of_rank(data, 0) - _shards_of_rank(data, 1)
    assert victims, "rank 0 reads no shard of its own: the fixture's shards are too large for this test"
    for rel in victims:
        p = data / rel
        p.write_bytes(os.urandom(p.stat().st_size))
    port = free_port()
    args = [sys.executable, str(ROOT / "launchers" / "pretrain.py"), "--deepspeed_config", str(ROOT / "ds_configs" / "cpu_tiny.json"),
            "--progress", "false", "--data", str(data), "--save_dir", str(tmp_path / "run"), "--max_steps", "300", "--save_interval", "300",
            "--eval_interval", "0", "--num_workers", "1", "--seed", "0"]
    procs, logs = [], []
    for rank in range(2):
        logs.append(open(tmp_path / f"rank{rank}.log", "w+"))
        procs.append(subprocess.Popen(args, cwd=ROOT, env=_rank_env(rank, port), stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True))
    ended = {}
    try:
        t0 = time.monotonic()
        while len(ended) < 2 and time.monotonic() - t0 < 150:
            for rank, p in enumerate(procs):
                if rank not in ended and p.poll() is not None:
                    ended[rank] = time.monotonic()
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    out = [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]
    assert len(ended) == 2, f"rank(s) {sorted(set(range(2)) - set(ended))} still running after 150 s\n--- rank 0\n{out[0][-3000:]}\n--- rank 1\n{out[1][-3000:]}"
    codes = [p.returncode for p in procs]
    assert codes[0] == 2, f"rank 0 exit {codes[0]}\n{out[0][-3000:]}"
    assert codes[1] != 0, f"rank 1 exit 0\n{out[1][-3000:]}"
    # The error is one line naming the damaged shard; no worker traceback.
    errors = [line for line in out[0].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and any(rel.split("/")[1] in errors[0] for rel in victims), out[0][-3000:]
    assert "Traceback" not in out[0], out[0][-3000:]
    assert max(ended.values()) - min(ended.values()) < 30, f"the ranks ended {max(ended.values()) - min(ended.values()):.0f} s apart"
    # No loader worker outlived its rank.
    leftovers = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"processes still reading {data}: {leftovers}"


def test_a_loader_error_in_a_worker_is_one_line_and_leaves_no_worker(real_shards, tmp_path):
    """In one process: the worker's InputError reaches the caller as itself, the workers are gone at once."""
    from megadna.data.stream import make_loader
    from megadna.errors import InputError

    data = tmp_path / "shards"
    shutil.copytree(real_shards, data)
    m = read_manifest(data)
    for sh in m["splits"]["train"]["shards"]:
        p = data / "train" / sh["name"]
        p.write_bytes(p.read_bytes()[:-100])
    before = set(multiprocessing.active_children())
    it = iter(make_loader(WindowStream(data, StreamConfig(micro_batch=4, num_workers=2))))
    with pytest.raises(InputError) as e:
        next(it)
    assert "\n" not in str(e.value) and "corrupt or truncated" in str(e.value) and "shard-" in str(e.value)
    assert set(multiprocessing.active_children()) <= before  # the workers are gone, not left to interpreter exit
