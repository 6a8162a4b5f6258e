"""Start `launchers/pretrain.py` under the real `deepspeed` launcher, as a user would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from megadna.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_cmd(*args, num_gpus: int = 2, ds_config: str = "ds_configs/cpu_tiny.json", launcher_args=()) -> list[str]:
    return [DEEPSPEED, "--num_gpus", str(num_gpus), "--master_port", str(free_port()), *launcher_args,
            str(ROOT / "launchers" / "pretrain.py"), "--deepspeed_config", str(ROOT / ds_config), "--progress", "false", *map(str, args)]


def env() -> dict:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"  # two ranks share two cores
    return e


def run(cmd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def losses(save_dir: Path) -> list[float]:
    return [r["loss"] for r in RunDir(save_dir).read_metrics()]


def fp32_params(ckpt_dir: Path) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name)


def fake_bin(directory: Path, scripts: dict[str, str]) -> Path:
    """Stand-in executables (ssh, pdsh, srun, ...) written into `directory`, for PATH to find first."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in scripts.items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o755)
    return directory
