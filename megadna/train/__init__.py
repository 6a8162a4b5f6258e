"""Pre-training: `TrainConfig` (config), the `Trainer` (trainer), the run directory and checkpoints
(megadna.rundir), distributed set-up and checks (distributed), throughput and MFU (metrics)."""

from megadna.train.config import TrainConfig, load_ds_config
from megadna.train.trainer import NonFiniteLoss, Trainer, train

__all__ = ["NonFiniteLoss", "TrainConfig", "Trainer", "load_ds_config", "train"]
