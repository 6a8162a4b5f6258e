"""Where the real shared data lives (genomes, GUE, published baselines).

It is never copied into the project: the environment variable MEGADNA_SHARED_DATA points to it
(`.ci/run` sets it to ../shared/data); without it we look beside the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MEGADNA_SHARED_DATA"


def shared_data_dir() -> Path | None:
    """The shared data folder, or None when it is not available on this machine."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    return beside if beside.is_dir() else None
