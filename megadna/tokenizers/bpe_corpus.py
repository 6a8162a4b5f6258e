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
    """The bases of every window in the train split of the shard set in shard_dir, in manifest order,
    each shard checked against the manifest (`iter_split`)."""
    from megadna.data.shards import iter_split

    return iter_split(shard_dir, "train")
