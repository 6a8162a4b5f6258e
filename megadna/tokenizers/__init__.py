"""DNA tokenizers behind one interface (base.DNATokenizer): k-mer, non-overlapping k-mer, single base, BPE.

    tok = get_tokenizer("kmer6")                     # or "nkmer6", "base", or a saved BPE directory
    batch = tok.encode_batch(windows, max_tokens=512)  # int64 input_ids / attention_mask [B, 512]
    tok.save("out/tokenizer")                          # also loadable by transformers.AutoTokenizer
"""

from megadna.tokenizers.base import (
    CLS_ID,
    IGNORE_INDEX,
    MASK_ID,
    N_SPECIAL,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    DNATokenizer,
)
from megadna.tokenizers.bpe import BPETokenizer, train_bpe, training_chunks
from megadna.tokenizers.kmer import NonOverlappingKmerTokenizer, OverlappingKmerTokenizer, SingleBaseTokenizer
from megadna.tokenizers.registry import VALID_SPECS, get_tokenizer, load_tokenizer

__all__ = [
    "CLS_ID",
    "IGNORE_INDEX",
    "MASK_ID",
    "N_SPECIAL",
    "PAD_ID",
    "SEP_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "BPETokenizer",
    "DNATokenizer",
    "NonOverlappingKmerTokenizer",
    "OverlappingKmerTokenizer",
    "SingleBaseTokenizer",
    "VALID_SPECS",
    "get_tokenizer",
    "load_tokenizer",
    "train_bpe",
    "training_chunks",
]
