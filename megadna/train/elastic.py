"""Resume on another number of ranks: the ZeRO-1/2 checkpoint converted to DeepSpeed's universal form.

ZeRO-1/2 cut the optimizer state into one piece per data-parallel rank, so a checkpoint of 2 ranks does
not load on 1 or 4. DeepSpeed's `ds_to_universal` gathers every parameter's fp32 weights and Adam
moments whole (`zero/<param>/{fp32,exp_avg,exp_avg_sq,step}.pt`); an engine configured with
`checkpoint.load_universal` re-partitions them for its own world size. The trainer does it when it
resumes a checkpoint written by another world size: rank 0 converts once into
`save_dir/universal/stepNNNNNNNN/` (kept, marked complete and hashed like a checkpoint, so a second
resume reuses it), every rank loads from there. Weights, moments, the step, the LR schedule and the
data position continue exactly (tests/test_elastic.py: losses within float summation order).

Safety: DeepSpeed's converter and its universal loader read with torch.load(weights_only=False). Both
run here with their modules' torch.load routed through megadna.integrity's weights-only loader, and
only on files whose sha256 the checkpoint's marker recorded (checked before).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import shutil
from pathlib import Path

from megadna import rundir as ckpt
from megadna.errors import InputError
from megadna.integrity import weights_only

log = logging.getLogger("megadna.train")

# The client-state entry DeepSpeed's converter requires in the model states (ds_to_universal asserts it).
UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.4}}

# The modules of DeepSpeed that torch.load a checkpoint when converting or loading the universal form.
_LOADERS = ("deepspeed.checkpoint.ds_to_universal", "deepspeed.checkpoint.deepspeed_checkpoint", "deepspeed.checkpoint.zero_checkpoint",
            "deepspeed.checkpoint.universal_checkpoint", "deepspeed.runtime.base_optimizer")


def zero_stage(ds_cfg: dict) -> int:
    return int((ds_cfg.get("zero_optimization") or {}).get("stage", 0))


def needs_universal(meta: dict, world: int, ds_cfg: dict, resume_dir: Path) -> bool:
    """Whether this resume changes the data-parallel degree of a partitioned optimizer state."""
    saved = meta.get("world_size")
    if saved == world or zero_stage(ds_cfg) == 0:
        return False
    if zero_stage(ds_cfg) > 2:
        raise InputError(f"{resume_dir}: written by {saved} rank(s), resumed on {world}: megadna converts ZeRO-1/2 optimizer "
                         "states to another world size, not ZeRO-3's. Resume on the same number of ranks")
    return True


@contextlib.contextmanager
def weights_only_loads():
    """DeepSpeed's checkpoint loaders' torch.load, made weights-only (megadna.integrity) meanwhile."""
    with contextlib.ExitStack() as stack:
        for name in _LOADERS:
            stack.enter_context(weights_only(importlib.import_module(name)))
        yield


def universal_dir(resume_dir: Path, out_root: Path) -> Path:
    """Where the universal form of checkpoint `resume_dir` lives under out_root."""
    return out_root / resume_dir.name


def universal_copy(resume_dir: Path, meta: dict, out_root: Path) -> Path:
    """The universal form of checkpoint `resume_dir`, under out_root: reused when a complete copy of this
    checkpoint (same step and weights) is there and its files check out, else converted anew (rank 0)."""
    out = universal_dir(resume_dir, out_root)
    if out.is_dir():
        try:
            have = ckpt.read_meta(out)
            if have.get("source_weights_sha256") == meta.get("weights_sha256") and have["global_step"] == meta["global_step"] and ckpt.verify_files(out, have):
                return out
        except InputError as e:
            log.warning("%s: converting again (%s)", out, e)
        shutil.rmtree(out)
    if out_root.is_dir():  # conversions of earlier resumes: only the one being loaded is needed
        for old in out_root.iterdir():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    partial = out_root / f"{resume_dir.name}.partial"
    out_root.mkdir(parents=True, exist_ok=True)
    log.info("converting %s (world size %s) to DeepSpeed's universal checkpoint in %s", resume_dir, meta.get("world_size"), out)
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=str(resume_dir), output_folder=str(partial), num_extract_workers=1, num_merge_workers=1,
                              keep_temp_folder=False, strict=True, inject_missing_state=False)
    try:
        with weights_only_loads(), contextlib.redirect_stdout(None):
            ds_to_universal.main(args)
    except (AssertionError, KeyError, RuntimeError, ValueError) as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise InputError(f"{resume_dir}: DeepSpeed could not convert it to a universal checkpoint ({type(e).__name__}: {e}); "
                         "resume on the world size that wrote it") from e
    (out_root / "latest_universal").unlink(missing_ok=True)  # the converter's pointer; megadna names the tag itself
    ckpt.write_meta(partial, {"global_step": meta["global_step"], "source": str(resume_dir), "source_weights_sha256": meta.get("weights_sha256"),
                              "source_world_size": meta.get("world_size")})
    partial.rename(out)
    return out


__all__ = ["UNIVERSAL_INFO", "needs_universal", "universal_copy", "universal_dir", "weights_only_loads", "zero_stage"]
