"""What a resume trusts in a checkpoint, and what it checks (megadna.integrity, megadna.rundir).

Tampered copies of real checkpoints: a pickle payload is refused without running (by the sha256
record, and independently by the weights-only loader), an edited step or weights are refused, an
unreadable marker is named instead of passed over, and a truncated file is one line on every rank.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from launch import ROOT, pretrain_cmd, run

from megadna import rundir as ckpt
from megadna.errors import InputError
from megadna.integrity import check_file, file_record, torch_load_weights_only
from megadna.rundir import RunDir

MODEL_STATES = "mp_rank_00_model_states.pt"
CPU_TINY = str(ROOT / "ds_configs" / "cpu_tiny.json")


class _Payload:
    """Unpickles into open(path, "w"): creates a file, which shows whether the payload ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(pt: Path, payload_marker: Path) -> None:
    state = torch.load(pt, map_location="cpu", weights_only=False)  # our own file, written by the fixture: trusted
    state["payload"] = _Payload(payload_marker)
    torch.save(state, pt)


def _edit(pt: Path, fn) -> None:
    state = torch.load(pt, map_location="cpu", weights_only=False)  # trusted: our own file
    fn(state)
    torch.save(state, pt)


def _rehash(d: Path) -> None:
    """What an attacker who can also write megadna.json does: record the tampered files' hashes."""
    meta = ckpt.read_meta(d)
    ckpt.write_meta(d, {k: v for k, v in meta.items() if k not in ("format", ckpt.FILES)})


