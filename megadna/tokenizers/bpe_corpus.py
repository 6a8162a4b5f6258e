"""Where BPE training sequences come from: FASTA files, or the train split of a megadna shard set.

Both yield whole sequences (bytes); bpe.training_chunks cuts them at N runs and into chunks. Shards
are read through megadna.data.shards (the one reader of that format: seq.txt members as text, nothing
unpickled) and only their train split is used: a tokenizer that has seen the validation windows
would leak them into every model trained with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from megadna.errors import InputError


def fasta_sequences(paths: Iterable) -> Iterator[bytes]:
    """The bases of every record of every FASTA file (plain or .gz), in order."""
    from megadna.data.genome import read_fasta  # imported here: the tokenizers do not need the genome reader

    paths = [Path(p) for p in paths]
    for path in paths:  # fail before reading the first file, not after
        if not path.is_file():
            raise InputError(f"{path}: FASTA file not found")
    for path in paths:
        for contig in read_fasta(path):
            yield contig.seq


def shard_sequences(shard_dir) -> Iterator[bytes]:
    """The bases of every window in the train split of the shard set in shard_dir, in manifest order.
    Each shard is read with its manifest entry: a missing, damaged or edited one is an InputError
    naming it (`CorruptShard`), never read."""
    from megadna.data.shards import iter_shard, read_manifest, shard_entries

    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)  # refuses a directory without a complete shard set
    for rel, entry in shard_entries(manifest, "train").items():
        for seq, _ in iter_shard(shard_dir / rel, expect=entry):
            yield seq
