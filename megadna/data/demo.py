"""The built-in demo data: a synthetic genome (deterministic) cut into shards, for runs with no --data."""

from __future__ import annotations

from pathlib import Path

from megadna.data.genome import WindowConfig
from megadna.data.shard_writer import ShardConfig, write_shards
from megadna.data.shards import MANIFEST
from megadna.data.synthetic import write_synthetic_fasta

DEMO_WINDOW = WindowConfig(window=510, stride=255, max_n_fraction=0.0, val_fraction=0.05)


def build_demo_shards(out: Path) -> Path:
    """Write out/demo_genome.fa.gz and out/shards once (4 contigs x 250 kbp); returns the shard directory."""
    out = Path(out)
    shards = out / "shards"
    if not (shards / MANIFEST).exists():
        fasta = write_synthetic_fasta(out / "demo_genome.fa.gz", n_contigs=4, length=250_000, seed=0)
        write_shards([fasta], shards, DEMO_WINDOW, ShardConfig(samples_per_shard=1000), overwrite=True)
    return shards