def _copy(src: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run; and its newest checkpoint."""
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst, RunDir(dst).newest_checkpoint()


# --------------------------------------------------------------------------------------------------
# Files: records and the weights-only loader (no DeepSpeed run needed)
# --------------------------------------------------------------------------------------------------


def test_weights_only_load_refuses_a_payload_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"w": torch.ones(3), "payload": _Payload(marker)}, tmp_path / "x.pt")
    with pytest.raises(InputError, match=r"x\.pt: refused to load"):
        torch_load_weights_only(tmp_path / "x.pt")
    assert not marker.exists()
    torch.save({"w": torch.ones(3)}, tmp_path / "ok.pt")
    assert torch.equal(torch_load_weights_only(tmp_path / "ok.pt")["w"], torch.ones(3))


def test_truncated_torch_file_is_named(tmp_path):
    pt = tmp_path / "x.pt"
    torch.save({"w": torch.ones(1000)}, pt)
    record = file_record(pt)
    pt.write_bytes(pt.read_bytes()[: record["size"] // 2])
    with pytest.raises(InputError, match=r"x\.pt: \d+ bytes, but \d+ were recorded"):
        check_file(pt, record)
    with pytest.raises(InputError, match=r"x\.pt: not a readable torch file"):
        torch_load_weights_only(pt)


def _fake_checkpoint(root: Path, step: int) -> Path:
    d = root / ckpt.tag_for(step)
    d.mkdir(parents=True)
    torch.save({"w": torch.ones(4)}, d / MODEL_STATES)
    ckpt.write_meta(d, {"global_step": step, "samples_consumed": step})
    return d


def test_marker_records_every_file_and_verify_names_the_changed_one(tmp_path):
    d = _fake_checkpoint(tmp_path, 8)
    (d / "tokenizer").mkdir()
    (d / "tokenizer" / "vocab.txt").write_text("A\n")
    _rehash(d)
    meta = ckpt.read_meta(d)
    assert set(meta[ckpt.FILES]) == {MODEL_STATES, "tokenizer/vocab.txt"}
    assert ckpt.verify_files(d, meta)
    (d / "tokenizer" / "vocab.txt").write_text("C\n")  # same size, other bytes
    with pytest.raises(InputError, match=r"tokenizer/vocab\.txt: sha256 .* differs"):
        ckpt.verify_files(d, meta)
    (d / "tokenizer" / "vocab.txt").write_text("A\n")
    torch.save({}, d / "zero_pp_rank_1_mp_rank_00_optim_states.pt")  # smuggled in after the save
    with pytest.raises(InputError, match=r"zero_pp_rank_1_mp_rank_00_optim_states\.pt: not recorded"):
        ckpt.resolve_resume(str(d), tmp_path)


def test_unreadable_marker_is_named_not_passed_over(tmp_path):
    _fake_checkpoint(tmp_path, 4)
    newest = _fake_checkpoint(tmp_path, 8)
    (tmp_path / ckpt.tag_for(12)).mkdir()  # an interrupted save (no marker): passed over, as before
    assert ckpt.resolve_resume("auto", tmp_path) == newest
    (newest / ckpt.META).write_text('{"format": "megadna-checkpoint/1", "global_step": 8,')  # invalid JSON
    with pytest.raises(InputError, match=rf"{ckpt.tag_for(8)}: its completion marker megadna.json cannot be read .*Delete"):
        ckpt.resolve_resume("auto", tmp_path)
    assert ckpt.resolve_resume(str(tmp_path / ckpt.tag_for(4)), tmp_path) == tmp_path / ckpt.tag_for(4)  # the way out
    assert ckpt.prune(tmp_path, keep_last=1) == []  # neither counted nor deleted
    (newest / ckpt.META).write_text(json.dumps({"format": ckpt.FORMAT, "global_step": "8"}))
    with pytest.raises(InputError, match="global_step '8' is not a step number"):
        ckpt.complete_checkpoints(tmp_path)


# --------------------------------------------------------------------------------------------------
# Resume of a real run, in this process (one rank)
# --------------------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def one_rank():
    from launch import free_port

    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
            mp.setenv(k, os.environ.get(k, v) if torch.distributed.is_initialized() else v)
        torch.set_num_threads(1)
        yield


def _cfg(data, save, **kw):
    from megadna.train import TrainConfig

    return TrainConfig(data=str(data), save_dir=str(save), progress=False, eval_interval=0, log_interval=1, num_workers=0, keep_last=5, **kw)


@pytest.fixture(scope="module")
def run1(real_shards, tmp_path_factory, one_rank):
    """A one-rank run with checkpoints at steps 2 and 4."""
    from megadna.train import train

    save = tmp_path_factory.mktemp("trust") / "run"
    train(_cfg(real_shards, save, max_steps=4, save_interval=2), CPU_TINY)
    return real_shards, save


def _resume(run1, save, ds=CPU_TINY):
    from megadna.train import Trainer

    return Trainer(_cfg(run1[0], save, max_steps=4, save_interval=2), ds)


def test_resume_checks_and_loads_an_untouched_checkpoint(run1, tmp_path):
    save, d = _copy(run1[1], tmp_path)
    assert ckpt.verify_files(d, ckpt.read_meta(d))
    assert _resume(run1, save).step == 4


def test_payload_in_model_states_is_refused_by_the_sha256_record(run1, tmp_path):
    save, d = _copy(run1[1], tmp_path)
    marker = tmp_path / "payload_ran"
    _plant(d / MODEL_STATES, marker)
    with pytest.raises(InputError, match=rf"{MODEL_STATES}: \d+ bytes, but \d+ were recorded|{MODEL_STATES}: sha256"):
        _resume(run1, save)
    assert not marker.exists()


def test_payload_in_model_states_is_refused_by_the_weights_only_loader(run1, tmp_path):
    save, d = _copy(run1[1], tmp_path)
    marker = tmp_path / "payload_ran"
    _plant(d / MODEL_STATES, marker)
    _rehash(d)  # the file records now agree with the tampered file: only weights_only stands between
    with pytest.raises(InputError, match=rf"{MODEL_STATES}: refused to load"):
        _resume(run1, save)
    assert not marker.exists()


@pytest.mark.parametrize("step", [3, 6, 100])
def test_edited_step_in_the_marker_is_refused(run1, tmp_path, step):
    save, d = _copy(run1[1], tmp_path)
    meta = json.loads((d / ckpt.META).read_text())
    (d / ckpt.META).write_text(json.dumps(meta | {"global_step": step, "samples_consumed": step}))
    with pytest.raises(InputError, match=rf"{d.name}: the checkpoint contradicts itself \(global_step 4 in DeepSpeed's client state vs {step}"):
        _resume(run1, save)


def _resume_dir(run1, d):
    from megadna.train import Trainer

    return Trainer(_cfg(run1[0], d.parent.parent, max_steps=4, save_interval=2, resume=str(d)), CPU_TINY)


def test_edited_step_everywhere_but_deepspeeds_counter_is_refused(run1, tmp_path):
    _, d = _copy(run1[1], tmp_path)
    _edit(d / MODEL_STATES, lambda s: s.update(global_step=3, samples_consumed=3))
    meta = ckpt.read_meta(d)
    (d / ckpt.META).write_text(json.dumps(meta | {"global_step": 3, "samples_consumed": 3}))
    _rehash(d)
    with pytest.raises(InputError, match=r"DeepSpeed's own global_steps 4 vs global_step 3"):
        _resume_dir(run1, d)


def test_edited_weights_are_refused(run1, tmp_path):
    _, d = _copy(run1[1], tmp_path)

    def bump(state):
        name = sorted(state["module"])[0]
        state["module"][name] = state["module"][name] + 1.0

    _edit(d / MODEL_STATES, bump)
    _rehash(d)
    with pytest.raises(InputError, match=r"the loaded weights' sha256 .* vs weights_sha256"):
        _resume_dir(run1, d)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "ds_configs").glob("*.json")))
def test_every_shipped_config_resumes_through_the_allow_list(name, real_shards, tmp_path, one_rank):
    """The allow-list holds every class DeepSpeed pickles for each shipped config."""
    from megadna.train import Trainer, train

    ds = str(ROOT / "ds_configs" / name)
    if json.loads(Path(ds).read_text()).get("fp16", {}).get("enabled") and not torch.cuda.is_available():
        pytest.skip("fp16 training needs a GPU")
    save = tmp_path / "run"
    train(_cfg(real_shards, save, max_steps=2, save_interval=1), ds)
    assert Trainer(_cfg(real_shards, save, max_steps=2, save_interval=1), ds).step == 2


# --------------------------------------------------------------------------------------------------
# Two ranks under the real launcher
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_truncated_optimizer_file_is_one_line_on_every_rank(real_shards, tmp_path):
    save = tmp_path / "run"
    common = ("--data", real_shards, "--save_dir", save, "--max_steps", 4, "--save_interval", 2, "--eval_interval", 0, "--num_workers", 0)
    first = run(pretrain_cmd(*common, "--stop_at_step", 2), timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    d = RunDir(save).newest_checkpoint()
    optim = d / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:1000])
    resumed = run(pretrain_cmd(*common), timeout=300)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode != 0
    assert out.count(f"error: {optim}: 1000 bytes, but") == 2, out[-4000:]  # rank 0 and rank 1 (lines may interleave)
    assert out.count("error: ") == 2, out[-4000:]
    assert "Traceback" not in out and "lost contact" not in out, out[-4000:]
