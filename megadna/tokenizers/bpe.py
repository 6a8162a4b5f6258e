"""Byte-pair encoding over bases (DNABERT-2 style), trained and run by sentencepiece.

The sentencepiece model is set up so that its ids are ours: [PAD]=0, [UNK]=1, [CLS]=2 (bos),
[SEP]=3 (eos), [MASK]=4 (user-defined), then N=5 as a user-defined piece, so an N is always one
token of its own and never merged into a piece. Normalization is "identity" and there is no dummy
prefix or whitespace handling (they would rewrite DNA); our encoder upper-cases and turns every
non-ACGT byte into N first (codes.normalize), so [UNK] does not occur in practice.

Training input is cut at every non-ACGT run (N runs, IUPAC codes) and into chunks of chunk_bp
bases: sentencepiece has a maximum sentence length, and a merge learnt across an assembly gap
would be a k-mer that does not exist in the genome.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from megadna.errors import InputError
from megadna.tokenizers.base import (
    CLS_ID,
    CONFIG_FILE,
    MASK_ID,
    N_SPECIAL,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    DNATokenizer,
    as_id_array,
    check_max_tokens,
    pack_rows,
)
from megadna.tokenizers.codes import Seq, as_bytes, normalize
from megadna.tokenizers.hf_files import write_fast_tokenizer_files

MODEL_FILE = "bpe.model"  # the sentencepiece model inside a saved tokenizer directory
N_PIECE = "N"
N_ID = N_SPECIAL  # N is the first piece after the specials
_ACGT_RUN = re.compile(rb"[ACGT]+")
_UPPER = bytes.maketrans(b"acgtn", b"ACGTN")


class BPETokenizer(DNATokenizer):
    """BPE pieces of 1..max_piece_bp bases. Token counts depend on content: num_tokens is None."""

    k = None
    overlapping = False

    def __init__(self, model_proto: bytes, source: str = "sentencepiece model", training: dict | None = None):
        import sentencepiece as spm

        self._model_proto = model_proto
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except RuntimeError as err:
            raise InputError(f"{source}: not a readable sentencepiece model ({err})") from None
        self.vocab = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        expected = list(SPECIAL_TOKENS) + [N_PIECE]
        if self.vocab[: len(expected)] != expected:
            raise InputError(
                f"{source}: ids 0..{len(expected) - 1} are {self.vocab[:len(expected)]}, expected {expected}; "
                "train it with megadna's train_bpe so the special ids match the other tokenizers"
            )
        self.name = f"bpe{self.vocab_size}"
        self.training = training or {}

    @classmethod
    def load(cls, directory, config: dict | None = None) -> "BPETokenizer":
        directory = Path(directory)
        config = config or {}
        path = directory / config.get("model_file", MODEL_FILE)
        if not path.is_file():
            raise InputError(f"{directory}: BPE model file {path.name} is missing; re-save or re-train the tokenizer")
        return cls(path.read_bytes(), source=str(path), training=config.get("training"))

    def encode(self, seq: Seq) -> np.ndarray:
        return np.asarray(self._sp.encode(normalize(seq)), dtype=np.int32)

    def encode_batch(self, seqs: Sequence[Seq], max_tokens: int) -> dict[str, np.ndarray]:
        check_max_tokens(max_tokens)
        # sentencepiece's batch encode, in C++; one thread: data-loader workers are the parallelism
        rows = self._sp.encode([normalize(s) for s in seqs], num_threads=1)
        return pack_rows(rows, max_tokens)

    def decode(self, ids) -> str:
        ids = as_id_array(ids, self.name, self.vocab_size)
        # sentencepiece would print [MASK] as text and [UNK] as its surface; we skip specials.
        return self._sp.decode(ids[ids >= N_SPECIAL].tolist())

    def num_tokens(self, n_bp: int) -> None:
        return None

    def to_hf_text(self, seq: Seq) -> str:
        """The upper-case ACGTN sequence itself: the HF BPE model needs no pre-splitting."""
        return normalize(seq)

    def to_dict(self) -> dict:
        return {"type": "bpe", "model_file": MODEL_FILE, "training": self.training}

    def _write_hf_files(self, directory: Path) -> None:
        (directory / MODEL_FILE).write_bytes(self._model_proto)
        write_fast_tokenizer_files(directory, self._hf_tokenizer_json())

    def _hf_tokenizer_json(self) -> str:
        """The same BPE as a `tokenizers` model: merges ranked by the score (id) of the merged piece.

        sentencepiece merges, at each step, the adjacent pair whose concatenation is the best-scoring
        piece, whatever split produced it; listing every split of every piece, ranked by the merged
        piece's id, is how transformers' own sentencepiece converter reproduces that.
        """
        from tokenizers import Tokenizer, decoders, models, processors

        index = {piece: i for i, piece in enumerate(self.vocab)}
        merges = []
        for piece, piece_id in index.items():
            if piece_id <= N_ID:
                continue
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if index.get(left, 0) >= N_SPECIAL and index.get(right, 0) >= N_SPECIAL:
                    merges.append((piece_id, index[left], index[right], left, right))
        merges.sort()
        tokenizer = Tokenizer(
            models.BPE(vocab=index, merges=[(m[3], m[4]) for m in merges], unk_token=SPECIAL_TOKENS[UNK_ID], fuse_unk=True)
        )
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
        cls_token, sep_token = SPECIAL_TOKENS[CLS_ID], SPECIAL_TOKENS[SEP_ID]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls_token} $A {sep_token}",
            pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
            special_tokens=[(cls_token, index[cls_token]), (sep_token, index[sep_token])],
        )
        tokenizer.decoder = decoders.Fuse()  # pieces concatenate back to bases, no spaces
        return tokenizer.to_str(pretty=True)


def training_chunks(sequences: Iterable[Seq], chunk_bp: int = 1000, max_bp: int | None = None) -> Iterator[str]:
    """ACGT-only chunks of at most chunk_bp bases: sequences cut at every non-ACGT run, then every chunk_bp.

    Lower case counts as upper case. Stops after max_bp bases in all (None: no limit).
    """
    if chunk_bp < 1:
        raise InputError(f"train_bpe: chunk_bp must be >= 1, got {chunk_bp}")
    left = max_bp
    for seq in sequences:
        for run in _ACGT_RUN.finditer(as_bytes(seq).translate(_UPPER)):
            for start in range(run.start(), run.end(), chunk_bp):
                end = min(start + chunk_bp, run.end())
                if left is not None:
                    if left <= 0:
                        return
                    end = min(end, start + left)
                    left -= end - start
                yield run.string[start:end].decode("ascii")


def train_bpe(
    sequences: Iterable[Seq],
    vocab_size: int,
    out_dir,
    *,
    chunk_bp: int = 1000,
    max_bp: int | None = None,
    max_piece_bp: int = 16,
    num_threads: int = 1,
    overwrite: bool = False,
) -> BPETokenizer:
    """Train a BPE of vocab_size tokens (specials and N included) on sequences and save it to out_dir.

    Uses at most max_bp bases (None: all; sentencepiece holds them all in memory), in ACGT-only
    chunks of chunk_bp bases (see training_chunks). Pieces are at most max_piece_bp bases long.
    Refuses an out_dir that already holds a tokenizer unless overwrite.
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    if (out_dir / CONFIG_FILE).exists() and not overwrite:
        raise InputError(
            f"{out_dir}: already holds a tokenizer ({CONFIG_FILE}); choose another directory or pass overwrite=True (--overwrite)"
        )
    if not isinstance(vocab_size, int) or vocab_size < 16:
        raise InputError(f"train_bpe: vocab_size must be an int >= 16, got {vocab_size!r}")
    chunks = list(training_chunks(sequences, chunk_bp, max_bp))
    n_bp = sum(len(c) for c in chunks)
    if not chunks:
        raise InputError("train_bpe: no A/C/G/T bases in the input; check the FASTA files or shards")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(chunks),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            # ids and pieces as in base.SPECIAL_TOKENS: bos is [CLS], eos is [SEP]
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=CLS_ID,
            eos_id=SEP_ID,
            pad_piece=SPECIAL_TOKENS[PAD_ID],
            unk_piece=SPECIAL_TOKENS[UNK_ID],
            bos_piece=SPECIAL_TOKENS[CLS_ID],
            eos_piece=SPECIAL_TOKENS[SEP_ID],
            user_defined_symbols=[SPECIAL_TOKENS[MASK_ID], N_PIECE],  # ids 4 and 5, in this order
            unk_surface=N_PIECE,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            max_sentence_length=max(chunk_bp, 4192),
            max_sentencepiece_length=max_piece_bp,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as err:
        raise InputError(
            f"train_bpe: sentencepiece could not train a {vocab_size}-token BPE on {n_bp} bp "
            f"in {len(chunks)} chunks ({err}); give it more sequence or a smaller vocab_size"
        ) from None
    training = {"n_bp": n_bp, "n_chunks": len(chunks), "chunk_bp": chunk_bp, "max_piece_bp": max_piece_bp}
    tokenizer = BPETokenizer(model.getvalue(), training=training)
    tokenizer.save(out_dir)
    return tokenizer

