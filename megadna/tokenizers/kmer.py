"""k-mer tokenizers: overlapping (DNABERT), non-overlapping (Nucleotide Transformer) and single base.

All three work on base codes (codes.py). A k-mer id is a base-5 number of its k codes (N is digit 4),
built with k shifted multiply-adds over the whole array, then mapped through a 5^k-entry table to the
token id: the 4^k N-free k-mers to N_SPECIAL + their lexicographic rank over ACGT, everything with an
N to [UNK]. One table gather settles both the id and the N check, for one sequence or a [B, n_bp]
batch alike; there is no Python loop per base or per k-mer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from megadna.errors import InputError
from megadna.tokenizers.base import (
    MASK_ID,
    N_SPECIAL,
    SPECIAL_TOKENS,
    UNK_ID,
    DNATokenizer,
    as_id_array,
    check_max_tokens,
    fixed_length_batch,
    pack_fixed,
)
from megadna.tokenizers.codes import N_CODE, Seq, base_codes, batch_base_codes, codes_to_str, letter_bytes
from megadna.tokenizers.hf_files import write_bert_vocab_files

MAX_K = 8  # 4^8 = 65,536 k-mers; beyond that the embedding table dwarfs a BERT-base encoder
_ROWS_PER_BLOCK = 64  # 64 windows of 510 bp: ~130 kB of int32 per intermediate array


def check_k(k, where: str) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InputError(f"{where}: k must be an integer from 1 to {MAX_K}, got {k!r}")
    return int(k)


def kmer_strings(k: int) -> list[str]:
    """All 4^k k-mers over ACGT in lexicographic order (the rank is the k-mer's base-4 value)."""
    ranks = np.arange(4**k, dtype=np.int64)
    digits = (ranks[:, None] >> (2 * np.arange(k - 1, -1, -1))) & 3
    return letter_bytes(digits).view(f"S{k}").ravel().astype(str).tolist()


def kmer_base_index(k: int, vocab_size: int) -> np.ndarray:
    """int64 [vocab_size, k]: for the k-mer token with id N_SPECIAL + rank (both k-mer vocabularies put
    the 4^k k-mers there, in `kmer_strings` order), 4 * position + base code of each of its bases; -1
    on every other row (specials, single bases). The layout the model's k-mer basis embeds from."""
    index = np.full((vocab_size, k), -1, dtype=np.int64)
    ranks = np.arange(4**k, dtype=np.int64)
    digits = (ranks[:, None] >> (2 * np.arange(k - 1, -1, -1))) & 3
    index[N_SPECIAL : N_SPECIAL + 4**k] = 4 * np.arange(k) + digits
    return index


def kmer_vocabulary_k(tokenizer) -> int:
    """k when `tokenizer` is one of the two k-mer tokenizers (their vocabularies share the layout of
    `kmer_base_index`), else 0."""
    return tokenizer.k if isinstance(tokenizer, (OverlappingKmerTokenizer, NonOverlappingKmerTokenizer)) else 0


def _token_id_of_base5(k: int) -> np.ndarray:
    """int32 [5^k]: base-5 k-mer value -> token id; [UNK] where any digit is N (4)."""
    values = np.arange(5**k, dtype=np.int64)
    digits = (values[:, None] // 5 ** np.arange(k - 1, -1, -1)) % 5
    rank = (digits * 4 ** np.arange(k - 1, -1, -1)).sum(axis=1)
    return np.where((digits == N_CODE).any(axis=1), UNK_ID, N_SPECIAL + rank).astype(np.int32)


def _sliding_kmer_ids(codes: np.ndarray, k: int, table: np.ndarray) -> np.ndarray:
    """Ids of every k-mer along the last axis: [..., n] codes (n >= k) -> [..., n - k + 1] int32."""
    m = codes.shape[-1] - k + 1
    value = codes[..., 0:m].astype(np.int32)
    for offset in range(1, k):
        value *= 5
        value += codes[..., offset : offset + m]
    return np.take(table, value)


def _chunk_kmer_ids(chunks: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Ids of k-mer chunks: [..., m, k] codes -> [..., m] int32."""
    value = chunks[..., 0].astype(np.int32)
    for offset in range(1, chunks.shape[-1]):
        value *= 5
        value += chunks[..., offset]
    return np.take(table, value)


def _space_separated(letters: np.ndarray) -> str:
    """[n_tokens, width] ASCII letters -> 'tok tok tok' (one vectorized copy)."""
    n, width = letters.shape
    if n == 0:
        return ""
    out = np.full((n, width + 1), ord(" "), dtype=np.uint8)
    out[:, :width] = letters
    return out.tobytes()[:-1].decode("ascii")


class OverlappingKmerTokenizer(DNATokenizer):
    """DNABERT k-mers: one token per base position, k-mer i covers bases i..i+k-1.

    n_bp bases give n_bp - k + 1 tokens (none if n_bp < k). A k-mer with N (or any non-ACGT byte)
    is [UNK]. decode reassembles the bases from the first k-mer plus the last base of each next one;
    [UNK] and [MASK] keep their place there (so the others stay aligned) and a base that no known
    k-mer covers comes back as N.
    """

    overlapping = True

    def __init__(self, k: int):
        self.k = check_k(k, "OverlappingKmerTokenizer")
        self.name = f"kmer{self.k}"
        self.vocab = list(SPECIAL_TOKENS) + kmer_strings(self.k)
        self._table = _token_id_of_base5(self.k)

    def encode(self, seq: Seq) -> np.ndarray:
        codes = base_codes(seq)
        if codes.size < self.k:
            return np.zeros(0, dtype=np.int32)
        return _sliding_kmer_ids(codes, self.k, self._table)

    def encode_batch(self, seqs: Sequence[Seq], max_tokens: int) -> dict[str, np.ndarray]:
        check_max_tokens(max_tokens)
        codes = batch_base_codes(seqs)
        if codes is None or codes.shape[1] < self.k:
            return super().encode_batch(seqs, max_tokens)
        # Equal-length windows: 2-D passes; cut the bases first so truncation costs nothing.
        n_tokens = min(codes.shape[1] - self.k + 1, max_tokens - 2)
        codes = codes[:, : n_tokens + self.k - 1]
        out = fixed_length_batch(len(codes), n_tokens, max_tokens)
        slots = out["input_ids"][:, 1 : n_tokens + 1]
        # Blocks of rows keep the int32 intermediates in L2: 1.5x faster than the whole batch at once.
        for row in range(0, len(codes), _ROWS_PER_BLOCK):
            block = slice(row, row + _ROWS_PER_BLOCK)
            slots[block] = _sliding_kmer_ids(codes[block], self.k, self._table)
        return out

    def decode(self, ids) -> str:
        ids = as_id_array(ids, self.name, self.vocab_size)
        ids = ids[(ids >= N_SPECIAL) | (ids == UNK_ID) | (ids == MASK_ID)]  # drop [PAD]/[CLS]/[SEP]
        if ids.size == 0:
            return ""
        known = ids >= N_SPECIAL
        rank = ids[known] - N_SPECIAL
        start = np.flatnonzero(known)
        codes = np.full(ids.size + self.k - 1, N_CODE, dtype=np.uint8)
        for offset in range(self.k):
            codes[start + offset] = (rank >> (2 * (self.k - 1 - offset))) & 3
        return codes_to_str(codes)

    def num_tokens(self, n_bp: int) -> int:
        return max(0, n_bp - self.k + 1)

    def to_hf_text(self, seq: Seq) -> str:
        """'ACGTAC CGTACG GTACGT ...': every k-mer, space-separated (the DNABERT input format)."""
        codes = base_codes(seq)
        if codes.size < self.k:
            return ""
        return _space_separated(sliding_window_view(letter_bytes(codes), self.k))

    def to_dict(self) -> dict:
        return {"type": "kmer", "k": self.k, "overlapping": True}

    def _write_hf_files(self, directory: Path) -> None:
        write_bert_vocab_files(directory, self.vocab)


class NonOverlappingKmerTokenizer(DNATokenizer):
    """Nucleotide Transformer k-mers: left to right in steps of k.

    A k-base chunk with N, and the tail of fewer than k bases, fall back to single-base tokens
    (A, C, G, T, N), so decode gives back every base exactly. An N-free sequence of n_bp bases
    gives n_bp // k + n_bp % k tokens. Vocabulary: specials, the 4^k k-mers, then the single bases
    not already among them (all five for k > 1; only N for k = 1, which then equals 'base').
    """

    overlapping = False

    def __init__(self, k: int):
        self.k = check_k(k, "NonOverlappingKmerTokenizer")
        self.name = f"nkmer{self.k}"
        kmers = kmer_strings(self.k)
        self.vocab = list(SPECIAL_TOKENS) + kmers + [b for b in "ACGTN" if b not in kmers]
        index = {token: i for i, token in enumerate(self.vocab)}
        self._single_ids = np.array([index[b] for b in "ACGTN"], dtype=np.int32)  # by base code
        self._table = _token_id_of_base5(self.k)
        self._vocab_array = np.array(self.vocab, dtype=object)

    def encode(self, seq: Seq) -> np.ndarray:
        codes = base_codes(seq)
        k = self.k
        n_chunks = codes.size // k
        chunks = codes[: n_chunks * k].reshape(n_chunks, k)
        # One row of k slots per chunk: the k-mer in slot 0, or k single bases where it has an N;
        # -1 marks empty slots, dropped when the rows are flattened.
        slots = np.full((n_chunks, k), -1, dtype=np.int32)
        slots[:, 0] = _chunk_kmer_ids(chunks, self._table)
        has_n = slots[:, 0] == UNK_ID
        slots[has_n] = self._single_ids[chunks[has_n]]
        flat = slots.ravel()
        return np.concatenate([flat[flat >= 0], self._single_ids[codes[n_chunks * k :]]])

    def encode_batch(self, seqs: Sequence[Seq], max_tokens: int) -> dict[str, np.ndarray]:
        check_max_tokens(max_tokens)
        codes = batch_base_codes(seqs)
        if codes is None or (codes == N_CODE).any():  # N changes the token count per row
            return super().encode_batch(seqs, max_tokens)
        batch, n_bp = codes.shape
        n_chunks = n_bp // self.k
        kmers = _chunk_kmer_ids(codes[:, : n_chunks * self.k].reshape(batch, n_chunks, self.k), self._table)
        ids = np.concatenate([kmers, self._single_ids[codes[:, n_chunks * self.k :]]], axis=1)
        return pack_fixed(ids[:, : max_tokens - 2], max_tokens)

    def decode(self, ids) -> str:
        ids = as_id_array(ids, self.name, self.vocab_size)
        return "".join(self._vocab_array[ids[ids >= N_SPECIAL]])

    def num_tokens(self, n_bp: int) -> int:
        return n_bp // self.k + n_bp % self.k

    def to_hf_text(self, seq: Seq) -> str:
        """'ACGTAC GTACGT A C': the tokens encode() chose, space-separated."""
        return " ".join(self._vocab_array[self.encode(seq)])

    def to_dict(self) -> dict:
        return {"type": "kmer", "k": self.k, "overlapping": False}

    def _write_hf_files(self, directory: Path) -> None:
        write_bert_vocab_files(directory, self.vocab)


class SingleBaseTokenizer(DNATokenizer):
    """One token per base: A, C, G, T, N (any other byte is N). n_bp bases give n_bp tokens."""

    name = "base"
    k = 1
    overlapping = False

    def __init__(self):
        self.vocab = list(SPECIAL_TOKENS) + list("ACGTN")

    def encode(self, seq: Seq) -> np.ndarray:
        return base_codes(seq).astype(np.int32) + N_SPECIAL

    def encode_batch(self, seqs: Sequence[Seq], max_tokens: int) -> dict[str, np.ndarray]:
        check_max_tokens(max_tokens)
        codes = batch_base_codes(seqs)
        if codes is None:
            return super().encode_batch(seqs, max_tokens)
        return pack_fixed(codes[:, : max_tokens - 2].astype(np.int64) + N_SPECIAL, max_tokens)

    def decode(self, ids) -> str:
        ids = as_id_array(ids, self.name, self.vocab_size)
        return codes_to_str(ids[ids >= N_SPECIAL] - N_SPECIAL)

    def num_tokens(self, n_bp: int) -> int:
        return n_bp

    def to_hf_text(self, seq: Seq) -> str:
        """'A C G T N': every base, space-separated."""
        return _space_separated(letter_bytes(base_codes(seq))[:, None])

    def to_dict(self) -> dict:
        return {"type": "base", "k": 1, "overlapping": False}

    def _write_hf_files(self, directory: Path) -> None:
        write_bert_vocab_files(directory, self.vocab)
