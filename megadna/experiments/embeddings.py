"""How much of a k-mer embedding table is a function of the k-mer's bases, position by position.

A k-mer model's token table has 4^k rows. The part of a row that is linear in its bases (one
embedding per (position, base), summed) carries composition: summed over the overlapping tokens of
a sequence it is, up to the ends, base counts times fixed vectors. What tells one k-mer from
another beyond that (a motif's exact spelling) lives in the rest. `base_linear_share` is the
share of the rows' variance that the linear part explains (least squares on the one-hot bases):
about 3k / (4^k - 1) for a random table (0.44% at k = 6), 1 for a table built from a basis alone.
`--kmer_basis true` starts a table at the basis; docs/PAPER.md measures what pre-training leaves.
"""

from __future__ import annotations

import numpy as np

from megadna.errors import InputError
from megadna.tokenizers.kmer import N_SPECIAL, kmer_base_index


def random_table_share(k: int) -> float:
    """The expected share for a table of independent random rows: the 3k free directions of the
    one-hot design (4 bases x k positions, less one per position for the shared mean) of 4^k - 1."""
    return 3 * k / (4**k - 1)


def kmer_rows(table: np.ndarray, k: int) -> np.ndarray:
    """The 4^k k-mer rows of a token table [vocab, hidden], in k-mer rank order (`kmer_base_index`:
    ids N_SPECIAL .. N_SPECIAL + 4^k - 1)."""
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < N_SPECIAL + 4**k:
        raise InputError(f"an embedding table of shape {table.shape} does not hold the {N_SPECIAL} special and "
                         f"{4**k} k-mer rows of a {k}-mer vocabulary")
    return table[(kmer_base_index(k, table.shape[0]) >= 0).all(axis=1)]


def base_linear_share(table: np.ndarray, k: int) -> float:
    """Share (0-1) of the variance of `table`'s 4^k k-mer rows explained by a linear function of the
    k-mers' one-hot bases (least squares, rows centred)."""
    y = kmer_rows(table, k)
    index = kmer_base_index(k, N_SPECIAL + 4**k)[N_SPECIAL:]  # [4^k, k]: 4 * position + base, in rank order
    design = np.zeros((4**k, 4 * k))
    design[np.arange(4**k)[:, None], index] = 1.0
    y = y - y.mean(axis=0)
    x = design - design.mean(axis=0)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    total = float((y**2).sum())
    return 1.0 - float(((y - x @ coef) ** 2).sum()) / total if total > 0 else 0.0
