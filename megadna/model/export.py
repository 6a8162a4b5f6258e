"""Checkpoint -> a Hugging Face directory that plain `transformers` loads (no trust_remote_code).

    export_hf("runs/hg38-kmer6", "exports/hg38-kmer6")

The directory holds config.json (model_type bert, architectures [BertForMaskedLM]), model.safetensors
(fp32), the tokenizer files AutoTokenizer reads (vocab.txt or tokenizer.json), megadna's own
`megadna_tokenizer.json` (so `load_pretrained` rebuilds the exact tokenizer), `megadna_export.json`
(provenance and the verification figure) and a README.md model card.

Nothing half-written is ever left under the destination name: everything goes to a hidden temporary
sibling directory, is reloaded with transformers and checked (tokenizer ids equal ours, logits within
`atol` of megadna's model on a random batch), and only then renamed into place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from megadna.errors import InputError
from megadna.jsonfile import read_json, staged_dir, write_json, write_text
from megadna.model import BertForMLM
from megadna.model.pretrained import load_pretrained
from megadna.tokenizers import DNATokenizer

EXPORT_META = "megadna_export.json"
EXPORT_FORMAT = "megadna-export/1"


class ExportVerificationError(RuntimeError):
    """The written directory does not reproduce the model or its tokenizer in transformers."""


def export_hf(src, out_dir, overwrite: bool = False, atol: float = 1e-4, seed: int = 0) -> dict:
    """Export the model at `src` (anything `load_pretrained` accepts) to `out_dir`. Returns the export meta."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputError(f"{out_dir}: already exists; pass --overwrite to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a directory")
    model, tokenizer, info = load_pretrained(src)
    meta = {"format": EXPORT_FORMAT, "source": str(Path(src).resolve()), "source_kind": info["kind"],
            "checkpoint": info["path"], "global_step": info["global_step"], "model": info["model"],
            "tokenizer": info["tokenizer"]}
    return write_hf_dir(model, tokenizer, out_dir, meta=meta, overwrite=overwrite, atol=atol, seed=seed)


def write_hf_dir(model: BertForMLM, tokenizer: DNATokenizer, out_dir, meta: dict | None = None,
                 overwrite: bool = False, atol: float = 1e-4, seed: int = 0) -> dict:
    """Write, verify, then atomically rename into place (see the module docstring)."""
    from transformers import BertForMaskedLM

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputError(f"{out_dir}: already exists; pass --overwrite to replace it")
    model = model.float().materialized().cpu().eval()  # a k-mer basis folded in fp32: the export is plain BERT
    meta = dict(meta or {"format": EXPORT_FORMAT, "model": model.config.to_dict(), "tokenizer": tokenizer.to_dict()})
    with staged_dir(out_dir) as tmp:
        hf = BertForMaskedLM(model.config.to_hf_config())
        hf.load_state_dict(model.state_dict(), strict=True)
        hf.save_pretrained(str(tmp))  # config.json + model.safetensors (fp32; the tied decoder stored once)
        tokenizer.save(tmp)
        _set_model_max_length(tmp, model.config.max_position_embeddings)
        meta["verified_max_abs_logit_diff"] = verify_hf_dir(tmp, model, tokenizer, atol=atol, seed=seed)
        write_json(tmp / EXPORT_META, meta)
        write_text(tmp / "README.md", model_card(model, tokenizer, meta))
    return meta


def _set_model_max_length(directory: Path, max_positions: int) -> None:
    """Let AutoTokenizer truncate at the model's positions instead of assuming an unbounded length."""
    path = directory / "tokenizer_config.json"
    config = read_json(path, "tokenizer config")
    config["model_max_length"] = max_positions
    write_json(path, config, indent=2)



def random_sequences(n: int, rng: np.random.Generator, min_bp: int, max_bp: int) -> list[str]:
    """Random DNA of varied lengths (so the batch is padded), with a few N (so [UNK] is exercised)."""
    letters = np.frombuffer(b"ACGTN", dtype=np.uint8)
    out = []
    for _ in range(n):
        length = int(rng.integers(min_bp, max_bp + 1))
        codes = rng.choice(5, size=length, p=[0.245, 0.245, 0.245, 0.245, 0.02])
        out.append(letters[codes].tobytes().decode("ascii"))
    return out


