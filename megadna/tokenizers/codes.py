"""Bases as small integer codes, the common currency of the k-mer and single-base tokenizers.

A=0, C=1, G=2, T=3, and every other byte (N, IUPAC codes such as K/S/Y, gaps, stray newlines) is 4,
written N. Lower case (soft-masked repeats) counts as upper case. The mapping is one 256-entry lookup
table, applied by `bytes.translate` (C, ~0.2 ns/base; numpy's fancy indexing is ~10x slower) and
viewed with `np.frombuffer`: never a Python loop per base.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from megadna.errors import InputError

Seq = Union[str, bytes, bytearray, memoryview]

BASES = "ACGTN"  # code -> letter; BASES[N_CODE] == "N"
N_CODE = 4

_CODE_OF_BYTE = np.full(256, N_CODE, dtype=np.uint8)
for _code, _letter in enumerate(b"ACGT"):
    _CODE_OF_BYTE[_letter] = _code
    _CODE_OF_BYTE[_letter + 32] = _code  # lower case
_CODE_TABLE = _CODE_OF_BYTE.tobytes()  # the same table for bytes.translate
_LETTER_OF_CODE = np.frombuffer(BASES.encode(), dtype=np.uint8)


def as_bytes(seq: Seq, where: str = "sequence") -> bytes:
    """One byte per base. Non-ASCII characters in a str become '?' (then N), so lengths never change."""
    if isinstance(seq, str):
        return seq.encode("ascii", "replace")
    if isinstance(seq, (bytes, bytearray, memoryview)):
        return bytes(seq)
    raise InputError(f"{where}: expected a DNA sequence as str or bytes, got {type(seq).__name__}")


def base_codes(seq: Seq) -> np.ndarray:
    """uint8 codes [n_bp] of one sequence (read-only)."""
    return np.frombuffer(as_bytes(seq).translate(_CODE_TABLE), dtype=np.uint8)


def batch_base_codes(seqs: Sequence[Seq]) -> np.ndarray | None:
    """uint8 codes [B, n_bp] (read-only) when every sequence has the same length (one join, one translate);
    else None."""
    if len(seqs) == 0 or len({len(s) for s in seqs}) != 1:
        return None
    try:
        joined = "".join(seqs).encode("ascii", "replace")  # the common case: a batch of str windows
    except TypeError:
        joined = b"".join(as_bytes(s, where=f"sequence {i}") for i, s in enumerate(seqs))
    return np.frombuffer(joined.translate(_CODE_TABLE), dtype=np.uint8).reshape(len(seqs), -1)


def letter_bytes(codes: np.ndarray) -> np.ndarray:
    """uint8 ASCII letters 'ACGTN' for codes 0..4, same shape."""
    return _LETTER_OF_CODE[codes]


def codes_to_str(codes: np.ndarray) -> str:
    """Letters 'ACGTN' for codes 0..4."""
    return _LETTER_OF_CODE[codes].tobytes().decode("ascii")


def normalize(seq: Seq) -> str:
    """Upper-case ACGTN text: what every tokenizer actually sees (IUPAC codes and other bytes become N)."""
    return codes_to_str(base_codes(seq))
