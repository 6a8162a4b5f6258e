"""Elastic resume: a run stopped on one world size continues on another (the global sample order plus
DeepSpeed's universal checkpoint), seeing the same samples and the same losses as the run that never
stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch import pretrain_cmd, run

from megadna import rundir as ckpt
from megadna.errors import InputError
from megadna.rundir import RunDir
from megadna.train import elastic

pytestmark = pytest.mark.slow


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def batch16(tmp_path_factory) -> str:
    """cpu_tiny.json with train_batch_size 16 and no accumulation steps: megadna derives them, 1 on 2
    ranks and 2 on 1 rank (micro batch 8), so the one config keeps the global batch on both."""
    root = Path(__file__).resolve().parents[1]
    cfg = json.loads((root / "ds_configs" / "cpu_tiny.json").read_text())
    del cfg["gradient_accumulation_steps"]
    cfg["train_batch_size"] = 16
    path = tmp_path_factory.mktemp("ds") / "batch16.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _args(data, save, *extra):
    # RandomMask and dropout: both keyed by the micro batch's place in the global batch, not by rank.
    return ("--data", data, "--save_dir", save, "--max_steps", 20, "--save_interval", 10, "--eval_interval", 10, "--log_interval", 5,
            "--masking", "randommask", "--record_samples", "true", *extra)


def _steps(save):
    return RunDir(save).read_metrics()


def _evals(out: str) -> list[str]:
    return [line.split("|")[0] + line.split("|")[1] for line in out.splitlines() if line.startswith("eval @")]


@pytest.fixture(scope="module")
def straight(real_shards, tmp_path_factory):
    save = tmp_path_factory.mktemp("elastic") / "straight"
    proc = _ok(run(pretrain_cmd(*_args(real_shards, save, "--num_workers", 1), num_gpus=2)))
    return save, _evals(proc.stdout)


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_continues_the_same_samples_and_losses(real_shards, straight, batch16, tmp_path, before, after):
    ref, ref_evals = straight
    save = tmp_path / "split"
    _ok(run(pretrain_cmd(*_args(real_shards, save, "--stop_at_step", 10, "--num_workers", 1), num_gpus=before, ds_config=batch16)))
    # Resumed with another worker count too (batches do not depend on it).
    resumed = _ok(run(pretrain_cmd(*_args(real_shards, save, "--num_workers", 2), num_gpus=after, ds_config=batch16)))
    assert f"world size {before} -> {after}" in resumed.stdout
    got, want = _steps(save), _steps(ref)
    assert [r["step"] for r in got] == list(range(1, 21))
    assert [r["samples"] for r in got] == [r["samples"] for r in want]  # the same windows in the same global batches
    assert len({s for r in want for s in r["samples"]}) == 20 * 16
    for g, w in zip(got, want):
        assert abs(g["loss"] - w["loss"]) <= 1e-4 * abs(w["loss"]), (g["step"], g["loss"], w["loss"])
        assert g["lr"] == pytest.approx(w["lr"], rel=1e-6) and g["mask_boundary"] == w["mask_boundary"]
    assert _evals(resumed.stdout)[-1] == ref_evals[-1]  # held-out evaluation too: same windows, same masks
    # The optimizer state went through DeepSpeed's universal form, kept beside the checkpoints.
    (conv,) = RunDir(save).universal.iterdir()
    meta = ckpt.read_meta(conv)
    assert conv.name == ckpt.tag_for(10) and meta["source_world_size"] == before and ckpt.verify_files(conv, meta)
    assert (conv / "zero").is_dir()
    last = ckpt.read_meta(RunDir(save).checkpoint(20))
    assert (last["world_size"], last["accum"], last["order_batch"]) == (after, 2 // after, 16)


def test_what_cannot_change_on_resume_is_refused_in_one_line(tmp_path):
    from megadna.train.trainer import _check_resumable

    class Cfg:  # the fields _check_resumable reads
        seed, data, seq_len_schedule = 0, "shards", ""

    class M:
        kmer_basis = 0

    old = {"global_step": 10, "batches_consumed": 10, "world_size": 2, "seed": 0}
    with pytest.raises(InputError, match=r"written before megadna's global sample order .* --init_from .* --resume none"):
        _check_resumable(old, Cfg, tmp_path, M)
    with pytest.raises(InputError, match=r"cannot resume exactly \(seed: checkpoint 1, now 0\)"):
        _check_resumable({"samples_consumed": 160, "seed": 1}, Cfg, tmp_path, M)
    _check_resumable({"samples_consumed": 160, "seed": 0, "world_size": 8, "micro_batch": 2, "num_workers": 5}, Cfg, tmp_path, M)
    with pytest.raises(InputError, match=r"ZeRO-3"):
        elastic.needs_universal({"world_size": 2}, 4, {"zero_optimization": {"stage": 3}}, tmp_path)
    assert not elastic.needs_universal({"world_size": 2}, 2, {"zero_optimization": {"stage": 2}}, tmp_path)
    assert elastic.needs_universal({"world_size": 2}, 1, {"zero_optimization": {"stage": 1}}, tmp_path)
