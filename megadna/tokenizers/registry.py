"""From a name on the command line or in a config to a tokenizer: get_tokenizer and load_tokenizer."""

from __future__ import annotations

import re
from pathlib import Path

from megadna.errors import InputError, where
from megadna.jsonfile import read_json
from megadna.tokenizers.base import CONFIG_FILE, DNATokenizer
from megadna.tokenizers.bpe import BPETokenizer
from megadna.tokenizers.kmer import (
    MAX_K,
    NonOverlappingKmerTokenizer,
    OverlappingKmerTokenizer,
    SingleBaseTokenizer,
)

VALID_SPECS = (
    f"'kmer<k>' (overlapping k-mers, DNABERT), 'nkmer<k>' (non-overlapping k-mers, Nucleotide Transformer) "
    f"with k from 1 to {MAX_K}, 'base' (single bases), or a directory written by DNATokenizer.save() "
    "(e.g. a BPE trained by tools/train_bpe.py)"
)
_KMER_SPEC = re.compile(r"(n?kmer)(\d+)")


def get_tokenizer(spec) -> DNATokenizer:
    """'kmer6', 'nkmer6', 'base', or a saved tokenizer directory."""
    text = str(spec).strip()
    if text == "base":
        return SingleBaseTokenizer()
    match = _KMER_SPEC.fullmatch(text)
    if match:
        k = int(match.group(2))
        if not 1 <= k <= MAX_K:
            raise InputError(f"tokenizer {text!r}: k={k} is outside 1..{MAX_K}; valid forms: {VALID_SPECS}")
        kind = OverlappingKmerTokenizer if match.group(1) == "kmer" else NonOverlappingKmerTokenizer
        return kind(k)
    if text and Path(text).is_dir():
        return load_tokenizer(text)
    hint = ""
    if re.fullmatch(r"bpe\d*", text):
        hint = "; a BPE is named by its directory: train one with tools/train_bpe.py --out DIR and pass DIR"
    raise InputError(f"unknown tokenizer {text!r}{hint}; valid forms: {VALID_SPECS}")


def load_tokenizer(directory) -> DNATokenizer:
    """The tokenizer saved in directory by DNATokenizer.save()."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{directory}: no {CONFIG_FILE}; not a directory written by DNATokenizer.save()")
    config = read_json(path, "tokenizer config")
    kind = config.get("type") if isinstance(config, dict) else None
    if kind == "kmer":
        cls = OverlappingKmerTokenizer if config.get("overlapping") else NonOverlappingKmerTokenizer
        try:
            tokenizer = cls(config.get("k"))
        except InputError as err:
            raise InputError(f"{where(path)}: {err}") from None
    elif kind == "base":
        tokenizer = SingleBaseTokenizer()
    elif kind == "bpe":
        tokenizer = BPETokenizer.load(directory, config)
    else:
        raise InputError(f"{where(path)}: unknown tokenizer type {kind!r}; expected 'kmer', 'base' or 'bpe'")
    if config.get("vocab_size", tokenizer.vocab_size) != tokenizer.vocab_size:
        raise InputError(
            f"{where(path)}: says vocab_size {config['vocab_size']} but the tokenizer it describes has "
            f"{tokenizer.vocab_size}; the directory was edited or mixed up"
        )
    return tokenizer
