"""The trainer under the real `deepspeed` launcher on CPU ranks: it learns, it resumes exactly, it
survives kills and preemption, it stops on a non-finite loss, and every shipped config runs."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from launch import ROOT, env, fp32_params, losses, pretrain_cmd, run

from megadna import rundir as ckpt
from megadna.errors import InputError
from megadna.rundir import RunDir
from megadna.train import load_ds_config
from megadna.train.distributed import SHM_DIR

pytestmark = pytest.mark.slow


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def test_two_rank_zero2_run_learns_on_real_shards(real_shards, tmp_path):
    save = tmp_path / "run"
    cmd = pretrain_cmd("--data", real_shards, "--save_dir", save, "--max_steps", 120, "--save_interval", 120, "--eval_interval", 60, "--log_interval", 20, "--masking", "dnabert")
    proc = run(cmd)
    _ok(proc)
    port = cmd[cmd.index("--master_port") + 1]
    assert not list(SHM_DIR.glob(f"deepspeed_allreduce_buffer_*_{port}_*")), "DeepSpeed's shared-memory buffers outlived the run"
    ls = losses(save)
    assert len(ls) == 120
    first, last = sum(ls[:15]) / 15, sum(ls[-15:]) / 15
    assert last < first - 0.05, f"loss did not fall: first {first:.4f}, last {last:.4f}"
    cfg = json.loads(RunDir(save).config.read_text())
    assert cfg["world_size"] == 2 and cfg["deepspeed"]["zero_optimization"]["stage"] == 2
    assert "step 120/120" in proc.stdout and "eval @ step 120" in proc.stdout
    (found,) = RunDir(save).complete_checkpoints()
    assert found[0] == 120
    assert (found[1] / ckpt.TOKENIZER_DIR / "vocab.txt").is_file() and (found[1] / ckpt.CONFIG).is_file()
    assert list((save / "tensorboard").iterdir())


def test_resume_equals_uninterrupted(real_shards, tmp_path):
    # With both curricula: pieces of 34 tokens until step 6, 130 until 12, whole windows after the resume
    # at 10 (exact resume inside a stage and across a stage change), and the k-mer basis embeddings.
    common = ("--data", real_shards, "--max_steps", 20, "--save_interval", 10, "--eval_interval", 0, "--log_interval", 5, "--num_workers", 2, "--masking", "randommask", "--keep_last", 5,
              "--seq_len_schedule", "34:0.3,130:0.6", "--kmer_basis", "true")
    straight, split = tmp_path / "straight", tmp_path / "split"
    _ok(run(pretrain_cmd(*common, "--save_dir", straight)))
    _ok(run(pretrain_cmd(*common, "--save_dir", split, "--stop_at_step", 10)))
    assert [s for s, _ in RunDir(split).complete_checkpoints()] == [10]
    resumed = run(pretrain_cmd(*common, "--save_dir", split))
    _ok(resumed)
    assert "resuming from" in resumed.stdout and "global_step 10" in resumed.stdout
    assert losses(split) == losses(straight)  # bitwise: same data, masks, dropout and optimizer state
    a = fp32_params(RunDir(straight).checkpoint(20))
    b = fp32_params(RunDir(split).checkpoint(20))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert "bert.embeddings.kmer_basis.weight" in a
    assert [r["seq_len"] for r in RunDir(split).read_metrics()][::5] == [34, 34, 130, 507]  # steps 1, 6, 11, 16


def _wait_for(predicate, timeout, proc):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}): {proc.stdout.read()[-3000:] if proc.stdout else ''}")
        time.sleep(0.5)
    raise AssertionError("timed out")


def _start(cmd):
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_killed_run_resumes_from_its_last_complete_checkpoint(real_shards, tmp_path):
    save = tmp_path / "run"
    common = ("--data", real_shards, "--save_dir", save, "--max_steps", 400, "--save_interval", 5, "--eval_interval", 0, "--keep_last", 2)
    proc = _start(pretrain_cmd(*common, "--log_interval", 5))
    try:
        _wait_for(lambda: any(s >= 10 for s, _ in RunDir(save).complete_checkpoints()), 300, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: like a node failure
        proc.wait()
    # An interrupted save is a directory without the completion marker: it must be passed over.
    (RunDir(save).checkpoint(10**7)).mkdir()
    newest = RunDir(save).complete_checkpoints()[-1][0]
    assert len(RunDir(save).complete_checkpoints()) <= 2  # keep_last
    resumed = run(pretrain_cmd(*common, "--stop_at_step", newest + 3, "--log_interval", 1))
    _ok(resumed)
    assert f"global_step {newest}" in resumed.stdout
    assert RunDir(save).complete_checkpoints()[-1][0] == newest + 3
    steps = [json.loads(line)["step"] for line in RunDir(save).metrics.read_text().splitlines()]
    assert steps == list(range(1, newest + 4))  # the log reads as one run


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(real_shards, tmp_path):
    save = tmp_path / "run"
    proc = _start(pretrain_cmd("--data", real_shards, "--save_dir", save, "--max_steps", 400, "--save_interval", 1000, "--eval_interval", 0, "--num_workers", 1))
    try:
        _wait_for(lambda: RunDir(save).metrics.exists() and len(losses(save)) >= 3, 300, proc)
        os.killpg(proc.pid, signal.SIGTERM)  # what SLURM does on preemption: the whole job gets it
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "preemption signal: saving" in out
    found = RunDir(save).complete_checkpoints()
    assert found and found[-1][0] == len(losses(save)) and 3 <= found[-1][0] < 400


def _train(**kw):
    from megadna.train import TrainConfig, train

    ds = kw.pop("ds_config")
    return train(TrainConfig(progress=False, eval_interval=0, log_interval=1, **kw), ds)


def test_non_finite_loss_stops_with_a_clear_message(real_shards, tmp_path, single_rank):
    from megadna.train import NonFiniteLoss

    cfg = json.loads((ROOT / "ds_configs" / "cpu_tiny.json").read_text())
    cfg["optimizer"]["params"]["lr"] = 1e12  # a blow-up, deliberately
    cfg["scheduler"] = {"type": "WarmupLR", "params": {"warmup_min_lr": 1e12, "warmup_max_lr": 1e12, "warmup_num_steps": 1}}
    cfg["gradient_clipping"] = 0.0
    (tmp_path / "ds.json").write_text(json.dumps(cfg))
    save = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match="last complete checkpoint is intact"):
        _train(data=str(real_shards), save_dir=str(save), max_steps=50, save_interval=1, num_workers=0, ds_config=str(tmp_path / "ds.json"))
    found = RunDir(save).complete_checkpoints()
    assert found and found[-1][0] == len(losses(save))  # the last finite step was saved, nothing after
    assert all(torch.isfinite(torch.tensor(x)) for x in losses(save))


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "ds_configs").glob("*.json")))
def test_every_shipped_deepspeed_config_runs(name, real_shards, tmp_path, single_rank):
    from deepspeed.accelerator import get_accelerator

    raw = json.loads((ROOT / "ds_configs" / name).read_text())
    unsupported = [k for k in ("fp16", "bf16") if raw.get(k, {}).get("enabled") and not getattr(get_accelerator(), f"is_{k}_supported")()]
    if unsupported:  # e.g. fp16 on a CPU without fp16 kernels: refused up front, one line naming the file
        with pytest.raises(InputError, match=rf"{name}: {unsupported[0]} is enabled, but .* use an fp32 config such as ds_configs/cpu_tiny\.json"):
            load_ds_config(str(ROOT / "ds_configs" / name), max_steps=3)
        pytest.skip(f"{unsupported[0]} is not supported by this machine's {get_accelerator().device_name()} accelerator (refusal checked)")
    cfg = load_ds_config(str(ROOT / "ds_configs" / name), max_steps=3)
    assert cfg["scheduler"]["params"]["total_num_steps"] == 3
    summary = _train(data=str(real_shards), save_dir=str(tmp_path / "run"), max_steps=3, save_interval=3, num_workers=0, ds_config=str(ROOT / "ds_configs" / name))
    assert summary["final_step"] == 3 and len(losses(tmp_path / "run")) == 3
    assert RunDir(tmp_path / "run").complete_checkpoints()[-1][0] == 3