@torch.no_grad()
def verify_hf_dir(directory, model: BertForMLM, tokenizer: DNATokenizer, atol: float = 1e-4, seed: int = 0,
                  n_seqs: int = 8) -> float:
    """Reload `directory` with plain transformers and compare to megadna. Returns the max |logit diff|.

    Raises ExportVerificationError when a token id differs or any logit at a real (non-padding)
    position differs by more than atol.
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    directory = Path(directory)
    hf_tok = AutoTokenizer.from_pretrained(str(directory))
    hf = AutoModelForMaskedLM.from_pretrained(str(directory)).float().eval()
    max_pos = model.config.max_position_embeddings
    k = tokenizer.k or 1
    # No sequence is truncated: k-mer tokenizers give at most n_bp tokens, BPE fewer.
    seqs = random_sequences(n_seqs, np.random.default_rng(seed), min_bp=k + 4, max_bp=max(k + 4, min(120, max_pos - 2)))
    ours = tokenizer.encode_batch(seqs, max_tokens=min(max_pos, 122))
    for i, seq in enumerate(seqs):
        width = int(ours["attention_mask"][i].sum())
        theirs = hf_tok(tokenizer.to_hf_text(seq))["input_ids"]
        if list(theirs) != ours["input_ids"][i, :width].tolist():
            raise ExportVerificationError(
                f"{directory}: transformers' tokenizer gives other ids than megadna's {tokenizer.name} for a "
                f"{len(seq)} bp sequence (first ids {list(theirs)[:8]} vs {ours['input_ids'][i, :8].tolist()})")
    ids = torch.from_numpy(ours["input_ids"])
    mask = torch.from_numpy(ours["attention_mask"])
    expected = model.eval()(ids, attention_mask=mask)["logits"]
    got = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    diff = float((expected[real] - got[real]).abs().max())
    if not diff <= atol:  # also catches NaN
        raise ExportVerificationError(f"{directory}: transformers' logits differ from megadna's by up to {diff:.3g} "
                                      f"(allowed {atol:g}); the export is wrong and was not kept")
    return diff


def _feeding_text(tokenizer: DNATokenizer) -> tuple[str, str]:
    """(how sequences become the tokenizer's text, a Python one-liner doing it) for the model card."""
    if tokenizer.overlapping:
        k = tokenizer.k
        return (f"overlapping {k}-mers, DNABERT style: every {k}-base window, one base apart, separated by spaces "
                f"(n bp give n - {k - 1} tokens; a {k}-mer containing N is [UNK])",
                f'text = " ".join(seq[i:i + {k}] for i in range(len(seq) - {k - 1}))')
    if tokenizer.name == "base":
        return ("single bases (A, C, G, T, N), separated by spaces", 'text = " ".join(seq)')
    if tokenizer.k:
        k = tokenizer.k
        return (f"non-overlapping {k}-mers (Nucleotide Transformer style), left to right in steps of {k}, separated by "
                f"spaces; a chunk containing N and the last n % {k} bases are written as single bases",
                "text = megadna.tokenizers.load_tokenizer(model_dir).to_hf_text(seq)")
    return (f"a byte-pair encoding ({tokenizer.name}) learned on DNA; pass the raw upper-case sequence",
            "text = seq.upper()")


def model_card(model: BertForMLM, tokenizer: DNATokenizer, meta: dict) -> str:
    c = model.config
    how, code = _feeding_text(tokenizer)
    step = meta.get("global_step")
    source = meta.get("checkpoint") or meta.get("source") or "a megadna model"
    diff = meta.get("verified_max_abs_logit_diff")
    return f"""# megadna DNA language model ({tokenizer.name})

A BERT masked-language model pre-trained on DNA with megadna (DeepSpeed, ZeRO).
Exported from `{source}`{f' at global_step {step}' if step is not None else ''}.

| | |
| --- | --- |
| architecture | BERT (post-LayerNorm, learned absolute positions), `BertForMaskedLM` |
| layers / hidden / heads / FFN | {c.num_layers} / {c.hidden_size} / {c.num_heads} / {c.intermediate_size} |
| parameters | {model.num_parameters():,} |
| max input | {c.max_position_embeddings} tokens, [CLS] and [SEP] included |
| tokenizer | `{tokenizer.name}`, {tokenizer.vocab_size} tokens; specials [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4 |

## Feeding it sequences

The tokenizer reads {how}.

```python
from transformers import AutoModelForMaskedLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForMaskedLM.from_pretrained(model_dir)
seq = "ACGTAGCTAGCTAGGCTAGCTAGCTAGCATCGATCGAC"
{code}
batch = tok([text], return_tensors="pt")   # adds [CLS] ... [SEP]
logits = model(**batch).logits
```

Upper-case the sequence first (lower-case letters are not in the vocabulary). With megadna installed,
`megadna.model.pretrained.load_pretrained(model_dir)` gives the same model with megadna's own tokenizer
(`megadna_tokenizer.json`), and `megadna.tokenizers.load_tokenizer(model_dir).to_hf_text(seq)` writes the text above.

## Verification

At export, this directory was reloaded with `transformers` (no custom code): the tokenizer's ids
equal megadna's and the logits match megadna's model on a random padded batch to
{f'{diff:.2e}' if diff is not None else 'n/a'} (max absolute difference, fp32).
"""
