"""The one interface every DNA tokenizer implements, and the special tokens they all share.

Ids 0..4 are the specials in every vocabulary (k-mer, single base, BPE), so masking can treat
`id < N_SPECIAL` as "never a masking target" whatever the tokenizer. `encode` gives bare token ids;
`encode_batch` gives the model's input: [CLS] tokens [SEP] then [PAD], as fixed-width int64 arrays.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np

from megadna.errors import InputError
from megadna.jsonfile import write_json
from megadna.tokenizers.codes import Seq

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
N_SPECIAL = 5  # every id < N_SPECIAL is special; masking relies on this
IGNORE_INDEX = -100  # the label of a position that is not predicted (PyTorch's cross_entropy default); never a token id

CONFIG_FILE = "megadna_tokenizer.json"  # what load_tokenizer reads; the other files are for Hugging Face


class DNATokenizer(ABC):
    """A DNA tokenizer. Lengths in `*_bp` are bases; everything else counts tokens."""

    name: str  # "kmer6", "nkmer6", "base", "bpe4096"
    vocab: list[str]  # index == id; SPECIAL_TOKENS first
    k: int | None  # k-mer length (1 for single base); None for BPE
    overlapping: bool  # True only for the overlapping k-mer tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @abstractmethod
    def encode(self, seq: Seq) -> np.ndarray:
        """int32 token ids of one sequence, without [CLS]/[SEP]."""

    @abstractmethod
    def decode(self, ids) -> str:
        """Bases (upper-case ACGTN) back from token ids; [PAD]/[CLS]/[SEP] are skipped."""

    @abstractmethod
    def num_tokens(self, n_bp: int) -> int | None:
        """Tokens (no specials) for an N-free sequence of n_bp bases; None where it depends on content."""

    @abstractmethod
    def to_dict(self) -> dict:
        """JSON-able config from which load_tokenizer rebuilds this tokenizer."""

    @abstractmethod
    def to_hf_text(self, seq: Seq) -> str:
        """The text that the Hugging Face tokenizer written by save() turns into the same ids as encode()."""

    @abstractmethod
    def _write_hf_files(self, directory: Path) -> None:
        """Write the files AutoTokenizer.from_pretrained(directory) needs."""

    def encode_batch(self, seqs: Sequence[Seq], max_tokens: int) -> dict[str, np.ndarray]:
        """{"input_ids", "attention_mask"}: int64 [B, max_tokens], rows "[CLS] tokens [SEP] [PAD]...".

        A sequence with more than max_tokens - 2 tokens is truncated to its first max_tokens - 2
        tokens (the left end of the window survives); windows are cut to fit upstream, so this is
        the exception, not the rule.
        """
        check_max_tokens(max_tokens)
        return pack_rows([self.encode(s) for s in seqs], max_tokens)

    def save(self, directory) -> None:
        """Write CONFIG_FILE plus Hugging Face tokenizer files into directory (created if missing)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._write_hf_files(directory)
        config = {"name": self.name, "vocab_size": self.vocab_size, **self.to_dict()}
        write_json(directory / CONFIG_FILE, config, indent=2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


def check_max_tokens(max_tokens: int) -> None:
    if not isinstance(max_tokens, (int, np.integer)) or max_tokens < 2:
        raise InputError(f"encode_batch: max_tokens must be an int >= 2 (room for [CLS] and [SEP]), got {max_tokens!r}")


def as_id_array(ids, tokenizer_name: str, vocab_size: int) -> np.ndarray:
    """ids (list, numpy, CPU tensor) as a 1-D int64 array, checked against the vocabulary."""
    arr = np.asarray(ids, dtype=np.int64)
    if arr.ndim != 1:
        raise InputError(f"{tokenizer_name}.decode: expected a 1-D sequence of ids, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        bad = arr[(arr < 0) | (arr >= vocab_size)][0]
        raise InputError(f"{tokenizer_name}.decode: id {bad} is outside the vocabulary 0..{vocab_size - 1}")
    return arr


def pack_rows(rows: Sequence[np.ndarray], max_tokens: int) -> dict[str, np.ndarray]:
    """Variable-length token rows -> [CLS] row [SEP] [PAD]... of width max_tokens (truncating rows)."""
    batch = len(rows)
    room = max_tokens - 2
    lengths = np.fromiter((min(len(r), room) for r in rows), dtype=np.int64, count=batch)
    input_ids = np.full((batch, max_tokens), PAD_ID, dtype=np.int64)
    input_ids[:, 0] = CLS_ID
    if batch:
        body = input_ids[:, 1 : 1 + room]
        body[np.arange(room) < lengths[:, None]] = np.concatenate(
            [np.asarray(r[:room], dtype=np.int64) for r in rows]
        )
    input_ids[np.arange(batch), lengths + 1] = SEP_ID
    attention_mask = (np.arange(max_tokens) < lengths[:, None] + 2).astype(np.int64)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def fixed_length_batch(batch: int, n_tokens: int, max_tokens: int) -> dict[str, np.ndarray]:
    """Rows "[CLS] <n_tokens slots> [SEP] [PAD]..." for a batch whose rows all have n_tokens <= max_tokens - 2
    tokens; the caller fills the slots, input_ids[:, 1 : n_tokens + 1]."""
    input_ids = np.empty((batch, max_tokens), dtype=np.int64)
    input_ids[:, 0] = CLS_ID
    input_ids[:, n_tokens + 1] = SEP_ID
    input_ids[:, n_tokens + 2 :] = PAD_ID
    attention_mask = np.zeros((batch, max_tokens), dtype=np.int64)
    attention_mask[:, : n_tokens + 2] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def pack_fixed(ids: np.ndarray, max_tokens: int) -> dict[str, np.ndarray]:
    """The fast path of pack_rows: ids [B, n] with n <= max_tokens - 2 tokens in every row."""
    batch, n_tokens = ids.shape
    out = fixed_length_batch(batch, n_tokens, max_tokens)
    out["input_ids"][:, 1 : n_tokens + 1] = ids
    return out
