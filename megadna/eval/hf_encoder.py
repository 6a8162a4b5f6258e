"""Other people's models through the GUE harness: any local Hugging Face encoder directory that plain
transformers loads (AutoModel + AutoTokenizer, no remote code), judged on the same rows, seeds,
recipes, heads and probe as megadna's own models.

    megadna gue --gue_dir GUE --model ~/models/nucleotide-transformer-v2-50m --output_dir runs/gue_nt

- Tokens: the model's own tokenizer and special tokens ([CLS]/<cls>, [SEP]/<eos>, its pad id). A
  vocabulary of k-mers (DNABERT's vocab.txt: its specials, then all 4^k k-mers) is fed overlapping
  k-mers separated by spaces, as DNABERT was trained; every other tokenizer gets the raw upper-case
  sequence (BPE, the Nucleotide Transformer's 6-mer splitter).
- Encoder: `AutoModel.from_pretrained(dir)`; its hidden states (embeddings, then each layer) feed
  the same heads (megadna.model.heads) as a megadna encoder. The random control (`--init random`, or
  `--init_random_control` with `--models`) draws the same architecture from its config (`AutoModel.from_config`).
- A directory whose config names custom code (`auto_map`, e.g. DNABERT-2's flash-attention BERT) or
  a model type this transformers does not know is refused with one line: megadna never runs code
  shipped inside a model directory (trust_remote_code).
- Fine-tuned heads on such encoders are not saved (--save_models needs megadna's BERT); the run says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from megadna.errors import InputError
from megadna.jsonfile import read_json
from megadna.tokenizers.base import DNATokenizer, check_max_tokens
from megadna.tokenizers.codes import Seq, normalize


@dataclass(frozen=True)
class EncoderShape:
    """What the harness reads of a foreign encoder's config (the fields ModelConfig has for megadna's)."""

    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    hidden_dropout: float
    initializer_range: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def is_hf_model_dir(path) -> bool:
    """A Hugging Face model directory megadna did not write (its own checkpoints, runs and exports hold
    a config.json too)."""
    from megadna.model.pretrained import is_megadna_dir

    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and not is_megadna_dir(p)


def kmer_k(vocab: dict[str, int]) -> int | None:
    """k when the vocabulary is specials + every k-mer of ACGT (DNABERT's layout), else None."""
    words = [w for w in vocab if set(w) <= set("ACGT") and w]
    ks = {len(w) for w in words}
    if len(ks) == 1:
        k = ks.pop()
        if 2 <= k <= 8 and len(words) == 4**k:
            return k
    return None


class HFTokenizer(DNATokenizer):
    """A Hugging Face tokenizer behind megadna's tokenizer interface (ids and specials are the model's)."""

    overlapping = False

    def __init__(self, path: Path, hf_tok):
        self.path, self.hf = path, hf_tok
        vocab = hf_tok.get_vocab()
        self.vocab = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        self.name = f"hf:{path.name}"
        self.k = kmer_k(vocab)
        self.overlapping = self.k is not None
        self.pad_id = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else 0

    def text(self, seq: Seq) -> str:
        s = normalize(seq)
        if self.k is None:
            return s
        return " ".join(s[i : i + self.k] for i in range(len(s) - self.k + 1))

    def encode(self, seq: Seq) -> np.ndarray:
        return np.asarray(self.hf(self.text(seq), add_special_tokens=False)["input_ids"], dtype=np.int32)

    def encode_batch(self, seqs: Sequence[Seq], max_tokens: int) -> dict[str, np.ndarray]:
        """The model's own special tokens around each sequence's first tokens, padded with its pad id."""
        check_max_tokens(max_tokens)
        rows = self.hf([self.text(s) for s in seqs], truncation=True, max_length=max_tokens)["input_ids"] if len(seqs) else []
        ids = np.full((len(rows), max_tokens), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), max_tokens), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True).replace(" ", "")

    def num_tokens(self, n_bp: int) -> int | None:
        return n_bp - self.k + 1 if self.overlapping else None

    def to_dict(self) -> dict:
        return {"kind": "huggingface", "path": str(self.path.resolve()), "class": type(self.hf).__name__, "kmer_k": self.k}

    def to_hf_text(self, seq: Seq) -> str:
        return self.text(seq)

    def _write_hf_files(self, directory: Path) -> None:
        self.hf.save_pretrained(str(directory))


class HFEncoder(nn.Module):
    """AutoModel behind the interface of megadna's `Bert`: forward -> last hidden state, hidden_states
    -> [embeddings, layer 1, ...]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        n = model.config.num_hidden_layers
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(nn.Identity() for _ in range(n))  # counted by the probe's layer check
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = model.get_input_embeddings()

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, upto: int | None = None) -> list[torch.Tensor]:
        states = list(self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states)
        return states if upto is None else states[: upto + 1]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def load_hf_encoder(path) -> tuple[HFEncoder, HFTokenizer, EncoderShape, dict]:
    """(encoder in eval mode, tokenizer, shape, info) of a local Hugging Face model directory."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    d = Path(path)
    raw = read_json(d / "config.json", "model config")
    if not isinstance(raw, dict):
        raise InputError(f"{d / 'config.json'}: expected a JSON object")
    if raw.get("auto_map"):
        raise InputError(f"{d}: config.json names custom code ({', '.join(raw['auto_map'])}: {sorted(set(raw['auto_map'].values()))[0]}); "
                         "megadna never runs code shipped in a model directory (trust_remote_code), so this model cannot be "
                         "evaluated here as is")
    try:
        config = AutoConfig.from_pretrained(str(d))
        model = AutoModel.from_pretrained(str(d), config=config).float().eval()
        hf_tok = AutoTokenizer.from_pretrained(str(d))
    except (ValueError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{d}: transformers cannot load this directory (with its own classes, no remote code): {first}") from None
    shape = EncoderShape(vocab_size=int(getattr(config, "vocab_size", None) or len(hf_tok.get_vocab())), hidden_size=config.hidden_size,
                         max_position_embeddings=_positions(config, hf_tok),
                         hidden_dropout=float(getattr(config, "hidden_dropout_prob", 0.1) or 0.0),
                         initializer_range=float(getattr(config, "initializer_range", 0.02)))
    tokenizer = HFTokenizer(d, hf_tok)
    info = {"kind": "huggingface", "path": str(d), "global_step": None, "model": {"model_type": config.model_type, **shape.to_dict(),
            "num_layers": config.num_hidden_layers}, "tokenizer": tokenizer.to_dict()}
    return HFEncoder(model), tokenizer, shape, info


def random_like(encoder: HFEncoder) -> HFEncoder:
    """The same architecture from its config, new random weights (the seed is set by the caller)."""
    from transformers import AutoModel

    return HFEncoder(AutoModel.from_config(copy.deepcopy(encoder.model.config)).float())


def _positions(config, hf_tok) -> int:
    """Longest input in tokens: the model's positions (less the offset some models reserve), or the
    tokenizer's limit; alibi/rotary models without positions fall back to the tokenizer's."""
    limits = [getattr(config, "max_position_embeddings", None), hf_tok.model_max_length]
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limits[0] = (limits[0] or 0) - (config.pad_token_id or 0) - 1 or None  # RoBERTa positions start after pad_token_id
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
    if not usable:
        raise InputError(f"{getattr(hf_tok, 'name_or_path', '?')}: the model states no maximum input length "
                         "(max_position_embeddings or the tokenizer's model_max_length)")
    return min(usable)


__all__ = ["EncoderShape", "HFEncoder", "HFTokenizer", "is_hf_model_dir", "kmer_k", "load_hf_encoder", "random_like"]
