"""Files that let Hugging Face's AutoTokenizer.from_pretrained(directory) reproduce our ids offline.

k-mer and single-base vocabularies are written as a BERT WordPiece vocabulary (vocab.txt): the HF
tokenizer splits on whitespace, so it reads the DNABERT convention of space-separated tokens
(`DNATokenizer.to_hf_text`). A token missing from the vocabulary (a k-mer with N) has no '##'
continuation to fall back on, so WordPiece maps the whole word to [UNK], as our encoder does.
BPE is written as a `tokenizers` BPE model in tokenizer.json (see bpe.py), loaded by
PreTrainedTokenizerFast. No custom code, so no trust_remote_code.
"""

from __future__ import annotations

from pathlib import Path

from megadna.jsonfile import write_json
from megadna.tokenizers.base import SPECIAL_TOKENS

SPECIAL_TOKENS_MAP = {
    "pad_token": SPECIAL_TOKENS[0],
    "unk_token": SPECIAL_TOKENS[1],
    "cls_token": SPECIAL_TOKENS[2],
    "sep_token": SPECIAL_TOKENS[3],
    "mask_token": SPECIAL_TOKENS[4],
}


def _write_json(path: Path, obj: dict) -> None:
    write_json(path, obj, indent=2)


def write_bert_vocab_files(directory: Path, vocab: list[str], model_max_length: int | None = None) -> None:
    """vocab.txt + tokenizer_config.json (BertTokenizer, case kept) + special_tokens_map.json."""
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": False,  # lower-case 'acgt' are not in the vocabulary
        "do_basic_tokenize": True,
        "tokenize_chinese_chars": False,
        "strip_accents": False,
        "clean_up_tokenization_spaces": False,
        **SPECIAL_TOKENS_MAP,
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(directory / "special_tokens_map.json", SPECIAL_TOKENS_MAP)


def write_fast_tokenizer_files(directory: Path, tokenizer_json: str) -> None:
    """tokenizer.json (a serialized `tokenizers.Tokenizer`) + configs naming PreTrainedTokenizerFast."""
    (directory / "tokenizer.json").write_text(tokenizer_json)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        **SPECIAL_TOKENS_MAP,
    }
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(directory / "special_tokens_map.json", SPECIAL_TOKENS_MAP)
